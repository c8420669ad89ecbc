//! The pod's containers inside the guest: the gRPC side of the executor. For each
//! container: its rootfs (an overlay of the image layers from the `layers` virtio-fs share
//! and a writable layer on the guest's tmpfs), the executor's `Container`, threads copying
//! its stdout and stderr into the `Output` stream, and a waiter that records its exit.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_proto::agent::{
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    OutputChunk, RemoveContainerResponse, SignalContainerRequest, SignalContainerResponse,
    StartContainerResponse, WaitContainerRequest, WaitContainerResponse, output_chunk,
};
use oci_spec::runtime::Spec;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::executor::{self, Container, Options, Stdio};

/// Output stream type.
pub type OutputStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<OutputChunk, Status>> + Send>>;

/// Exec output stream type.
pub type ExecStream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<moat_proto::agent::ExecOutput, Status>> + Send>,
>;
/// PortForward stream type.
pub type PortForwardStream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<moat_proto::agent::PortForwardData, Status>> + Send>,
>;

/// Where the image layers share is mounted.
pub const LAYERS_ROOT: &str = "/run/moat/layers";
/// Per-container state (writable layer, rootfs mount point).
pub const CONTAINERS_ROOT: &str = "/run/moat/containers";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: i32,
    oom_killed: bool,
    finished_at: i64,
}

struct Entry {
    container: Arc<Container>,
    process: oci_spec::runtime::Process,
    dir: PathBuf,
    output: Mutex<Option<mpsc::Receiver<OutputChunk>>>,
    exit: watch::Receiver<Option<Exit>>,
    exit_tx: Mutex<Option<watch::Sender<Option<Exit>>>>,
    start_error: Mutex<String>,
    /// Where Input goes: the stdin pipe or the terminal master.
    stdin: Mutex<Option<std::fs::File>>,
    /// The terminal master, for Resize.
    tty: Option<OwnedFd>,
}

/// The containers of this pod.
pub struct Containers {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    layers: PathBuf,
    root: PathBuf,
    pod_pid: crate::pid_ns::PodPidNamespace,
}

impl Default for Containers {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            layers: PathBuf::from(LAYERS_ROOT),
            root: PathBuf::from(CONTAINERS_ROOT),
            pod_pid: Default::default(),
        }
    }
}

/// The user of the spec's process: uid, gid, and every group, the primary first.
fn spec_user(process: &Mutex<Option<oci_spec::runtime::Process>>) -> (u32, u32, Vec<u32>) {
    let p = process.lock().unwrap_or_else(|p| p.into_inner());
    let Some(u) = p.as_ref().map(|p| p.user().clone()) else {
        return (0, 0, Vec::new());
    };
    let mut groups = vec![u.gid()];
    for g in u.additional_gids().clone().unwrap_or_default() {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    (u.uid(), u.gid(), groups)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn exec_err(e: executor::Error) -> Status {
    match e {
        executor::Error::Spec(_) | executor::Error::User { .. } => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::failed_precondition(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("agent task: {e}")))
}

/// Copies a pipe into the output channel until EOF.
fn pump(fd: OwnedFd, stream: output_chunk::Stream, tx: mpsc::Sender<OutputChunk>) {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = OutputChunk {
                        stream: stream as i32,
                        data: buf[..n].to_vec(),
                        time: now_nanos(),
                    };
                    if tx.blocking_send(chunk).is_err() {
                        // Nobody listens: keep draining so the process never blocks on a full pipe.
                        continue;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
}

fn read_all(fd: Option<OwnedFd>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(fd) = fd {
            let _ = std::fs::File::from(fd).read_to_end(&mut out);
        }
        out
    })
}

/// Creates `dir` (and its parents) owned by `uid`:`gid`: the upper directory of a container
/// in the pod's user namespace, whose root inside (the mapped ids outside) then owns `/`.
/// The lower layers need nothing: moatd shifts their owners on the host for such pods.
fn owned_dir(dir: &std::path::Path, uid: u32, gid: u32) -> Result<(), Status> {
    let io =
        |what: &str, e: std::io::Error| Status::internal(format!("{what} {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| io("mkdir", e))?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(|e| io("chown", e))
}

impl Containers {
    /// Gives the pod a user namespace (SetupSandbox's `userns`, validated) and starts the
    /// pod's init in it.
    pub fn set_userns(&self, maps: crate::executor::userns::IdMappings) -> Result<(), Status> {
        self.pod_pid.set_userns(maps)
    }

    /// Containers whose layers and state live under these directories (tests).
    #[cfg(test)]
    pub(crate) fn with_dirs(layers: PathBuf, root: PathBuf) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            layers,
            root,
            pod_pid: crate::pid_ns::PodPidNamespace::with_init(
                PathBuf::from("/bin/sleep"),
                vec!["pause", "100000"],
            ),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Entry>, Status> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container {id} not found in the guest")))
    }

    /// CreateContainer.
    pub async fn create(
        &self,
        r: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, Status> {
        if !valid_id(&r.container_id) {
            return Err(Status::invalid_argument(format!(
                "invalid container id {:?}",
                r.container_id
            )));
        }
        if self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&r.container_id)
        {
            return Err(Status::already_exists(format!(
                "container {} exists",
                r.container_id
            )));
        }
        let mut spec: Spec = serde_json::from_slice(&r.spec_json)
            .map_err(|e| Status::invalid_argument(format!("runtime spec: {e}")))?;
        let pid_ns = crate::pid_ns::namespace_for(r.pid_mode, &self.pod_pid, &r.pid_target, |t| {
            let target = self.get(t)?;
            if target.exit.borrow().is_some() {
                return Err(Status::failed_precondition(format!(
                    "container {t}, whose PID namespace this one would join, has exited"
                )));
            }
            Ok(target.container.pid())
        })?;
        if let Some(path) = pid_ns {
            crate::pid_ns::join_pid_namespace(&mut spec, &path)?;
        }
        // A container in the pod's user namespace: its root owns its writable layer.
        let userns_root = crate::pid_ns::join_user_namespace(&mut spec, &self.pod_pid)?
            .map(|m| {
                m.root().ok_or_else(|| {
                    Status::internal("the pod's user namespace does not map uid and gid 0")
                })
            })
            .transpose()?;
        let mut lowers = Vec::new();
        for l in &r.layers {
            if !valid_id(l) {
                return Err(Status::invalid_argument(format!("invalid layer {l:?}")));
            }
            let p = self.layers.join(l);
            if !p.is_dir() {
                return Err(Status::failed_precondition(format!(
                    "layer {l} is not in the layers share"
                )));
            }
            lowers.push(p);
        }
        let dir = self.root.join(&r.container_id);
        let rootfs = dir.join("rootfs");
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        let id = r.container_id.clone();
        let (image_user, default_seccomp) = (r.image_user.clone(), r.default_seccomp);
        let strict_groups = r.strict_groups;
        let opts = Options {
            stdin: r.stdin,
            ..Options::default()
        };
        let process_slot: Arc<Mutex<Option<oci_spec::runtime::Process>>> =
            Arc::new(Mutex::new(None));
        let created = blocking({
            let process_slot = process_slot.clone();
            let (dir, rootfs) = (dir.clone(), rootfs.clone());
            move || -> Result<Container, Status> {
                if let Some((uid, gid)) = userns_root {
                    owned_dir(&upper, uid, gid)?;
                }
                executor::mount_overlay(&lowers, &upper, &work, &rootfs).map_err(exec_err)?;
                let made = (|| {
                    if !image_user.is_empty() {
                        let u = executor::resolve_user(&rootfs, &image_user).map_err(exec_err)?;
                        if let Some(p) = spec.process_mut() {
                            let mut user = p.user().clone();
                            user.set_uid(u.uid);
                            user.set_gid(u.gid);
                            let mut gids = user.additional_gids().clone().unwrap_or_default();
                            if !strict_groups {
                                gids.extend(u.additional_gids);
                            }
                            user.set_additional_gids(Some(gids));
                            p.set_user(user);
                        }
                    }
                    if default_seccomp {
                        let bounding = spec
                            .process()
                            .as_ref()
                            .and_then(|p| p.capabilities().as_ref())
                            .and_then(|c| c.bounding().clone())
                            .unwrap_or_default();
                        if let Some(linux) = spec.linux_mut()
                            && linux.seccomp().is_none()
                        {
                            linux.set_seccomp(Some(executor::runtime_default_seccomp(&bounding)));
                        }
                    }
                    *process_slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        spec.process().clone();
                    Container::create_with(&id, &spec, &rootfs, &opts).map_err(exec_err)
                })();
                if made.is_err() {
                    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_dir_all(&dir);
                }
                made
            }
        })
        .await??;
        let pid = created.pid() as u32;
        let user = spec_user(&process_slot);
        let (tx, rx) = mpsc::channel(64);
        let (mut stdin, mut tty) = (None, None);
        match created.take_stdio() {
            Some(Stdio::Pipes {
                stdin: input,
                stdout,
                stderr,
            }) => {
                stdin = input.map(std::fs::File::from);
                pump(stdout, output_chunk::Stream::Stdout, tx.clone());
                pump(stderr, output_chunk::Stream::Stderr, tx);
            }
            Some(Stdio::Pty { master }) => {
                let dup = |fd: &OwnedFd| {
                    fd.try_clone()
                        .map_err(|e| Status::internal(format!("dup the terminal: {e}")))
                };
                if r.stdin {
                    stdin = Some(std::fs::File::from(dup(&master)?));
                }
                tty = Some(dup(&master)?);
                pump(master, output_chunk::Stream::Stdout, tx);
            }
            None => drop(tx),
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let process = process_slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Status::invalid_argument("the runtime spec has no process"))?;
        let entry = Entry {
            container: Arc::new(created),
            process,
            dir,
            output: Mutex::new(Some(rx)),
            exit: exit_rx,
            exit_tx: Mutex::new(Some(exit_tx)),
            start_error: Mutex::new(String::new()),
            stdin: Mutex::new(stdin),
            tty,
        };
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.container_id.clone(), Arc::new(entry));
        tracing::info!(container = %r.container_id, pid, uid = user.0, "container created");
        Ok(CreateContainerResponse {
            pid,
            uid: user.0,
            gid: user.1,
            groups: user.2,
        })
    }

    /// StartContainer; a process that cannot exec is reported here and by WaitContainer.
    pub async fn start(&self, id: &str) -> Result<StartContainerResponse, Status> {
        let e = self.get(id)?;
        let c = e.container.clone();
        let started = blocking(move || c.start()).await?;
        let exit_tx = e.exit_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Err(err) = started {
            let msg = err.to_string();
            *e.start_error.lock().unwrap_or_else(|p| p.into_inner()) = msg.clone();
            if let Some(tx) = exit_tx {
                let _ = tx.send(Some(Exit {
                    code: 128,
                    oom_killed: false,
                    finished_at: now_nanos(),
                }));
            }
            return Err(Status::failed_precondition(msg));
        }
        if let Some(tx) = exit_tx {
            let c = e.container.clone();
            std::thread::spawn(move || {
                let exit = match c.wait_blocking() {
                    Ok(s) => Exit {
                        code: s.code,
                        oom_killed: s.oom_killed,
                        finished_at: now_nanos(),
                    },
                    Err(_) => Exit {
                        code: 255,
                        oom_killed: false,
                        finished_at: now_nanos(),
                    },
                };
                c.kill_remaining();
                let _ = tx.send(Some(exit));
            });
        }
        Ok(StartContainerResponse {})
    }

    /// WaitContainer: up to `timeout_ms`.
    pub async fn wait(&self, r: WaitContainerRequest) -> Result<WaitContainerResponse, Status> {
        let e = self.get(&r.container_id)?;
        let mut rx = e.exit.clone();
        let _ = tokio::time::timeout(
            Duration::from_millis(r.timeout_ms.into()),
            rx.wait_for(|x| x.is_some()),
        )
        .await;
        let exit = *e.exit.borrow();
        Ok(match exit {
            None => WaitContainerResponse::default(),
            Some(x) => WaitContainerResponse {
                exited: true,
                exit_code: x.code,
                oom_killed: x.oom_killed,
                finished_at: x.finished_at,
                error: e
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            },
        })
    }

    /// SignalContainer.
    pub async fn signal(
        &self,
        r: SignalContainerRequest,
    ) -> Result<SignalContainerResponse, Status> {
        let e = self.get(&r.container_id)?;
        if e.exit.borrow().is_some() {
            return Ok(SignalContainerResponse {});
        }
        e.container.signal(r.signal).map_err(exec_err)?;
        Ok(SignalContainerResponse {})
    }

    /// RemoveContainer: kills what still runs, unmounts and deletes its files.
    pub async fn remove(&self, id: &str) -> Result<RemoveContainerResponse, Status> {
        let Some(e) = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        else {
            return Ok(RemoveContainerResponse {});
        };
        if e.exit.borrow().is_none() {
            let _ = e.container.signal(libc::SIGKILL);
            let mut rx = e.exit.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|x| x.is_some())).await;
        }
        let dir = e.dir.clone();
        blocking(move || {
            let _ = nix::mount::umount2(&dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await?;
        tracing::info!(container = %id, "container removed");
        Ok(RemoveContainerResponse {})
    }

    /// Starts a new process in container `id`, as the container's own process is set up
    /// (user, env, cwd, capabilities, seccomp) but running `cmd`; `size` is the terminal's
    /// (rows, columns).
    pub(crate) async fn spawn(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        size: Option<(u16, u16)>,
    ) -> Result<executor::ExecProcess, Status> {
        let e = self.get(id)?;
        if cmd.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let c = e.container.clone();
        let mut p = e.process.clone();
        blocking(move || {
            p.set_args(Some(cmd));
            p.set_terminal(Some(tty));
            p.set_console_size(size.and_then(|(rows, cols)| {
                oci_spec::runtime::BoxBuilder::default()
                    .height(u32::from(rows))
                    .width(u32::from(cols))
                    .build()
                    .ok()
            }));
            let opts = Options {
                stdin,
                ..Options::default()
            };
            c.exec(&p, &opts)
        })
        .await?
        .map_err(exec_err)
    }

    /// ExecSync: runs a process in the container and collects its output.
    pub async fn exec_sync(&self, r: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        let proc = self
            .spawn(&r.container_id, r.cmd.clone(), false, false, None)
            .await?;
        let (out, err) = match proc.take_stdio() {
            Some(Stdio::Pipes { stdout, stderr, .. }) => {
                (read_all(Some(stdout)), read_all(Some(stderr)))
            }
            Some(Stdio::Pty { master }) => (read_all(Some(master)), read_all(None)),
            None => (read_all(None), read_all(None)),
        };
        let proc = Arc::new(proc);
        let waiter = {
            let proc = proc.clone();
            tokio::task::spawn_blocking(move || proc.wait_blocking())
        };
        let timeout = Duration::from_millis(r.timeout_ms.max(1).into());
        let status = match tokio::time::timeout(timeout, waiter).await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(e))) => return Err(exec_err(e)),
            Ok(Err(e)) => return Err(Status::internal(e.to_string())),
            Err(_) => {
                let _ = proc.signal(libc::SIGKILL);
                return Ok(ExecSyncResponse {
                    timed_out: true,
                    exit_code: -1,
                    ..Default::default()
                });
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok(ExecSyncResponse {
            stdout,
            stderr,
            exit_code: status.code,
            timed_out: false,
        })
    }

    /// UpdateResources: rewrites cpu.max and memory.max of the container's cgroup.
    pub async fn update_resources(
        &self,
        r: moat_proto::agent::UpdateResourcesRequest,
    ) -> Result<moat_proto::agent::UpdateResourcesResponse, Status> {
        let e = self.get(&r.container_id)?;
        let dir = e
            .container
            .cgroup_path()
            .map(PathBuf::from)
            .ok_or_else(|| Status::failed_precondition("the container has no cgroup"))?;
        let period = if r.cpu_period == 0 {
            100_000
        } else {
            r.cpu_period
        };
        let cpu = if r.cpu_quota > 0 {
            format!("{} {period}", r.cpu_quota)
        } else {
            format!("max {period}")
        };
        let mem = if r.memory_limit > 0 {
            r.memory_limit.to_string()
        } else {
            "max".into()
        };
        for (file, value) in [("cpu.max", cpu), ("memory.max", mem)] {
            std::fs::write(dir.join(file), value.as_bytes())
                .map_err(|err| Status::failed_precondition(format!("write {file}: {err}")))?;
        }
        Ok(moat_proto::agent::UpdateResourcesResponse {})
    }

    /// Stats: cgroup v2 usage of the container.
    pub async fn stats(&self, id: &str) -> Result<moat_proto::agent::StatsResponse, Status> {
        let e = self.get(id)?;
        let dir = e
            .container
            .cgroup_path()
            .map(PathBuf::from)
            .ok_or_else(|| Status::failed_precondition("the container has no cgroup"))?;
        Ok(read_stats(&dir))
    }

    /// Input: writes the stream's data to the container's stdin or terminal.
    pub async fn input<S>(&self, mut chunks: S) -> Result<(), Status>
    where
        S: futures_core::Stream<Item = Result<moat_proto::agent::InputChunk, Status>> + Unpin,
    {
        use tokio_stream::StreamExt as _;
        let mut entry: Option<Arc<Entry>> = None;
        while let Some(c) = chunks.next().await {
            let c = c?;
            let e = match &entry {
                Some(e) => e.clone(),
                None => {
                    let e = self.get(&c.container_id)?;
                    entry = Some(e.clone());
                    e
                }
            };
            if !c.data.is_empty() {
                let e2 = e.clone();
                blocking(move || {
                    use std::io::Write;
                    let mut guard = e2.stdin.lock().unwrap_or_else(|p| p.into_inner());
                    let f = guard
                        .as_mut()
                        .ok_or_else(|| Status::failed_precondition("the container has no stdin"))?;
                    f.write_all(&c.data)
                        .map_err(|err| Status::failed_precondition(format!("write stdin: {err}")))
                })
                .await??;
            }
            if c.close {
                e.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
                break;
            }
        }
        Ok(())
    }

    /// Resize: TIOCSWINSZ on the container's terminal.
    pub async fn resize(&self, r: moat_proto::agent::ResizeRequest) -> Result<(), Status> {
        let e = self.get(&r.container_id)?;
        let fd = e
            .tty
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("the container has no terminal"))?;
        let ws = libc::winsize {
            ws_row: r.height.min(u16::MAX.into()) as u16,
            ws_col: r.width.min(u16::MAX.into()) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; fd is our open pty master.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(Status::failed_precondition(format!(
                "resize: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Output: the main process's stdout and stderr, once.
    pub async fn output(&self, id: &str) -> Result<OutputStream, Status> {
        let e = self.get(id)?;
        let rx = e
            .output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "the output of container {id} is already being read"
                ))
            })?;
        Ok(Box::pin(Resubscribable {
            rx: Some(rx),
            entry: e,
        }))
    }
}

/// Reads cpu.stat, memory.current, memory.stat and pids.current under `dir`.
fn read_stats(dir: &std::path::Path) -> moat_proto::agent::StatsResponse {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let key = |text: &str, k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    let usage: u64 = read("memory.current").trim().parse().unwrap_or(0);
    let inactive = key(&read("memory.stat"), "inactive_file ");
    moat_proto::agent::StatsResponse {
        timestamp: now_nanos(),
        cpu_usage_nanos: key(&read("cpu.stat"), "usage_usec ") * 1000,
        memory_usage_bytes: usage,
        memory_working_set_bytes: usage.saturating_sub(inactive),
        pids: read("pids.current").trim().parse().unwrap_or(0),
    }
}

/// The output stream of one reader. When the reader goes away (moatd restarted, say) the
/// channel goes back to the container, so the next Output call carries on where this one
/// stopped instead of losing the rest.
struct Resubscribable {
    rx: Option<mpsc::Receiver<OutputChunk>>,
    entry: Arc<Entry>,
}

impl futures_core::Stream for Resubscribable {
    type Item = Result<OutputChunk, Status>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|o| o.map(Ok)),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Resubscribable {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *self.entry.output.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_cgroup_files() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(
            d.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .expect("w");
        std::fs::write(d.path().join("memory.current"), "10000\n").expect("w");
        std::fs::write(
            d.path().join("memory.stat"),
            "anon 6000\ninactive_file 3000\n",
        )
        .expect("w");
        std::fs::write(d.path().join("pids.current"), "4\n").expect("w");
        let s = read_stats(d.path());
        assert_eq!(
            (
                s.cpu_usage_nanos,
                s.memory_usage_bytes,
                s.memory_working_set_bytes,
                s.pids
            ),
            (1_500_000, 10000, 7000, 4)
        );
    }

    /// A layer directory with busybox, when running as root with busybox-static installed.
    pub(crate) fn busybox_layer(test: &str) -> Option<tempfile::TempDir> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/bin/busybox").exists() {
            eprintln!("SKIPPED {test}: needs root and /bin/busybox (busybox-static)");
            return None;
        }
        let d = tempfile::tempdir().expect("tmp");
        let l = d.path().join("aa");
        for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(l.join(sub)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", l.join("bin/busybox")).expect("copy");
        for a in [
            "sh", "cat", "stty", "sleep", "nc", "head", "wc", "echo", "ps",
        ] {
            std::os::unix::fs::symlink("busybox", l.join("bin").join(a)).expect("link");
        }
        Some(d)
    }

    pub(crate) fn spec_json(args: &[&str], terminal: bool) -> Vec<u8> {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_namespaces(None);
        linux.set_resources(None);
        spec.set_linux(Some(linux));
        let p = spec.process_mut().as_mut().expect("process");
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        p.set_terminal(Some(terminal));
        serde_json::to_vec(&spec).expect("json")
    }

    async fn read_output(c: &Containers, id: &str) -> String {
        use tokio_stream::StreamExt as _;
        let mut out = c.output(id).await.expect("output");
        let mut text = String::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(10), out.next()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").data));
        }
        text
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stdin_reaches_the_container_and_the_terminal_can_be_resized() {
        let Some(layers) =
            busybox_layer("stdin_reaches_the_container_and_the_terminal_can_be_resized")
        else {
            return;
        };
        let root = tempfile::tempdir().expect("root");
        let c = Containers::with_dirs(layers.path().into(), root.path().into());

        let req = |id: &str, args: &[&str], tty: bool, stdin: bool| CreateContainerRequest {
            container_id: id.into(),
            spec_json: spec_json(args, tty),
            layers: vec!["aa".into()],
            stdin,
            ..Default::default()
        };
        c.create(req("c1", &["cat"], false, true))
            .await
            .expect("create cat");
        let reader = {
            let out = c.output("c1").await.expect("output");
            tokio::spawn(async move {
                use tokio_stream::StreamExt as _;
                let mut out = out;
                let mut text = String::new();
                while let Some(Ok(chunk)) = out.next().await {
                    text.push_str(&String::from_utf8_lossy(&chunk.data));
                }
                text
            })
        };
        c.start("c1").await.expect("start");
        let chunks = vec![
            Ok(moat_proto::agent::InputChunk {
                container_id: "c1".into(),
                data: b"hello ".to_vec(),
                close: false,
            }),
            Ok(moat_proto::agent::InputChunk {
                container_id: String::new(),
                data: b"moat\n".to_vec(),
                close: true,
            }),
        ];
        c.input(tokio_stream::iter(chunks)).await.expect("input");
        let w = c
            .wait(WaitContainerRequest {
                container_id: "c1".into(),
                timeout_ms: 10_000,
            })
            .await
            .expect("wait");
        assert!(w.exited && w.exit_code == 0, "cat ends at EOF: {w:?}");
        assert_eq!(reader.await.expect("reader"), "hello moat\n");

        c.create(req("c2", &["sh", "-c", "sleep 1; stty size"], true, false))
            .await
            .expect("create tty");
        c.start("c2").await.expect("start");
        c.resize(moat_proto::agent::ResizeRequest {
            container_id: "c2".into(),
            width: 100,
            height: 40,
        })
        .await
        .expect("resize");
        assert!(read_output(&c, "c2").await.contains("40 100"));
        let e = c
            .resize(moat_proto::agent::ResizeRequest {
                container_id: "c1".into(),
                width: 1,
                height: 1,
            })
            .await;
        assert_eq!(
            e.expect_err("no terminal").code(),
            tonic::Code::FailedPrecondition
        );
        c.remove("c1").await.expect("remove");
        c.remove("c2").await.expect("remove");
        assert_eq!(
            std::fs::read_dir(root.path()).expect("root").count(),
            0,
            "container dirs removed"
        );
    }

    /// `spec_json(args)` asking for a user namespace with the mappings container 0.. to
    /// `host`..., and its own PID, mount, IPC and UTS namespaces.
    fn userns_spec_json(args: &[&str], host: u32) -> Vec<u8> {
        let mut v: serde_json::Value =
            serde_json::from_slice(&spec_json(args, false)).expect("json");
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}
        ]);
        let m = serde_json::json!([{"containerID": 0, "hostID": host, "size": 65536}]);
        v["linux"]["uidMappings"] = m.clone();
        v["linux"]["gidMappings"] = m;
        v["root"]["readonly"] = serde_json::json!(false);
        serde_json::to_vec(&v).expect("json")
    }

    /// Makes everything under `p` owned by `id`:`id`, as moatd shifts a layer's owners.
    fn shift(p: &std::path::Path, id: u32) {
        let meta = std::fs::symlink_metadata(p).expect("stat");
        std::os::unix::fs::lchown(p, Some(id), Some(id)).expect("chown");
        if meta.is_dir() {
            for e in std::fs::read_dir(p).expect("readdir") {
                shift(&e.expect("entry").path(), id);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn containers_of_a_pod_with_a_user_namespace_join_it_and_own_their_root() {
        use std::os::unix::fs::MetadataExt;
        let test = "containers_of_a_pod_with_a_user_namespace_join_it_and_own_their_root";
        let Some(layers) = busybox_layer(test) else {
            return;
        };
        for a in ["id", "stat", "touch", "readlink"] {
            std::os::unix::fs::symlink("busybox", layers.path().join("aa/bin").join(a))
                .expect("link");
        }
        shift(&layers.path().join("aa"), 100_000);
        let root = tempfile::tempdir().expect("root");
        let c = Containers::with_dirs(layers.path().into(), root.path().into());
        let req = |id: &str, args: &[&str], host: u32, pid_mode: PidMode| CreateContainerRequest {
            container_id: id.into(),
            spec_json: userns_spec_json(args, host),
            layers: vec!["aa".into()],
            pid_mode: pid_mode as i32,
            ..Default::default()
        };
        use moat_proto::agent::PidMode;
        // No user namespace in the pod: a spec asking for one is refused.
        let e = c
            .create(req("a1", &["true"], 100_000, PidMode::PidContainer))
            .await
            .expect_err("no pod userns");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        c.set_userns(crate::executor::userns::tests::pod(100_000))
            .expect("userns");
        let e = c
            .create(req("a2", &["true"], 200_000, PidMode::PidContainer))
            .await
            .expect_err("other mappings");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert_eq!(std::fs::read_dir(root.path()).expect("root").count(), 0);

        let script = "cat /proc/self/uid_map; id -u; stat -c %u:%g /; touch /new && stat -c %u /new; \
                      readlink /proc/self/ns/user";
        c.create(req(
            "b1",
            &["sh", "-c", script],
            100_000,
            PidMode::PidContainer,
        ))
        .await
        .expect("create");
        let upper = root.path().join("b1/upper");
        let meta = std::fs::metadata(&upper).expect("upper");
        assert_eq!((meta.uid(), meta.gid()), (100_000, 100_000));
        let reader = {
            let mut out = c.output("b1").await.expect("output");
            tokio::spawn(async move {
                use tokio_stream::StreamExt as _;
                let mut text = String::new();
                while let Some(Ok(chunk)) = out.next().await {
                    text.push_str(&String::from_utf8_lossy(&chunk.data));
                }
                text
            })
        };
        c.start("b1").await.expect("start");
        let w = c
            .wait(WaitContainerRequest {
                container_id: "b1".into(),
                timeout_ms: 10_000,
            })
            .await
            .expect("wait");
        let out = reader.await.expect("reader");
        assert!(w.exited && w.exit_code == 0, "{w:?} {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["0", "100000", "65536"],
            "{out}"
        );
        assert_eq!(&lines[1..4], ["0", "0:0", "0"], "{out}");
        assert_eq!(
            std::fs::metadata(upper.join("new")).expect("new").uid(),
            100_000,
            "written in the upper layer as the mapped root"
        );
        let pod_user = c
            .pod_pid
            .user_path()
            .expect("path")
            .expect("the pod's user namespace");
        let pod_user = std::fs::read_link(pod_user).expect("readlink");
        assert_eq!(std::path::Path::new(lines[4]), pod_user, "{out}");

        // In the pod's PID namespace, and exec'd into: the same user namespace.
        c.create(req("b2", &["sleep", "100"], 100_000, PidMode::PidPod))
            .await
            .expect("create");
        c.start("b2").await.expect("start");
        let r = c
            .exec_sync(ExecSyncRequest {
                container_id: "b2".into(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "readlink /proc/self/ns/user; id -u".into(),
                ],
                timeout_ms: 10_000,
            })
            .await
            .expect("exec");
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert_eq!(
            r.exit_code,
            0,
            "{out} {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(std::path::Path::new(lines[0]), pod_user, "{out}");
        assert_eq!(lines[1], "0");
        c.remove("b1").await.expect("remove");
        c.remove("b2").await.expect("remove");
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[tokio::test]
    async fn unknown_containers_and_bad_requests() {
        let c = Containers::with_dirs(PathBuf::from("/nonexistent"), PathBuf::from("/nonexistent"));
        assert_eq!(
            c.start("ab").await.expect_err("unknown").code(),
            tonic::Code::NotFound
        );
        assert!(
            c.remove("ab").await.is_ok(),
            "removing an unknown container is fine"
        );
        let bad = CreateContainerRequest {
            container_id: "../../x".into(),
            ..Default::default()
        };
        assert_eq!(
            c.create(bad).await.expect_err("bad id").code(),
            tonic::Code::InvalidArgument
        );
        let r = CreateContainerRequest {
            container_id: "ab".into(),
            spec_json: b"{}".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            c.create(r).await.expect_err("bad spec").code(),
            tonic::Code::InvalidArgument
        );
    }
}
