//! The fork, and the forked child's side of `create` and `exec` up to `execve`.
//! `fork_on_thread` forks (or clones) on a thread in the PID namespace the process belongs
//! in. The child makes raw calls only: it resets its signals, puts its stdio on 0, 1, 2,
//! closes every other fd, waits for the parent, then sets itself up (`create_child`,
//! `exec_child`) and reports over the `handshake` pipes.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::super::child;
use super::super::error::{Error, Result};
use super::super::failure::{Failure, StepKind};
use super::super::plan::{PidNs, Plan, ProcessPlan};
use super::super::process::registry;
use super::super::rootfs;
use super::super::sys::{CVec, Linux, Syscall};
use super::handshake::{child_exit, child_fail, child_read, child_send_pid, child_write};
use super::stdio::StdioSetup;

/// Forks on a thread of its own that first enters `pid_ns` (a new PID namespace, or the one
/// `pid_ns_file` is); registers the child before anyone can reap it; returns its pid. With
/// `clone_ns` (CLONE_NEW* flags) the child is cloned into those new namespaces instead of
/// forked: CLONE_NEWUSER | CLONE_NEWPID makes a PID namespace the new user namespace owns,
/// which no thread of the agent can make. Such a child is not forked through the C
/// library, which still believes it has the agent's threads: it must make raw calls only.
pub(crate) fn fork_on_thread(
    pid_ns: &PidNs,
    pid_ns_file: Option<&File>,
    clone_ns: libc::c_int,
    (args, env): (&[std::ffi::CString], &[std::ffi::CString]),
    child: &(dyn Fn(&CVec<'_>, &CVec<'_>) -> std::convert::Infallible + Sync),
) -> Result<i32> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<i32> {
            match (pid_ns, pid_ns_file) {
                (PidNs::New, _) => Linux
                    .unshare(libc::CLONE_NEWPID)
                    .map_err(|e| Error::errno("unshare the PID namespace", e))?,
                (PidNs::Join(p), Some(f)) => Linux
                    .setns(f.as_raw_fd(), libc::CLONE_NEWPID)
                    .map_err(|e| Error::errno(format!("join PID namespace {}", p.display()), e))?,
                _ => {}
            }
            let argv = CVec::new(args);
            let envp = CVec::new(env);
            let mut reg = registry();
            let pid = if clone_ns == 0 {
                // SAFETY: the child only runs `child`, which makes raw system calls on data
                // prepared before the fork, takes no lock (the registry guard's copy is never
                // touched) and ends in execve or _exit.
                unsafe { libc::fork() }
            } else {
                // SAFETY: as for fork: with no stack, clone(2) continues both processes where
                // the call returns; the child only runs `child` (raw calls, no lock).
                unsafe {
                    libc::syscall(
                        libc::SYS_clone,
                        (clone_ns | libc::SIGCHLD) as libc::c_ulong,
                        0usize,
                        0usize,
                        0usize,
                        0usize,
                    ) as i32
                }
            };
            if pid < 0 {
                let what = if clone_ns == 0 {
                    "fork"
                } else {
                    "clone into new namespaces"
                };
                return Err(Error::errno(what, Errno::last()));
            }
            if pid == 0 {
                match child(&argv, &envp) {}
            }
            reg.get_or_insert_with(Default::default).insert(pid, None);
            Ok(pid)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::io("fork thread", std::io::Error::other("panicked"))))
    })
}

/// Default dispositions and an empty mask: what the agent (tokio, Rust's SIGPIPE) set must
/// not leak into the container (ignored signals and the mask survive execve).
pub(crate) fn child_reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: setting the default disposition is always valid.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty set, initialised by sigemptyset, as the new mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Puts the stdio fds on 0, 1, 2.
fn child_stdio(fds: &[RawFd; 3]) -> std::result::Result<(), Errno> {
    let mut src = *fds;
    // Move any source sitting on 0..2 out of the way first.
    for fd in src.iter_mut() {
        if *fd < 3 {
            // SAFETY: fcntl on an fd we hold.
            let n = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
            if n < 0 {
                return Err(Errno::last());
            }
            *fd = n;
        }
    }
    for (target, fd) in src.iter().enumerate() {
        // SAFETY: dup2 on fds we hold.
        if unsafe { libc::dup2(*fd, target as RawFd) } < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Closes every fd from 3 up but those in `keep` (sorted): the child must not hold other
/// containers' pipes (their EOFs would wait on it).
pub(crate) fn child_close_fds(keep: &[RawFd]) {
    let close_range = |first: RawFd, last: u32| {
        // SAFETY: close_range on a range of our own fd table.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last, 0u32) };
        if r < 0 {
            let end = last.min(65_535) as RawFd;
            for fd in first..=end {
                // SAFETY: closing an fd we may or may not hold is harmless here.
                unsafe { libc::close(fd) };
            }
        }
    };
    let mut next: RawFd = 3;
    for &k in keep {
        if k < next {
            continue;
        }
        if k > next {
            close_range(next, (k - 1) as u32);
        }
        next = k + 1;
    }
    close_range(next, u32::MAX);
}

/// The fds the forked child of `create` or `exec` uses, taken (as numbers) before the fork.
pub(super) struct ChildFds {
    ns_fds: Vec<(RawFd, libc::c_int)>,
    /// The user namespace to join, if any: after the others.
    user: Option<RawFd>,
    stdio: [RawFd; 3],
    console: Option<RawFd>,
    sync: RawFd,
    report: RawFd,
    /// Every fd above that the child keeps, sorted.
    keep: Vec<RawFd>,
}

impl ChildFds {
    /// The child's ends: of `stdio`, of the `sync` and `report` pipes, and the namespaces
    /// to join (`ns_files` in order, then `user_file`).
    pub(super) fn new(
        stdio: &StdioSetup,
        sync: &OwnedFd,
        report: &OwnedFd,
        ns_files: &[(File, libc::c_int)],
        user_file: Option<&File>,
    ) -> Self {
        let console_child = stdio.console.as_ref().map(|(_, c)| c.as_raw_fd());
        let mut keep: Vec<RawFd> = vec![sync.as_raw_fd(), report.as_raw_fd()];
        keep.extend(console_child);
        keep.extend(ns_files.iter().map(|(f, _)| f.as_raw_fd()));
        keep.extend(user_file.map(File::as_raw_fd));
        keep.sort_unstable();
        ChildFds {
            ns_fds: ns_files.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect(),
            user: user_file.map(File::as_raw_fd),
            stdio: [
                stdio.child[0].as_raw_fd(),
                stdio.child[1].as_raw_fd(),
                stdio.child[2].as_raw_fd(),
            ],
            console: console_child,
            sync: sync.as_raw_fd(),
            report: report.as_raw_fd(),
            keep,
        }
    }
}

/// What both children do first: default signals, the stdio on 0, 1, 2, no other fds, then
/// wait for the parent's `G` (sent once the child is in its cgroup).
fn child_start(c: &ChildFds) {
    child_reset_signals();
    if let Err(e) = child_stdio(&c.stdio) {
        child_fail(
            c.report,
            Failure {
                kind: StepKind::Stdio,
                index: 0,
                errno: e,
            },
            1,
        );
    }
    child_close_fds(&c.keep);
    if child_read(c.sync) != Some(b'G') {
        child_exit(1);
    }
}

/// The forked child of `create`: enters the namespaces, builds the rootfs, becomes the
/// spec's process, reports `R`, and execs at `S`.
pub(super) fn create_child(plan: &Plan, c: &ChildFds, argv: &CVec<'_>, envp: &CVec<'_>) -> ! {
    let sys = Linux;
    child_start(c);
    let mut joins: &[(RawFd, libc::c_int)] = &c.ns_fds;
    if let Some(user) = c.user {
        if let Err(f) = child::enter_user_namespace(&sys, &plan.process, joins, user) {
            child_fail(c.report, f, 1);
        }
        joins = &[];
        if plan.ns.pid_in_userns() {
            match child::fork_into_new_pid_namespace(&sys) {
                Err(f) => child_fail(c.report, f, 1),
                // The container's init: on once the parent has registered it.
                Ok(0) => {
                    if child_read(c.sync) != Some(b'G') {
                        child_exit(1);
                    }
                }
                Ok(pid) => {
                    child_send_pid(c.report, pid);
                    child_exit(0);
                }
            }
        }
    }
    if let Err(f) = rootfs::setup_rootfs(&sys, &plan.ns, &plan.root, joins, c.console) {
        child_fail(c.report, f, 1);
    }
    if let Err(f) = child::setup_process(&sys, &plan.process) {
        child_fail(c.report, f, 1);
    }
    child_write(c.report, b"R");
    if child_read(c.sync) != Some(b'S') {
        child_exit(0);
    }
    let f = child::exec(&sys, &plan.process, argv, envp);
    child_fail(c.report, f, 127)
}

/// The forked child of `exec`: joins the container's namespaces, becomes `process`, and
/// execs it.
pub(super) fn exec_child(
    process: &ProcessPlan,
    c: &ChildFds,
    argv: &CVec<'_>,
    envp: &CVec<'_>,
) -> ! {
    let sys = Linux;
    child_start(c);
    if let Some(user) = c.user {
        if let Err(f) = child::enter_user_namespace(&sys, process, &c.ns_fds, user) {
            child_fail(c.report, f, 1);
        }
    } else {
        for (i, &(fd, nstype)) in c.ns_fds.iter().enumerate() {
            if let Err(e) = sys.setns(fd, nstype) {
                child_fail(
                    c.report,
                    Failure {
                        kind: StepKind::Setns,
                        index: i as u32,
                        errno: e,
                    },
                    1,
                );
            }
        }
    }
    if let Some(sock) = c.console
        && let Err(e) = sys.setup_console(sock, None, process.console_size)
    {
        child_fail(
            c.report,
            Failure {
                kind: StepKind::Console,
                index: 0,
                errno: e,
            },
            1,
        );
    }
    if let Err(f) = child::setup_process(&sys, process) {
        child_fail(c.report, f, 1);
    }
    let f = child::exec(&sys, process, argv, envp);
    child_fail(c.report, f, 127)
}
