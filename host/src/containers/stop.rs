//! Stopping a container's main process: SIGTERM, up to the caller's timeout for it to
//! exit, then SIGKILL and a short wait. Returns as soon as the process is gone, and as soon
//! as the guest stops answering: waiting longer on a hung agent helps nobody.

use std::time::Duration;

use tracing::warn;

use crate::guest::{ExitInfo, Guest, GuestError};

/// How long a SIGKILLed process may take to be reaped in the guest.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);

/// Whether `e` says the guest is not answering at all (as opposed to answering "no").
fn unresponsive(e: &GuestError) -> bool {
    matches!(e, GuestError::NoAnswer(_) | GuestError::Unreachable(_))
}

/// Stops container `id`'s main process: its exit, `None` if it outlived SIGKILL, or the
/// error of a guest that does not answer. A signal the agent cannot deliver (the process
/// is already gone) is only logged: the wait that follows reports the exit.
pub(super) async fn stop_process(
    guest: &dyn Guest,
    id: &str,
    timeout: Duration,
) -> Result<Option<ExitInfo>, GuestError> {
    for (sig, wait) in [(libc::SIGTERM, timeout), (libc::SIGKILL, KILL_WAIT)] {
        match guest.signal_container(id, sig).await {
            Err(e) if unresponsive(&e) => return Err(e),
            Err(e) => warn!(container = %id, error = %e, "signal failed"),
            Ok(()) => {}
        }
        match guest.wait_container(id, wait).await {
            Ok(Some(exit)) => return Ok(Some(exit)),
            Err(e) if unresponsive(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::testing::{Behaviour, FakeGuest};

    fn code(r: Result<Option<ExitInfo>, GuestError>) -> Option<i32> {
        r.expect("answered").map(|e| e.code)
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_that_exits_on_sigterm_is_not_waited_for_again() {
        let g = FakeGuest::with("c1", Behaviour::ExitsOnSignal);
        let started = tokio::time::Instant::now();
        let exit = stop_process(&g, "c1", Duration::from_secs(60)).await;
        assert_eq!(code(exit), Some(128 + libc::SIGTERM));
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait for the timeout");
        assert_eq!(g.calls(), ["signal c1 15", "wait c1 60s"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_timeout() {
        let g = FakeGuest::with("c1", Behaviour::IgnoresTerm);
        let started = tokio::time::Instant::now();
        let exit = stop_process(&g, "c1", Duration::from_secs(2)).await;
        assert_eq!(code(exit), Some(128 + libc::SIGKILL));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            g.calls(),
            ["signal c1 15", "wait c1 2s", "signal c1 9", "wait c1 10s"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_stops_answering_is_not_waited_for_again() {
        let g = FakeGuest::with("c1", Behaviour::Hangs);
        let started = tokio::time::Instant::now();
        let e = stop_process(&g, "c1", Duration::from_secs(3))
            .await
            .expect_err("no answer");
        assert_eq!(e, GuestError::NoAnswer(Duration::from_secs(3)));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "no SIGKILL round"
        );
        assert_eq!(g.calls(), ["signal c1 15", "wait c1 3s"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_that_outlives_sigkill_is_reported_still_running() {
        let g = FakeGuest::with("c1", Behaviour::Immortal);
        let started = tokio::time::Instant::now();
        let r = stop_process(&g, "c1", Duration::from_secs(1)).await;
        assert_eq!(r, Ok(None));
        assert_eq!(started.elapsed(), Duration::from_secs(1) + KILL_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_container_is_not_waited_for() {
        let g = FakeGuest::default();
        let started = tokio::time::Instant::now();
        let r = stop_process(&g, "gone", Duration::from_secs(60)).await;
        assert_eq!(r, Ok(None));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
