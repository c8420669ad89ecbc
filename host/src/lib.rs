//! moatd, the Moat host daemon: the CRI v1 server and everything behind it.
//!
//! - `cri`: the gRPC edge (RuntimeService, ImageService, the socket, error mapping).
//! - `images`: references, registries, content store, layer snapshots, image records.
//! - `network`: pod networking (CNI).
//! - `store`: the embedded transactional state database.
//! - `config`, `logging`, `daemon`: set-up.

pub mod config;
pub mod cri;
pub mod daemon;
pub mod hypervisor;
pub mod images;
pub mod logging;
pub mod network;
pub mod store;
