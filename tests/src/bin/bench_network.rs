//! Benchmark: pod networking. TCP throughput and round-trip latency host to pod and pod to
//! pod, through the CNI bridge, the pod's netns, the tap and the VM's virtio-net, against
//! the same path into plain network namespaces (no VM) on the same bridge, in the same run.
//! Both sides run the same busybox: the pods from the test image, the plain namespaces from
//! the host's /bin/busybox.
//!
//! Usage: bench-network [--runs N]   (root; set MOATD_BIN to the release moatd)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::bench::median;
use moat_tests::pod::{pod_on_network, run_pod};

const BRIDGE: &str = "moatbench0";
const NET: &str = "moat-bench";
const MIB: usize = 1 << 20;
const SEND_MIB: usize = 100;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Servers every endpoint runs: 5001 echoes, 5003 sends SEND_MIB of zeros.
fn servers() -> String {
    format!(
        "nc -ll -p 5001 -e cat & nc -ll -p 5003 -e dd if=/dev/zero bs=65536 count={} & wait",
        SEND_MIB * 16
    )
}

/// Host side: the TCP round trip to `ip`'s echo server, median of `runs`.
fn tcp_rtt(ip: &str, runs: usize) -> Duration {
    let mut s = retry_connect(&format!("{ip}:5001"));
    s.set_nodelay(true).expect("nodelay");
    let mut v = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..runs {
        let t = Instant::now();
        s.write_all(b"x").expect("write");
        s.read_exact(&mut b).expect("read");
        v.push(t.elapsed());
    }
    median(&mut v)
}

/// Host side: MiB/s reading the zero server of `ip`.
fn tcp_read(ip: &str) -> f64 {
    let mut s = retry_connect(&format!("{ip}:5003"));
    let t = Instant::now();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    assert_eq!(n, SEND_MIB * MIB, "all of {ip}'s zeros");
    SEND_MIB as f64 / t.elapsed().as_secs_f64()
}

fn retry_connect(addr: &str) -> TcpStream {
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(addr) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("nothing listens on {addr}");
}

/// Parses busybox ping's "round-trip min/avg/max = a/b/c ms" into the average.
fn ping_avg(out: &str) -> Duration {
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    Duration::from_secs_f64(avg / 1000.0)
}

/// A plain network namespace on the bridge, running the same servers.
struct PlainNs {
    name: String,
    servers: std::process::Child,
}

impl PlainNs {
    fn new(name: &str, ip: &str) -> Self {
        let veth = format!("v{name}");
        sh(&format!(
            "ip netns del {name} 2>/dev/null; ip netns add {name} && ip link add {veth} type veth peer name eth0 netns {name} && ip link set {veth} master {BRIDGE} up && ip -n {name} addr add {ip}/24 dev eth0 && ip -n {name} link set eth0 up && ip -n {name} link set lo up && ip -n {name} route add default via 10.202.0.1"
        ));
        let servers = servers();
        let servers = Command::new("ip")
            .args(["netns", "exec", name, "busybox", "sh", "-c", &servers])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("servers");
        Self {
            name: name.into(),
            servers,
        }
    }

    fn exec(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} busybox sh -c '{cmd}'",
            self.name
        ))
    }
}

impl Drop for PlainNs {
    fn drop(&mut self) {
        sh(&format!(
            "ip netns pids {0} | xargs -r kill -9; ip netns del {0}; ip link del v{0}",
            self.name
        ));
        let _ = self.servers.kill();
        let _ = self.servers.wait();
    }
}

#[tokio::main]
async fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "bench-network needs root");
    let runs = moat_tests::bench::runs_arg(200);
    sh(&format!(
        "ip link del {BRIDGE} 2>/dev/null; rm -rf /var/lib/cni/networks/{NET}"
    ));
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": NET,
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.202.0.0/24",
                              "rangeStart": "10.202.0.10", "rangeEnd": "10.202.0.100"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}]
    })
    .to_string();
    let p = pod_on_network("bench-a", "", Some(&conflist), |_| {}).await;
    let logs_b = tempfile::tempdir().expect("logs");
    let b = run_pod(&p.m, "bench-b", logs_b.path(), |_| {})
        .await
        .expect("pod b");
    let ip_a = p.pod_ip(&p.id).await;
    let srv = p
        .create("servers", &["sh", "-c", &servers()])
        .await
        .expect("create servers");
    p.start(&srv).await;
    let client = p
        .create_in(&b, "client", &["sleep", "100000"], |_| {})
        .await
        .expect("create client");
    p.start(&client).await;
    let plain_a = PlainNs::new("moatbnA", "10.202.0.250");
    let plain_b = PlainNs::new("moatbnB", "10.202.0.251");

    // Host to pod, and host to a plain netns.
    let (rtt_vm, rtt_ns) = (tcp_rtt(&ip_a, runs), tcp_rtt("10.202.0.250", runs));
    let (tp_vm, tp_ns) = (tcp_read(&ip_a), tcp_read("10.202.0.250"));
    // Pod to pod, and plain netns to plain netns (ICMP round trip; TCP read of the zeros).
    let ping = format!("ping -c {} -i 0.05 -q", runs.min(100));
    let vm_ping = p
        .exec_for(&client, &["sh", "-c", &format!("{ping} {ip_a}")], 120)
        .await;
    let rtt_pp_vm = ping_avg(&String::from_utf8_lossy(&vm_ping.stdout));
    let rtt_pp_ns = ping_avg(&plain_b.exec(&format!("{ping} 10.202.0.250")));
    let read = "nc {} 5003 | wc -c".to_string();
    let t = Instant::now();
    let out = p
        .exec_for(&client, &["sh", "-c", &read.replace("{}", &ip_a)], 300)
        .await;
    let tp_pp_vm = SEND_MIB as f64 / t.elapsed().as_secs_f64();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}", SEND_MIB * MIB)),
        "pod to pod read: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = Instant::now();
    let out = plain_b.exec(&read.replace("{}", "10.202.0.250"));
    let tp_pp_ns = SEND_MIB as f64 / t.elapsed().as_secs_f64();
    assert!(
        out.contains(&format!("{}", SEND_MIB * MIB)),
        "netns read: {out}"
    );
    drop((plain_a, plain_b));

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "pod VMs (QEMU, CNI bridge, tap + tc mirred, virtio-net) against plain network namespaces on the same bridge:"
    );
    println!(
        "  host to pod TCP round trip (median of {runs})   VM {:>7.3} ms   netns {:>7.3} ms   ratio {:>6.1}",
        ms(rtt_vm),
        ms(rtt_ns),
        rtt_vm.as_secs_f64() / rtt_ns.as_secs_f64()
    );
    println!(
        "  pod to host TCP throughput ({SEND_MIB} MiB)        VM {tp_vm:>7.1} MiB/s netns {tp_ns:>7.1} MiB/s ratio {:>6.2}",
        tp_vm / tp_ns
    );
    println!(
        "  pod to pod ICMP round trip (avg)             VM {:>7.3} ms   netns {:>7.3} ms   ratio {:>6.1}",
        ms(rtt_pp_vm),
        ms(rtt_pp_ns),
        rtt_pp_vm.as_secs_f64() / rtt_pp_ns.as_secs_f64()
    );
    println!(
        "  pod to pod TCP throughput ({SEND_MIB} MiB)         VM {tp_pp_vm:>7.1} MiB/s netns {tp_pp_ns:>7.1} MiB/s ratio {:>6.2}",
        tp_pp_vm / tp_pp_ns
    );
    for id in [b, p.id.clone()] {
        let mut rt = p.m.runtime().await;
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
    sh(&format!("ip link del {BRIDGE}"));
}
