//! The container's filesystem, built by its process between the fork and `execve`, as
//! calls on the `Syscall` seam: enter the namespaces, mount the rootfs and the spec's
//! mounts, make the devices, pivot into it, then the console, hostname, sysctls, read-only
//! and masked paths.

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;

use super::failure::{Failure, StepKind, at};
use super::plan::{Fallback, NsPlan, RootfsPlan};
use super::sys::{FileKind, Syscall};

/// The MS_* flags of `current` (a mount's, from `mount_flags`) that a user namespace cannot
/// change on a mount it inherited: read-only, nosuid, nodev, noexec, and the atime mode
/// (MS_STRICTATIME when neither noatime nor relatime).
fn locked_flags(current: libc::c_ulong) -> libc::c_ulong {
    let atime = libc::MS_NOATIME | libc::MS_RELATIME;
    let mut f = current
        & (libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC
            | libc::MS_NODIRATIME
            | atime);
    if f & atime == 0 {
        f |= libc::MS_STRICTATIME;
    }
    f
}

/// A bind's remount with `flags`. In a user namespace a bind of a mount it inherited cannot
/// clear the flags that mount locks (EPERM): then, as runc does, it is tried again with
/// them, unless the options asked to clear one of them (`cleared`, e.g. "rw" on a
/// read-only source) or chose another atime mode.
fn remount_bind<S: Syscall>(
    sys: &S,
    target: &CStr,
    flags: libc::c_ulong,
    cleared: libc::c_ulong,
) -> Result<(), Errno> {
    match sys.mount(None, target, None, flags, None) {
        Err(Errno::EPERM) => {
            let locked = locked_flags(sys.mount_flags(target)?);
            let atime = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;
            let asked_atime = flags & atime;
            if locked & cleared != 0
                || (asked_atime != 0 && asked_atime != locked & atime)
                || locked & !flags == 0
            {
                return Err(Errno::EPERM);
            }
            sys.mount(None, target, None, flags | locked, None)
        }
        r => r,
    }
}

/// Enters the namespaces and builds the rootfs: everything up to and including the
/// hostname, sysctls, masked and read-only paths. `ns_fds` are the namespaces to join,
/// opened by the parent, in plan order.
pub(crate) fn setup_rootfs<S: Syscall>(
    sys: &S,
    ns: &NsPlan,
    root: &RootfsPlan,
    ns_fds: &[(RawFd, libc::c_int)],
    console_socket: Option<RawFd>,
) -> Result<(), Failure> {
    use StepKind as K;
    for (i, &(fd, nstype)) in ns_fds.iter().enumerate() {
        sys.setns(fd, nstype).map_err(at(K::Setns, i))?;
    }
    sys.unshare(ns.unshare).map_err(at(K::Unshare, 0))?;
    // Nothing mounted from here on propagates back to the agent's namespace.
    sys.mount(None, c"/", None, root.propagation, None)
        .map_err(at(K::Propagation, 0))?;
    let rootfs = root.rootfs.as_c_str();
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(at(K::BindRootfs, 0))?;
    for (i, m) in root.mounts.iter().enumerate() {
        let target = m.target.as_c_str();
        if m.file {
            sys.create_file(target)
        } else {
            sys.mkdir_all(target)
        }
        .map_err(at(K::MountTarget, i))?;
        match sys.mount_no_symlinks(
            m.source.as_deref(),
            target,
            m.fstype.as_deref(),
            m.flags,
            m.data.as_deref(),
        ) {
            Ok(()) => {
                if let Some(flags) = m.remount {
                    remount_bind(sys, target, flags, m.cleared).map_err(at(K::Remount, i))?;
                }
                if m.recursive_ro {
                    sys.make_readonly_recursive(target)
                        .map_err(at(K::Remount, i))?;
                }
            }
            Err(Errno::EPERM) if m.fallback.is_some() => match &m.fallback {
                Some(Fallback::Bind {
                    source,
                    remount,
                    recursive_ro,
                }) => {
                    sys.mount_no_symlinks(
                        Some(source),
                        target,
                        None,
                        libc::MS_BIND | libc::MS_REC,
                        None,
                    )
                    .map_err(at(K::MountFallback, i))?;
                    if let Some(flags) = remount {
                        remount_bind(sys, target, *flags, m.cleared)
                            .map_err(at(K::MountFallback, i))?;
                    }
                    if *recursive_ro {
                        sys.make_readonly_recursive(target)
                            .map_err(at(K::MountFallback, i))?;
                    }
                }
                // Fallback::Skip: the mount point stays as it is.
                _ => continue,
            },
            Err(e) => return Err(Failure::new(K::Mount, i, e)),
        }
        if m.propagation != 0 {
            sys.mount(None, target, None, m.propagation, None)
                .map_err(at(K::MountPropagation, i))?;
        }
    }
    for (i, d) in root.devices.iter().enumerate() {
        match &d.bind {
            // In a user namespace: the VM's node, bound onto an empty file (as runc does).
            Some(source) => sys.create_file(&d.path).and_then(|()| {
                sys.mount_no_symlinks(Some(source), &d.path, None, libc::MS_BIND, None)
            }),
            None => sys.mknod(&d.path, d.mode, d.dev, d.uid, d.gid),
        }
        .map_err(at(K::Device, i))?;
    }
    for (i, (target, link)) in root.symlinks.iter().enumerate() {
        sys.symlink(target, link).map_err(at(K::Symlink, i))?;
    }
    pivot(sys, rootfs).map_err(at(K::PivotRoot, 0))?;
    if let Some(socket) = console_socket {
        sys.setup_console(socket, root.console.as_deref(), None)
            .map_err(at(K::Console, 0))?;
    }
    if let Some(h) = &root.hostname {
        sys.sethostname(h).map_err(at(K::Hostname, 0))?;
    }
    if let Some(d) = &root.domainname {
        sys.setdomainname(d).map_err(at(K::Domainname, 0))?;
    }
    // Sysctls before the read-only paths: /proc/sys is one of them.
    for (i, (path, value, _)) in root.sysctls.iter().enumerate() {
        sys.write_file(path, value).map_err(at(K::Sysctl, i))?;
    }
    for (i, p) in root.readonly.iter().enumerate() {
        readonly(sys, p).map_err(at(K::Readonly, i))?;
    }
    for (i, p) in root.masked.iter().enumerate() {
        mask(sys, p).map_err(at(K::Mask, i))?;
    }
    if root.root_readonly {
        let flags = sys.mount_flags(c"/").map_err(at(K::RootReadonly, 0))?;
        sys.mount(
            None,
            c"/",
            None,
            flags | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(at(K::RootReadonly, 0))?;
    }
    Ok(())
}

/// Makes `rootfs` the root. pivot_root(".", ".") stacks the old root on the new one, which
/// is then detached. From an initramfs (whose root mount has no parent) pivot_root fails
/// with EINVAL: then the rootfs is moved over / and chrooted into, as runc's no-pivot does.
fn pivot<S: Syscall>(sys: &S, rootfs: &CStr) -> Result<(), Errno> {
    sys.chdir(rootfs)?;
    match sys.pivot_root(c".", c".") {
        Ok(()) => {
            // The old root, stacked on ".": keep its unmount from propagating, detach it.
            sys.mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None)?;
            sys.umount2(c".", libc::MNT_DETACH)?;
        }
        Err(Errno::EINVAL) => {
            sys.mount(Some(rootfs), c"/", None, libc::MS_MOVE, None)?;
            sys.chroot(c".")?;
        }
        Err(e) => return Err(e),
    }
    sys.chdir(c"/")
}

fn readonly<S: Syscall>(sys: &S, path: &CStr) -> Result<(), Errno> {
    match sys.file_kind(path) {
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    sys.mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
    let flags = sys.mount_flags(path)?;
    sys.mount(
        None,
        path,
        None,
        flags | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    )
}

fn mask<S: Syscall>(sys: &S, path: &CStr) -> Result<(), Errno> {
    match sys.file_kind(path) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(FileKind::Dir) => sys.mount(Some(c"tmpfs"), path, Some(c"tmpfs"), libc::MS_RDONLY, None),
        Ok(FileKind::Other) => sys.mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::child::tests::{plan_for, spec, userns_spec};
    use crate::executor::failure::describe;
    use crate::executor::sys::{Call, Recorder};
    use oci_spec::runtime::MountBuilder;
    use std::ffi::CString;
    use std::path::PathBuf;

    fn mounts(calls: &[Call]) -> Vec<(String, Option<String>)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, fstype, .. } => Some((target.clone(), fstype.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rootfs_setup_mounts_then_pivots_then_masks() {
        let spec = spec();
        let plan = plan_for(&spec);
        let rec = Recorder {
            dirs: vec!["/proc/acpi".into()],
            ..Default::default()
        };
        setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect("setup");
        let calls = rec.calls();
        assert_eq!(calls[0], Call::Unshare(plan.ns.unshare));
        assert_eq!(
            calls[1],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: libc::MS_SLAVE | libc::MS_REC,
                data: None
            }
        );
        let m = mounts(&calls);
        let targets: Vec<&str> = m.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            &targets[..9],
            &[
                "/",
                "/run/rootfs",
                "/run/rootfs/proc",
                "/run/rootfs/dev",
                "/run/rootfs/dev/pts",
                "/run/rootfs/dev/shm",
                "/run/rootfs/dev/mqueue",
                "/run/rootfs/sys",
                "/run/rootfs/sys/fs/cgroup",
            ]
        );
        // The read-only bind: a bind, then its ro remount.
        let bind = calls
            .iter()
            .position(|c| {
                matches!(c, Call::Mount { target, flags, .. }
            if target == "/run/rootfs/data" && *flags == libc::MS_BIND | libc::MS_REC)
            })
            .expect("bind");
        assert!(matches!(&calls[bind + 1], Call::Mount { flags, .. }
            if *flags == libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY));
        // Devices after the mounts, the pivot after the devices.
        let null = calls
            .iter()
            .position(|c| matches!(c, Call::Mknod(p, _, _) if p == "/run/rootfs/dev/null"))
            .expect("null");
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .expect("pivot");
        assert!(bind < null && null < pivot);
        assert_eq!(calls[pivot - 1], Call::Chdir("/run/rootfs".into()));
        assert_eq!(calls[pivot], Call::PivotRoot(".".into(), ".".into()));
        assert_eq!(calls[pivot + 2], Call::Umount(".".into(), libc::MNT_DETACH));
        assert_eq!(calls[pivot + 3], Call::Chdir("/".into()));
        let rest = &calls[pivot + 4..];
        assert_eq!(rest[0], Call::Hostname("box".into()));
        // /proc/sys bound read-only; /proc/kcore (a file) gets /dev/null, /proc/acpi (a
        // directory) a read-only tmpfs.
        assert!(matches!(&rest[2], Call::Mount { target, flags, .. }
            if target == "/proc/sys" && flags & libc::MS_RDONLY != 0));
        assert!(
            matches!(&rest[3], Call::Mount { source: Some(s), target, .. }
            if s == "/dev/null" && target == "/proc/kcore")
        );
        assert!(
            matches!(&rest[4], Call::Mount { fstype: Some(t), target, flags, .. }
            if t == "tmpfs" && target == "/proc/acpi" && *flags == libc::MS_RDONLY)
        );
        // The default spec's root is read-only: the last remount.
        assert!(matches!(&rest[5], Call::Mount { target, flags, .. }
            if target == "/" && flags & (libc::MS_RDONLY | libc::MS_REMOUNT | libc::MS_BIND)
                == libc::MS_RDONLY | libc::MS_REMOUNT | libc::MS_BIND));
        assert_eq!(rest.len(), 6);
    }

    #[test]
    fn pivot_root_falls_back_to_move_and_chroot_on_an_initramfs() {
        let spec = spec();
        let plan = plan_for(&spec);
        let rec = Recorder {
            fail: vec![(|c| matches!(c, Call::PivotRoot(..)), Errno::EINVAL)],
            ..Default::default()
        };
        setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect("setup");
        let calls = rec.calls();
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .expect("pivot");
        assert_eq!(
            calls[pivot + 1],
            Call::Mount {
                source: Some("/run/rootfs".into()),
                target: "/".into(),
                fstype: None,
                flags: libc::MS_MOVE,
                data: None
            }
        );
        assert_eq!(calls[pivot + 2], Call::Chroot(".".into()));
        assert_eq!(calls[pivot + 3], Call::Chdir("/".into()));
    }

    #[test]
    fn a_failed_mount_is_described_by_its_destination() {
        let spec = spec();
        let plan = plan_for(&spec);
        let rec = Recorder {
            fail: vec![(
                |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "mqueue"),
                Errno::ENODEV,
            )],
            ..Default::default()
        };
        let f = setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect_err("fails");
        let f = Failure::decode(&f.encode()).expect("roundtrip");
        let err = describe(f, &[], Some(&plan.root), &plan.process);
        assert_eq!(
            err.to_string(),
            "mount mqueue on /dev/mqueue: No such device"
        );
    }

    #[test]
    fn joined_namespaces_come_first() {
        let spec = spec();
        let plan = plan_for(&spec);
        let rec = Recorder {
            fail: vec![(|c| matches!(c, Call::Setns(4, _)), Errno::EINVAL)],
            ..Default::default()
        };
        let fds = [(3, libc::CLONE_NEWIPC), (4, libc::CLONE_NEWUTS)];
        let f = setup_rootfs(&rec, &plan.ns, &plan.root, &fds, None).expect_err("fails");
        assert_eq!(
            rec.calls(),
            vec![
                Call::Setns(3, libc::CLONE_NEWIPC),
                Call::Setns(4, libc::CLONE_NEWUTS)
            ]
        );
        let join = vec![
            (PathBuf::from("/proc/9/ns/ipc"), libc::CLONE_NEWIPC),
            (PathBuf::from("/proc/9/ns/uts"), libc::CLONE_NEWUTS),
        ];
        let err = describe(f, &join, Some(&plan.root), &plan.process);
        assert_eq!(
            err.to_string(),
            "join uts namespace /proc/9/ns/uts: Invalid argument"
        );
        let _ = CString::default();
    }

    #[test]
    fn a_user_namespace_binds_devices_and_what_it_may_not_mount() {
        let spec = userns_spec();
        let plan = plan_for(&spec);
        let rec = Recorder {
            fail: vec![(
                |c| {
                    matches!(c, Call::Mount { fstype: Some(t), .. }
                        if t == "sysfs" || t == "cgroup2" || t == "mqueue")
                },
                Errno::EPERM,
            )],
            ..Default::default()
        };
        setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect("setup");
        let calls = rec.calls();
        let after = |target: &str, fstype: &str| {
            let i = calls
                .iter()
                .position(|c| {
                    matches!(c, Call::Mount { target: t, fstype: Some(f), .. }
                    if t == target && f == fstype)
                })
                .expect("tried");
            &calls[i + 1..]
        };
        let ro_bind = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        let sys = after("/run/rootfs/sys", "sysfs");
        assert_eq!(
            sys[0],
            Call::Mount {
                source: Some("/sys".into()),
                target: "/run/rootfs/sys".into(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None
            }
        );
        assert!(
            matches!(&sys[1], Call::Mount { source: None, target, flags, .. }
            if target == "/run/rootfs/sys" && flags & ro_bind == ro_bind)
        );
        assert_eq!(sys[2], Call::ReadonlyRecursive("/run/rootfs/sys".into()));
        let cg = after("/run/rootfs/sys/fs/cgroup", "cgroup2");
        assert!(matches!(&cg[0], Call::Mount { source: Some(s), flags, .. }
            if s == "/sys/fs/cgroup" && *flags == libc::MS_BIND | libc::MS_REC));
        // Devices: an empty file, the VM's node bound on it; no mknod.
        assert!(!calls.iter().any(|c| matches!(c, Call::Mknod(..))));
        let null = calls
            .iter()
            .position(|c| *c == Call::CreateFile("/run/rootfs/dev/null".into()))
            .expect("null");
        assert_eq!(
            calls[null + 1],
            Call::Mount {
                source: Some("/dev/null".into()),
                target: "/run/rootfs/dev/null".into(),
                fstype: None,
                flags: libc::MS_BIND,
                data: None
            }
        );
        // A fallback that fails says what it was for.
        let rec = Recorder {
            fail: vec![(
                |c| {
                    matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs")
                        || matches!(c, Call::Mount { source: Some(s), .. } if s == "/sys")
                },
                Errno::ENOENT,
            )],
            ..Default::default()
        };
        let f = setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect_err("no /sys");
        assert_eq!(
            describe(f, &[], Some(&plan.root), &plan.process).to_string(),
            "mount sysfs on /sys: No such file or directory",
            "only EPERM falls back"
        );
        let rec = Recorder {
            fail: vec![
                (
                    |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs"),
                    Errno::EPERM,
                ),
                (
                    |c| matches!(c, Call::Mount { source: Some(s), .. } if s == "/sys"),
                    Errno::ENOENT,
                ),
            ],
            ..Default::default()
        };
        let f = setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect_err("no /sys");
        assert_eq!(
            describe(f, &[], Some(&plan.root), &plan.process).to_string(),
            "bind /sys on /sys (for sysfs, which the user namespace may not mount): No such \
             file or directory"
        );
        // Without a user namespace a refused mount fails as before.
        let plan = plan_for(&self::spec());
        let rec = Recorder {
            fail: vec![(
                |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs"),
                Errno::EPERM,
            )],
            ..Default::default()
        };
        let f = setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect_err("refused");
        assert_eq!(
            describe(f, &[], Some(&plan.root), &plan.process).to_string(),
            "mount sysfs on /sys: Operation not permitted"
        );
    }

    #[test]
    fn a_bind_remount_keeps_the_flags_its_source_locks() {
        let mut spec = userns_spec();
        let mut mounts = spec.mounts().clone().expect("mounts");
        mounts.push(
            MountBuilder::default()
                .destination("/suid")
                .typ("bind")
                .source("/tmp")
                .options(vec![
                    "rbind".to_string(),
                    "ro".to_string(),
                    "suid".to_string(),
                ])
                .build()
                .expect("mount"),
        );
        spec.set_mounts(Some(mounts));
        let plan = plan_for(&spec);
        // The source mount is nosuid and nodev (Recorder::mount_flags): in a user
        // namespace a remount without them is refused.
        fn refused(c: &Call) -> bool {
            matches!(c, Call::Mount { source: None, flags, .. }
                if flags & libc::MS_REMOUNT != 0 && flags & libc::MS_NOSUID == 0)
        }
        let rec = Recorder {
            fail: vec![(refused, Errno::EPERM)],
            ..Default::default()
        };
        let f = setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect_err("suid");
        let calls = rec.calls();
        let data = calls
            .iter()
            .position(|c| {
                matches!(c, Call::Mount { target, flags, .. }
                if target == "/run/rootfs/data" && *flags == libc::MS_BIND | libc::MS_REC)
            })
            .expect("data");
        assert_eq!(
            calls[data + 2],
            Call::Mount {
                source: None,
                target: "/run/rootfs/data".into(),
                fstype: None,
                flags: libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_STRICTATIME,
                data: None
            },
            "tried again keeping them"
        );
        // "suid" asked to clear one of them: that cannot be, and is not made up.
        assert_eq!(
            describe(f, &[], Some(&plan.root), &plan.process).to_string(),
            "remount bind /tmp on /suid: Operation not permitted"
        );
    }
}
