//! The `[cni]` section of moatd's configuration: where CNI networks and plugins live.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// CNI locations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory holding `.conf` / `.conflist` network configurations.
    pub conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Where pod network namespaces are pinned (`ip netns` looks in /var/run/netns).
    pub netns_dir: PathBuf,
    /// Seconds one CNI plugin call may take.
    pub plugin_timeout_secs: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            netns_dir: PathBuf::from(super::DEFAULT_NETNS_DIR),
            plugin_timeout_secs: super::DEFAULT_PLUGIN_TIMEOUT.as_secs(),
        }
    }
}
