//! A default bridge network for nodes without a CNI configuration, written when the pod CIDR
//! becomes known (CRI UpdateRuntimeConfig), like containerd's `conf_template`.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Value, json};

use super::error::NetworkError;
use super::pod::parse_cidrs;

/// The default network's name.
pub const DEFAULT_NETWORK_NAME: &str = "moat";
/// The default network's bridge.
pub const DEFAULT_BRIDGE: &str = "moat0";
/// The file it is written to in the conf dir.
pub const DEFAULT_CONFLIST_FILE: &str = "10-moat.conflist";

/// A bridge + host-local + portmap network over `subnets` (one range set and one default route
/// per subnet): the bridge is the pods' gateway and masquerades their traffic leaving the node,
/// hairpin mode lets a pod reach itself through a service, portmap serves host ports.
pub fn default_bridge_conflist(network_name: &str, bridge: &str, subnets: &[IpNet]) -> Value {
    let ranges: Vec<Value> = subnets
        .iter()
        .map(|s| json!([{ "subnet": s.trunc().to_string() }]))
        .collect();
    let mut routes: Vec<Value> = Vec::new();
    if subnets.iter().any(|s| s.addr().is_ipv4()) {
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if subnets.iter().any(|s| s.addr().is_ipv6()) {
        routes.push(json!({ "dst": "::/0" }));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes
                }
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true }
            }
        ]
    })
}

/// Writes the default network for `pod_cidr` (comma-separated for dual stack) to
/// `conf_dir/10-moat.conflist`, unless the conf dir already has a network. Returns the file
/// written, or `None` when a network was already there.
pub async fn write_default_conflist(
    conf_dir: &Path,
    pod_cidr: &str,
) -> Result<Option<PathBuf>, NetworkError> {
    let path = conf_dir.join(DEFAULT_CONFLIST_FILE);
    if super::cni_config::default_network(conf_dir).is_ok() {
        return Ok(None);
    }
    let subnets = parse_cidrs(pod_cidr).map_err(NetworkError::InvalidRequest)?;
    if subnets.is_empty() {
        return Err(NetworkError::InvalidRequest("empty pod CIDR".into()));
    }
    let conf = default_bridge_conflist(DEFAULT_NETWORK_NAME, DEFAULT_BRIDGE, &subnets);
    let bytes = serde_json::to_vec_pretty(&conf).map_err(|e| NetworkError::DefaultConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let dir = conf_dir.to_owned();
    let target = path.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::Builder::new()
            // Not .conf/.conflist/.json: never picked up half-written.
            .suffix(".tmp")
            .tempfile_in(&dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&target).map_err(|e| e.error)?;
        Ok(())
    })
    .await
    .map_err(|e| NetworkError::DefaultConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?
    .map_err(|e| NetworkError::DefaultConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::cni::conf::NetworkConfigList;

    #[test]
    fn single_stack_json() {
        let subnets = parse_cidrs("10.244.1.0/24").expect("cidr");
        let v = default_bridge_conflist("moat", "moat0", &subnets);
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "name": "moat",
                "plugins": [
                    {"type": "bridge", "bridge": "moat0", "isGateway": true, "ipMasq": true,
                     "hairpinMode": true,
                     "ipam": {"type": "host-local",
                              "ranges": [[{"subnet": "10.244.1.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
        );
        // It is a valid list whose portmap declares portMappings.
        let l = NetworkConfigList::parse(v.to_string().as_bytes(), "x").expect("list");
        assert!(l.has_capability(1, "portMappings"));
    }

    #[test]
    fn dual_stack_json() {
        let subnets = parse_cidrs("10.244.1.9/24,fd00:10:244:1::/64").expect("cidr");
        let v = default_bridge_conflist("moat", "moat0", &subnets);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            v["plugins"][0]["ipam"]["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
    }

    #[tokio::test]
    async fn written_only_when_no_network_exists() {
        let d = tempfile::tempdir().expect("tmp");
        let conf = d.path().join("net.d");
        assert!(write_default_conflist(&conf, "bad").await.is_err());
        let p = write_default_conflist(&conf, "10.88.0.0/16")
            .await
            .expect("write")
            .expect("written");
        assert_eq!(p, conf.join(DEFAULT_CONFLIST_FILE));
        let found = crate::network::cni_config::default_network(&conf).expect("found");
        assert_eq!(found.name, DEFAULT_NETWORK_NAME);
        assert_eq!(
            write_default_conflist(&conf, "10.99.0.0/16")
                .await
                .expect("again"),
            None
        );
        let (l, file) = NetworkConfigList::load_default(&conf).expect("load");
        assert!(file.ends_with(DEFAULT_CONFLIST_FILE));
        assert_eq!(
            l.plugins[0]["ipam"]["ranges"],
            json!([[{"subnet": "10.88.0.0/16"}]])
        );
    }
}
