//! moatd, the Moat host daemon: the CRI v1 server and everything behind it.
//!
//! - `cri`: the gRPC edge (RuntimeService, ImageService, the socket, error mapping).
//! - `images`: references, registries, content store, layer snapshots, image records.
//! - `network`: pod networking (CNI).
//! - `store`: the embedded transactional state database.
//! - `devices`: the virtio device models (crate `moat-devices`), served over vhost-user.
//! - `confine`: `moatd jail`, the confinement of the processes that serve a pod.
//! - `check`: `moatd check`, what this host offers moatd.
//! - `config`, `logging`, `daemon`: set-up.

pub mod check;
pub mod config;
pub mod confine;
pub mod containers;
pub mod cri;
pub mod daemon;
pub mod hypervisor;
pub mod ids;
pub mod images;
pub mod logging;
pub mod network;
pub mod sandbox;
pub mod store;
pub mod streaming;
pub mod sync;

/// The virtio device models (crate `moat-devices`), served over vhost-user to QEMU.
pub use moat_devices as devices;
