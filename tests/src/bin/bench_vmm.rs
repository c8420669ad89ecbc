//! Benchmark: Moat's own VMM (`moatd vmm`) against QEMU, measured in the same run on the same
//! guest: the smoke payload (`moat_vmm::test_utils::payload`), one ELF that Moat's VMM
//! enters at its 64-bit ELF entry and QEMU at its PVH entry.
//!
//! Figures (medians over the runs; the VMMs alternate within each run, so a change in the
//! machine's load hits them alike):
//! - time from spawning the VMM process to the first byte of the guest's serial console,
//!   read from a FIFO the VMM writes its console to (poll(2) wakes on the byte), for Moat's
//!   VMM, QEMU microvm with KVM and QEMU microvm with TCG (how Moat runs QEMU where the CPU
//!   has no VT-x/AMD-V), against the floor of spawning /bin/true and seeing it exit;
//! - the VMM's resident memory while the guest waits: Moat's VMM with the payload waiting
//!   for a host connection on its virtio-vsock device (then answered, and the VM ends),
//!   QEMU with the payload spinning (QEMU has no device at the address the payload's vsock
//!   driver uses); VmRSS, RssAnon, RssFile and RssShmem, nothing subtracted (the payload
//!   touches a few dozen KiB of guest RAM);
//! - where the CPU has hardware virtualization, start to agent ready with the real guest
//!   (see bench_vmm/agent_ready.rs); elsewhere a line saying why not.
//!
//! Usage: bench-vmm [--runs N]   (default 20; MOATD_BIN = the release moatd; needs root for
//! /dev/kvm, gcc and binutils for the payload, qemu-system-x86_64)

#[path = "bench_vmm/agent_ready.rs"]
mod agent_ready;
#[path = "bench_vmm/probe.rs"]
mod probe;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_host::hypervisor::{HostCaps, hw_virt_flag};
use moat_tests::bench::{median, runs_arg};
use moat_tests::moatd::moatd_bin;
use moat_vmm::VmmConfig;
use moat_vmm::config::VsockConfig;
use moat_vmm::test_utils::payload;

use probe::{Console, Rss};

/// Guest RAM, both VMMs.
const MEM_MIB: u64 = 128;
/// How long one boot may take.
const LIMIT: Duration = Duration::from_secs(60);
/// QEMU's machine, as Moat's QEMU backend sets it (host/src/hypervisor/qemu.rs).
const QEMU_MACHINE: &str = "microvm,pit=off,pic=off,rtc=on,isa-serial=on";
const QEMU: &str = "qemu-system-x86_64";

/// One of the VMMs compared.
#[derive(Debug, Clone)]
enum Vmm {
    /// `moatd vmm --config <file>`.
    Builtin,
    /// QEMU with KVM and this `-cpu` model.
    QemuKvm(&'static str),
    /// QEMU with TCG, as Moat runs it (`-cpu max`, a 64 MiB translation cache).
    QemuTcg,
}

/// What the payload does, on its command line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Greet, then reset: the VMM exits.
    Hello,
    /// Wait for a host connection on vsock port 1024, answer it, then reset.
    Vsock,
    /// Greet, then spin until the host stops it.
    Spin,
}

impl Mode {
    fn cmdline(self) -> &'static str {
        match self {
            Mode::Hello => "console=ttyS0",
            Mode::Vsock => "console=ttyS0 smoke=vsock",
            Mode::Spin => "console=ttyS0 smoke=spin",
        }
    }
}

/// A VMM started on the payload, its console on a FIFO.
struct Started {
    child: Child,
    console: Console,
    t0: Instant,
    dir: tempfile::TempDir,
}

impl Started {
    fn alive(child: &mut Child) -> bool {
        matches!(child.try_wait(), Ok(None))
    }

    /// Reads the console until it holds `needle`.
    fn wait_for(&mut self, needle: &str) -> bool {
        let child = &mut self.child;
        self.console
            .wait_for(needle, self.t0 + LIMIT, || Self::alive(child))
    }

    /// Reads the console until the VMM exits (killed at the deadline); true if it exited
    /// by itself with status 0.
    fn finish(&mut self) -> bool {
        let deadline = self.t0 + LIMIT;
        let child = &mut self.child;
        self.console
            .wait(|_| false, deadline, || Self::alive(child));
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return s.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => {
                    self.kill();
                    return false;
                }
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Why a run failed: `what`, with the console and the VMM's complaint (the first line
    /// of its output that says "error", else its last line).
    fn failure(&mut self, what: &str) -> String {
        self.kill();
        let log = std::fs::read_to_string(self.dir.path().join("vmm.log")).unwrap_or_default();
        let said = log
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| log.lines().last())
            .unwrap_or("nothing");
        format!(
            "{what} (console {:?}; the VMM said: {})",
            self.console.text,
            said.trim()
        )
    }
}

/// Starts `vmm` on `elf` in `mode`, its console on a fresh FIFO.
fn start(vmm: &Vmm, elf: &Path, mode: Mode) -> Result<Started, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fifo = dir.path().join("console");
    let console = Console::create(&fifo)?;
    let mut cmd = match vmm {
        Vmm::Builtin => {
            let config = VmmConfig {
                id: "bench-vmm".into(),
                vcpus: 1,
                memory_mib: MEM_MIB,
                kernel: elf.to_owned(),
                initramfs: None,
                cmdline: mode.cmdline().into(),
                console_log: fifo.clone(),
                console_log_max_bytes: moat_vmm::config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
                api_socket: None,
                vsock: (mode == Mode::Vsock).then(|| VsockConfig {
                    guest_cid: 3,
                    uds_path: dir.path().join("vsock"),
                }),
                fs: vec![],
                net: None,
                jail: None,
            };
            let path = dir.path().join("vmm.json");
            let json = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
            std::fs::write(&path, json).map_err(|e| e.to_string())?;
            let mut c = Command::new(moatd_bin());
            c.arg("vmm").arg("--config").arg(path);
            c
        }
        Vmm::QemuKvm(_) | Vmm::QemuTcg => {
            let (accel, cpu) = match vmm {
                Vmm::QemuKvm(cpu) => ("kvm", *cpu),
                _ => ("tcg,tb-size=64", "max"),
            };
            let mut c = Command::new(QEMU);
            c.args(["-M", QEMU_MACHINE, "-accel", accel, "-cpu", cpu])
                .args(["-smp", "1", "-m", &format!("{MEM_MIB}M")])
                .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
                .arg("-serial")
                .arg(format!("file:{}", fifo.display()))
                .arg("-kernel")
                .arg(elf)
                .args(["-append", mode.cmdline()]);
            c
        }
    };
    let log = std::fs::File::create(dir.path().join("vmm.log")).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("spawning {vmm:?}: {e}"))?;
    Ok(Started {
        child,
        console,
        t0,
        dir,
    })
}

/// Spawn to the first serial byte, the payload greeting and resetting (the VMM exits).
fn first_byte(vmm: &Vmm, elf: &Path) -> Result<Duration, String> {
    let mut s = start(vmm, elf, Mode::Hello)?;
    let child = &mut s.child;
    s.console.wait(
        |c| c.first.is_some(),
        s.t0 + LIMIT,
        || Started::alive(child),
    );
    let first = s.console.first.map(|f| f.duration_since(s.t0));
    let exited = s.finish();
    match first {
        Some(f) if exited && s.console.text.contains("moat-smoke: reset\n") => Ok(f),
        Some(_) => Err(s.failure("the payload did not reset, or the VMM did not exit with 0")),
        None => Err(s.failure("no serial output")),
    }
}

/// The VMM's memory while the payload waits: for Moat's VMM on a host connection over
/// vsock (answered after the reading, then the VM ends), for QEMU spinning (killed after).
fn rss_waiting(vmm: &Vmm, elf: &Path) -> Result<Rss, String> {
    let builtin = matches!(vmm, Vmm::Builtin);
    let (mode, ready) = if builtin {
        (Mode::Vsock, "moat-smoke: vsock ready\n")
    } else {
        (Mode::Spin, "moat-smoke: spinning\n")
    };
    let mut s = start(vmm, elf, mode)?;
    if !s.wait_for(ready) {
        return Err(s.failure("the payload never got to wait"));
    }
    let Some(rss) = Rss::of(s.child.id()) else {
        return Err(s.failure("the VMM is gone"));
    };
    if !builtin {
        s.kill();
        return Ok(rss);
    }
    if let Err(e) = vsock_ping(&s.dir.path().join("vsock")) {
        return Err(s.failure(&format!("vsock ping: {e}")));
    }
    if !s.finish() || !s.console.text.contains("moat-smoke: vsock replied\n") {
        return Err(s.failure("the VM did not end cleanly after the vsock exchange"));
    }
    Ok(rss)
}

/// A host connection to the payload's vsock port: `ping`, answered `pong: ping`.
fn vsock_ping(uds: &Path) -> std::io::Result<()> {
    let mut c = UnixStream::connect(uds)?;
    c.set_read_timeout(Some(LIMIT))?;
    c.write_all(b"CONNECT 1024\n")?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut ok = String::new();
    r.read_line(&mut ok)?;
    if !ok.starts_with("OK ") {
        return Err(std::io::Error::other(format!("CONNECT answered {ok:?}")));
    }
    c.write_all(b"ping")?;
    let mut pong = [0u8; 10];
    r.read_exact(&mut pong)?;
    if &pong != b"pong: ping" {
        return Err(std::io::Error::other(format!("reply {pong:?}")));
    }
    Ok(())
}

/// The floor: spawning /bin/true and seeing it exit.
fn floor() -> Duration {
    let t0 = Instant::now();
    let status = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run /bin/true");
    assert!(status.success());
    t0.elapsed()
}

/// What this host's KVM is, in words.
fn host_kind(caps: &HostCaps) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let module = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists());
    let kvm = match (caps.kvm_device, module) {
        (false, _) => "no usable /dev/kvm".to_owned(),
        (true, Some("kvm_pvm")) => "/dev/kvm from kvm_pvm (software KVM)".to_owned(),
        (true, Some(m)) => format!("/dev/kvm from {m}"),
        (true, None) => "/dev/kvm".to_owned(),
    };
    match hw_virt_flag(&cpuinfo) {
        Some(f) => format!("{kvm}, CPU with {f}"),
        None => format!("{kvm}, CPU without vmx/svm"),
    }
}

/// QEMU with KVM, if it runs here: the `-cpu` model that works, and a note when the usual
/// one (`host`) does not. kvm_pvm refuses an MSR QEMU sets for `-cpu host`
/// (IA32_ARCH_CAPABILITIES); without that CPUID feature QEMU does not set it.
fn probe_qemu_kvm(elf: &Path, caps: &HostCaps) -> Result<(Vmm, Option<String>), String> {
    if !caps.kvm_device {
        return Err("no usable /dev/kvm".into());
    }
    let mut note = None;
    for cpu in ["host", "host,-arch-capabilities"] {
        let vmm = Vmm::QemuKvm(cpu);
        match first_byte(&vmm, elf) {
            Ok(_) => return Ok((vmm, note)),
            Err(e) if note.is_none() => note = Some(format!("-cpu host fails here: {e}")),
            Err(e) => {
                return Err(format!(
                    "{}; with -cpu {cpu}: {e}",
                    note.unwrap_or_default()
                ));
            }
        }
    }
    Err(note.unwrap_or_default())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One VMM's samples.
#[derive(Default)]
struct Samples {
    first: Vec<Duration>,
    rss: Vec<Rss>,
}

impl Samples {
    fn first_median(&mut self) -> Duration {
        median(&mut self.first)
    }
    /// The median of each figure on its own.
    fn rss_median(&self) -> Rss {
        let pick = |f: fn(&Rss) -> u64| {
            let mut v: Vec<u64> = self.rss.iter().map(f).collect();
            probe::median_u64(&mut v)
        };
        Rss {
            total: pick(|r| r.total),
            anon: pick(|r| r.anon),
            file: pick(|r| r.file),
            shmem: pick(|r| r.shmem),
        }
    }
}

/// One line per VMM: the name, the VMM, its samples (or why it is unavailable).
struct Entry {
    name: String,
    vmm: Result<Vmm, String>,
    samples: Samples,
}

fn main() {
    let runs = runs_arg(20).max(1);
    let caps = HostCaps::probe();
    let host = host_kind(&caps);
    let work = tempfile::tempdir().expect("tempdir");
    let elf = payload::build_elf(work.path()).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "bench-vmm: the smoke payload (one ELF: 64-bit entry for Moat's VMM, PVH entry for QEMU), 1 vCPU, {MEM_MIB} MiB; host: {host}; moatd: {}",
        moatd_bin().display()
    );

    // One boot each first: whether it runs here, and a warm-up (page cache, binaries).
    let builtin = first_byte(&Vmm::Builtin, &elf).map(|_| Vmm::Builtin);
    let (kvm, kvm_note) = match probe_qemu_kvm(&elf, &caps) {
        Ok((v, note)) => (Ok(v), note),
        Err(e) => (Err(e), None),
    };
    let tcg = first_byte(&Vmm::QemuTcg, &elf).map(|_| Vmm::QemuTcg);
    let kvm_name = match &kvm {
        Ok(Vmm::QemuKvm(cpu)) if *cpu != "host" => format!("QEMU microvm -accel kvm -cpu {cpu}"),
        _ => "QEMU microvm -accel kvm".into(),
    };
    let mut entries = [
        ("builtin (moatd vmm)".to_owned(), builtin),
        (kvm_name, kvm),
        ("QEMU microvm -accel tcg".to_owned(), tcg),
    ]
    .map(|(name, vmm)| Entry {
        name,
        vmm,
        samples: Samples::default(),
    });
    if let Some(n) = &kvm_note {
        println!("note: QEMU with KVM: {n}; using -cpu host,-arch-capabilities");
    }

    let mut floors = Vec::with_capacity(runs);
    for _ in 0..runs {
        floors.push(floor());
        for e in &mut entries {
            let Ok(vmm) = e.vmm.clone() else { continue };
            let r = first_byte(&vmm, &elf)
                .map(|d| e.samples.first.push(d))
                .and_then(|()| rss_waiting(&vmm, &elf))
                .map(|r| e.samples.rss.push(r));
            if let Err(err) = r {
                e.vmm = Err(format!("a run failed: {err}"));
            }
        }
    }

    let floor = median(&mut floors);
    println!(
        "medians over {runs} runs, spawn to the first serial byte read from the console FIFO:"
    );
    println!(
        "  floor: spawn to exit of /bin/true                       {:>8.2} ms",
        ms(floor)
    );
    let mut firsts = Vec::new();
    for e in &mut entries {
        match &e.vmm {
            Ok(_) => {
                let d = e.samples.first_median();
                firsts.push(Some(d));
                println!(
                    "  {:<55}{:>8.2} ms  ({:.1}x the floor)",
                    e.name,
                    ms(d),
                    d.as_secs_f64() / floor.as_secs_f64()
                );
            }
            Err(why) => {
                firsts.push(None);
                println!("  {}: unavailable: {why}", e.name);
            }
        }
    }
    if let Some(Some(b)) = firsts.first().copied() {
        for (e, d) in entries.iter().zip(&firsts).skip(1) {
            if let Some(d) = d {
                println!(
                    "  ratio builtin / {}: {:.3} (builtin {:.1}x faster)",
                    e.name,
                    b.as_secs_f64() / d.as_secs_f64(),
                    d.as_secs_f64() / b.as_secs_f64()
                );
            }
        }
    }

    println!(
        "VMM memory while the guest waits, medians in KiB (builtin: payload waiting on vsock; QEMU: spinning):"
    );
    println!(
        "  {:<55}{:>8} {:>8} {:>8} {:>8}",
        "", "VmRSS", "RssAnon", "RssFile", "RssShmem"
    );
    let mut totals = Vec::new();
    for e in &entries {
        if e.vmm.is_err() {
            totals.push(None);
            continue;
        }
        let r = e.samples.rss_median();
        totals.push(Some(r.total));
        println!(
            "  {:<55}{:>8} {:>8} {:>8} {:>8}",
            e.name, r.total, r.anon, r.file, r.shmem
        );
    }
    if let Some(Some(b)) = totals.first().copied() {
        for (e, t) in entries.iter().zip(&totals).skip(1) {
            if let Some(t) = t {
                println!(
                    "  ratio VmRSS builtin / {}: {:.2}",
                    e.name,
                    b as f64 / (*t).max(1) as f64
                );
            }
        }
    }

    agent_ready::run(runs, &caps, &host);
}
