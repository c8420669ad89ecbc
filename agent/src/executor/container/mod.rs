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
//!
//! This file holds the handles (`Container`, `ExecProcess`) and the parent's side of
//! `create` and `exec`; `stdio` makes the process's stdio, `handshake` carries the pipes'
//! messages, `fork` forks and runs the child's side.

mod fork;
mod handshake;
mod stdio;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::{Process, Spec};

use super::cgroup::{self, Cgroup};
use super::error::{Error, Result};
use super::failure::{self, Failure};
use super::plan::{self, NsPlan, PidNs, Plan, SeccompPlan};
use super::process::{ExitStatus, Proc, registry};
use super::seccomp;
use super::userns::IdMappings;
use fork::{ChildFds, create_child, exec_child};
use handshake::{Report, read_report, send};
use stdio::{StdioSetup, pipe, recv_master, stdio_setup};

pub(super) use fork::{child_close_fds, child_reset_signals, fork_on_thread};
pub use stdio::Stdio;

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

/// The parent's handle on the child it just forked; a child it cannot get one for is
/// killed, so it never runs unwatched.
fn adopt(pid: i32, proc: Result<Proc>) -> Result<Proc> {
    proc.inspect_err(|_| {
        // SAFETY: plain kill of the child we just forked.
        unsafe { libc::kill(pid, libc::SIGKILL) };
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
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
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
        let child = ChildFds::new(&stdio, &sync_r, &report_w, &ns_files, user_file.as_ref());
        let pid = fork_on_thread(
            &thread_pid_ns,
            pid_file.as_ref(),
            0,
            (&plan.process.argv, &plan.process.envp),
            &|argv, envp| create_child(&plan, &child, argv, envp),
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
        let mut proc = adopt(pid, proc)?;
        let joins = plan.ns.described_joins();
        let failed = |f: Failure| failure::describe(f, &joins, Some(&plan.root), &plan.process);
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
                Err(failure::describe(
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
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
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
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
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
        let user = self.plan.ns.user.as_ref().map(|_| ns_path(pid, "user"));
        let user_file = user.as_deref().map(open_ns).transpose()?;
        ns.extend(user.map(|p| (p, libc::CLONE_NEWUSER)));
        let pid_ns = if self.plan.ns.pid == PidNs::Host {
            PidNs::Host
        } else {
            PidNs::Join(ns_path(pid, "pid"))
        };
        let pid_file = match &pid_ns {
            PidNs::Join(p) => Some(open_ns(p)?),
            _ => None,
        };
        let (sync_r, sync_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let stdio = stdio_setup(pplan.terminal, opts.stdin)?;
        let child = ChildFds::new(&stdio, &sync_r, &report_w, &ns_files, user_file.as_ref());
        let child_pid = fork_on_thread(
            &pid_ns,
            pid_file.as_ref(),
            0,
            (&pplan.argv, &pplan.envp),
            &|argv, envp| exec_child(&pplan, &child, argv, envp),
        )?;
        drop(child);
        drop((sync_r, report_w, pid_file, ns_files, user_file));
        let StdioSetup {
            child: child_stdio,
            parent: mut parent_stdio,
            console,
        } = stdio;
        drop(child_stdio);
        let proc = adopt(child_pid, Proc::new(child_pid))?;
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
                Err(failure::describe(f, &ns, None, &pplan))
            }
            Report::Ready | Report::Pid(_) => Err(fail(Error::io(
                "exec",
                std::io::Error::other("unexpected report"),
            ))),
        }
    }

    /// Kills whatever is left and removes the cgroup.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
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
    .map(|(flag, name)| (ns_path(pid, name), flag))
    .collect()
}

/// The /proc path of a namespace of `pid`.
fn ns_path(pid: i32, name: &str) -> PathBuf {
    Path::new("/proc")
        .join(pid.to_string())
        .join("ns")
        .join(name)
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
