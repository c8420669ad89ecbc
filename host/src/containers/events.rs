//! Container lifecycle events (CRI GetContainerEvents, kubelet's evented PLEG): every change
//! of a container's state is published here once, by the manager's transition helper, and
//! every subscriber gets the events in order from a bounded buffer. A subscriber that falls
//! more than `EVENT_BUFFER` events behind loses its stream (kubelet then relists and
//! subscribes again), so a slow client neither blocks moatd nor grows its memory.

use tokio::sync::broadcast;

use super::state::ContainerState;

/// Events a subscriber may fall behind by before its stream ends.
pub const EVENT_BUFFER: usize = 1024;

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// CreateContainer made it.
    Created,
    /// It runs.
    Started,
    /// It exited: on its own, stopped, killed, failed to start, or its VM died.
    Stopped,
    /// RemoveContainer (or RemovePodSandbox) forgot it.
    Deleted,
}

impl EventKind {
    /// The event a change of state from `from` to `to` makes (`None`: absent), if any.
    pub fn of(from: Option<ContainerState>, to: Option<ContainerState>) -> Option<Self> {
        use ContainerState as S;
        match (from, to) {
            (None, Some(S::Created)) => Some(Self::Created),
            (Some(S::Created), Some(S::Running)) => Some(Self::Started),
            (Some(a), Some(S::Exited)) if a != S::Exited => Some(Self::Stopped),
            (Some(_), None) => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The container.
    pub container_id: String,
    /// Its pod.
    pub sandbox_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, ns since the epoch.
    pub at: i64,
}

/// The publisher every subscriber listens to.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<LifecycleEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Events {
    /// Publishes an event; nobody listening is fine.
    pub fn publish(&self, container_id: &str, sandbox_id: &str, kind: EventKind) {
        let _ = self.tx.send(LifecycleEvent {
            container_id: container_id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            kind,
            at: crate::time::now_nanos(),
        });
    }

    /// A new subscriber: the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerState as S;

    #[test]
    fn each_change_of_state_makes_one_event() {
        assert_eq!(
            EventKind::of(None, Some(S::Created)),
            Some(EventKind::Created)
        );
        assert_eq!(
            EventKind::of(Some(S::Created), Some(S::Running)),
            Some(EventKind::Started)
        );
        for from in [S::Created, S::Running] {
            assert_eq!(
                EventKind::of(Some(from), Some(S::Exited)),
                Some(EventKind::Stopped)
            );
        }
        assert_eq!(EventKind::of(Some(S::Exited), Some(S::Exited)), None);
        assert_eq!(
            EventKind::of(Some(S::Exited), None),
            Some(EventKind::Deleted)
        );
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_a_slow_one_is_cut_off() {
        let e = Events::default();
        let mut fast = e.subscribe();
        let mut slow = e.subscribe();
        e.publish("c1", "p", EventKind::Created);
        e.publish("c1", "p", EventKind::Started);
        assert_eq!(fast.recv().await.expect("ev").kind, EventKind::Created);
        assert_eq!(fast.recv().await.expect("ev").kind, EventKind::Started);
        for _ in 0..EVENT_BUFFER {
            e.publish("c2", "p", EventKind::Stopped);
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(2))
        ));
    }
}
