//! Moat's vhost-user-vsock device backend, with a hybrid-vsock host side.
//!
//! QEMU (TCG, no `/dev/vhost-vsock`) gives the guest a virtio-vsock device through
//! `-chardev socket,id=c,path=<socket> -device vhost-user-vsock-device,chardev=c`; this
//! backend serves `<socket>`. QEMU learns the guest CID from us (vhost-user GET_CONFIG), so
//! the backend must be listening before QEMU starts.
//!
//! The host side follows the "hybrid vsock" convention of Firecracker and Cloud Hypervisor:
//! - host-initiated: a host process connects to the Unix socket `<uds_path>` and writes
//!   `CONNECT <port>\n`; we send the guest a REQUEST for `<port>`; on RESPONSE we answer
//!   `OK <local port>\n` on the Unix stream and relay bytes both ways; on RST we close it.
//! - guest-initiated: the guest connects to CID 2 port P; we connect to `<uds_path>_P` and
//!   relay, or answer RST if nobody listens there.
//!
//! Why this is written by hand: the hybrid CONNECT protocol is not a crate. Firecracker and
//! Cloud Hypervisor implement it inside their VMMs (not as libraries), and rust-vmm's
//! vhost-device-vsock is a binary, not a library, whose worker thread dies for good on the
//! first queue error (a host CONNECT racing the queue set-up kills it). The rust-vmm crates
//! used here provide the vhost-user protocol (`vhost`, `vhost-user-backend`), virtqueues
//! (`virtio-queue`) and guest memory (`vm-memory`); the vsock protocol on top of them (the
//! connection state machine, credit flow control, the CONNECT handshake) is ours.
//!
//! Modules, one job each: `packet` (header codec), `connection` (one connection's state and
//! credit, pure logic), `handshake` (the CONNECT/OK lines), `muxer` (connections, host
//! sockets), `queue` (virtqueues ↔ muxer), `backend` (the vhost-user device). Moat's own VMM
//! drives `muxer` and `queue` in-process from its virtio-mmio device (crate `moat-vmm`), so
//! the host reaches the agent the same way whichever VMM runs the guest.

mod backend;
mod connection;
pub mod handshake;
pub mod muxer;
pub mod packet;
pub mod queue;
#[cfg(any(test, feature = "test-utils"))]
pub mod testutil;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

pub use backend::VsockBackend;
pub use muxer::port_socket_path;

/// Where the backend serves and which guest it speaks for.
#[derive(Clone, Debug)]
pub struct VsockBackendConfig {
    /// The vhost-user socket QEMU connects to (`-chardev socket,path=...`).
    pub socket: PathBuf,
    /// The hybrid-vsock Unix socket for host-initiated connections; guest connections to
    /// port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// The guest's CID (3 or more).
    pub guest_cid: u64,
}

/// Why the backend could not run.
#[derive(Debug, Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or out of range (must be 3..=4294967294)")]
    InvalidCid(u64),
    #[error("binding the hybrid vsock socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock epoll: {0}")]
    Epoll(std::io::Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("watching host sockets from the vring worker: {0}")]
    RegisterListener(std::io::Error),
}

/// Serves one QEMU connection on `config.socket` until QEMU disconnects.
pub fn run(config: VsockBackendConfig) -> Result<(), VsockError> {
    if !(3..u64::from(u32::MAX)).contains(&config.guest_cid) {
        return Err(VsockError::InvalidCid(config.guest_cid));
    }
    let muxer = muxer::Muxer::new(&config.uds_path, config.guest_cid)?;
    let host_fd = muxer.epoll_fd();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(VsockBackend::new(config.guest_cid, muxer, mem.clone()));
    let mut daemon = VhostUserDaemon::new("moat-vsock".to_owned(), backend.clone(), mem)
        .map_err(|e| VsockError::Daemon(e.to_string()))?;
    let handlers = daemon.get_epoll_handlers();
    let worker = handlers
        .first()
        .ok_or_else(|| VsockError::Daemon("no vring worker".to_owned()))?;
    worker
        .register_listener(host_fd, EventSet::IN, u64::from(backend::HOST_EVENT))
        .map_err(VsockError::RegisterListener)?;
    tracing::info!(
        socket = %config.socket.display(),
        uds = %config.uds_path.display(),
        guest_cid = config.guest_cid,
        "vsock backend serving"
    );
    let result = daemon
        .serve(&config.socket)
        .map_err(|e| VsockError::Daemon(e.to_string()));
    tracing::info!("vsock backend: frontend disconnected");
    result
}
