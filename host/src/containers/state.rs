//! The container lifecycle as an explicit state machine (CRI: CREATED, RUNNING, EXITED).

use serde::{Deserialize, Serialize};

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created in the guest, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended (or never could start).
    Exited,
}

/// What happens to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEvent {
    /// StartContainer succeeded.
    Started,
    /// The process could not be started.
    StartFailed,
    /// The process exited.
    Exited,
    /// RemoveContainer.
    Remove,
}

/// A transition the lifecycle does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a container in state {from:?} cannot take event {event:?}")]
pub struct InvalidTransition {
    /// The state.
    pub from: ContainerState,
    /// The event.
    pub event: ContainerEvent,
}

/// The state after an event; `None` means the container is gone.
pub fn apply(
    from: ContainerState,
    event: ContainerEvent,
) -> Result<Option<ContainerState>, InvalidTransition> {
    use ContainerEvent as E;
    use ContainerState as S;
    match (from, event) {
        (S::Created, E::Started) => Ok(Some(S::Running)),
        (S::Created, E::StartFailed) => Ok(Some(S::Exited)),
        (S::Running, E::Exited) | (S::Exited, E::Exited) => Ok(Some(S::Exited)),
        // A created container that never ran can be removed, as can an exited one; a running
        // one is stopped by the manager first.
        (S::Created | S::Exited, E::Remove) => Ok(None),
        (from, event) => Err(InvalidTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerEvent as E;
    use ContainerState as S;

    #[test]
    fn lifecycle() {
        assert_eq!(apply(S::Created, E::Started), Ok(Some(S::Running)));
        assert_eq!(apply(S::Running, E::Exited), Ok(Some(S::Exited)));
        assert_eq!(apply(S::Exited, E::Remove), Ok(None));
        assert_eq!(apply(S::Created, E::StartFailed), Ok(Some(S::Exited)));
        assert_eq!(apply(S::Created, E::Remove), Ok(None));
    }

    #[test]
    fn refused() {
        for (s, e) in [
            (S::Running, E::Started),
            (S::Exited, E::Started),
            (S::Running, E::Remove),
            (S::Created, E::Exited),
        ] {
            assert!(apply(s, e).is_err(), "{s:?} {e:?}");
        }
    }
}
