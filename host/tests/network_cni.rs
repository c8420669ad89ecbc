//! Pod networking against the real CNI plugins (bridge, host-local, portmap): netns, ADD, the
//! tap joined to eth0 by tc redirects (proven with frames both ways), host ports, CHECK,
//! teardown (also after a "restart"), and failed ADDs leaving nothing behind.
//!
//! Needs root, the plugins in /usr/lib/cni or /opt/cni/bin, iproute2, nsenter, iptables and
//! /dev/net/tun; skips with the reason otherwise. Each test uses its own bridge, network name
//! and subnet under 10.199.0.0/16, and removes them at the end.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moat_host::config::CniConfig;
use moat_host::network::{NetworkManager, PodNetworkRequest, PortMapping};

const PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
/// The virtio-net header in front of every frame on a tap opened with IFF_VNET_HDR.
const VNET_HDR: usize = 10;

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    for p in ["bridge", "host-local", "portmap"] {
        if !PLUGIN_DIRS.iter().any(|d| Path::new(d).join(p).exists()) {
            return Some(format!("CNI plugin {p} not installed"));
        }
    }
    for tool in ["ip", "tc", "nsenter", "iptables-save"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return Some(format!("{tool} not installed"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

macro_rules! skip_unless_able {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn in_netns(netns: &Path, cmd: &[&str]) -> String {
    let net = format!("--net={}", netns.display());
    let mut args = vec![net.as_str()];
    args.extend_from_slice(cmd);
    sh("nsenter", &args)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A 64-hex-digit id, unique per call.
fn new_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    // The netns name uses the first 12 digits: make those unique.
    format!("{:08x}{:04x}{:052x}", std::process::id(), n, t)
}

/// A network of its own: conf dir, bridge, netns dir, cache dir; cleaned up on drop.
struct TestNet {
    _dir: tempfile::TempDir,
    conf_dir: PathBuf,
    netns_dir: PathBuf,
    cache_dir: PathBuf,
    name: String,
    bridge: String,
}

impl TestNet {
    /// `ipam` is host-local's config; `extra` are plugins after the bridge.
    fn new(tag: &str, ipam: serde_json::Value, extra: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let pid = std::process::id() % 100_000;
        let name = format!("moat-it-{tag}-{pid}");
        let bridge = format!("mt{tag}{pid}");
        assert!(bridge.len() < 16, "{bridge}");
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": ipam,
        })];
        plugins.extend(extra.as_array().cloned().unwrap_or_default());
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).expect("mkdir");
        std::fs::write(conf_dir.join("10-test.conflist"), conf.to_string()).expect("write");
        Self {
            netns_dir: dir.path().join("netns"),
            cache_dir: dir.path().join("cache"),
            conf_dir,
            _dir: dir,
            name,
            bridge,
        }
    }

    fn manager(&self) -> NetworkManager {
        NetworkManager::new(
            &CniConfig {
                conf_dir: self.conf_dir.clone(),
                bin_dirs: PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
                ..Default::default()
            },
            self.netns_dir.clone(),
            self.cache_dir.clone(),
        )
    }

    fn ipam_dir(&self) -> PathBuf {
        Path::new("/var/lib/cni/networks").join(&self.name)
    }

    /// Reserved IPs in host-local's store (files named after addresses).
    fn reservations(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn bridge_ports(&self) -> String {
        sh("ip", &["-o", "link", "show", "master", &self.bridge])
    }

    /// Asserts that nothing of sandbox `id` is left.
    fn assert_clean(&self, id: &str) {
        let netns = self.netns_dir.join(format!("moat-{}", &id[..12]));
        assert!(!netns.exists(), "netns {} left", netns.display());
        assert!(
            !self.cache_dir.join(format!("{id}.json")).exists(),
            "cache file left"
        );
        assert_eq!(self.bridge_ports().trim(), "", "veth left on the bridge");
        assert!(
            self.reservations().is_empty(),
            "IPAM reservation left: {:?}",
            self.reservations()
        );
        let rules = sh("iptables-save", &[]);
        assert!(!rules.contains(id), "iptables rules left for {id}");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // A failed assertion skipped the test's own teardown: tear down whatever is still
        // cached (on a thread of its own: this may run on a runtime worker).
        let m = self.manager();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                for id in m.cached_sandboxes().await.unwrap_or_default() {
                    if let Err(e) = m.teardown(&id).await {
                        eprintln!("cleanup of {id}: {e}");
                    }
                }
            });
        })
        .join();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_dir_all(self.ipam_dir());
    }
}

fn req(id: &str, host_port: u16) -> PodNetworkRequest {
    PodNetworkRequest {
        sandbox_id: id.into(),
        pod_name: "web".into(),
        pod_namespace: "default".into(),
        pod_uid: "uid-1".into(),
        port_mappings: vec![PortMapping {
            protocol: "TCP".into(),
            container_port: 80,
            host_port,
            host_ip: String::new(),
        }],
        pod_cidr: None,
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(mac.split(':')) {
        *d = u8::from_str_radix(p, 16).expect("mac");
    }
    m
}

/// Reads frames (virtio-net header stripped) from the tap until `want` accepts one.
async fn read_frame(tap: &mut std::fs::File, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if n > VNET_HDR => {
                let frame = &buf[VNET_HDR..n];
                if want(frame) {
                    return Some(frame.to_vec());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
    None
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_redirect_host_ports_teardown_and_restart() {
    skip_unless_able!();
    let net = TestNet::new(
        "a",
        serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.199.0.0/24"}]],
                           "routes": [{"dst": "0.0.0.0/0"}]}),
        serde_json::json!([{"type": "portmap", "capabilities": {"portMappings": true}}]),
    );
    let m = net.manager();
    let id = new_id();
    let (pod, fd) = m.setup(&req(&id, 18080)).await.expect("setup");

    // The pod's network as returned.
    let pod_ip = match pod.pod_ip() {
        Some(IpAddr::V4(ip)) => ip,
        other => panic!("pod IP {other:?}"),
    };
    assert_eq!(pod_ip.octets()[..3], [10, 199, 0]);
    assert_eq!(pod.ips[0].prefix_len(), 24);
    assert_eq!(pod.interface, "eth0");
    assert_eq!(pod.tap, "tap0_moat");
    let gw: IpAddr = "10.199.0.1".parse().expect("ip");
    assert_eq!(pod.gateways, [gw]);
    assert!(
        pod.routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw)),
        "{:?}",
        pod.routes
    );
    assert_eq!(m.pod_network(&id).await.expect("cached"), Some(pod.clone()));

    // The netns: eth0 keeps its address, the tap is up with eth0's MTU, tc joins them.
    let netns = m.netns_path(&id);
    assert_eq!(pod.netns, netns);
    assert!(netns.exists());
    let addr = in_netns(&netns, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("{pod_ip}/24")), "{addr}");
    let eth0 = in_netns(&netns, &["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(eth0.contains(&pod.mac), "{eth0} vs {}", pod.mac);
    let tap = in_netns(&netns, &["ip", "-o", "link", "show", "dev", "tap0_moat"]);
    assert!(tap.contains(",UP") || tap.contains("<UP"), "{tap}");
    assert!(tap.contains(&format!("mtu {}", pod.mtu)), "{tap}");
    if Path::new("/proc/sys/net/ipv6").exists() {
        let v6 = in_netns(
            &netns,
            &["cat", "/proc/sys/net/ipv6/conf/tap0_moat/disable_ipv6"],
        );
        assert_eq!(v6.trim(), "1", "IPv6 off on the tap");
    }
    for (dev, to) in [("eth0", "tap0_moat"), ("tap0_moat", "eth0")] {
        let f = in_netns(
            &netns,
            &["tc", "filter", "show", "dev", dev, "parent", "ffff:"],
        );
        assert!(f.contains("protocol all"), "{dev}: {f}");
        assert!(
            f.contains(&format!("Egress Redirect to device {to}")),
            "{dev}: {f}"
        );
    }

    // Host port: portmap's rules name the container id and the port.
    let rules = sh("iptables-save", &["-t", "nat"]);
    assert!(rules.contains(&id), "no rules for {id}");
    assert!(rules.contains("18080"), "no rule for port 18080");

    // CHECK: Debian 12's portmap (plugins 1.1.1) fails CHECK for IPv4-only pods with host
    // ports, looking for ip6tables rules it never made (containernetworking/plugins#819);
    // that failure must come back as portmap's. The bridge-only network below checks clean.
    if let Err(e) = m.check(&id).await {
        let msg = e.to_string();
        eprintln!("check (known portmap 1.1.1 issue): {msg}");
        assert!(
            msg.contains("\"portmap\" CHECK") && msg.contains("ipv6"),
            "check: {msg}"
        );
    }

    // The redirect, host -> tap: a datagram to the pod IP makes the host ARP for it, and the
    // request comes out of the tap fd.
    let mut tapf = std::fs::File::from(fd);
    nix::fcntl::fcntl(
        &tapf,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblock");
    let sock = UdpSocket::bind((Ipv4Addr::new(10, 199, 0, 1), 0)).expect("bind");
    sock.send_to(b"moat-probe", (pod_ip, 9)).expect("send");
    let arp = read_frame(&mut tapf, |f| {
        f.len() >= 42
            && ethertype(f) == 0x0806
            && f[20..22] == [0, 1]
            && f[38..42] == pod_ip.octets()
    })
    .await
    .expect("ARP request for the pod IP on the tap");
    let host_mac: [u8; 6] = arp[22..28].try_into().expect("sha");
    let host_ip: [u8; 4] = arp[28..32].try_into().expect("spa");
    assert_eq!(host_ip, [10, 199, 0, 1]);

    // Tap -> host: answer as the guest would (eth0's MAC). The host learns the neighbour and
    // sends the queued datagram, which comes out of the tap too.
    let pod_mac = mac_bytes(&pod.mac);
    let mut reply = vec![0u8; VNET_HDR];
    reply.extend_from_slice(&host_mac);
    reply.extend_from_slice(&pod_mac);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&pod_mac);
    reply.extend_from_slice(&pod_ip.octets());
    reply.extend_from_slice(&host_mac);
    reply.extend_from_slice(&host_ip);
    tapf.write_all(&reply).expect("write ARP reply");
    let udp = read_frame(&mut tapf, |f| {
        f.len() >= 42
            && ethertype(f) == 0x0800
            && f[23] == 17
            && f[30..34] == pod_ip.octets()
            && f.windows(10).any(|w| w == b"moat-probe")
    })
    .await
    .expect("the datagram on the tap");
    assert_eq!(udp[..6], pod_mac, "sent to the pod's MAC");
    let neigh = sh(
        "ip",
        &["neigh", "show", &pod_ip.to_string(), "dev", &net.bridge],
    );
    assert!(neigh.contains(&pod.mac), "{neigh}");

    // Teardown, while "QEMU" still holds the tap.
    m.teardown(&id).await.expect("teardown");
    net.assert_clean(&id);
    m.teardown(&id).await.expect("teardown twice");
    assert!(matches!(
        m.check(&id).await,
        Err(moat_host::network::NetworkError::NotFound(_))
    ));
    drop(tapf);

    // After a "restart": a new manager over the same dirs tears down what the old one set up.
    let id2 = new_id();
    let (pod2, fd2) = m.setup(&req(&id2, 18081)).await.expect("setup 2");
    assert!(sh("iptables-save", &["-t", "nat"]).contains(&id2));
    drop(m);
    let m2 = net.manager();
    assert_eq!(
        m2.cached_sandboxes().await.expect("list"),
        vec![id2.clone()]
    );
    assert_eq!(m2.pod_network(&id2).await.expect("cached"), Some(pod2));
    // The VM is gone (its tap fd closed): check notices (or fails earlier on portmap#819).
    drop(fd2);
    let e = m2.check(&id2).await.expect_err("tap gone");
    assert!(
        e.to_string().contains("tap0_moat") || e.to_string().contains("\"portmap\" CHECK"),
        "{e}"
    );
    m2.teardown(&id2).await.expect("teardown after restart");
    net.assert_clean(&id2);
    assert!(m2.cached_sandboxes().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_missing_plugin_leaves_nothing_and_names_the_plugin() {
    skip_unless_able!();
    let net = TestNet::new(
        "b",
        serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.199.1.0/24"}]]}),
        serde_json::json!([{"type": "moat-no-such-plugin"}]),
    );
    let m = net.manager();
    let id = new_id();
    let e = m.setup(&req(&id, 0)).await.expect_err("must fail");
    let msg = e.to_string();
    assert!(msg.contains("moat-no-such-plugin"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
    net.assert_clean(&id);
    assert!(m.cached_sandboxes().await.expect("list").is_empty());
    m.teardown(&id).await.expect("teardown after failed setup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_ipam_exhausted_leaves_nothing_and_names_the_plugin() {
    skip_unless_able!();
    let net = TestNet::new(
        "c",
        serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.199.2.0/29",
            "rangeStart": "10.199.2.2", "rangeEnd": "10.199.2.2"}]]}),
        serde_json::json!([]),
    );
    let m = net.manager();
    let first = new_id();
    let (pod, fd) = m.setup(&req(&first, 0)).await.expect("the one address");
    assert_eq!(pod.pod_ip(), Some("10.199.2.2".parse().expect("ip")));
    m.check(&first).await.expect("check");

    let second = new_id();
    let e = m.setup(&req(&second, 0)).await.expect_err("exhausted");
    let msg = e.to_string();
    assert!(msg.contains("\"bridge\" ADD"), "{msg}");
    assert!(msg.contains("no IP addresses available"), "{msg}");
    assert!(!m.netns_path(&second).exists());
    assert!(!net.cache_dir.join(format!("{second}.json")).exists());
    assert!(!sh("iptables-save", &[]).contains(&second));
    assert_eq!(net.reservations(), ["10.199.2.2"]);

    // The VM is gone (its tap fd closed): check notices.
    drop(fd);
    let e = m.check(&first).await.expect_err("tap gone");
    assert!(e.to_string().contains("tap0_moat"), "{e}");
    m.teardown(&first).await.expect("teardown");
    net.assert_clean(&first);
}
