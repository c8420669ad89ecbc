//! Coordination between concurrent pulls and garbage collection: per-key async locks so
//! each blob and snapshot is fetched or unpacked once, and leases that keep the content of
//! pulls in flight safe from a collection running beside them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

pub use crate::sync::KeyedLocks;

/// Keys (digests) that garbage collection must not touch.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, usize>>,
}

/// Releases its keys when dropped.
pub struct Lease<'a> {
    leases: &'a Leases,
    keys: Vec<String>,
}

impl Leases {
    /// Protects `keys` until the returned lease is dropped. Taken before a pull checks
    /// whether content exists, so a collection cannot remove it between check and use.
    pub fn acquire(&self, keys: impl IntoIterator<Item = String>) -> Lease<'_> {
        let keys: Vec<String> = keys.into_iter().collect();
        let mut held = self.lock();
        for k in &keys {
            *held.entry(k.clone()).or_default() += 1;
        }
        Lease { leases: self, keys }
    }

    /// Holds the lease table: a collection keeps it for its whole run.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Lease<'_> {
    /// Adds keys learnt later (the layers, once the manifest is read).
    pub fn extend(&mut self, keys: impl IntoIterator<Item = String>) {
        let mut held = self.leases.lock();
        for k in keys {
            *held.entry(k.clone()).or_default() += 1;
            self.keys.push(k);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut held = self.leases.lock();
        for k in &self.keys {
            if let Some(n) = held.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    held.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_and_release() {
        let l = Leases::default();
        let a = l.acquire(["x".to_owned()]);
        let mut b = l.acquire(["x".to_owned()]);
        b.extend(["y".to_owned()]);
        assert_eq!(l.lock().get("x"), Some(&2));
        drop(a);
        assert_eq!(l.lock().get("x"), Some(&1));
        drop(b);
        assert!(l.lock().is_empty());
    }
}
