//! What the container's process does between the fork and `execve`, as calls on the
//! `Syscall` seam: enter the namespaces, build the rootfs and pivot into it, then become
//! the process the spec describes. Each failure names its step; the parent turns the step
//! into words with the plan (`describe`).

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::errno::Errno;

use super::error::Error;
use super::plan::{Fallback, NsPlan, ProcessPlan, RootfsPlan};
use super::sys::{CVec, FileKind, Syscall};

/// The steps that can fail, as sent over the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum StepKind {
    Setns = 1,
    Unshare,
    Propagation,
    BindRootfs,
    MountTarget,
    Mount,
    Remount,
    MountPropagation,
    Device,
    Symlink,
    PivotRoot,
    Console,
    Mask,
    Readonly,
    RootReadonly,
    Hostname,
    Domainname,
    Sysctl,
    Rlimit,
    OomScoreAdj,
    Seccomp,
    Bounding,
    KeepCaps,
    Setgroups,
    Setgid,
    Setuid,
    Caps,
    Ambient,
    Chdir,
    NoNewPrivs,
    Exec,
    Stdio,
    Wait,
    UserRoot,
    PidNamespace,
    Clone,
    MountFallback,
}

impl StepKind {
    fn from_u32(v: u32) -> Option<Self> {
        use StepKind::*;
        const ALL: [StepKind; 37] = [
            Setns,
            Unshare,
            Propagation,
            BindRootfs,
            MountTarget,
            Mount,
            Remount,
            MountPropagation,
            Device,
            Symlink,
            PivotRoot,
            Console,
            Mask,
            Readonly,
            RootReadonly,
            Hostname,
            Domainname,
            Sysctl,
            Rlimit,
            OomScoreAdj,
            Seccomp,
            Bounding,
            KeepCaps,
            Setgroups,
            Setgid,
            Setuid,
            Caps,
            Ambient,
            Chdir,
            NoNewPrivs,
            Exec,
            Stdio,
            Wait,
            UserRoot,
            PidNamespace,
            Clone,
            MountFallback,
        ];
        ALL.into_iter().find(|k| *k as u32 == v)
    }
}

/// Index meaning "the program was on no directory of PATH".
pub(crate) const NOT_FOUND: u32 = u32::MAX;

/// A failed step: which one, which item of its list, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub kind: StepKind,
    pub index: u32,
    pub errno: Errno,
}

impl Failure {
    fn new(kind: StepKind, index: usize, errno: Errno) -> Self {
        Failure {
            kind,
            index: index as u32,
            errno,
        }
    }

    /// The 12 bytes sent over the pipe.
    pub(crate) fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&(self.kind as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..].copy_from_slice(&(self.errno as i32).to_ne_bytes());
        b
    }

    /// The inverse of `encode`.
    pub(crate) fn decode(b: &[u8; 12]) -> Option<Self> {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Some(Failure {
            kind: StepKind::from_u32(u32::from_ne_bytes(word(0)))?,
            index: u32::from_ne_bytes(word(4)),
            errno: Errno::from_raw(i32::from_ne_bytes(word(8))),
        })
    }
}

fn at(kind: StepKind, index: usize) -> impl FnOnce(Errno) -> Failure {
    move |e| Failure::new(kind, index, e)
}

/// Sets the rlimits and oom_score_adj of `p`.
fn process_attrs<S: Syscall>(sys: &S, p: &ProcessPlan) -> Result<(), Failure> {
    use StepKind as K;
    for (i, &(resource, soft, hard, _)) in p.rlimits.iter().enumerate() {
        sys.setrlimit(resource, soft, hard)
            .map_err(at(K::Rlimit, i))?;
    }
    if let Some(adj) = &p.oom_score_adj {
        sys.write_file(c"/proc/self/oom_score_adj", adj)
            .map_err(at(K::OomScoreAdj, 0))?;
    }
    Ok(())
}

/// Enters a user namespace, first doing what needs the VM's root: the rlimits and
/// oom_score_adj of `p` (a hard limit cannot be raised, nor the score lowered, with
/// capabilities of a user namespace only), and joining the namespaces of `ns_fds` (which
/// the VM's user namespace may own). Then setns(2) into `user_fd`, which gives every
/// capability in it, and becomes its root: no supplementary groups, gid and uid 0 inside
/// (the mapped ids outside). What the process unshares afterwards the user namespace owns.
/// A failed join is `Setns` with the index of `ns_fds`, the user namespace's being
/// `ns_fds.len()`.
pub(crate) fn enter_user_namespace<S: Syscall>(
    sys: &S,
    p: &ProcessPlan,
    ns_fds: &[(RawFd, libc::c_int)],
    user_fd: RawFd,
) -> Result<(), Failure> {
    use StepKind as K;
    process_attrs(sys, p)?;
    for (i, &(fd, nstype)) in ns_fds.iter().enumerate() {
        sys.setns(fd, nstype).map_err(at(K::Setns, i))?;
    }
    sys.setns(user_fd, libc::CLONE_NEWUSER)
        .map_err(at(K::Setns, ns_fds.len()))?;
    sys.setgroups(&[]).map_err(at(K::UserRoot, 0))?;
    sys.setresgid(0).map_err(at(K::UserRoot, 1))?;
    sys.setresuid(0).map_err(at(K::UserRoot, 2))?;
    Ok(())
}

/// Makes a new PID namespace owned by the user namespace the caller is in (a thread of the
/// agent cannot be in it, so the forking thread cannot make it) and forks the process that
/// is its PID 1, with CLONE_PARENT: a sibling of the caller, the agent's own child.
/// Returns its pid in the caller, 0 in it.
pub(crate) fn fork_into_new_pid_namespace<S: Syscall>(sys: &S) -> Result<i32, Failure> {
    use StepKind as K;
    sys.unshare(libc::CLONE_NEWPID)
        .map_err(at(K::PidNamespace, 0))?;
    sys.clone_parent().map_err(at(K::Clone, 0))
}

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

/// Becomes the process: rlimits, oom_score_adj (unless `enter_user_namespace` set them
/// already), (seccomp, when there are no no_new_privs), bounding set, user and groups,
/// capabilities, umask, cwd, no_new_privs. In a user namespace the user, groups and
/// capabilities are those inside it.
pub(crate) fn setup_process<S: Syscall>(sys: &S, p: &ProcessPlan) -> Result<(), Failure> {
    use StepKind as K;
    if !p.userns {
        process_attrs(sys, p)?;
    }
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it
    // (the calls after it must then pass it, as with runc).
    if !p.no_new_privs {
        load_seccomp(sys, p)?;
    }
    if let Some(caps) = &p.caps {
        for (i, &cap) in caps.drop_bounding.iter().enumerate() {
            sys.drop_bounding(cap).map_err(at(K::Bounding, i))?;
        }
        sys.set_keepcaps(true).map_err(at(K::KeepCaps, 0))?;
    }
    sys.setgroups(&p.groups).map_err(at(K::Setgroups, 0))?;
    sys.setresgid(p.gid).map_err(at(K::Setgid, 0))?;
    sys.setresuid(p.uid).map_err(at(K::Setuid, 0))?;
    if let Some(caps) = &p.caps {
        sys.set_keepcaps(false).map_err(at(K::KeepCaps, 0))?;
        sys.set_caps(CapSet::Effective, &caps.effective)
            .map_err(at(K::Caps, 0))?;
        sys.set_caps(CapSet::Permitted, &caps.permitted)
            .map_err(at(K::Caps, 1))?;
        sys.set_caps(CapSet::Inheritable, &caps.inheritable)
            .map_err(at(K::Caps, 2))?;
        sys.set_ambient(&caps.ambient).map_err(at(K::Ambient, 0))?;
    }
    sys.umask(p.umask);
    sys.chdir(&p.cwd).map_err(at(K::Chdir, 0))?;
    if p.no_new_privs {
        sys.set_no_new_privs().map_err(at(K::NoNewPrivs, 0))?;
    }
    Ok(())
}

fn load_seccomp<S: Syscall>(sys: &S, p: &ProcessPlan) -> Result<(), Failure> {
    for (i, prog) in p.seccomp.programs.iter().enumerate() {
        sys.seccomp(prog, p.seccomp.flags)
            .map_err(at(StepKind::Seccomp, i))?;
    }
    Ok(())
}

/// Loads seccomp (with no_new_privs, as late as possible) and execs the first candidate
/// that exists. Returns only on failure.
pub(crate) fn exec<S: Syscall>(
    sys: &S,
    p: &ProcessPlan,
    argv: &CVec<'_>,
    envp: &CVec<'_>,
) -> Failure {
    if p.no_new_privs
        && let Err(f) = load_seccomp(sys, p)
    {
        return f;
    }
    let mut denied = None;
    for (i, path) in p.candidates.iter().enumerate() {
        match sys.execve(path, argv, envp) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => {
                denied.get_or_insert(i);
            }
            e => return Failure::new(StepKind::Exec, i, e),
        }
    }
    match denied {
        Some(i) => Failure::new(StepKind::Exec, i, Errno::EACCES),
        None if p.candidates.len() == 1 && p.arg0.contains('/') => {
            Failure::new(StepKind::Exec, 0, Errno::ENOENT)
        }
        None => Failure {
            kind: StepKind::Exec,
            index: NOT_FOUND,
            errno: Errno::ENOENT,
        },
    }
}

fn ns_name(t: libc::c_int) -> &'static str {
    match t {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNET => "network",
        _ => "a",
    }
}

fn lossy(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

/// The error for a failure, in words taken from the plan.
pub(crate) fn describe(
    f: Failure,
    join: &[(PathBuf, libc::c_int)],
    root: Option<&RootfsPlan>,
    p: &ProcessPlan,
) -> Error {
    use StepKind as K;
    let i = f.index as usize;
    let mount = |i: usize| root.and_then(|r| r.mounts.get(i));
    let what = match f.kind {
        K::Setns => match join.get(i) {
            Some((path, t)) => format!("join {} namespace {}", ns_name(*t), path.display()),
            None => "join a namespace".into(),
        },
        K::Unshare => "unshare namespaces".into(),
        K::Propagation => "set the propagation of /".into(),
        K::BindRootfs => format!(
            "bind the rootfs {}",
            root.map(|r| lossy(&r.rootfs)).unwrap_or_default()
        ),
        K::MountTarget => match mount(i) {
            Some(m) => format!("create the mount point {}", m.destination),
            None => "create a mount point".into(),
        },
        K::Mount | K::Remount | K::MountPropagation => match mount(i) {
            Some(m) => {
                let verb = match f.kind {
                    K::Remount => "remount",
                    K::MountPropagation => "set the propagation of",
                    _ => "mount",
                };
                if m.kind == "bind" {
                    let src = m.source.as_deref().map(lossy).unwrap_or_default();
                    format!("{verb} bind {src} on {}", m.destination)
                } else {
                    format!("{verb} {} on {}", m.kind, m.destination)
                }
            }
            None => "mount".into(),
        },
        K::Device => match root.and_then(|r| r.devices.get(i)) {
            Some(d) => match &d.bind {
                Some(source) => format!("bind device {} on {}", lossy(source), d.name),
                None => format!("mknod {}", d.name),
            },
            None => "mknod".into(),
        },
        K::MountFallback => match mount(i) {
            Some(m) => match &m.fallback {
                Some(Fallback::Bind { source, .. }) => format!(
                    "bind {} on {} (for {}, which the user namespace may not mount)",
                    lossy(source),
                    m.destination,
                    m.kind
                ),
                _ => format!("mount {} on {}", m.kind, m.destination),
            },
            None => "mount".into(),
        },
        K::UserRoot => "become root of the user namespace".into(),
        K::PidNamespace => "unshare the PID namespace in the user namespace".into(),
        K::Clone => "fork the container's init into its PID namespace".into(),
        K::Symlink => format!(
            "symlink {}",
            root.and_then(|r| r.symlinks.get(i))
                .map(|(_, l)| lossy(l))
                .unwrap_or_default()
        ),
        K::PivotRoot => format!(
            "pivot_root {}",
            root.map(|r| lossy(&r.rootfs)).unwrap_or_default()
        ),
        K::Console => "set up the console".into(),
        K::Mask => format!(
            "mask {}",
            root.and_then(|r| r.masked.get(i))
                .map(|c| lossy(c))
                .unwrap_or_default()
        ),
        K::Readonly => format!(
            "make {} read-only",
            root.and_then(|r| r.readonly.get(i))
                .map(|c| lossy(c))
                .unwrap_or_default()
        ),
        K::RootReadonly => "make / read-only".into(),
        K::Hostname => format!(
            "sethostname {}",
            root.and_then(|r| r.hostname.as_deref())
                .map(lossy)
                .unwrap_or_default()
        ),
        K::Domainname => "setdomainname".into(),
        K::Sysctl => format!(
            "sysctl {}",
            root.and_then(|r| r.sysctls.get(i))
                .map(|s| s.2.clone())
                .unwrap_or_default()
        ),
        K::Rlimit => format!(
            "setrlimit {}",
            p.rlimits.get(i).map(|r| r.3.clone()).unwrap_or_default()
        ),
        K::OomScoreAdj => "write oom_score_adj".into(),
        K::Seccomp => "load the seccomp filter".into(),
        K::Bounding => format!(
            "drop {} from the bounding set",
            p.caps
                .as_ref()
                .and_then(|c| c.drop_bounding.get(i))
                .map(|c| c.to_string())
                .unwrap_or_default()
        ),
        K::KeepCaps => "set keepcaps".into(),
        K::Setgroups => format!("setgroups {:?}", p.groups),
        K::Setgid => format!("setgid {}", p.gid),
        K::Setuid => format!("setuid {}", p.uid),
        K::Caps => format!(
            "set the {} capabilities",
            ["effective", "permitted", "inheritable"]
                .get(i)
                .copied()
                .unwrap_or("")
        ),
        K::Ambient => "set the ambient capabilities".into(),
        K::Chdir => format!("chdir {}", lossy(&p.cwd)),
        K::NoNewPrivs => "set no_new_privs".into(),
        K::Exec if f.index == NOT_FOUND => return Error::NotFound(p.arg0.clone()),
        K::Exec => format!(
            "exec {}",
            p.candidates
                .get(i)
                .map(|c| lossy(c))
                .unwrap_or_else(|| p.arg0.clone())
        ),
        K::Stdio => "set up stdio".into(),
        K::Wait => "wait for the parent".into(),
    };
    Error::Setup {
        what,
        errno: f.errno,
    }
}

/// The /proc path of a namespace of `pid`.
pub(crate) fn ns_path(pid: i32, name: &str) -> PathBuf {
    Path::new("/proc")
        .join(pid.to_string())
        .join("ns")
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::plan::{self, SeccompPlan};
    use crate::executor::sys::{Call, Recorder};
    use oci_spec::runtime::{LinuxBuilder, MountBuilder, ProcessBuilder, Spec, UserBuilder};
    use std::ffi::CString;

    fn spec() -> Spec {
        let mut spec = Spec::default();
        spec.set_hostname(Some("box".into()));
        let mut mounts = oci_spec::runtime::get_default_mounts();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/tmp")
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .expect("mount"),
        );
        spec.set_mounts(Some(mounts));
        let linux = LinuxBuilder::default()
            .masked_paths(vec!["/proc/kcore".to_string(), "/proc/acpi".to_string()])
            .readonly_paths(vec!["/proc/sys".to_string()])
            .build()
            .expect("linux");
        spec.set_linux(Some(linux));
        let process = ProcessBuilder::default()
            .args(vec!["/bin/sh".to_string()])
            .cwd("/home")
            .user(
                UserBuilder::default()
                    .uid(1000u32)
                    .gid(100u32)
                    .additional_gids(vec![10u32])
                    .build()
                    .expect("user"),
            )
            .no_new_privileges(true)
            .capabilities(oci_spec::runtime::LinuxCapabilities::default())
            .build()
            .expect("process");
        spec.set_process(Some(process));
        spec
    }

    fn plan_for(spec: &Spec) -> plan::Plan {
        let seccomp = SeccompPlan {
            programs: vec![vec![]; 2],
            flags: 0,
        };
        plan::plan(
            spec,
            Path::new("/run/rootfs"),
            seccomp,
            Path::new("/sys/fs/cgroup"),
        )
        .expect("plan")
    }

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
    fn process_setup_drops_caps_around_the_user_switch() {
        let spec = spec();
        let plan = plan_for(&spec);
        let rec = Recorder::default();
        setup_process(&rec, &plan.process).expect("setup");
        let calls = rec.calls();
        // The default spec's NOFILE rlimit first.
        assert_eq!(
            calls[0],
            Call::Rlimit(libc::RLIMIT_NOFILE as i32, 1024, 1024)
        );
        let first_drop = calls
            .iter()
            .position(|c| matches!(c, Call::DropBounding(_)))
            .expect("drop");
        assert!(calls.contains(&Call::DropBounding(caps::Capability::CAP_SYS_ADMIN)));
        assert!(!calls.contains(&Call::DropBounding(caps::Capability::CAP_KILL)));
        let tail: Vec<_> = calls[first_drop..]
            .iter()
            .filter(|c| !matches!(c, Call::DropBounding(_)))
            .cloned()
            .collect();
        let default_caps = vec![
            caps::Capability::CAP_KILL,
            caps::Capability::CAP_NET_BIND_SERVICE,
            caps::Capability::CAP_AUDIT_WRITE,
        ];
        assert_eq!(
            tail,
            vec![
                Call::KeepCaps(true),
                Call::Setgroups(vec![10]),
                Call::Setresgid(100),
                Call::Setresuid(1000),
                Call::KeepCaps(false),
                Call::SetCaps("effective", default_caps.clone()),
                Call::SetCaps("permitted", default_caps.clone()),
                Call::SetCaps("inheritable", default_caps.clone()),
                Call::Ambient(default_caps),
                Call::Umask(0o022),
                Call::Chdir("/home".into()),
                Call::NoNewPrivs,
            ]
        );
        // With no_new_privs, seccomp waits for exec.
        assert!(!calls.iter().any(|c| matches!(c, Call::Seccomp(..))));
    }

    #[test]
    fn without_no_new_privs_seccomp_loads_before_the_caps_go() {
        let mut spec = spec();
        spec.process_mut()
            .as_mut()
            .expect("process")
            .set_no_new_privileges(Some(false));
        let plan = plan_for(&spec);
        let rec = Recorder::default();
        setup_process(&rec, &plan.process).expect("setup");
        let calls = rec.calls();
        let seccomp = calls
            .iter()
            .position(|c| matches!(c, Call::Seccomp(..)))
            .expect("seccomp");
        let drop = calls
            .iter()
            .position(|c| matches!(c, Call::DropBounding(_)))
            .expect("drop");
        assert!(seccomp < drop);
        assert!(!calls.contains(&Call::NoNewPrivs));
    }

    #[test]
    fn exec_searches_path_and_reports_what_failed() {
        let mut spec = spec();
        let process = spec.process_mut().as_mut().expect("process");
        process.set_args(Some(vec!["nope".into()]));
        process.set_env(Some(vec!["PATH=/a:/b".into()]));
        let plan = plan_for(&spec);
        let rec = Recorder {
            fail: vec![(|c| matches!(c, Call::Execve(..)), Errno::ENOENT)],
            ..Default::default()
        };
        let argv = CVec::new(&plan.process.argv);
        let envp = CVec::new(&plan.process.envp);
        let f = exec(&rec, &plan.process, &argv, &envp);
        let calls = rec.calls();
        assert_eq!(calls[0], Call::Seccomp(0, 0));
        assert_eq!(calls[1], Call::Seccomp(0, 0));
        assert_eq!(
            calls[2],
            Call::Execve(
                "/a/nope".into(),
                vec!["nope".into()],
                vec!["PATH=/a:/b".into()]
            )
        );
        assert!(matches!(&calls[3], Call::Execve(p, ..) if p == "/b/nope"));
        let err = describe(f, &[], None, &plan.process);
        assert_eq!(
            err.to_string(),
            "exec nope: executable file not found in $PATH"
        );

        let process = spec.process_mut().as_mut().expect("process");
        process.set_args(Some(vec!["/bin/nope".into()]));
        let plan = plan_for(&spec);
        let argv = CVec::new(&plan.process.argv);
        let f = exec(&rec, &plan.process, &argv, &envp);
        let err = describe(f, &[], None, &plan.process);
        assert_eq!(err.to_string(), "exec /bin/nope: No such file or directory");
    }

    #[test]
    fn every_step_survives_the_pipe() {
        for v in 1..=StepKind::MountFallback as u32 {
            let kind = StepKind::from_u32(v).expect("kind");
            let f = Failure {
                kind,
                index: 7,
                errno: Errno::EPERM,
            };
            assert_eq!(Failure::decode(&f.encode()), Some(f));
        }
        assert_eq!(StepKind::from_u32(StepKind::MountFallback as u32 + 1), None);
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

    /// `spec()` joining the user namespace at /proc/7/ns/user, with a PID namespace of its
    /// own.
    fn userns_spec() -> Spec {
        let mut spec = spec();
        let mut linux = spec.linux().clone().expect("linux");
        let mut list = oci_spec::runtime::get_default_namespaces();
        list.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
        list.push(
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(oci_spec::runtime::LinuxNamespaceType::User)
                .path("/proc/7/ns/user")
                .build()
                .expect("ns"),
        );
        linux.set_namespaces(Some(list));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn a_user_namespace_is_entered_before_the_namespaces_it_owns_are_made() {
        let spec = userns_spec();
        let plan = plan_for(&spec);
        assert!(plan.process.userns);
        let rec = Recorder::default();
        let joins = [(3, libc::CLONE_NEWIPC)];
        enter_user_namespace(&rec, &plan.process, &joins, 4).expect("enter");
        assert!(plan.ns.pid_in_userns());
        assert_eq!(fork_into_new_pid_namespace(&rec).expect("fork"), 0);
        setup_rootfs(&rec, &plan.ns, &plan.root, &[], None).expect("rootfs");
        let calls = rec.calls();
        assert_eq!(
            &calls[..10],
            &[
                // What needs the VM's root: the rlimits, the joins...
                Call::Rlimit(libc::RLIMIT_NOFILE as i32, 1024, 1024),
                Call::Setns(3, libc::CLONE_NEWIPC),
                // ...then the user namespace, as its root...
                Call::Setns(4, libc::CLONE_NEWUSER),
                Call::Setgroups(vec![]),
                Call::Setresgid(0),
                Call::Setresuid(0),
                // ...the PID namespace it owns, the init forked into it...
                Call::Unshare(libc::CLONE_NEWPID),
                Call::CloneParent,
                // ...and the other namespaces, which it owns too.
                Call::Unshare(
                    libc::CLONE_NEWNS
                        | libc::CLONE_NEWIPC
                        | libc::CLONE_NEWUTS
                        | libc::CLONE_NEWCGROUP
                ),
                Call::Mount {
                    source: None,
                    target: "/".into(),
                    fstype: None,
                    flags: libc::MS_SLAVE | libc::MS_REC,
                    data: None
                },
            ]
        );
        // The rlimits were set: the process setup does not set them again.
        let rec = Recorder::default();
        setup_process(&rec, &plan.process).expect("process");
        assert!(!rec.calls().iter().any(|c| matches!(c, Call::Rlimit(..))));
        assert!(rec.calls().contains(&Call::Setresuid(1000)));
        // A failed join of the user namespace is named.
        let rec = Recorder {
            fail: vec![(
                |c| matches!(c, Call::Setns(_, t) if *t == libc::CLONE_NEWUSER),
                Errno::EPERM,
            )],
            ..Default::default()
        };
        let f = enter_user_namespace(&rec, &plan.process, &[], 4).expect_err("fails");
        let err = describe(
            f,
            &plan.ns.described_joins(),
            Some(&plan.root),
            &plan.process,
        );
        assert_eq!(
            err.to_string(),
            "join user namespace /proc/7/ns/user: Operation not permitted"
        );
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
