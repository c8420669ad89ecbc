//! The pod sandbox lifecycle as an explicit state machine: every change of state goes
//! through `SandboxState::apply`, which refuses transitions the lifecycle does not have.

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// The record exists; the VM is booting and the agent has not answered yet.
    Creating,
    /// The VM runs and its agent answered: CRI `SANDBOX_READY`.
    Ready,
    /// The VM is gone (stopped, or it died): CRI `SANDBOX_NOTREADY`.
    Stopped,
}

/// What happens to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxEvent {
    /// The agent answered after boot.
    AgentReady,
    /// Boot failed or timed out; everything is torn down and the record goes.
    BootFailed,
    /// StopPodSandbox.
    Stop,
    /// The VMM exited on its own.
    VmExited,
    /// RemovePodSandbox.
    Remove,
}

/// The result of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The sandbox moves to (or stays in) this state.
    State(SandboxState),
    /// The sandbox is gone.
    Removed,
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sandbox in state {from:?} cannot take event {event:?}")]
pub struct InvalidTransition {
    /// The state.
    pub from: SandboxState,
    /// The event.
    pub event: SandboxEvent,
}

impl SandboxState {
    /// The state after `event`, or why it cannot happen.
    pub fn apply(self, event: SandboxEvent) -> Result<Next, InvalidTransition> {
        use SandboxEvent as E;
        use SandboxState as S;
        match (self, event) {
            (S::Creating, E::AgentReady) => Ok(Next::State(S::Ready)),
            (S::Creating, E::BootFailed) => Ok(Next::Removed),
            // A stop or exit while booting: the boot is abandoned, the sandbox stays stopped.
            (S::Creating | S::Ready | S::Stopped, E::Stop | E::VmExited) => {
                Ok(Next::State(S::Stopped))
            }
            // RemovePodSandbox stops first if needed, so removal is allowed from any settled state.
            (S::Ready | S::Stopped, E::Remove) => Ok(Next::Removed),
            (from, event) => Err(InvalidTransition { from, event }),
        }
    }

    /// Whether the CRI reports this sandbox as ready.
    pub fn is_ready(self) -> bool {
        self == Self::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SandboxEvent as E;
    use SandboxState as S;

    #[test]
    fn the_happy_path() {
        assert_eq!(S::Creating.apply(E::AgentReady), Ok(Next::State(S::Ready)));
        assert_eq!(S::Ready.apply(E::Stop), Ok(Next::State(S::Stopped)));
        assert_eq!(S::Stopped.apply(E::Remove), Ok(Next::Removed));
    }

    #[test]
    fn stop_is_idempotent_and_removal_needs_a_settled_sandbox() {
        assert_eq!(S::Stopped.apply(E::Stop), Ok(Next::State(S::Stopped)));
        assert_eq!(S::Ready.apply(E::VmExited), Ok(Next::State(S::Stopped)));
        assert_eq!(S::Ready.apply(E::Remove), Ok(Next::Removed));
        assert!(S::Creating.apply(E::Remove).is_err());
    }

    #[test]
    fn impossible_transitions_are_refused() {
        for (s, e) in [
            (S::Ready, E::AgentReady),
            (S::Stopped, E::AgentReady),
            (S::Ready, E::BootFailed),
            (S::Stopped, E::BootFailed),
        ] {
            assert_eq!(s.apply(e), Err(InvalidTransition { from: s, event: e }));
        }
    }
}
