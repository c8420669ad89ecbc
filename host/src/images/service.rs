//! The image manager: the host-side image service behind the CRI ImageService. It owns the
//! content store, the snapshots and the image records, and keeps them consistent: a failed
//! pull or a removal is followed by a collection of whatever no image and no pull in flight
//! still uses.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::content::ContentStore;
use super::error::ImageError;
use super::leases::{KeyedLocks, Leases};
use super::metadata::{ImageIndex, ImageRecord};
use super::reference::{LocalRef, parse_local};
use super::registry::{Credentials, Registries};
use super::snapshots::SnapshotStore;
use super::unpack::UnpackLimits;
use crate::config::Config;
use crate::store::Store;

/// Shared state of the image manager (used by `pull`).
pub struct Inner {
    pub(super) content: ContentStore,
    pub(super) snapshots: SnapshotStore,
    pub(super) index: ImageIndex,
    pub(super) registries: Registries,
    pub(super) platform: String,
    pub(super) max_concurrent_downloads: usize,
    pub(super) blob_locks: KeyedLocks,
    pub(super) snapshot_locks: KeyedLocks,
    pub(super) leases: Leases,
    root: PathBuf,
}

/// Disk use of the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes allocated.
    pub used_bytes: u64,
    /// Inodes used.
    pub inodes_used: u64,
}

/// The image manager.
#[derive(Clone)]
pub struct ImageManager {
    inner: Arc<Inner>,
}

impl ImageManager {
    /// Opens the image store under `<root_dir>/images`, dropping leftovers of interrupted
    /// pulls.
    pub fn open(config: &Config, store: Store) -> Result<Self, ImageError> {
        let root = config.root_dir.join("images");
        let inner = Inner {
            content: ContentStore::open(&root.join("content"))?,
            snapshots: SnapshotStore::open(
                &root.join("snapshots"),
                UnpackLimits {
                    max_unpacked_bytes: config.images.max_layer_unpacked_bytes,
                    max_entries: config.images.max_layer_entries,
                },
            )?,
            index: ImageIndex::open(store)?,
            registries: Registries::new(config.registries.clone(), config.images.clone()),
            platform: config.images.platform.clone(),
            max_concurrent_downloads: config.images.max_concurrent_downloads,
            blob_locks: KeyedLocks::default(),
            snapshot_locks: KeyedLocks::default(),
            leases: Leases::default(),
            root,
        };
        let m = Self {
            inner: Arc::new(inner),
        };
        m.collect_garbage_blocking()?;
        Ok(m)
    }

    /// Where layer snapshots live (shared with guests later).
    pub fn snapshot_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        self.inner.snapshots.path(diff_id)
    }

    /// The directory holding the whole image store.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Pulls an image. The pull runs to its end (or its failure and clean-up) even if the
    /// caller goes away, so the store is never left half-written.
    pub async fn pull(
        &self,
        image: &str,
        credentials: Credentials,
    ) -> Result<ImageRecord, ImageError> {
        let inner = self.inner.clone();
        let image = image.to_owned();
        let this = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = super::pull::pull(inner, &image, credentials).await;
            crate::metrics::get().image_pull(started.elapsed(), result.is_ok());
            if let Err(e) = &result {
                warn!(image = %image, error = %e, "pull failed; removing what it left");
                if let Err(gc) = this.collect_garbage().await {
                    warn!(error = %gc, "clean-up after a failed pull failed");
                }
            }
            result
        })
        .await
        .map_err(|e| ImageError::Storage(format!("pull task: {e}")))?
    }

    /// Finds an image by id, tag or digest reference.
    pub fn status(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        self.inner.index.resolve(&parse_local(name)?)
    }

    /// The config blob of an image (its id is the config digest).
    pub fn config_blob(&self, id: &str) -> Result<Vec<u8>, ImageError> {
        self.inner.content.read(id)
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut v = self.inner.index.list()?;
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// Removes an image (by id or digest: all of it; by tag: that tag, and the image with its
    /// last tag). Absent images are fine.
    pub async fn remove(&self, name: &str) -> Result<(), ImageError> {
        let r: LocalRef = parse_local(name)?;
        let index = self.inner.index.clone();
        let dropped = tokio::task::spawn_blocking(move || index.remove(&r))
            .await
            .map_err(|e| ImageError::Storage(e.to_string()))??;
        for d in &dropped {
            info!(id = %d.id, "image removed");
        }
        if !dropped.is_empty() {
            self.collect_garbage().await?;
        }
        Ok(())
    }

    /// Bytes and inodes used by the content store and snapshots.
    pub async fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let root = self.inner.root.clone();
        tokio::task::spawn_blocking(move || du(&root))
            .await
            .map_err(|e| ImageError::Storage(e.to_string()))?
            .map_err(|e| ImageError::io("measure image store", e))
    }

    /// Removes blobs and snapshots that no image references and no pull holds.
    pub async fn collect_garbage(&self) -> Result<(), ImageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.collect_garbage_blocking())
            .await
            .map_err(|e| ImageError::Storage(e.to_string()))?
    }

    fn collect_garbage_blocking(&self) -> Result<(), ImageError> {
        let inner = &self.inner;
        let trash = tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(inner.root.join("snapshots/tmp"))
            .map_err(|e| ImageError::io("create trash dir", e))?;
        let (blobs, snaps) = {
            let held = inner.leases.lock();
            let images = inner.index.list()?;
            let mut keep: HashSet<String> = held.keys().cloned().collect();
            for i in &images {
                keep.extend(i.blobs().map(str::to_owned));
                keep.extend(i.layers.iter().map(|l| l.diff_id.clone()));
            }
            let mut blobs = 0;
            for b in inner.content.list()? {
                if !keep.contains(&b) {
                    inner.content.remove(&b)?;
                    blobs += 1;
                }
            }
            let mut snaps = 0;
            for s in inner.snapshots.list()? {
                if !keep.contains(&s) {
                    // A rename is quick; the slow delete happens after the lock is gone.
                    let p = inner.snapshots.path(&s)?;
                    std::fs::rename(&p, trash.path().join(s.trim_start_matches("sha256:")))
                        .map_err(|e| ImageError::io("move snapshot to trash", e))?;
                    snaps += 1;
                }
            }
            (blobs, snaps)
        };
        drop(trash);
        if blobs + snaps > 0 {
            info!(blobs, snapshots = snaps, "garbage collected");
        }
        Ok(())
    }
}

/// Allocated bytes and inodes under `root`, counting hard-linked inodes once.
fn du(root: &Path) -> std::io::Result<FsUsage> {
    let mut seen = HashSet::new();
    let mut usage = FsUsage {
        used_bytes: 0,
        inodes_used: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        usage.used_bytes += m.blocks() * 512;
        usage.inodes_used += 1;
        if m.is_dir() {
            match std::fs::read_dir(&p) {
                Ok(rd) => stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_hard_links_once() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("a"), vec![1u8; 64 * 1024]).expect("write");
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).expect("link");
        let u = du(d.path()).expect("du");
        assert_eq!(u.inodes_used, 2);
        assert!(
            u.used_bytes >= 64 * 1024 && u.used_bytes < 2 * 64 * 1024,
            "{u:?}"
        );
    }
}
