//! The VMM's seccomp filter (x86_64, built with seccompiler): an allowlist of what the VMM
//! does once the VM is built, in groups by the thread that needs them; a group is in only
//! when the VM has what needs it (no virtio-fs share, no file-system syscalls). Arguments
//! are checked where the VMM uses a syscall one way only (ioctl requests, socket families,
//! fcntl commands, clone flags, prctl operations, tgkill signals, no executable mappings).
//! Anything else traps: see `sigsys`.
//!
//! A second, tiny filter makes clone3 fail with ENOSYS: its flags sit in a struct a filter
//! cannot read, and glibc then starts threads with clone, whose flags the allowlist checks
//! (threads only: no new processes).
//!
//! The list was drawn from the code and checked with `strace -f` on the VMM's tests (the
//! confined VM run and the confined virtio-fs guest of tests/jail.rs, the device tests);
//! see each group. tests/jail.rs runs those under the filter.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::JailError;
use crate::config::VmmConfig;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;

/// Which groups of syscalls a VM needs besides the ones every VMM needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Groups {
    /// The control socket's threads.
    pub api: bool,
    /// Any virtio device (a worker thread started from a vCPU thread).
    pub virtio: bool,
    /// virtio-vsock's host sockets.
    pub vsock: bool,
    /// virtio-fs's passthrough file system.
    pub fs: bool,
}

impl Groups {
    /// The groups `config`'s VM needs.
    pub fn for_vm(config: &VmmConfig) -> Groups {
        Groups {
            api: config.api_socket.is_some(),
            virtio: config.vsock.is_some() || !config.fs.is_empty() || config.net.is_some(),
            vsock: config.vsock.is_some(),
            fs: !config.fs.is_empty(),
        }
    }

    /// Every group.
    pub fn all() -> Groups {
        Groups {
            api: true,
            virtio: true,
            vsock: true,
            fs: true,
        }
    }
}

/// A check on one argument (its low 32 bits: every argument checked here is an int or a
/// flag word).
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Argument `.0` equals `.1`.
    Eq(u8, u64),
    /// Argument `.0`, masked with `.1`, equals `.2`.
    Masked(u8, u64, u64),
}

/// Syscall number → the rules under which it is allowed, each a list of checks that must
/// all hold (`None`: allowed with any arguments).
#[derive(Default)]
struct Allowlist {
    rules: BTreeMap<i64, Option<Vec<Vec<Check>>>>,
}

impl Allowlist {
    /// Allows `syscalls` whatever their arguments.
    fn any(&mut self, syscalls: &[libc::c_long]) {
        for &nr in syscalls {
            self.rules.insert(nr, None);
        }
    }

    /// Allows `nr` when one of `rules` holds (added to rules given before).
    fn when(&mut self, nr: libc::c_long, rules: Vec<Vec<Check>>) {
        // `None` (already allowed with any arguments) stays as it is.
        if let Some(existing) = self.rules.entry(nr).or_insert_with(|| Some(Vec::new())) {
            existing.extend(rules);
        }
    }

    /// Allows `nr` when argument `arg` is one of `values`.
    fn when_arg_in(&mut self, nr: libc::c_long, arg: u8, values: &[u64]) {
        let rules = values.iter().map(|&v| vec![Check::Eq(arg, v)]).collect();
        self.when(nr, rules);
    }

    fn allows(&self, nr: libc::c_long) -> bool {
        self.rules.contains_key(&nr)
    }

    /// seccompiler's form of the list.
    fn compile(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        let condition = |c: Check| {
            let (arg, op, value) = match c {
                Check::Eq(arg, v) => (arg, SeccompCmpOp::Eq, v),
                Check::Masked(arg, mask, v) => (arg, SeccompCmpOp::MaskedEq(mask), v),
            };
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        };
        let mut out = BTreeMap::new();
        for (nr, rules) in self.rules {
            let mut compiled = Vec::new();
            for checks in rules.unwrap_or_default() {
                let conditions = checks
                    .into_iter()
                    .map(condition)
                    .collect::<Result<_, _>>()?;
                compiled.push(SeccompRule::new(conditions)?);
            }
            out.insert(nr, compiled);
        }
        Ok(out)
    }
}

/// Every thread: what Rust's std and glibc do for memory, threads, signals, time and
/// logging, and the end of the run.
fn base(a: &mut Allowlist) {
    use libc::*;
    // Memory (the allocator, thread stacks, guard pages): never executable.
    a.any(&[SYS_brk, SYS_munmap, SYS_mremap, SYS_madvise]);
    for nr in [SYS_mmap, SYS_mprotect] {
        a.when(nr, vec![vec![Check::Masked(2, PROT_EXEC as u64, 0)]]);
    }
    // Threads: the vCPU, device-worker, control-socket and signal threads start and end
    // (glibc's pthread_create: clone after clone3's ENOSYS, set_robust_list, rseq,
    // rt_sigprocmask; Rust names its threads with prctl(PR_SET_NAME) and gives each an
    // alternate signal stack), and wait on each other (futex).
    let thread = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD;
    a.when(
        SYS_clone,
        vec![vec![Check::Masked(0, thread as u64, thread as u64)]],
    );
    a.any(&[
        SYS_clone3, // answered ENOSYS by the second filter
        SYS_set_robust_list,
        SYS_rseq,
        // pthread_getattr_np, which Rust calls on a new thread to find its stack guard,
        // fills in the affinity too.
        SYS_sched_getaffinity,
        SYS_futex,
        SYS_sched_yield,
        SYS_gettid,
        SYS_getpid,
        SYS_exit,
        SYS_exit_group,
        SYS_sigaltstack,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        // The signal thread's sigwait (SIGTERM/SIGINT).
        SYS_rt_sigtimedwait,
    ]);
    a.when_arg_in(SYS_prctl, 0, &[PR_SET_NAME as u64]);
    // Signals sent: the vCPU kick (a real-time signal, from the thread that pauses or ends
    // the VM) and abort()'s SIGABRT.
    let kick = crate::kick::kick_signal() as u64;
    a.when_arg_in(SYS_tgkill, 2, &[kick, SIGABRT as u64]);
    // Time and sleeping (the vDSO answers most clock reads), hash-map seeds.
    a.any(&[
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_restart_syscall,
        SYS_getrandom,
    ]);
    // I/O on open descriptors: logs to stderr, the console log (serial, on a vCPU thread),
    // eventfds (interrupts, queue notifications, stop events), sockets, virtio-net's tap
    // (one frame per read or write), virtio-fs's reply sink (writev). F_GETFD: Rust's std,
    // built with debug assertions, checks each descriptor it closes.
    // ftruncate: the capped console log empties its older tail segment to reuse it.
    a.any(&[SYS_read, SYS_write, SYS_writev, SYS_close, SYS_ftruncate]);
    a.when_arg_in(SYS_fcntl, 1, &[F_GETFD as u64]);
    // The end of the run: the peak RSS from /proc/self/status; the sockets' removal checks
    // what is there first.
    a.any(&[SYS_openat, SYS_statx]);
}

/// vCPU threads: the run loop. (MMIO and port I/O exits are handled in the VMM: no ioctl.)
fn vcpu(a: &mut Allowlist) {
    a.when_arg_in(libc::SYS_ioctl, 1, &[KVM_RUN]);
}

/// Any virtio device: the driver's DRIVER_OK, on a vCPU thread, starts the device's worker
/// thread (a new epoll set and stop eventfd, a dup of it); a reset stops it. The worker
/// waits on its epoll set. (virtio-net's worker needs nothing more: it reads and writes
/// the tap.)
fn virtio(a: &mut Allowlist) {
    use libc::*;
    a.any(&[
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_wait,
        SYS_eventfd2,
    ]);
    a.when_arg_in(SYS_fcntl, 1, &[F_DUPFD_CLOEXEC as u64]);
}

/// virtio-vsock's worker: accepts host streams on the hybrid socket, peeks at their CONNECT
/// line, reads and sends (MSG_NOSIGNAL), dials `<uds_path>_<port>` for guest connections,
/// shuts and closes streams; at the end the socket is removed.
fn vsock(a: &mut Allowlist) {
    use libc::*;
    a.any(&[
        SYS_accept4,
        SYS_recvfrom,
        SYS_sendto,
        SYS_connect,
        SYS_shutdown,
        SYS_unlink,
    ]);
    a.when_arg_in(SYS_socket, 0, &[AF_UNIX as u64]);
    a.when_arg_in(SYS_ioctl, 1, &[FIONBIO]);
}

/// The control socket: one thread polls the listener and accepts, one thread per client
/// reads with a timeout and writes replies; at the end the socket is removed.
fn api(a: &mut Allowlist) {
    use libc::*;
    a.any(&[SYS_poll, SYS_accept4, SYS_recvfrom, SYS_sendto, SYS_unlink]);
    a.when_arg_in(SYS_ioctl, 1, &[FIONBIO]);
    a.when_arg_in(SYS_fcntl, 1, &[F_DUPFD_CLOEXEC as u64]);
    a.when(
        SYS_setsockopt,
        vec![vec![
            Check::Eq(1, SOL_SOCKET as u64),
            Check::Eq(2, SO_RCVTIMEO as u64),
        ]],
    );
}

/// virtio-fs's worker: fuse-backend-rs's passthrough file system, all of it (lookups,
/// reads and writes, directories, links, attributes, xattrs through `/proc/self/fd/<n>`),
/// creating files as the guest caller (setresuid/setresgid on the worker thread, and
/// CAP_FSETID dropped around writes with capget/capset), and the umask it clears (and the
/// read-only guard reads). Checked with the FUSE requests of tests/jail/fuse.rs.
fn fs(a: &mut Allowlist) {
    use libc::*;
    a.any(&[
        SYS_openat,
        SYS_newfstatat,
        SYS_statx,
        SYS_fstat,
        SYS_fstatfs,
        SYS_getdents64,
        SYS_readlinkat,
        SYS_lseek,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fallocate,
        SYS_ftruncate,
        SYS_mkdirat,
        SYS_mknodat,
        SYS_unlinkat,
        SYS_renameat2,
        SYS_symlinkat,
        SYS_linkat,
        SYS_fchmod,
        SYS_fchmodat,
        SYS_fchownat,
        SYS_utimensat,
        SYS_getxattr,
        SYS_setxattr,
        SYS_listxattr,
        SYS_removexattr,
        SYS_umask,
        SYS_setresuid,
        SYS_setresgid,
        SYS_capget,
        SYS_capset,
        SYS_dup,
    ]);
    a.when_arg_in(
        SYS_fcntl,
        1,
        &[F_GETFL as u64, F_SETFL as u64, F_DUPFD_CLOEXEC as u64],
    );
}

fn allowlist(groups: Groups) -> Allowlist {
    let mut a = Allowlist::default();
    base(&mut a);
    vcpu(&mut a);
    for (on, add) in [
        (groups.virtio, virtio as fn(&mut Allowlist)),
        (groups.vsock, vsock),
        (groups.api, api),
        (groups.fs, fs),
    ] {
        if on {
            add(&mut a);
        }
    }
    a
}

fn compile(
    filter: Result<SeccompFilter, seccompiler::BackendError>,
) -> Result<BpfProgram, JailError> {
    filter
        .and_then(BpfProgram::try_from)
        .map_err(|e| JailError::Seccomp(e.to_string()))
}

/// The allowlist filter for `groups`: allowed syscalls pass, anything else traps.
pub fn filter(groups: Groups) -> Result<BpfProgram, JailError> {
    compile(allowlist(groups).compile().and_then(|rules| {
        SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
    }))
}

/// The clone3 filter: clone3 fails with ENOSYS, anything else passes (to the allowlist).
pub fn clone3_filter() -> Result<BpfProgram, JailError> {
    let rules = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    compile(SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    ))
}

/// Whether the allowlist for `groups` has `nr` at all (whatever its argument checks).
pub fn allows(groups: Groups, nr: libc::c_long) -> bool {
    allowlist(groups).allows(nr)
}

/// Installs both filters on every thread of the process (TSYNC); threads started later
/// inherit them. Sets no_new_privs (needed to install a filter without CAP_SYS_ADMIN).
pub fn install(groups: &Groups) -> Result<(), JailError> {
    let main = filter(*groups)?;
    let clone3 = clone3_filter()?;
    let apply = |prog: &BpfProgram| {
        seccompiler::apply_filter_all_threads(prog).map_err(|e| JailError::Seccomp(e.to_string()))
    };
    // The clone3 filter first: once the allowlist is on, seccomp(2) itself is forbidden.
    apply(&clone3)?;
    apply(&main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_config() {
        let none = Groups::default();
        for nr in [
            libc::SYS_mkdirat,
            libc::SYS_setresuid,
            libc::SYS_socket,
            libc::SYS_accept4,
        ] {
            assert!(!allows(none, nr), "syscall {nr} allowed for a bare VM");
        }
        for nr in [
            libc::SYS_ioctl,
            libc::SYS_futex,
            libc::SYS_write,
            libc::SYS_exit_group,
        ] {
            assert!(allows(none, nr), "syscall {nr} missing for a bare VM");
        }
        let all = Groups::all();
        for nr in [
            libc::SYS_mkdirat,
            libc::SYS_setresuid,
            libc::SYS_socket,
            libc::SYS_epoll_wait,
        ] {
            assert!(allows(all, nr), "syscall {nr} missing");
        }
        // Never, whatever the VM: new programs, namespaces, mounts, tracing, other sockets'
        // set-up.
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_rt_sigaction,
            libc::SYS_seccomp,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!allows(all, nr), "syscall {nr} allowed");
        }
    }

    #[test]
    fn both_filters_compile() {
        for groups in [Groups::default(), Groups::all()] {
            let prog = filter(groups).expect("allowlist filter");
            assert!(
                prog.len() > 10 && prog.len() < u16::MAX as usize,
                "{}",
                prog.len()
            );
        }
        assert!(!clone3_filter().expect("clone3 filter").is_empty());
    }
}
