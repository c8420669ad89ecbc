//! The VMM's own mount namespace and root: an empty tmpfs on the jail directory holding
//! only the kept paths, each bound at its own absolute host path (so the paths in the VMM
//! config still work), and the two `/proc/self` entries the VMM reads; then pivot_root into
//! it and detach the host's tree.
//!
//! Why a tmpfs: the skeleton (directories and files the binds sit on) lives only in this
//! namespace and vanishes with the process; the jail directory on the host stays empty.
//!
//! `/proc`: not a whole procfs (that would show every host process, and `/proc/<pid>/root`
//! of any process whose capabilities are a subset of ours). Only `/proc/self/fd` (the
//! virtio-fs passthrough reaches xattrs through `/proc/self/fd/<n>` paths) and
//! `/proc/self/status` (the VMM reads its peak RSS at the end) are bound, from this
//! process's own procfs entries.
//!
//! Propagation: the namespace's mounts are made slaves of the host's, not private. moatd
//! mounts into the shares while the VM runs (a container's volumes, its image layers, at
//! CreateContainer); a kept directory under a *shared* host mount receives those mounts in
//! the jail too, and nothing mounted in the jail reaches the host.
//!
//! Every bind, and every mount it brings along, is nosuid, nodev and noexec; read-only
//! where asked. The tmpfs root itself is
//! made read-only once everything is in place. The jail root may lie inside a kept
//! directory (the jail then shows its own read-only skeleton there), not the other way
//! round.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::JailError;
use crate::config::JailConfig;

/// A path the VMM still needs after confinement, bound into the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    /// The absolute host path (a directory or a file).
    pub path: PathBuf,
    /// Bind it read-only.
    pub read_only: bool,
}

impl Keep {
    /// A writable bind of `path`.
    pub fn writable(path: PathBuf) -> Keep {
        Keep {
            path,
            read_only: false,
        }
    }
}

/// The process's own procfs entries kept under `/proc/self` (see the module docs).
const PROC_SELF_ENTRIES: [&str; 2] = ["fd", "status"];

fn mount_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> JailError {
    let what = what.into();
    move |e| JailError::Mount {
        what,
        source: e.into(),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Mount { what, source }
}

/// `path` with no `.`, `..` or repeated separators, if it is absolute and has none of `..`.
pub fn normal_absolute(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Checks and orders what to bind: absolute, existing, deduplicated (the same path twice is
/// read-only only if both ask for it), parents before children. A path inside a kept one
/// is visible through the outer recursive bind, so it is dropped, unless it asks to be
/// read-only in a writable one: then it is bound again, read-only, on top.
pub fn plan_binds(keep: &[Keep]) -> Result<Vec<Keep>, JailError> {
    let mut checked = Vec::with_capacity(keep.len());
    for k in keep {
        let bad = |why: &str| JailError::Keep {
            path: k.path.clone(),
            why: why.to_owned(),
        };
        let path = normal_absolute(&k.path).ok_or_else(|| bad("not an absolute path"))?;
        if path == Path::new("/") {
            return Err(bad("the whole host tree cannot be kept"));
        }
        std::fs::metadata(&path).map_err(|e| bad(&e.to_string()))?;
        checked.push(Keep {
            path,
            read_only: k.read_only,
        });
    }
    checked.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out: Vec<Keep> = Vec::with_capacity(checked.len());
    for k in checked {
        // The innermost kept path holding this one (the list is sorted, parents first).
        match out.iter_mut().rev().find(|o| k.path.starts_with(&o.path)) {
            Some(o) if o.path == k.path => o.read_only &= k.read_only,
            Some(o) if o.read_only || !k.read_only => {}
            _ => out.push(k),
        }
    }
    Ok(out)
}

fn check_root(root: &Path) -> Result<PathBuf, JailError> {
    let bad = |why: String| JailError::Root {
        path: root.to_owned(),
        why,
    };
    let root = normal_absolute(root).ok_or_else(|| bad("not an absolute path".into()))?;
    let meta = std::fs::metadata(&root).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if root == Path::new("/") {
        return Err(bad("the host root cannot be the jail".into()));
    }
    Ok(root)
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Makes `target` (inside the tmpfs) a mount point of the same kind as `source`. A target
/// that exists already is left as it is: it is the source itself, seen through the bind of
/// a kept directory holding it, which must not be changed.
fn make_mount_point(source: &Path, target: &Path) -> Result<(), JailError> {
    let what = || format!("creating the mount point {}", target.display());
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if source.is_dir() {
        std::fs::create_dir_all(target).map_err(io_err(what()))
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(what()))?;
        }
        std::fs::File::create(target)
            .map(drop)
            .map_err(io_err(what()))
    }
}

/// `MOUNT_ATTR_*` flags of linux/mount.h, for `mount_setattr`.
pub mod attr {
    /// MOUNT_ATTR_RDONLY.
    pub const RDONLY: u64 = 0x1;
    /// MOUNT_ATTR_NOSUID.
    pub const NOSUID: u64 = 0x2;
    /// MOUNT_ATTR_NODEV.
    pub const NODEV: u64 = 0x4;
    /// MOUNT_ATTR_NOEXEC.
    pub const NOEXEC: u64 = 0x8;
}

/// mount_setattr(2) on the mount (or detached tree) `fd` is: sets the `attr_set` flags
/// (`attr`) and a propagation type (0 leaves it), on every mount below it too when
/// `recursive`. Unlike a bind remount, which changes one mount, this reaches the mounts a
/// recursive bind brought along. (Neither nix nor rustix wraps this call.)
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    recursive: bool,
    attr_set: u64,
    propagation: libc::c_ulong,
) -> std::io::Result<()> {
    /// `struct mount_attr` of linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the fd is open, "" is NUL-terminated, and attr is a mount_attr of the size
    // given; all outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `attr_set` on the mount at `target` and on every mount below it (`mount_setattr`,
/// recursive), `target` opened without following a symlink.
pub fn restrict_tree(target: &Path, attr_set: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(target)?;
    mount_setattr(f.as_fd(), true, attr_set, 0)
}

/// Binds `source` at `target` (recursively: a kept directory's own mounts come along),
/// then makes the bind and every mount it brought nosuid, nodev, noexec and, if asked,
/// read-only.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), JailError> {
    make_mount_point(source, target)?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_err(format!("binding {}", source.display())))?;
    let mut flags = attr::NOSUID | attr::NODEV | attr::NOEXEC;
    if read_only {
        flags |= attr::RDONLY;
    }
    restrict_tree(target, flags).map_err(io_err(format!(
        "restricting the bind of {} and its submounts (nosuid, nodev, noexec{})",
        source.display(),
        if read_only { ", read-only" } else { "" }
    )))
}

/// Moves the calling thread into a new mount namespace whose root is `jail.root`, holding
/// only `keep` (see the module docs). The thread's working directory becomes `/`. Returns
/// the binds made (`plan_binds` of `keep`).
///
/// Acts on the calling thread (and the threads it starts afterwards) only: call it before
/// the VMM starts any thread. Needs CAP_SYS_ADMIN.
pub fn enter(jail: &JailConfig, keep: &[Keep]) -> Result<Vec<Keep>, JailError> {
    let root = check_root(&jail.root)?;
    let binds = plan_binds(keep)?;
    // (The root inside a kept directory is fine: the jail then shows its own skeleton
    // there, read-only.)
    if let Some(k) = binds.iter().find(|k| k.path.starts_with(&root)) {
        return Err(JailError::Root {
            path: root,
            why: format!(
                "it holds {}, a path the VMM keeps, which the jail's tmpfs would hide; put \
                 the jail root elsewhere",
                k.path.display()
            ),
        });
    }

    unshare(CloneFlags::CLONE_NEWNS).map_err(mount_err("unshare(CLONE_NEWNS)"))?;
    // Nothing done from here on may reach the host's mount tree; what the host mounts later
    // under a kept directory still shows (see the module docs).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(mount_err("making / a slave of the host's mounts"))?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(mount_err(format!("mounting a tmpfs on {}", root.display())))?;

    for k in &binds {
        bind(&k.path, &under(&root, &k.path), k.read_only)?;
    }
    let proc_self = Path::new("/proc/self");
    for entry in PROC_SELF_ENTRIES {
        let source = proc_self.join(entry);
        bind(&source, &under(&root, &source), true)?;
    }

    pivot_into(&root)?;
    // The tmpfs itself (not only this mount of it) becomes read-only.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(mount_err("making the jail root read-only"))?;
    Ok(binds)
}

/// Makes `root` (a mount point) the root and detaches the old one; the working directory
/// becomes `/`. Falls back to chroot where pivot_root cannot work (a root on initramfs).
fn pivot_into(root: &Path) -> Result<(), JailError> {
    nix::unistd::chdir(root).map_err(mount_err(format!("entering {}", root.display())))?;
    // pivot_root(".", "."): the old root ends up mounted on top of the new one, at ".";
    // detaching "." then leaves the new root alone.
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(mount_err("detaching the host root"))?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            tracing::warn!(
                root = %root.display(),
                "jail: pivot_root refused (is / an initramfs?); using chroot"
            );
            nix::unistd::chroot(".").map_err(mount_err("chroot into the jail"))?;
        }
        Err(e) => return Err(mount_err("pivot_root into the jail")(e)),
    }
    nix::unistd::chdir("/").map_err(mount_err("chdir to the jail root"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_checked_deduplicated_and_ordered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = |p: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(&path).expect("mkdir");
            path
        };
        let (a, ab, abc, b, bc) = (d("a"), d("a/b"), d("a/b/c"), d("b"), d("b/c"));
        let ro = |path: &PathBuf| Keep {
            path: path.clone(),
            read_only: true,
        };
        let keep = vec![
            Keep::writable(b.clone()),
            ro(&abc),
            ro(&ab),
            ro(&a),
            Keep::writable(dir.path().join("./a")),
            Keep::writable(bc.clone()),
        ];
        let plan = plan_binds(&keep).expect("plan");
        assert_eq!(
            plan,
            vec![Keep::writable(a), ro(&ab), Keep::writable(b)],
            "a twice is writable if either asks; a/b, read-only in a writable a, is bound \
             again; a/b/c is inside the read-only a/b, b/c inside b"
        );

        let err = plan_binds(&[Keep::writable("relative".into())]).expect_err("relative");
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = plan_binds(&[Keep::writable(dir.path().join("missing"))]).expect_err("gone");
        assert!(err.to_string().contains("missing"), "{err}");
        let err = plan_binds(&[Keep::writable(dir.path().join("a/../b"))]).expect_err("dotdot");
        assert!(err.to_string().contains("absolute"), "{err}");
        assert!(plan_binds(&[Keep::writable("/".into())]).is_err());
    }

    #[test]
    fn the_root_must_be_an_absolute_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(check_root(dir.path()).is_ok());
        assert!(check_root(&file).is_err());
        assert!(check_root(Path::new("jail")).is_err());
        assert!(check_root(Path::new("/")).is_err());
        assert_eq!(
            under(Path::new("/j"), Path::new("/run/x")),
            PathBuf::from("/j/run/x")
        );
    }
}
