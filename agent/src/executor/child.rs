//! What the container's process does between the fork and `execve`, as calls on the
//! `Syscall` seam: enter a user namespace, then (once `rootfs::setup_rootfs` has entered
//! the other namespaces and built the rootfs) become the process the spec describes and
//! exec it. Each failure names its step (`failure::Failure`); the parent turns the step
//! into words with the plan (`failure::describe`).

use std::os::fd::RawFd;

use caps::CapSet;
use nix::errno::Errno;

use super::failure::{Failure, NOT_FOUND, StepKind, at};
use super::plan::ProcessPlan;
use super::sys::{CVec, Syscall};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::executor::failure::describe;
    use crate::executor::plan::{self, SeccompPlan};
    use crate::executor::rootfs::setup_rootfs;
    use crate::executor::sys::{Call, Recorder};
    use oci_spec::runtime::{LinuxBuilder, MountBuilder, ProcessBuilder, Spec, UserBuilder};
    use std::path::Path;

    /// A spec with a hostname, the default mounts and a read-only bind of /tmp on /data,
    /// masked and read-only paths, and a process running as 1000:100 with no_new_privs.
    pub(crate) fn spec() -> Spec {
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

    /// The plan of `spec` on /run/rootfs, with two (empty) seccomp programs.
    pub(crate) fn plan_for(spec: &Spec) -> plan::Plan {
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

    /// `spec()` joining the user namespace at /proc/7/ns/user, with a PID namespace of its
    /// own.
    pub(crate) fn userns_spec() -> Spec {
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
}
