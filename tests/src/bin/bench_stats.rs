//! Benchmark: what stats cost. With 10 pods of one idle container each on a release moatd,
//! the median latency of ListPodSandboxStats and ListPodSandboxMetrics (each asks every
//! pod's agent and reads the host's /proc), against ListPodSandbox (the store alone) in
//! the same run, and of a /metrics scrape.
//!
//! Usage: bench-stats [--runs N] [--pods P]   (MOATD_BIN: the release moatd; needs
//! guest-image/out)

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::bench::{median, runs_arg};
use moat_tests::moatd::Moatd;
use moat_tests::registry::Registry;

fn pods_arg(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

async fn timed<T, F: std::future::Future<Output = T>>(f: F) -> Duration {
    let t = Instant::now();
    f.await;
    t.elapsed()
}

#[tokio::main]
async fn main() {
    let runs = runs_arg(30);
    let n_pods = pods_arg(10);
    let guest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out");
    let (_reg, image) = Registry::with_busybox("bench/busybox").await;
    let port = moat_tests::free_port();
    let m = Moatd::start(&format!(
        "[sandbox]\nguest_dir = \"{}\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n",
        guest.display()
    ))
    .await;
    m.pull(&image).await;
    let logs = tempfile::tempdir().expect("logs");
    let mut rt = m.runtime().await;
    for i in 0..n_pods {
        let id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: format!("stats-{i}"),
                        uid: format!("uid-{i}"),
                        namespace: "bench".into(),
                        attempt: 0,
                    }),
                    log_directory: logs.path().join(format!("pod{i}")).display().to_string(),
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            })
            .await
            .expect("run pod")
            .into_inner()
            .pod_sandbox_id;
        let cid = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: id,
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "idle".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    command: vec!["sleep".into(), "3600".into()],
                    log_path: "idle.log".into(),
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await
            .expect("create")
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: cid })
            .await
            .expect("start");
    }
    println!("{n_pods} pods running, one idle container each; {runs} calls of each kind");
    let (mut list, mut stats, mut metrics, mut scrape) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        list.push(timed(rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })).await);
        let mut r = rt.clone();
        stats.push(
            timed(async move {
                let s = r
                    .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
                    .await
                    .expect("stats")
                    .into_inner()
                    .stats;
                assert_eq!(s.len(), n_pods);
            })
            .await,
        );
        let mut r = rt.clone();
        metrics.push(
            timed(async move {
                let s = r
                    .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
                    .await
                    .expect("metrics")
                    .into_inner()
                    .pod_metrics;
                assert_eq!(s.len(), n_pods);
            })
            .await,
        );
        scrape.push(
            timed(async {
                reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                    .await
                    .expect("scrape")
                    .text()
                    .await
                    .expect("body")
            })
            .await,
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let l = median(&mut list);
    let s = median(&mut stats);
    let x = median(&mut metrics);
    let p = median(&mut scrape);
    println!("ListPodSandbox median {:.2} ms", ms(l));
    println!(
        "ListPodSandboxStats median {:.2} ms ({:.1}x ListPodSandbox)",
        ms(s),
        ms(s) / ms(l)
    );
    println!(
        "ListPodSandboxMetrics median {:.2} ms ({:.1}x ListPodSandbox)",
        ms(x),
        ms(x) / ms(l)
    );
    println!("/metrics scrape median {:.2} ms", ms(p));
    for id in rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
    {
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
}
