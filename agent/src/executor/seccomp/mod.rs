//! Seccomp: compiling the spec's `linux.seccomp` to BPF with `seccompiler`. The
//! RuntimeDefault profile the host puts into specs is in `default_profile`.
//!
//! # Compiling
//!
//! `seccompiler` builds one filter with one action on match and one on mismatch; an OCI
//! profile gives each rule its own action. The profile is therefore split into filters that
//! the kernel stacks (it runs them all and takes the most severe answer: kill > trap >
//! errno > trace > log > allow):
//! - the *default* filter: every syscall some rule names (with that rule's argument
//!   conditions) is allowed, everything else gets the default action;
//! - one filter per other action: its rules get that action, everything else is allowed.
//!
//! A call matching a rule thus gets that rule's action; a call matching none gets the
//! default action. Where two rules with different actions match the same call, the more
//! severe action wins (libseccomp leaves that case to its own ordering).
//!
//! Only the native architecture (x86_64) is filtered: a call from another one (i386 via
//! `int 0x80`) kills the process, as libseccomp does for architectures a profile does not
//! list, and a leading filter answers x32 calls with ENOSYS, so that a profile whose default
//! is allow cannot be bypassed through the x32 numbers. Names this kernel table does not
//! know (other architectures' calls, `chown32`...) are skipped, as runc does.
//! SCMP_ACT_NOTIFY (a seccomp agent) is refused.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::error::{Error, Result};
use super::plan::SeccompPlan;

mod default_profile;
#[cfg(target_arch = "x86_64")]
mod table_x86_64;

pub use default_profile::runtime_default;

/// The number of a system call on this architecture.
#[cfg(target_arch = "x86_64")]
pub(crate) fn syscall_number(name: &str) -> Option<i64> {
    let t = table_x86_64::SYSCALLS;
    t.binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| t[i].1)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn syscall_number(_name: &str) -> Option<i64> {
    None
}

fn target_arch() -> Result<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else {
        Err(Error::Seccomp(format!(
            "{} is not supported",
            std::env::consts::ARCH
        )))
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction> {
    use LinuxSeccompAction as A;
    Ok(match a {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        A::ScmpActLog => SeccompAction::Log,
        A::ScmpActNotify => {
            return Err(Error::Seccomp("SCMP_ACT_NOTIFY is not supported".into()));
        }
    })
}

/// A key to group rules by action (SeccompAction is not Ord).
fn action_key(a: &SeccompAction) -> u32 {
    u32::from(a.clone())
}

fn condition(arg: &LinuxSeccompArg) -> Result<SeccompCondition> {
    use LinuxSeccompOperator as O;
    let (op, value) = match arg.op() {
        O::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        O::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        O::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        O::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        O::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        O::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp: (arg & value) == valueTwo.
        O::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| Error::Seccomp(format!("argument index {} is out of range", arg.index())))?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| Error::Seccomp(e.to_string()))
}

/// syscall number -> rules; an empty rule list matches unconditionally.
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

struct Group {
    action: SeccompAction,
    rules: Rules,
    unconditional: std::collections::HashSet<i64>,
}

impl Group {
    fn add(&mut self, nr: i64, rule: Option<SeccompRule>) {
        if self.unconditional.contains(&nr) {
            return;
        }
        match rule {
            None => {
                self.unconditional.insert(nr);
                self.rules.insert(nr, vec![]);
            }
            Some(r) => self.rules.entry(nr).or_default().push(r),
        }
    }
}

fn compile_filter(
    rules: Rules,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(rules, mismatch, on_match, target_arch()?)
        .map_err(|e| Error::Seccomp(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| Error::Seccomp(e.to_string()))
}

/// A filter answering x32 system calls (x86_64 with bit 30 set) with ENOSYS.
fn x32_guard() -> BpfProgram {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u16, k: u32| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| sock_filter { code, jt, jf, k };
    let (ld_w_abs, jeq_k, jset_k, ret_k) = (0x20, 0x15, 0x45, 0x06);
    vec![
        stmt(ld_w_abs, 4), // seccomp_data.arch
        jump(jeq_k, AUDIT_ARCH_X86_64, 0, 3),
        stmt(ld_w_abs, 0), // seccomp_data.nr
        jump(jset_k, X32_SYSCALL_BIT, 0, 1),
        stmt(ret_k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret_k, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Compiles a profile into the filters to install, in order.
pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<SeccompPlan> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    if let Some(archs) = profile.architectures()
        && !archs.is_empty()
        && !archs
            .iter()
            .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative))
    {
        return Err(Error::Seccomp(
            "the profile does not list SCMP_ARCH_X86_64".into(),
        ));
    }
    let mut flags = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        } as libc::c_uint;
    }
    let mut allow_group = Group {
        action: SeccompAction::Allow,
        rules: Rules::new(),
        unconditional: Default::default(),
    };
    let mut groups: BTreeMap<u32, Group> = BTreeMap::new();
    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        if act == default {
            continue;
        }
        let conds = sc
            .args()
            .iter()
            .flatten()
            .map(condition)
            .collect::<Result<Vec<_>>>()?;
        let rule = if conds.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conds).map_err(|e| Error::Seccomp(e.to_string()))?)
        };
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            allow_group.add(nr, rule.clone());
            if act != SeccompAction::Allow {
                groups
                    .entry(action_key(&act))
                    .or_insert_with(|| Group {
                        action: act.clone(),
                        rules: Rules::new(),
                        unconditional: Default::default(),
                    })
                    .add(nr, rule.clone());
            }
        }
    }
    let mut programs = vec![x32_guard()];
    if default != SeccompAction::Allow {
        programs.push(compile_filter(
            allow_group.rules,
            default,
            SeccompAction::Allow,
        )?);
    }
    for g in groups.into_values() {
        programs.push(compile_filter(g.rules, SeccompAction::Allow, g.action)?);
    }
    Ok(SeccompPlan { programs, flags })
}

#[cfg(test)]
mod tests {
    use super::default_profile::{arg, rule};
    use super::*;
    use oci_spec::runtime::LinuxSeccompBuilder;

    /// Runs a classic-BPF seccomp program on (arch, nr, args), as the kernel would.
    pub(crate) fn run(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&(nr as i32).to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            match i.code {
                0x20 => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes([data[k], data[k + 1], data[k + 2], data[k + 3]]);
                }
                0x06 => return i.k,
                0x05 => {
                    pc += i.k as usize;
                }
                c if c & 0x07 == 0x05 => {
                    let taken = match c & 0xf0 {
                        0x10 => acc == i.k,
                        0x20 => acc > i.k,
                        0x30 => acc >= i.k,
                        0x40 => acc & i.k != 0,
                        other => panic!("jump op {other:#x}"),
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                0x54 => acc &= i.k,
                other => panic!("opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    /// What the stacked filters answer: the most severe answer, as the kernel takes it.
    pub(crate) fn verdict(plan: &SeccompPlan, nr: i64, args: [u64; 6]) -> u32 {
        let rank = |r: u32| match r & libc::SECCOMP_RET_ACTION_FULL {
            libc::SECCOMP_RET_KILL_PROCESS => 0,
            libc::SECCOMP_RET_KILL_THREAD => 1,
            libc::SECCOMP_RET_TRAP => 2,
            libc::SECCOMP_RET_ERRNO => 3,
            libc::SECCOMP_RET_TRACE => 5,
            libc::SECCOMP_RET_LOG => 6,
            _ => 7,
        };
        plan.programs
            .iter()
            .map(|p| run(p, 0xc000_003e, nr, args))
            .min_by_key(|r| rank(*r))
            .unwrap_or(libc::SECCOMP_RET_ALLOW)
    }

    pub(super) fn nr(name: &str) -> i64 {
        syscall_number(name).expect(name)
    }

    pub(super) const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    pub(super) const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    pub(super) const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    #[test]
    fn the_table_is_sorted_and_matches_libc() {
        let t = table_x86_64::SYSCALLS;
        assert!(
            t.windows(2).all(|w| w[0].0 < w[1].0),
            "table must be sorted by name"
        );
        for (name, n) in [
            ("read", libc::SYS_read),
            ("clone3", libc::SYS_clone3),
            ("swapoff", libc::SYS_swapoff),
            ("kexec_load", libc::SYS_kexec_load),
            ("pidfd_open", libc::SYS_pidfd_open),
            ("futex_waitv", libc::SYS_futex_waitv),
            ("fchmodat2", libc::SYS_fchmodat2),
            ("mseal", libc::SYS_mseal),
        ] {
            assert_eq!(syscall_number(name), Some(n), "{name}");
        }
        assert_eq!(syscall_number("chown32"), None);
    }

    #[test]
    fn a_denylist_profile_with_mixed_actions() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(&["swapoff"], LinuxSeccompAction::ScmpActErrno, None, vec![]).expect("rule"),
                rule(
                    &["mount"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EACCES as u32),
                    vec![],
                )
                .expect("rule"),
                rule(
                    &["kill"],
                    LinuxSeccompAction::ScmpActKillProcess,
                    None,
                    vec![arg(1, 9, 0, LinuxSeccompOperator::ScmpCmpEq).expect("arg")],
                )
                .expect("rule"),
                rule(
                    &["no_such_call", "chown32"],
                    LinuxSeccompAction::ScmpActErrno,
                    None,
                    vec![],
                )
                .expect("rule"),
            ])
            .build()
            .expect("profile");
        let plan = compile(&profile).expect("compile");
        assert_eq!(verdict(&plan, nr("read"), [0; 6]), ALLOW);
        assert_eq!(verdict(&plan, nr("swapoff"), [0; 6]), EPERM);
        assert_eq!(
            verdict(&plan, nr("mount"), [0; 6]),
            libc::SECCOMP_RET_ERRNO | libc::EACCES as u32
        );
        assert_eq!(
            verdict(&plan, nr("kill"), [1, 9, 0, 0, 0, 0]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(verdict(&plan, nr("kill"), [1, 15, 0, 0, 0, 0]), ALLOW);
        // The x32 bypass of a denylist is closed.
        assert_eq!(verdict(&plan, nr("swapoff") | 0x4000_0000, [0; 6]), ENOSYS);
    }

    #[test]
    fn notify_and_foreign_profiles_are_refused() {
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .expect("profile");
        assert!(compile(&p).is_err());
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .architectures(vec![Arch::ScmpArchAarch64])
            .build()
            .expect("profile");
        assert_eq!(
            compile(&p).expect_err("arch").to_string(),
            "seccomp: the profile does not list SCMP_ARCH_X86_64"
        );
    }
}
