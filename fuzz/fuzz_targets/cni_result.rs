#![no_main]
//! Untrusted input: what CNI plugins print and what the CNI config directory holds: an ADD
//! result on a plugin's stdout (`network::cni::result::CniResult::parse`, any spec
//! version), a failing plugin's error object (`ErrorJson::parse`), a `.conflist`/`.conf`
//! file (`network::cni::conf::NetworkConfigList::parse`, then the per-plugin config derived
//! from it), and the pod netns's `/proc/net/dev` (`network::usage::parse_net_dev`). An ADD
//! result that parses is also turned into the pod's network (`PodNetwork::from_result`:
//! addresses, gateways, routes and DNS that go to the guest).
//!
//! Input: the first byte picks what the rest is: 0 plugin stdout (result and error
//! object), 1 a config file, 2 a `/proc/net/dev` text (the interface name is `eth0`).
//! Checks besides "no panic": an accepted config's network name and plugin types are
//! valid (a plugin type names a file in the plugin directories: no `/`, not `.` or `..`).

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_host::network::cni::conf::{
    IpRange, NetworkConfigList, PortMapping, RuntimeConfig, valid_network_name,
};
use moat_host::network::cni::result::{CniResult, ErrorJson};
use moat_host::network::pod::PodNetwork;
use moat_host::network::tap::LinkInfo;
use moat_host::network::usage::parse_net_dev;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8() % 3;
    let rest = input.rest();
    match mode {
        0 => {
            let _ = ErrorJson::parse(rest);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest)
                && let Ok(r) = CniResult::parse(&v)
            {
                for mac in ["", "0a:58:0a:01:00:05"] {
                    let link = LinkInfo {
                        index: 2,
                        mac: mac.into(),
                        mtu: 1500,
                    };
                    let Ok(pod) = PodNetwork::from_result(
                        "fuzz",
                        &r,
                        "/run/netns/x".into(),
                        "eth0",
                        &link,
                        "tap0",
                    ) else {
                        continue;
                    };
                    assert!(!pod.ips.is_empty(), "a pod network without an IP");
                    let _ = (pod.pod_ip(), pod.additional_ips());
                }
            }
        }
        1 => {
            let Ok(list) = NetworkConfigList::parse(rest, "/etc/cni/net.d/10-fuzz.conflist") else {
                return;
            };
            assert!(valid_network_name(&list.name), "name {:?}", list.name);
            assert!(!list.plugins.is_empty());
            let runtime = RuntimeConfig {
                port_mappings: vec![PortMapping {
                    protocol: "TCP".into(),
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                }],
                ip_ranges: vec![vec![IpRange {
                    subnet: "10.88.0.0/16".into(),
                }]],
            };
            let _ = list.version_at_least("0.4.0");
            for i in 0..list.plugins.len() {
                let t = list.plugin_type(i);
                assert!(
                    !t.is_empty() && !t.contains('/') && t != "." && t != ".." && !t.contains('\0'),
                    "plugin type {t:?} accepted"
                );
                let _ = list.has_capability(i, "portMappings");
                let conf = list.plugin_config(i, None, &runtime);
                assert_eq!(conf["name"].as_str(), Some(list.name.as_str()));
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some(u) = parse_net_dev(text, "eth0") {
                assert_eq!(u.name, "eth0");
            }
        }
    }
});
