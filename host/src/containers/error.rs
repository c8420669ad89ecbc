//! Typed errors of the container manager; mapped to gRPC codes in `cri::status`.

/// What can go wrong with a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such container, sandbox or image.
    #[error("{0}")]
    Unknown(String),
    /// The name is taken.
    #[error(
        "container name {0:?} is already in use in this pod; remove that container first or use another attempt"
    )]
    NameTaken(String),
    /// The container or its pod is not in a state that allows the call.
    #[error("{0}")]
    WrongState(String),
    /// A call into the guest timed out.
    #[error("{0}")]
    TimedOut(String),
    /// The agent failed.
    #[error("container {id}: agent: {detail}")]
    Agent {
        /// The container.
        id: String,
        /// What failed.
        detail: String,
    },
    /// The disk that would hold the container's files is full.
    #[error("{0} is full; free space there, then retry")]
    DiskFull(String),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
