//! A container's rootfs: an overlay of the image layers (directories of the `layers`
//! virtio-fs share) under a writable layer on the guest's tmpfs, mounted in the container's
//! own directory, and removed with it.

use std::path::{Path, PathBuf};

use tonic::Status;

use crate::executor;

use super::{exec_err, valid_id};

/// The rootfs mount point in a container's directory.
const ROOTFS: &str = "rootfs";

/// The image layers `ids`, checked: valid ids of directories in the share at `layers`.
pub(super) fn lowers(layers: &Path, ids: &[String]) -> Result<Vec<PathBuf>, Status> {
    let mut lowers = Vec::new();
    for l in ids {
        if !valid_id(l) {
            return Err(Status::invalid_argument(format!("invalid layer {l:?}")));
        }
        let p = layers.join(l);
        if !p.is_dir() {
            return Err(Status::failed_precondition(format!(
                "layer {l} is not in the layers share"
            )));
        }
        lowers.push(p);
    }
    Ok(lowers)
}

/// A container's directory: its rootfs mount point and the overlay's upper and work
/// directories.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) dir: PathBuf,
    pub(super) rootfs: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl Layout {
    /// The directory of container `id` under `root`.
    pub(super) fn new(root: &Path, id: &str) -> Self {
        let dir = root.join(id);
        let rootfs = dir.join(ROOTFS);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        Layout {
            dir,
            rootfs,
            upper,
            work,
        }
    }

    /// Mounts the overlay of `lowers` at the rootfs. With `owner` (the ids outside of the
    /// root of the pod's user namespace) the upper directory is made first, owned by it.
    pub(super) fn mount(
        &self,
        lowers: &[PathBuf],
        owner: Option<(u32, u32)>,
    ) -> Result<(), Status> {
        if let Some((uid, gid)) = owner {
            owned_dir(&self.upper, uid, gid)?;
        }
        executor::mount_overlay(lowers, &self.upper, &self.work, &self.rootfs).map_err(exec_err)
    }
}

/// Creates `dir` (and its parents) owned by `uid`:`gid`: the upper directory of a container
/// in the pod's user namespace, whose root inside (the mapped ids outside) then owns `/`.
/// The lower layers need nothing: moatd shifts their owners on the host for such pods.
fn owned_dir(dir: &std::path::Path, uid: u32, gid: u32) -> Result<(), Status> {
    let io =
        |what: &str, e: std::io::Error| Status::internal(format!("{what} {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| io("mkdir", e))?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(|e| io("chown", e))
}
/// Unmounts the rootfs of the container whose directory is `dir` and deletes `dir`.
pub(super) fn remove(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join(ROOTFS), nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(dir);
}
