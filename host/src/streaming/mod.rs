//! The streaming server: Exec, Attach and PortForward sessions that kubelet and crictl
//! reach through the URL the CRI calls return.
//!
//! - `tokens`: single-use, expiring tokens naming a stored request.
//! - `server`: the HTTP listener and the upgrade to SPDY/3.1 or WebSocket.
//! - `remotecommand` and `portforward`: the Kubernetes protocols over each transport.
//! - `spdy`: SPDY/3.1 itself (no maintained crate implements it).
//! - `backend`: what the protocols ask of the runtime (implemented by the CRI layer over
//!   the pods' agents).

pub mod backend;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod tokens;
pub mod websocket;

pub use backend::{
    AttachRequest, Backend, BackendError, ExecRequest, Io, PortForwardRequest, Request,
};
pub use server::StreamingServer;
