//! End to end: Moat's vhost-user-vsock backend under a real guest. Boots the guest image
//! (guest-image/build.sh output) with `qemu-system-x86_64 -M microvm -accel tcg` and the
//! backend serving its vsock device, then checks both hybrid-vsock directions:
//! (a) the guest agent's announce connection to host port 1025 arrives on `<uds>_1025`;
//! (b) a host `CONNECT 1024\n` on `<uds>` is answered `OK <port>\n` (the agent's gRPC port).
//!
//! It needs the guest image (scripts/test.sh builds it first with guest-image/build.sh).
//! `MOAT_GUEST_OUT` picks the image dir (default guest-image/out), `MOAT_TSC_KHZ` the TSC.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_host::devices::vsock::{VsockBackendConfig, port_socket_path, run};

const GUEST_CID: u64 = 3;
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn image_dir() -> PathBuf {
    std::env::var_os("MOAT_GUEST_OUT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out"),
        PathBuf::from,
    )
}

/// The host TSC in kHz: under TCG on microvm the guest cannot calibrate it (no PIT/HPET).
fn host_tsc_khz() -> u64 {
    if let Some(k) = std::env::var("MOAT_TSC_KHZ")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return k;
    }
    if let Some(k) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return k;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("cpu MHz in /proc/cpuinfo; set MOAT_TSC_KHZ");
    (mhz * 1000.0).round() as u64
}

fn wait_for(what: &str, deadline: Instant, qemu: &mut Qemu, mut ready: impl FnMut() -> bool) {
    while !ready() {
        if let Ok(Some(status)) = qemu.0.try_wait() {
            panic!("QEMU exited ({status}) while waiting for {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads one line byte by byte, leaving whatever follows in the stream.
fn read_line(stream: &mut UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        stream.read_exact(&mut byte).expect("read a line");
        line.push(byte[0]);
    }
    String::from_utf8(line).expect("UTF-8 line")
}

#[test]
fn vsock_both_directions_through_qemu() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "moat_host=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let images = image_dir();
    let (kernel, initrd) = (images.join("vmlinux"), images.join("initramfs.cpio"));
    assert!(
        kernel.is_file() && initrd.is_file(),
        "no guest image in {}: run guest-image/build.sh",
        images.display()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let vhost = dir.path().join("vhost.sock");
    let uds = dir.path().join("vsock.sock");
    let announce = UnixListener::bind(port_socket_path(&uds, 1025)).expect("bind _1025");
    announce.set_nonblocking(true).expect("nonblocking");

    let config = VsockBackendConfig {
        socket: vhost.clone(),
        uds_path: uds.clone(),
        guest_cid: GUEST_CID,
    };
    let backend = std::thread::spawn(move || run(config));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vhost.exists() {
        assert!(Instant::now() < deadline, "backend socket never appeared");
        assert!(!backend.is_finished(), "backend exited early");
        std::thread::sleep(Duration::from_millis(20));
    }

    let append = format!(
        "console=ttyS0 panic=-1 tsc_early_khz={} tsc=reliable no_timer_check i8042.noaux \
         i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests quiet",
        host_tsc_khz()
    );
    let log_path = dir.path().join("console.log");
    let log = File::create(&log_path).expect("console log");
    let mut qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on,acpi=on,memory-backend=mem",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-smp",
                "1",
                "-m",
                "256",
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "-global",
                "virtio-mmio.force-legacy=false",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                "-chardev",
                &format!("socket,id=vsock0,path={}", vhost.display()),
                "-device",
                "vhost-user-vsock-device,chardev=vsock0",
                "-kernel",
                &kernel.display().to_string(),
                "-initrd",
                &initrd.display().to_string(),
                "-append",
                &append,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start qemu-system-x86_64"),
    );
    let started = Instant::now();
    let console = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // (a) The agent's announce connection arrives on <uds>_1025.
    let mut announced = None;
    let deadline = started + BOOT_TIMEOUT;
    let qemu_check = |q: &mut Qemu, what: &str, f: &mut dyn FnMut() -> bool| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(what, deadline, q, f)
        }));
        if let Err(e) = r {
            eprintln!("--- guest console ---\n{}", console());
            std::panic::resume_unwind(e);
        }
    };
    qemu_check(
        &mut qemu,
        "the agent's announce on port 1025",
        &mut || match announce.accept() {
            Ok((s, _)) => {
                announced = Some(s);
                true
            }
            Err(_) => false,
        },
    );
    let line = read_line(&mut announced.take().expect("announce stream"));
    eprintln!(
        "announce after {:.1} s: {line:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(line.starts_with("moat-agent "), "announce line: {line:?}");

    // (b) A host CONNECT to the agent's port 1024 gets OK.
    let mut host = UnixStream::connect(&uds).expect("connect uds");
    host.write_all(b"CONNECT 1024\n").expect("write CONNECT");
    let line = read_line(&mut host);
    eprintln!("CONNECT 1024 answered: {line:?}");
    assert!(
        line.starts_with("OK "),
        "CONNECT answer: {line:?}\n{}",
        console()
    );
    let port: u32 = line[3..].trim().parse().expect("OK <port>");
    assert!(port >= 1 << 30);

    // Bytes flow both ways on it: the agent's gRPC (HTTP/2) server answers a client
    // preface with a SETTINGS frame (frame type 4).
    host.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("write HTTP/2 preface");
    let mut frame = [0u8; 9];
    host.read_exact(&mut frame).expect("read a frame header");
    assert_eq!(
        frame[3], 4,
        "first frame from the agent is SETTINGS: {frame:?}"
    );
    drop(host);

    drop(qemu);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend.is_finished() {
        assert!(
            Instant::now() < deadline,
            "backend did not end after QEMU left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    backend
        .join()
        .expect("backend thread")
        .expect("backend ends cleanly when QEMU disconnects");
}
