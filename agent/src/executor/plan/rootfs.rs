//! The rootfs part of a plan: the container's filesystem and identity (its mounts, device
//! nodes and /dev symlinks, masked and read-only paths, hostname, sysctls).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::super::error::{Error, Result};
use super::mounts::{MountOp, mount_op, propagation_flags, userns_fallback};
use super::ns::NsPlan;
use super::{cstring, path_cstring, secure_join};

/// One device node, resolved.
#[derive(Debug)]
pub(crate) struct DeviceOp {
    pub path: CString,
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    /// In a user namespace (where mknod(2) of a device is refused): the VM's node to bind
    /// onto an empty file instead.
    pub bind: Option<CString>,
}

/// The container's filesystem and identity.
#[derive(Debug)]
pub(crate) struct RootfsPlan {
    pub rootfs: CString,
    pub propagation: libc::c_ulong,
    pub mounts: Vec<MountOp>,
    pub devices: Vec<DeviceOp>,
    pub symlinks: Vec<(CString, CString)>,
    /// Where to bind the console (inside the container), if the process has a terminal
    /// and /dev is the container's own.
    pub console: Option<CString>,
    pub masked: Vec<CString>,
    pub readonly: Vec<CString>,
    pub root_readonly: bool,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    pub sysctls: Vec<(CString, Vec<u8>, String)>,
}

/// The device nodes every container with its own /dev gets.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The symlinks every container with its own /dev gets: (target, link).
const DEFAULT_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// The VM's device node to bind for a device at `path` (inside the container) of `kind`
/// and `dev`, in a user namespace: the node at the same path in the VM, which must be
/// that device.
fn device_source(path: &Path, kind: libc::mode_t, dev: libc::dev_t) -> Result<CString> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let what = if kind == libc::S_IFBLK {
        "block"
    } else {
        "character"
    };
    let wrong = || {
        Error::Spec(format!(
            "device {}: a user namespace binds the VM's node, and the VM's is not the {what} \
             device {}:{}",
            path.display(),
            libc::major(dev),
            libc::minor(dev)
        ))
    };
    let meta = std::fs::metadata(path).map_err(|_| wrong())?;
    let ft = meta.file_type();
    let same_kind = if kind == libc::S_IFBLK {
        ft.is_block_device()
    } else {
        ft.is_char_device()
    };
    if !same_kind || meta.rdev() != dev {
        return Err(wrong());
    }
    path_cstring(path)
}

/// The rootfs part of a plan. `cgroup_root` is where the VM's cgroup v2 is (what a user
/// namespace binds for a cgroup2 mount it may not make).
pub(crate) fn rootfs_plan(
    spec: &Spec,
    rootfs: &Path,
    ns: &NsPlan,
    terminal: bool,
    cgroup_root: &Path,
) -> Result<RootfsPlan> {
    let userns = ns.user.is_some();
    if !rootfs.is_absolute() {
        return Err(Error::Spec(format!(
            "rootfs {} is not absolute",
            rootfs.display()
        )));
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let mut mounts = Vec::new();
    let mut lexical: Vec<PathBuf> = Vec::new();
    let mut own_dev = false;
    for m in spec.mounts().iter().flatten() {
        let mut op = mount_op(rootfs, m, &lexical)?;
        if userns {
            op.fallback = userns_fallback(&op, cgroup_root)?;
        }
        let rel = Path::new(op.target.to_str().unwrap_or_default())
            .strip_prefix(rootfs)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        own_dev |= m.destination() == Path::new("/dev");
        lexical.push(rel);
        mounts.push(op);
    }
    let mut devices = Vec::new();
    let mut symlinks = Vec::new();
    let spec_devices = linux.devices().clone().unwrap_or_default();
    if own_dev {
        for &(path, major, minor) in DEFAULT_DEVICES {
            if spec_devices.iter().any(|d| d.path() == Path::new(path)) {
                continue;
            }
            let dev = libc::makedev(major as u32, minor as u32);
            devices.push(DeviceOp {
                path: path_cstring(&secure_join(rootfs, Path::new(path), &lexical)?)?,
                mode: libc::S_IFCHR | 0o666,
                dev,
                uid: 0,
                gid: 0,
                name: path.to_string(),
                bind: userns
                    .then(|| device_source(Path::new(path), libc::S_IFCHR, dev))
                    .transpose()?,
            });
        }
        for &(target, link) in DEFAULT_SYMLINKS {
            if spec_devices.iter().any(|d| d.path() == Path::new(link)) {
                continue;
            }
            symlinks.push((
                cstring(target, "symlink")?,
                path_cstring(&secure_join(rootfs, Path::new(link), &lexical)?)?,
            ));
        }
    }
    for d in &spec_devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::Spec(format!(
                    "device {} has type a",
                    d.path().display()
                )));
            }
        };
        let dev = libc::makedev(d.major() as u32, d.minor() as u32);
        devices.push(DeviceOp {
            path: path_cstring(&secure_join(rootfs, d.path(), &lexical)?)?,
            mode: kind | d.file_mode().unwrap_or(0o666) as libc::mode_t,
            dev,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
            name: d.path().display().to_string(),
            // A FIFO needs no capability: mknod(2) makes it in a user namespace too.
            bind: (userns && kind != libc::S_IFIFO)
                .then(|| device_source(d.path(), kind, dev))
                .transpose()?,
        });
    }
    let hostname = match spec.hostname().as_deref() {
        None | Some("") => None,
        Some(h) if ns.has_uts => Some(cstring(h, "hostname")?),
        Some(_) => return Err(Error::Spec("a hostname needs a UTS namespace".into())),
    };
    let domainname = match spec.domainname().as_deref() {
        None | Some("") => None,
        Some(h) if ns.has_uts => Some(cstring(h, "domainname")?),
        Some(_) => return Err(Error::Spec("a domainname needs a UTS namespace".into())),
    };
    let mut sysctls = Vec::new();
    let mut keys: Vec<_> = linux.sysctl().iter().flatten().collect();
    keys.sort();
    for (key, value) in keys {
        if key.contains("..") || key.starts_with('/') {
            return Err(Error::Spec(format!("sysctl {key} is malformed")));
        }
        let rel = if key.contains('/') {
            key.clone()
        } else {
            key.replace('.', "/")
        };
        sysctls.push((
            cstring(format!("/proc/sys/{rel}"), "sysctl")?,
            value.clone().into_bytes(),
            key.clone(),
        ));
    }
    Ok(RootfsPlan {
        rootfs: path_cstring(rootfs)?,
        propagation: propagation_flags(linux.rootfs_propagation().as_deref().unwrap_or(""))?,
        mounts,
        devices,
        symlinks,
        console: (terminal && own_dev).then(|| c"/dev/console".to_owned()),
        masked: linux
            .masked_paths()
            .iter()
            .flatten()
            .map(|p| cstring(p, "masked path"))
            .collect::<Result<_>>()?,
        readonly: linux
            .readonly_paths()
            .iter()
            .flatten()
            .map(|p| cstring(p, "readonly path"))
            .collect::<Result<_>>()?,
        root_readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        hostname,
        domainname,
        sysctls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::plan::mounts::Fallback;
    use crate::executor::plan::ns::ns_plan;
    use oci_spec::runtime::{LinuxNamespaceType, Mount};

    fn userns_spec(mounts: Vec<Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_hostname(None);
        spec.set_mounts(Some(mounts));
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_namespaces(Some(vec![
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Mount)
                .build()
                .expect("ns"),
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .path("/proc/7/ns/user")
                .build()
                .expect("ns"),
        ]));
        linux.set_devices(Some(vec![
            oci_spec::runtime::LinuxDeviceBuilder::default()
                .path("/dev/fifo")
                .typ(LinuxDeviceType::P)
                .build()
                .expect("fifo"),
        ]));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn a_user_namespace_binds_what_it_cannot_mount_or_mknod() {
        let mounts = oci_spec::runtime::get_default_mounts();
        let spec = userns_spec(mounts.clone());
        let ns = ns_plan(&spec).expect("ns");
        let root = rootfs_plan(&spec, Path::new("/r"), &ns, false, Path::new("/cg")).expect("plan");
        let fallback = |dest: &str| {
            root.mounts
                .iter()
                .find(|m| m.destination == dest)
                .expect("mount")
                .fallback
                .clone()
        };
        assert_eq!(
            fallback("/proc"),
            None,
            "proc mounts in its own PID namespace"
        );
        assert_eq!(fallback("/dev"), None);
        assert_eq!(
            fallback("/sys"),
            Some(Fallback::Bind {
                source: c"/sys".to_owned(),
                remount: Some(
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_NOSUID
                        | libc::MS_NOEXEC
                        | libc::MS_NODEV
                        | libc::MS_RDONLY
                ),
                recursive_ro: true,
            })
        );
        assert!(matches!(
            fallback("/sys/fs/cgroup"),
            Some(Fallback::Bind { source, recursive_ro: true, .. }) if source.as_c_str() == c"/cg"
        ));
        assert!(matches!(
            fallback("/dev/mqueue"),
            Some(Fallback::Skip | Fallback::Bind { .. })
        ));
        // Devices: the VM's nodes, checked; the FIFO still made.
        let null = root
            .devices
            .iter()
            .find(|d| d.name == "/dev/null")
            .expect("null");
        assert_eq!(null.bind.as_deref(), Some(c"/dev/null"));
        let fifo = root
            .devices
            .iter()
            .find(|d| d.name == "/dev/fifo")
            .expect("fifo");
        assert_eq!(fifo.bind, None);
        // Without a user namespace nothing changes.
        let mut plain = spec.clone();
        let mut linux = plain.linux().clone().expect("linux");
        linux.set_namespaces(None);
        plain.set_linux(Some(linux));
        let ns = ns_plan(&plain).expect("ns");
        let root =
            rootfs_plan(&plain, Path::new("/r"), &ns, false, Path::new("/cg")).expect("plan");
        assert!(root.mounts.iter().all(|m| m.fallback.is_none()));
        assert!(root.devices.iter().all(|d| d.bind.is_none()));
    }

    #[test]
    fn a_device_the_vm_lacks_cannot_be_bound() {
        let mut spec = userns_spec(oci_spec::runtime::get_default_mounts());
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_devices(Some(vec![
            oci_spec::runtime::LinuxDeviceBuilder::default()
                .path("/dev/null")
                .typ(LinuxDeviceType::C)
                .major(1)
                .minor(5)
                .build()
                .expect("dev"),
        ]));
        spec.set_linux(Some(linux));
        let ns = ns_plan(&spec).expect("ns");
        let err = rootfs_plan(&spec, Path::new("/r"), &ns, false, Path::new("/cg"))
            .expect_err("1:5 is not /dev/null");
        assert_eq!(
            err.to_string(),
            "invalid spec: device /dev/null: a user namespace binds the VM's node, and the \
             VM's is not the character device 1:5"
        );
    }
}
