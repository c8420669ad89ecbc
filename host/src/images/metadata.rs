//! Image records and references in the store: `images` maps an image id (its config digest)
//! to its record, `image_refs` maps each tag or digest reference to an id. Both change
//! together in one transaction, so a crash leaves either the old or the new state.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::ImageError;
use super::reference::LocalRef;
use crate::store::Store;

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const REFS: TableDefinition<&str, &str> = TableDefinition::new("image_refs");

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored in the registry.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (the snapshot key).
    pub diff_id: String,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the config digest.
    pub id: String,
    /// `name:tag` references.
    pub repo_tags: Vec<String>,
    /// `name@digest` references.
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Digest of the index the manifest was picked from, if any.
    pub index_digest: Option<String>,
    /// Size of the config blob.
    pub config_size: u64,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// `User` from the image config.
    pub user: String,
    /// When the image was (last) pulled, nanoseconds since the epoch.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// The bytes the image takes in the content store (config plus layer blobs).
    pub fn size(&self) -> u64 {
        self.config_size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
    /// Every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str())
            .chain(std::iter::once(self.manifest_digest.as_str()))
            .chain(self.index_digest.as_deref())
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
    fn refs(&self) -> impl Iterator<Item = &String> {
        self.repo_tags.iter().chain(self.repo_digests.iter())
    }
    fn drop_ref(&mut self, name: &str) {
        self.repo_tags.retain(|t| t != name);
        self.repo_digests.retain(|t| t != name);
    }
}

/// Is this reference a digest reference (`name@sha256:...`)?
pub fn is_digest_ref(name: &str) -> bool {
    name.contains('@')
}

/// Image records in the store.
#[derive(Clone)]
pub struct ImageIndex {
    store: Store,
}

fn decode(bytes: &[u8]) -> Result<ImageRecord, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Storage(format!("corrupt image record: {e}")))
}

fn encode(r: &ImageRecord) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(r).map_err(|e| ImageError::Storage(e.to_string()))
}

impl ImageIndex {
    /// Opens the tables.
    pub fn open(store: Store) -> Result<Self, ImageError> {
        let txn = store.db().begin_write()?;
        txn.open_table(IMAGES)?;
        txn.open_table(REFS)?;
        txn.commit()?;
        Ok(Self { store })
    }

    /// Records a pulled image under `names`, moving any of those names off other images
    /// (an image left without names is dropped). Returns the stored record.
    pub fn commit_pull(
        &self,
        mut record: ImageRecord,
        names: &[String],
    ) -> Result<ImageRecord, ImageError> {
        let txn = self.store.db().begin_write()?;
        {
            let mut images = txn.open_table(IMAGES)?;
            let mut refs = txn.open_table(REFS)?;
            let existing = images
                .get(record.id.as_str())?
                .map(|v| decode(v.value()))
                .transpose()?;
            if let Some(old) = existing {
                for r in old.repo_tags {
                    if !record.repo_tags.contains(&r) {
                        record.repo_tags.push(r);
                    }
                }
                for r in old.repo_digests {
                    if !record.repo_digests.contains(&r) {
                        record.repo_digests.push(r);
                    }
                }
            }
            for name in names {
                let prev = refs.get(name.as_str())?.map(|v| v.value().to_owned());
                if let Some(prev_id) = prev.filter(|p| *p != record.id) {
                    let other = images
                        .get(prev_id.as_str())?
                        .map(|v| decode(v.value()))
                        .transpose()?;
                    if let Some(mut other) = other {
                        other.drop_ref(name);
                        if other.refs().next().is_none() {
                            images.remove(prev_id.as_str())?;
                        } else {
                            images.insert(prev_id.as_str(), encode(&other)?.as_slice())?;
                        }
                    }
                }
                refs.insert(name.as_str(), record.id.as_str())?;
                let list = if is_digest_ref(name) {
                    &mut record.repo_digests
                } else {
                    &mut record.repo_tags
                };
                if !list.contains(name) {
                    list.push(name.clone());
                }
            }
            images.insert(record.id.as_str(), encode(&record)?.as_slice())?;
        }
        txn.commit()?;
        Ok(record)
    }

    /// Finds an image by id, tag or digest reference.
    pub fn resolve(&self, r: &LocalRef) -> Result<Option<ImageRecord>, ImageError> {
        let txn = self.store.db().begin_read()?;
        let images = txn.open_table(IMAGES)?;
        let id = match r {
            LocalRef::Id(id) => id.clone(),
            LocalRef::Named(name) => {
                let refs = txn.open_table(REFS)?;
                match refs.get(name.as_str())? {
                    Some(v) => v.value().to_owned(),
                    None => return Ok(None),
                }
            }
        };
        images
            .get(id.as_str())?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let txn = self.store.db().begin_read()?;
        let images = txn.open_table(IMAGES)?;
        let mut out = Vec::new();
        for item in images.iter()? {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Removes what `r` names: by id or digest reference the whole image; by tag only that
    /// tag, and the image with it when it was its last tag. Returns the images dropped
    /// entirely. Removing something absent succeeds and drops nothing.
    pub fn remove(&self, r: &LocalRef) -> Result<Vec<ImageRecord>, ImageError> {
        let Some(mut record) = self.resolve(r)? else {
            return Ok(Vec::new());
        };
        let txn = self.store.db().begin_write()?;
        let mut dropped = Vec::new();
        {
            let mut images = txn.open_table(IMAGES)?;
            let mut refs = txn.open_table(REFS)?;
            let whole = match r {
                LocalRef::Id(_) => true,
                LocalRef::Named(n) if is_digest_ref(n) => true,
                LocalRef::Named(n) => {
                    refs.remove(n.as_str())?;
                    record.drop_ref(n);
                    record.repo_tags.is_empty()
                }
            };
            if whole {
                for name in record.refs() {
                    refs.remove(name.as_str())?;
                }
                images.remove(record.id.as_str())?;
                dropped.push(record);
            } else {
                images.insert(record.id.as_str(), encode(&record)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: char) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{}", id.to_string().repeat(64)),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: format!("sha256:{}", "m".repeat(64)),
            index_digest: None,
            config_size: 10,
            layers: vec![],
            user: String::new(),
            pulled_at: 0,
        }
    }

    fn index() -> (tempfile::TempDir, ImageIndex) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db")).expect("store");
        (dir, ImageIndex::open(store).expect("index"))
    }

    #[test]
    fn retagging_moves_the_tag_and_drops_orphans() {
        let (_d, idx) = index();
        let a = idx.commit_pull(rec('a'), &["r/x:1".into()]).expect("a");
        assert_eq!(a.repo_tags, vec!["r/x:1"]);
        idx.commit_pull(rec('b'), &["r/x:1".into(), "r/x@sha256:1".into()])
            .expect("b");
        // `a` lost its only name.
        assert!(
            idx.resolve(&LocalRef::Id(a.id.clone()))
                .expect("get")
                .is_none()
        );
        let b = idx
            .resolve(&LocalRef::Named("r/x:1".into()))
            .expect("get")
            .expect("b");
        assert_eq!(b.repo_digests, vec!["r/x@sha256:1"]);
    }

    #[test]
    fn removing_a_tag_keeps_other_tags_and_the_last_tag_removes_the_image() {
        let (_d, idx) = index();
        idx.commit_pull(rec('a'), &["r/x:1".into(), "r/x@sha256:1".into()])
            .expect("a");
        idx.commit_pull(rec('a'), &["r/x:2".into()]).expect("a2");
        assert!(
            idx.remove(&LocalRef::Named("r/x:1".into()))
                .expect("rm")
                .is_empty()
        );
        let a = idx
            .resolve(&LocalRef::Named("r/x:2".into()))
            .expect("get")
            .expect("a");
        assert_eq!(a.repo_tags, vec!["r/x:2"]);
        let dropped = idx.remove(&LocalRef::Named("r/x:2".into())).expect("rm");
        assert_eq!(dropped.len(), 1);
        assert!(
            idx.resolve(&LocalRef::Named("r/x@sha256:1".into()))
                .expect("get")
                .is_none()
        );
        assert!(idx.list().expect("list").is_empty());
        // Absent: fine.
        assert!(
            idx.remove(&LocalRef::Named("r/x:2".into()))
                .expect("rm")
                .is_empty()
        );
    }
}
