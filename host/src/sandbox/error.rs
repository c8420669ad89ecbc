//! Typed errors of the sandbox manager; mapped to gRPC codes in `cri::status`.

use super::state::InvalidTransition;
use crate::hypervisor::HypervisorError;

/// What can go wrong with a pod sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such sandbox.
    #[error("pod sandbox {0} not found")]
    Unknown(String),
    /// A sandbox with the same name exists.
    #[error(
        "pod sandbox name {name:?} is already used by {id}; remove it first or use another attempt number"
    )]
    NameTaken {
        /// The reserved name.
        name: String,
        /// Its sandbox.
        id: String,
    },
    /// The request cannot be served by a VM sandbox.
    #[error("{0}")]
    WrongState(String),
    /// The VM did not come up in time; everything was torn down.
    #[error(
        "pod sandbox {id}: {what} did not happen within {secs} s; the VM was torn down (guest console: {console})"
    )]
    DeadlineMissed {
        /// The sandbox.
        id: String,
        /// What was awaited.
        what: String,
        /// The deadline.
        secs: u64,
        /// The guest console log, kept for diagnosis.
        console: String,
    },
    /// The VM could not be started.
    #[error("pod sandbox {id}: {source}")]
    Hypervisor {
        /// The sandbox.
        id: String,
        /// Why.
        source: HypervisorError,
    },
    /// The agent failed a call.
    #[error("pod sandbox {id}: agent: {detail}")]
    Agent {
        /// The sandbox.
        id: String,
        /// What failed.
        detail: String,
    },
    /// A lifecycle transition that is not allowed.
    #[error("pod sandbox {id}: {source}")]
    Transition {
        /// The sandbox.
        id: String,
        /// Which.
        source: InvalidTransition,
    },
    /// The pod network could not be set up or torn down.
    #[error("pod sandbox {id}: network: {source}")]
    Network {
        /// The sandbox.
        id: String,
        /// Why (boxed: it is large and rare).
        source: Box<crate::network::NetworkError>,
    },
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        source: std::io::Error,
    },
}

impl SandboxError {
    /// Wraps an I/O error.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
