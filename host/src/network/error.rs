//! What can go wrong while wiring a pod into its network, in words a user can act on.

use std::path::PathBuf;
use std::time::Duration;

/// A failure running the CNI plugins of a network.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The network configuration file is not a usable CNI configuration.
    #[error("invalid CNI network config {file}: {reason}")]
    InvalidConfig {
        /// The file (or "cache" for a cached copy).
        file: String,
        /// Why.
        reason: String,
    },
    /// No executable named after the plugin's `type` in any plugin directory.
    #[error("CNI plugin {plugin:?} of network {network:?} not found in {dirs}")]
    PluginNotFound {
        /// The plugin `type`.
        plugin: String,
        /// The network.
        network: String,
        /// The directories searched, `:`-separated.
        dirs: String,
    },
    /// The plugin could not be started.
    #[error("cannot run CNI plugin {plugin:?} ({path}): {source}")]
    Spawn {
        /// The plugin `type`.
        plugin: String,
        /// The executable.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin ran longer than allowed and was killed.
    #[error(
        "CNI plugin {plugin:?} {command} on network {network:?} did not finish within {}s and was killed",
        timeout.as_secs_f32()
    )]
    Timeout {
        /// The plugin `type`.
        plugin: String,
        /// ADD, CHECK or DEL.
        command: &'static str,
        /// The network.
        network: String,
        /// The limit.
        timeout: Duration,
    },
    /// The plugin failed and said why, in the CNI error format.
    #[error(
        "CNI plugin {plugin:?} {command} on network {network:?} failed: {msg}{} (CNI error code {code}{})",
        if details.is_empty() { String::new() } else { format!(": {details}") },
        well_known_code(*code).map(|w| format!(": {w}")).unwrap_or_default()
    )]
    Plugin {
        /// The plugin `type`.
        plugin: String,
        /// ADD, CHECK or DEL.
        command: &'static str,
        /// The network.
        network: String,
        /// The CNI error code (0-99 well-known, 100+ plugin-specific).
        code: u32,
        /// The short message.
        msg: String,
        /// The long message, possibly empty.
        details: String,
    },
    /// The plugin failed without a CNI error object on stdout.
    #[error("CNI plugin {plugin:?} {command} on network {network:?} failed ({status}): {output}")]
    Crashed {
        /// The plugin `type`.
        plugin: String,
        /// ADD, CHECK or DEL.
        command: &'static str,
        /// The network.
        network: String,
        /// The exit status.
        status: String,
        /// The tail of what it printed.
        output: String,
    },
    /// The plugin succeeded but its result is not a CNI result.
    #[error(
        "CNI plugin {plugin:?} {command} on network {network:?} printed an unreadable result: {reason}"
    )]
    BadResult {
        /// The plugin `type`.
        plugin: String,
        /// ADD, CHECK or DEL.
        command: &'static str,
        /// The network.
        network: String,
        /// Why.
        reason: String,
    },
}

/// The meaning of the CNI spec's well-known error codes.
pub fn well_known_code(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "the plugin is not available",
        51 => "the plugin is not available, existing containers may be damaged",
        _ => return None,
    })
}

/// A failure of the pod network manager.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The sandbox id cannot be a CNI container id.
    #[error("invalid sandbox id {0:?} for CNI: must be alphanumeric, '_', '.' or '-'")]
    InvalidId(String),
    /// No CNI network is configured.
    #[error("CNI network not ready: {0}")]
    NotReady(String),
    /// A request field is malformed.
    #[error("invalid pod network request: {0}")]
    InvalidRequest(String),
    /// A plugin failed.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Creating, entering or removing the network namespace failed.
    #[error("network namespace {path}: {reason}")]
    Netns {
        /// The netns file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Creating or wiring the tap device failed.
    #[error("tap device {tap} in network namespace {netns}: {reason}")]
    Tap {
        /// The tap name.
        tap: String,
        /// The netns file.
        netns: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the CNI cache failed.
    #[error("CNI cache file {path}: {reason}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `setup` for a sandbox whose network exists already.
    #[error("the pod network of sandbox {0} is already set up; tear it down first")]
    AlreadySetUp(String),
    /// `check` for a sandbox without a pod network.
    #[error("sandbox {0} has no pod network")]
    NotFound(String),
    /// The ADD result lacks what the pod needs.
    #[error("unusable CNI result for network {network:?}: {reason}")]
    UnusableResult {
        /// The network.
        network: String,
        /// Why.
        reason: String,
    },
    /// Writing the default network configuration failed.
    #[error("cannot write the default CNI config {path}: {reason}")]
    DefaultConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Setting up failed, and undoing what was done failed too; teardown should be retried.
    #[error("{error}; undoing the partial setup also failed: {cleanup}")]
    CleanupFailed {
        /// Why setup failed.
        error: Box<NetworkError>,
        /// Why the cleanup failed.
        cleanup: Box<NetworkError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_errors_name_the_plugin_and_the_meaning_of_the_code() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            network: "moat".into(),
            code: 7,
            msg: "bad bridge".into(),
            details: "field x".into(),
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin \"bridge\" ADD on network \"moat\" failed: bad bridge: field x \
             (CNI error code 7: invalid network config)"
        );
        let e = CniError::Plugin {
            plugin: "p".into(),
            command: "DEL",
            network: "n".into(),
            code: 999,
            msg: "m".into(),
            details: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin \"p\" DEL on network \"n\" failed: m (CNI error code 999)"
        );
        let e = CniError::Timeout {
            plugin: "p".into(),
            command: "ADD",
            network: "n".into(),
            timeout: Duration::from_millis(1500),
        };
        assert!(e.to_string().contains("within 1.5s"), "{e}");
    }
}
