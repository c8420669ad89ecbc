//! Seccomp: compiling the spec's `linux.seccomp` to BPF with `seccompiler`, and the
//! RuntimeDefault profile the host puts into specs.
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
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::error::{Error, Result};
use super::plan::SeccompPlan;

#[cfg(target_arch = "x86_64")]
mod table_x86_64;

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

/// Names a syscall rule.
fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().unwrap_or_default()
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .unwrap_or_default()
}

/// The system calls RuntimeDefault allows to every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // x86_64 only.
    "arch_prctl",
    "modify_ldt",
];

/// Calls RuntimeDefault allows only when the container's bounding set has a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The RuntimeDefault seccomp profile for a container whose bounding set is `bounding`.
///
/// It is an allowlist, like Docker's and containerd's default profiles (moby
/// `profiles/seccomp/default.json`): the default action is ERRNO(EPERM); the calls every
/// program needs are allowed; the ones guarded by a capability are allowed only when the
/// bounding set has it. So a container without CAP_SYS_ADMIN gets EPERM from mount,
/// umount2, unshare, setns, bpf, perf_event_open..., and every container gets it from
/// kexec_load, init/finit/delete_module (without CAP_SYS_MODULE), reboot (without
/// CAP_SYS_BOOT), swapon/swapoff, keyctl/add_key/request_key, userfaultfd, open_by_handle_at
/// (without CAP_DAC_READ_SEARCH), clock_settime/settimeofday (without CAP_SYS_TIME), acct,
/// quotactl, lookup_dcookie, pivot_root, uselib, ustat, sysfs, _sysctl, nfsservctl,
/// personality with unusual domains, and anything newer than this list.
///
/// An allowlist rather than a denylist: a system call added to a later kernel is refused
/// until someone decides it is safe, instead of being open until someone notices.
///
/// Departures from Docker's: io_uring_* are not allowed (Docker dropped them in 25.0 too:
/// they bypass the filter); ptrace and process_vm_* need CAP_SYS_PTRACE (Docker allows them
/// on kernels >= 4.8; the guest kernel is newer, but a pod rarely needs them and the
/// capability states the intent); newer calls (cachestat, futex_wake/wait/requeue,
/// fchmodat2, map_shadow_stack, mseal) are allowed; clone is allowed without namespace
/// flags (and fully with CAP_SYS_ADMIN), and clone3 answers ENOSYS without CAP_SYS_ADMIN
/// so that glibc falls back to clone (its flags sit behind a pointer the filter cannot
/// read).
pub fn runtime_default(bounding: &Capabilities) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let mut syscalls = vec![rule(ALLOWED, Allow, None, vec![])];
    // personality: only the usual domains (PER_LINUX, PER_LINUX32, UNAME26 forms, query).
    for v in [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(rule(
            &["personality"],
            Allow,
            None,
            vec![arg(0, v, 0, LinuxSeccompOperator::ScmpCmpEq)],
        ));
    }
    for (cap, names) in BY_CAPABILITY {
        if bounding.contains(cap) {
            syscalls.push(rule(names, Allow, None, vec![]));
        }
    }
    if !bounding.contains(&Capability::SysAdmin) {
        let ns_flags = (libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP) as u64;
        syscalls.push(rule(
            &["clone"],
            Allow,
            None,
            vec![arg(0, ns_flags, 0, LinuxSeccompOperator::ScmpCmpMaskedEq)],
        ));
        syscalls.push(rule(&["clone3"], Errno, Some(libc::ENOSYS as u32), vec![]));
    }
    LinuxSeccompBuilder::default()
        .default_action(Errno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn nr(name: &str) -> i64 {
        syscall_number(name).expect(name)
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

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
    fn runtime_default_allows_the_usual_and_refuses_the_dangerous() {
        let bounding: Capabilities =
            [Capability::Chown, Capability::Kill, Capability::Setuid].into();
        let plan = compile(&runtime_default(&bounding)).expect("compile");
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "exit_group",
            "futex",
            "mmap",
            "wait4",
        ] {
            assert_eq!(verdict(&plan, nr(name), [0; 6]), ALLOW, "{name}");
        }
        for name in [
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "ptrace",
            "open_by_handle_at",
            "clock_settime",
            "settimeofday",
            "acct",
            "quotactl",
            "lookup_dcookie",
            "io_uring_setup",
            "chroot",
        ] {
            assert_eq!(verdict(&plan, nr(name), [0; 6]), EPERM, "{name}");
        }
        // clone: a plain fork is fine, a new namespace is not.
        assert_eq!(
            verdict(&plan, nr("clone"), [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(
                &plan,
                nr("clone"),
                [(libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(verdict(&plan, nr("clone3"), [0; 6]), ENOSYS);
        assert_eq!(verdict(&plan, nr("personality"), [0; 6]), ALLOW);
        assert_eq!(
            verdict(&plan, nr("personality"), [0x0040000, 0, 0, 0, 0, 0]),
            EPERM
        );
        // x32 numbers are refused whatever the profile says.
        assert_eq!(verdict(&plan, nr("read") | 0x4000_0000, [0; 6]), ENOSYS);
    }

    #[test]
    fn runtime_default_follows_the_bounding_set() {
        let bounding: Capabilities = [
            Capability::SysAdmin,
            Capability::SysChroot,
            Capability::SysPtrace,
        ]
        .into();
        let plan = compile(&runtime_default(&bounding)).expect("compile");
        for name in ["mount", "unshare", "setns", "clone3", "chroot", "ptrace"] {
            assert_eq!(verdict(&plan, nr(name), [0; 6]), ALLOW, "{name}");
        }
        assert_eq!(
            verdict(
                &plan,
                nr("clone"),
                [(libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0]
            ),
            ALLOW
        );
        // Never allowed, whatever the capabilities.
        for name in [
            "swapoff",
            "kexec_load",
            "keyctl",
            "userfaultfd",
            "pivot_root",
        ] {
            assert_eq!(verdict(&plan, nr(name), [0; 6]), EPERM, "{name}");
        }
    }

    #[test]
    fn a_denylist_profile_with_mixed_actions() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(&["swapoff"], LinuxSeccompAction::ScmpActErrno, None, vec![]),
                rule(
                    &["mount"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EACCES as u32),
                    vec![],
                ),
                rule(
                    &["kill"],
                    LinuxSeccompAction::ScmpActKillProcess,
                    None,
                    vec![arg(1, 9, 0, LinuxSeccompOperator::ScmpCmpEq)],
                ),
                rule(
                    &["no_such_call", "chown32"],
                    LinuxSeccompAction::ScmpActErrno,
                    None,
                    vec![],
                ),
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
