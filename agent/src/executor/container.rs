//! Creating, starting, exec'ing into and waiting on containers: the fork and the parent's
//! half of the handshake with the child.
//!
//! The fork happens on a short-lived thread of its own, which first unshares (or joins) the
//! PID namespace: unshare(CLONE_NEWPID) only affects the caller's future children, and a
//! thread may do it in a multithreaded process, so the child is PID 1 of the new namespace
//! and still the agent's own child (waitpid works; no double fork, no subreaper). The
//! thread then ends, and its namespace setting with it.
//!
//! The child talks to the parent over two pipes: `sync` (parent to child: `G` once it is in
//! its cgroup, `S` to start) and `report` (child to parent: `R` when set up, `E` and a
//! `Failure` when a step failed). Both are close-on-exec, so EOF on `report` after `S`
//! means `execve` succeeded.
//!
//! A container that joins a user namespace and has a PID namespace of its own takes one
//! more step (see `userns`): the forked child enters the user namespace, unshares the PID
//! namespace and clones the container's init with CLONE_PARENT, reports `P` and the init's
//! pid, and exits; the parent registers the init, reaps the child, and sends the init a
//! second `G`, after which the handshake goes on with the init.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use oci_spec::runtime::{Process, Spec};

use super::cgroup::{self, Cgroup};
use super::child::{self, Failure, StepKind};
use super::error::{Error, Result};
use super::plan::{self, NsPlan, PidNs, Plan, ProcessPlan, SeccompPlan};
use super::process::{ExitStatus, Proc, registry};
use super::seccomp;
use super::sys::{CVec, Linux, Syscall};
use super::userns::IdMappings;

/// Options of `create` and `exec` beyond the spec.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where cgroup v2 is mounted.
    pub cgroup_root: PathBuf,
    /// Give the process a stdin pipe (otherwise its stdin is /dev/null). Ignored with a
    /// terminal.
    pub stdin: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cgroup_root: PathBuf::from(cgroup::DEFAULT_ROOT),
            stdin: false,
        }
    }
}

/// The process's stdio, for the caller to read and write.
#[derive(Debug)]
pub enum Stdio {
    /// Three pipes.
    Pipes {
        /// The write end of its stdin, if asked for.
        stdin: Option<OwnedFd>,
        /// The read end of its stdout.
        stdout: OwnedFd,
        /// The read end of its stderr.
        stderr: OwnedFd,
    },
    /// A pseudo-terminal (process.terminal): the master side.
    Pty {
        /// The pty master: read the output, write the input.
        master: OwnedFd,
    },
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Set up, blocked before `execve` until `start`.
    Created,
    /// Started.
    Running,
    /// Its process has ended (or never made it to `execve`).
    Stopped,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::errno("pipe", e))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    Ok(f.into())
}

/// The stdio fds for the child and what the parent keeps.
struct StdioSetup {
    child: [OwnedFd; 3],
    parent: Option<Stdio>,
    /// (parent end, child end) of the socket the pty master comes back over.
    console: Option<(OwnedFd, OwnedFd)>,
}

fn stdio_setup(terminal: bool, stdin: bool) -> Result<StdioSetup> {
    if terminal {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::errno("socketpair", e))?;
        return Ok(StdioSetup {
            child: [dev_null(false)?, dev_null(true)?, dev_null(true)?],
            parent: None,
            console: Some((a, b)),
        });
    }
    let (in_child, in_parent) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null(false)?, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(StdioSetup {
        child: [in_child, out_w, err_w],
        parent: Some(Stdio::Pipes {
            stdin: in_parent,
            stdout: out_r,
            stderr: err_r,
        }),
        console: None,
    })
}

/// Receives the pty master the child sends; None if it closed the socket first.
fn recv_master(sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::errno("receive the pty master", e))?;
    for c in msg
        .cmsgs()
        .map_err(|e| Error::errno("receive the pty master", e))?
    {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: SCM_RIGHTS just installed this fd in our table; we own it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(None)
}

/// What the child reported.
enum Report {
    Ready,
    Failed(Failure),
    /// The pid of the container's init, forked into its PID namespace.
    Pid(i32),
    Eof,
}

fn read_report(fd: &OwnedFd) -> Result<Report> {
    let mut f = File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
    let mut tag = [0u8; 1];
    loop {
        match f.read(&mut tag) {
            Ok(0) => return Ok(Report::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read the child's report", e)),
        }
    }
    match tag[0] {
        b'R' => Ok(Report::Ready),
        b'P' => {
            let mut pid = [0u8; 4];
            f.read_exact(&mut pid)
                .map_err(|e| Error::io("read the child's report", e))?;
            Ok(Report::Pid(i32::from_ne_bytes(pid)))
        }
        b'E' => {
            let mut rec = [0u8; 12];
            f.read_exact(&mut rec)
                .map_err(|e| Error::io("read the child's report", e))?;
            Failure::decode(&rec).map(Report::Failed).ok_or_else(|| {
                Error::io(
                    "read the child's report",
                    std::io::Error::other("bad record"),
                )
            })
        }
        _ => Err(Error::io(
            "read the child's report",
            std::io::Error::other("bad tag"),
        )),
    }
}

fn send(fd: &OwnedFd, byte: u8) -> std::io::Result<()> {
    File::from(fd.try_clone()?).write_all(&[byte])
}

// --- the child's side (after fork, before execve: raw calls only) ---------------------

fn child_write(fd: RawFd, buf: &[u8]) {
    // SAFETY: buf is valid for buf.len() bytes.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

fn child_fail(report: RawFd, f: Failure, code: i32) -> ! {
    let mut buf = [0u8; 13];
    buf[0] = b'E';
    buf[1..].copy_from_slice(&f.encode());
    child_write(report, &buf);
    // SAFETY: _exit ends the process without running the agent's atexit handlers.
    unsafe { libc::_exit(code) }
}

fn child_exit(code: i32) -> ! {
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Reads one byte from the parent; None on EOF or error.
fn child_read(fd: RawFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: b is a valid 1-byte buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return Some(b[0]);
        }
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None;
    }
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

/// What the forked child of `create` gets.
struct CreateChild<'a> {
    plan: &'a Plan,
    ns_fds: Vec<(RawFd, libc::c_int)>,
    /// The user namespace to join, if any.
    user: Option<RawFd>,
    stdio: [RawFd; 3],
    console: Option<RawFd>,
    sync: RawFd,
    report: RawFd,
    keep: Vec<RawFd>,
}

fn create_child(c: &CreateChild<'_>, argv: &CVec<'_>, envp: &CVec<'_>) -> ! {
    let sys = Linux;
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
    let mut joins: &[(RawFd, libc::c_int)] = &c.ns_fds;
    if let Some(user) = c.user {
        if let Err(f) = child::enter_user_namespace(&sys, &c.plan.process, joins, user) {
            child_fail(c.report, f, 1);
        }
        joins = &[];
        if c.plan.ns.pid_in_userns() {
            match child::fork_into_new_pid_namespace(&sys) {
                Err(f) => child_fail(c.report, f, 1),
                // The container's init: on once the parent has registered it.
                Ok(0) => {
                    if child_read(c.sync) != Some(b'G') {
                        child_exit(1);
                    }
                }
                Ok(pid) => {
                    let mut buf = [0u8; 5];
                    buf[0] = b'P';
                    buf[1..].copy_from_slice(&pid.to_ne_bytes());
                    child_write(c.report, &buf);
                    child_exit(0);
                }
            }
        }
    }
    if let Err(f) = child::setup_rootfs(&sys, &c.plan.ns, &c.plan.root, joins, c.console) {
        child_fail(c.report, f, 1);
    }
    if let Err(f) = child::setup_process(&sys, &c.plan.process) {
        child_fail(c.report, f, 1);
    }
    child_write(c.report, b"R");
    if child_read(c.sync) != Some(b'S') {
        child_exit(0);
    }
    let f = child::exec(&sys, &c.plan.process, argv, envp);
    child_fail(c.report, f, 127)
}

/// What the forked child of `exec` gets.
struct ExecChild<'a> {
    process: &'a ProcessPlan,
    ns_fds: Vec<(RawFd, libc::c_int)>,
    /// The container's user namespace, joined after the others.
    user: Option<RawFd>,
    stdio: [RawFd; 3],
    console: Option<RawFd>,
    sync: RawFd,
    report: RawFd,
    keep: Vec<RawFd>,
}

fn exec_child(c: &ExecChild<'_>, argv: &CVec<'_>, envp: &CVec<'_>) -> ! {
    let sys = Linux;
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
    if let Some(user) = c.user {
        if let Err(f) = child::enter_user_namespace(&sys, c.process, &c.ns_fds, user) {
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
        && let Err(e) = sys.setup_console(sock, None, c.process.console_size)
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
    if let Err(f) = child::setup_process(&sys, c.process) {
        child_fail(c.report, f, 1);
    }
    let f = child::exec(&sys, c.process, argv, envp);
    child_fail(c.report, f, 127)
}

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

fn open_ns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(format!("open namespace {}", path.display()), e))
}

struct Inner {
    state: State,
    sync: Option<OwnedFd>,
    report: Option<OwnedFd>,
    stdio: Option<Stdio>,
}

/// A container: its init process, forked and set up by `create`, exec'd by `start`.
pub struct Container {
    id: String,
    proc: Proc,
    plan: Plan,
    cgroup: Option<Cgroup>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("pid", &self.proc.pid())
            .finish()
    }
}

/// A process started in a running container by `exec`.
#[derive(Debug)]
pub struct ExecProcess {
    proc: Proc,
    stdio: Mutex<Option<Stdio>>,
}

impl Container {
    /// Creates the container `id` from `spec` on `rootfs` (already the overlay mount) with
    /// default options: see `create_with`.
    pub fn create(id: &str, spec: &Spec, rootfs: &Path) -> Result<Container> {
        Self::create_with(id, spec, rootfs, &Options::default())
    }

    /// Creates the container: forks its init process into new namespaces, puts it in its
    /// cgroup, has it build the rootfs and become the spec's user, and leaves it blocked
    /// before `execve` until `start`. Blocks until the setup is done (or failed).
    pub fn create_with(id: &str, spec: &Spec, rootfs: &Path, opts: &Options) -> Result<Container> {
        let linux = spec.linux().clone().unwrap_or_default();
        let seccomp = match linux.seccomp() {
            Some(s) => seccomp::compile(s)?,
            None => SeccompPlan::default(),
        };
        // Without symlinks in its own path: mounts refuse targets with any.
        let rootfs = rootfs
            .canonicalize()
            .map_err(|e| Error::io(format!("rootfs {}", rootfs.display()), e))?;
        let plan = plan::plan(spec, &rootfs, seccomp, &opts.cgroup_root)?;
        if let Some(u) = &plan.ns.user {
            check_joined_userns(&u.path, u.mappings.as_ref())?;
        }
        let cgroup = match linux.cgroups_path() {
            Some(p) => Some(Cgroup::create(
                &opts.cgroup_root,
                p,
                linux.resources().as_ref(),
            )?),
            None => None,
        };
        let result = Self::spawn(id, plan, cgroup.as_ref(), opts);
        match result {
            Ok((proc, plan, inner)) => Ok(Container {
                id: id.to_string(),
                proc,
                plan,
                cgroup,
                inner: Mutex::new(inner),
            }),
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                Err(e)
            }
        }
    }

    fn spawn(
        id: &str,
        plan: Plan,
        cgroup: Option<&Cgroup>,
        opts: &Options,
    ) -> Result<(Proc, Plan, Inner)> {
        let (sync_r, sync_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let stdio = stdio_setup(plan.process.terminal, opts.stdin)?;
        let ns_files: Vec<(File, libc::c_int)> = plan
            .ns
            .join
            .iter()
            .map(|(p, t)| Ok((open_ns(p)?, *t)))
            .collect::<Result<_>>()?;
        let user_file = plan
            .ns
            .user
            .as_ref()
            .map(|u| open_ns(&u.path))
            .transpose()?;
        // A new PID namespace inside the user namespace is the child's to make.
        let thread_pid_ns = if plan.ns.pid_in_userns() {
            PidNs::Host
        } else {
            plan.ns.pid.clone()
        };
        let pid_file = match &thread_pid_ns {
            PidNs::Join(p) => Some(open_ns(p)?),
            _ => None,
        };
        let console_child = stdio.console.as_ref().map(|(_, c)| c.as_raw_fd());
        let mut keep: Vec<RawFd> = vec![sync_r.as_raw_fd(), report_w.as_raw_fd()];
        keep.extend(console_child);
        keep.extend(ns_files.iter().map(|(f, _)| f.as_raw_fd()));
        keep.extend(user_file.as_ref().map(File::as_raw_fd));
        keep.sort_unstable();
        let child = CreateChild {
            plan: &plan,
            ns_fds: ns_files.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect(),
            user: user_file.as_ref().map(File::as_raw_fd),
            stdio: [
                stdio.child[0].as_raw_fd(),
                stdio.child[1].as_raw_fd(),
                stdio.child[2].as_raw_fd(),
            ],
            console: console_child,
            sync: sync_r.as_raw_fd(),
            report: report_w.as_raw_fd(),
            keep,
        };
        let pid = fork_on_thread(
            &thread_pid_ns,
            pid_file.as_ref(),
            0,
            (&plan.process.argv, &plan.process.envp),
            &|argv, envp| create_child(&child, argv, envp),
        )?;
        drop(child);
        let proc = Proc::new(pid);
        // The child's ends, in the parent.
        drop((sync_r, report_w, ns_files, user_file, pid_file));
        let StdioSetup {
            child: child_stdio,
            parent: mut parent_stdio,
            console,
        } = stdio;
        drop(child_stdio);
        let mut proc = match proc {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: plain kill of the child we just forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(e);
            }
        };
        let joins = plan.ns.described_joins();
        let failed = |f: Failure| child::describe(f, &joins, Some(&plan.root), &plan.process);
        if let Some(cg) = cgroup {
            cg.add(pid).inspect_err(|_| proc.kill_and_reap())?;
        }
        send(&sync_w, b'G').map_err(|e| {
            proc.kill_and_reap();
            Error::io("release the child", e)
        })?;
        if plan.ns.pid_in_userns() {
            proc = Self::adopt_init(id, proc, &sync_w, &report_r, &failed)?;
        }
        let fail = |e: Error| {
            proc.kill_and_reap();
            e
        };
        if let Some((parent_sock, child_sock)) = console {
            drop(child_sock);
            if let Some(master) = recv_master(&parent_sock).map_err(fail)? {
                parent_stdio = Some(Stdio::Pty { master });
            }
        }
        match read_report(&report_r).map_err(fail)? {
            Report::Ready => {}
            Report::Failed(f) => {
                let _ = proc.wait_blocking();
                return Err(failed(f));
            }
            Report::Eof => {
                let _ = proc.wait_blocking();
                return Err(Error::Died(id.to_string()));
            }
            Report::Pid(_) => {
                return Err(fail(Error::io(
                    "read the child's report",
                    std::io::Error::other("unexpected pid"),
                )));
            }
        }
        let inner = Inner {
            state: State::Created,
            sync: Some(sync_w),
            report: Some(report_r),
            stdio: parent_stdio,
        };
        Ok((proc, plan, inner))
    }

    /// The step of a container whose new PID namespace is made inside its user namespace:
    /// the forked child (`first`) reports the pid of the container's init, which it cloned
    /// as the agent's child, and exits. The init waits for a second `G`, sent once it is
    /// registered (until then it cannot end but by a signal), so its exit status is never
    /// lost to PID 1's reaper. Returns the init.
    fn adopt_init(
        id: &str,
        first: Proc,
        sync_w: &OwnedFd,
        report_r: &OwnedFd,
        failed: &dyn Fn(Failure) -> Error,
    ) -> Result<Proc> {
        let init_pid = match read_report(report_r) {
            Ok(Report::Pid(p)) => p,
            Ok(Report::Failed(f)) => {
                let _ = first.wait_blocking();
                return Err(failed(f));
            }
            Ok(Report::Eof) => {
                let _ = first.wait_blocking();
                return Err(Error::Died(id.to_string()));
            }
            Ok(Report::Ready) => {
                first.kill_and_reap();
                return Err(Error::io(
                    "read the child's report",
                    std::io::Error::other("unexpected report"),
                ));
            }
            Err(e) => {
                first.kill_and_reap();
                return Err(e);
            }
        };
        registry()
            .get_or_insert_with(Default::default)
            .insert(init_pid, None);
        let init = Proc::new(init_pid);
        // The forked child exits once it has reported.
        let _ = first.wait_blocking();
        drop(first);
        let init = init.inspect_err(|_| {
            if let Some(m) = registry().as_mut() {
                m.remove(&init_pid);
            }
            // SAFETY: plain kill of the init just cloned.
            unsafe { libc::kill(init_pid, libc::SIGKILL) };
        })?;
        send(sync_w, b'G').map_err(|e| {
            init.kill_and_reap();
            Error::io("release the container's init", e)
        })?;
        Ok(init)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init process's pid (in the agent's PID namespace).
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Kills whatever its main process left behind: in a shared PID namespace its children
    /// outlive it (reparented to the pod's init), as under runc, where the shim does the
    /// same when the init of such a container exits.
    pub fn kill_remaining(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    /// The container's cgroup directory, if it has one.
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(Cgroup::path)
    }

    /// Where the container is in its life.
    pub fn state(&self) -> State {
        let mut inner = self.inner();
        if inner.state != State::Stopped && matches!(self.proc.try_wait(), Ok(Some(_))) {
            inner.state = State::Stopped;
        }
        inner.state
    }

    /// Takes the process's stdio (once).
    pub fn take_stdio(&self) -> Option<Stdio> {
        self.inner().stdio.take()
    }

    /// Lets the process `execve`. An exec failure (e.g. `exec /bin/nope: No such file or
    /// directory`) comes back here; the process has then exited with 127.
    pub fn start(&self) -> Result<()> {
        let mut inner = self.inner();
        if inner.state != State::Created {
            return Err(Error::State {
                id: self.id.clone(),
                reason: format!("cannot start: it is {:?}", inner.state),
            });
        }
        let (Some(sync), Some(report)) = (inner.sync.take(), inner.report.take()) else {
            return Err(Error::State {
                id: self.id.clone(),
                reason: "already started".into(),
            });
        };
        inner.state = State::Running;
        if let Err(e) = send(&sync, b'S') {
            inner.state = State::Stopped;
            return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                Error::Died(self.id.clone())
            } else {
                Error::io("start", e)
            });
        }
        drop(sync);
        match read_report(&report)? {
            Report::Eof => Ok(()),
            Report::Failed(f) => {
                inner.state = State::Stopped;
                Err(child::describe(
                    f,
                    &self.plan.ns.described_joins(),
                    Some(&self.plan.root),
                    &self.plan.process,
                ))
            }
            Report::Ready | Report::Pid(_) => Err(Error::io(
                "start",
                std::io::Error::other("unexpected report"),
            )),
        }
    }

    fn exit_status(&self, raw: i32) -> ExitStatus {
        self.inner().state = State::Stopped;
        ExitStatus::from_raw(raw, self.cgroup.as_ref().is_some_and(Cgroup::oom_killed))
    }

    /// Waits for the init process to end.
    pub async fn wait(&self) -> Result<ExitStatus> {
        let raw = self.proc.wait().await?;
        Ok(self.exit_status(raw))
    }

    /// Waits for the init process to end, blocking the thread.
    pub fn wait_blocking(&self) -> Result<ExitStatus> {
        let raw = self.proc.wait_blocking()?;
        Ok(self.exit_status(raw))
    }

    /// The exit status, if the init process has ended.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        Ok(self.proc.try_wait()?.map(|raw| self.exit_status(raw)))
    }

    /// Sends `sig` to the init process. (As PID 1 of its namespace it only gets the signals
    /// it handles, and SIGKILL.)
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.proc.signal(sig)
    }

    /// Runs `process` in the container: its namespaces, its cgroup, its seccomp filter, the
    /// user, capabilities, env and cwd `process` gives. Returns once it has exec'd (or
    /// failed to).
    pub fn exec(&self, process: &Process, opts: &Options) -> Result<ExecProcess> {
        let state = self.state();
        if state == State::Stopped {
            return Err(Error::State {
                id: self.id.clone(),
                reason: "cannot exec: it has stopped".into(),
            });
        }
        let supported = caps::runtime::thread_all_supported();
        let mut pplan = plan::process_plan(process, self.plan.process.seccomp.clone(), &supported)?;
        pplan.userns = self.plan.ns.user.is_some();
        let pid = self.proc.pid();
        let mut ns = exec_namespaces(&self.plan.ns, pid);
        let ns_files: Vec<(File, libc::c_int)> = ns
            .iter()
            .map(|(p, t)| Ok((open_ns(p)?, *t)))
            .collect::<Result<_>>()?;
        // Its user namespace last: joining the others needs the VM's root.
        let user = self
            .plan
            .ns
            .user
            .as_ref()
            .map(|_| child::ns_path(pid, "user"));
        let user_file = user.as_deref().map(open_ns).transpose()?;
        ns.extend(user.map(|p| (p, libc::CLONE_NEWUSER)));
        let pid_ns = if self.plan.ns.pid == PidNs::Host {
            PidNs::Host
        } else {
            PidNs::Join(child::ns_path(pid, "pid"))
        };
        let pid_file = match &pid_ns {
            PidNs::Join(p) => Some(open_ns(p)?),
            _ => None,
        };
        let (sync_r, sync_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let stdio = stdio_setup(pplan.terminal, opts.stdin)?;
        let console_child = stdio.console.as_ref().map(|(_, c)| c.as_raw_fd());
        let mut keep: Vec<RawFd> = vec![sync_r.as_raw_fd(), report_w.as_raw_fd()];
        keep.extend(console_child);
        keep.extend(ns_files.iter().map(|(f, _)| f.as_raw_fd()));
        keep.extend(user_file.as_ref().map(File::as_raw_fd));
        keep.sort_unstable();
        let child = ExecChild {
            process: &pplan,
            ns_fds: ns_files.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect(),
            user: user_file.as_ref().map(File::as_raw_fd),
            stdio: [
                stdio.child[0].as_raw_fd(),
                stdio.child[1].as_raw_fd(),
                stdio.child[2].as_raw_fd(),
            ],
            console: console_child,
            sync: sync_r.as_raw_fd(),
            report: report_w.as_raw_fd(),
            keep,
        };
        let child_pid = fork_on_thread(
            &pid_ns,
            pid_file.as_ref(),
            0,
            (&pplan.argv, &pplan.envp),
            &|argv, envp| exec_child(&child, argv, envp),
        )?;
        drop(child);
        drop((sync_r, report_w, pid_file, ns_files, user_file));
        let StdioSetup {
            child: child_stdio,
            parent: mut parent_stdio,
            console,
        } = stdio;
        drop(child_stdio);
        let proc = match Proc::new(child_pid) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: plain kill of the child we just forked.
                unsafe { libc::kill(child_pid, libc::SIGKILL) };
                return Err(e);
            }
        };
        let fail = |e: Error| {
            proc.kill_and_reap();
            e
        };
        if let Some(cg) = &self.cgroup {
            cg.add(child_pid).map_err(fail)?;
        }
        send(&sync_w, b'G').map_err(|e| fail(Error::io("release the child", e)))?;
        drop(sync_w);
        if let Some((parent_sock, child_sock)) = console {
            drop(child_sock);
            if let Some(master) = recv_master(&parent_sock).map_err(fail)? {
                parent_stdio = Some(Stdio::Pty { master });
            }
        }
        match read_report(&report_r).map_err(fail)? {
            Report::Eof => Ok(ExecProcess {
                proc,
                stdio: Mutex::new(parent_stdio),
            }),
            Report::Failed(f) => {
                let _ = proc.wait_blocking();
                Err(child::describe(f, &ns, None, &pplan))
            }
            Report::Ready | Report::Pid(_) => Err(fail(Error::io(
                "exec",
                std::io::Error::other("unexpected report"),
            ))),
        }
    }

    /// Kills whatever is left and removes the cgroup.
    pub fn delete(self) -> Result<()> {
        self.proc.kill_and_reap();
        if let Some(cg) = &self.cgroup {
            cg.remove()?;
        }
        Ok(())
    }
}

/// Checks that the user namespace at `path` has the spec's `mappings` when the path is a
/// process's (/proc/PID/ns/user): a container must not end up with ids the spec did not
/// ask for.
fn check_joined_userns(path: &Path, mappings: Option<&IdMappings>) -> Result<()> {
    let Some(want) = mappings else {
        return Ok(());
    };
    let parts: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    let ["/", "proc", pid, "ns", "user"] = parts.as_slice() else {
        return Ok(());
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return Ok(());
    };
    let have = IdMappings::read(pid)
        .map_err(|e| Error::io(format!("read the maps of {}", path.display()), e))?;
    if !have.same_as(want) {
        return Err(Error::Spec(format!(
            "the user namespace {} has the mappings {have}, not the spec's {want}",
            path.display()
        )));
    }
    Ok(())
}

/// The namespaces an exec'd process joins, in order (mount last): those the container got
/// for itself or joined. (Its user namespace it joins after them.)
fn exec_namespaces(ns: &NsPlan, pid: i32) -> Vec<(PathBuf, libc::c_int)> {
    let own = |flag: libc::c_int| ns.unshare & flag != 0 || ns.join.iter().any(|(_, t)| *t == flag);
    [
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWUTS, "uts"),
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWCGROUP, "cgroup"),
        (libc::CLONE_NEWNS, "mnt"),
    ]
    .into_iter()
    .filter(|(flag, _)| own(*flag))
    .map(|(flag, name)| (child::ns_path(pid, name), flag))
    .collect()
}

impl Drop for Container {
    /// A container dropped while running is killed; its cgroup is removed.
    fn drop(&mut self) {
        self.proc.kill_and_reap();
        if let Some(cg) = &self.cgroup {
            let _ = cg.remove();
        }
    }
}

impl ExecProcess {
    /// Its pid (in the agent's PID namespace).
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Takes its stdio (once).
    pub fn take_stdio(&self) -> Option<Stdio> {
        self.stdio.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits for it to end.
    pub async fn wait(&self) -> Result<ExitStatus> {
        Ok(ExitStatus::from_raw(self.proc.wait().await?, false))
    }

    /// Waits for it to end, blocking the thread.
    pub fn wait_blocking(&self) -> Result<ExitStatus> {
        Ok(ExitStatus::from_raw(self.proc.wait_blocking()?, false))
    }

    /// Sends it `sig`.
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.proc.signal(sig)
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        self.proc.kill_and_reap();
    }
}
