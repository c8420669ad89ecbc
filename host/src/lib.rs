//! moatd, the Moat host daemon: the CRI v1 server and everything behind it.
//!
//! - `cri`: the gRPC edge: checks and translates requests, maps errors to gRPC codes.
//! - `pods`: the one owner of what spans a pod and its containers (stop, remove).
//! - `sandbox`: pod sandboxes, one VM each: state machine, records, VM processes, manager.
//! - `containers`: containers in the pods' VMs: state machine, records, OCI spec, logs,
//!   streaming sessions, manager.
//! - `guest`: the client of the agent in each VM (hybrid vsock, gRPC, deadlines) behind
//!   the `Guest` trait.
//! - `volumes`: CRI mounts bound into a pod's `volumes` share; `userns`: pod user
//!   namespaces.
//! - `streaming`: the Exec/Attach/PortForward server (SPDY, WebSocket, tokens).
//! - `images`: references, registries, content store, layer snapshots, image records.
//! - `hypervisor`: the VMMs (QEMU, the built-in VMM) and which one a handler gets.
//! - `network`: pod networking (CNI, netns, tap), the pod CIDR.
//! - `confine`: `moatd jail`, the confinement of the processes that serve a pod.
//! - `devices`: the virtio device models (crate `moat-devices`), served over vhost-user.
//! - `store`: the embedded transactional state database; `ids`, `sync`, `time`: helpers.
//! - `check`: `moatd check` and the CRI's RuntimeReady/NetworkReady.
//! - `config`, `logging`, `daemon`: set-up.

pub mod check;
pub mod config;
pub mod confine;
pub mod containers;
pub mod cri;
pub mod daemon;
pub mod guest;
pub mod hypervisor;
pub mod ids;
pub mod images;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod pods;
pub mod sandbox;
pub mod store;
pub mod streaming;
pub mod sync;
pub mod time;
pub mod userns;
pub mod volumes;

/// The virtio device models (crate `moat-devices`), served over vhost-user to QEMU.
pub use moat_devices as devices;
