//! Rate-limited warnings for what a guest can trigger at will (bad packets, broken
//! descriptor chains): a hostile guest must not turn moatd's log into its disk-filler or
//! CPU sink. Each call site of `warn_limited!` logs at most `BURST` lines per `WINDOW`; the
//! first line after a quiet window says how many were suppressed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines per window and call site.
pub const BURST: u64 = 10;
/// The window, in milliseconds.
pub const WINDOW_MS: u64 = 10_000;

/// One call site's budget.
#[derive(Debug, Default)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RateLimit {
    /// A fresh budget (for statics).
    pub const fn new() -> Self {
        RateLimit {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at `now_ms`, and how many were suppressed before it.
    pub fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let window = now_ms / WINDOW_MS;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// `allow_at` now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }
}

/// `tracing::warn!`, at most `BURST` times per `WINDOW_MS` from this call site; a line
/// that follows suppressed ones carries `suppressed = N`.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_silence_then_the_count() {
        let l = RateLimit::new();
        let t = 5 * WINDOW_MS;
        for i in 0..BURST {
            assert_eq!(l.allow_at(t + i), Some(0));
        }
        for i in 0..1000 {
            assert_eq!(l.allow_at(t + BURST + i), None);
        }
        assert_eq!(
            l.allow_at(t + WINDOW_MS),
            Some(1000),
            "the next window says how many"
        );
        assert_eq!(l.allow_at(t + WINDOW_MS + 1), Some(0));
    }

    #[test]
    fn the_macro_logs_from_a_loop_without_panicking() {
        for _ in 0..100 {
            warn_limited!(len = 3, "test warning");
        }
    }
}
