//! The process part of a plan, for `create` and `exec` alike: the program and where to look
//! for it, its user, capabilities, rlimits and seccomp filters.

use std::ffi::CString;

use caps::{Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimitType, Process};
use seccompiler::BpfProgram;

use super::super::error::{Error, Result};
use super::{cstring, path_cstring};

/// The `PATH` used to find the program when the process's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

#[cfg(test)]
mod tests {
    use super::*;

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
