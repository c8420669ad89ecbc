//! The child's failure report: which step failed (`StepKind`), which item of its list, and
//! the errno, as 12 bytes on the report pipe (`Failure::encode`, `Failure::decode`); and
//! its wording for the parent (`describe`), taken from the plan.

use std::ffi::CStr;
use std::path::PathBuf;

use nix::errno::Errno;

use super::error::Error;
use super::plan::{Fallback, ProcessPlan, RootfsPlan};

/// Declares `StepKind` with the wire number of each step, and `StepKind::from_u32`, its
/// inverse, from the one list.
macro_rules! steps {
    ($($step:ident = $n:literal,)*) => {
        /// The steps that can fail, as sent over the pipe.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub(crate) enum StepKind {
            $($step = $n,)*
        }

        impl StepKind {
            /// The step whose wire number is `v`.
            fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $($n => Some(StepKind::$step),)*
                    _ => None,
                }
            }
        }
    };
}

// The wire numbers: never renumber one.
steps! {
    Setns = 1,
    Unshare = 2,
    Propagation = 3,
    BindRootfs = 4,
    MountTarget = 5,
    Mount = 6,
    Remount = 7,
    MountPropagation = 8,
    Device = 9,
    Symlink = 10,
    PivotRoot = 11,
    Console = 12,
    Mask = 13,
    Readonly = 14,
    RootReadonly = 15,
    Hostname = 16,
    Domainname = 17,
    Sysctl = 18,
    Rlimit = 19,
    OomScoreAdj = 20,
    Seccomp = 21,
    Bounding = 22,
    KeepCaps = 23,
    Setgroups = 24,
    Setgid = 25,
    Setuid = 26,
    Caps = 27,
    Ambient = 28,
    Chdir = 29,
    NoNewPrivs = 30,
    Exec = 31,
    Stdio = 32,
    Wait = 33,
    UserRoot = 34,
    PidNamespace = 35,
    Clone = 36,
    MountFallback = 37,
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
    pub(super) fn new(kind: StepKind, index: usize, errno: Errno) -> Self {
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

/// Maps an errno to the failure of item `index` of step `kind`.
pub(super) fn at(kind: StepKind, index: usize) -> impl FnOnce(Errno) -> Failure {
    move |e| Failure::new(kind, index, e)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
