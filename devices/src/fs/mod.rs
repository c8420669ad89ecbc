//! Moat's vhost-user-fs (virtio-fs) device backend: shares a host directory (an unpacked
//! image layer, `<root>/images/snapshots/sha256/<diff-id>/`) with a pod VM.
//!
//! QEMU gives the guest the device through
//! `-chardev socket,id=fs0,path=<socket> -device vhost-user-fs-device,chardev=fs0,tag=<tag>`
//! (guest memory must be shared: `memory-backend-memfd,share=on`); the guest mounts it with
//! `mount -t virtiofs <tag> <dir>`, and the agent stacks the layers with overlayfs.
//!
//! What the guest sees is the host directory as it is, through fuse-backend-rs's passthrough
//! filesystem: regular files, directories, symlinks, overlayfs whiteouts (0:0 character
//! devices) and extended attributes, `trusted.overlay.opaque` included (the backend must run
//! as root, with CAP_SYS_ADMIN, for `trusted.*`). A read-only share refuses every change
//! with `EROFS` in the backend itself (`guard`), whatever the guest's mount options.
//!
//! Layering, one job per module: `backend` (the vhost-user device and its vring worker),
//! `queue` (descriptor chains ↔ byte buffers), `server` (one FUSE request → one reply, via
//! fuse-backend-rs's `Server`), `guard` (the read-only policy around the passthrough fs).
//!
//! Versions: fuse-backend-rs 0.14 (the newest) pins vm-memory `=0.17.1` and virtio-queue
//! 0.17 for its virtio-fs transport; moatd's devices run on vhost-user-backend 0.24 /
//! vm-memory 0.18 / virtio-queue 0.18. The two cannot share descriptor chains or guest
//! memory, so we use fuse-backend-rs's byte-buffer (`fusedev`) transport and copy between
//! guest memory and those buffers ourselves (see `server`); vm-memory 0.17.1 is still built,
//! as a private dependency of fuse-backend-rs. No DAX window (not offered by QEMU 7.2's
//! vhost-user-fs-device anyway).
//!
//! Process-wide side effect: the passthrough filesystem sets the process umask to 0 when the
//! guest mounts (`PassthroughFs::import`). Run the backend in its own process
//! (`moatd fs-backend`), not inside the daemon.

mod backend;
mod guard;
pub mod owners;
pub mod queue;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use thiserror::Error;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use backend::FsBackend;

/// How long the guest may cache entries and attributes of a read-only share. Image layers
/// are content-addressed and never change under a running pod.
const READ_ONLY_TIMEOUT: Duration = Duration::from_secs(3600);

/// What to share and where to serve it.
#[derive(Clone, Debug)]
pub struct FsBackendConfig {
    /// The vhost-user socket QEMU connects to (`-chardev socket,path=...`). A stale file
    /// there is replaced.
    pub socket: PathBuf,
    /// The host directory the guest sees as the root of the share.
    pub shared_dir: PathBuf,
    /// Refuse every change (EROFS), in the backend.
    pub read_only: bool,
    /// Report owners shifted for a pod's user namespace (read-only shares only; see
    /// `owners`).
    pub owners: Option<owners::Owners>,
}

/// Why the backend could not run.
#[derive(Debug, Error)]
pub enum FsError {
    #[error("owners can be shifted on a read-only share only; add --read-only or drop the id maps")]
    OwnersOnWritableShare,
    #[error("shared directory {}: {source}", path.display())]
    SharedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shared directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("path {} is not valid UTF-8 (the passthrough filesystem needs UTF-8)", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("socket {}: its directory does not exist", .0.display())]
    SocketDir(PathBuf),
    #[error("setting up the passthrough filesystem: {0}")]
    Passthrough(std::io::Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

impl FsBackendConfig {
    /// Checks the paths; returns the shared directory, canonical (absolute, no symlinks).
    pub fn validate(&self) -> Result<PathBuf, FsError> {
        if self.owners.is_some() && !self.read_only {
            return Err(FsError::OwnersOnWritableShare);
        }
        let shared = canonical_shared_dir(&self.shared_dir)?;
        let socket_dir = match self.socket.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return Err(FsError::SocketDir(self.socket.clone())),
        };
        if !socket_dir.is_dir() {
            return Err(FsError::SocketDir(self.socket.clone()));
        }
        Ok(shared)
    }

    /// The passthrough filesystem's options for this share.
    fn passthrough_config(&self, shared: &Path) -> Result<Config, FsError> {
        let root_dir = shared
            .to_str()
            .ok_or_else(|| FsError::NonUtf8Path(shared.to_owned()))?
            .to_owned();
        let base = Config {
            root_dir,
            // overlayfs in the guest reads trusted.overlay.* from the layers.
            xattr: true,
            do_import: true,
            ..Config::default()
        };
        Ok(if self.read_only {
            Config {
                cache_policy: CachePolicy::Always,
                entry_timeout: READ_ONLY_TIMEOUT,
                attr_timeout: READ_ONLY_TIMEOUT,
                writeback: false,
                ..base
            }
        } else {
            Config {
                cache_policy: CachePolicy::Auto,
                ..base
            }
        })
    }
}

/// The shared directory, canonical (absolute, no symlinks), checked to be a UTF-8 directory.
fn canonical_shared_dir(dir: &Path) -> Result<PathBuf, FsError> {
    let shared = dir.canonicalize().map_err(|source| FsError::SharedDir {
        path: dir.to_owned(),
        source,
    })?;
    if !shared.is_dir() {
        return Err(FsError::NotADirectory(dir.to_owned()));
    }
    if shared.to_str().is_none() {
        return Err(FsError::NonUtf8Path(shared));
    }
    Ok(shared)
}

/// Builds the FUSE server for `config` (validated).
fn fuse_server(config: &FsBackendConfig) -> Result<server::FuseServer, FsError> {
    let shared = config.validate()?;
    build_server(config, &shared)
}

fn build_server(config: &FsBackendConfig, shared: &Path) -> Result<server::FuseServer, FsError> {
    let passthrough =
        PassthroughFs::new(config.passthrough_config(shared)?).map_err(FsError::Passthrough)?;
    let fs =
        guard::GuardedFs::new(passthrough, config.read_only).with_owners(config.owners.clone());
    server::FuseServer::new(fs).map_err(FsError::Passthrough)
}

/// The FUSE server sharing `shared_dir`, for a VMM that serves virtio-fs in-process (no
/// vhost-user socket). Same policy as the vhost-user backend: see the module docs (the
/// passthrough filesystem sets the process umask to 0 when the guest mounts).
pub fn in_process_server(
    shared_dir: &Path,
    read_only: bool,
) -> Result<server::FuseServer, FsError> {
    let shared = canonical_shared_dir(shared_dir)?;
    let config = FsBackendConfig {
        socket: PathBuf::new(),
        shared_dir: shared_dir.to_owned(),
        read_only,
        owners: None,
    };
    build_server(&config, &shared)
}

/// Serves one QEMU connection on `config.socket` until QEMU disconnects.
pub fn run(config: FsBackendConfig) -> Result<(), FsError> {
    let server = fuse_server(&config)?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(FsBackend::new(server, mem.clone()));
    let mut daemon = VhostUserDaemon::new("moat-fs".to_owned(), backend, mem)
        .map_err(|e| FsError::Daemon(e.to_string()))?;
    tracing::info!(
        socket = %config.socket.display(),
        shared_dir = %config.shared_dir.display(),
        read_only = config.read_only,
        "virtio-fs backend serving"
    );
    let result = daemon
        .serve(&config.socket)
        .map_err(|e| FsError::Daemon(e.to_string()));
    tracing::info!("virtio-fs backend: frontend disconnected");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(socket: PathBuf, shared_dir: PathBuf) -> FsBackendConfig {
        FsBackendConfig {
            socket,
            shared_dir,
            read_only: true,
            owners: None,
        }
    }

    #[test]
    fn validate_accepts_a_directory_and_canonicalizes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("layer")).expect("mkdir");
        let cfg = config(
            dir.path().join("fs.sock"),
            dir.path().join("layer/../layer"),
        );
        let shared = cfg.validate().expect("valid");
        assert!(shared.is_absolute());
        assert_eq!(
            shared,
            dir.path().join("layer").canonicalize().expect("canon")
        );
        // A bare file name: the socket goes in the current directory.
        let cfg = config(PathBuf::from("fs.sock"), dir.path().to_owned());
        cfg.validate().expect("socket in the current directory");
    }

    #[test]
    fn validate_rejects_bad_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let sock = dir.path().join("fs.sock");

        let err = config(sock.clone(), dir.path().join("missing"))
            .validate()
            .expect_err("missing dir");
        assert!(matches!(err, FsError::SharedDir { .. }), "{err}");

        let err = config(sock.clone(), file.clone())
            .validate()
            .expect_err("a file");
        assert!(matches!(err, FsError::NotADirectory(_)), "{err}");

        let err = config(dir.path().join("nope/fs.sock"), dir.path().to_owned())
            .validate()
            .expect_err("socket dir missing");
        assert!(matches!(err, FsError::SocketDir(_)), "{err}");

        let err = run(config(sock, dir.path().join("missing"))).expect_err("run validates");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn passthrough_options_follow_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path().join("s"), dir.path().to_owned());
        let ro = cfg.passthrough_config(dir.path()).expect("ro");
        assert!(ro.xattr);
        assert_eq!(ro.cache_policy, CachePolicy::Always);
        assert!(!ro.writeback);
        cfg.read_only = false;
        let rw = cfg.passthrough_config(dir.path()).expect("rw");
        assert!(rw.xattr);
        assert_eq!(rw.cache_policy, CachePolicy::Auto);
    }
}
