//! bench-vmm's real-guest part: start to agent ready with the guest image, Moat's VMM
//! against QEMU with KVM, and the VMM's memory beyond guest RAM. Needs hardware KVM (an
//! ordinary Linux guest does not boot under a software KVM such as kvm_pvm); elsewhere it
//! prints why it did not run.
//!
//! Agent ready is what moatd waits for (host/src/sandbox/vm.rs): the agent connects to host
//! vsock port 1025 (ANNOUNCE_PORT), which hybrid vsock delivers to the Unix socket
//! `<vsock uds>_1025`, and writes its `moat-agent ...` line. Both backends boot the same
//! kernel and initramfs: the minimal kernel (vmlinux-moat) when built, else the guest
//! image's vmlinuz. QEMU runs as Moat's QEMU backend runs it (its own argument list, the
//! vsock device served by a `moatd vsock-backend` process), with KVM; for the minimal
//! kernel, which has no ACPI, microvm without ACPI tables as guest-image/boot-check.sh
//! --minimal boots it.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_host::guest::ANNOUNCE_PORT;
use moat_host::hypervisor::builtin::Builtin;
use moat_host::hypervisor::qemu::{Qemu, QemuConfig};
use moat_host::hypervisor::{Accel, HostCaps, Hypervisor, VmSpec};
use moat_tests::bench::median;
use moat_tests::moatd::moatd_bin;

use crate::probe::{Rss, mapping_rss_kib, median_u64};

/// Guest RAM of each boot (moatd's default for a pod without a memory limit).
const MEM_MIB: u64 = 256;
/// How long one boot may take to announce.
const LIMIT: Duration = Duration::from_secs(60);
/// microvm for a kernel without ACPI: devices on the command line and the MP table, the
/// PIT and 8259 present (as guest-image/boot-check.sh --minimal).
const NO_ACPI_MACHINE: &str = "microvm,acpi=off,pit=on,pic=on,rtc=on,isa-serial=on";

/// The kernel and initramfs both backends boot, and whether the kernel is the minimal one.
struct Image {
    kernel: PathBuf,
    initramfs: PathBuf,
    minimal: bool,
}

fn pick_image(dir: &Path) -> Option<Image> {
    let minimal = dir.join("vmlinux-moat");
    if minimal.is_file() {
        // That kernel has every driver built in and no module loader: the initramfs
        // without modules when boot-check.sh --minimal has made it.
        let nomodules = dir.join("initramfs-nomodules.cpio");
        let initramfs = if nomodules.is_file() {
            nomodules
        } else {
            dir.join("initramfs.cpio")
        };
        return initramfs.is_file().then_some(Image {
            kernel: minimal,
            initramfs,
            minimal: true,
        });
    }
    let (kernel, initramfs) = (dir.join("vmlinuz"), dir.join("initramfs.cpio"));
    (kernel.is_file() && initramfs.is_file()).then_some(Image {
        kernel,
        initramfs,
        minimal: false,
    })
}

fn spec(w: &Path, image: &Image) -> VmSpec {
    VmSpec {
        id: "bench-vmm".into(),
        vcpus: 1,
        memory_mib: MEM_MIB,
        kernel: image.kernel.clone(),
        initramfs: image.initramfs.clone(),
        kernel_args: vec![],
        run_dir: w.to_owned(),
        vsock_uds: w.join("vsock"),
        vsock_vhost_socket: w.join("v.sock"),
        guest_cid: 3,
        fs_shares: vec![],
        console_log: w.join("console.log"),
        vmm_log: w.join("vmm.log"),
        net: None,
        jail: None,
        console_log_max_bytes: 1 << 20,
    }
}

/// Waits for the agent's announce on `listener` (non-blocking); the time from `t0` to its
/// line.
fn wait_announce(
    listener: &UnixListener,
    t0: Instant,
    mut alive: impl FnMut() -> bool,
) -> Result<Duration, String> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(LIMIT)).map_err(|e| e.to_string())?;
                let mut line = String::new();
                BufReader::new(s)
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the announce: {e}"))?;
                if !line.starts_with("moat-agent ") {
                    return Err(format!("unexpected announce {line:?}"));
                }
                return Ok(t0.elapsed());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !alive() {
                    return Err("the VMM exited before the agent announced".into());
                }
                if t0.elapsed() > LIMIT {
                    return Err(format!("no announce within {} s", LIMIT.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

fn listen(w: &Path) -> Result<UnixListener, String> {
    let l = UnixListener::bind(w.join(format!("vsock_{ANNOUNCE_PORT}")))
        .map_err(|e| format!("listen for the announce: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

fn log_tail(w: &Path) -> String {
    let log = std::fs::read_to_string(w.join("vmm.log")).unwrap_or_default();
    let console = std::fs::read_to_string(w.join("console.log")).unwrap_or_default();
    let tail = |s: &str| s.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
    format!("VMM log: {}; console: {}", tail(&log), tail(&console))
}

/// RSS beyond guest RAM, KiB: the process's resident memory less its guest RAM mapping.
fn beyond_guest_ram(pid: u32) -> u64 {
    let rss = Rss::of(pid).unwrap_or_default().total;
    rss.saturating_sub(mapping_rss_kib(pid, MEM_MIB))
}

/// One boot with Moat's VMM: (start to announce, VMM RSS beyond guest RAM in KiB).
fn boot_builtin(image: &Image) -> Result<(Duration, u64), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let w = work.path();
    let announce = listen(w)?;
    let t0 = Instant::now();
    let vm = Builtin::with_binary(moatd_bin())
        .boot(&spec(w, image))
        .map_err(|e| e.to_string())?;
    let took = wait_announce(&announce, t0, || !vm.exited());
    let pid = u32::try_from(vm.pid()).unwrap_or_default();
    let beyond = beyond_guest_ram(pid);
    let _ = vm.signal(libc::SIGKILL);
    while !vm.exited() && t0.elapsed() < LIMIT * 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = took.map_err(|e| format!("{e}; {}", log_tail(w)))?;
    Ok((took, beyond))
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn running(c: &mut Child) -> bool {
    matches!(c.try_wait(), Ok(None))
}

/// One boot with QEMU and KVM: (start to announce, RSS beyond guest RAM of QEMU and its
/// vsock backend together, KiB). The clock starts with QEMU: the backend is up before.
fn boot_qemu(image: &Image, caps: &HostCaps) -> Result<(Duration, u64), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let w = work.path();
    let spec = spec(w, image);
    let announce = listen(w)?;
    let log = |name: &str| {
        std::fs::File::create(w.join(name))
            .map(Stdio::from)
            .map_err(|e| e.to_string())
    };
    let mut backend = Command::new(moatd_bin())
        .arg("vsock-backend")
        .arg("--socket")
        .arg(&spec.vsock_vhost_socket)
        .arg("--uds-path")
        .arg(&spec.vsock_uds)
        .stdout(Stdio::null())
        .stderr(log("backend.log")?)
        .spawn()
        .map_err(|e| format!("moatd vsock-backend: {e}"))?;
    let up = Instant::now();
    while !spec.vsock_vhost_socket.exists() {
        if up.elapsed() > Duration::from_secs(10) || !running(&mut backend) {
            kill(&mut backend);
            return Err("the vsock backend did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let qemu = Qemu::new(
        QemuConfig {
            accel: Some(Accel::Kvm),
            ..QemuConfig::default()
        },
        caps.clone(),
    );
    let mut args = qemu.args(&spec);
    if image.minimal
        && let Some(i) = args.iter().position(|a| a == "-M")
        && let Some(m) = args.get_mut(i + 1)
    {
        *m = NO_ACPI_MACHINE.into();
    }
    let t0 = Instant::now();
    let mut vm = match Command::new(QemuConfig::default().binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log("vmm.log")?)
        .stderr(log("vmm-err.log")?)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            kill(&mut backend);
            return Err(format!("qemu-system-x86_64: {e}"));
        }
    };
    let took = wait_announce(&announce, t0, || running(&mut vm));
    let beyond = beyond_guest_ram(vm.id()) + Rss::of(backend.id()).unwrap_or_default().total;
    kill(&mut vm);
    kill(&mut backend);
    let took = took.map_err(|e| {
        let err = std::fs::read_to_string(w.join("vmm-err.log")).unwrap_or_default();
        format!("{e}; QEMU stderr: {}; {}", err.trim(), log_tail(w))
    })?;
    Ok((took, beyond))
}

/// Runs the comparison `runs` times (the two backends alternating) and prints it, or prints
/// why it cannot run here.
pub fn run(runs: usize, caps: &HostCaps, host: &str) {
    let what = "start to agent ready, builtin vs QEMU, minimal kernel";
    if !(caps.kvm_device && caps.hardware_virt) {
        println!("{what}: needs hardware KVM (this host: {host})");
        return;
    }
    let dir = std::env::var_os("MOAT_GUEST_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out"),
        PathBuf::from,
    );
    let Some(image) = pick_image(&dir) else {
        println!(
            "{what}: no guest image in {}: run guest-image/build.sh (and guest-image/build-kernel.sh for the minimal kernel)",
            dir.display()
        );
        return;
    };
    let (mut bt, mut bm, mut qt, mut qm) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        match boot_builtin(&image).and_then(|b| Ok((b, boot_qemu(&image, caps)?))) {
            Ok(((t1, m1), (t2, m2))) => {
                bt.push(t1);
                bm.push(m1);
                qt.push(t2);
                qm.push(m2);
            }
            Err(e) => {
                println!("{what}: run {i} failed: {e}");
                return;
            }
        }
    }
    let (b, q) = (median(&mut bt), median(&mut qt));
    let (bmem, qmem) = (median_u64(&mut bm), median_u64(&mut qm));
    let kernel = image
        .kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let initramfs = image
        .initramfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let label = if image.minimal {
        what.to_owned()
    } else {
        format!("{what} (no minimal kernel built: the guest image's)")
    };
    println!("{label}: {kernel} + {initramfs}, 1 vCPU, {MEM_MIB} MiB, medians over {runs} boots:");
    println!(
        "  builtin (moatd vmm)                              {:>8.1} ms  ({:.2}x QEMU's time)",
        b.as_secs_f64() * 1e3,
        b.as_secs_f64() / q.as_secs_f64()
    );
    println!(
        "  QEMU microvm, -accel kvm                         {:>8.1} ms",
        q.as_secs_f64() * 1e3
    );
    println!(
        "  VMM RSS beyond guest RAM: builtin {:.1} MiB, QEMU + its vsock backend {:.1} MiB ({:.2}x)",
        bmem as f64 / 1024.0,
        qmem as f64 / 1024.0,
        bmem as f64 / qmem.max(1) as f64
    );
}
