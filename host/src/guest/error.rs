//! What can go wrong talking to a guest's agent, named after the cause. The agent's gRPC
//! status is read here, once; the managers map these to their own errors and the CRI edge
//! maps those to gRPC codes.

use std::time::Duration;

/// A failed call into the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// No answer within the call's deadline: the agent hangs, or the VM is stopped.
    #[error("the agent did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The vsock stream or the gRPC channel to the agent could not be opened or broke.
    #[error("the agent cannot be reached: {0}")]
    Unreachable(String),
    /// The agent found the request malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The agent knows no such container or process.
    #[error("{0}")]
    Unknown(String),
    /// The agent refused: the object is not in a state that allows the call.
    #[error("{0}")]
    WrongState(String),
    /// The agent tried and failed.
    #[error("{0}")]
    Failed(String),
}

impl GuestError {
    /// The error's kind, as /metrics labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoAnswer(_) => "no_answer",
            Self::Unreachable(_) => "unreachable",
            Self::BadRequest(_) => "bad_request",
            Self::Unknown(_) => "unknown",
            Self::WrongState(_) => "wrong_state",
            Self::Failed(_) => "failed",
        }
    }

    /// Reads an agent's gRPC status for a call whose deadline was `deadline`. Its message
    /// is the guest's (untrusted) text: it is shown to the user as the agent's word and
    /// never parsed.
    pub fn from_status(s: &tonic::Status, deadline: Duration) -> Self {
        let msg = s.message().to_owned();
        match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Self::BadRequest(msg),
            tonic::Code::NotFound => Self::Unknown(msg),
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => Self::WrongState(msg),
            // tonic ends a call whose grpc-timeout passed with Cancelled ("Timeout
            // expired"): the guest did not answer in time either way.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Self::NoAnswer(deadline),
            tonic::Code::Unavailable => Self::Unreachable(msg),
            _ => Self::Failed(msg),
        }
    }
}

impl From<tonic::transport::Error> for GuestError {
    fn from(e: tonic::transport::Error) -> Self {
        Self::Unreachable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_status_is_read_by_its_code() {
        let e = |code, m: &str| {
            GuestError::from_status(&tonic::Status::new(code, m), Duration::from_secs(5))
        };
        assert_eq!(
            e(tonic::Code::NotFound, "no container x"),
            GuestError::Unknown("no container x".into())
        );
        assert_eq!(
            e(tonic::Code::InvalidArgument, "bad"),
            GuestError::BadRequest("bad".into())
        );
        assert_eq!(
            e(tonic::Code::FailedPrecondition, "not running"),
            GuestError::WrongState("not running".into())
        );
        assert!(matches!(
            e(tonic::Code::Unavailable, "broken pipe"),
            GuestError::Unreachable(_)
        ));
        assert_eq!(
            e(tonic::Code::Cancelled, "Timeout expired"),
            GuestError::NoAnswer(Duration::from_secs(5)),
            "tonic's own request timeout"
        );
        assert_eq!(
            e(tonic::Code::DeadlineExceeded, "late"),
            GuestError::NoAnswer(Duration::from_secs(5))
        );
        assert_eq!(
            e(tonic::Code::Internal, "boom"),
            GuestError::Failed("boom".into())
        );
    }
}
