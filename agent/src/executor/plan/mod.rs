//! Turns a runtime spec and a rootfs into a `Plan`: every path resolved, every string a C
//! string, every option a flag, so the forked child only has to make the calls. Pure but
//! for reading the rootfs (symlinks, source kinds): tested without root.
//!
//! This file holds the `Plan`, its assembly (`plan`) and what the parts share (C strings,
//! `secure_join`); `ns` plans the namespaces, `process` the process, `mounts` the spec's
//! mounts and `rootfs` the rest of the container's filesystem.

mod mounts;
mod ns;
mod process;
mod rootfs;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use super::error::{Error, Result};
use ns::ns_plan;
use rootfs::rootfs_plan;

pub(crate) use mounts::Fallback;
pub(crate) use ns::{NsPlan, PidNs};
pub(crate) use process::{ProcessPlan, SeccompPlan, process_plan};
pub(crate) use rootfs::RootfsPlan;

/// Everything `create` needs.
#[derive(Debug)]
pub(crate) struct Plan {
    pub ns: NsPlan,
    pub root: RootfsPlan,
    pub process: ProcessPlan,
}

pub(super) fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| Error::Spec(format!("{what} contains a NUL byte")))
}

pub(super) fn path_cstring(p: &Path) -> Result<CString> {
    cstring(p.as_os_str().as_bytes(), &p.display().to_string())
}

/// Joins `path` (absolute inside the container) onto `root`, resolving symlinks found in
/// the rootfs as if `root` were `/` (so nothing resolves outside it). Below a destination in
/// `lexical` (an earlier mount, whose contents the rootfs does not show) it stops looking.
pub(crate) fn secure_join(root: &Path, path: &Path, lexical: &[PathBuf]) -> Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    let mut literal = false;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(&part);
        if literal {
            continue;
        }
        if lexical.iter().any(|l| l == &resolved) {
            literal = true;
            continue;
        }
        let full = root.join(&resolved);
        let Ok(meta) = std::fs::symlink_metadata(&full) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > 255 {
            return Err(Error::Spec(format!(
                "{}: too many levels of symlinks",
                path.display()
            )));
        }
        let target = std::fs::read_link(&full)
            .map_err(|e| Error::io(format!("readlink {}", full.display()), e))?;
        resolved.pop();
        if target.is_absolute() {
            resolved = PathBuf::new();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                _ => {}
            }
        }
    }
    Ok(root.join(resolved))
}

/// The whole plan for `create`; `cgroup_root` is where the VM's cgroup v2 is.
pub(crate) fn plan(
    spec: &Spec,
    rootfs: &Path,
    seccomp: SeccompPlan,
    cgroup_root: &Path,
) -> Result<Plan> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Spec("the spec has no process".into()))?;
    let ns = ns_plan(spec)?;
    let supported = caps::runtime::thread_all_supported();
    let mut process = process_plan(process, seccomp, &supported)?;
    process.userns = ns.user.is_some();
    let root = rootfs_plan(spec, rootfs, &ns, process.terminal, cgroup_root)?;
    Ok(Plan { ns, root, process })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).expect("mkdir");
        std::os::unix::fs::symlink("/real", root.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../../../../etc", root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("real/sub", root.join("rel")).expect("symlink");
        let j = |p: &str| secure_join(root, Path::new(p), &[]).expect("join");
        assert_eq!(j("/abs/x"), root.join("real/x"));
        assert_eq!(j("/escape/passwd"), root.join("etc/passwd"));
        assert_eq!(j("/../../x"), root.join("x"));
        assert_eq!(j("/rel/y"), root.join("real/sub/y"));
        assert_eq!(j("/none/z"), root.join("none/z"));
        // Below an earlier mount the rootfs's symlinks do not count.
        assert_eq!(
            secure_join(root, Path::new("/abs/x"), &[PathBuf::from("abs")]).expect("join"),
            root.join("abs/x")
        );
    }

    #[test]
    fn secure_join_stops_symlink_loops() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/b", dir.path().join("a")).expect("symlink");
        std::os::unix::fs::symlink("/a", dir.path().join("b")).expect("symlink");
        let err = secure_join(dir.path(), Path::new("/a/x"), &[]).expect_err("loop");
        assert!(
            err.to_string().contains("too many levels of symlinks"),
            "{err}"
        );
    }
}
