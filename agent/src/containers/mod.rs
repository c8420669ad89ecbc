//! The pod's containers inside the guest: the gRPC side of the executor. For each
//! container: its rootfs (an overlay of the image layers from the `layers` virtio-fs share
//! and a writable layer on the guest's tmpfs), the executor's `Container`, threads copying
//! its stdout and stderr into the `Output` stream, and a waiter that records its exit.
//!
//! This file holds the registry (`Containers`, its entries, the gRPC calls); `rootfs`
//! assembles a container's rootfs, `output` pumps its output, `stats` reads its usage.

mod output;
mod rootfs;
mod stats;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
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
pub use output::{ExecStream, OutputStream, PortForwardStream};
use output::{Resubscribable, pump, read_all};
use stats::read_stats;

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
    /// Held shared by each create and start while it works, and exclusively by the list:
    /// a host that lists after a restart sees every create its predecessor began, done.
    inflight: tokio::sync::RwLock<()>,
    layers: PathBuf,
    root: PathBuf,
    pod_pid: crate::pid_ns::PodPidNamespace,
}

impl Default for Containers {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            inflight: tokio::sync::RwLock::new(()),
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
            inflight: tokio::sync::RwLock::new(()),
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
        let _busy = self.inflight.read().await;
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
        let lowers = rootfs::lowers(&self.layers, &r.layers)?;
        let layout = rootfs::Layout::new(&self.root, &r.container_id);
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
            let layout = layout.clone();
            move || -> Result<Container, Status> {
                layout.mount(&lowers, userns_root)?;
                let made = (|| {
                    if !image_user.is_empty() {
                        let u = executor::resolve_user(&layout.rootfs, &image_user)
                            .map_err(exec_err)?;
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
                            let profile =
                                executor::runtime_default_seccomp(&bounding).map_err(exec_err)?;
                            linux.set_seccomp(Some(profile));
                        }
                    }
                    *process_slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        spec.process().clone();
                    Container::create_with(&id, &spec, &layout.rootfs, &opts).map_err(exec_err)
                })();
                if made.is_err() {
                    rootfs::remove(&layout.dir);
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
            dir: layout.dir,
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

    /// ListContainers: every container, started or not, exited or not, once the creates
    /// and starts under way have finished.
    pub async fn list(&self) -> Vec<moat_proto::agent::ContainerEntry> {
        let _quiet = self.inflight.write().await;
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .map(|(id, e)| moat_proto::agent::ContainerEntry {
                container_id: id.clone(),
                started: e
                    .exit_tx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none(),
                exited: e.exit.borrow().is_some(),
            })
            .collect();
        all.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        all
    }

    /// StartContainer; a process that cannot exec is reported here and by WaitContainer.
    /// Starting a started container answers as its first start did (a host that lost the
    /// first answer asks again).
    pub async fn start(&self, id: &str) -> Result<StartContainerResponse, Status> {
        let _busy = self.inflight.read().await;
        let e = self.get(id)?;
        if e.exit_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            let error = e
                .start_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if error.is_empty() {
                return Ok(StartContainerResponse {});
            }
            return Err(Status::failed_precondition(error));
        }
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
        blocking(move || rootfs::remove(&dir)).await?;
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
