//! What DEL and CHECK need, kept on disk per sandbox so teardown works after a moatd restart
//! or crash, and with the network configuration as it was at ADD even if the conf dir changed
//! since (the same reason libcni caches results).
//!
//! The entry is written before anything is created (with no result yet), so a crash in the
//! middle of setup still leaves enough behind for teardown to undo it; it is rewritten with
//! the ADD result, and removed only after a successful DEL.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cni::conf::{NetworkConfigList, RuntimeConfig};
use super::cni::exec::Attachment;
use super::error::NetworkError;
use super::pod::PodNetwork;

/// The format version of cache files.
const CACHE_VERSION: u32 = 1;

/// One sandbox's cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The format version.
    pub version: u32,
    /// The sandbox id (also `CNI_CONTAINERID`).
    pub sandbox_id: String,
    /// The network configuration list used for ADD.
    pub network: NetworkConfigList,
    /// The file it came from.
    pub network_file: String,
    /// `CNI_ARGS`.
    pub cni_args: String,
    /// The netns file (`CNI_NETNS`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The capability data given to the plugins (portmap's DEL needs the same mappings).
    pub runtime_config: RuntimeConfig,
    /// The final ADD result; `None` until ADD succeeded.
    pub result: Option<Value>,
    /// The tap device name.
    pub tap: String,
    /// What `setup` returned; `None` until it finished.
    pub pod_network: Option<PodNetwork>,
}

impl CacheEntry {
    /// A fresh entry, before ADD.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sandbox_id: &str,
        network: NetworkConfigList,
        network_file: String,
        cni_args: String,
        netns: PathBuf,
        ifname: &str,
        runtime_config: RuntimeConfig,
        tap: &str,
    ) -> Self {
        Self {
            version: CACHE_VERSION,
            sandbox_id: sandbox_id.to_owned(),
            network,
            network_file,
            cni_args,
            netns,
            ifname: ifname.to_owned(),
            runtime_config,
            result: None,
            tap: tap.to_owned(),
            pod_network: None,
        }
    }

    /// The CNI parameters; `netns` is sent only while the namespace exists (the spec lets
    /// DEL go without one, and plugins then release what they can).
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.sandbox_id.clone(),
            netns: if super::netns::is_netns(&self.netns) {
                self.netns.display().to_string()
            } else {
                String::new()
            },
            ifname: self.ifname.clone(),
            args: self.cni_args.clone(),
        }
    }
}

/// The cache directory: `<dir>/<sandbox id>.json`.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The file of a sandbox.
    pub fn path(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join(format!("{sandbox_id}.json"))
    }

    fn err(path: &Path, reason: impl std::fmt::Display) -> NetworkError {
        NetworkError::Cache {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The entry of a sandbox, if any.
    pub async fn read(&self, sandbox_id: &str) -> Result<Option<CacheEntry>, NetworkError> {
        let path = self.path(sandbox_id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::err(&path, e)),
        };
        let entry: CacheEntry = serde_json::from_slice(&bytes).map_err(|e| {
            Self::err(
                &path,
                format!("unreadable ({e}); remove it once the pod's network is cleaned up by hand"),
            )
        })?;
        if entry.version != CACHE_VERSION {
            return Err(Self::err(
                &path,
                format!("unknown format version {}", entry.version),
            ));
        }
        Ok(Some(entry))
    }

    /// Writes an entry atomically (temp file, fsync, rename).
    pub async fn write(&self, entry: &CacheEntry) -> Result<(), NetworkError> {
        let path = self.path(&entry.sandbox_id);
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| Self::err(&path, e))?;
        let dir = self.dir.clone();
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&target).map_err(|e| e.error)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| Self::err(&path, e))?
        .map_err(|e| Self::err(&path, e))
    }

    /// Removes an entry; a missing one is fine.
    pub async fn remove(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let path = self.path(sandbox_id);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::err(&path, e)),
            _ => Ok(()),
        }
    }

    /// The sandbox ids with an entry (for reconciling after a restart).
    pub async fn list(&self) -> Result<Vec<String>, NetworkError> {
        let mut rd = match tokio::fs::read_dir(&self.dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::err(&self.dir, e)),
        };
        let mut ids = Vec::new();
        while let Some(e) = rd.next_entry().await.map_err(|e| Self::err(&self.dir, e))? {
            let name = e.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CacheEntry {
        let list = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"moat","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            "f",
        )
        .expect("list");
        let mut e = CacheEntry::new(
            "abc",
            list,
            "/etc/cni/net.d/10-moat.conflist".into(),
            "IgnoreUnknown=1;K8S_POD_NAME=p".into(),
            "/nonexistent/netns/moat-abc".into(),
            "eth0",
            RuntimeConfig {
                port_mappings: vec![super::super::cni::conf::PortMapping {
                    protocol: "tcp".into(),
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                }],
                ip_ranges: vec![],
            },
            "tap0_moat",
        );
        e.result =
            Some(serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}));
        e
    }

    #[tokio::test]
    async fn round_trip_list_and_idempotent_remove() {
        let d = tempfile::tempdir().expect("tmp");
        let c = Cache::new(d.path().join("cni"));
        assert_eq!(c.read("abc").await.expect("read"), None);
        assert!(c.list().await.expect("list").is_empty());
        let e = entry();
        c.write(&e).await.expect("write");
        assert_eq!(c.read("abc").await.expect("read"), Some(e.clone()));
        assert_eq!(c.list().await.expect("list"), ["abc"]);
        // The netns is gone: DEL goes without CNI_NETNS.
        let att = e.attachment();
        assert_eq!(att.netns, "");
        assert_eq!(att.container_id, "abc");
        assert_eq!(att.args, "IgnoreUnknown=1;K8S_POD_NAME=p");
        c.remove("abc").await.expect("rm");
        c.remove("abc").await.expect("rm twice");
        assert_eq!(c.read("abc").await.expect("read"), None);
    }

    #[tokio::test]
    async fn garbage_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().expect("tmp");
        let c = Cache::new(d.path().to_owned());
        std::fs::write(c.path("x"), "{").expect("w");
        let e = c.read("x").await.expect_err("garbage");
        assert!(e.to_string().contains("x.json"), "{e}");
    }
}
