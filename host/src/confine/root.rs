//! The jail's root: a tmpfs on the spec's root directory holding only the spec's binds,
//! each at its own absolute path, the host's top-level symlinks it names, and a procfs of
//! the jail's own PID namespace, read-only; then pivot_root into it and detach the host's
//! tree.
//!
//! Call in the jailed child, in a mount namespace of its own and as PID 1 of its PID
//! namespace (for the procfs).
//!
//! Propagation: every mount is first made a slave of the host's, so what moatd mounts
//! later into a bound share (a container's volumes and layers: the shares' roots are
//! shared mounts on the host) shows in the jail, and nothing mounted in the jail reaches
//! the host.
//!
//! Flags: every bind, and every mount it brings along, is nosuid; nodev and noexec unless
//! the bind asks; read-only where asked. The tmpfs is made read-only once everything is
//! in place, and so is the procfs (no sysctl writes, even for the root-run back-ends).

use std::path::{Path, PathBuf};

use moat_vmm::jail::mounts::{attr, normal_absolute, restrict_tree};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{Bind, ConfineError, JailSpec};

/// Checks the spec's paths: the root an absolute directory other than `/`, each bind
/// absolute, existing and not holding the root; binds sorted parents first.
pub fn check(spec: &JailSpec) -> Result<Vec<Bind>, ConfineError> {
    let root = normal_absolute(&spec.root)
        .filter(|r| r != Path::new("/") && r.is_dir())
        .ok_or_else(|| {
            ConfineError::Spec(format!(
                "jail root {}: not an absolute directory other than /",
                spec.root.display()
            ))
        })?;
    let mut binds = Vec::with_capacity(spec.binds.len());
    for b in &spec.binds {
        let path = normal_absolute(&b.path)
            .filter(|p| p != Path::new("/"))
            .ok_or_else(|| {
                ConfineError::Spec(format!(
                    "bind {}: not an absolute path below /",
                    b.path.display()
                ))
            })?;
        std::fs::symlink_metadata(&path).map_err(ConfineError::step(format!(
            "bind {}: it must exist",
            path.display()
        )))?;
        if root.starts_with(&path) {
            return Err(ConfineError::Spec(format!(
                "bind {} holds the jail root {}",
                path.display(),
                root.display()
            )));
        }
        binds.push(Bind { path, ..b.clone() });
    }
    binds.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(binds)
}

fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Makes `target` a mount point of the same kind as `source` (a directory for a
/// directory, an empty file for anything else); one that exists already (seen through an
/// outer bind) is left alone.
fn mount_point(source: &Path, target: &Path) -> Result<(), ConfineError> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let what = || format!("creating the mount point {}", target.display());
    if source.is_dir() {
        return std::fs::create_dir_all(target).map_err(ConfineError::step(what()));
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(ConfineError::step(what()))?;
    }
    std::fs::File::create(target)
        .map(drop)
        .map_err(ConfineError::step(what()))
}

fn bind(root: &Path, b: &Bind) -> Result<(), ConfineError> {
    let target = under(root, &b.path);
    mount_point(&b.path, &target)?;
    mount(
        Some(&b.path),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(ConfineError::step(format!("binding {}", b.path.display())))?;
    restrict_tree(&target, bind_attrs(b)).map_err(ConfineError::step(format!(
        "restricting the bind of {} and its submounts",
        b.path.display()
    )))
}

/// The mount flags of a bind, set on it and every mount it brought along.
fn bind_attrs(b: &Bind) -> u64 {
    let mut flags = attr::NOSUID;
    if !b.dev {
        flags |= attr::NODEV;
    }
    if !b.exec {
        flags |= attr::NOEXEC;
    }
    if b.read_only {
        flags |= attr::RDONLY;
    }
    flags
}

/// Builds the root `spec` describes and moves into it (see the module docs).
pub fn enter(spec: &JailSpec) -> Result<(), ConfineError> {
    let binds = check(spec)?;
    let root = normal_absolute(&spec.root).unwrap_or_else(|| spec.root.clone());
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(ConfineError::step("making / a slave of the host's mounts"))?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )
    .map_err(ConfineError::step(format!(
        "mounting a tmpfs on {}",
        root.display()
    )))?;
    for b in &binds {
        bind(&root, b)?;
    }
    for (link, target) in &spec.symlinks {
        let at = under(&root, link);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(target, &at).map_err(ConfineError::step(format!(
                "recreating the symlink {}",
                link.display()
            )))?;
        }
    }
    let proc = root.join("proc");
    std::fs::create_dir_all(&proc).map_err(ConfineError::step("creating /proc"))?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(ConfineError::step("mounting the jail's procfs"))?;

    nix::unistd::chdir(&root).map_err(ConfineError::step("entering the jail root"))?;
    // pivot_root(".", "."): the old root ends up on top of the new one; detaching "."
    // then leaves the new root alone.
    nix::unistd::pivot_root(".", ".").map_err(ConfineError::step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ConfineError::step("detaching the host root"))?;
    nix::unistd::chdir("/").map_err(ConfineError::step("chdir /"))?;
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
    .map_err(ConfineError::step("making the jail root read-only"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::Kind;

    fn spec(root: &Path, binds: Vec<Bind>) -> JailSpec {
        JailSpec {
            kind: Kind::VsockBackend,
            sandbox: "s".into(),
            root: root.to_owned(),
            binds,
            symlinks: vec![],
            user: None,
            groups: vec![],
            caps: vec![],
            output: None,
        }
    }

    #[test]
    fn binds_are_checked_and_sorted() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for p in [&root, &a, &b] {
            std::fs::create_dir(p).expect("mkdir");
        }
        let binds = check(&spec(
            &root,
            vec![Bind::writable(&b), Bind::read_only(a.join("."))],
        ))
        .expect("ok");
        assert_eq!(binds, vec![Bind::read_only(&a), Bind::writable(&b)]);

        for bad in [
            vec![Bind::read_only("relative")],
            vec![Bind::read_only(d.path().join("missing"))],
            vec![Bind::read_only(d.path().join("a/../b"))],
            vec![Bind::read_only("/")],
            vec![Bind::read_only(d.path())],
        ] {
            assert!(check(&spec(&root, bad.clone())).is_err(), "{bad:?}");
        }
        assert!(check(&spec(Path::new("/"), vec![])).is_err());
        assert!(check(&spec(&d.path().join("missing"), vec![])).is_err());
    }

    #[test]
    fn every_bind_is_nosuid_and_only_asked_for_devices_and_programs_work() {
        let all = attr::NOSUID | attr::NODEV | attr::NOEXEC;
        assert_eq!(bind_attrs(&Bind::writable("/x")), all);
        assert_eq!(bind_attrs(&Bind::read_only("/x")), all | attr::RDONLY);
        assert_eq!(
            bind_attrs(&Bind::program("/usr")),
            attr::NOSUID | attr::NODEV | attr::RDONLY
        );
        assert_eq!(
            bind_attrs(&Bind::device("/dev/kvm")),
            attr::NOSUID | attr::NOEXEC
        );
    }
}
