//! Volumes: a container's CRI mounts (host paths: hostPath and kubelet's emptyDir,
//! configMap and secret directories) reach the guest through the sandbox's read-write
//! `volumes` virtio-fs share. Each mount is bind-mounted (private) from its host path onto
//! `<vm dir>/volumes/<container>/<n>`; the agent bind-mounts the share's copy into the
//! container. Everything is unmounted before anything under the share is deleted, so
//! removing a sandbox can never reach into a host path.
//!
//! Read-only is enforced on the host, not only by the agent: a read-only mount's bind is
//! itself read-only, so a guest that remounts its view read-write (or mounts the share
//! itself) still cannot write. Read-only is non-recursive as the CRI defines it (mounts
//! below the host path stay writable) unless the mount asks for `recursive_read_only`.
//! The guest sees the whole volume as one virtio-fs directory, so for a non-recursive
//! read-only volume with submounts the guest-side bind stays read-write and the host's
//! read-only top mount alone refuses writes outside the submounts.
//!
//! Propagation: a HostToContainer or Bidirectional volume's bind is a slave of the host
//! path, so mounts the host makes there later show in the container (through virtio-fs);
//! nothing the guest mounts ever propagates back to the host.

use std::path::{Component, Path, PathBuf};

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use moat_vmm::jail::mounts::{attr as mount_attr, mount_setattr};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, mkdirat, openat, openat2};
use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};

/// The virtio-fs tag of the volumes share.
pub const VOLUMES_TAG: &str = "volumes";
/// Where the guest mounts it.
pub const VOLUMES_MOUNT: &str = "/run/moat/volumes";

/// One mount a container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMount {
    /// The path on the host.
    pub host_path: PathBuf,
    /// Where it appears in the container.
    pub container_path: String,
    /// Read-only in the container.
    pub read_only: bool,
    /// Read-only down to every mount below the host path too.
    pub recursive_read_only: bool,
    /// Mount propagation from the host.
    pub propagation: Propagation,
}

/// Mount propagation of a volume, as the CRI names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Propagation {
    /// No propagation (the CRI's PROPAGATION_PRIVATE).
    #[default]
    Private,
    /// Host mounts made later under the path show in the container.
    HostToContainer,
    /// Both ways under runc; host to container only in a VM.
    Bidirectional,
}

/// The same mount as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The path inside the guest (under the volumes share).
    pub guest_path: String,
    /// Where it appears in the container.
    pub container_path: String,
    /// The guest-side bind is read-only (false for a non-recursive read-only volume with
    /// submounts, which the host's read-only top mount protects).
    pub read_only: bool,
    /// The guest-side bind is read-only recursively.
    pub recursive_read_only: bool,
}

/// Why a mount cannot be given to a container.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The host side failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// Checks a container path: absolute, no `..`.
pub fn check_container_path(p: &str) -> Result<(), VolumeError> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::Invalid(format!(
            "container path {p:?} must be absolute and must not contain '..'"
        )));
    }
    Ok(())
}

/// Resolution that stays below the directory it starts from and follows no symlink: the
/// share is guest-writable, so a name in it may be swapped for a symlink at any time.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `rel` below `dir` (see `BENEATH`).
fn open_beneath(dir: impl AsFd, rel: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
    Ok(openat2(
        dir,
        rel,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        BENEATH,
    )?)
}

/// Opens a host-owned directory (the share root, never a name the guest controls).
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Bind-mounts each host path under `share/<key>/` and returns the guest view.
///
/// `share/<key>` is a small tmpfs of its own (`pin_key_dir`), so the guest can neither
/// rename it nor fill the share through it.
///
/// The share is the guest's to write, so nothing here resolves a path inside it: the key
/// directory and each mount point are made relative to directory fds opened beneath the
/// share with no symlinks (openat2), and each bind is a detached copy of the host path's
/// tree (open_tree), given its propagation and read-only flags while detached
/// (mount_setattr), then attached onto the mount point's fd (move_mount). A guest that
/// renames or replaces names in the share meanwhile can only move the pod's own mounts
/// within the share, or make the call fail.
pub fn prepare(
    share: &Path,
    key: &str,
    mounts: &[HostMount],
) -> Result<Vec<GuestMount>, VolumeError> {
    if key.is_empty() || key.contains('/') || key == "." || key == ".." {
        return Err(VolumeError::Invalid(format!("bad volume key {key:?}")));
    }
    if mounts.is_empty() {
        return Ok(Vec::new());
    }
    let result = (|| {
        let share_fd = open_dir(share).map_err(io(format!("open {}", share.display())))?;
        mkdirat(&share_fd, key, Mode::from_raw_mode(0o755))
            .map_err(|e| io(format!("create the volume dir {key}"))(e.into()))?;
        pin_key_dir(&share_fd, key)?;
        let key_fd = open_beneath(&share_fd, key, OFlags::DIRECTORY | OFlags::RDONLY)
            .map_err(io(format!("open the volume dir {key}")))?;
        let mut out = Vec::new();
        for (n, m) in mounts.iter().enumerate() {
            check_container_path(&m.container_path)?;
            if !m.host_path.is_absolute()
                || m.host_path.components().any(|c| c == Component::ParentDir)
            {
                return Err(VolumeError::Invalid(format!(
                    "host path {} must be absolute and must not contain '..'",
                    m.host_path.display()
                )));
            }
            if !m.host_path.exists() {
                // As containerd does: a missing source is created as a directory.
                std::fs::create_dir_all(&m.host_path)
                    .map_err(io(format!("create {}", m.host_path.display())))?;
            }
            let name = n.to_string();
            let made = if m.host_path.is_dir() {
                mkdirat(&key_fd, name.as_str(), Mode::from_raw_mode(0o755))
            } else {
                openat(
                    &key_fd,
                    name.as_str(),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .map(drop)
            };
            made.map_err(|e| io("create a volume mount point")(e.into()))?;
            let target = open_beneath(&key_fd, &name, OFlags::PATH)
                .map_err(io("open a volume mount point"))?;
            bind_volume(m, &target)?;
            let submounts = std::fs::canonicalize(&m.host_path)
                .map(|p| mounts_under(&p).iter().any(|m| *m != p))
                .unwrap_or(false);
            out.push(GuestMount {
                guest_path: format!("{VOLUMES_MOUNT}/{key}/{n}"),
                container_path: m.container_path.clone(),
                read_only: m.read_only && (m.recursive_read_only || !submounts),
                recursive_read_only: m.recursive_read_only,
            });
        }
        Ok(out)
    })();
    if result.is_err() {
        let _ = release(share, key);
    }
    result
}

/// The size of each container's key directory's own tmpfs: it holds only the mount
/// points of that container's volumes (empty directories and files), but the guest can
/// write there too.
pub const KEY_DIR_SIZE: &str = "size=256k,nr_inodes=4096,mode=0755";

/// Makes the key directory `key` (just made under the share) a mount point of its own, a
/// small tmpfs: the kernel refuses to rename or remove a mount point (EBUSY), so the guest
/// cannot move the container's binds away from the path `release` finds them at (renamed
/// away at release time, they would stay mounted, and reachable, after the container is
/// gone). nosuid, nodev and noexec on the host.
fn pin_key_dir(share_fd: &OwnedFd, key: &str) -> Result<(), VolumeError> {
    let fd = open_beneath(share_fd, key, OFlags::PATH | OFlags::DIRECTORY)
        .map_err(io(format!("open the volume dir {key}")))?;
    mount(
        Some("tmpfs"),
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(KEY_DIR_SIZE),
    )
    .map_err(|e| io(format!("mount the volume dir {key}"))(e.into()))
}

/// Binds `m.host_path` (with what is mounted below it) onto `target`: private, or a slave
/// of the host path for HostToContainer and Bidirectional; read-only at the top when the
/// volume is, and all the way down when it is recursively read-only.
fn bind_volume(m: &HostMount, target: &OwnedFd) -> Result<(), VolumeError> {
    let step = |what: &str| {
        let what = format!("{what} {}", m.host_path.display());
        move |e: std::io::Error| VolumeError::Io { what, source: e }
    };
    let tree = open_tree(
        CWD,
        &m.host_path,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| step("bind")(e.into()))?;
    let propagation = match m.propagation {
        Propagation::Private => libc::MS_PRIVATE,
        Propagation::HostToContainer | Propagation::Bidirectional => libc::MS_SLAVE,
    };
    // nosuid and nodev all the way down: only jailed host processes (the virtio-fs
    // back-end, which never executes) reach the bind, and the guest opens device nodes
    // with its own drivers, never through the share.
    mount_setattr(
        tree.as_fd(),
        true,
        mount_attr::NOSUID | mount_attr::NODEV,
        propagation,
    )
    .map_err(step("set the propagation and flags of the volume bind of"))?;
    if m.read_only {
        mount_setattr(tree.as_fd(), m.recursive_read_only, mount_attr::RDONLY, 0)
            .map_err(step("make read-only the volume bind of"))?;
    }
    move_mount(
        &tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| step("attach the volume bind of")(e.into()))
}

/// The size of the volumes share's own tmpfs: it holds only the mount points of the
/// volumes bound into it, but the guest can write there too.
pub const SHARE_ROOT_SIZE: &str = "size=1m,nr_inodes=4096,mode=0755";

/// Mounts a small tmpfs of its own at `dir`, the volumes share's root: what the guest
/// writes there (rather than into a volume) costs the host at most 1 MiB, not the /run
/// tmpfs below it. nosuid, nodev and noexec on the host.
pub fn mount_share_root(dir: &Path) -> Result<(), VolumeError> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(SHARE_ROOT_SIZE),
    )
    .map_err(|e| VolumeError::Io {
        what: format!("mount a tmpfs on {}", dir.display()),
        source: e.into(),
    })?;
    // Shared, so that what moatd mounts into it later also shows in the confined
    // back-end's copy of it (its own mount namespace makes that copy a slave).
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|e| VolumeError::Io {
        what: format!("make {} a shared mount", dir.display()),
        source: e.into(),
    })
}

/// Bind-mounts directory `src` read-only, nosuid and nodev at `target` (created), unless
/// already there.
pub fn bind_read_only(src: &Path, target: &Path) -> Result<(), VolumeError> {
    if mounts_under(target).iter().any(|m| m == target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(io(format!("create {}", target.display())))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| VolumeError::Io {
        what: format!("bind {}", src.display()),
        source: e.into(),
    })?;
    // Read-only, and no setuid or device node in a layer means anything on the host.
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    let made_ro = mount(None::<&str>, target, None::<&str>, ro, None::<&str>).and_then(|()| {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
    });
    if let Err(e) = made_ro {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(VolumeError::Io {
            what: format!("make {} read-only", target.display()),
            source: e.into(),
        });
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmounts everything under `root/rel` (`rel` empty: `root` itself), then deletes it.
/// `root` is host-owned; below it the guest may have renamed things or planted symlinks,
/// so each mount is opened beneath `root` without following any, and unmounted through
/// that fd. Refuses to delete while anything is still mounted there.
pub fn release(root: &Path, rel: &str) -> Result<(), VolumeError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for _ in 0..3 {
        let left = mounts_under(&dir);
        if left.is_empty() {
            break;
        }
        for m in left {
            unmount_beneath(root, &m);
        }
    }
    let left = mounts_under(&dir);
    if !left.is_empty() {
        return Err(VolumeError::Invalid(format!(
            "still mounted under {}: {left:?}; not deleting",
            dir.display()
        )));
    }
    // remove_dir_all follows no symlink (one planted at `dir` itself is removed as a link).
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::Io {
            what: format!("remove {}", dir.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Unmounts the mount at `m` (a path below host-owned `root`, as mountinfo reported it).
fn unmount_beneath(root: &Path, m: &Path) {
    let Ok(rel) = m.strip_prefix(root) else {
        return;
    };
    if rel.as_os_str().is_empty() {
        let _ = umount2(root, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        return;
    }
    let Some(rel) = rel.to_str() else {
        return;
    };
    let fd = open_dir(root).and_then(|r| open_beneath(&r, rel, OFlags::PATH));
    if let Ok(fd) = fd {
        let _ = umount2(
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            MntFlags::MNT_DETACH,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_made_and_released_without_touching_the_host_data() {
        let host = tempfile::tempdir().expect("host");
        std::fs::write(host.path().join("data"), b"keep me").expect("w");
        let file = host.path().join("single");
        std::fs::write(&file, b"file").expect("w");
        let share = tempfile::tempdir().expect("share");
        let got = prepare(
            share.path(),
            "c1",
            &[
                HostMount {
                    host_path: host.path().to_owned(),
                    container_path: "/data".into(),
                    read_only: true,
                    ..Default::default()
                },
                HostMount {
                    host_path: file.clone(),
                    container_path: "/etc/single".into(),
                    ..Default::default()
                },
            ],
        )
        .expect("prepare");
        assert_eq!(got[0].guest_path, "/run/moat/volumes/c1/0");
        assert!(got[0].read_only && !got[1].read_only);
        assert!(
            std::fs::write(share.path().join("c1/0/data"), b"x").is_err(),
            "a read-only volume is read-only on the host"
        );
        assert_eq!(
            std::fs::read(share.path().join("c1/0/data")).expect("through the bind"),
            b"keep me"
        );
        assert_eq!(
            std::fs::read(share.path().join("c1/1")).expect("file bind"),
            b"file"
        );
        assert_eq!(
            mounts_under(share.path()).len(),
            3,
            "the two binds and the key dir's own tmpfs"
        );
        release(share.path(), "c1").expect("release");
        assert!(mounts_under(share.path()).is_empty());
        assert_eq!(
            std::fs::read(host.path().join("data")).expect("host data survives"),
            b"keep me"
        );
        assert!(!share.path().join("c1").exists());
    }

    #[test]
    fn read_only_binds_refuse_writes_and_are_idempotent() {
        let src = tempfile::tempdir().expect("src");
        std::fs::write(src.path().join("f"), b"layer").expect("w");
        let share = tempfile::tempdir().expect("share");
        let t = share.path().join("abc");
        bind_read_only(src.path(), &t).expect("bind");
        bind_read_only(src.path(), &t).expect("again");
        assert_eq!(mounts_under(share.path()).len(), 1);
        assert_eq!(std::fs::read(t.join("f")).expect("r"), b"layer");
        assert!(std::fs::write(t.join("g"), b"x").is_err(), "read-only");
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == t.to_str())
            .expect("the bind in mountinfo");
        let opts = line.split(' ').nth(5).unwrap_or_default();
        for o in ["ro", "nosuid", "nodev"] {
            assert!(opts.split(',').any(|x| x == o), "{o} in {opts}");
        }
        release(share.path(), "").expect("release");
        assert!(src.path().join("f").exists());
    }

    fn tmpfs_below(dir: &Path) -> PathBuf {
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        sub
    }

    #[test]
    fn read_only_keeps_submounts_writable_unless_recursive() {
        let host = tempfile::tempdir().expect("host");
        let sub = tmpfs_below(host.path());
        let share = tempfile::tempdir().expect("share");
        let ro = |recursive| HostMount {
            host_path: host.path().to_owned(),
            container_path: "/data".into(),
            read_only: true,
            recursive_read_only: recursive,
            ..Default::default()
        };
        let got = prepare(share.path(), "c1", &[ro(false), ro(true)]).expect("prepare");
        // Non-recursive: the top refuses writes, the tmpfs below takes them; the guest's
        // bind stays read-write so that the submount can be written through it.
        assert!(std::fs::write(share.path().join("c1/0/top"), b"x").is_err());
        std::fs::write(share.path().join("c1/0/sub/f"), b"x").expect("submount writable");
        assert!(!got[0].read_only && !got[0].recursive_read_only);
        // Recursive: both refuse.
        assert!(std::fs::write(share.path().join("c1/1/top"), b"x").is_err());
        assert!(std::fs::write(share.path().join("c1/1/sub/g"), b"x").is_err());
        assert!(got[1].read_only && got[1].recursive_read_only);
        // Every mount of each bind, the submount too, is nosuid and nodev.
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        for at in ["c1/0", "c1/0/sub", "c1/1", "c1/1/sub"] {
            let target = share.path().join(at);
            let line = info
                .lines()
                .find(|l| l.split(' ').nth(4) == target.to_str())
                .unwrap_or_else(|| panic!("{at} in mountinfo"));
            let opts = line.split(' ').nth(5).unwrap_or_default();
            for o in ["nosuid", "nodev"] {
                assert!(opts.split(',').any(|x| x == o), "{o} on {at}: {opts}");
            }
        }
        release(share.path(), "c1").expect("release");
        assert_eq!(std::fs::read(sub.join("f")).expect("on the host"), b"x");
        umount2(&sub, MntFlags::MNT_DETACH).expect("umount");
    }

    #[test]
    fn host_to_container_volumes_see_later_host_mounts() {
        let host = tempfile::tempdir().expect("host");
        let share = tempfile::tempdir().expect("share");
        let m = |propagation| HostMount {
            host_path: host.path().to_owned(),
            container_path: "/data".into(),
            propagation,
            ..Default::default()
        };
        // The host path must be a shared mount for a slave to receive anything.
        mount(
            Some(host.path()),
            host.path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("self bind");
        mount(
            None::<&str>,
            host.path(),
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("shared");
        prepare(
            share.path(),
            "c1",
            &[m(Propagation::Private), m(Propagation::HostToContainer)],
        )
        .expect("prepare");
        let sub = tmpfs_below(host.path());
        std::fs::write(sub.join("late"), b"x").expect("w");
        assert!(share.path().join("c1/1/sub/late").exists(), "propagated");
        assert!(!share.path().join("c1/0/sub/late").exists(), "private");
        release(share.path(), "c1").expect("release");
        umount2(&sub, MntFlags::MNT_DETACH).expect("umount");
        umount2(host.path(), MntFlags::MNT_DETACH).expect("umount");
    }

    #[test]
    fn a_symlink_planted_in_the_share_is_never_followed() {
        let host = tempfile::tempdir().expect("host");
        let outside = tempfile::tempdir().expect("outside");
        let share = tempfile::tempdir().expect("share");
        std::os::unix::fs::symlink(outside.path(), share.path().join("c1")).expect("plant");
        let m = HostMount {
            host_path: host.path().to_owned(),
            container_path: "/d".into(),
            ..Default::default()
        };
        assert!(prepare(share.path(), "c1", std::slice::from_ref(&m)).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).expect("ls").count(), 0);
        assert!(mounts_under(outside.path()).is_empty());
        // Releasing a planted link removes the link, not what it points to.
        std::os::unix::fs::symlink(outside.path(), share.path().join("c2")).expect("plant");
        std::fs::write(outside.path().join("keep"), b"x").expect("w");
        release(share.path(), "c2").expect("release");
        assert!(outside.path().join("keep").exists());
        assert!(!share.path().join("c2").exists());
    }

    #[test]
    fn renames_and_symlink_swaps_racing_set_up_stay_inside_the_share() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let host = tempfile::tempdir().expect("host");
        std::fs::write(host.path().join("data"), b"keep me").expect("w");
        let file = host.path().join("data");
        let outside = tempfile::tempdir().expect("outside");
        let share = tempfile::tempdir().expect("share");
        let mounts = [
            HostMount {
                host_path: host.path().to_owned(),
                container_path: "/d".into(),
                read_only: true,
                ..Default::default()
            },
            HostMount {
                host_path: file.clone(),
                container_path: "/f".into(),
                ..Default::default()
            },
        ];
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The guest: swaps the key directory and the mount points for symlinks out.
            s.spawn(|| {
                let (sp, out) = (share.path(), outside.path());
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::rename(sp.join("c1"), sp.join("aside"));
                    let _ = std::os::unix::fs::symlink(out, sp.join("c1"));
                    let _ = std::fs::rename(sp.join("aside/0"), sp.join("aside/0x"));
                    let _ = std::os::unix::fs::symlink(out, sp.join("aside/0"));
                    let _ = std::os::unix::fs::symlink(out.join("f"), sp.join("aside/1"));
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(sp.join("c1"));
                    let _ = std::fs::rename(sp.join("aside"), sp.join("c1"));
                }
            });
            for _ in 0..300 {
                let _ = prepare(share.path(), "c1", &mounts);
                let _ = release(share.path(), "c1");
                let _ = release(share.path(), "aside");
            }
            stop.store(true, Ordering::Relaxed);
        });
        let _ = release(share.path(), "c1");
        let _ = release(share.path(), "aside");
        assert!(
            mounts_under(outside.path()).is_empty(),
            "nothing mounted outside"
        );
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("ls").count(),
            0,
            "nothing created outside"
        );
        assert_eq!(
            std::fs::read(&file).expect("r"),
            b"keep me",
            "nothing truncated"
        );
        assert!(mounts_under(share.path()).is_empty());
    }

    #[test]
    fn a_containers_key_dir_cannot_be_moved_away_from_release() {
        let host = tempfile::tempdir().expect("host");
        let share = tempfile::tempdir().expect("share");
        let m = HostMount {
            host_path: host.path().to_owned(),
            container_path: "/d".into(),
            ..Default::default()
        };
        prepare(share.path(), "c1", &[m]).expect("prepare");
        // The guest renames the container's folder (through the share) just before the
        // container is removed: the kernel refuses, the folder is a mount point.
        let e = std::fs::rename(share.path().join("c1"), share.path().join("c1.x"))
            .expect_err("a mount point");
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
        assert!(std::fs::remove_dir(share.path().join("c1")).is_err());
        // It can write there, but only a little.
        let big = std::fs::write(share.path().join("c1/fill"), vec![0u8; 1 << 20]);
        assert!(big.is_err(), "the key dir is a small tmpfs");
        release(share.path(), "c1").expect("release");
        assert!(mounts_under(share.path()).is_empty());
        assert!(!share.path().join("c1").exists());
        assert!(host.path().exists());
    }

    #[test]
    fn the_share_root_is_a_small_tmpfs_that_release_takes_away() {
        let vm = tempfile::tempdir().expect("vm dir");
        let share = vm.path().join("volumes");
        std::fs::create_dir(&share).expect("mkdir");
        mount_share_root(&share).expect("tmpfs");
        let host = tempfile::tempdir().expect("host");
        let m = HostMount {
            host_path: host.path().to_owned(),
            container_path: "/d".into(),
            ..Default::default()
        };
        prepare(&share, "c1", std::slice::from_ref(&m)).expect("prepare");
        // The guest filling the root: 1 MiB at most.
        let big = vec![0u8; 2 << 20];
        assert!(std::fs::write(share.join("fill"), &big).is_err(), "capped");
        // A volume bound into it is the host path's, not capped by the tmpfs.
        std::fs::write(share.join("c1/0/big"), &big).expect("the volume takes it");
        assert_eq!(
            std::fs::read(host.path().join("big")).expect("r").len(),
            2 << 20
        );
        release(&share, "").expect("release");
        assert!(mounts_under(&share).is_empty());
        assert!(!share.exists());
    }

    #[test]
    fn bad_paths_are_refused() {
        let share = tempfile::tempdir().expect("share");
        for (h, c) in [
            ("relative", "/x"),
            ("/tmp", "relative"),
            ("/tmp", "/a/../b"),
        ] {
            let m = HostMount {
                host_path: h.into(),
                container_path: c.into(),
                ..Default::default()
            };
            assert!(
                matches!(
                    prepare(share.path(), "c", &[m]),
                    Err(VolumeError::Invalid(_))
                ),
                "{h} {c}"
            );
        }
        assert!(mounts_under(share.path()).is_empty());
    }
}
