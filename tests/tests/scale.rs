//! Twenty pods on one moatd: they all come back after moatd is SIGKILLed (READY, their
//! containers RUNNING and logging, ExecSync answering), and twenty RunPodSandbox calls at
//! once leave ListPodSandbox fast. Each test prints its figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use moat_tests::moatd::Moatd;
use moat_tests::pod::guest_dir;
use moat_tests::registry::Registry;
use tonic::transport::Channel;

/// Twenty pods of 256 + 64 MiB guest RAM each: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PODS: usize = 20;

const TICKER: &str = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done";

/// A moatd that pulled the busybox image, and the registry holding it.
struct Node {
    m: Moatd,
    image: String,
    logs: tempfile::TempDir,
    _reg: Registry,
}

/// A moatd with `extra` sandbox settings (bare keys after `[sandbox]`) and the image.
async fn node(extra: &str) -> Node {
    let (reg, image) = Registry::with_busybox("scale/busybox").await;
    let m = Moatd::start(&format!(
        "[sandbox]\nguest_dir = \"{}\"\n{extra}\n",
        guest_dir().display()
    ))
    .await;
    println!(
        "moatd: {}, {} cores",
        moat_tests::moatd::moatd_bin().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    m.pull(&image).await;
    Node {
        m,
        image,
        logs: tempfile::tempdir().expect("logs"),
        _reg: reg,
    }
}

fn pod_config(logs: &std::path::Path, i: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("scale-{i}"),
            uid: format!("u-scale-{i}"),
            namespace: "scale".into(),
            attempt: 0,
        }),
        hostname: format!("scale-{i}"),
        log_directory: logs.join(format!("pod{i}")).display().to_string(),
        ..Default::default()
    }
}

impl Node {
    async fn rt(&self) -> RuntimeServiceClient<Channel> {
        self.m.runtime().await
    }

    async fn run_pod(
        &self,
        rt: &mut RuntimeServiceClient<Channel>,
        i: usize,
    ) -> Result<String, tonic::Status> {
        Box::pin(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(self.logs.path(), i)),
            runtime_handler: String::new(),
        }))
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// Creates and starts the ticker container in pod `i`.
    async fn start_ticker(&self, pod: &str, i: usize) -> String {
        let mut rt = self.rt().await;
        let cid = Box::pin(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "ticker".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: self.image.clone(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), TICKER.into()],
                log_path: "ticker/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config(self.logs.path(), i)),
        }))
        .await
        .unwrap_or_else(|e| panic!("create in pod {i}: {e:?}\n{}", tail(&self.m.log())))
        .into_inner()
        .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("start in pod {i}: {e:?}\n{}", tail(&self.m.log())));
        cid
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("pod{i}/ticker/0.log")))
            .unwrap_or_default()
    }

    async fn pods(&self) -> Vec<cri::PodSandbox> {
        self.rt()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list pods")
            .into_inner()
            .items
    }

    /// Stops and removes every pod; returns how long it took.
    async fn remove_all(&self) -> Duration {
        let started = Instant::now();
        let mut rt = self.rt().await;
        for p in self.pods().await {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("stop {}: {e:?}\n{}", p.id, tail(&self.m.log())));
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove {}: {e:?}\n{}", p.id, tail(&self.m.log())));
        }
        started.elapsed()
    }
}

/// The numbers of the `tick N` lines in a CRI log.
fn ticks(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            l.split_once(" stdout F tick ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .collect()
}

/// Asserts that no process mentions any of `ids` (their first 12 hex digits) within 30 s.
async fn assert_no_vm_left(ids: &[String], m: &Moatd) {
    let run_dir = m.run_dir().display().to_string();
    let gone = moat_tests::wait_until(Duration::from_secs(30), || {
        ids.iter()
            .all(|id| moat_tests::pids_with(&[&id[..12]]).is_empty())
            && moat_tests::pids_with(&[&run_dir]).is_empty()
    })
    .await;
    let left: Vec<(String, Vec<i32>)> = ids
        .iter()
        .map(|id| (id[..12].to_owned(), moat_tests::pids_with(&[&id[..12]])))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let in_run_dir = moat_tests::pids_with(&[&run_dir]);
    assert!(
        gone,
        "processes left after removal: {left:?}, in the run dir: {in_run_dir:?}\n{}",
        tail(&m.log())
    );
}

/// ExecSync `echo ok` in every container: asserts the answer, returns the sorted latencies.
async fn echo_ok_everywhere(n: &Node, ctrs: &[String]) -> Vec<Duration> {
    let mut rt = n.rt().await;
    let mut times = Vec::new();
    for (i, cid) in ctrs.iter().enumerate() {
        let t = Instant::now();
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: cid.clone(),
                cmd: vec!["echo".into(), "ok".into()],
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("exec in pod {i}: {e:?}\n{}", tail(&n.m.log())))
            .into_inner();
        times.push(t.elapsed());
        assert_eq!(
            (r.exit_code, &r.stdout[..]),
            (0, &b"ok\n"[..]),
            "pod {i}: {r:?}"
        );
    }
    times.sort();
    times
}

/// The host's 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// The last 80 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the lister measured: (when, how long) of each call or sleep.
#[derive(Default)]
struct Watch {
    lists: Vec<(Instant, Duration)>,
    versions: Vec<(Instant, Duration)>,
    lags: Vec<(Instant, Duration)>,
    errors: Vec<tonic::Status>,
}

/// The durations of the samples taken in [from, to) (open where `None`), sorted.
fn window(v: &[(Instant, Duration)], from: Option<Instant>, to: Option<Instant>) -> Vec<Duration> {
    let mut d: Vec<Duration> = v
        .iter()
        .filter(|(t, _)| from.is_none_or(|f| *t >= f) && to.is_none_or(|e| *t < e))
        .map(|(_, d)| *d)
        .collect();
    d.sort();
    d
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_pods_come_back_after_moatd_is_killed() {
    let _serial = SERIAL.lock().await;
    let mut n = node("").await;
    let started = Instant::now();
    let mut pods = Vec::new();
    let mut ctrs = Vec::new();
    let mut rt = n.rt().await;
    for i in 0..PODS {
        let t = Instant::now();
        let id = n
            .run_pod(&mut rt, i)
            .await
            .unwrap_or_else(|e| panic!("run pod {i}: {e:?}\n{}", tail(&n.m.log())));
        let run = t.elapsed();
        let cid = n.start_ticker(&id, i).await;
        println!(
            "pod {i:>2} {}: RunPodSandbox {:.2} s, + container started {:.2} s",
            &id[..12],
            run.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        pods.push(id);
        ctrs.push(cid);
    }
    drop(rt);
    println!(
        "{PODS} pods started sequentially in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ticking = moat_tests::wait_until(Duration::from_secs(60), || {
        (0..PODS).all(|i| !ticks(&n.log(i)).is_empty())
    })
    .await;
    assert!(
        ticking,
        "not every container logs: {:?}",
        (0..PODS)
            .map(|i| ticks(&n.log(i)).len())
            .collect::<Vec<_>>()
    );
    for id in &pods {
        assert!(
            !moat_tests::pids_with(&[&id[..12], moat_tests::vmm_mark()]).is_empty(),
            "no VMM process mentions pod {id}"
        );
    }

    let before = echo_ok_everywhere(&n, &ctrs).await;
    println!(
        "before SIGKILL: ExecSync `echo ok` in {PODS}/{PODS} containers, median {:.1} ms, max {:.1} ms (load {})",
        ms(before[before.len() / 2]),
        ms(*before.last().expect("times")),
        load()
    );

    // SIGKILL, then the same directories again.
    let last_before: Vec<u64> = (0..PODS)
        .map(|i| ticks(&n.log(i)).into_iter().max().unwrap_or(0))
        .collect();
    let t = Instant::now();
    n.m.crash_and_restart().await;
    let socket_up = t.elapsed();
    let recovered = moat_tests::wait_until_async(Duration::from_secs(120), || async {
        let pods = n.pods().await;
        pods.len() == PODS
            && pods
                .iter()
                .all(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
    })
    .await;
    let all_ready = t.elapsed();
    let listed = n.pods().await;
    let ready = listed
        .iter()
        .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
        .count();
    println!(
        "after SIGKILL: socket back in {:.2} s, {ready}/{PODS} pods READY after {:.2} s",
        socket_up.as_secs_f64(),
        all_ready.as_secs_f64()
    );
    assert!(
        recovered,
        "{ready}/{PODS} pods READY: {listed:?}\n{}",
        tail(&n.m.log())
    );
    for id in &pods {
        assert!(listed.iter().any(|p| &p.id == id), "pod {id} missing");
    }

    let mut rt = n.rt().await;
    let mut running = 0;
    for (i, cid) in ctrs.iter().enumerate() {
        let s = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: cid.clone(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("status of container {i}: {e:?}"))
            .into_inner()
            .status
            .expect("status");
        assert_eq!(
            s.state,
            cri::ContainerState::ContainerRunning as i32,
            "container in pod {i}: {s:?}\n{}",
            tail(&n.m.log())
        );
        running += 1;
    }
    println!("after SIGKILL: {running}/{PODS} containers RUNNING");

    // The logs go on: a tick numbered past the last one seen before the crash.
    let t = Instant::now();
    let continued = moat_tests::wait_until(Duration::from_secs(30), || {
        (0..PODS).all(|i| ticks(&n.log(i)).into_iter().max().unwrap_or(0) > last_before[i])
    })
    .await;
    let continued_in = t.elapsed();
    let stuck: Vec<usize> = (0..PODS)
        .filter(|&i| ticks(&n.log(i)).into_iter().max().unwrap_or(0) <= last_before[i])
        .collect();
    assert!(
        continued,
        "no new tick after the restart in pods {stuck:?}\n{}",
        tail(&n.m.log())
    );
    // Lines the containers printed while moatd was down: kept, lost or doubled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut lost = Vec::new();
    let mut doubled = 0;
    for (i, last) in last_before.iter().enumerate() {
        let mut seen = ticks(&n.log(i));
        seen.sort_unstable();
        let all = seen.len();
        seen.dedup();
        doubled += all - seen.len();
        let (lo, hi) = (seen[0], *seen.last().expect("ticks"));
        let missing: Vec<u64> = (lo..=hi)
            .filter(|k| seen.binary_search(k).is_err())
            .collect();
        if !missing.is_empty() {
            lost.push(format!(
                "pod {i}: ticks {missing:?} (last before the crash {last})"
            ));
        }
    }
    println!(
        "after SIGKILL: every container's log went on within {:.2} s; tick lines doubled: {doubled}; missing: {}",
        continued_in.as_secs_f64(),
        if lost.is_empty() {
            "none".to_owned()
        } else {
            lost.join(", ")
        }
    );

    let exec_times = echo_ok_everywhere(&n, &ctrs).await;
    println!(
        "after SIGKILL: ExecSync `echo ok` in {PODS}/{PODS} containers, median {:.1} ms, max {:.1} ms (load {})",
        ms(exec_times[exec_times.len() / 2]),
        ms(*exec_times.last().expect("times")),
        load()
    );

    let took = n.remove_all().await;
    println!(
        "{PODS} pods stopped and removed in {:.1} s",
        took.as_secs_f64()
    );
    assert!(n.pods().await.is_empty(), "pods left listed");
    assert_no_vm_left(&pods, &n.m).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_pod_starts_at_once_keep_lists_fast() {
    let _serial = SERIAL.lock().await;
    // Twenty TCG boots share two cores: the last ones answer after 45-60 s, at the edge of
    // the 60 s default boot timeout.
    let n = node("boot_timeout_secs = 180").await;

    // ListPodSandbox every 20 ms on its own connection, and two controls: Version (no store,
    // no lock: moatd's own responsiveness) and how late a 20 ms sleep of this process wakes
    // (the test's own share of the CPU). Before, during and after the burst.
    let done = Arc::new(AtomicBool::new(false));
    let lister = {
        let done = done.clone();
        let mut rt = n.rt().await;
        tokio::spawn(async move {
            let mut w = Watch::default();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                match rt
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await
                {
                    Ok(_) => w.lists.push((t, t.elapsed())),
                    Err(e) => w.errors.push(e),
                }
                // A second control: Version touches neither the store nor a lock.
                let t = Instant::now();
                match rt
                    .version(cri::VersionRequest {
                        version: String::new(),
                    })
                    .await
                {
                    Ok(_) => w.versions.push((t, t.elapsed())),
                    Err(e) => w.errors.push(e),
                }
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(20)).await;
                w.lags
                    .push((t, t.elapsed().saturating_sub(Duration::from_millis(20))));
            }
            w
        })
    };
    // Two seconds with no pod, for comparison.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    println!(
        "burst starts at {:.3} (Unix time)",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    );
    let calls = (0..PODS).map(|i| {
        let n = &n;
        async move {
            let mut rt = n.rt().await;
            let t = Instant::now();
            let r = n.run_pod(&mut rt, i).await;
            (i, r, t.elapsed())
        }
    });
    let results = futures::future::join_all(calls).await;
    let ended = Instant::now();
    let burst = ended - started;
    // And three with twenty idle pods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::Relaxed);
    let w = lister.await.expect("lister");
    let list_errors = w.errors;

    let mut ok = 0;
    let mut run_times = Vec::new();
    for (i, r, took) in &results {
        match r {
            Ok(id) => {
                ok += 1;
                run_times.push(*took);
                println!(
                    "RunPodSandbox {i:>2}: ok {} in {:.2} s",
                    &id[..12],
                    took.as_secs_f64()
                );
            }
            Err(e) => println!(
                "RunPodSandbox {i:>2}: {:?} after {:.2} s: {}",
                e.code(),
                took.as_secs_f64(),
                e.message()
            ),
        }
    }
    run_times.sort();
    println!(
        "burst of {PODS} RunPodSandbox: {ok}/{PODS} ok, all answered in {:.1} s (fastest {:.1} s, median {:.1} s, slowest {:.1} s)",
        burst.as_secs_f64(),
        run_times.first().copied().unwrap_or_default().as_secs_f64(),
        percentile(&run_times, 0.5).as_secs_f64(),
        run_times.last().copied().unwrap_or_default().as_secs_f64(),
    );
    let lists = window(&w.lists, Some(started), Some(ended));
    let (p99, max) = (
        percentile(&lists, 0.99),
        lists.last().copied().unwrap_or_default(),
    );
    for (what, v) in [
        ("ListPodSandbox", &w.lists),
        ("control: Version", &w.versions),
        (
            "control: a 20 ms sleep of the test process woke late by",
            &w.lags,
        ),
    ] {
        let line = |name: &str, d: &[Duration]| {
            format!(
                "{name} {} calls, median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                d.len(),
                ms(percentile(d, 0.5)),
                ms(percentile(d, 0.99)),
                ms(d.last().copied().unwrap_or_default())
            )
        };
        println!(
            "{what}: {}; {}; {}",
            line("no pod:", &window(v, None, Some(started))),
            line("during the burst:", &window(v, Some(started), Some(ended))),
            line("20 idle pods after:", &window(v, Some(ended), None)),
        );
    }
    let mut slow: Vec<&(Instant, Duration)> = w
        .lists
        .iter()
        .chain(&w.versions)
        .filter(|(t, _)| *t >= started && *t < ended)
        .collect();
    slow.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    let slow: Vec<String> = slow
        .iter()
        .take(5)
        .map(|(t, d)| format!("{:.1} ms at +{:.2} s", ms(*d), (*t - started).as_secs_f64()))
        .collect();
    println!(
        "slowest ListPodSandbox/Version calls in the burst: {}",
        slow.join(", ")
    );
    println!("ListPodSandbox errors: {}", list_errors.len());
    let listed = n.pods().await;
    let ids: Vec<String> = listed.iter().map(|p| p.id.clone()).collect();
    let ready = listed
        .iter()
        .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
        .count();
    println!(
        "after the burst: {} pods listed, {ready} READY",
        listed.len()
    );

    let took = n.remove_all().await;
    println!(
        "{} pods stopped and removed in {:.1} s",
        ids.len(),
        took.as_secs_f64()
    );
    assert!(
        list_errors.is_empty(),
        "ListPodSandbox or Version failed: {list_errors:?}"
    );
    for (i, r, _) in &results {
        if let Err(e) = r {
            assert!(
                !e.message().is_empty() && e.code() != tonic::Code::Unknown,
                "RunPodSandbox {i} failed without a clear status: {e:?}"
            );
        }
    }
    assert!(
        ok >= PODS - 2,
        "only {ok}/{PODS} RunPodSandbox succeeded\n{}",
        tail(&n.m.log())
    );
    assert_eq!(ready, ok, "every pod that started is READY");
    assert!(n.pods().await.is_empty(), "pods left listed");
    assert_no_vm_left(&ids, &n.m).await;
    // The goal: p99 under 50 ms while twenty TCG guests boot on two cores. It holds because
    // List never waits for a boot (no lock held across one, no worker blocked by a fork or
    // a commit) and the VMs run below moatd's CPU priority, their scheduler autogroups
    // included (before that, p99 was ~120 ms and Version, the control, as slow). A single
    // call may still wait for a time slice: the max is bounded looser.
    assert!(
        p99 < Duration::from_millis(50) && max < Duration::from_millis(500),
        "ListPodSandbox during the burst: p99 {:.1} ms, max {:.1} ms (bounds: p99 50 ms, max 500 ms)",
        ms(p99),
        ms(max)
    );
}
