//! Small synchronisation helpers shared by the managers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// One async lock per key, created on demand and dropped when unused.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// Runs the blocking `f` (a fork, a durable commit) so that the async worker it is called
/// on hands its other tasks to another worker meanwhile, in a multi-threaded runtime;
/// elsewhere (unit tests) it just runs it. A burst of pod starts then cannot stall the
/// calls that only read.
pub fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialise_one_key_only() {
        let locks = KeyedLocks::default();
        let g = locks.lock("a").await;
        // Another key is free.
        let _h = locks.lock("b").await;
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a")).await;
        assert!(again.is_err(), "the same key must wait");
        drop(g);
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a")).await;
        assert!(again.is_ok());
    }
}
