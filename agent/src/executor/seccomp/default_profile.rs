//! The RuntimeDefault seccomp profile the host puts into specs: an allowlist of system
//! calls, widened by the capabilities of the container's bounding set. `super::compile`
//! turns it into BPF like any other profile.

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};

use crate::executor::error::{Error, Result};

/// A builder that cannot finish fails the profile: never a default, whose rule or
/// profile would allow more than asked.
fn built<T>(what: &str, r: std::result::Result<T, oci_spec::OciSpecError>) -> Result<T> {
    r.map_err(|e| Error::Seccomp(format!("building the RuntimeDefault {what}: {e}")))
}

/// Names a syscall rule.
pub(super) fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> Result<LinuxSyscall> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    built("rule", b.build())
}

pub(super) fn arg(
    index: usize,
    value: u64,
    value_two: u64,
    op: LinuxSeccompOperator,
) -> Result<LinuxSeccompArg> {
    built(
        "argument condition",
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .value_two(value_two)
            .op(op)
            .build(),
    )
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
pub fn runtime_default(bounding: &Capabilities) -> Result<LinuxSeccomp> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let mut syscalls = vec![rule(ALLOWED, Allow, None, vec![])?];
    // personality: only the usual domains (PER_LINUX, PER_LINUX32, UNAME26 forms, query).
    for v in [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(rule(
            &["personality"],
            Allow,
            None,
            vec![arg(0, v, 0, LinuxSeccompOperator::ScmpCmpEq)?],
        )?);
    }
    for (cap, names) in BY_CAPABILITY {
        if bounding.contains(cap) {
            syscalls.push(rule(names, Allow, None, vec![])?);
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
            vec![arg(0, ns_flags, 0, LinuxSeccompOperator::ScmpCmpMaskedEq)?],
        )?);
        syscalls.push(rule(&["clone3"], Errno, Some(libc::ENOSYS as u32), vec![])?);
    }
    built(
        "profile",
        LinuxSeccompBuilder::default()
            .default_action(Errno)
            .default_errno_ret(libc::EPERM as u32)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .syscalls(syscalls)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::compile;
    use super::super::tests::{ALLOW, ENOSYS, EPERM, nr, verdict};
    use super::*;

    #[test]
    fn runtime_default_allows_the_usual_and_refuses_the_dangerous() {
        let bounding: Capabilities =
            [Capability::Chown, Capability::Kill, Capability::Setuid].into();
        let plan = compile(&runtime_default(&bounding).expect("profile")).expect("compile");
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
        let plan = compile(&runtime_default(&bounding).expect("profile")).expect("compile");
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
}
