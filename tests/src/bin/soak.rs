//! Churn soak: for a bounded time, P workers at once run pods through their whole life on
//! one release moatd with a CNI bridge network (bridge `moatsoak0`, 10.88.99.0/24):
//! RunPodSandbox, CreateContainer + StartContainer (busybox printing `hi`, then an nc echo
//! server), ExecSync `echo ok`, the container log, a port-forward round trip through the
//! streaming URL, StopPodSandbox, RemovePodSandbox. Everything stays on this host.
//!
//! Prints pods per minute, RunPodSandbox latencies, every error with its gRPC status, and
//! moatd's RSS and fd count after the first pod, half-way and at the end. At the end, with
//! every pod removed and 5 s of settling, a leak report against a snapshot taken before the
//! first pod: processes, moatd's fds, mounts, netns, veth/tap links, iptables rules, IPAM
//! reservations, files in the run dir, store records. Exits non-zero on a leak, on an
//! error, or when moatd's RSS grew more than 10% from the first pod to the end.
//!
//! Usage: soak [--minutes M] [--parallel P]   (M=5, P=2; root, Debian's CNI plugins, set
//! MOATD_BIN to the release moatd; needs guest-image/out)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use moat_tests::moatd::Moatd;
use moat_tests::registry::Registry;
use moat_tests::streams::SpdyPortForward;
use tonic::transport::Channel;

const NET: &str = "moat-soak";
const BRIDGE: &str = "moatsoak0";
const SUBNET: &str = "10.88.99.0/24";
const PREFIX: &str = "10.88.99.";
/// The echo server's port in the pod.
const PORT: u16 = 8080;
/// The container: a line for the log, then an echo server for the port forward (busybox
/// nc has -e; -ll keeps listening after each connection).
const SCRIPT: &str = "echo hi; exec nc -ll -p 8080 -e cat";

struct Args {
    minutes: f64,
    parallel: usize,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 5.0,
        parallel: 2,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{k} needs a value")))
                .clone()
        };
        match k.as_str() {
            "--minutes" => {
                a.minutes = value()
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m > 0.0)
                    .unwrap_or_else(|| usage("--minutes takes a positive number"))
            }
            "--parallel" => {
                a.parallel = value()
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .unwrap_or_else(|| usage("--parallel takes a positive integer"))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a
}

fn usage(why: &str) -> ! {
    if !why.is_empty() {
        eprintln!("soak: {why}");
    }
    eprintln!("usage: soak [--minutes M] [--parallel P]   (defaults: M=5, P=2)");
    std::process::exit(2);
}

fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out")
}

fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let plugins = ["bridge", "host-local", "portmap", "loopback"]
        .iter()
        .all(|p| Path::new("/usr/lib/cni").join(p).exists());
    let mut missing = Vec::new();
    if !root {
        missing.push("root (CNI)".to_owned());
    }
    if !plugins {
        missing.push("Debian's containernetworking-plugins in /usr/lib/cni".to_owned());
    }
    if !guest_dir().join("vmlinux").is_file() {
        missing.push("the guest image (guest-image/build.sh)".to_owned());
    }
    if !missing.is_empty() {
        eprintln!("soak: needs {}", missing.join(", "));
        std::process::exit(2);
    }
}

fn conflist() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [
            {
                "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Removes what an earlier soak that died midway left of this network: its bridge, IPAM
/// reservations and iptables rules.
fn scrub_leftovers() {
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{NET}"));
    sh(&format!(
        "iptables-save | grep -q -e '{NET}' -e '{PREFIX}' && iptables-save | grep -v -e '{NET}' -e '{PREFIX}' | iptables-restore"
    ));
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// moatd's (RSS KiB, open fds).
fn sample(pid: i32) -> (u64, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (status_kib(pid, "VmRSS:"), fds)
}

fn cmdline(pid: &str) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .split('\0')
            .map(str::to_owned)
            .collect(),
    )
}

fn pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<i32>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The moatd started with `config`.
fn moatd_pid(config: &Path) -> i32 {
    let config = config.display().to_string();
    for p in pids() {
        if let Some(args) = cmdline(&p)
            && args.get(1).map(String::as_str) == Some("--config")
            && args.get(2) == Some(&config)
        {
            return p.parse().expect("pid");
        }
    }
    panic!("no moatd process with --config {config}");
}

/// moatd and QEMU processes that are not this soak's: another moatd's work on this host
/// makes node-wide figures (CNI chains, netns) unattributable.
fn foreign_processes(ours: &str, moatd: i32) -> Vec<String> {
    let mut out = Vec::new();
    for p in pids() {
        let Some(args) = cmdline(&p) else { continue };
        let exe = args[0].rsplit('/').next().unwrap_or("");
        let joined = args.join(" ");
        if (exe == "moatd" || exe.starts_with("qemu-system"))
            && !joined.contains(ours)
            && p != moatd.to_string()
        {
            out.push(format!("{p} {}", clip(&joined, 160)));
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Paths under `dir` (relative), with a trailing `/` for directories.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.insert(format!("{rel}/"));
                stack.push(p);
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

/// What the leak report compares: node and moatd state.
#[derive(Default)]
struct Snapshot {
    /// pid → command line, of processes mentioning moatd's dirs or qemu.
    procs: BTreeMap<String, String>,
    /// moatd's fds: number → target.
    fds: BTreeMap<String, String>,
    /// Mount points under moatd's dirs (this namespace and moatd's).
    mounts: BTreeSet<String>,
    /// `ip netns` names starting `moat-`.
    netns: BTreeSet<String>,
    /// veth and tap links: name → its `ip -o link` line.
    links: BTreeMap<String, String>,
    /// iptables-save lines mentioning this network or its subnet.
    iptables_ours: BTreeSet<String>,
    /// Per-pod CNI chains (`:CNI-` declarations, the portmap plugin's shared HOSTPORT
    /// chains aside).
    cni_chains: BTreeSet<String>,
    /// iptables-save lines mentioning `CNI`.
    cni_lines: usize,
    /// IPAM reservations of this network.
    ipam: BTreeSet<String>,
    /// Entries in the run dir, the CRI socket aside.
    run_files: BTreeSet<String>,
    /// Entries in the root dir.
    root_files: BTreeSet<String>,
    /// ListPodSandbox and ListContainers.
    pods: Vec<String>,
    containers: Vec<String>,
    /// Gauges from /metrics: pods, containers, streaming sessions open.
    gauges: BTreeMap<String, f64>,
}

struct Ctx {
    m: Moatd,
    image: String,
    logs: tempfile::TempDir,
    moatd: i32,
    metrics: String,
    /// The pod ids this soak got back from RunPodSandbox.
    ids: Mutex<Vec<String>>,
    run_times: Mutex<Vec<Duration>>,
    step_times: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    errors: Mutex<Vec<String>>,
    cycles_ok: AtomicUsize,
    pods_started: AtomicUsize,
    port_forward_skipped: Mutex<Option<String>>,
}

impl Ctx {
    fn dir(&self) -> String {
        self.m
            .run_dir()
            .parent()
            .expect("tmp dir")
            .display()
            .to_string()
    }

    async fn snapshot(&self, ctl: &mut RuntimeServiceClient<Channel>) -> Snapshot {
        let mut s = Snapshot {
            gauges: self.gauges().await,
            ..Default::default()
        };
        // The scrape's connection is closed (no pooling); let moatd see it go.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let run_dir = self.m.run_dir().display().to_string();
        let root = self.m.root().display().to_string();
        for p in pids() {
            let Some(args) = cmdline(&p) else { continue };
            let joined = args.join(" ");
            if joined.contains(&run_dir) || joined.contains(&root) || joined.contains("qemu") {
                s.procs.insert(p, clip(&joined, 200));
            }
        }
        if let Ok(d) = std::fs::read_dir(format!("/proc/{}/fd", self.moatd)) {
            for e in d.flatten() {
                let target = std::fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                s.fds
                    .insert(e.file_name().to_string_lossy().into_owned(), target);
            }
        }
        let dir = self.dir();
        for info in [
            "/proc/self/mountinfo".to_owned(),
            format!("/proc/{}/mountinfo", self.moatd),
        ] {
            for l in std::fs::read_to_string(info).unwrap_or_default().lines() {
                if let Some(mp) = l.split(' ').nth(4)
                    && l.contains(&dir)
                {
                    s.mounts.insert(mp.to_owned());
                }
            }
        }
        s.netns = sh("ip netns list")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with("moat-"))
            .map(str::to_owned)
            .collect();
        for l in sh("ip -o link").lines() {
            let Some(name) = l.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with("veth") || name.starts_with("tap") {
                s.links.insert(name.to_owned(), clip(l, 160));
            }
        }
        let ipt = sh("iptables-save");
        for l in ipt.lines() {
            if l.contains(NET) || l.contains(PREFIX) {
                s.iptables_ours.insert(l.to_owned());
            }
            if l.starts_with(":CNI-") && !l.starts_with(":CNI-HOSTPORT-") {
                s.cni_chains.insert(l.to_owned());
            }
            if l.contains("CNI") {
                s.cni_lines += 1;
            }
        }
        s.ipam = std::fs::read_dir(format!("/var/lib/cni/networks/{NET}"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("last_reserved_ip") && n != "lock")
                    .collect()
            })
            .unwrap_or_default();
        s.run_files = tree(&self.m.run_dir());
        s.run_files.remove("moat.sock");
        s.root_files = tree(&self.m.root());
        s.pods = ctl
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map(|r| {
                r.into_inner()
                    .items
                    .into_iter()
                    .map(|p| {
                        format!(
                            "{} {} state {}",
                            &p.id[..12.min(p.id.len())],
                            p.metadata.map(|m| m.name).unwrap_or_default(),
                            p.state
                        )
                    })
                    .collect()
            })
            .unwrap_or_else(|e| vec![format!("ListPodSandbox failed: {e:?}")]);
        s.containers = ctl
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .map(|r| {
                r.into_inner()
                    .containers
                    .into_iter()
                    .map(|c| {
                        format!(
                            "{} in pod {} state {}",
                            &c.id[..12.min(c.id.len())],
                            &c.pod_sandbox_id[..12.min(c.pod_sandbox_id.len())],
                            c.state
                        )
                    })
                    .collect()
            })
            .unwrap_or_else(|e| vec![format!("ListContainers failed: {e:?}")]);
        s
    }

    /// Summed gauges from /metrics.
    async fn gauges(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Some(text) = self.scrape().await else {
            return out;
        };
        for l in text.lines() {
            for g in [
                "moat_pod_sandboxes",
                "moat_containers",
                "moat_streaming_sessions_open",
            ] {
                if let Some(rest) = l.strip_prefix(g)
                    && (rest.starts_with('{') || rest.starts_with(' '))
                    && let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
                {
                    *out.entry(g.to_owned()).or_default() += v;
                }
            }
        }
        out
    }

    async fn scrape(&self) -> Option<String> {
        let c = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        c.get(&self.metrics).send().await.ok()?.text().await.ok()
    }

    fn error(&self, n: usize, step: &str, what: String) {
        let line = format!("pod {n}: {step}: {what}");
        println!("ERROR {line}");
        self.errors.lock().expect("errors").push(line);
    }

    fn time(&self, step: &'static str, d: Duration) {
        self.step_times
            .lock()
            .expect("times")
            .entry(step)
            .or_default()
            .push(d);
    }
}

fn status_text(e: &tonic::Status) -> String {
    format!("gRPC {:?}: {}", e.code(), e.message())
}

/// Awaits a CRI call with a deadline; a late call is an error of its own.
async fn call<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(e)) => Err(status_text(&e)),
        Err(_) => Err(format!("no answer in {} s", limit.as_secs())),
    }
}

fn pod_config(logs: &Path, n: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("soak-{n}"),
            uid: format!("u-soak-{n}"),
            namespace: "soak".into(),
            attempt: 0,
        }),
        hostname: format!("soak-{n}"),
        log_directory: logs.join(format!("pod{n}")).display().to_string(),
        ..Default::default()
    }
}

/// One pod's whole life. Errors are recorded; the pod is removed whatever happened.
async fn cycle(ctx: &Ctx, n: usize) -> bool {
    let mut rt = ctx.m.runtime().await;
    let cfg = pod_config(ctx.logs.path(), n);
    let life = Instant::now();
    let t = Instant::now();
    let id = match call(
        Duration::from_secs(240),
        Box::pin(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })),
    )
    .await
    {
        Ok(r) => r.pod_sandbox_id,
        Err(e) => {
            ctx.error(
                n,
                "RunPodSandbox",
                format!("{e} (after {:.1} s)", t.elapsed().as_secs_f64()),
            );
            return false;
        }
    };
    let run = t.elapsed();
    ctx.run_times.lock().expect("times").push(run);
    ctx.ids.lock().expect("ids").push(id.clone());
    ctx.pods_started.fetch_add(1, Ordering::Relaxed);
    let ok = Box::pin(in_pod(ctx, &mut rt, n, &id, &cfg)).await;
    // Whatever happened, the pod goes.
    let t = Instant::now();
    let stopped = call(
        Duration::from_secs(120),
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        }),
    )
    .await;
    ctx.time("StopPodSandbox", t.elapsed());
    if let Err(e) = stopped {
        ctx.error(n, "StopPodSandbox", e);
        return false;
    }
    let t = Instant::now();
    let removed = call(
        Duration::from_secs(120),
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        }),
    )
    .await;
    ctx.time("RemovePodSandbox", t.elapsed());
    if let Err(e) = removed {
        ctx.error(n, "RemovePodSandbox", e);
        return false;
    }
    let _ = std::fs::remove_dir_all(ctx.logs.path().join(format!("pod{n}")));
    if ok {
        ctx.cycles_ok.fetch_add(1, Ordering::Relaxed);
    }
    println!(
        "pod {n:>4} {}: RunPodSandbox {:.2} s, whole life {:.2} s{}",
        &id[..12],
        run.as_secs_f64(),
        life.elapsed().as_secs_f64(),
        if ok { "" } else { " (with errors)" }
    );
    ok
}

/// The container, ExecSync, the log and the port forward in pod `id`.
async fn in_pod(
    ctx: &Ctx,
    rt: &mut RuntimeServiceClient<Channel>,
    n: usize,
    id: &str,
    cfg: &cri::PodSandboxConfig,
) -> bool {
    let t = Instant::now();
    let created = call(
        Duration::from_secs(60),
        Box::pin(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.to_owned(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "echo".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: ctx.image.clone(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), SCRIPT.into()],
                log_path: "echo/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(cfg.clone()),
        })),
    )
    .await;
    ctx.time("CreateContainer", t.elapsed());
    let cid = match created {
        Ok(r) => r.container_id,
        Err(e) => {
            ctx.error(n, "CreateContainer", e);
            return false;
        }
    };
    let t = Instant::now();
    let started = call(
        Duration::from_secs(60),
        rt.start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        }),
    )
    .await;
    ctx.time("StartContainer", t.elapsed());
    if let Err(e) = started {
        ctx.error(n, "StartContainer", e);
        return false;
    }
    let mut ok = true;

    let t = Instant::now();
    match call(
        Duration::from_secs(30),
        rt.exec_sync(cri::ExecSyncRequest {
            container_id: cid.clone(),
            cmd: vec!["echo".into(), "ok".into()],
            timeout: 10,
        }),
    )
    .await
    {
        Ok(r) if r.exit_code == 0 && r.stdout == b"ok\n" => ctx.time("ExecSync", t.elapsed()),
        Ok(r) => {
            ctx.error(
                n,
                "ExecSync",
                format!(
                    "exit {} stdout {:?} stderr {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                ),
            );
            ok = false;
        }
        Err(e) => {
            ctx.error(n, "ExecSync", e);
            ok = false;
        }
    }

    let log = ctx.logs.path().join(format!("pod{n}/echo/0.log"));
    let has_hi = moat_tests::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stdout F hi")
    })
    .await;
    if !has_hi {
        ctx.error(
            n,
            "container log",
            format!(
                "no `hi` in {} after 10 s: {:?}",
                log.display(),
                clip(&std::fs::read_to_string(&log).unwrap_or_default(), 300)
            ),
        );
        ok = false;
    }

    if ctx.port_forward_skipped.lock().expect("skip").is_none() {
        let t = Instant::now();
        match port_forward(rt, id, n).await {
            Ok(()) => ctx.time("port-forward", t.elapsed()),
            Err(e) => {
                ctx.error(n, "port-forward", e);
                ok = false;
            }
        }
    }
    ok
}

/// A round trip through the echo server over PortForward's streaming URL (SPDY).
async fn port_forward(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    n: usize,
) -> Result<(), String> {
    let url = call(
        Duration::from_secs(30),
        rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: id.to_owned(),
            port: vec![PORT.into()],
        }),
    )
    .await?
    .url;
    // The stream helpers panic on a broken session: a task turns that into an error.
    let payload = format!("soak round trip {n}\n").into_bytes();
    let task = tokio::spawn(async move {
        let mut pf = SpdyPortForward::connect(&url).await;
        let mut last = String::new();
        for _ in 0..25 {
            let (data, err) = pf
                .forward(PORT)
                .await
                .round_trip(&payload, Duration::from_secs(15))
                .await;
            if err.is_empty() && data == payload {
                pf.session.goaway().await;
                return Ok(());
            }
            last = format!(
                "data {:?}, error stream {err:?}",
                String::from_utf8_lossy(&data)
            );
            // nc may not listen yet.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pf.session.goaway().await;
        Err(format!("no echo after 25 tries; last: {last}"))
    });
    match tokio::time::timeout(Duration::from_secs(60), task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("stream client: {msg}"))
        }
        Ok(Err(e)) => Err(format!("stream client: {e}")),
        Err(_) => Err("no round trip in 60 s".to_owned()),
    }
}

/// Busybox nc in the image must have -e for the echo server.
async fn check_nc(ctx: &Ctx) {
    let out = Command::new("/bin/busybox")
        .args(["nc", "--help"])
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    if !out.contains("-e PROG") {
        let why = "busybox nc has no -e: no echo server, port-forward skipped".to_owned();
        println!("soak: {why}");
        *ctx.port_forward_skipped.lock().expect("skip") = Some(why);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Items of `after` not in `before`.
fn added<'a, T: Ord>(before: &'a BTreeSet<T>, after: &'a BTreeSet<T>) -> Vec<&'a T> {
    after.difference(before).collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = args();
    preflight();
    scrub_leftovers();
    let (reg, image) = Registry::with_busybox("soak/busybox").await;
    let metrics_port = moat_tests::free_port();
    // Pods get a long boot timeout: under load, TCG boots on few cores are slow, and this
    // soak is about leaks and churn, not boot deadlines (RunPodSandbox latency is printed).
    let m = Moatd::start(&format!(
        "[log]\nlevel = \"info\"\n[sandbox]\nguest_dir = \"{}\"\nboot_timeout_secs = 180\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n",
        guest_dir().display()
    ))
    .await;
    std::fs::create_dir_all(m.cni_dir()).expect("cni dir");
    std::fs::write(m.cni_dir().join("10-soak.conflist"), conflist()).expect("conflist");
    m.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    let moatd = moatd_pid(&m.config_path());
    let ctx = Arc::new(Ctx {
        m,
        image,
        logs: tempfile::tempdir().expect("logs"),
        moatd,
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        ids: Mutex::default(),
        run_times: Mutex::default(),
        step_times: Mutex::default(),
        errors: Mutex::default(),
        cycles_ok: AtomicUsize::new(0),
        pods_started: AtomicUsize::new(0),
        port_forward_skipped: Mutex::default(),
    });
    check_nc(&ctx).await;
    let dir = ctx.dir();
    println!(
        "soak: {} min, {} at once, moatd pid {moatd} ({}), dir {dir}, network {NET} on {BRIDGE} ({SUBNET})",
        a.minutes,
        a.parallel,
        moat_tests::moatd::moatd_bin().display()
    );
    let mut foreign: BTreeSet<String> = foreign_processes(&dir, moatd).into_iter().collect();

    // The control connection stays open from the first snapshot to the last.
    let mut ctl = ctx.m.runtime().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ctx.snapshot(&mut ctl).await;
    let (rss0, fds0) = sample(moatd);

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.minutes * 60.0);
    let next = Arc::new(AtomicUsize::new(1));
    Box::pin(cycle(&ctx, 0)).await;
    let first = sample(moatd);
    println!(
        "after the first pod: moatd RSS {:.1} MiB, {} fds",
        mib(first.0),
        first.1
    );
    let before = Arc::new(before);
    let middle = {
        let half = t0 + Duration::from_secs_f64(a.minutes * 30.0);
        let (ctx, before) = (ctx.clone(), before.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(half.into()).await;
            let s = sample(moatd);
            // The leak detectors must see live pods' traces: what is there half-way.
            let mut rt = ctx.m.runtime().await;
            let now = ctx.snapshot(&mut rt).await;
            println!(
                "half-way: moatd RSS {:.1} MiB, {} fds; beyond the first snapshot: {} pods and {} containers listed, {} processes, {} mounts, {} netns, {} veth/tap links, {} iptables lines of {NET}, {} IPAM reservations, {} run-dir entries",
                mib(s.0),
                s.1,
                now.pods.len(),
                now.containers.len(),
                now.procs
                    .keys()
                    .filter(|p| !before.procs.contains_key(*p))
                    .count(),
                added(&before.mounts, &now.mounts).len(),
                added(&before.netns, &now.netns).len(),
                now.links
                    .keys()
                    .filter(|l| !before.links.contains_key(*l))
                    .count(),
                added(&before.iptables_ours, &now.iptables_ours).len(),
                added(&before.ipam, &now.ipam).len(),
                added(&before.run_files, &now.run_files).len(),
            );
            s
        })
    };
    let mut workers = Vec::new();
    for _ in 0..a.parallel {
        let ctx = ctx.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                Box::pin(cycle(&ctx, n)).await;
            }
        }));
    }
    let mut watch = tokio::time::interval(Duration::from_secs(10));
    let all = futures::future::join_all(workers);
    tokio::pin!(all);
    let joined = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = watch.tick() => {
                foreign.extend(foreign_processes(&dir, moatd));
            }
        }
    };
    for j in joined {
        if let Err(e) = j {
            ctx.error(usize::MAX, "worker", format!("died: {e}"));
        }
    }
    let elapsed = t0.elapsed();
    let middle = middle.await.unwrap_or_default();
    let attempted = next.load(Ordering::Relaxed);
    foreign.extend(foreign_processes(&dir, moatd));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = sample(moatd);
    let after = ctx.snapshot(&mut ctl).await;
    let alive = Path::new(&format!("/proc/{moatd}")).exists();
    foreign.extend(foreign_processes(&dir, moatd));

    // The leak report. What names this soak's pods, dirs or network is a leak; node-wide
    // figures that another moatd on the host could move are leaks only when none ran.
    let ids: Vec<String> = ctx.ids.lock().expect("ids").clone();
    let ours = |s: &str| {
        s.contains(&dir)
            || s.contains(NET)
            || s.contains(BRIDGE)
            || s.contains(PREFIX)
            || ids.iter().any(|id| s.contains(&id[..12]))
    };
    let quiet_node = foreign.is_empty();
    let mut leaks: Vec<String> = Vec::new();
    let mut unattributed: Vec<String> = Vec::new();
    let mut note = |what: String, attributable: bool| {
        if attributable || quiet_node {
            leaks.push(what);
        } else {
            unattributed.push(what);
        }
    };
    for (pid, cmd) in &after.procs {
        if !before.procs.contains_key(pid) {
            note(format!("process {pid}: {cmd}"), ours(cmd));
        }
    }
    if after.fds.len() > before.fds.len() {
        let was: BTreeSet<&String> = before.fds.values().collect();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for t in after.fds.values().filter(|t| !was.contains(t)) {
            let kind = if t.starts_with("socket:") {
                "socket".to_owned()
            } else if t.starts_with("pipe:") {
                "pipe".to_owned()
            } else if t.starts_with("anon_inode:") {
                t.clone()
            } else {
                clip(t, 120)
            };
            *kinds.entry(kind).or_default() += 1;
        }
        note(
            format!(
                "moatd fds {} before the first pod, {} at the end; new: {kinds:?}",
                before.fds.len(),
                after.fds.len()
            ),
            true,
        );
    }
    for mp in added(&before.mounts, &after.mounts) {
        note(format!("mount {mp}"), true);
    }
    for ns in added(&before.netns, &after.netns) {
        note(format!("netns {ns}"), ours(ns));
    }
    for (name, line) in &after.links {
        if !before.links.contains_key(name) {
            note(format!("link {line}"), ours(line));
        }
    }
    for l in added(&before.iptables_ours, &after.iptables_ours) {
        note(format!("iptables: {l}"), true);
    }
    for l in added(&before.cni_chains, &after.cni_chains) {
        note(format!("iptables CNI chain: {l}"), false);
    }
    for r in added(&before.ipam, &after.ipam) {
        note(format!("IPAM reservation {NET}/{r}"), true);
    }
    for f in added(&before.run_files, &after.run_files) {
        // An empty directory made once (a parent of per-pod dirs) is not per pod.
        let empty_dir = f.ends_with('/')
            && std::fs::read_dir(ctx.m.run_dir().join(f)).is_ok_and(|mut d| d.next().is_none());
        if !empty_dir || ours(f) {
            note(format!("run dir: {f}"), true);
        }
    }
    for f in added(&before.root_files, &after.root_files) {
        let empty_dir = f.ends_with('/')
            && std::fs::read_dir(ctx.m.root().join(f)).is_ok_and(|mut d| d.next().is_none());
        if !empty_dir || ids.iter().any(|id| f.contains(&id[..12])) {
            note(format!("root dir: {f}"), true);
        }
    }
    for p in &after.pods {
        note(format!("ListPodSandbox still lists {p}"), true);
    }
    for c in &after.containers {
        note(format!("ListContainers still lists {c}"), true);
    }
    for (g, v) in &after.gauges {
        if *v > before.gauges.get(g).copied().unwrap_or(0.0) {
            note(format!("/metrics {g} = {v} at the end"), true);
        }
    }
    if !alive {
        note("moatd is gone".to_owned(), true);
    }

    // Figures.
    let mut runs = ctx.run_times.lock().expect("times").clone();
    runs.sort();
    let pods = ctx.pods_started.load(Ordering::Relaxed);
    let minutes = elapsed.as_secs_f64() / 60.0;
    let errors = ctx.errors.lock().expect("errors").clone();
    let rss_growth = end.0 as f64 / first.0.max(1) as f64 - 1.0;
    println!();
    println!("== soak figures ==");
    println!(
        "pods: {attempted} attempted, {pods} started, {} whole lives without an error, in {:.2} min ({:.1} pods/min)",
        ctx.cycles_ok.load(Ordering::Relaxed),
        minutes,
        pods as f64 / minutes
    );
    for (step, v) in ctx.step_times.lock().expect("times").iter_mut() {
        v.sort();
        println!(
            "{step}: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            v.len(),
            percentile(v, 0.5).as_secs_f64() * 1000.0,
            percentile(v, 0.99).as_secs_f64() * 1000.0,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    println!(
        "moatd before the first pod: RSS {:.1} MiB, {fds0} fds",
        mib(rss0)
    );
    println!(
        "moatd RSS after the first pod / half-way / end: {:.1} / {:.1} / {:.1} MiB ({:+.1}%)",
        mib(first.0),
        mib(middle.0),
        mib(end.0),
        rss_growth * 100.0
    );
    println!(
        "moatd fds after the first pod / half-way / end: {} / {} / {}",
        first.1, middle.1, end.1
    );
    println!(
        "node: {} CNI iptables lines before, {} after; {} moat- netns before, {} after",
        before.cni_lines,
        after.cni_lines,
        before.netns.len(),
        after.netns.len()
    );
    if let Some(text) = ctx.scrape().await {
        let phases: Vec<String> = ["network", "vmm_start", "kernel_boot", "setup", "total"]
            .iter()
            .filter_map(|p| {
                let get = |suffix: &str| {
                    text.lines()
                        .find(|l| {
                            l.starts_with(&format!(
                                "moat_run_pod_sandbox_duration_seconds_{suffix}{{"
                            )) && l.contains(&format!("phase=\"{p}\""))
                        })
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                };
                Some(format!("{p} {:.3} s", get("sum")? / get("count")?))
            })
            .collect();
        println!(
            "RunPodSandbox phases, mean (/metrics): {}",
            phases.join(", ")
        );
        let agent_errors: f64 = 0.0
            + text
                .lines()
                .filter(|l| l.starts_with("moat_agent_request_errors_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        let cni_errors: f64 = 0.0
            + text
                .lines()
                .filter(|l| {
                    l.starts_with("moat_cni_duration_seconds_count")
                        && l.contains("result=\"error\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        println!("/metrics: {agent_errors} agent call errors, {cni_errors} failed CNI calls");
    }
    let log = ctx.m.log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    println!("moatd log: {} WARN/ERROR lines", warns.len());
    for l in warns.iter().rev().take(10).rev() {
        println!("  {}", clip(l, 300));
    }
    if !foreign.is_empty() {
        println!(
            "another moatd or QEMU ran on this host during the soak; node-wide changes that name nothing of this soak's are listed as unattributed:"
        );
        for f in &foreign {
            println!("  {f}");
        }
    }
    for u in &unattributed {
        println!("unattributed: {u}");
    }
    if let Some(why) = ctx.port_forward_skipped.lock().expect("skip").as_ref() {
        println!("port-forward: {why}");
    }
    println!("errors: {}", errors.len());
    for e in &errors {
        println!("  {e}");
    }
    let leak_text = if leaks.is_empty() {
        "none".to_owned()
    } else {
        leaks.join("; ")
    };
    println!(
        "soak: {pods} pods in {minutes:.2} min ({:.1} pods/min), RunPodSandbox p50 {:.2} s p99 {:.2} s, moatd RSS start/middle/end {:.1}/{:.1}/{:.1} MiB, fds start/middle/end {}/{}/{}, errors: {}, leaks: {leak_text}",
        pods as f64 / minutes,
        percentile(&runs, 0.5).as_secs_f64(),
        percentile(&runs, 0.99).as_secs_f64(),
        mib(first.0),
        mib(middle.0),
        mib(end.0),
        first.1,
        middle.1,
        end.1,
        errors.len()
    );
    let mut failed = Vec::new();
    if !leaks.is_empty() {
        failed.push(format!("{} leaks", leaks.len()));
    }
    if rss_growth > 0.10 {
        failed.push(format!(
            "moatd RSS grew {:.1}% (bound 10%)",
            rss_growth * 100.0
        ));
    }
    if !errors.is_empty() {
        failed.push(format!("{} errors", errors.len()));
    }
    if pods == 0 {
        failed.push("no pod started".to_owned());
    }
    drop(ctl);
    let ctx = Arc::try_unwrap(ctx).ok();
    drop(ctx);
    drop(reg);
    scrub_leftovers();
    if failed.is_empty() {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAIL ({})", failed.join(", "));
        ExitCode::FAILURE
    }
}
