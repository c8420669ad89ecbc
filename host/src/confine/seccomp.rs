//! The seccomp filters of jailed processes (x86_64, built with seccompiler): one allowlist
//! per kind of process, installed by the jail just before it executes the program (so
//! `execve` is in every list: the jail's own; the back-ends forbid it again once started,
//! QEMU with `-sandbox spawn=deny`). A syscall outside the list kills the process
//! (SECCOMP_RET_KILL_PROCESS): the jail's parent logs it (see `launch`).
//!
//! A second filter answers a few calls with an error instead, whatever the allowlist says:
//! `clone3` (ENOSYS: its flags sit where a filter cannot read them; glibc then starts
//! threads with `clone`, whose flags the allowlist checks: threads only, no processes) and
//! `io_uring_*` (ENOSYS: QEMU probes it at start-up and does without; its kernel surface
//! is large).
//!
//! The lists were drawn from `strace -ff` of moatd running the e2e suites (pods, exec,
//! attach, port-forward, volumes, logs, the hostile-guest suite) with the kinds told apart
//! by their `execve`, plus what the code shows it can reach (the virtio-fs passthrough's
//! whole request set, shared with the built-in VMM's list; QEMU's KVM path).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{ConfineError, Kind};

/// Syscall number → the rules under which it is allowed (empty: any arguments).
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn any(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// Allows `nr` only when argument `arg` masked with `mask` equals `value`.
fn masked(rules: &mut Rules, nr: libc::c_long, arg: u8, mask: u64, value: u64) {
    let cond = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .and_then(|c| SeccompRule::new(vec![c]));
    if let Ok(rule) = cond {
        rules.insert(nr, vec![rule]);
    }
}

/// Allows `nr` only when argument `arg` is one of `values`.
fn arg_in(rules: &mut Rules, nr: libc::c_long, arg: u8, values: &[u64]) {
    let list = values
        .iter()
        .filter_map(|&v| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .and_then(|c| SeccompRule::new(vec![c]))
                .ok()
        })
        .collect();
    rules.insert(nr, list);
}

/// What every program the jail runs needs: the dynamic loader and libc, Rust's std,
/// threads (clone with thread flags only), memory, signals, time, I/O on open
/// descriptors, and the exec itself.
fn runtime(r: &mut Rules) {
    use libc::*;
    any(
        r,
        &[
            SYS_execve,
            SYS_brk,
            SYS_mmap,
            SYS_munmap,
            SYS_mremap,
            SYS_mprotect,
            SYS_madvise,
            SYS_arch_prctl,
            SYS_set_tid_address,
            SYS_set_robust_list,
            SYS_rseq,
            SYS_prlimit64,
            SYS_clone3, // answered ENOSYS by the second filter
            SYS_futex,
            SYS_sched_getaffinity,
            SYS_sched_yield,
            SYS_gettid,
            SYS_getpid,
            SYS_getuid,
            SYS_geteuid,
            SYS_getgid,
            SYS_getegid,
            SYS_exit,
            SYS_exit_group,
            SYS_sigaltstack,
            SYS_rt_sigaction,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_restart_syscall,
            SYS_clock_gettime,
            SYS_clock_getres,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_getrandom,
            SYS_uname,
            SYS_access,
            SYS_faccessat2,
            SYS_openat,
            SYS_newfstatat,
            SYS_fstat,
            SYS_statx,
            SYS_readlink,
            SYS_readlinkat,
            SYS_lseek,
            SYS_read,
            SYS_readv,
            SYS_pread64,
            SYS_write,
            SYS_writev,
            SYS_close,
            SYS_dup,
            SYS_dup3,
            SYS_fcntl,
            SYS_poll,
            SYS_ppoll,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_eventfd2,
            SYS_pipe2,
            SYS_getsockname,
            SYS_getpeername,
            SYS_getsockopt,
            SYS_setsockopt,
            SYS_sendmsg,
            SYS_recvmsg,
            SYS_sendto,
            SYS_recvfrom,
            SYS_shutdown,
            SYS_fstatfs,
        ],
    );
    let thread = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD) as u64;
    masked(r, SYS_clone, 0, thread, thread);
}

/// The vhost-user back-ends (moatd subcommands): listening sockets in their own socket
/// directory, Unix sockets only, named threads, and the sockets removed at the end.
fn backend(r: &mut Rules) {
    use libc::*;
    any(
        r,
        &[
            SYS_bind,
            SYS_listen,
            SYS_accept4,
            SYS_connect,
            SYS_unlink,
            SYS_unlinkat,
            SYS_umask,
            // The back-end's own no-exec filter (`no_exec_filter`), installed at start.
            SYS_seccomp,
        ],
    );
    arg_in(r, SYS_socket, 0, &[AF_UNIX as u64]);
    arg_in(
        r,
        SYS_prctl,
        0,
        &[
            PR_SET_NAME as u64,
            PR_GET_NAME as u64,
            PR_SET_NO_NEW_PRIVS as u64,
        ],
    );
    arg_in(r, SYS_ioctl, 1, &[FIONBIO, FIOCLEX, TCGETS]);
}

/// The virtio-fs back-end's passthrough file system: every request it serves (lookups,
/// reads and writes, directories, links, attributes, xattrs through `/proc/self/fd/<n>`),
/// creating files as the guest's caller (setresuid/setresgid on the worker thread,
/// CAP_FSETID dropped around writes with capget/capset). Never `open_by_handle_at` nor
/// `name_to_handle_at`, nor mount or namespace calls (it keeps CAP_SYS_ADMIN for
/// `trusted.*` xattrs).
fn passthrough(r: &mut Rules) {
    use libc::*;
    any(
        r,
        &[
            SYS_getdents64,
            SYS_pwrite64,
            SYS_preadv,
            SYS_pwritev,
            SYS_preadv2,
            SYS_pwritev2,
            SYS_copy_file_range,
            SYS_fsync,
            SYS_fdatasync,
            SYS_syncfs,
            SYS_fallocate,
            SYS_ftruncate,
            SYS_mkdirat,
            SYS_mknodat,
            SYS_renameat,
            SYS_renameat2,
            SYS_symlinkat,
            SYS_linkat,
            SYS_fchmod,
            SYS_fchmodat,
            SYS_fchown,
            SYS_fchownat,
            SYS_utimensat,
            SYS_statfs,
            SYS_flock,
            SYS_getxattr,
            SYS_lgetxattr,
            SYS_fgetxattr,
            SYS_setxattr,
            SYS_lsetxattr,
            SYS_fsetxattr,
            SYS_listxattr,
            SYS_llistxattr,
            SYS_flistxattr,
            SYS_removexattr,
            SYS_lremovexattr,
            SYS_fremovexattr,
            SYS_setresuid,
            SYS_setresgid,
            SYS_setfsuid,
            SYS_setfsgid,
            SYS_capget,
            SYS_capset,
            SYS_fchdir,
        ],
    );
}

/// QEMU (`-M microvm`, TCG or KVM): memory backed by a memfd, NUMA policy probes, its
/// signalfd, vhost-user chardevs (Unix sockets it connects to), the tap (passed in), KVM's
/// ioctls, and its own `-sandbox` filter (seccomp).
fn qemu(r: &mut Rules) {
    use libc::*;
    any(
        r,
        &[
            SYS_memfd_create,
            SYS_ftruncate,
            SYS_fallocate,
            SYS_get_mempolicy,
            SYS_set_mempolicy,
            SYS_mbind,
            SYS_signalfd4,
            SYS_timerfd_create,
            SYS_timerfd_settime,
            SYS_sysinfo,
            SYS_statfs,
            SYS_fchdir,
            SYS_getdents64,
            SYS_getcwd,
            SYS_socket,
            SYS_socketpair,
            SYS_connect,
            SYS_ioctl,
            SYS_prctl,
            SYS_seccomp,
            SYS_sched_setaffinity,
            SYS_tgkill,
            SYS_tkill,
            SYS_membarrier,
            SYS_io_uring_setup, // answered ENOSYS by the second filter
            SYS_io_uring_enter,
            SYS_io_uring_register,
            SYS_mlock,
            SYS_munlock,
            SYS_pwrite64,
            SYS_preadv,
            SYS_pwritev,
            SYS_fdatasync,
            SYS_fsync,
            SYS_getrusage,
            SYS_times,
        ],
    );
}

/// The built-in VMM (`moatd vmm`) from its exec until it installs its own, narrower
/// filter (`moat_vmm::jail::seccomp`) once the VM is built: a back-end's sockets and the
/// virtio-fs passthrough (its devices run in process), KVM's ioctls and the tap's, vCPU
/// kicks (tgkill), the termination watcher (rt_sigtimedwait), and dropping its
/// capabilities again (prctl, capset).
fn vmm(r: &mut Rules) {
    use libc::*;
    backend(r);
    passthrough(r);
    any(
        r,
        &[
            SYS_ioctl,
            SYS_tgkill,
            SYS_tkill,
            SYS_rt_sigtimedwait,
            SYS_sched_setaffinity,
        ],
    );
    arg_in(
        r,
        SYS_prctl,
        0,
        &[
            PR_SET_NAME as u64,
            PR_GET_NAME as u64,
            PR_SET_NO_NEW_PRIVS as u64,
            PR_CAPBSET_READ as u64,
            PR_CAPBSET_DROP as u64,
            PR_CAP_AMBIENT as u64,
        ],
    );
}

/// The jail's own waiting parent: waits on a pidfd, a signalfd and the child's output
/// pipe, forwards signals, copies the output into its capped log (write, ftruncate on the
/// files it opened before its filter), reaps the child and reports how it ended.
fn reaper(r: &mut Rules) {
    use libc::*;
    any(
        r,
        &[
            SYS_poll,
            SYS_ppoll,
            SYS_read,
            SYS_write,
            SYS_writev,
            SYS_ftruncate,
            SYS_close,
            SYS_fcntl,
            SYS_kill,
            SYS_pidfd_send_signal,
            SYS_waitid,
            SYS_wait4,
            SYS_brk,
            SYS_mmap,
            SYS_munmap,
            SYS_futex,
            SYS_sigaltstack,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_restart_syscall,
            SYS_exit,
            SYS_exit_group,
            SYS_getpid,
        ],
    );
}

/// The allowlist of a jailed process of `kind` (before its exec).
fn rules_for(kind: Kind) -> Rules {
    let mut r = Rules::new();
    runtime(&mut r);
    match kind {
        Kind::Qemu => qemu(&mut r),
        Kind::VsockBackend => backend(&mut r),
        Kind::FsBackend => {
            backend(&mut r);
            passthrough(&mut r);
        }
        Kind::Vmm => vmm(&mut r),
    }
    r
}

fn compile(
    filter: Result<SeccompFilter, seccompiler::BackendError>,
) -> Result<BpfProgram, ConfineError> {
    filter
        .and_then(BpfProgram::try_from)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))
}

fn allowlist(rules: Rules) -> Result<BpfProgram, ConfineError> {
    compile(SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    ))
}

/// The allowlist of `kind`.
pub fn filter(kind: Kind) -> Result<BpfProgram, ConfineError> {
    allowlist(rules_for(kind))
}

/// The waiting parent's allowlist.
pub fn reaper_filter() -> Result<BpfProgram, ConfineError> {
    let mut r = Rules::new();
    reaper(&mut r);
    allowlist(r)
}

/// The second filter: `clone3` and `io_uring_*` fail with ENOSYS; anything else passes
/// on to the allowlist.
pub fn enosys_filter() -> Result<BpfProgram, ConfineError> {
    let mut r = Rules::new();
    any(
        &mut r,
        &[
            libc::SYS_clone3,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ],
    );
    compile(SeccompFilter::new(
        r,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    ))
}

/// A filter that kills the process on `execve` and `execveat` and lets anything else
/// through: a back-end installs it once started (the jail's allowlist had to allow the
/// exec that started it).
pub fn no_exec_filter() -> Result<BpfProgram, ConfineError> {
    let mut r = Rules::new();
    any(&mut r, &[libc::SYS_execve, libc::SYS_execveat]);
    compile(SeccompFilter::new(
        r,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    ))
}

/// Installs `prog` on the calling thread (which must have no_new_privs or
/// CAP_SYS_ADMIN).
pub fn apply(prog: &BpfProgram) -> Result<(), ConfineError> {
    seccompiler::apply_filter(prog).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Whether `kind`'s allowlist has `nr` at all (whatever its argument checks).
pub fn allows(kind: Kind, nr: libc::c_long) -> bool {
    rules_for(kind).contains_key(&nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        for k in [Kind::Qemu, Kind::VsockBackend, Kind::FsBackend, Kind::Vmm] {
            filter(k).expect("allowlist");
        }
        reaper_filter().expect("reaper");
        enosys_filter().expect("enosys");
        no_exec_filter().expect("no exec");
    }

    #[test]
    fn escapes_are_in_no_list() {
        use libc::*;
        for k in [Kind::Qemu, Kind::VsockBackend, Kind::FsBackend, Kind::Vmm] {
            for nr in [
                SYS_mount,
                SYS_umount2,
                SYS_pivot_root,
                SYS_chroot,
                SYS_unshare,
                SYS_setns,
                SYS_ptrace,
                SYS_process_vm_writev,
                SYS_kexec_load,
                SYS_init_module,
                SYS_finit_module,
                SYS_bpf,
                SYS_keyctl,
                SYS_add_key,
                SYS_open_by_handle_at,
                SYS_name_to_handle_at,
                SYS_perf_event_open,
                SYS_userfaultfd,
                SYS_fork,
                SYS_vfork,
                SYS_execveat,
                SYS_setuid,
                SYS_reboot,
            ] {
                assert!(!allows(k, nr), "{k:?} allows syscall {nr}");
            }
        }
        assert!(!allows(Kind::VsockBackend, SYS_mknodat));
        assert!(!allows(Kind::Vmm, SYS_memfd_create));
        assert!(!allows(Kind::VsockBackend, SYS_setxattr));
        assert!(allows(Kind::FsBackend, SYS_setxattr));
    }

    #[test]
    fn the_vmm_jail_allows_all_the_vmm_filter_allows_later() {
        // Filters stack: the VMM's own filter (once its VM is built) narrows the jail's;
        // a syscall only the VMM's own list has would kill it all the same.
        let vmm = moat_vmm::jail::seccomp::Groups::all();
        for nr in 0..512 {
            if moat_vmm::jail::seccomp::allows(vmm, nr) {
                assert!(allows(Kind::Vmm, nr), "the VMM's own filter allows {nr}");
            }
        }
    }
}
