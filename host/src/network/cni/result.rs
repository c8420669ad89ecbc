//! CNI results (what ADD prints) and CNI errors (what a failing plugin prints), read leniently:
//! 0.3.x/0.4.0 results (with `ips[].version`), 1.0.0 results, and 0.1.0/0.2.0 `ip4`/`ip6` ones.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A parsed ADD result. The raw JSON is what goes back to plugins as `prevResult`; this is the
/// typed view moatd reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// The spec version of the result.
    pub cni_version: String,
    /// Interfaces the plugins created.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

/// An interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address, if meaningful.
    #[serde(default)]
    pub mac: String,
    /// Its MTU (1.1.0 results).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The netns path for interfaces in the sandbox; empty for host interfaces.
    #[serde(default)]
    pub sandbox: String,
}

/// An address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNet,
    /// The subnet's gateway, if any.
    #[serde(default, deserialize_with = "lenient_ip")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    /// The destination.
    pub dst: IpNet,
    /// The next hop; absent means the plugin's default gateway for the family.
    #[serde(default, deserialize_with = "lenient_ip")]
    pub gw: Option<IpAddr>,
}

/// DNS settings of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// An IP that may be absent, `null` or `""`.
fn lenient_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
struct Modern {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default, deserialize_with = "null_as_default")]
    dns: Dns,
}

#[derive(Deserialize)]
struct Legacy {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
    #[serde(default, deserialize_with = "null_as_default")]
    dns: Dns,
}

#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default, deserialize_with = "lenient_ip")]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl CniResult {
    /// Reads a result of any spec version.
    pub fn parse(v: &Value) -> Result<Self, String> {
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            let l: Legacy = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
            let mut r = CniResult {
                cni_version: l.cni_version,
                dns: l.dns,
                ..Default::default()
            };
            for ip in [l.ip4, l.ip6].into_iter().flatten() {
                r.ips.push(IpConfig {
                    address: ip.ip,
                    gateway: ip.gateway,
                    interface: None,
                });
                r.routes.extend(ip.routes);
            }
            return Ok(r);
        }
        let m: Modern = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        Ok(CniResult {
            cni_version: m.cni_version,
            interfaces: m.interfaces,
            ips: m.ips,
            routes: m.routes,
            dns: m.dns,
        })
    }
}

/// The error object a failing plugin prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorJson {
    /// The error code.
    pub code: u32,
    /// The short message.
    #[serde(default)]
    pub msg: String,
    /// The long message.
    #[serde(default)]
    pub details: String,
}

impl ErrorJson {
    /// Reads plugin stdout as an error object, if it is one.
    pub fn parse(stdout: &[u8]) -> Option<Self> {
        let e: ErrorJson = serde_json::from_slice(stdout).ok()?;
        (e.code != 0 || !e.msg.is_empty()).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_0_4_0() {
        let v = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "moat0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let r = CniResult::parse(&v).expect("parse");
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.interfaces[2].sandbox, "/var/run/netns/x");
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().expect("ip")));
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.routes[0].gw, None);
    }

    #[test]
    fn result_1_0_0_dual_stack_with_dns() {
        let v = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "mtu": 1450, "sandbox": "/n"}],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0},
                {"address": "10.1.0.5/24", "gateway": "", "interface": 0}
            ],
            "routes": [{"dst": "::/0", "gw": "fd00::1"}],
            "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                    "search": ["svc.cluster.local"], "options": ["ndots:5"]}
        });
        let r = CniResult::parse(&v).expect("parse");
        assert_eq!(r.interfaces[0].mtu, Some(1450));
        assert_eq!(r.ips.len(), 2);
        assert!(r.ips[0].address.addr().is_ipv6());
        assert_eq!(r.ips[1].gateway, None);
        assert_eq!(r.routes[0].gw, Some("fd00::1".parse().expect("ip")));
        assert_eq!(r.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(r.dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(r.dns.options, ["ndots:5"]);
    }

    #[test]
    fn legacy_result_and_garbage() {
        let v = json!({"cniVersion": "0.2.0",
            "ip4": {"ip": "10.2.0.3/16", "gateway": "10.2.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": null});
        let r = CniResult::parse(&v).expect("parse");
        assert_eq!(r.ips[0].address.to_string(), "10.2.0.3/16");
        assert_eq!(r.routes.len(), 1);
        assert!(CniResult::parse(&json!([])).is_err());
        assert!(CniResult::parse(&json!({"ips": [{"address": "nope"}]})).is_err());
    }

    #[test]
    fn error_json() {
        let e = ErrorJson::parse(
            br#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"lock held"}"#,
        )
        .expect("error");
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (11, "busy", "lock held")
        );
        assert!(ErrorJson::parse(b"").is_none());
        assert!(ErrorJson::parse(b"panic: oops").is_none());
        assert!(ErrorJson::parse(br#"{"cniVersion":"1.0.0"}"#).is_none());
    }
}
