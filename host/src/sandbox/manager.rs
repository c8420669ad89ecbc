//! The sandbox manager: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list,
//! each change of state checked by the state machine and persisted before it is reported,
//! and recovery of running VMs after a moatd restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::error::SandboxError;
use super::record::{PodMetadata, SandboxRecord, SandboxStore};
use super::state::{Next, SandboxEvent, SandboxState};
use super::vm::{self, RunningVm, VmPaths};
use crate::config::Config;
use crate::guest::{Guest, GuestClient};
use crate::store::Store;
use crate::sync::KeyedLocks;

/// DNS settings for the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

impl DnsConfig {
    /// The resolv.conf text; empty when nothing is set.
    pub fn resolv_conf(&self) -> String {
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.servers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

/// What RunPodSandbox asks for, in moatd's own terms.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Pod metadata.
    pub metadata: PodMetadata,
    /// Hostname (empty: the node's, as containerd gives it).
    pub hostname: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Container log directory.
    pub log_directory: String,
    /// The runtime handler named by the request ("" = default).
    pub runtime_handler: String,
    /// DNS.
    pub dns: DnsConfig,
    /// CPU quota and period from the pod's resources.
    pub cpu: Option<(i64, i64)>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<i64>,
    /// The pod wants the host's network namespace.
    pub host_network: bool,
    /// The pod wants the host's PID namespace (hostPID).
    pub host_pid: bool,
    /// The pod wants the host's IPC namespace (hostIPC).
    pub host_ipc: bool,
    /// The pod's sysctls (linux.sysctls).
    pub sysctls: BTreeMap<String, String>,
    /// Host ports (for the portmap plugin).
    pub port_mappings: Vec<crate::network::PortMapping>,
    /// The node's pod CIDR from UpdateRuntimeConfig.
    pub pod_cidr: Option<String>,
    /// The pod's user namespace (CRI NamespaceMode POD for users), validated.
    pub userns: Option<crate::userns::UserNamespace>,
}

/// A sandbox's live VM and agent connection.
pub(super) struct Live {
    pub(super) vm: Arc<RunningVm>,
    pub(super) agent: Option<Arc<dyn Guest>>,
}

pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) records: SandboxStore,
    /// One hypervisor per runtime handler.
    pub(super) hypervisors: HashMap<String, super::handlers::HandlerVmm>,
    pub(super) live: Mutex<HashMap<String, Live>>,
    pub(super) locks: KeyedLocks,
    pub(super) create: tokio::sync::Mutex<()>,
    pub(super) network: crate::network::NetworkManager,
    /// Tells whoever listens that a sandbox's VM died on its own.
    pub(super) gone: tokio::sync::broadcast::Sender<VmGone>,
}

/// A sandbox's VM died on its own (a process of it exited or was killed).
#[derive(Debug, Clone)]
pub struct VmGone {
    /// The sandbox.
    pub sandbox_id: String,
    /// Which of its processes ended first: `VMM`, or a back-end.
    pub what: &'static str,
}

/// The sandbox manager.
#[derive(Clone)]
pub struct SandboxManager {
    pub(super) inner: Arc<Inner>,
}

impl SandboxManager {
    /// Opens the records and takes back the VMs that survived a restart.
    pub async fn open(config: &Config, store: Store) -> Result<Self, SandboxError> {
        let inner = Inner {
            config: config.clone(),
            records: SandboxStore::open(store)?,
            hypervisors: super::handlers::hypervisors(config),
            live: Mutex::new(HashMap::new()),
            locks: KeyedLocks::default(),
            create: tokio::sync::Mutex::new(()),
            network: crate::network::NetworkManager::new(
                &config.cni,
                config.cni.netns_dir.clone(),
                config.root_dir.join("cni"),
            )
            .with_plugin_timeout(Duration::from_secs(config.cni.plugin_timeout_secs.max(1))),
            gone: tokio::sync::broadcast::channel(256).0,
        };
        let m = Self {
            inner: Arc::new(inner),
        };
        m.recover().await?;
        Ok(m)
    }

    pub(super) fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn paths(&self, id: &str) -> VmPaths {
        VmPaths::new(&self.inner.config.run_dir, id)
    }

    pub(super) fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.inner.config.sandbox.agent_timeout_secs)
    }

    async fn recover(&self) -> Result<(), SandboxError> {
        for mut r in self.inner.records.list()? {
            // A recorded vsock backend must still be there; a VM without one (the built-in
            // VMM serves its devices itself) needs none.
            let procs = r.vm.as_ref().map(|v| {
                (
                    vm::adopt(v.vmm_pid, &r.id),
                    v.backend_pid.map(|p| vm::adopt(p, &r.id)),
                )
            });
            match (r.state, procs) {
                (SandboxState::Ready, Some((Some(vmm), vsock))) if !matches!(vsock, Some(None)) => {
                    let fs =
                        r.vm.iter()
                            .flat_map(|v| v.fs_backend_pids.iter())
                            .filter_map(|p| vm::adopt(*p, &r.id))
                            .collect();
                    let vm = Arc::new(RunningVm {
                        vmm,
                        backends: vm::DeviceBackends {
                            vsock: vsock.flatten(),
                            fs,
                        },
                        paths: self.paths(&r.id),
                    });
                    self.watch(&r.id, vm.clone());
                    self.live().insert(r.id.clone(), Live { vm, agent: None });
                    info!(sandbox = %r.id, "sandbox VM taken back after restart");
                    if r.network.is_some()
                        && let Err(e) = self.inner.network.check(&r.id).await
                    {
                        warn!(sandbox = %r.id, error = %e, "CNI CHECK failed for a sandbox taken back");
                    }
                }
                (SandboxState::Creating, _) => {
                    // moatd died during the boot: finish the failure. The record names no
                    // pid yet; the VM's processes name its directory.
                    self.kill_recorded(&r).await;
                    self.undo_boot(&r.id, None).await?;
                    warn!(sandbox = %r.id, "removed a sandbox whose boot was interrupted by a restart");
                }
                (SandboxState::Ready, _) => {
                    self.kill_recorded(&r).await;
                    self.paths(&r.id).remove();
                    self.teardown_network(&r.id).await;
                    r.state = SandboxState::Stopped;
                    r.vm = None;
                    r.network = None;
                    self.inner.records.put(&r)?;
                    warn!(sandbox = %r.id, "sandbox VM is gone after restart; marked not ready");
                }
                (SandboxState::Stopped, _) => {}
            }
        }
        Ok(())
    }

    /// Kills whatever is left of the processes a record names (after a restart).
    async fn kill_recorded(&self, r: &SandboxRecord) {
        let Some(v) = &r.vm else { return };
        let pids = std::iter::once(v.vmm_pid)
            .chain(v.backend_pid)
            .chain(v.fs_backend_pids.iter().copied());
        for p in pids.filter_map(|pid| vm::adopt(pid, &r.id)) {
            let _ = p.terminate(Duration::from_secs(2)).await;
        }
    }

    /// Marks the sandbox stopped when its VMM or one of its device back-ends exits on its
    /// own (a back-end killed by its seccomp filter, for instance: the VM cannot go on
    /// without its devices, so it is torn down too).
    pub(super) fn watch(&self, id: &str, vm: Arc<RunningVm>) {
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let processes = std::iter::once(("VMM", &vm.vmm)).chain(vm.backends.iter());
            let ends = processes.map(|(what, p)| {
                Box::pin(async move {
                    while !p.wait_timeout(Duration::from_secs(3600)).await {}
                    what
                })
            });
            let (what, _, _) = futures::future::select_all(ends).await;
            let _g = this.inner.locks.lock(&id).await;
            let still_ours = this
                .live()
                .get(&id)
                .is_some_and(|l| Arc::ptr_eq(&l.vm, &vm));
            if !still_ours {
                return;
            }
            let jail = vm.paths.jail_reports();
            warn!(
                sandbox = %id,
                process = what,
                jail = %jail.join("; "),
                "the VM's {what} exited on its own; the VM is torn down"
            );
            this.live().remove(&id);
            vm::teardown(&vm).await;
            vm.paths.remove();
            let Ok(Some(mut r)) = this.get(&id) else {
                return;
            };
            r.vm = None;
            if let Err(e) = this.transition(&mut r, SandboxEvent::VmExited) {
                warn!(sandbox = %id, error = %e, "cannot record that the VM exited");
            }
            // No one listening is fine (no containers manager yet, in unit tests).
            let _ = this.inner.gone.send(VmGone {
                sandbox_id: id.clone(),
                what,
            });
        });
    }

    /// Hears of every VM that dies on its own from now on.
    pub fn vm_deaths(&self) -> tokio::sync::broadcast::Receiver<VmGone> {
        self.inner.gone.subscribe()
    }

    /// Finds a record by full id or unique prefix.
    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>, SandboxError> {
        crate::ids::by_prefix(self.inner.records.list()?, id, |r| r.id.as_str())
            .map_err(|e| SandboxError::BadRequest(format!("pod sandbox id: {e}")))
    }

    /// Makes image layers visible in a sandbox's `layers` share (read-only binds of the
    /// snapshots), so the guest sees this pod's layers and no other image's.
    pub fn expose_layers(
        &self,
        id: &str,
        snapshots: &[(String, std::path::PathBuf)],
    ) -> Result<(), SandboxError> {
        let dir = self.paths(id).layers();
        for (name, src) in snapshots {
            crate::volumes::bind_read_only(src, &dir.join(name))
                .map_err(|e| SandboxError::WrongState(format!("expose layer {name}: {e}")))?;
        }
        Ok(())
    }

    /// The host side of a sandbox's `volumes` share.
    pub fn volumes_dir(&self, id: &str) -> std::path::PathBuf {
        self.paths(id).volumes()
    }

    /// Every sandbox.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, SandboxError> {
        let mut v = self.inner.records.list()?;
        v.sort_by_key(|r| r.created_at);
        Ok(v)
    }

    /// Every change of a sandbox's state: applies `ev` to `r` and stores the result, the
    /// new state or the record's deletion. Returns whether the record remains.
    pub(super) fn transition(
        &self,
        r: &mut SandboxRecord,
        ev: SandboxEvent,
    ) -> Result<bool, SandboxError> {
        let next = r
            .state
            .apply(ev)
            .map_err(|source| SandboxError::Transition {
                id: r.id.clone(),
                source,
            })?;
        match next {
            Next::State(s) => {
                r.state = s;
                self.inner.records.put(r)?;
                Ok(true)
            }
            Next::Removed => {
                self.inner.records.delete(&r.id)?;
                Ok(false)
            }
        }
    }

    /// The host processes of a running sandbox: its VMM and device back-ends (each the
    /// root of a tree: a confined process is its jail's child). Empty when not running.
    pub fn host_pids(&self, id: &str) -> Vec<i32> {
        self.live()
            .get(id)
            .map(|l| {
                std::iter::once(l.vm.vmm.pid())
                    .chain(l.vm.backends.iter().map(|(_, p)| p.pid()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The traffic counters of a pod's CNI interface `ifname` (in its network namespace).
    pub async fn network_usage(
        &self,
        id: &str,
        ifname: &str,
    ) -> Result<crate::network::usage::InterfaceUsage, SandboxError> {
        let netns = self.inner.network.netns_path(id);
        crate::network::usage::interface_usage(&netns, ifname)
            .await
            .map_err(|source| SandboxError::Network {
                id: id.to_owned(),
                source: Box::new(source),
            })
    }

    /// The agent client of a live sandbox, connecting if needed (after a restart).
    pub async fn agent(&self, id: &str) -> Result<Arc<dyn Guest>, SandboxError> {
        let existing = self
            .live()
            .get(id)
            .map(|l| (l.agent.clone(), l.vm.paths.clone()));
        match existing {
            Some((Some(a), _)) => Ok(a),
            Some((None, paths)) => {
                let a: Arc<dyn Guest> = Arc::new(
                    GuestClient::connect(&paths.vsock(), self.agent_timeout())
                        .await
                        .map_err(|e| SandboxError::Agent {
                            id: id.into(),
                            detail: e.to_string(),
                        })?,
                );
                if let Some(l) = self.live().get_mut(id) {
                    l.agent = Some(a.clone());
                }
                Ok(a)
            }
            None => Err(SandboxError::WrongState(format!(
                "pod sandbox {id} is not running"
            ))),
        }
    }

    /// StopPodSandbox: powers the VM off (killing it after the stop timeout). Idempotent;
    /// an unknown id is fine.
    pub async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let Some(mut r) = self.get(id)? else {
            return Ok(());
        };
        let id = r.id.clone();
        let _g = self.inner.locks.lock(&id).await;
        let live = self.live().remove(&id);
        if let Some(l) = live {
            let agent = match l.agent.clone() {
                Some(a) => Some(a),
                None => self.agent_after_restart(&l).await,
            };
            if let Some(a) = agent {
                let _ = a.shutdown().await;
            }
            let grace = Duration::from_secs(self.inner.config.sandbox.stop_timeout_secs);
            if !l.vm.vmm.wait_timeout(grace).await {
                warn!(sandbox = %id, "the guest did not power off in time; killing the VMM");
            }
            vm::teardown(&l.vm).await;
            l.vm.paths.remove();
        }
        if let Ok(Some(latest)) = self.get(&id) {
            r = latest;
        }
        r.vm = None;
        self.transition(&mut r, SandboxEvent::Stop)?;
        // CNI DEL, idempotent: a failure leaves the network recorded so kubelet's retry of
        // StopPodSandbox finishes it.
        self.inner
            .network
            .teardown(&id)
            .await
            .map_err(|source| SandboxError::Network {
                id: id.clone(),
                source: Box::new(source),
            })?;
        if r.network.take().is_some() {
            self.inner.records.put(&r)?;
        }
        info!(sandbox = %id, "pod sandbox stopped");
        Ok(())
    }

    async fn agent_after_restart(&self, l: &Live) -> Option<Arc<dyn Guest>> {
        GuestClient::connect(&l.vm.paths.vsock(), self.agent_timeout())
            .await
            .ok()
            .map(|c| Arc::new(c) as Arc<dyn Guest>)
    }

    /// RemovePodSandbox: stops the sandbox if needed and forgets it. Unknown ids are fine.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Some(r) = self.get(id)? else {
            return Ok(());
        };
        if r.state != SandboxState::Stopped {
            self.stop(&r.id).await?;
        }
        let _g = self.inner.locks.lock(&r.id).await;
        let Some(mut r) = self.get(&r.id)? else {
            return Ok(());
        };
        // Checked before anything is torn down; recorded once it is.
        r.state
            .apply(SandboxEvent::Remove)
            .map_err(|source| SandboxError::Transition {
                id: r.id.clone(),
                source,
            })?;
        self.inner
            .network
            .teardown(&r.id)
            .await
            .map_err(|source| SandboxError::Network {
                id: r.id.clone(),
                source: Box::new(source),
            })?;
        let paths = self.paths(&r.id);
        paths.remove();
        self.transition(&mut r, SandboxEvent::Remove)?;
        info!(sandbox = %r.id, "pod sandbox removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::handlers::size_vm;
    use super::*;

    #[test]
    fn resolv_conf_and_vm_size() {
        let d = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            d.resolv_conf(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(DnsConfig::default().resolv_conf(), "");
        let c = crate::config::SandboxConfig::default();
        assert_eq!(size_vm(&c, None, None), (1, 256));
        assert_eq!(
            size_vm(&c, Some((150_000, 100_000)), Some(512 << 20)),
            (2, 512 + 64)
        );
        assert_eq!(size_vm(&c, Some((0, 100_000)), Some(1)), (1, 64 + 64));
    }
}
