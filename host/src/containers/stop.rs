//! Stopping a container's main process: SIGTERM, up to the caller's timeout for it to
//! exit, then SIGKILL and a short wait. Returns as soon as the process is gone.

use std::time::Duration;

use tracing::warn;

use crate::guest::{ExitInfo, Guest};

/// How long a SIGKILLed process may take to be reaped in the guest.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);

/// Stops container `id`'s main process; its exit, or `None` if it outlived SIGKILL (the
/// guest does not answer). A signal the agent cannot deliver (the process is already
/// gone) is only logged: the wait that follows reports the exit.
pub(super) async fn stop_process(
    guest: &dyn Guest,
    id: &str,
    timeout: Duration,
) -> Option<ExitInfo> {
    for (sig, wait) in [(libc::SIGTERM, timeout), (libc::SIGKILL, KILL_WAIT)] {
        if let Err(e) = guest.signal_container(id, sig).await {
            warn!(container = %id, error = %e, "signal failed");
        }
        if let Ok(Some(exit)) = guest.wait_container(id, wait).await {
            return Some(exit);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::testing::{Behaviour, FakeGuest};

    #[tokio::test(start_paused = true)]
    async fn a_process_that_exits_on_sigterm_is_not_waited_for_again() {
        let g = FakeGuest::with("c1", Behaviour::ExitsOnSignal);
        let started = tokio::time::Instant::now();
        let exit = stop_process(&g, "c1", Duration::from_secs(60)).await;
        assert_eq!(exit.map(|e| e.code), Some(128 + libc::SIGTERM));
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait for the timeout");
        assert_eq!(g.calls(), ["signal c1 15", "wait c1 60s"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_timeout() {
        let g = FakeGuest::with("c1", Behaviour::IgnoresTerm);
        let started = tokio::time::Instant::now();
        let exit = stop_process(&g, "c1", Duration::from_secs(2)).await;
        assert_eq!(exit.map(|e| e.code), Some(128 + libc::SIGKILL));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            g.calls(),
            ["signal c1 15", "wait c1 2s", "signal c1 9", "wait c1 10s"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_never_answers_costs_the_timeout_and_the_kill_wait_only() {
        let g = FakeGuest::with("c1", Behaviour::Hangs);
        let started = tokio::time::Instant::now();
        assert!(
            stop_process(&g, "c1", Duration::from_secs(3))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3) + KILL_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_container_is_not_waited_for() {
        let g = FakeGuest::default();
        let started = tokio::time::Instant::now();
        assert!(
            stop_process(&g, "gone", Duration::from_secs(60))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
