//! End to end: a real guest (QEMU microvm, TCG) mounts a host directory through Moat's
//! vhost-user-fs backend, reads files, sees a whiteout and an opaque directory through
//! overlayfs, and cannot write.
//!
//! Needs: root (mknod of the whiteout, `trusted.*` xattrs), `qemu-system-x86_64`, Debian's
//! static busybox at `/bin/busybox` (busybox-static), and the guest image in
//! `guest-image/out/` (`guest-image/build.sh`). The guest runs a busybox `/init` script from
//! an initramfs written here (newc cpio, in Rust), with the kernel modules taken from the
//! guest image's initramfs. `MOAT_GUEST_OUT` picks the image dir (default guest-image/out),
//! `MOAT_TSC_KHZ` the guest's TSC frequency (default: "cpu MHz" of /proc/cpuinfo).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use moat_host::devices::fs::{FsBackendConfig, run};
use sha2::{Digest, Sha256};

/// How long the guest may take from QEMU start to powering off (boot is ~2 s under TCG).
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
const BIG_FILE_LEN: usize = 1 << 20;

const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "MOATFS $*"; }
for m in $(cat /lib/moat/modules.order); do
  insmod "/lib/moat/modules/$m" || say "insmod-failed $m"
done
if mount -t virtiofs layers /mnt; then say mounted; else say mount-failed; fi
say "ls $(ls /mnt | tr '\n' ' ')"
say "hello $(cat /mnt/hello.txt)"
say "whiteout $(stat -c '%F %t,%T' /mnt/l2/gone.txt)"
echo "<3>MOATFS cat-start" > /dev/kmsg
cat /mnt/big.bin > /dev/null
echo "<3>MOATFS cat-end" > /dev/kmsg
say "sha256 $(sha256sum /mnt/big.bin | cut -d' ' -f1)"
say "write $( (echo x > /mnt/new.txt) 2>&1 )"
say "append $( (echo x >> /mnt/hello.txt) 2>&1 )"
say "mkdir $(mkdir /mnt/newdir 2>&1)"
say "rm $(rm /mnt/hello.txt 2>&1)"
say "hello-after $(cat /mnt/hello.txt)"
mkdir -p /merged
if mount -t overlay overlay -o lowerdir=/mnt/l2:/mnt/l1 /merged; then say overlay-mounted; fi
say "merged $(ls /merged | tr '\n' ' ')"
say "merged-d $(ls /merged/d | tr '\n' ' ')"
umount /merged
if umount /mnt; then say unmounted; else say umount-failed; fi
say done
reboot -f
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// (vmlinux, initramfs.cpio) of the guest image, or a panic that says how to build it.
fn guest_image() -> (PathBuf, PathBuf) {
    let out = std::env::var_os("MOAT_GUEST_OUT")
        .map_or_else(|| repo_root().join("guest-image/out"), PathBuf::from);
    let kernel = out.join("vmlinux");
    let initramfs = out.join("initramfs.cpio");
    for f in [&kernel, &initramfs] {
        assert!(
            f.is_file(),
            "{} is missing: run guest-image/build.sh first (it builds the guest kernel and \
             initramfs into guest-image/out/)",
            f.display()
        );
    }
    (kernel, initramfs)
}

fn require_tool(path: &str, package: &str) {
    let found = if path.contains('/') {
        Path::new(path).is_file()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {path}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(found, "{path} is missing: apt-get install {package}");
}

/// The host TSC frequency in kHz ("cpu MHz" of /proc/cpuinfo): microvm under TCG has no
/// timer to calibrate the TSC against and hangs without `tsc_early_khz`.
fn tsc_khz() -> u64 {
    if let Some(khz) = std::env::var("MOAT_TSC_KHZ")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return khz;
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "cpu MHz").then(|| v.trim().parse().ok())?
        })
        .expect("a 'cpu MHz' line in /proc/cpuinfo");
    (mhz * 1000.0).round() as u64
}

/// One member of a newc ("070701") cpio archive.
struct CpioEntry {
    name: String,
    mode: u32,
    data: Vec<u8>,
}

const CPIO_MAGIC: &[u8] = b"070701";
const CPIO_HEADER_LEN: usize = 110;

fn pad4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// Reads the members of an uncompressed newc archive (up to its TRAILER!!!).
fn cpio_read(archive: &[u8]) -> Vec<CpioEntry> {
    let field = |at: usize, i: usize| -> usize {
        let start = at + 6 + 8 * i;
        let hex = std::str::from_utf8(&archive[start..start + 8]).expect("cpio header is ASCII");
        usize::from_str_radix(hex, 16).expect("cpio header field is hex")
    };
    let mut entries = Vec::new();
    let mut at = 0;
    while at + CPIO_HEADER_LEN <= archive.len() {
        assert_eq!(
            &archive[at..at + 6],
            CPIO_MAGIC,
            "not a newc cpio member at offset {at}"
        );
        let mode = field(at, 1) as u32;
        let size = field(at, 6);
        let namesize = field(at, 11);
        let name_start = at + CPIO_HEADER_LEN;
        let name =
            String::from_utf8_lossy(&archive[name_start..name_start + namesize - 1]).into_owned();
        let data_start = pad4(name_start + namesize);
        if name == "TRAILER!!!" {
            break;
        }
        let data = archive[data_start..data_start + size].to_vec();
        entries.push(CpioEntry { name, mode, data });
        at = pad4(data_start + size);
    }
    entries
}

/// Writes `entries` as a newc archive (owner root, mtime 0).
fn cpio_write(entries: &[CpioEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let trailer = CpioEntry {
        name: "TRAILER!!!".to_owned(),
        mode: 0,
        data: Vec::new(),
    };
    for (ino, e) in entries.iter().chain([&trailer]).enumerate() {
        let nlink = if e.mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino + 1,
            e.mode as usize,
            0,
            0,
            nlink,
            0,
            e.data.len(),
            0,
            0,
            0,
            0,
            e.name.len() + 1,
            0,
        ];
        out.extend_from_slice(CPIO_MAGIC);
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        out.resize(pad4(out.len()), 0);
        out.extend_from_slice(&e.data);
        out.resize(pad4(out.len()), 0);
    }
    out
}

/// A newc initramfs: busybox as the shell of an `/init` script, and the kernel modules of
/// the guest image (`lib/moat/modules/*.ko` and `lib/moat/modules.order`).
fn build_initramfs(work: &Path, guest_initramfs: &Path) -> PathBuf {
    let dir = |name: &str| CpioEntry {
        name: name.to_owned(),
        mode: 0o040755,
        data: Vec::new(),
    };
    let mut entries: Vec<CpioEntry> = ["bin", "dev", "lib", "lib/moat", "lib/moat/modules"]
        .into_iter()
        .chain(["merged", "mnt", "proc", "sys", "tmp"])
        .map(dir)
        .collect();
    entries.push(CpioEntry {
        name: "bin/busybox".to_owned(),
        mode: 0o100755,
        data: fs::read("/bin/busybox").expect("read /bin/busybox"),
    });
    entries.push(CpioEntry {
        name: "init".to_owned(),
        mode: 0o100755,
        data: INIT_SCRIPT.as_bytes().to_vec(),
    });
    let guest = fs::read(guest_initramfs).expect("read the guest initramfs");
    let modules: Vec<CpioEntry> = cpio_read(&guest)
        .into_iter()
        .filter(|e| {
            e.name == "lib/moat/modules.order"
                || (e.name.starts_with("lib/moat/modules/") && e.name.ends_with(".ko"))
        })
        .collect();
    assert!(
        modules.iter().any(|e| e.name == "lib/moat/modules.order")
            && modules.iter().any(|e| e.name.ends_with("/virtiofs.ko")),
        "no lib/moat/modules.order or virtiofs.ko in {}",
        guest_initramfs.display()
    );
    entries.extend(modules);
    let image = work.join("initramfs.cpio");
    fs::write(&image, cpio_write(&entries)).expect("write the initramfs");
    image
}

/// The shared directory: plain files, and two layers as moatd unpacks them (a whiteout as a
/// 0:0 character device, an opaque directory marked with `trusted.overlay.opaque=y`).
fn build_share(work: &Path) -> (PathBuf, Vec<u8>) {
    let share = work.join("share");
    fs::create_dir_all(share.join("l1/d")).expect("l1");
    fs::create_dir_all(share.join("l2/d")).expect("l2");
    fs::write(share.join("hello.txt"), "hello from the host layer\n").expect("hello");
    let big: Vec<u8> = (0..BIG_FILE_LEN)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    fs::write(share.join("big.bin"), &big).expect("big");
    fs::write(share.join("l1/d/old.txt"), "old\n").expect("old");
    fs::write(share.join("l1/gone.txt"), "gone\n").expect("gone");
    fs::write(share.join("l2/d/new.txt"), "new\n").expect("new");
    nix::sys::stat::mknod(
        &share.join("l2/gone.txt"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(0, 0),
    )
    .expect("mknod the whiteout (this test needs root)");
    xattr::set(share.join("l2/d"), "trusted.overlay.opaque", b"y")
        .expect("set trusted.overlay.opaque (this test needs root)");
    (share, big)
}

fn wait_for(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {within:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The guest timestamp (seconds) of the console line containing `marker`.
fn kernel_time(console: &str, marker: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    let (_, rest) = line.split_once('[')?;
    let (t, _) = rest.split_once(']')?;
    t.trim().parse().ok()
}

/// The value after `MOATFS <key> ` on the console, trimmed.
fn said<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("MOATFS {key}");
    console.lines().find_map(|l| {
        let l = l.trim_end_matches('\r');
        let rest = l.strip_prefix(&prefix)?;
        (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim())
    })
}

#[test]
fn guest_mounts_reads_and_cannot_write_the_share() {
    let (kernel, guest_initramfs) = guest_image();
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("/bin/busybox", "busybox-static");

    let work = tempfile::tempdir().expect("tempdir");
    let initramfs = build_initramfs(work.path(), &guest_initramfs);
    let (share, big) = build_share(work.path());
    let socket = work.path().join("fs.sock");
    let console_path = work.path().join("console.log");

    let config = FsBackendConfig {
        socket: socket.clone(),
        shared_dir: share.clone(),
        read_only: true,
        owners: None,
    };
    let backend = thread::spawn(move || run(config));
    wait_for(&socket, Duration::from_secs(10));

    let append = format!(
        "console=ttyS0 panic=-1 rdinit=/init tsc_early_khz={} quiet",
        tsc_khz()
    );
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "256M",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-machine",
            "memory-backend=mem",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-serial",
        ])
        .arg(format!("file:{}", console_path.display()))
        .arg("-chardev")
        .arg(format!("socket,id=fs0,path={}", socket.display()))
        .args(["-device", "vhost-user-fs-device,chardev=fs0,tag=layers"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initramfs)
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");

    let status = loop {
        if let Some(status) = qemu.try_wait().expect("wait for qemu") {
            break Some(status);
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let wall = started.elapsed();
    let qemu_out = qemu
        .wait_with_output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    let console = fs::read_to_string(&console_path).unwrap_or_default();
    let context = format!(
        "\n--- qemu status {status:?} after {wall:?}; qemu output:\n{qemu_out}\n--- console:\n{console}"
    );
    assert!(
        status.is_some(),
        "the guest did not finish in {GUEST_TIMEOUT:?}{context}"
    );

    // QEMU is gone: the backend saw the disconnect and returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the backend did not return after QEMU exited{context}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    backend
        .join()
        .expect("backend thread")
        .unwrap_or_else(|e| panic!("backend failed: {e}{context}"));

    let get = |key: &str| {
        said(&console, key).unwrap_or_else(|| panic!("no 'MOATFS {key}' line{context}"))
    };
    assert!(
        said(&console, "mounted").is_some(),
        "virtiofs not mounted{context}"
    );
    assert!(
        !console.contains("MOATFS insmod-failed"),
        "a module failed to load{context}"
    );
    assert_eq!(get("ls"), "big.bin hello.txt l1 l2", "{context}");
    assert_eq!(get("hello"), "hello from the host layer", "{context}");
    assert_eq!(get("whiteout"), "character special file 0,0", "{context}");
    let host_sha = hex::encode(Sha256::digest(&big));
    assert_eq!(
        get("sha256"),
        host_sha,
        "1 MiB file content differs{context}"
    );

    // Writes fail with EROFS, from the backend (the guest mounted it read-write).
    for key in ["write", "append", "mkdir", "rm"] {
        assert!(
            get(key).contains("Read-only file system"),
            "{key}: expected EROFS, got '{}'{context}",
            get(key)
        );
    }
    assert_eq!(get("hello-after"), "hello from the host layer", "{context}");
    assert_eq!(
        fs::read_to_string(share.join("hello.txt")).expect("hello on the host"),
        "hello from the host layer\n"
    );
    assert!(!share.join("new.txt").exists() && !share.join("newdir").exists());

    // overlayfs over the two layers: the whiteout hides gone.txt, the opaque directory
    // (trusted.overlay.opaque read through the backend) hides l1's d/old.txt.
    assert!(
        said(&console, "overlay-mounted").is_some(),
        "overlay mount failed{context}"
    );
    assert_eq!(get("merged"), "d", "{context}");
    assert_eq!(get("merged-d"), "new.txt", "{context}");
    assert!(
        said(&console, "unmounted").is_some(),
        "umount (FUSE DESTROY) failed{context}"
    );
    assert!(said(&console, "done").is_some(), "{context}");

    let cat = match (
        kernel_time(&console, "MOATFS cat-start"),
        kernel_time(&console, "MOATFS cat-end"),
    ) {
        (Some(a), Some(b)) => format!("{:.1} ms", (b - a) * 1000.0),
        _ => "unknown".to_owned(),
    };
    let mut stderr = std::io::stderr();
    for line in console.lines().filter(|l| l.contains("MOATFS")) {
        let _ = writeln!(stderr, "  guest: {}", line.trim_end());
    }
    let _ = writeln!(
        stderr,
        "virtiofs_qemu: guest run {wall:.2?} (QEMU start to exit); guest cat of a 1 MiB file: {cat}"
    );
}
