//! Pod networking.
//!
//! Each pod sandbox gets a network namespace on the host (`netns`), wired by the node's CNI
//! plugins (`cni`: the default network of the conf dir, ADD/CHECK/DEL per the CNI spec) and
//! cross-connected to a tap device with tc redirects (`tap`); QEMU gets the tap's fd and the
//! guest NIC takes the CNI interface's MAC and addresses (`pod::PodNetwork`). What teardown
//! needs is cached on disk (`cache`) so it works after a moatd restart. `NetworkManager`
//! (`manager`) runs it all; `default_conf` writes a bridge network for nodes that have none;
//! `cni_config` tells kubelet whether a network is configured (NetworkReady); `pod_cidr`
//! keeps the node's pod CIDR that kubelet sets.

pub mod cache;
pub mod cni;
pub mod cni_config;
pub mod config;
pub mod default_conf;
pub mod error;
pub mod manager;
pub mod netns;
pub mod pod;
pub mod pod_cidr;
pub mod tap;
pub mod usage;

pub use cni::conf::PortMapping;
pub use default_conf::write_default_conflist;
pub use error::{CniError, NetworkError};
pub use manager::{DEFAULT_PLUGIN_TIMEOUT, NetworkManager, POD_IFNAME};
pub use netns::DEFAULT_NETNS_DIR;
pub use pod::{PodDns, PodNetwork, PodNetworkRequest, PodRoute};
