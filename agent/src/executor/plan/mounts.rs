//! The spec's mounts, planned: options parsed into flags, targets resolved inside the
//! rootfs, and what a user namespace does instead of a mount it may not make.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use super::super::error::{Error, Result};
use super::{cstring, path_cstring, secure_join};

/// One mount, resolved.
#[derive(Debug)]
pub(crate) struct MountOp {
    pub source: Option<CString>,
    /// Absolute path under the rootfs.
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    /// For a bind mount with flags beyond MS_BIND: the remount's flags.
    pub remount: Option<libc::c_ulong>,
    /// Propagation flags applied after mounting (0: none).
    pub propagation: libc::c_ulong,
    /// Flags the options explicitly clear ("rw", "suid"...): a remount that keeps the
    /// flags its source mount locks must not set one of these.
    pub cleared: libc::c_ulong,
    /// Make the mount and every mount below it read-only ("rro").
    pub recursive_ro: bool,
    /// What to do instead when the mount is refused (EPERM) in a user namespace.
    pub fallback: Option<Fallback>,
    /// The target is a file (a bind of a file), not a directory.
    pub file: bool,
    /// The destination inside the container, for messages.
    pub destination: String,
    /// The type, or "bind", for messages.
    pub kind: String,
}

/// What a user namespace does instead of a mount it may not make (as runc does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Bind the VM's `source` (recursively), remount it with `remount` if given, and make
    /// it read-only down to every submount if `recursive_ro`.
    Bind {
        source: CString,
        remount: Option<libc::c_ulong>,
        recursive_ro: bool,
    },
    /// Leave the mount point as it is.
    Skip,
}

/// The flags and data of OCI mount options.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MountOptions {
    pub flags: libc::c_ulong,
    /// The flags an option cleared ("rw" clears MS_RDONLY...).
    pub cleared: libc::c_ulong,
    pub propagation: libc::c_ulong,
    pub bind: bool,
    pub recursive: bool,
    /// "rro": read-only down to every submount (runc's option, mount_setattr).
    pub recursive_ro: bool,
    pub data: Vec<String>,
}

/// Parses OCI mount options (mount(8) words) into flags, propagation and fs data.
pub(crate) fn parse_mount_options(options: &[String]) -> Result<MountOptions> {
    let mut o = MountOptions::default();
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rro" => {
                o.recursive_ro = true;
                (libc::MS_RDONLY, 0)
            }
            "rw" => (0, libc::MS_RDONLY),
            "suid" => (0, libc::MS_NOSUID),
            "nosuid" => (libc::MS_NOSUID, 0),
            "dev" => (0, libc::MS_NODEV),
            "nodev" => (libc::MS_NODEV, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "noexec" => (libc::MS_NOEXEC, 0),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "nosymfollow" => (libc::MS_NOSYMFOLLOW, 0),
            "symfollow" => (0, libc::MS_NOSYMFOLLOW),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            "private" => {
                o.propagation = libc::MS_PRIVATE;
                (0, 0)
            }
            "rprivate" => {
                o.propagation = libc::MS_PRIVATE | libc::MS_REC;
                (0, 0)
            }
            "shared" => {
                o.propagation = libc::MS_SHARED;
                (0, 0)
            }
            "rshared" => {
                o.propagation = libc::MS_SHARED | libc::MS_REC;
                (0, 0)
            }
            "slave" => {
                o.propagation = libc::MS_SLAVE;
                (0, 0)
            }
            "rslave" => {
                o.propagation = libc::MS_SLAVE | libc::MS_REC;
                (0, 0)
            }
            "unbindable" => {
                o.propagation = libc::MS_UNBINDABLE;
                (0, 0)
            }
            "runbindable" => {
                o.propagation = libc::MS_UNBINDABLE | libc::MS_REC;
                (0, 0)
            }
            // runc's tmpfs copy-up: the tmpfs starts empty here.
            "tmpcopyup" => (0, 0),
            "idmap" | "ridmap" => {
                return Err(Error::Spec(format!("mount option {opt} is not supported")));
            }
            other => {
                o.data.push(other.to_string());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.cleared = (o.cleared | clear) & !set;
    }
    Ok(o)
}

pub(super) fn propagation_flags(s: &str) -> Result<libc::c_ulong> {
    Ok(match s {
        "" | "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => {
            return Err(Error::Spec(format!(
                "rootfsPropagation {other:?} is unknown"
            )));
        }
    })
}

pub(super) fn mount_op(rootfs: &Path, m: &Mount, lexical: &[PathBuf]) -> Result<MountOp> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(Error::Spec(format!(
            "mount destination {} is not absolute",
            dest.display()
        )));
    }
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]))?;
    let typ = m.typ().as_deref().unwrap_or("");
    let bind = opts.bind || typ == "bind";
    let target = secure_join(rootfs, dest, lexical)?;
    let (source, fstype, flags, remount, file, kind);
    if bind {
        let src = m.source().as_ref().ok_or_else(|| {
            Error::Spec(format!("bind mount on {} has no source", dest.display()))
        })?;
        let meta = std::fs::metadata(src)
            .map_err(|e| Error::io(format!("bind mount source {}", src.display()), e))?;
        file = !meta.is_dir();
        source = Some(path_cstring(src)?);
        fstype = None;
        flags = libc::MS_BIND | if opts.recursive { libc::MS_REC } else { 0 };
        let extra = opts.flags & !libc::MS_REMOUNT;
        remount = (extra != 0).then_some(libc::MS_BIND | libc::MS_REMOUNT | extra);
        kind = "bind".to_string();
    } else {
        // The guest runs cgroup v2 only.
        let t = if typ == "cgroup" { "cgroup2" } else { typ };
        if t.is_empty() {
            return Err(Error::Spec(format!(
                "mount on {} has no type",
                dest.display()
            )));
        }
        source = Some(match m.source() {
            Some(s) => path_cstring(s)?,
            None => cstring(t, "mount type")?,
        });
        fstype = Some(cstring(t, "mount type")?);
        flags = opts.flags;
        remount = None;
        file = false;
        kind = t.to_string();
    }
    let data = if opts.data.is_empty() {
        None
    } else {
        Some(cstring(opts.data.join(","), "mount data")?)
    };
    Ok(MountOp {
        source,
        target: path_cstring(&target)?,
        fstype,
        flags,
        data,
        remount,
        propagation: opts.propagation,
        cleared: opts.cleared,
        recursive_ro: opts.recursive_ro && bind,
        fallback: None,
        file,
        destination: dest.display().to_string(),
        kind,
    })
}

/// Where the VM's mqueue filesystem is, for containers in a user namespace to bind.
const VM_MQUEUE: &str = "/dev/mqueue";

/// Whether `path` is the root of an mqueue filesystem.
fn is_mqueue(path: &str) -> bool {
    const MQUEUE_MAGIC: libc::c_long = 0x1980_0202;
    let Ok(c) = CString::new(path) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string; st a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as libc::c_long == MQUEUE_MAGIC
}

/// The remount a bind standing in for a mount of type `flags` needs, if any.
fn bind_remount(flags: libc::c_ulong) -> Option<libc::c_ulong> {
    let f = flags & !(libc::MS_REMOUNT | libc::MS_BIND | libc::MS_REC);
    (f != 0).then_some(libc::MS_BIND | libc::MS_REMOUNT | f)
}

/// What a user namespace does when it may not mount `op` (as runc does): sysfs needs the
/// network namespace to be the user namespace's, cgroup2 the cgroup namespace, mqueue the
/// IPC namespace; the pod's are the VM's.
pub(super) fn userns_fallback(op: &MountOp, cgroup_root: &Path) -> Result<Option<Fallback>> {
    let bind = |source: CString| Fallback::Bind {
        source,
        remount: bind_remount(op.flags),
        recursive_ro: op.flags & libc::MS_RDONLY != 0,
    };
    Ok(match op.kind.as_str() {
        "sysfs" => Some(bind(c"/sys".to_owned())),
        "cgroup2" => Some(bind(path_cstring(cgroup_root)?)),
        "mqueue" if is_mqueue(VM_MQUEUE) => Some(bind(cstring(VM_MQUEUE, "mqueue")?)),
        "mqueue" => {
            tracing::debug!(
                destination = %op.destination,
                "the VM has no {VM_MQUEUE}: if the user namespace may not mount mqueue, the \
                 mount is left out"
            );
            Some(Fallback::Skip)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_become_flags_and_data() {
        let o = |v: &[&str]| {
            parse_mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("parse")
        };
        let m = o(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(m.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(m.data, vec!["mode=755", "size=65536k"]);
        let m = o(&["rbind", "ro", "rprivate"]);
        assert!(m.bind && m.recursive);
        assert_eq!(m.flags, libc::MS_RDONLY);
        assert_eq!(m.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(o(&["ro", "rw"]).flags, 0);
        assert_eq!(o(&["ro", "rw"]).cleared, libc::MS_RDONLY);
        assert_eq!(o(&["rw", "nosuid"]).cleared, libc::MS_RDONLY);
        assert_eq!(o(&["suid", "nosuid"]).cleared, 0);
        assert!(parse_mount_options(&["idmap".to_string()]).is_err());
    }
}
