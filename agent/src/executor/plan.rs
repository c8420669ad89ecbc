//! Turns a runtime spec and a rootfs into a `Plan`: every path resolved, every string a C
//! string, every option a flag, so the forked child only has to make the calls. Pure but
//! for reading the rootfs (symlinks, source kinds): tested without root.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use caps::{Capability, CapsHashSet};
use oci_spec::runtime::{
    LinuxCapabilities, LinuxDeviceType, LinuxNamespaceType, Mount, PosixRlimitType, Process, Spec,
};
use seccompiler::BpfProgram;

use super::error::{Error, Result};
use super::userns::IdMappings;

/// The `PATH` used to find the program when the process's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// What happens to the PID namespace (done by the forking thread, before the fork).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PidNs {
    /// A new one: the process is its PID 1.
    New,
    /// Join the one at this path.
    Join(PathBuf),
    /// Stay in the agent's.
    Host,
}

/// The user namespace a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserNsPlan {
    /// The namespace file.
    pub path: PathBuf,
    /// The spec's mappings, which the namespace must have (None: the spec gives none).
    pub mappings: Option<IdMappings>,
}

/// Namespaces: those joined (opened by the parent, in this order), then the user namespace
/// (joined), then those unshared.
#[derive(Debug, Clone)]
pub(crate) struct NsPlan {
    pub pid: PidNs,
    pub join: Vec<(PathBuf, libc::c_int)>,
    pub unshare: libc::c_int,
    pub has_uts: bool,
    pub user: Option<UserNsPlan>,
}

impl NsPlan {
    /// Whether the container's new PID namespace must be made inside the user namespace
    /// it joins (by its process, which then forks its init: see `child`).
    pub(crate) fn pid_in_userns(&self) -> bool {
        self.user.is_some() && self.pid == PidNs::New
    }

    /// The namespaces a failed `Setns` step indexes: those joined, then the user namespace.
    pub(crate) fn described_joins(&self) -> Vec<(PathBuf, libc::c_int)> {
        let mut v = self.join.clone();
        v.extend(
            self.user
                .iter()
                .map(|u| (u.path.clone(), libc::CLONE_NEWUSER)),
        );
        v
    }
}

/// Capability sets to apply.
#[derive(Debug, Clone)]
pub(crate) struct CapsPlan {
    pub drop_bounding: Vec<Capability>,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: Vec<Capability>,
}

/// The compiled seccomp filters (installed in order) and their flags.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeccompPlan {
    pub programs: Vec<BpfProgram>,
    pub flags: libc::c_uint,
}

/// The process: who it runs as, with what, and what it execs.
#[derive(Debug)]
pub(crate) struct ProcessPlan {
    /// The process enters a user namespace: its rlimits and oom_score_adj are set before,
    /// while it is the VM's root (raising a hard limit or lowering the score needs
    /// capabilities of the VM's user namespace).
    pub userns: bool,
    pub terminal: bool,
    /// The terminal's first window size, (rows, columns).
    pub console_size: Option<(u16, u16)>,
    pub rlimits: Vec<(libc::c_int, u64, u64, String)>,
    pub oom_score_adj: Option<Vec<u8>>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub umask: libc::mode_t,
    pub caps: Option<CapsPlan>,
    pub no_new_privs: bool,
    pub seccomp: SeccompPlan,
    pub cwd: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// Paths to try `execve` on, in order.
    pub candidates: Vec<CString>,
    /// args[0], for messages.
    pub arg0: String,
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

/// Everything `create` needs.
#[derive(Debug)]
pub(crate) struct Plan {
    pub ns: NsPlan,
    pub root: RootfsPlan,
    pub process: ProcessPlan,
}

fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| Error::Spec(format!("{what} contains a NUL byte")))
}

fn path_cstring(p: &Path) -> Result<CString> {
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

fn propagation_flags(s: &str) -> Result<libc::c_ulong> {
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

fn mount_op(rootfs: &Path, m: &Mount, lexical: &[PathBuf]) -> Result<MountOp> {
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

/// Converts an OCI capability to the `caps` crate's.
pub(crate) fn capability(c: &oci_spec::runtime::Capability) -> Result<Capability> {
    format!("CAP_{c}")
        .parse()
        .map_err(|_| Error::Spec(format!("capability CAP_{c} is unknown")))
}

fn cap_set(set: &Option<oci_spec::runtime::Capabilities>) -> Result<CapsHashSet> {
    set.iter().flatten().map(capability).collect()
}

fn sorted(set: CapsHashSet) -> Vec<Capability> {
    let mut v: Vec<_> = set.into_iter().collect();
    v.sort_by_key(|c| c.index());
    v
}

/// The capability plan for `caps`: the bounding set drops every capability the kernel
/// knows (`supported`) that the spec leaves out.
pub(crate) fn caps_plan(caps: &LinuxCapabilities, supported: &CapsHashSet) -> Result<CapsPlan> {
    let bounding = cap_set(caps.bounding())?;
    let drop_bounding = sorted(supported.difference(&bounding).copied().collect());
    Ok(CapsPlan {
        drop_bounding,
        effective: cap_set(caps.effective())?,
        permitted: cap_set(caps.permitted())?,
        inheritable: cap_set(caps.inheritable())?,
        ambient: sorted(cap_set(caps.ambient())?),
    })
}

fn rlimit_resource(t: PosixRlimitType) -> Result<libc::c_int> {
    use PosixRlimitType as R;
    Ok(match t {
        R::RlimitCpu => libc::RLIMIT_CPU,
        R::RlimitFsize => libc::RLIMIT_FSIZE,
        R::RlimitData => libc::RLIMIT_DATA,
        R::RlimitStack => libc::RLIMIT_STACK,
        R::RlimitCore => libc::RLIMIT_CORE,
        R::RlimitRss => libc::RLIMIT_RSS,
        R::RlimitNproc => libc::RLIMIT_NPROC,
        R::RlimitNofile => libc::RLIMIT_NOFILE,
        R::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        R::RlimitAs => libc::RLIMIT_AS,
        R::RlimitLocks => libc::RLIMIT_LOCKS,
        R::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        R::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        R::RlimitNice => libc::RLIMIT_NICE,
        R::RlimitRtprio => libc::RLIMIT_RTPRIO,
        R::RlimitRttime => libc::RLIMIT_RTTIME,
    } as libc::c_int)
}

/// The process part of a plan, for `create` and `exec` alike.
pub(crate) fn process_plan(
    process: &Process,
    seccomp: SeccompPlan,
    supported_caps: &CapsHashSet,
) -> Result<ProcessPlan> {
    let args = process.args().as_deref().unwrap_or(&[]);
    let Some(arg0) = args.first() else {
        return Err(Error::Spec("process.args is empty".into()));
    };
    let env = process.env().as_deref().unwrap_or(&[]);
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let candidates = if arg0.contains('/') {
        vec![cstring(arg0, "process.args[0]")?]
    } else {
        path_var
            .split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                cstring(format!("{}/{arg0}", dir.trim_end_matches('/')), "PATH")
            })
            .collect::<Result<_>>()?
    };
    let user = process.user();
    let mut groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    groups.dedup();
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            Ok((
                rlimit_resource(r.typ())?,
                r.soft(),
                r.hard(),
                r.typ().to_string(),
            ))
        })
        .collect::<Result<_>>()?;
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(Error::Spec(format!(
            "process.cwd {} is not absolute",
            cwd.display()
        )));
    }
    Ok(ProcessPlan {
        userns: false,
        terminal: process.terminal().unwrap_or(false),
        console_size: process
            .console_size()
            .filter(|b| b.height() > 0 && b.width() > 0)
            .map(|b| {
                (
                    b.height().min(u16::MAX.into()) as u16,
                    b.width().min(u16::MAX.into()) as u16,
                )
            }),
        rlimits,
        oom_score_adj: process.oom_score_adj().map(|v| v.to_string().into_bytes()),
        uid: user.uid(),
        gid: user.gid(),
        groups,
        umask: user.umask().unwrap_or(0o022) as libc::mode_t,
        caps: process
            .capabilities()
            .as_ref()
            .map(|c| caps_plan(c, supported_caps))
            .transpose()?,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        seccomp,
        cwd: path_cstring(cwd)?,
        argv: args
            .iter()
            .map(|a| cstring(a, "process.args"))
            .collect::<Result<_>>()?,
        envp: env
            .iter()
            .map(|e| cstring(e, "process.env"))
            .collect::<Result<_>>()?,
        candidates,
        arg0: arg0.clone(),
    })
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// The namespaces of `spec`; without a list: new mount, PID, IPC and UTS namespaces (the
/// network namespace is the pod's, which is the VM's). A user namespace can only be joined
/// (by path); the spec's uidMappings and gidMappings, if any, are what it must have.
pub(crate) fn ns_plan(spec: &Spec) -> Result<NsPlan> {
    use LinuxNamespaceType as T;
    let mappings = spec
        .linux()
        .as_ref()
        .map(IdMappings::from_spec)
        .filter(|m| !m.uids.is_empty() || !m.gids.is_empty());
    let list: Vec<(T, Option<PathBuf>)> =
        match spec.linux().as_ref().and_then(|l| l.namespaces().clone()) {
            Some(list) => list.iter().map(|n| (n.typ(), n.path().clone())).collect(),
            None => vec![
                (T::Mount, None),
                (T::Pid, None),
                (T::Ipc, None),
                (T::Uts, None),
            ],
        };
    let mut plan = NsPlan {
        pid: PidNs::Host,
        join: vec![],
        unshare: 0,
        has_uts: false,
        user: None,
    };
    let mut seen = HashSet::new();
    for (typ, path) in list {
        if !seen.insert(typ) {
            return Err(Error::Spec(format!("namespace {typ} is listed twice")));
        }
        match (typ, path) {
            (T::User, None) => {
                return Err(Error::Spec(
                    "creating a user namespace is not supported: a container can only join \
                     one by path (the pod's)"
                        .into(),
                ));
            }
            (T::User, Some(p)) => {
                plan.user = Some(UserNsPlan {
                    path: p,
                    mappings: mappings.clone(),
                });
            }
            (T::Time, _) => {
                return Err(Error::Spec("time namespaces are not supported".into()));
            }
            (T::Mount, Some(_)) => {
                return Err(Error::Spec(
                    "joining a mount namespace is not supported".into(),
                ));
            }
            (T::Pid, None) => plan.pid = PidNs::New,
            (T::Pid, Some(p)) => plan.pid = PidNs::Join(p),
            (t, Some(p)) => {
                plan.has_uts |= t == T::Uts;
                plan.join.push((p, ns_flag(t)));
            }
            (t, None) => {
                plan.has_uts |= t == T::Uts;
                plan.unshare |= ns_flag(t);
            }
        }
    }
    if plan.unshare & libc::CLONE_NEWNS == 0 {
        return Err(Error::Spec(
            "the container needs a new mount namespace".into(),
        ));
    }
    if plan.user.is_none() && mappings.is_some() {
        return Err(Error::Spec(
            "uidMappings or gidMappings without a user namespace".into(),
        ));
    }
    if let Some(m) = plan.user.as_ref().and_then(|u| u.mappings.as_ref()) {
        m.validate()
            .map_err(|e| Error::Spec(format!("user namespace: {e}")))?;
    }
    Ok(plan)
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
fn userns_fallback(op: &MountOp, cgroup_root: &Path) -> Result<Option<Fallback>> {
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

    #[test]
    fn every_capability_converts() {
        for name in caps::all() {
            let oci: oci_spec::runtime::Capability =
                serde_json_like(&name.to_string()).expect("oci capability");
            assert_eq!(capability(&oci).expect("convert"), name);
        }
    }

    /// Parses "CAP_X" through the OCI type's FromStr ("X").
    fn serde_json_like(name: &str) -> Option<oci_spec::runtime::Capability> {
        name.strip_prefix("CAP_")?.parse().ok()
    }

    #[test]
    fn namespaces_default_and_refuse_what_is_unsupported() {
        let spec = Spec::default();
        // The default spec lists pid, network, ipc, uts, mount, cgroup.
        let ns = ns_plan(&spec).expect("plan");
        assert_eq!(ns.pid, PidNs::New);
        assert_eq!(
            ns.unshare,
            libc::CLONE_NEWNS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWCGROUP
        );
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_namespaces(None);
        let mut spec2 = spec.clone();
        spec2.set_linux(Some(linux.clone()));
        let ns = ns_plan(&spec2).expect("plan");
        assert_eq!(
            ns.unshare,
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS
        );
        assert!(ns.has_uts);
        linux.set_namespaces(Some(
            oci_spec::runtime::get_default_namespaces()
                .into_iter()
                .chain([oci_spec::runtime::LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .build()
                    .expect("ns")])
                .collect(),
        ));
        spec2.set_linux(Some(linux.clone()));
        let err = ns_plan(&spec2).expect_err("user ns");
        assert_eq!(
            err.to_string(),
            "invalid spec: creating a user namespace is not supported: a container can only \
             join one by path (the pod's)"
        );
        // Joined by path: the user namespace, with the spec's mappings, apart from the
        // others.
        let user = |path: Option<&str>| {
            let mut b =
                oci_spec::runtime::LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
            if let Some(p) = path {
                b = b.path(p);
            }
            b.build().expect("ns")
        };
        let mapping = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100_000u32)
            .size(65536u32)
            .build()
            .expect("mapping");
        linux.set_namespaces(Some(
            oci_spec::runtime::get_default_namespaces()
                .into_iter()
                .chain([user(Some("/proc/7/ns/user"))])
                .collect(),
        ));
        linux.set_uid_mappings(Some(vec![mapping]));
        linux.set_gid_mappings(Some(vec![mapping]));
        spec2.set_linux(Some(linux.clone()));
        let ns = ns_plan(&spec2).expect("plan");
        assert_eq!(
            ns.user,
            Some(UserNsPlan {
                path: PathBuf::from("/proc/7/ns/user"),
                mappings: Some(crate::executor::userns::tests::pod(100_000)),
            })
        );
        assert_eq!(ns.unshare & libc::CLONE_NEWUSER, 0);
        assert!(ns.join.is_empty());
        assert!(ns.pid_in_userns(), "a new PID namespace inside it");
        assert_eq!(
            ns.described_joins(),
            vec![(PathBuf::from("/proc/7/ns/user"), libc::CLONE_NEWUSER)]
        );
        // Mappings the kernel would refuse are refused here.
        let bad = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100_000u32)
            .size(0u32)
            .build()
            .expect("mapping");
        linux.set_uid_mappings(Some(vec![bad]));
        spec2.set_linux(Some(linux.clone()));
        assert_eq!(
            ns_plan(&spec2).expect_err("bad").to_string(),
            "invalid spec: user namespace: uid mapping 0 has length 0"
        );
        // Mappings without a user namespace make no sense.
        linux.set_uid_mappings(Some(vec![mapping]));
        linux.set_namespaces(None);
        spec2.set_linux(Some(linux));
        assert_eq!(
            ns_plan(&spec2).expect_err("no userns").to_string(),
            "invalid spec: uidMappings or gidMappings without a user namespace"
        );
    }

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

    #[test]
    fn process_plan_searches_path_in_order() {
        let mut p = Process::default();
        p.set_args(Some(vec!["sh".into(), "-c".into(), "true".into()]));
        p.set_env(Some(vec!["PATH=/bin:/usr/bin/".into(), "A=b".into()]));
        let plan = process_plan(&p, SeccompPlan::default(), &caps::all()).expect("plan");
        assert_eq!(
            plan.candidates,
            vec![c"/bin/sh".to_owned(), c"/usr/bin/sh".to_owned()]
        );
        assert_eq!(plan.umask, 0o022);
        // Default capabilities: AUDIT_WRITE, KILL, NET_BIND_SERVICE; the rest dropped.
        let caps = plan.caps.expect("caps");
        assert!(caps.drop_bounding.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!caps.drop_bounding.contains(&Capability::CAP_KILL));
        p.set_args(Some(vec!["./run".into()]));
        let plan = process_plan(&p, SeccompPlan::default(), &caps::all()).expect("plan");
        assert_eq!(plan.candidates, vec![c"./run".to_owned()]);
        p.set_args(Some(vec![]));
        assert!(process_plan(&p, SeccompPlan::default(), &caps::all()).is_err());
    }
}
