//! The node's pod CIDR, as kubelet sets it with UpdateRuntimeConfig: checked, kept in the
//! state store (pods started after a restart still get it), and turned into a default
//! bridge network when the node has no CNI network of its own (containerd's conf
//! template does the same).

use std::path::PathBuf;

use tracing::{info, warn};

use crate::store::{Store, StoreError};

const KEY: &str = "pod_cidr";

/// Why a pod CIDR was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PodCidrError {
    /// Not a CIDR, nor an IPv4,IPv6 pair of them.
    #[error(
        "pod CIDR {0:?} is not a CIDR like 10.244.0.0/24 (or a comma-separated IPv4,IPv6 pair)"
    )]
    NotACidr(String),
    /// The state store failed.
    #[error("cannot keep the pod CIDR: {0}")]
    Store(#[from] StoreError),
}

/// Checks a pod CIDR (`a.b.c.d/n` or an IPv6 prefix), possibly a comma-separated pair.
pub fn valid_cidr(s: &str) -> bool {
    s.split(',').all(|c| {
        let Some((ip, bits)) = c.trim().split_once('/') else {
            return false;
        };
        match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        }
    })
}

/// The pod CIDR of this node.
#[derive(Clone)]
pub struct PodCidr {
    store: Store,
    conf_dir: PathBuf,
}

impl PodCidr {
    /// Kept in `store`; a default network goes to the CNI `conf_dir`.
    pub fn new(store: Store, conf_dir: PathBuf) -> Self {
        Self { store, conf_dir }
    }

    /// The CIDR kubelet last set, if any.
    pub fn get(&self) -> Option<String> {
        self.store
            .get_meta(KEY)
            .ok()
            .flatten()
            .filter(|c| !c.is_empty())
    }

    /// Takes a new CIDR; an empty one changes nothing (kubelet sends it before it knows).
    pub async fn update(&self, cidr: &str) -> Result<(), PodCidrError> {
        if cidr.is_empty() {
            return Ok(());
        }
        if !valid_cidr(cidr) {
            return Err(PodCidrError::NotACidr(cidr.to_owned()));
        }
        self.store.put_meta(KEY, cidr)?;
        info!(pod_cidr = %cidr, "pod CIDR updated");
        match super::write_default_conflist(&self.conf_dir, cidr).await {
            Ok(Some(path)) => {
                info!(file = %path.display(), "wrote a default CNI network for the pod CIDR")
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot write a default CNI network"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        for ok in ["10.244.0.0/24", "10.0.0.0/8,fd00::/64", "fd00::/128"] {
            assert!(valid_cidr(ok), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/24,",
        ] {
            assert!(!valid_cidr(bad), "{bad}");
        }
    }
}
