//! Layer snapshots: each layer unpacked once into `<root>/snapshots/sha256/<diff-id hex>`,
//! shared by every image that has the layer, whatever its compression. A snapshot is
//! unpacked into `tmp/` and renamed into place only after its DiffID checked out.

use std::path::{Path, PathBuf};

use super::error::ImageError;
use super::unpack::{UnpackLimits, unpack_layer};

/// Unpacked layers by DiffID.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    tmp: PathBuf,
    limits: UnpackLimits,
}

impl SnapshotStore {
    /// Opens (creating) the store and removes half-unpacked leftovers. Every layer is
    /// unpacked within `limits`.
    pub fn open(root: &Path, limits: UnpackLimits) -> Result<Self, ImageError> {
        let dir = root.join("sha256");
        let tmp = root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [&dir, &tmp] {
            std::fs::create_dir_all(d)
                .map_err(|e| ImageError::io(format!("create {}", d.display()), e))?;
        }
        // Layers keep their setuid binaries and device nodes: root's alone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io(format!("make {} private", root.display()), e))?;
        Ok(Self { dir, tmp, limits })
    }

    /// The directory of a snapshot (the layer's root).
    pub fn path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join(super::digest::validate(diff_id)?))
    }

    /// Whether the layer is unpacked.
    pub fn has(&self, diff_id: &str) -> bool {
        self.path(diff_id).map(|p| p.is_dir()).unwrap_or(false)
    }

    /// Unpacks `blob` (the layer `layer_digest`) and publishes it as `diff_id`. Blocking.
    /// On any failure (a cap passed included) the half-unpacked tree is removed.
    pub fn unpack(&self, blob: &Path, layer_digest: &str, diff_id: &str) -> Result<(), ImageError> {
        let dest = self.path(diff_id)?;
        if dest.is_dir() {
            return Ok(());
        }
        let work = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&self.tmp)
            .map_err(|e| ImageError::io("create unpack dir", e))?;
        let root = work.path().join("fs");
        std::fs::create_dir(&root).map_err(|e| ImageError::io("create unpack dir", e))?;
        let unpacked = unpack_layer(blob, &root, layer_digest, self.limits)?;
        super::digest::check(
            &format!("layer {layer_digest} (uncompressed)"),
            diff_id,
            unpacked.diff_id,
        )?;
        // The layer root takes the image's default mode for `/`.
        std::fs::rename(&root, &dest).map_err(|e| ImageError::io("publish snapshot", e))?;
        Ok(())
    }

    /// Removes a snapshot; a missing one is fine.
    pub fn remove(&self, diff_id: &str) -> Result<(), ImageError> {
        match std::fs::remove_dir_all(self.path(diff_id)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::io("remove snapshot", e))
            }
            _ => Ok(()),
        }
    }

    /// Every DiffID present.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| ImageError::io("list snapshots", e))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|n| format!("sha256:{n}"))
            .collect())
    }
}
