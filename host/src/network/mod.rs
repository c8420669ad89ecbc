//! Pod networking. For now: reading the CNI configuration directory to tell kubelet the
//! truth about NetworkReady.

pub mod cni_config;
