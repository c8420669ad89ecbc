//! KVM smoke test: a tiny 64-bit payload (`moat_vmm::test_utils::payload`, from
//! src/test_utils/guest/smoke.c), compiled here with the system toolchain and booted through
//! the same ELF path as a kernel, writes to the serial console and ends the VM (i8042 reset,
//! triple fault); it answers a host connection over virtio-vsock; the control socket pauses,
//! resumes and stops a running one.
//!
//! Runs under whatever /dev/kvm the host has (kvm_pvm included); skipped, with the reason
//! printed, only when there is no /dev/kvm.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_vmm::builder::{self, RunReport};
use moat_vmm::config::VsockConfig;
use moat_vmm::test_utils::payload;
use moat_vmm::{Exit, VmmConfig};

/// Why this host cannot run the test, if it cannot: only a missing /dev/kvm. (The payload is
/// built with gcc, objcopy and ld, which the test expects installed.)
fn skip_reason() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is absent".into());
    }
    None
}

/// Compiles the payload into `dir`; returns the ELF's path.
fn build_payload(dir: &Path) -> PathBuf {
    payload::build_elf(dir).expect("build the guest payload")
}

/// The payload wrapped in a minimal bzImage (see `payload::build_bzimage`).
fn build_bzimage(dir: &Path) -> PathBuf {
    payload::build_bzimage(dir).expect("build the bzImage payload")
}

fn config(dir: &Path, kernel: &Path, cmdline: &str, vcpus: u8) -> VmmConfig {
    VmmConfig {
        id: "smoke".into(),
        vcpus,
        memory_mib: 64,
        kernel: kernel.to_owned(),
        initramfs: None,
        cmdline: cmdline.into(),
        console_log: dir.join("console.log"),
        console_log_max_bytes: moat_vmm::config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        api_socket: None,
        vsock: None,
        fs: vec![],
        net: None,
        jail: None,
    }
}

/// Builds and runs `config` on a thread, failing the test if it takes longer than `limit`.
fn run_with_limit(config: VmmConfig, limit: Duration) -> RunReport {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = builder::build(&config).and_then(|m| m.run());
        let _ = tx.send(result);
    });
    rx.recv_timeout(limit)
        .expect("the VM did not end in time")
        .expect("the VM ran")
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console.log")).expect("console log")
}

#[test]
fn payload_prints_and_resets_through_the_i8042() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the KVM smoke test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = build_payload(dir.path());
    let report = run_with_limit(
        config(dir.path(), &elf, "console=ttyS0 reboot=k", 1),
        Duration::from_secs(60),
    );
    let log = console(dir.path());
    assert!(log.contains("moat-smoke: hello\n"), "console log: {log:?}");
    assert!(
        log.contains("moat-smoke: cmdline: console=ttyS0 reboot=k\n"),
        "boot_params point at the command line: {log:?}"
    );
    assert!(log.contains("moat-smoke: reset\n"), "console log: {log:?}");
    assert_eq!(report.exit, Exit::GuestShutdown);
    let first = report.first_serial_byte.expect("a first serial byte");
    eprintln!(
        "smoke payload: start to first serial byte {:.2} ms (build {:.2} ms), peak RSS {} KiB",
        first.as_secs_f64() * 1e3,
        report.build_time.as_secs_f64() * 1e3,
        report.peak_rss_kib.unwrap_or_default()
    );
}

#[test]
fn bzimage_is_entered_at_its_64_bit_entry() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the KVM smoke test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bzimage = build_bzimage(dir.path());
    let report = run_with_limit(
        config(dir.path(), &bzimage, "console=ttyS0 from=bzimage", 1),
        Duration::from_secs(60),
    );
    let log = console(dir.path());
    assert!(
        log.contains("moat-smoke: cmdline: console=ttyS0 from=bzimage\n"),
        "console log: {log:?}"
    );
    assert_eq!(report.exit, Exit::GuestShutdown);
}

#[test]
fn serial_interrupt_reaches_the_guest_through_the_ioapic() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the KVM smoke test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = build_payload(dir.path());
    let report = run_with_limit(
        config(dir.path(), &elf, "smoke=irq", 1),
        Duration::from_secs(60),
    );
    let log = console(dir.path());
    assert!(
        log.contains("moat-smoke: serial interrupt arrived\n"),
        "console log: {log:?}"
    );
    assert_eq!(report.exit, Exit::GuestShutdown);
}

#[test]
fn triple_fault_ends_the_vm_as_a_guest_shutdown() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the KVM smoke test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = build_payload(dir.path());
    // With memory above the 32-bit MMIO gap too (a second memory slot at 4 GiB).
    let mut cfg = config(dir.path(), &elf, "smoke=triple", 1);
    cfg.memory_mib = 4608;
    let report = run_with_limit(cfg, Duration::from_secs(60));
    let log = console(dir.path());
    assert!(
        log.contains("moat-smoke: triple fault\n"),
        "console log: {log:?}"
    );
    assert!(!log.contains("moat-smoke: reset"), "console log: {log:?}");
    assert_eq!(report.exit, Exit::GuestShutdown);
}

/// Sends one request line and reads the reply.
fn ask(stream: &mut BufReader<UnixStream>, request: &str) -> serde_json::Value {
    stream
        .get_mut()
        .write_all(format!("{request}\n").as_bytes())
        .expect("send request");
    let mut line = String::new();
    stream.read_line(&mut line).expect("read reply");
    serde_json::from_str(&line).expect("JSON reply")
}

#[test]
fn control_socket_pauses_resumes_and_stops_a_spinning_guest() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the KVM smoke test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = build_payload(dir.path());
    let socket = dir.path().join("api.sock");
    let mut cfg = config(dir.path(), &elf, "smoke=spin", 2);
    cfg.api_socket = Some(socket.clone());
    let machine = builder::build(&cfg).expect("build");
    let first_byte = machine.first_serial_byte();
    let vm = std::thread::spawn(move || machine.run());

    let deadline = Instant::now() + Duration::from_secs(30);
    while !(socket.exists() && console(dir.path()).contains("moat-smoke: spinning")) {
        assert!(
            Instant::now() < deadline,
            "the guest never started spinning"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(first_byte.get().is_some());
    let mut api = BufReader::new(UnixStream::connect(&socket).expect("connect"));
    let status = ask(&mut api, r#"{"op":"status"}"#);
    assert_eq!(status["ok"], true);
    assert_eq!(status["state"], "running");
    assert_eq!(status["vcpus"], 2);
    assert_eq!(status["memory_mib"], 64);
    assert_eq!(ask(&mut api, r#"{"op":"pause"}"#)["state"], "paused");
    assert_eq!(ask(&mut api, r#"{"op":"status"}"#)["state"], "paused");
    assert_eq!(ask(&mut api, r#"{"op":"resume"}"#)["state"], "running");
    assert_eq!(ask(&mut api, r#"{"op":"bogus"}"#)["ok"], false);
    assert_eq!(ask(&mut api, r#"{"op":"shutdown"}"#)["state"], "stopping");

    let report = vm.join().expect("VM thread").expect("the VM ran");
    assert_eq!(report.exit, Exit::ApiShutdown);
    assert!(!socket.exists(), "the control socket is removed at the end");
}

#[test]
fn payload_answers_a_host_connection_over_vsock() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the KVM smoke test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = build_payload(dir.path());
    let uds = dir.path().join("vsock.sock");
    let mut cfg = config(dir.path(), &elf, "console=ttyS0 smoke=vsock", 1);
    cfg.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let machine = builder::build(&cfg).expect("build");
    // The device listens from build on: a CONNECT now waits for the guest's driver.
    let mut host = UnixStream::connect(&uds).expect("connect to the hybrid vsock socket");
    host.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let vm = std::thread::spawn(move || machine.run());

    host.write_all(b"CONNECT 1024\n").expect("send CONNECT");
    let mut reader = BufReader::new(host.try_clone().expect("clone"));
    let mut ok = String::new();
    reader.read_line(&mut ok).expect("CONNECT reply");
    assert!(ok.starts_with("OK "), "CONNECT reply {ok:?}");
    host.write_all(b"ping").expect("send data");
    let mut pong = [0u8; 10];
    std::io::Read::read_exact(&mut reader, &mut pong).expect("guest reply");
    assert_eq!(&pong, b"pong: ping");

    let report = vm.join().expect("VM thread").expect("the VM ran");
    let log = console(dir.path());
    assert!(
        log.contains("moat-smoke: vsock got: ping\n"),
        "console log: {log:?}"
    );
    assert!(
        log.contains("moat-smoke: vsock replied\n"),
        "console log: {log:?}"
    );
    assert_eq!(report.exit, Exit::GuestShutdown);
}
