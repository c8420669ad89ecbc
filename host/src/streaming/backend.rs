//! What a streaming session asks of the runtime, in the streaming server's own terms. The
//! CRI layer stores a `Request` behind each token, `containers::sessions` implements
//! `Backend` over the pods' agents; the protocol handlers (SPDY, WebSocket) only move bytes between the client and
//! an `Io`.

use tokio::sync::mpsc;

pub use crate::guest::StdinEvent;

/// An Exec waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container.
    pub container_id: String,
    /// The command.
    pub cmd: Vec<String>,
    /// On a terminal.
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with a terminal).
    pub stderr: bool,
}

/// An Attach waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The container.
    pub container_id: String,
    /// The container has a terminal.
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr.
    pub stderr: bool,
}

/// A PortForward waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// The pod.
    pub sandbox_id: String,
    /// The ports the CRI request named (WebSocket clients that name none use these).
    pub ports: Vec<u16>,
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `/exec/<token>`.
    Exec(ExecRequest),
    /// `/attach/<token>`.
    Attach(AttachRequest),
    /// `/portforward/<token>`.
    PortForward(PortForwardRequest),
}

impl Request {
    /// The URL path segment for this kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

/// The client's side of a process: what it types (stdin, EOF, resizes) and where the
/// output goes. A sender is `None` when the client did not ask for that stream; output is
/// complete when the backend drops its senders.
pub struct Io {
    /// Stdin bytes, EOF and terminal resizes, in order.
    pub input: mpsc::Receiver<StdinEvent>,
    /// Standard output (or the terminal).
    pub stdout: Option<mpsc::Sender<Vec<u8>>>,
    /// Standard error.
    pub stderr: Option<mpsc::Sender<Vec<u8>>>,
}

/// Why a streaming call failed; the message goes to the client's error stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// The runtime behind the streaming server.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs the Exec; returns the exit code. Dropping the future ends the process.
    async fn exec(&self, req: &ExecRequest, io: Io) -> Result<i32, BackendError>;
    /// Joins the container's main process until the client detaches or it exits.
    /// Dropping the future detaches.
    async fn attach(&self, req: &AttachRequest, io: Io) -> Result<(), BackendError>;
    /// Relays one connection to `port` inside the pod: `input` ends at the client's
    /// half-close; the backend drops `output` at the port's. Dropping the future closes
    /// the connection.
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        input: mpsc::Receiver<Vec<u8>>,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), BackendError>;
}
