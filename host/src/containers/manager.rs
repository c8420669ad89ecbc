//! The container manager's lifecycle: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, status, list and recovery after a restart. Every change of state goes
//! through the state machine and is persisted; every call into the guest has a deadline.
//! For each started container two tasks run: `output` copies its output into the CRI log
//! file (and to attached clients), `exit` waits for its exit. `calls` has ExecSync, stats
//! and resource updates.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::guest::PidNamespace;
use crate::guest::{ContainerCreate, Guest, GuestError};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::error::ContainerError;
use super::record::{ContainerRecord, ContainerStore, MountRecord};
use super::spec::{self, ContainerInput, ImageDefaults};
use super::state::{ContainerEvent, ContainerState, apply};
use crate::images::ImageManager;
use crate::sandbox::SandboxManager;
use crate::store::Store;
use crate::sync::KeyedLocks;
use crate::time::now_nanos;

/// A user namespace for a message: its mappings, or the VM's ids.
fn describe_userns(u: Option<&crate::userns::UserNamespace>) -> String {
    match u {
        None => "none: the VM's ids".into(),
        Some(u) => format!("uids {:?}, gids {:?}", u.uids, u.gids),
    }
}

/// What CreateContainer asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The pod sandbox.
    pub sandbox_id: String,
    /// Metadata name.
    pub name: String,
    /// Metadata attempt.
    pub attempt: u32,
    /// The image, by id, tag or digest.
    pub image: String,
    /// The process and security settings.
    pub input: ContainerInput,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Log path relative to the pod's log directory.
    pub log_path: String,
    /// Host paths to mount into the container.
    pub mounts: Vec<crate::volumes::HostMount>,
    /// Its PID namespace.
    pub pid_namespace: PidNamespace,
    /// The user namespace the request names: `None` when it names none (the pod's, then),
    /// `Some(None)` for the VM's ids (CRI NODE), `Some(Some(_))` for mappings (CRI POD),
    /// which must be the pod's.
    pub userns: Option<Option<crate::userns::UserNamespace>>,
}

/// The result of ExecSync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

pub(super) struct Inner {
    pub(super) config: super::config::ContainersConfig,
    pub(super) records: ContainerStore,
    pub(super) sandboxes: SandboxManager,
    pub(super) images: ImageManager,
    pub(super) locks: KeyedLocks,
    pub(super) create: tokio::sync::Mutex<()>,
    pub(super) reopen:
        Mutex<HashMap<String, mpsc::Sender<tokio::sync::oneshot::Sender<std::io::Result<()>>>>>,
    /// The output of running containers, for Attach: the log copier publishes every chunk.
    /// Lifecycle events, for GetContainerEvents.
    pub(super) events: super::events::Events,
    pub(super) attached:
        Mutex<HashMap<String, tokio::sync::broadcast::Sender<crate::guest::OutputRecord>>>,
}

/// The container manager.
#[derive(Clone)]
pub struct ContainerManager {
    pub(super) inner: Arc<Inner>,
}

/// Checks that a relative log path stays inside the pod's log directory.
pub fn safe_log_path(dir: &str, rel: &str) -> Result<String, ContainerError> {
    if rel.is_empty() || dir.is_empty() {
        return Ok(String::new());
    }
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ContainerError::BadRequest(format!(
            "log path {rel:?} must be relative to the pod's log directory and must not contain '..'"
        )));
    }
    Ok(Path::new(dir).join(p).display().to_string())
}

fn image_defaults(config: &[u8]) -> ImageDefaults {
    let Ok(c) = serde_json::from_slice::<oci_spec::image::ImageConfiguration>(config) else {
        return ImageDefaults::default();
    };
    let Some(c) = c.config() else {
        return ImageDefaults::default();
    };
    ImageDefaults {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
    }
}

pub(super) fn agent_err(id: &str, e: GuestError) -> ContainerError {
    let msg = format!("container {id}: {e}");
    match e {
        GuestError::NoAnswer(_) => ContainerError::TimedOut(msg),
        GuestError::BadRequest(_) => ContainerError::BadRequest(msg),
        GuestError::WrongState(_) => ContainerError::WrongState(msg),
        GuestError::Unknown(_) => ContainerError::Unknown(msg),
        GuestError::Unreachable(_) | GuestError::Failed(_) => ContainerError::Agent {
            id: id.into(),
            detail: e.to_string(),
        },
    }
}

/// Whether the filesystem of `dir` has less than 1 MiB left for unprivileged writers
/// (kubelet's log directory is written by root, but a disk at its reserve is full for
/// logs in all but name). A directory that cannot be asked is not called full.
fn disk_full(dir: &Path) -> bool {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()) < 1 << 20,
        Err(_) => false,
    }
}

/// The result of a call run as its own task; a panic there is this call's.
async fn finish<T>(
    task: tokio::task::JoinHandle<Result<T, ContainerError>>,
) -> Result<T, ContainerError> {
    match task.await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The reason of a container whose pod's VM died under it.
pub const VM_DIED: &str = "VMDied";

impl ContainerManager {
    /// Opens the records.
    pub fn open(
        config: super::config::ContainersConfig,
        store: Store,
        sandboxes: SandboxManager,
        images: ImageManager,
    ) -> Result<Self, ContainerError> {
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                records: ContainerStore::open(store)?,
                sandboxes,
                images,
                locks: KeyedLocks::default(),
                create: tokio::sync::Mutex::new(()),
                reopen: Mutex::new(HashMap::new()),
                attached: Mutex::new(HashMap::new()),
                events: super::events::Events::default(),
            }),
        })
    }

    /// Marks the running containers of every pod whose VM dies as exited, at once, as the
    /// sandbox manager hears of it (their exit waiters would only notice at their next
    /// call into the gone agent).
    pub fn follow_vm_deaths(&self) {
        let mut deaths = self.inner.sandboxes.vm_deaths();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let gone = match deaths.recv().await {
                    Ok(g) => g,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Ok(all) = this.list() else { continue };
                let running = all.into_iter().filter(|r| {
                    r.sandbox_id == gone.sandbox_id && r.state == ContainerState::Running
                });
                let detail = format!("the pod's VM died: its {} exited on its own", gone.what);
                futures::future::join_all(running.map(|r| {
                    let detail = detail.clone();
                    let this = this.clone();
                    async move { this.vm_gone(&r.id, &detail).await }
                }))
                .await;
            }
        });
    }

    /// Records that a running container ended with its pod's VM: exit code 137, as a
    /// killed container's, reason `VMDied`, and what happened.
    pub(super) async fn vm_gone(&self, id: &str, detail: &str) {
        self.mark_exited(id, 137, VM_DIED, detail).await;
    }

    /// After a moatd restart: picks up the output and the exit of containers still running,
    /// then reconciles each ready pod with its guest. Containers and pods are taken back
    /// all at once (each is an agent round trip), so the CRI socket, served after this,
    /// is back in about one round trip, not one per container.
    pub async fn recover(&self) -> Result<(), ContainerError> {
        let running: Vec<ContainerRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.state == ContainerState::Running)
            .collect();
        futures::future::join_all(running.iter().map(|r| self.take_back(r))).await;
        let sandboxes = self
            .inner
            .sandboxes
            .list()
            .map_err(|e| ContainerError::WrongState(format!("listing pod sandboxes: {e}")))?;
        futures::future::join_all(
            sandboxes
                .iter()
                .filter(|s| s.state.is_ready())
                .map(|s| self.reconcile(&s.id)),
        )
        .await;
        Ok(())
    }

    /// Follows a running container's output and exit again after a restart.
    async fn take_back(&self, r: &ContainerRecord) {
        let Ok(agent) = self.agent(&r.sandbox_id).await else {
            self.vm_gone(&r.id, "the pod's VM died while moatd was not running")
                .await;
            return;
        };
        match agent.output(&r.id).await {
            Ok(out) => self.spawn_log_copier(r, out),
            Err(e) => {
                warn!(container = %r.id, error = %e, "cannot follow the container's output again")
            }
        }
        self.spawn_waiter(r, agent);
        info!(container = %r.id, "container taken back after restart");
    }

    /// What calls cut short by moatd's death left in a pod's guest: a container the guest
    /// has and no record names (its create's record was never written) is removed with
    /// its volume binds; one recorded as created that the guest started (its start's
    /// answer was lost) is running, followed as any started container.
    async fn reconcile(&self, sandbox_id: &str) {
        let Ok(agent) = self.agent(sandbox_id).await else {
            return;
        };
        let guest = match agent.list_containers().await {
            Ok(g) => g,
            Err(e) => {
                warn!(sandbox = %sandbox_id, error = %e, "cannot list the guest's containers");
                return;
            }
        };
        let Ok(records) = self.list() else { return };
        for g in guest {
            match records.iter().find(|r| r.id == g.id) {
                None => {
                    if let Err(e) = agent.remove_container(&g.id).await {
                        warn!(container = %g.id, error = %e, "cannot remove a container whose creation was cut short");
                        continue;
                    }
                    let volumes = self.inner.sandboxes.volumes_dir(sandbox_id);
                    let _ = crate::volumes::release(&volumes, &g.id[..12]);
                    info!(sandbox = %sandbox_id, container = %g.id, "removed a container whose creation was cut short by moatd's death");
                }
                Some(r) if r.state == ContainerState::Created && g.started => {
                    let mut r = r.clone();
                    let _g = self.inner.locks.lock(&r.id).await;
                    r.started_at = now_nanos();
                    if self.transition(&mut r, ContainerEvent::Started).is_err() {
                        continue;
                    }
                    match agent.output(&r.id).await {
                        Ok(out) => self.spawn_log_copier(&r, out),
                        Err(e) => {
                            warn!(container = %r.id, error = %e, "cannot follow the container's output")
                        }
                    }
                    self.spawn_waiter(&r, agent.clone());
                    info!(container = %r.id, "a container whose start was cut short by moatd's death is running");
                }
                Some(_) => {}
            }
        }
    }

    pub(super) async fn agent(&self, sandbox_id: &str) -> Result<Arc<dyn Guest>, ContainerError> {
        self.inner.sandboxes.agent(sandbox_id).await.map_err(|e| {
            ContainerError::WrongState(format!("pod sandbox {sandbox_id} is not running: {e}"))
        })
    }

    /// Finds a container by full id or unique prefix.
    pub fn get(&self, id: &str) -> Result<Option<ContainerRecord>, ContainerError> {
        crate::ids::by_prefix(self.inner.records.list()?, id, |r| r.id.as_str())
            .map_err(|e| ContainerError::BadRequest(format!("container id: {e}")))
    }

    pub(super) fn must_get(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        self.get(id)?
            .ok_or_else(|| ContainerError::Unknown(format!("container {id} not found")))
    }

    /// Every container.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        let mut v = self.inner.records.list()?;
        v.sort_by_key(|r| r.created_at);
        Ok(v)
    }

    /// Every change of a container's state: applies `ev` to `r`, stores the result (the
    /// new state or the record's deletion) and publishes the lifecycle event it makes.
    /// Returns whether the record remains.
    pub(super) fn transition(
        &self,
        r: &mut ContainerRecord,
        ev: ContainerEvent,
    ) -> Result<bool, ContainerError> {
        let from = r.state;
        let to = apply(from, ev)
            .map_err(|t| ContainerError::WrongState(format!("container {}: {t}", r.id)))?;
        match to {
            Some(s) => {
                r.state = s;
                self.inner.records.put(r)?;
            }
            None => self.inner.records.delete(&r.id)?,
        }
        if let Some(kind) = super::events::EventKind::of(Some(from), to) {
            self.inner.events.publish(&r.id, &r.sandbox_id, kind);
        }
        Ok(to.is_some())
    }

    /// A subscriber to every container's lifecycle events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<super::events::LifecycleEvent> {
        self.inner.events.subscribe()
    }

    /// CreateContainer.
    pub async fn create(&self, req: CreateRequest) -> Result<String, ContainerError> {
        // Runs to its end even if the caller goes away: a create cut short between the
        // guest's answer and the record would leave a container no one knows of.
        let this = self.clone();
        finish(tokio::spawn(async move { this.create_now(req).await })).await
    }

    async fn create_now(&self, req: CreateRequest) -> Result<String, ContainerError> {
        if req.name.is_empty() {
            return Err(ContainerError::BadRequest(
                "container metadata needs a name".into(),
            ));
        }
        let sandbox = self
            .inner
            .sandboxes
            .get(&req.sandbox_id)
            .map_err(|e| ContainerError::BadRequest(e.to_string()))?
            .ok_or_else(|| {
                ContainerError::Unknown(format!("pod sandbox {} not found", req.sandbox_id))
            })?;
        if !sandbox.state.is_ready() {
            return Err(ContainerError::WrongState(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let image = self
            .inner
            .images
            .status(&req.image)
            .map_err(|e| ContainerError::BadRequest(e.to_string()))?
            .ok_or_else(|| {
                ContainerError::Unknown(format!("image {:?} not found; pull it first", req.image))
            })?;
        let log_path = safe_log_path(&sandbox.log_directory, &req.log_path)?;
        if !sandbox.log_directory.is_empty() && disk_full(Path::new(&sandbox.log_directory)) {
            return Err(ContainerError::DiskFull(format!(
                "the pod's log directory {}",
                sandbox.log_directory
            )));
        }
        let defaults =
            image_defaults(&self.inner.images.config_blob(&image.id).unwrap_or_default());
        let mut input = req.input.clone();
        input.hostname = sandbox.hostname.clone();
        input.userns = match &req.userns {
            Some(asked) if *asked != sandbox.userns => {
                return Err(ContainerError::BadRequest(format!(
                    "the container's user namespace ({}) is not its pod's ({}): a container \
                     lives in its pod's user namespace",
                    describe_userns(asked.as_ref()),
                    describe_userns(sandbox.userns.as_ref())
                )));
            }
            _ => sandbox.userns.clone(),
        };
        self.inner.config.apply(&mut input);
        let pid_namespace = match &req.pid_namespace {
            PidNamespace::Target(t) => {
                let target = self.get(t)?.ok_or_else(|| {
                    ContainerError::Unknown(format!(
                        "target container {t} (pid namespace TARGET) not found"
                    ))
                })?;
                if target.sandbox_id != sandbox.id || target.state == ContainerState::Exited {
                    return Err(ContainerError::WrongState(format!(
                        "target container {t} must be a created or running container of pod {}",
                        sandbox.id
                    )));
                }
                PidNamespace::Target(target.id)
            }
            other => other.clone(),
        };
        let reserved = format!(
            "{}_{}_{}",
            req.name,
            sandbox.metadata.reserved_name(),
            req.attempt
        );
        let _c = self.inner.create.lock().await;
        if self
            .inner
            .records
            .list()?
            .iter()
            .any(|r| r.reserved_name == reserved)
        {
            return Err(ContainerError::NameTaken(req.name));
        }
        let id = crate::ids::random_id();
        let snapshots = image
            .layers
            .iter()
            .map(|l| {
                let hex = l.diff_id.trim_start_matches("sha256:").to_owned();
                self.inner
                    .images
                    .snapshot_path(&l.diff_id)
                    .map(|p| (hex, p))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ContainerError::WrongState(e.to_string()))?;
        self.inner
            .sandboxes
            .expose_layers(&sandbox.id, &snapshots)
            .map_err(|e| ContainerError::WrongState(e.to_string()))?;
        let volumes = self.inner.sandboxes.volumes_dir(&sandbox.id);
        let binds = crate::volumes::prepare(&volumes, &id[..12], &req.mounts)
            .map_err(|e| ContainerError::BadRequest(e.to_string()))?;
        input.binds = binds
            .iter()
            .map(|b| spec::Bind {
                source: b.guest_path.clone(),
                destination: b.container_path.clone(),
                read_only: b.read_only,
                recursive_read_only: b.recursive_read_only,
            })
            .collect();
        let release = || {
            let _ = crate::volumes::release(&volumes, &id[..12]);
        };
        let built = match spec::build(&id, &sandbox.id, &defaults, &input) {
            Ok(b) => b,
            Err(e) => {
                release();
                return Err(ContainerError::BadRequest(e.0));
            }
        };
        let agent = match self.agent(&sandbox.id).await {
            Ok(a) => a,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        let create = ContainerCreate {
            id: id.clone(),
            spec_json: serde_json::to_vec(&built.spec)
                .map_err(|e| ContainerError::BadRequest(e.to_string()))?,
            layers: image
                .layers
                .iter()
                .map(|l| l.diff_id.trim_start_matches("sha256:").to_owned())
                .collect(),
            image_user: built.image_user,
            default_seccomp: built.default_seccomp,
            stdin: input.stdin,
            pid_namespace,
            strict_groups: input.strict_groups,
        };
        let user = match agent.create_container(create).await {
            Ok(u) => u,
            Err(st) => {
                release();
                return Err(agent_err(&id, st));
            }
        };
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            name: req.name.clone(),
            attempt: req.attempt,
            image: req.image.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .or(image.repo_tags.first())
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            labels: req.labels,
            annotations: req.annotations,
            log_path,
            log_path_rel: req.log_path,
            state: ContainerState::Created,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            reserved_name: reserved,
            tty: input.tty,
            stdin: input.stdin,
            stdin_once: input.stdin_once,
            mounts: req.mounts.iter().map(MountRecord::from).collect(),
            user: Some(user),
        };
        self.inner.records.put(&record)?;
        self.inner
            .events
            .publish(&id, &sandbox.id, super::events::EventKind::Created);
        info!(container = %id, sandbox = %sandbox.id, name = %record.name, "container created");
        Ok(id)
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        // As `create`: the guest's start and the record's change happen together or not.
        let this = self.clone();
        let id = id.to_owned();
        finish(tokio::spawn(async move { this.start_now(&id).await })).await
    }

    async fn start_now(&self, id: &str) -> Result<(), ContainerError> {
        let mut r = self.must_get(id)?;
        let _g = self.inner.locks.lock(&r.id).await;
        if r.state != ContainerState::Created {
            return Err(ContainerError::WrongState(format!(
                "container {} is {:?}, not created",
                r.id, r.state
            )));
        }
        let agent = self.agent(&r.sandbox_id).await?;
        // Subscribe to the output before the process can write anything.
        let output = agent.output(&r.id).await.map_err(|s| agent_err(&r.id, s))?;
        if let Err(s) = agent.start_container(&r.id).await {
            r.reason = "StartError".into();
            r.message = s.to_string();
            r.exit_code = 128;
            r.finished_at = now_nanos();
            self.transition(&mut r, ContainerEvent::StartFailed)?;
            return Err(ContainerError::WrongState(format!(
                "container {} could not start: {}",
                r.id, s
            )));
        }
        r.started_at = now_nanos();
        self.transition(&mut r, ContainerEvent::Started)?;
        self.spawn_log_copier(&r, output);
        self.spawn_waiter(&r, agent);
        info!(container = %r.id, "container started");
        Ok(())
    }

    /// StopContainer: SIGTERM, then SIGKILL after `timeout`. Idempotent; unknown ids are fine.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let Some(r) = self.get(id)? else {
            return Ok(());
        };
        if r.state != ContainerState::Running {
            return Ok(());
        }
        let Ok(agent) = self.agent(&r.sandbox_id).await else {
            self.vm_gone(&r.id, "the pod's VM died").await;
            return Ok(());
        };
        match super::stop::stop_process(agent.as_ref(), &r.id, timeout).await {
            Ok(Some(exit)) => {
                self.record_exit(&r.id, exit).await;
                Ok(())
            }
            Ok(None) => Err(ContainerError::TimedOut(format!(
                "container {} did not stop even after SIGKILL",
                r.id
            ))),
            Err(e) => Err(ContainerError::TimedOut(format!(
                "container {}: {e}; it may still run",
                r.id
            ))),
        }
    }

    /// RemoveContainer: stops it if needed and frees it in the guest. Unknown ids are fine.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let Some(r) = self.get(id)? else {
            return Ok(());
        };
        if r.state == ContainerState::Running {
            self.stop(&r.id, Duration::ZERO).await?;
        }
        let _g = self.inner.locks.lock(&r.id).await;
        let Some(mut r) = self.get(&r.id)? else {
            return Ok(());
        };
        if let Ok(agent) = self.agent(&r.sandbox_id).await {
            let _ = agent.remove_container(&r.id).await;
        }
        let volumes = self.inner.sandboxes.volumes_dir(&r.sandbox_id);
        if let Err(e) = crate::volumes::release(&volumes, &r.id[..12]) {
            warn!(container = %r.id, error = %e, "could not release the container's volumes");
        }
        self.transition(&mut r, ContainerEvent::Remove)?;
        info!(container = %r.id, "container removed");
        Ok(())
    }

    /// Marks every container of a sandbox exited (its VM is going away) or removes them.
    pub async fn sandbox_gone(&self, sandbox_id: &str, remove: bool) -> Result<(), ContainerError> {
        let all: Vec<ContainerRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id)
            .collect();
        // All at once: each is bounded by its own stop, and the VM goes after them.
        let running = all.iter().filter(|r| r.state == ContainerState::Running);
        futures::future::join_all(running.map(|r| async move {
            self.stop(&r.id, Duration::from_secs(2)).await.ok();
            self.mark_exited(&r.id, 137, "Error", "the pod was stopped")
                .await;
        }))
        .await;
        for r in all {
            if remove {
                let _g = self.inner.locks.lock(&r.id).await;
                self.inner.records.delete(&r.id)?;
                self.inner
                    .events
                    .publish(&r.id, &r.sandbox_id, super::events::EventKind::Deleted);
            }
        }
        Ok(())
    }

    /// A running container, or FailedPrecondition naming its state.
    pub(super) fn must_run(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        let r = self.must_get(id)?;
        if r.state != ContainerState::Running {
            return Err(ContainerError::WrongState(format!(
                "container {} is not running (it is {:?})",
                r.id, r.state
            )));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_in_the_pod_log_dir() {
        assert_eq!(
            safe_log_path("/var/log/pods/p", "c/0.log").expect("ok"),
            "/var/log/pods/p/c/0.log"
        );
        assert_eq!(safe_log_path("", "c/0.log").expect("ok"), "");
        for bad in ["../x.log", "/etc/passwd", "c/../../x"] {
            assert!(
                matches!(
                    safe_log_path("/var/log/pods/p", bad),
                    Err(ContainerError::BadRequest(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn image_defaults_come_from_the_config() {
        let cfg = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/e"],"Cmd":["c"],"Env":["A=1"],"WorkingDir":"/w","User":"1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = image_defaults(cfg);
        assert_eq!(d.entrypoint, vec!["/e"]);
        assert_eq!(d.user, "1000");
        assert_eq!(image_defaults(b"junk"), ImageDefaults::default());
    }
}
