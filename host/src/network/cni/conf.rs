//! Network configuration lists and the per-plugin configuration a runtime derives from them
//! (CNI spec, "Network Configuration Lists" and "Deriving execution configuration").

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::network::error::{CniError, NetworkError};

/// A network configuration list: what a `.conflist` holds, and what a single-plugin `.conf`
/// becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    /// The CNI spec version of the list and every plugin in it.
    #[serde(rename = "cniVersion", default = "default_version")]
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// Runtimes must not CHECK such a network.
    #[serde(
        rename = "disableCheck",
        default,
        deserialize_with = "bool_or_string",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_check: bool,
    /// The plugin configurations, in ADD order.
    pub plugins: Vec<Map<String, Value>>,
}

/// A configuration without `cniVersion` is a 0.1.0 one, as libcni reads it.
fn default_version() -> String {
    "0.1.0".into()
}

/// `disableCheck` is a string in the 0.4.0 spec and a boolean since 1.0.0.
fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    })
}

impl NetworkConfigList {
    /// Parses a `.conflist`, or a single-plugin `.conf`/`.json` (which becomes a one-plugin
    /// list with the conf's name and version), as `cni_config::default_network` accepts them.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig {
            file: file.to_owned(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(invalid("not a JSON object".into()));
        };
        let list: NetworkConfigList = if obj.contains_key("plugins") {
            serde_json::from_value(Value::Object(obj)).map_err(|e| invalid(e.to_string()))?
        } else if obj.get("type").is_some_and(Value::is_string) {
            let name = obj.get("name").and_then(Value::as_str).unwrap_or_default();
            let version = obj
                .get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(default_version);
            NetworkConfigList {
                cni_version: version,
                name: name.to_owned(),
                disable_check: false,
                plugins: vec![obj],
            }
        } else {
            return Err(invalid("neither \"plugins\" nor \"type\"".into()));
        };
        list.validate().map_err(invalid)?;
        Ok(list)
    }

    /// Loads the default network of `conf_dir` (the file `cni_config::default_network` picks);
    /// returns it with its file.
    pub fn load_default(conf_dir: &Path) -> Result<(Self, String), NetworkError> {
        let found = crate::network::cni_config::default_network(conf_dir)
            .map_err(NetworkError::NotReady)?;
        let bytes = std::fs::read(&found.file).map_err(|e| {
            NetworkError::NotReady(format!("cannot read CNI config {}: {e}", found.file))
        })?;
        Ok((Self::parse(&bytes, &found.file)?, found.file))
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_network_name(&self.name) {
            return Err(format!(
                "network name {:?} must start with a letter or digit, followed by letters, \
                 digits, '_', '.' or '-'",
                self.name
            ));
        }
        if self.plugins.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        for (i, p) in self.plugins.iter().enumerate() {
            match p.get("type").and_then(Value::as_str) {
                Some(t) if valid_plugin_type(t) => {}
                Some(t) => return Err(format!("plugin {i}: invalid \"type\" {t:?}")),
                None => return Err(format!("plugin {i} has no \"type\"")),
            }
        }
        Ok(())
    }

    /// The `type` of plugin `i` (validated by `parse`).
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins
            .get(i)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether a plugin declares `capability` with `true`.
    pub fn has_capability(&self, i: usize, capability: &str) -> bool {
        self.plugins
            .get(i)
            .and_then(|p| p.get("capabilities"))
            .and_then(|c| c.get(capability))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether the list's version is at least `min` (for CHECK and `prevResult` on DEL,
    /// both introduced in 0.4.0).
    pub fn version_at_least(&self, min: &str) -> bool {
        parse_version(&self.cni_version) >= parse_version(min)
    }

    /// The configuration plugin `i` gets on stdin: its own object with the list's `name` and
    /// `cniVersion`, `prevResult` when given, and `runtimeConfig` holding the capabilities the
    /// plugin declares and the runtime has data for (none: no `runtimeConfig` key).
    pub fn plugin_config(
        &self,
        i: usize,
        prev_result: Option<&Value>,
        runtime: &RuntimeConfig,
    ) -> Value {
        let mut conf = self.plugins.get(i).cloned().unwrap_or_default();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut rc = Map::new();
        if let Some(Value::Object(caps)) = conf.get("capabilities") {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(data) = runtime.capability(cap)
                {
                    rc.insert(cap.clone(), data);
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }
}

/// `major.minor.patch`, missing or unreadable parts as 0.
fn parse_version(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// The spec's rule for network names and container ids: an alphanumeric first character,
/// then alphanumerics, `_`, `.` or `-`.
pub fn valid_network_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A plugin `type` names a file in a plugin directory: no path separators, not `.`/`..`.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && t != "." && t != ".." && !t.contains('\0')
}

/// One host port mapping (the `portMappings` capability, as the portmap plugin reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp` (any case; sent lowercase).
    pub protocol: String,
    /// The port in the pod.
    pub container_port: u16,
    /// The port on the host; 0 means no host port (the mapping is not sent).
    pub host_port: u16,
    /// The host address to bind; empty for all.
    #[serde(default)]
    pub host_ip: String,
}

/// One range of an `ipRanges` range set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    /// The subnet in CIDR form.
    pub subnet: String,
}

/// What the runtime can put into `runtimeConfig`, by capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// `ipRanges`: one range set per pod CIDR (one per IP family).
    #[serde(default)]
    pub ip_ranges: Vec<Vec<IpRange>>,
}

impl RuntimeConfig {
    /// The `runtimeConfig` value of a capability, if there is data for it.
    pub fn capability(&self, name: &str) -> Option<Value> {
        match name {
            "portMappings" => {
                let maps: Vec<Value> = self
                    .port_mappings
                    .iter()
                    .filter(|m| m.host_port != 0)
                    .map(|m| {
                        let mut o = Map::new();
                        o.insert("hostPort".into(), m.host_port.into());
                        o.insert("containerPort".into(), m.container_port.into());
                        o.insert("protocol".into(), m.protocol.to_ascii_lowercase().into());
                        if !m.host_ip.is_empty() {
                            o.insert("hostIP".into(), m.host_ip.clone().into());
                        }
                        Value::Object(o)
                    })
                    .collect();
                (!maps.is_empty()).then_some(Value::Array(maps))
            }
            "ipRanges" => (!self.ip_ranges.is_empty())
                .then(|| serde_json::to_value(&self.ip_ranges).unwrap_or(Value::Null)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIST: &str = r#"{
        "cniVersion": "1.0.0", "name": "moat", "disableCheck": "false",
        "plugins": [
            {"type": "bridge", "bridge": "moat0", "ipam": {"type": "host-local"},
             "capabilities": {"ipRanges": true}},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
            {"type": "tuning", "name": "ignored", "cniVersion": "0.3.1"}
        ]}"#;

    #[test]
    fn conflist_and_single_conf_parse() {
        let l = NetworkConfigList::parse(LIST.as_bytes(), "x.conflist").expect("list");
        assert_eq!(l.name, "moat");
        assert_eq!(l.cni_version, "1.0.0");
        assert!(!l.disable_check);
        assert_eq!(l.plugins.len(), 3);
        assert_eq!(l.plugin_type(1), "portmap");
        assert!(l.has_capability(1, "portMappings"));
        assert!(!l.has_capability(1, "bandwidth"));
        assert!(!l.has_capability(2, "portMappings"));

        let c = NetworkConfigList::parse(
            br#"{"cniVersion":"0.4.0","name":"one","type":"bridge","bridge":"b0"}"#,
            "x.conf",
        )
        .expect("conf");
        assert_eq!(c.name, "one");
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0]["bridge"], "b0");

        let old =
            NetworkConfigList::parse(br#"{"name":"old","type":"bridge"}"#, "x.conf").expect("old");
        assert_eq!(old.cni_version, "0.1.0");
        assert!(!old.version_at_least("0.4.0"));

        let dc = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"d","disableCheck":true,"plugins":[{"type":"x"}]}"#,
            "x",
        )
        .expect("dc");
        assert!(dc.disable_check);
    }

    #[test]
    fn bad_configs_are_refused_with_the_file_name() {
        for bad in [
            "{",
            "[]",
            r#"{"name":"n"}"#,
            r#"{"name":"n","plugins":[]}"#,
            r#"{"name":"n","plugins":[{"foo":1}]}"#,
            r#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"name":"","type":"bridge"}"#,
            r#"{"name":"-x","type":"bridge"}"#,
        ] {
            let e =
                NetworkConfigList::parse(bad.as_bytes(), "/etc/cni/net.d/bad.conf").expect_err(bad);
            assert!(e.to_string().contains("bad.conf"), "{e}");
        }
    }

    #[test]
    fn plugin_config_carries_name_version_prev_result_and_declared_capabilities_only() {
        let l = NetworkConfigList::parse(LIST.as_bytes(), "x").expect("list");
        let rc = RuntimeConfig {
            port_mappings: vec![
                PortMapping {
                    protocol: "TCP".into(),
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                },
                PortMapping {
                    protocol: "udp".into(),
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                PortMapping {
                    protocol: "tcp".into(),
                    container_port: 9,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ip_ranges: vec![vec![IpRange {
                subnet: "10.1.0.0/24".into(),
            }]],
        };
        // First plugin: no prevResult, only ipRanges.
        let c0 = l.plugin_config(0, None, &rc);
        assert_eq!(c0["name"], "moat");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("prevResult").is_none());
        assert_eq!(
            c0["runtimeConfig"],
            json!({"ipRanges": [[{"subnet": "10.1.0.0/24"}]]})
        );
        // Second: prevResult and portMappings (lowercased, hostPort 0 dropped, hostIP only when set).
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]});
        let c1 = l.plugin_config(1, Some(&prev), &rc);
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(
            c1["runtimeConfig"],
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]})
        );
        // Third: no capabilities, and the list's name/version override the plugin's own.
        let c2 = l.plugin_config(2, Some(&prev), &rc);
        assert!(c2.get("runtimeConfig").is_none());
        assert_eq!(c2["name"], "moat");
        assert_eq!(c2["cniVersion"], "1.0.0");
        // Declared capability without data: no runtimeConfig.
        let c1_empty = l.plugin_config(1, None, &RuntimeConfig::default());
        assert!(c1_empty.get("runtimeConfig").is_none());
    }

    #[test]
    fn versions_compare_numerically() {
        let mut l = NetworkConfigList::parse(LIST.as_bytes(), "x").expect("list");
        assert!(l.version_at_least("0.4.0"));
        l.cni_version = "0.3.1".into();
        assert!(!l.version_at_least("0.4.0"));
        l.cni_version = "0.10.0".into();
        assert!(l.version_at_least("0.4.0"));
    }

    #[test]
    fn names() {
        assert!(valid_network_name("moat-net_1.2"));
        assert!(valid_network_name("0abc"));
        assert!(!valid_network_name(""));
        assert!(!valid_network_name("_a"));
        assert!(!valid_network_name("a b"));
        assert!(!valid_network_name("a/b"));
    }
}
