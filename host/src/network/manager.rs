//! The pod network lifecycle: netns, CNI ADD/CHECK/DEL, the tap into the VM, and the cache
//! that lets teardown work across moatd restarts.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use super::cache::{Cache, CacheEntry};
use super::cni::Cni;
use super::cni::conf::{NetworkConfigList, RuntimeConfig, valid_network_name};
use super::cni::exec::PluginRunner;
use super::cni::result::CniResult;
use super::error::NetworkError;
use super::pod::{PodNetwork, PodNetworkRequest};
use super::{netns, tap};

/// The interface name CNI gives the pod (`CNI_IFNAME`).
pub const POD_IFNAME: &str = "eth0";

/// How long one plugin invocation may take.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets up and tears down pod networks.
#[derive(Debug)]
pub struct NetworkManager {
    conf_dir: PathBuf,
    netns_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cni: Cni,
    cache: Cache,
    /// Per-sandbox locks: the spec forbids parallel operations on one container.
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl NetworkManager {
    /// A manager using the CNI conf dir and plugin dirs of `cni`, pinning namespaces in
    /// `netns_dir` (e.g. `/var/run/netns`, where `ip netns` finds them) and caching what DEL
    /// needs in `cache_dir` (e.g. `/var/lib/moat/cni`; must survive restarts).
    pub fn new(cni: &super::config::CniConfig, netns_dir: PathBuf, cache_dir: PathBuf) -> Self {
        Self {
            conf_dir: cni.conf_dir.clone(),
            netns_dir,
            bin_dirs: cni.bin_dirs.clone(),
            cni: Cni::new(PluginRunner::new(
                cni.bin_dirs.clone(),
                DEFAULT_PLUGIN_TIMEOUT,
            )),
            cache: Cache::new(cache_dir),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Changes how long one plugin invocation may take.
    pub fn with_plugin_timeout(mut self, timeout: Duration) -> Self {
        self.cni = Cni::new(PluginRunner::new(self.bin_dirs.clone(), timeout));
        self
    }

    /// The netns file of a sandbox.
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        netns::netns_path(&self.netns_dir, sandbox_id)
    }

    async fn lock(&self, sandbox_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(sandbox_id).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(sandbox_id.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }

    /// Creates the pod's netns, runs CNI ADD for the default network, and connects a new tap
    /// to the CNI interface. Returns the pod's network and the tap fd for QEMU
    /// (`-netdev tap,fd=N`; the guest NIC must use `PodNetwork::mac`). Closing the last copy of
    /// the fd removes the tap. On failure everything done so far is undone (DEL, netns, cache);
    /// if undoing fails too the error says so and `teardown` should be retried.
    pub async fn setup(
        &self,
        req: &PodNetworkRequest,
    ) -> Result<(PodNetwork, OwnedFd), NetworkError> {
        let id = req.sandbox_id.as_str();
        if !valid_network_name(id) {
            return Err(NetworkError::InvalidId(id.to_owned()));
        }
        let _guard = self.lock(id).await;
        if self.cache.read(id).await?.is_some() {
            return Err(NetworkError::AlreadySetUp(id.to_owned()));
        }
        let netns_path = self.netns_path(id);
        if netns::is_netns(&netns_path) {
            // Not ours to clean up: another sandbox whose id starts the same way.
            return Err(NetworkError::Netns {
                path: netns_path,
                reason: "already exists (another sandbox with the same id prefix?)".into(),
            });
        }
        let (network, file) = NetworkConfigList::load_default(&self.conf_dir)?;
        let runtime = RuntimeConfig {
            port_mappings: req.port_mappings.clone(),
            ip_ranges: req.ip_ranges()?,
        };
        let mut entry = CacheEntry::new(
            id,
            network,
            file,
            req.cni_args(),
            netns_path,
            POD_IFNAME,
            runtime,
            tap::TAP_NAME,
        );
        // Before anything exists: a crash from here on leaves what teardown needs.
        self.cache.write(&entry).await?;
        match self.setup_steps(&mut entry).await {
            Ok(done) => {
                tracing::info!(
                    sandbox = id,
                    network = %done.0.network_name,
                    ip = ?done.0.pod_ip(),
                    netns = %done.0.netns.display(),
                    "pod network set up"
                );
                Ok(done)
            }
            Err(error) => {
                tracing::warn!(sandbox = id, %error, "pod network setup failed, undoing it");
                match self.teardown_locked(id).await {
                    Ok(()) => Err(error),
                    Err(cleanup) => Err(NetworkError::CleanupFailed {
                        error: Box::new(error),
                        cleanup: Box::new(cleanup),
                    }),
                }
            }
        }
    }

    async fn setup_steps(
        &self,
        entry: &mut CacheEntry,
    ) -> Result<(PodNetwork, OwnedFd), NetworkError> {
        netns::create(&entry.netns)
            .await
            .map_err(|e| NetworkError::Netns {
                path: entry.netns.clone(),
                reason: format!("cannot create: {e}"),
            })?;
        let raw = self
            .cni
            .add(&entry.network, &entry.attachment(), &entry.runtime_config)
            .await?;
        entry.result = Some(raw.clone());
        self.cache.write(entry).await?;
        let result = CniResult::parse(&raw).map_err(|reason| NetworkError::UnusableResult {
            network: entry.network.name.clone(),
            reason,
        })?;
        let (fd, link) = tap::attach(&entry.netns, &entry.ifname, &entry.tap)
            .await
            .map_err(|e| NetworkError::Tap {
                tap: entry.tap.clone(),
                netns: entry.netns.clone(),
                reason: e.to_string(),
            })?;
        let pod = PodNetwork::from_result(
            &entry.network.name,
            &result,
            entry.netns.clone(),
            &entry.ifname,
            &link,
            &entry.tap,
        )?;
        entry.pod_network = Some(pod.clone());
        self.cache.write(entry).await?;
        Ok((pod, fd))
    }

    /// Runs CNI CHECK from the cache (skipped for networks with `disableCheck` or a spec
    /// version without CHECK) and checks that the netns and the tap are still there.
    pub async fn check(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        if !valid_network_name(sandbox_id) {
            return Err(NetworkError::InvalidId(sandbox_id.to_owned()));
        }
        let _guard = self.lock(sandbox_id).await;
        let entry = self
            .cache
            .read(sandbox_id)
            .await?
            .filter(|e| e.result.is_some())
            .ok_or_else(|| NetworkError::NotFound(sandbox_id.to_owned()))?;
        if !netns::is_netns(&entry.netns) {
            return Err(NetworkError::Netns {
                path: entry.netns.clone(),
                reason: "the network namespace is gone".into(),
            });
        }
        if let Some(result) = &entry.result {
            self.cni
                .check(
                    &entry.network,
                    &entry.attachment(),
                    &entry.runtime_config,
                    result,
                )
                .await?;
        }
        let up = tap::is_up(&entry.netns, &entry.tap)
            .await
            .map_err(|e| NetworkError::Tap {
                tap: entry.tap.clone(),
                netns: entry.netns.clone(),
                reason: e.to_string(),
            })?;
        if !up {
            return Err(NetworkError::Tap {
                tap: entry.tap.clone(),
                netns: entry.netns.clone(),
                reason: "missing or down (its VM is gone?)".into(),
            });
        }
        Ok(())
    }

    /// Undoes `setup`: removes the tap, runs CNI DEL (reverse order, with the cached config
    /// and ADD result), unmounts and deletes the netns, removes the cache entry. Idempotent:
    /// no cache entry means nothing but a leftover netns to remove. If DEL fails, the netns
    /// and cache entry are kept so a retry can finish the job.
    pub async fn teardown(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        if !valid_network_name(sandbox_id) {
            return Err(NetworkError::InvalidId(sandbox_id.to_owned()));
        }
        let _guard = self.lock(sandbox_id).await;
        self.teardown_locked(sandbox_id).await
    }

    async fn teardown_locked(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let entry = self.cache.read(sandbox_id).await?;
        let netns_path = entry
            .as_ref()
            .map(|e| e.netns.clone())
            .unwrap_or_else(|| self.netns_path(sandbox_id));
        if let Some(e) = &entry {
            if let Err(error) = tap::detach(&e.netns, &e.ifname, &e.tap).await {
                // Removing the netns below takes the tap along anyway.
                tracing::warn!(sandbox = sandbox_id, %error, "cannot remove the tap");
            }
            self.cni
                .del(
                    &e.network,
                    &e.attachment(),
                    &e.runtime_config,
                    e.result.as_ref(),
                )
                .await?;
        }
        netns::remove(&netns_path)
            .await
            .map_err(|e| NetworkError::Netns {
                path: netns_path.clone(),
                reason: format!("cannot remove: {e}"),
            })?;
        self.cache.remove(sandbox_id).await?;
        if entry.is_some() {
            tracing::info!(sandbox = sandbox_id, "pod network torn down");
        }
        Ok(())
    }

    /// The network `setup` returned for a sandbox, from the cache (survives restarts).
    pub async fn pod_network(&self, sandbox_id: &str) -> Result<Option<PodNetwork>, NetworkError> {
        if !valid_network_name(sandbox_id) {
            return Err(NetworkError::InvalidId(sandbox_id.to_owned()));
        }
        Ok(self
            .cache
            .read(sandbox_id)
            .await?
            .and_then(|e| e.pod_network))
    }

    /// The sandboxes with cached network state: after a restart, the ones moatd no longer
    /// knows should be torn down.
    pub async fn cached_sandboxes(&self) -> Result<Vec<String>, NetworkError> {
        self.cache.list().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::config::CniConfig;

    fn manager(d: &std::path::Path) -> NetworkManager {
        NetworkManager::new(
            &CniConfig {
                conf_dir: d.join("net.d"),
                bin_dirs: vec![d.join("bin")],
                ..Default::default()
            },
            d.join("netns"),
            d.join("cache"),
        )
    }

    #[tokio::test]
    async fn bad_ids_no_network_and_idempotent_teardown_without_cache() {
        let d = tempfile::tempdir().expect("tmp");
        let m = manager(d.path());
        let req = PodNetworkRequest {
            sandbox_id: "../x".into(),
            ..Default::default()
        };
        assert!(matches!(
            m.setup(&req).await,
            Err(NetworkError::InvalidId(_))
        ));
        let req = PodNetworkRequest {
            sandbox_id: "abcdef0123456789".into(),
            ..Default::default()
        };
        let e = m.setup(&req).await.expect_err("no network");
        assert!(matches!(e, NetworkError::NotReady(_)), "{e:?}");
        // Nothing was created, so nothing is cached.
        assert!(m.cached_sandboxes().await.expect("list").is_empty());
        m.teardown("abcdef0123456789").await.expect("teardown");
        m.teardown("abcdef0123456789")
            .await
            .expect("teardown twice");
        assert!(matches!(
            m.check("abcdef0123456789").await,
            Err(NetworkError::NotFound(_))
        ));
        assert_eq!(m.pod_network("abcdef0123456789").await.expect("read"), None);
        assert_eq!(
            m.netns_path("abcdef0123456789"),
            d.path().join("netns/moat-abcdef012345")
        );
    }

    #[tokio::test]
    async fn locks_are_per_sandbox_and_released() {
        let d = tempfile::tempdir().expect("tmp");
        let m = manager(d.path());
        let a = m.lock("a").await;
        // Another sandbox is not blocked.
        let _b = m.lock("b").await;
        // The same one is.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), m.lock("a"))
                .await
                .is_err()
        );
        drop(a);
        let _a2 = m.lock("a").await;
    }
}
