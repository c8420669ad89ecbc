//! Benchmark: pod sandbox start-up, against the floor of the QEMU backend measured in the
//! same run. The floor is a bare boot of the same kernel and initramfs with the same QEMU
//! command line and the same vsock backend, timed from QEMU's start to the agent's first
//! vsock answer (the announce, then a host CONNECT answered OK). RunPodSandbox is timed
//! over the CRI socket of a release moatd. Also: host memory per idle pod beyond guest RAM
//! (RSS of the VMM and backend processes, less the guest RAM QEMU holds as shared memory)
//! and the agent's RSS in the guest. Each run also starts the same pod on a second moatd
//! with `confinement.enabled = false`: the peer that gives what confinement (`moatd jail`
//! around QEMU and the back-ends) costs in start-up time and host memory. The idle pod's
//! host CPU (all its processes, over 5 s) and RunPodSandbox's phases (from moatd's
//! /metrics) are printed too: deploy/runtimeclass.yaml's overhead comes from these figures.
//!
//! Usage: bench-pod [--runs N]   (set MOATD_BIN to the release moatd; needs guest-image/out)

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_host::hypervisor::qemu::{Qemu, QemuConfig};
use moat_host::hypervisor::{HostCaps, VmSpec};
use moat_tests::bench::median;
use moat_tests::moatd::{Moatd, moatd_bin};
use moat_tests::registry::Registry;

fn guest_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out");
    assert!(
        d.join("vmlinux").is_file(),
        "no guest image: run guest-image/build.sh"
    );
    d
}

/// One bare boot: vsock backend + QEMU, until the agent answers over vsock.
fn bare_boot(dir: &Path) -> Duration {
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    let vhost = w.join("v.sock");
    let uds = w.join("vsock");
    let announce = UnixListener::bind(w.join("vsock_1025")).expect("bind announce");
    let mut backend = Command::new(moatd_bin())
        .args(["vsock-backend", "--socket"])
        .arg(&vhost)
        .arg("--uds-path")
        .arg(&uds)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("backend");
    while !vhost.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let qemu = Qemu::new(QemuConfig::default(), HostCaps::probe());
    let spec = VmSpec {
        id: "bench".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
        kernel_args: vec![],
        run_dir: w.to_owned(),
        vsock_uds: uds.clone(),
        vsock_vhost_socket: vhost,
        guest_cid: 3,
        fs_shares: vec![],
        console_log: w.join("console.log"),
        vmm_log: w.join("vmm.log"),
        net: None,
        jail: None,
        console_log_max_bytes: 1 << 20,
    };
    let started = Instant::now();
    let mut vm = Command::new("qemu-system-x86_64")
        .args(qemu.args(&spec))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu");
    let (s, _) = announce.accept().expect("announce");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("announce line");
    let mut c = UnixStream::connect(&uds).expect("connect");
    c.write_all(b"CONNECT 1024\n").expect("connect line");
    let mut buf = [0u8; 3];
    c.read_exact(&mut buf).expect("OK");
    assert_eq!(&buf, b"OK ");
    let took = started.elapsed();
    let _ = vm.kill();
    let _ = vm.wait();
    let _ = backend.kill();
    let _ = backend.wait();
    took
}

fn status_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (total RSS, RSS beyond shared memory) in KiB of the processes mentioning `needle`,
/// and that second figure per process kind.
fn rss_of(needle: &str) -> (u64, u64, Vec<(String, u64)>) {
    let mut total = 0;
    let mut own = 0;
    let mut kinds = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmd).contains(needle) {
            continue;
        }
        let rss = status_kib(&pid, "VmRSS:");
        // Private memory: anonymous pages. File pages (the QEMU binary, the kernel image it
        // maps) are page cache shared by every pod; shared memory is guest RAM.
        let mine = status_kib(&pid, "RssAnon:");
        total += rss;
        own += mine;
        let text = String::from_utf8_lossy(&cmd).into_owned();
        let kind = if text.split('\0').nth(1) == Some("jail") {
            "jail parent"
        } else if text.contains("vsock-backend") {
            "vsock backend"
        } else if text.contains("fs-backend") {
            "virtio-fs backend"
        } else {
            "qemu"
        };
        kinds.push((kind.to_owned(), mine));
    }
    kinds.sort();
    (total, own, kinds)
}

fn pod(i: usize, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory: logs.join(format!("pod{i}")).display().to_string(),
        ..Default::default()
    }
}

fn container(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo ready; exec sleep 600".into(),
        ],
        log_path: "c/0.log".into(),
        ..Default::default()
    }
}

/// What one pod start measured.
struct Sample {
    run: Duration,
    first_log: Duration,
    execs: Vec<Duration>,
    mem: (u64, u64, u64),
    kinds: Vec<(String, u64)>,
    /// Host CPU of the idle pod's processes, millicores.
    idle_millicores: f64,
}

/// Runs pod `i` with one container on `m`, measures it, and removes it.
async fn one_pod(m: &Moatd, image: &str, logs: &Path, i: usize) -> Sample {
    let mut rt = m.runtime().await;
    let started = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod(i, logs)),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let run = started.elapsed();
    let cid = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container(image)),
            sandbox_config: None,
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await
    .expect("start");
    let log = logs.join(format!("pod{i}/c/0.log"));
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("stdout F ready")
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first_log = started.elapsed();
    let mut execs = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: cid.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .expect("exec");
        assert_eq!(r.into_inner().exit_code, 0);
        execs.push(t.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (total, own, kinds) = rss_of(&id[..12]);
    let idle_millicores = idle_cpu(&id[..12]).await;
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("json");
    let agent = info["agentRssKiB"].as_u64().unwrap_or(0);
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("stop");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("remove");
    Sample {
        run,
        first_log,
        execs,
        mem: (total, own, agent),
        kinds,
        idle_millicores,
    }
}

/// Host CPU of the processes mentioning `needle` (the pod's), over 5 s, in millicores.
async fn idle_cpu(needle: &str) -> f64 {
    use moat_host::hypervisor::usage::ProcessTable;
    let cpu = || {
        ProcessTable::read()
            .usage(&moat_tests::pids_with(&[needle]))
            .cpu_nanos
    };
    let (c0, t0) = (cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c1, t) = (cpu(), t0.elapsed());
    (c1.saturating_sub(c0)) as f64 / t.as_nanos() as f64 * 1000.0
}

/// RunPodSandbox's mean phases from moatd's /metrics on `port`: (phase, seconds).
async fn boot_phases(port: u16) -> Vec<(String, f64)> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics");
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("parse /metrics");
    let value = |name: &str, phase: &str| {
        s.samples
            .iter()
            .find(|x| x.metric == name && x.labels.get("phase") == Some(phase))
            .and_then(|x| match x.value {
                prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v) => Some(v),
                _ => None,
            })
            .unwrap_or(f64::NAN)
    };
    ["network", "vmm_start", "kernel_boot", "setup", "total"]
        .iter()
        .map(|p| {
            let sum = value("moat_run_pod_sandbox_duration_seconds_sum", p);
            let n = value("moat_run_pod_sandbox_duration_seconds_count", p);
            ((*p).to_owned(), sum / n)
        })
        .collect()
}

/// A moatd with the guest image, `extra` config, its /metrics on `metrics_port`, and the
/// bench image pulled.
async fn moatd(dir: &Path, extra: &str, image: &str, metrics_port: u16) -> Moatd {
    let m = Moatd::start(&format!(
        "[sandbox]\nguest_dir = \"{}\"\n{extra}\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n",
        dir.display()
    ))
    .await;
    m.pull(image).await;
    m
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let runs = moat_tests::bench::runs_arg(5);
    let dir = guest_dir();
    let (_reg, image) = Registry::with_busybox("bench/busybox").await;
    // moatd as shipped (every pod process confined), and the same with confinement off:
    // the peer that says what confinement costs.
    let metrics_port = moat_tests::free_port();
    let confined = moatd(&dir, "", &image, metrics_port).await;
    let unconfined = moatd(
        &dir,
        "[confinement]\nenabled = false\n",
        &image,
        moat_tests::free_port(),
    )
    .await;
    let logs = tempfile::tempdir().expect("logs");
    let mut bare = Vec::new();
    let (mut samples, mut peers) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let d = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || bare_boot(&dir)
        })
        .await
        .expect("bare boot");
        bare.push(d);
        let s = Box::pin(one_pod(&confined, &image, logs.path(), 2 * i)).await;
        let u = Box::pin(one_pod(&unconfined, &image, logs.path(), 2 * i + 1)).await;
        if i == 0 {
            let parts: Vec<String> = s
                .kinds
                .iter()
                .map(|(k, v)| format!("{k} {:.1} MiB", mib(*v)))
                .collect();
            println!(
                "host memory beyond guest RAM by process (confined): {}",
                parts.join(", ")
            );
        }
        println!(
            "run {i}: bare boot {:>6.3} s   RunPodSandbox {:>6.3} s (unconfined {:>6.3} s)   host RSS {:>6} KiB (private beyond guest RAM {:>6} KiB; unconfined {:>6} KiB)   agent RSS {:>5} KiB",
            bare[i].as_secs_f64(),
            s.run.as_secs_f64(),
            u.run.as_secs_f64(),
            s.mem.0,
            s.mem.1,
            u.mem.1,
            s.mem.2
        );
        samples.push(s);
        peers.push(u);
    }
    let b = median(&mut bare);
    let med = |v: &[Sample], f: fn(&Sample) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        median(&mut d)
    };
    let mem = |v: &[Sample]| {
        let mut m: Vec<(u64, u64, u64)> = v.iter().map(|s| s.mem).collect();
        m.sort();
        m[m.len() / 2]
    };
    let (r, ur) = (med(&samples, |s| s.run), med(&peers, |s| s.run));
    let fl = med(&samples, |s| s.first_log);
    let mut execs: Vec<Duration> = samples.iter().flat_map(|s| s.execs.clone()).collect();
    let n_execs = execs.len();
    let ex = median(&mut execs);
    let (total, own, agent) = mem(&samples);
    let (_, u_own, _) = mem(&peers);
    println!(
        "median over {runs} runs: bare boot to the agent's first vsock answer {:.3} s, RunPodSandbox {:.3} s",
        b.as_secs_f64(),
        r.as_secs_f64()
    );
    println!(
        "ratio RunPodSandbox/bare boot: {:.2} (goal: 1.30 or less)",
        r.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "confinement: RunPodSandbox {:.3} s confined vs {:.3} s unconfined (ratio {:.3}); private host memory beyond guest RAM {:.1} MiB vs {:.1} MiB (ratio {:.3}) (goal: 1.05 or less)",
        r.as_secs_f64(),
        ur.as_secs_f64(),
        r.as_secs_f64() / ur.as_secs_f64(),
        mib(own),
        mib(u_own),
        own as f64 / u_own.max(1) as f64
    );
    println!(
        "RunPodSandbox to a started container's first log line: {:.3} s ({:.2}x the bare boot)",
        fl.as_secs_f64(),
        fl.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "ExecSync of `true`, median of {n_execs} round trips: {:.1} ms",
        ex.as_secs_f64() * 1000.0
    );
    println!(
        "host memory per pod with one idle container: {:.1} MiB RSS in all (guest RAM and shared page cache included), {:.1} MiB private beyond guest RAM (VMM + vsock + virtio-fs backends + their jails)",
        mib(total),
        mib(own)
    );
    println!(
        "agent RSS in the guest: {:.1} MiB (goal: under 8 MiB)",
        mib(agent)
    );
    let mut idle: Vec<f64> = samples.iter().map(|s| s.idle_millicores).collect();
    idle.sort_by(f64::total_cmp);
    println!(
        "host CPU of an idle pod (all its processes, over 5 s), median: {:.1} millicores",
        idle[idle.len() / 2]
    );
    let phases: Vec<String> = boot_phases(metrics_port)
        .await
        .iter()
        .map(|(p, s)| format!("{p} {:.3} s", s))
        .collect();
    println!(
        "RunPodSandbox phases, mean over {runs} runs (moatd's /metrics): {}",
        phases.join(", ")
    );
}
