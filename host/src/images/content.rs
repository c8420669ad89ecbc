//! The content store: every blob (manifests, configs, layers) once, by digest, under
//! `<root>/content/blobs/sha256/<hex>`. Blobs are written to `ingest/` first and renamed
//! into place only after their digest checked out, so a partial blob is never visible.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::ImageError;

/// Blobs by digest.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// A blob being written: hashed as it goes, removed on drop unless committed.
pub struct Ingest {
    file: std::io::BufWriter<std::fs::File>,
    temp: tempfile::TempPath,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file.write_all(bytes)
    }
}

impl ContentStore {
    /// Opens (creating) the store under `root` and clears leftovers of interrupted writes.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let blobs = root.join("blobs/sha256");
        let ingest = root.join("ingest");
        let _ = std::fs::remove_dir_all(&ingest);
        for d in [&blobs, &ingest] {
            std::fs::create_dir_all(d)
                .map_err(|e| ImageError::io(format!("create {}", d.display()), e))?;
        }
        Ok(Self { blobs, ingest })
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blobs.join(super::digest::validate(digest)?))
    }

    /// Whether a blob is present.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Starts writing a blob.
    pub fn begin(&self) -> Result<Ingest, ImageError> {
        let f = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.ingest)
            .map_err(|e| ImageError::io("create ingest file", e))?;
        let (file, temp) = f.into_parts();
        Ok(Ingest {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            temp,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Verifies and publishes a blob. On mismatch the partial file is removed.
    pub fn commit(
        &self,
        ingest: Ingest,
        digest: &str,
        size: Option<u64>,
        source: &str,
    ) -> Result<PathBuf, ImageError> {
        let dest = self.path(digest)?;
        let Ingest {
            file,
            temp,
            hasher,
            written,
        } = ingest;
        super::digest::check(source, digest, super::digest::finish(hasher))?;
        if let Some(size) = size.filter(|s| *s != written) {
            return Err(ImageError::BadResponse {
                registry: source.into(),
                detail: format!("blob {digest} is {written} bytes, the manifest says {size}"),
            });
        }
        let file = file
            .into_inner()
            .map_err(|e| ImageError::io("flush blob", e.into_error()))?;
        file.sync_data()
            .map_err(|e| ImageError::io("sync blob", e))?;
        temp.persist(&dest)
            .map_err(|e| ImageError::io("publish blob", e.error))?;
        Ok(dest)
    }

    /// Writes a small blob held in memory after checking its digest.
    pub fn put(&self, digest: &str, bytes: &[u8], source: &str) -> Result<(), ImageError> {
        if self.has(digest) {
            return Ok(());
        }
        let mut i = self.begin()?;
        i.write(bytes)
            .map_err(|e| ImageError::io("write blob", e))?;
        self.commit(i, digest, Some(bytes.len() as u64), source)
            .map(|_| ())
    }

    /// Reads a whole blob.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.path(digest)?;
        std::fs::read(&p).map_err(|e| ImageError::io(format!("read blob {digest}"), e))
    }

    /// Removes a blob; a missing one is fine.
    pub fn remove(&self, digest: &str) -> Result<(), ImageError> {
        match std::fs::remove_file(self.path(digest)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::io("remove blob", e))
            }
            _ => Ok(()),
        }
    }

    /// Every blob digest present.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let rd = std::fs::read_dir(&self.blobs).map_err(|e| ImageError::io("list blobs", e))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|n| format!("sha256:{n}"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_are_published_and_bad_ones_leave_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let cs = ContentStore::open(dir.path()).expect("open");
        let data = b"hello";
        let d = super::super::digest::of(data);
        cs.put(&d, data, "test").expect("put");
        assert!(cs.has(&d));
        assert_eq!(cs.read(&d).expect("read"), data);

        let wrong = format!("sha256:{}", "1".repeat(64));
        let mut i = cs.begin().expect("begin");
        i.write(b"other").expect("write");
        assert!(matches!(
            cs.commit(i, &wrong, None, "test"),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(!cs.has(&wrong));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
        assert_eq!(cs.list().expect("list"), vec![d]);
    }

    #[test]
    fn digests_that_are_not_safe_file_names_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let cs = ContentStore::open(dir.path()).expect("open");
        for bad in ["sha256:../../etc", "md5:abc", "sha256:ABCDEF", ""] {
            assert!(cs.path(bad).is_err(), "{bad}");
            assert!(!cs.has(bad), "{bad}");
        }
    }
}
