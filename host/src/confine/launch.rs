//! `moatd jail`: confines one process and runs it (see the module docs of `confine`).
//!
//! Runs single-threaded (it is its own fresh process, started by moatd): the fork below is
//! safe to continue from with any code.
//!
//! Steps, each a hard failure (exit 126 and a line naming the step):
//! 1. `unshare(CLONE_NEWPID)`, then fork: the child is PID 1 of the new namespace.
//! 2. The child: parent-death signal SIGKILL; new mount, network, IPC, UTS and cgroup
//!    namespaces; the root (`root::enter`); capabilities (bounding set first); the uid,
//!    gid and groups; no_new_privs; the seccomp filters; exec.
//! 3. The parent: keeps CAP_KILL only, installs its own filter, copies the child's output
//!    into its capped log (when the spec names one), forwards SIGTERM, SIGINT
//!    and SIGHUP to the child (to QEMU as they are, to a back-end as SIGKILL: see
//!    `forwarded`), and exits as the child did; a child killed by SIGSYS is
//!    reported as a seccomp violation.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use moat_vmm::jail::{Cap, caps};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork};

use std::io::Write;

use moat_devices::console_log::{CapConfig, CappedLog};

use super::{ConfineError, JailSpec, Kind, root, seccomp};

/// Exit status of a launch that could not confine its process.
pub const EXIT_NOT_CONFINED: u8 = 126;

/// Signals the parent forwards to the confined process.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Confines `argv` as `spec` says and waits for it; returns its exit status.
pub fn run(spec: &JailSpec, argv: &[OsString]) -> ExitCode {
    let who = format!(
        "moatd jail: {} of sandbox {}",
        spec.kind.name(),
        spec.sandbox
    );
    match start(spec, argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{who}: not confined, not started: {e}");
            ExitCode::from(EXIT_NOT_CONFINED)
        }
    }
}

fn start(spec: &JailSpec, argv: &[OsString]) -> Result<ExitCode, ConfineError> {
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| ConfineError::Spec("an argument holds a NUL byte".into()))?;
    if argv.is_empty() {
        return Err(ConfineError::Spec("no program to run".into()));
    }
    root::check(spec)?;
    // The output log first: a launch that fails from here on says why in it.
    let output = spec.output.as_ref().map(Output::open).transpose()?;
    // Built before the fork, so a bad filter fails here, with nothing started.
    let filters = [seccomp::enosys_filter()?, seccomp::filter(spec.kind)?];
    let reaper_filter = seccomp::reaper_filter()?;
    // The forwarded signals are blocked from here on, so none is lost before the signalfd
    // exists; the child unblocks them before its exec.
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(ConfineError::step("blocking the forwarded signals"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(ConfineError::step("unshare(CLONE_NEWPID)"))?;
    // SAFETY: this process is single-threaded (see the module docs).
    match unsafe { fork() }.map_err(ConfineError::step("fork"))? {
        ForkResult::Child => {
            let e = match &output {
                Some(o) => o.redirect_child(),
                None => Ok(()),
            }
            .and_then(|()| Err(child(spec, &argv, &filters, &mask)))
            .unwrap_or_else(|e| e);
            eprintln!(
                "moatd jail: {} of sandbox {}: not confined, not started: {e}",
                spec.kind.name(),
                spec.sandbox
            );
            // SAFETY: _exit ends this child without running the parent's exit handlers.
            unsafe { libc::_exit(EXIT_NOT_CONFINED.into()) }
        }
        ForkResult::Parent { child } => {
            let output = output.map(Output::into_reader);
            parent(spec, child, &mask, &reaper_filter, output)
        }
    }
}

/// The confined child; returns only on failure.
fn child(
    spec: &JailSpec,
    argv: &[CString],
    filters: &[seccompiler::BpfProgram],
    mask: &SigSet,
) -> ConfineError {
    match confine_self(spec, filters, mask) {
        Err(e) => e,
        Ok(()) => {
            let e = nix::unistd::execv(&argv[0], argv).err();
            ConfineError::step(format!("exec {:?}", argv[0]))(
                e.unwrap_or(nix::errno::Errno::EINVAL),
            )
        }
    }
}

fn death_signal() -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(ConfineError::step("setting the parent-death signal")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn confine_self(
    spec: &JailSpec,
    filters: &[seccompiler::BpfProgram],
    mask: &SigSet,
) -> Result<(), ConfineError> {
    death_signal()?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(ConfineError::step(
        "unshare (mount, network, IPC, UTS, cgroup)",
    ))?;
    nix::unistd::sethostname("moat-jail").map_err(ConfineError::step("sethostname"))?;
    root::enter(spec)?;
    match spec.user {
        Some((uid, gid)) => {
            // The bounding set first (that needs CAP_SETPCAP), then the ids: leaving uid 0
            // clears the effective and permitted sets (no keep-caps).
            caps::drop_bounding_but(&[])?;
            let groups: Vec<Gid> = spec.groups.iter().map(|&g| Gid::from_raw(g)).collect();
            nix::unistd::setgroups(&groups).map_err(ConfineError::step("setgroups"))?;
            let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
            nix::unistd::setresgid(gid, gid, gid).map_err(ConfineError::step("setresgid"))?;
            nix::unistd::setresuid(uid, uid, uid).map_err(ConfineError::step("setresuid"))?;
            let left = caps::current().map_err(ConfineError::step("reading the capabilities"))?;
            if left.permitted != 0 || left.effective != 0 {
                return Err(ConfineError::Spec(format!(
                    "capabilities left after leaving uid 0: {left:?}"
                )));
            }
        }
        None => {
            nix::unistd::setgroups(&[]).map_err(ConfineError::step("setgroups"))?;
            caps::drop_all_but(&spec.caps)?;
        }
    }
    // A change of credentials clears the parent-death signal: set it again.
    death_signal()?;
    caps::set_no_new_privs()?;
    for f in filters {
        seccomp::apply(f)?;
    }
    mask.thread_unblock()
        .map_err(ConfineError::step("unblocking signals"))?;
    Ok(())
}

/// The confined process's output: a pipe whose write end becomes its stdout and stderr,
/// and the capped log the parent copies the read end into.
struct Output {
    log: CappedLog,
    read: OwnedFd,
    write: OwnedFd,
}

/// The parent's side of `Output`.
struct OutputReader {
    log: CappedLog,
    read: Option<OwnedFd>,
    /// A failed write was reported (once; the output is still drained).
    failed: bool,
}

/// What the parent reads from the pipe at a time.
const OUTPUT_BUF: usize = 64 << 10;

impl Output {
    fn open(o: &super::OutputLog) -> Result<Output, ConfineError> {
        let log = CappedLog::create(&o.path, CapConfig::split(o.max_bytes)).map_err(
            ConfineError::step(format!("creating the output log {}", o.path.display())),
        )?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(ConfineError::step("the output pipe"))?;
        Ok(Output { log, read, write })
    }

    /// In the child: the pipe becomes stdout and stderr.
    fn redirect_child(&self) -> Result<(), ConfineError> {
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: dup2 of an open descriptor onto a standard one; the new descriptor
            // is not close-on-exec.
            if unsafe { libc::dup2(self.write.as_raw_fd(), fd) } < 0 {
                return Err(ConfineError::step("redirecting the output to the pipe")(
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    }

    /// In the parent: keeps the read end (non-blocking) and the log; closes the write end,
    /// so the pipe ends when the confined processes are gone.
    fn into_reader(self) -> OutputReader {
        let Output { log, read, write } = self;
        drop(write);
        let _ = nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        OutputReader {
            log,
            read: Some(read),
            failed: false,
        }
    }
}

impl OutputReader {
    /// Copies what the pipe holds now into the log; at the end of the pipe (every writer
    /// gone) or on a read error, stops reading it.
    fn drain(&mut self, buf: &mut [u8]) {
        while let Some(fd) = &self.read {
            match nix::unistd::read(fd, buf) {
                Ok(0) => self.read = None,
                Ok(n) => {
                    if let Err(e) = self.log.write_all(&buf[..n])
                        && !self.failed
                    {
                        self.failed = true;
                        eprintln!("moatd jail: writing the output log: {e}; output dropped");
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => self.read = None,
            }
        }
    }

    fn raw_fd(&self) -> i32 {
        self.read.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

/// What the parent sends the child for `sig`. The child is PID 1 of its namespace, and
/// the kernel drops a signal sent to such a process from outside unless it has a handler:
/// QEMU handles SIGTERM (it shuts the VM down), the back-ends handle nothing and have
/// nothing to save, so they get SIGKILL, which always goes through.
fn forwarded(kind: Kind, sig: Signal) -> Signal {
    match kind {
        // The VMM keeps SIGTERM blocked for its watcher thread: blocked, it is queued.
        Kind::Qemu | Kind::Vmm => sig,
        Kind::VsockBackend | Kind::FsBackend => Signal::SIGKILL,
    }
}

/// The waiting parent: forwards signals and exits as the child does.
fn parent(
    spec: &JailSpec,
    child: Pid,
    mask: &SigSet,
    filter: &seccompiler::BpfProgram,
    mut output: Option<OutputReader>,
) -> Result<ExitCode, ConfineError> {
    let signals = SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC)
        .map_err(ConfineError::step("signalfd"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        return Err(ConfineError::step("pidfd_open of the confined process")(e));
    }
    // SAFETY: a freshly opened descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    caps::drop_all_but(&[Cap::Kill])?;
    caps::set_no_new_privs()?;
    seccomp::apply(filter)?;
    let mut buf = vec![0u8; if output.is_some() { OUTPUT_BUF } else { 0 }];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            // A negative fd is skipped by poll: no output pipe, or its end was seen.
            libc::pollfd {
                fd: output.as_ref().map_or(-1, OutputReader::raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: three valid pollfds, no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            continue;
        }
        if fds[2].revents != 0
            && let Some(o) = output.as_mut()
        {
            o.drain(&mut buf);
        }
        if fds[1].revents & libc::POLLIN != 0
            && let Ok(Some(info)) = signals.read_signal()
            && let Ok(sig) = Signal::try_from(info.ssi_signo as i32)
        {
            let _ = nix::sys::signal::kill(child, forwarded(spec.kind, sig));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            break;
        }
    }
    // The child is gone, and with it, as PID 1, everything else in its namespace: what is
    // left in the pipe is its last output.
    if let Some(o) = output.as_mut() {
        o.drain(&mut buf);
    }
    drop(output);
    Ok(match waitpid(child, Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Exited(_, code)) => ExitCode::from(code as u8),
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            if sig == Signal::SIGSYS {
                eprintln!(
                    "moatd jail: {} of sandbox {} (pid {child}) was killed by its seccomp filter: \
                     it made a syscall outside the {} allowlist (the kernel's audit log names it)",
                    spec.kind.name(),
                    spec.sandbox,
                    spec.kind.name()
                );
            } else {
                eprintln!(
                    "moatd jail: {} of sandbox {} (pid {child}) was killed by {sig}",
                    spec.kind.name(),
                    spec.sandbox
                );
            }
            ExitCode::from(128u8.wrapping_add(sig as u8))
        }
        _ => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_ends_are_killed_and_qemu_asked() {
        assert_eq!(forwarded(Kind::Qemu, Signal::SIGTERM), Signal::SIGTERM);
        assert_eq!(forwarded(Kind::Vmm, Signal::SIGTERM), Signal::SIGTERM);
        for k in [Kind::VsockBackend, Kind::FsBackend] {
            assert_eq!(forwarded(k, Signal::SIGTERM), Signal::SIGKILL);
        }
    }
}
