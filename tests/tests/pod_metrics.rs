//! Pod stats, CRI metrics and moatd's /metrics against a real pod VM: a container that
//! burns CPU and holds 100 MiB shows in PodSandboxStats and ListPodSandboxMetrics as its
//! cgroup in the guest counts it, and /metrics parses as Prometheus text and moves while
//! pods start and exec.

use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_tests::pod::{pod_with, run_pod};

/// `GET /metrics`, parsed as Prometheus parses it.
async fn scrape(port: u16) -> prometheus_parse::Scrape {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// The guest cgroup's own figures for container `id`: (memory.current, CPU ns).
async fn cgroup(p: &moat_tests::pod::Pod, id: &str) -> (u64, u64) {
    let r = p
        .exec(
            id,
            // The exec joins the container's cgroup; the guest's hierarchy is mounted.
            &[
                "sh",
                "-c",
                "d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $d/memory.current $d/cpu.stat",
            ],
        )
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let mut lines = out.lines();
    let mem = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("memory.current");
    let usec: u64 = lines
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .expect("usage_usec");
    (mem, usec * 1000)
}

fn near(what: &str, got: u64, want: u64) {
    let (g, w) = (got as f64, want as f64);
    assert!(
        (g - w).abs() <= 0.2 * w,
        "{what}: {got} is not within 20% of the guest cgroup's {want}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_container_shows_in_pod_stats_metrics_and_prometheus() {
    let port = moat_tests::free_port();
    let p = pod_with(
        "metrics",
        &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
        |_| {},
    )
    .await;
    // The first pod's start is in the histogram, by phase.
    let before = scrape(port).await;
    for phase in ["network", "vmm_start", "kernel_boot", "setup", "total"] {
        assert_eq!(
            sample(
                &before,
                "moat_run_pod_sandbox_duration_seconds_count",
                &[("phase", phase)]
            ),
            Some(1.0),
            "phase {phase}"
        );
    }
    assert_eq!(
        sample(&before, "moat_pod_sandboxes", &[("state", "ready")]),
        Some(1.0)
    );
    let host_mem = sample(&before, "moat_pod_host_memory_bytes", &[("pod", "metrics")])
        .expect("the pod's host memory");
    assert!(host_mem > 32.0 * 1048576.0, "{host_mem}");

    // 100 MiB in the container's writable layer (guest memory, charged to its cgroup), then
    // a busy loop.
    let id = p
        .create(
            "burn",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>/dev/null; while :; do :; done",
            ],
        )
        .await
        .expect("create");
    p.start(&id).await;
    let mut rt = p.m.runtime().await;
    // Let it burn long enough that whole CPU seconds (the CRI metric's unit) are precise
    // to 20%.
    assert!(
        moat_tests::wait_until_async(Duration::from_secs(60), || async {
            cgroup(&p, &id).await.1 >= 6_000_000_000
        })
        .await,
        "the container burns CPU"
    );

    // PodSandboxStats: the container as its cgroup counts it; the pod at least as much.
    let (mem, cpu) = cgroup(&p, &id).await;
    assert!(mem >= 100 << 20, "the guest holds 100 MiB: {mem}");
    let s = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats");
    let linux = s.linux.expect("linux");
    let c = &linux.containers[0];
    let c_mem = c
        .memory
        .as_ref()
        .and_then(|m| m.usage_bytes.as_ref())
        .expect("mem")
        .value;
    let c_cpu = c
        .cpu
        .as_ref()
        .and_then(|m| m.usage_core_nano_seconds.as_ref())
        .expect("cpu")
        .value;
    near("container memory in PodSandboxStats", c_mem, mem);
    near("container CPU in PodSandboxStats", c_cpu, cpu);
    let pod_mem = linux
        .memory
        .and_then(|m| m.working_set_bytes)
        .expect("pod mem")
        .value;
    assert!(
        pod_mem >= c_mem,
        "the pod's host memory ({pod_mem}) holds its container's ({c_mem})"
    );

    // ListPodSandboxMetrics: the same, under cAdvisor's names.
    let (mem, cpu) = cgroup(&p, &id).await;
    let all = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("metrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].pod_sandbox_id, p.id);
    let cm = &all[0].container_metrics[0];
    assert_eq!(cm.container_id, id);
    let value = |name: &str| {
        let m = cm
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(m.label_values[0], "burn");
        assert_eq!(m.label_values[5], "metrics");
        m.value.as_ref().expect("value").value
    };
    near(
        "container_memory_usage_bytes",
        value("container_memory_usage_bytes"),
        mem,
    );
    near(
        "container_cpu_usage_seconds_total",
        value("container_cpu_usage_seconds_total"),
        cpu / 1_000_000_000,
    );
    let pod_cpu = all[0]
        .metrics
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .expect("the pod's CPU");
    assert_eq!(
        pod_cpu.label_values[0], "",
        "the pod's series has no container"
    );

    // /metrics while a second pod starts and the first execs: the census sees the new pod
    // creating, and the histograms count its boot and the execs.
    let logs = tempfile::tempdir().expect("logs");
    let second = {
        let m = &p.m;
        async move { run_pod(m, "second", logs.path(), |_| {}).await }
    };
    let watch = async {
        let mut creating = false;
        for _ in 0..300 {
            let s = scrape(port).await;
            if sample(&s, "moat_pod_sandboxes", &[("state", "creating")]) == Some(1.0) {
                creating = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        creating
    };
    let (second, creating) = tokio::join!(second, watch);
    second.expect("second pod");
    assert!(
        creating,
        "a scrape during RunPodSandbox sees the pod creating"
    );
    let after = scrape(port).await;
    assert_eq!(
        sample(
            &after,
            "moat_run_pod_sandbox_duration_seconds_count",
            &[("phase", "total")]
        ),
        Some(2.0)
    );
    let execs = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "moat_agent_request_duration_seconds_count",
            &[("method", "exec_sync")],
        )
        .unwrap_or(0.0)
    };
    assert!(execs(&after) > execs(&before), "exec calls are counted");
    assert_eq!(
        sample(&after, "moat_pod_sandboxes", &[("state", "ready")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, "moat_containers", &[("state", "running")]),
        Some(1.0)
    );
    assert!(
        sample(&after, "moat_cni_duration_seconds_count", &[("op", "add")]).is_none(),
        "no CNI network here: no CNI calls"
    );
    assert!(sample(&after, "moat_image_pull_bytes_total", &[]).expect("pull bytes") > 0.0);
}
