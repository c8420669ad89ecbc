//! The request for a pod's network and what the pod (its guest) gets: addresses, routes, DNS,
//! the MAC and MTU its NIC must use, and the tap behind it.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::cni::conf::{IpRange, PortMapping};
use super::cni::result::CniResult;
use super::error::NetworkError;
use super::tap::LinkInfo;

/// What `NetworkManager::setup` needs to know about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetworkRequest {
    /// The sandbox id (the CNI container id).
    pub sandbox_id: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// Host port mappings (`portMappings` capability); ones with host port 0 are skipped.
    pub port_mappings: Vec<PortMapping>,
    /// The node's pod CIDR(s) from CRI UpdateRuntimeConfig, comma-separated for dual stack
    /// (`ipRanges` capability, one range set per CIDR).
    pub pod_cidr: Option<String>,
}

impl PodNetworkRequest {
    /// `CNI_ARGS`, as kubelet's dockershim and containerd send them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.sandbox_id, self.pod_uid
        )
    }

    /// The `ipRanges` data: one single-range set per CIDR.
    pub fn ip_ranges(&self) -> Result<Vec<Vec<IpRange>>, NetworkError> {
        let Some(cidrs) = self.pod_cidr.as_deref() else {
            return Ok(Vec::new());
        };
        parse_cidrs(cidrs)
            .map(|nets| {
                nets.into_iter()
                    .map(|n| {
                        vec![IpRange {
                            subnet: n.to_string(),
                        }]
                    })
                    .collect()
            })
            .map_err(NetworkError::InvalidRequest)
    }
}

/// Parses a comma-separated CIDR list (blank entries ignored), normalized to network addresses.
pub fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|e| format!("pod CIDR {c:?}: {e}"))
        })
        .collect()
}

/// A route the guest should install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRoute {
    /// The destination.
    pub dst: IpNet,
    /// The next hop; `None` for on-link routes.
    pub gateway: Option<IpAddr>,
}

/// DNS settings from the CNI result (kubelet's own DNS config usually wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    /// Name servers.
    pub nameservers: Vec<String>,
    /// The local domain.
    pub domain: Option<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// A pod's network as set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The CNI network's name.
    pub network_name: String,
    /// The netns file.
    pub netns: PathBuf,
    /// The CNI interface in the netns (`eth0`); the guest NIC mirrors it.
    pub interface: String,
    /// The interface's MAC: the guest NIC must use it.
    pub mac: String,
    /// The interface's MTU: the guest NIC should use it.
    pub mtu: u32,
    /// Addresses with prefix length, IPv4 first; the first is the pod IP.
    pub ips: Vec<IpNet>,
    /// Gateways, in the order of `ips`.
    pub gateways: Vec<IpAddr>,
    /// Routes, gateways filled in; a default route via the gateway if the result had no
    /// routes but a gateway.
    pub routes: Vec<PodRoute>,
    /// DNS from the result.
    pub dns: PodDns,
    /// The tap device in the netns.
    pub tap: String,
}

impl PodNetwork {
    /// The pod IP (CRI `PodSandboxNetworkStatus.ip`).
    pub fn pod_ip(&self) -> Option<IpAddr> {
        self.ips.first().map(IpNet::addr)
    }

    /// The other IPs (CRI `additional_ips`).
    pub fn additional_ips(&self) -> Vec<IpAddr> {
        self.ips.iter().skip(1).map(IpNet::addr).collect()
    }

    /// Builds the pod's view from the final ADD result and the interface as found in the netns.
    pub fn from_result(
        network_name: &str,
        result: &CniResult,
        netns: PathBuf,
        ifname: &str,
        link: &LinkInfo,
        tap: &str,
    ) -> Result<Self, NetworkError> {
        // Our interface's index in the result; addresses on other interfaces are not the pod's.
        let our_index = result
            .interfaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
            .or_else(|| result.interfaces.iter().position(|i| i.name == ifname));
        let mut ips: Vec<(IpNet, Option<IpAddr>)> = result
            .ips
            .iter()
            .filter(|ip| match (ip.interface, our_index) {
                (Some(i), Some(ours)) => i == ours,
                _ => true,
            })
            .map(|ip| (ip.address, ip.gateway))
            .collect();
        if ips.is_empty() {
            return Err(NetworkError::UnusableResult {
                network: network_name.to_owned(),
                reason: format!("no IP address for {ifname}"),
            });
        }
        // IPv4 first, as containerd picks the pod IP; stable within a family.
        ips.sort_by_key(|(n, _)| n.addr().is_ipv6());
        let mut gateways: Vec<IpAddr> = Vec::new();
        for gw in ips.iter().filter_map(|(_, g)| *g) {
            if !gateways.contains(&gw) {
                gateways.push(gw);
            }
        }
        let family_gw =
            |v6: bool| -> Option<IpAddr> { gateways.iter().copied().find(|g| g.is_ipv6() == v6) };
        let mut routes: Vec<PodRoute> = result
            .routes
            .iter()
            .map(|r| PodRoute {
                dst: r.dst,
                gateway: r.gw.or_else(|| family_gw(r.dst.addr().is_ipv6())),
            })
            .collect();
        if routes.is_empty() {
            for gw in &gateways {
                let dst = if gw.is_ipv6() {
                    IpNet::V6(Default::default())
                } else {
                    IpNet::V4(Default::default())
                };
                routes.push(PodRoute {
                    dst,
                    gateway: Some(*gw),
                });
            }
        }
        let mac = if link.mac.is_empty() {
            our_index
                .and_then(|i| result.interfaces.get(i))
                .map(|i| i.mac.to_ascii_lowercase())
                .unwrap_or_default()
        } else {
            link.mac.clone()
        };
        Ok(PodNetwork {
            network_name: network_name.to_owned(),
            netns,
            interface: ifname.to_owned(),
            mac,
            mtu: link.mtu,
            ips: ips.into_iter().map(|(n, _)| n).collect(),
            gateways,
            routes,
            dns: PodDns {
                nameservers: result.dns.nameservers.clone(),
                domain: result.dns.domain.clone(),
                search: result.dns.search.clone(),
                options: result.dns.options.clone(),
            },
            tap: tap.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link() -> LinkInfo {
        LinkInfo {
            index: 2,
            mac: "0a:58:0a:01:00:05".into(),
            mtu: 1450,
        }
    }

    #[test]
    fn dual_stack_result_ipv4_first_routes_get_gateways() {
        let r = CniResult::parse(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "moat0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "0A:58:0A:01:00:05", "sandbox": "/n"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "10.1.0.1/24", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
        }))
        .expect("parse");
        let p = PodNetwork::from_result("moat", &r, "/n".into(), "eth0", &link(), "tap0_moat")
            .expect("pod");
        assert_eq!(p.pod_ip(), Some("10.1.0.5".parse().expect("ip")));
        assert_eq!(
            p.additional_ips(),
            vec!["fd00::5".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(p.ips[0].prefix_len(), 24);
        assert_eq!(p.gateways.len(), 2);
        assert_eq!(
            p.routes,
            vec![
                PodRoute {
                    dst: "0.0.0.0/0".parse().expect("net"),
                    gateway: Some("10.1.0.1".parse().expect("ip"))
                },
                PodRoute {
                    dst: "::/0".parse().expect("net"),
                    gateway: Some("fd00::1".parse().expect("ip"))
                },
                PodRoute {
                    dst: "192.168.0.0/16".parse().expect("net"),
                    gateway: Some("10.1.0.254".parse().expect("ip"))
                },
            ]
        );
        assert_eq!(p.mac, "0a:58:0a:01:00:05");
        assert_eq!(p.mtu, 1450);
        assert_eq!(p.dns.nameservers, ["10.96.0.10"]);
        // Round trip through JSON, as the lead persists it.
        let s = serde_json::to_string(&p).expect("ser");
        assert!(s.contains("\"10.1.0.5/24\""), "{s}");
        assert_eq!(serde_json::from_str::<PodNetwork>(&s).expect("de"), p);
    }

    #[test]
    fn no_routes_but_a_gateway_gives_a_default_route_and_no_ip_is_an_error() {
        let r = CniResult::parse(&json!({"cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.2.0.3/16", "gateway": "10.2.0.1"}]}))
        .expect("parse");
        let p = PodNetwork::from_result("n", &r, "/n".into(), "eth0", &link(), "t").expect("pod");
        assert_eq!(
            p.routes,
            vec![PodRoute {
                dst: "0.0.0.0/0".parse().expect("net"),
                gateway: Some("10.2.0.1".parse().expect("ip"))
            }]
        );
        let none = CniResult::parse(&json!({"cniVersion": "1.0.0"})).expect("parse");
        let e = PodNetwork::from_result("n", &none, "/n".into(), "eth0", &link(), "t")
            .expect_err("no ip");
        assert!(e.to_string().contains("no IP address for eth0"), "{e}");
    }

    #[test]
    fn request_cni_args_and_ip_ranges() {
        let req = PodNetworkRequest {
            sandbox_id: "abc".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "u-1".into(),
            port_mappings: vec![],
            pod_cidr: Some("10.244.1.7/24, fd00:10::/64".into()),
        };
        assert_eq!(
            req.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        let r = req.ip_ranges().expect("ranges");
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10::/64"}]])
        );
        let bad = PodNetworkRequest {
            pod_cidr: Some("nope".into()),
            ..Default::default()
        };
        assert!(bad.ip_ranges().is_err());
        assert!(
            PodNetworkRequest::default()
                .ip_ranges()
                .expect("none")
                .is_empty()
        );
    }
}
