//! Pod networking end to end: Debian's CNI plugins (bridge, host-local, portmap) wire each
//! pod VM's network namespace; the guest gets the CNI interface's MAC and IP through a tap.
//! Pods reach each other and the host, the host reaches them by pod IP and host port, DNS
//! lands in the containers, and nothing is left behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_tests::pod::{Pod, pod_on_network, run_pod};

/// The host port pod A's HTTP server is published on.
const HOST_PORT: i32 = 18480;

/// The tests here look at node-wide state (network namespaces, iptables): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let plugins = ["bridge", "host-local", "portmap"]
        .iter()
        .all(|p| Path::new("/usr/lib/cni").join(p).exists());
    if !root || !plugins {
        eprintln!(
            "SKIPPED {test}: needs root and Debian's containernetworking-plugins in /usr/lib/cni"
        );
        return true;
    }
    false
}

fn conflist(name: &str, bridge: &str, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
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

/// Removes what an earlier run that died midway left of this test network: its bridge,
/// IPAM reservations and iptables rules (a stale host-port DNAT would shadow the new one).
fn scrub_leftovers(net: &str, bridge: &str, subnet_prefix: &str) {
    let _ = Command::new("ip").args(["link", "del", bridge]).status();
    let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{net}"));
    sh(&format!(
        "iptables-save | grep -v -e '{net}' -e '{subnet_prefix}' -e 'dport {HOST_PORT} ' | iptables-restore"
    ));
}

async fn http_get(url: &str) -> Result<String, String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    r.text().await.map_err(|e| e.to_string())
}

async fn eventually_get(url: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        match http_get(url).await {
            Ok(body) if body.contains(want) => return body,
            Ok(body) => last = body,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("GET {url}: never saw {want:?}; last: {last}");
}

async fn stop_and_remove(p: &Pod, id: &str) {
    let mut rt = p.m.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("stop: {e:?}\n{}", p.m.log()));
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_each_other_the_host_and_host_ports() {
    if skip("pods_reach_each_other_the_host_and_host_ports") {
        return;
    }
    let _serial = SERIAL.lock().await;
    const BRIDGE: &str = "moate2e0";
    const NET: &str = "moat-e2e-a";
    scrub_leftovers(NET, BRIDGE, "10.201.0.");
    let mut p = pod_on_network(
        "net-a",
        "",
        Some(&conflist(NET, BRIDGE, "10.201.0.0/24")),
        |c| {
            c.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 8080,
                host_port: HOST_PORT,
                host_ip: String::new(),
            }];
            c.dns_config = Some(cri::DnsConfig {
                servers: vec!["10.201.0.53".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            });
        },
    )
    .await;
    let ip_a = p.pod_ip(&p.id).await;
    assert!(ip_a.starts_with("10.201.0."), "pod IP {ip_a:?}");

    // An HTTP server in pod A, reached from the host by pod IP and through the host port.
    let web = p
        .create(
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/w && echo hello-from-a > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w",
            ],
        )
        .await
        .expect("create web");
    p.start(&web).await;
    eventually_get(&format!("http://{ip_a}:8080/index.html"), "hello-from-a").await;
    eventually_get(
        &format!("http://10.201.0.1:{HOST_PORT}/index.html"),
        "hello-from-a",
    )
    .await;

    // DNS from the pod config is the container's resolv.conf.
    let resolv = String::from_utf8_lossy(&p.exec(&web, &["cat", "/etc/resolv.conf"]).await.stdout)
        .to_string();
    for want in [
        "nameserver 10.201.0.53",
        "search svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(resolv.contains(want), "{want} in {resolv}");
    }

    // Pod B reaches pod A and the host.
    let logs_b = tempfile::tempdir().expect("logs");
    let b = run_pod(&p.m, "net-b", logs_b.path(), |_| {})
        .await
        .unwrap_or_else(|e| panic!("pod b: {e:?}\n{}", p.m.log()));
    let ip_b = p.pod_ip(&b).await;
    assert!(
        ip_b.starts_with("10.201.0.") && ip_b != ip_a,
        "pod IPs {ip_a} {ip_b}"
    );
    let client = p
        .create_in(&b, "client", &["sleep", "100000"], |_| {})
        .await
        .expect("create client");
    p.start(&client).await;
    let got = p
        .exec(
            &client,
            &[
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{ip_a}:8080/index.html"),
            ],
        )
        .await;
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("hello-from-a"),
        "pod to pod: {got:?}"
    );
    let host = tokio::net::TcpListener::bind("10.201.0.1:0")
        .await
        .expect("bind");
    let host_port = host.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = host.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\nhello-from-host\n")
                .await;
        }
    });
    let got = p
        .exec(
            &client,
            &[
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://10.201.0.1:{host_port}/"),
            ],
        )
        .await;
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("hello-from-host"),
        "pod to host: {got:?}"
    );

    // moatd crashes: the pods keep their network, and their IPs are still reported after
    // the restart; CNI DEL then runs from the cache.
    p.m.crash_and_restart().await;
    assert_eq!(
        p.pod_ip(&p.id).await,
        ip_a,
        "the pod IP survives a moatd crash"
    );
    eventually_get(&format!("http://{ip_a}:8080/index.html"), "hello-from-a").await;

    // Nothing is left once both pods are gone.
    let ids = [p.id.clone(), b.clone()];
    stop_and_remove(&p, &b).await;
    stop_and_remove(&p, &p.id).await;
    for id in &ids {
        let short = &id[..12];
        assert!(
            !Path::new(&format!("/var/run/netns/moat-{short}")).exists(),
            "netns of {short} left"
        );
        assert!(
            !sh("iptables-save").contains(short),
            "iptables rules of {short} left"
        );
    }
    let ports = sh(&format!("ip -o link show master {BRIDGE}"));
    assert!(ports.trim().is_empty(), "veths left on the bridge: {ports}");
    let ipam: Vec<String> = std::fs::read_dir(format!("/var/lib/cni/networks/{NET}"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(ipam.is_empty(), "IPAM reservations left: {ipam:?}");
    assert!(
        !sh("iptables-save").contains(&HOST_PORT.to_string()),
        "host port rule left"
    );
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_cni_add_fails_is_cleaned_up_and_says_why() {
    if skip("a_pod_whose_cni_add_fails_is_cleaned_up_and_says_why") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let netns_before = sh("ls /var/run/netns 2>/dev/null");
    let p = pod_on_network("ok", "", None, |_| {}).await;
    let bad = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "moat-e2e-bad",
        "plugins": [{"type": "moat-no-such-plugin"}]
    });
    std::fs::create_dir_all(p.m.cni_dir()).expect("cni dir");
    std::fs::write(p.m.cni_dir().join("10-bad.conflist"), bad.to_string()).expect("write");
    let logs = tempfile::tempdir().expect("logs");
    let e = run_pod(&p.m, "broken", logs.path(), |_| {})
        .await
        .expect_err("CNI ADD fails");
    assert!(
        e.message().contains("moat-no-such-plugin"),
        "{}",
        e.message()
    );
    let pods =
        p.m.runtime()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list")
            .into_inner()
            .items;
    assert_eq!(pods.len(), 1, "only the first pod: {pods:?}");
    assert_eq!(
        sh("ls /var/run/netns 2>/dev/null"),
        netns_before,
        "no netns left"
    );
    assert!(
        std::fs::read_dir(p.m.root().join("cni"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "no CNI cache left"
    );
    // The pod that ran before the network broke had none (loopback only) and stops cleanly.
    assert_eq!(p.pod_ip(&p.id).await, "");
    stop_and_remove(&p, &p.id).await;
}

/// PodSandboxStats and ListPodSandboxStats: the pod's traffic is its CNI interface's, its
/// CPU, memory and processes its containers'; filters by id and labels work; an unknown or
/// empty id is refused with the right code.
#[tokio::test(flavor = "multi_thread")]
async fn pod_sandbox_stats_count_the_pods_traffic_and_containers() {
    if skip("pod_sandbox_stats_count_the_pods_traffic_and_containers") {
        return;
    }
    let _serial = SERIAL.lock().await;
    scrub_leftovers("moat-stats", "moatst0", "10.88.77.");
    let p = pod_on_network(
        "stats",
        "",
        Some(&conflist("moat-stats", "moatst0", "10.88.77.0/24")),
        |c| {
            c.labels.insert("app".into(), "stats".into());
        },
    )
    .await;
    let id = p.create("idle", &["sleep", "300"]).await.expect("create");
    p.start(&id).await;
    p.wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    let ping = p
        .exec(
            &id,
            &["/bin/busybox", "ping", "-c", "3", "-W", "2", "10.88.77.1"],
        )
        .await;
    assert_eq!(ping.exit_code, 0, "{ping:?}");

    let mut rt = p.m.runtime().await;
    let s = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(s.attributes.as_ref().expect("attributes").id, p.id);
    let linux = s.linux.expect("linux");
    let net = linux.network.expect("network");
    let eth = net.default_interface.expect("default interface");
    assert_eq!(eth.name, "eth0");
    // Three pings and their answers, at least.
    assert!(eth.rx_bytes.expect("rx").value >= 3 * 98, "{eth:?}");
    assert!(eth.tx_bytes.expect("tx").value >= 3 * 98, "{eth:?}");
    assert!(
        linux
            .cpu
            .expect("cpu")
            .usage_core_nano_seconds
            .expect("cpu")
            .value
            > 0
    );
    assert!(
        linux
            .memory
            .expect("memory")
            .working_set_bytes
            .expect("ws")
            .value
            > 0
    );
    assert!(
        linux
            .process
            .expect("process")
            .process_count
            .expect("n")
            .value
            >= 1
    );
    assert_eq!(linux.containers.len(), 1);
    assert_eq!(
        linux.containers[0]
            .attributes
            .as_ref()
            .expect("attributes")
            .id,
        id
    );

    let list = |filter: cri::PodSandboxStatsFilter| {
        let mut rt = rt.clone();
        async move {
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                filter: Some(filter),
            })
            .await
            .expect("list")
            .into_inner()
            .stats
            .len()
        }
    };
    assert_eq!(list(cri::PodSandboxStatsFilter::default()).await, 1);
    // The same traffic under cAdvisor's names, on the pod's series.
    let metrics = rt
        .clone()
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("metrics")
        .into_inner()
        .pod_metrics;
    let rx = metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("the pod's received bytes");
    assert_eq!(rx.label_values.last().map(String::as_str), Some("eth0"));
    assert!(rx.value.as_ref().expect("value").value >= 3 * 98, "{rx:?}");
    let packets = metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "container_network_transmit_packets_total")
        .expect("the pod's sent packets");
    assert!(
        packets.value.as_ref().expect("value").value >= 3,
        "{packets:?}"
    );
    assert_eq!(
        list(cri::PodSandboxStatsFilter {
            id: p.id[..12].into(),
            ..Default::default()
        })
        .await,
        1
    );
    let labels = |v: &str| cri::PodSandboxStatsFilter {
        label_selector: [("app".to_owned(), v.to_owned())].into(),
        ..Default::default()
    };
    assert_eq!(list(labels("stats")).await, 1);
    assert_eq!(list(labels("other")).await, 0);

    for (bad, code) in [
        ("", tonic::Code::InvalidArgument),
        ("0123456789ab", tonic::Code::NotFound),
    ] {
        let e = rt
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: bad.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "{e:?}");
    }
    stop_and_remove(&p, &p.id).await;
    let _ = Command::new("ip").args(["link", "del", "moatst0"]).status();
}
