//! The sandbox manager: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list,
//! each change of state checked by the state machine and persisted before it is reported,
//! and recovery of running VMs after a moatd restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::error::SandboxError;
use super::record::{PodMetadata, SandboxRecord, SandboxStore, VmRecord};
use super::state::{Next, SandboxEvent, SandboxState};
use super::vm::{self, LaunchSpec, RunningVm, VmPaths};
use crate::config::Config;
use crate::guest::{Guest, GuestClient};
use crate::hypervisor::builtin::Builtin;
use crate::hypervisor::qemu::{Qemu, QemuConfig};
use crate::hypervisor::select::{VmmKind, select_with};
use crate::hypervisor::{HostCaps, Hypervisor};
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
struct Live {
    vm: Arc<RunningVm>,
    agent: Option<Arc<dyn Guest>>,
}

struct Inner {
    config: Config,
    records: SandboxStore,
    /// One hypervisor per runtime handler.
    hypervisors: HashMap<String, HandlerVmm>,
    live: Mutex<HashMap<String, Live>>,
    locks: KeyedLocks,
    create: tokio::sync::Mutex<()>,
    network: crate::network::NetworkManager,
}

/// The sandbox manager.
#[derive(Clone)]
pub struct SandboxManager {
    inner: Arc<Inner>,
}

/// The guest's interface and routes for a pod network.
fn guest_network(pn: &crate::network::PodNetwork) -> crate::guest::GuestNetwork {
    crate::guest::GuestNetwork {
        interfaces: vec![crate::guest::GuestInterface {
            name: pn.interface.clone(),
            mac: pn.mac.clone(),
            mtu: pn.mtu,
            addresses: pn.ips.iter().map(|ip| ip.to_string()).collect(),
        }],
        routes: pn
            .routes
            .iter()
            .map(|r| crate::guest::GuestRoute {
                destination: r.dst.to_string(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: pn.interface.clone(),
            })
            .collect(),
    }
}

/// A runtime handler's VMM.
#[derive(Clone)]
struct HandlerVmm {
    hypervisor: Arc<dyn Hypervisor>,
    kind: VmmKind,
    /// Why this handler may not run pods (TCG forbidden), if so.
    refused: Option<String>,
    /// The choice as made at start-up, for Status's verbose info.
    selection: crate::hypervisor::select::Selection,
}

/// The hypervisor of each runtime handler, as `select` picks it for this host (one log line
/// each, with why): QEMU with the handler's acceleration override if it has one, or the
/// built-in VMM.
fn hypervisors(config: &Config) -> HashMap<String, HandlerVmm> {
    let caps = HostCaps::probe();
    config
        .runtime
        .handlers
        .iter()
        .map(|(name, h)| {
            let choice = select_with(h.backend, crate::hypervisor::select::Qemu {
                accel: h.accel.or(config.qemu.accel),
                allow_tcg: config.qemu.allow_tcg,
            }, &caps);
            info!(handler = %name, configured = h.backend.name(), backend = choice.kind.name(), reason = %choice.reason, "runtime handler VMM");
            if let Some(w) = &choice.warning {
                warn!(handler = %name, "{w}");
            }
            let hypervisor: Arc<dyn Hypervisor> = match choice.kind {
                VmmKind::Qemu => Arc::new(Qemu::new(
                    QemuConfig {
                        accel: h.accel.or(config.qemu.accel),
                        ..config.qemu.clone()
                    },
                    caps.clone(),
                )),
                VmmKind::Builtin => {
                    if h.accel.is_some() {
                        warn!(handler = %name, "accel is a QEMU setting; the built-in VMM always uses KVM");
                    }
                    Arc::new(Builtin::new())
                }
            };
            if let Some(r) = &choice.refused {
                warn!(handler = %name, "pods refused: {r}");
            }
            let vmm = HandlerVmm {
                hypervisor,
                kind: choice.kind,
                refused: choice.refused.clone(),
                selection: choice,
            };
            (name.clone(), vmm)
        })
        .collect()
}

impl SandboxManager {
    /// Each runtime handler's VMM as chosen at start-up, with why, for Status's verbose
    /// info: backend, reason, whether QEMU runs in TCG, the warning and any refusal.
    pub fn handlers_info(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, h) in &self.inner.hypervisors {
            let s = &h.selection;
            out.insert(
                name.clone(),
                serde_json::json!({
                    "backend": s.kind.name(),
                    "reason": s.reason,
                    "tcg": s.tcg,
                    "warning": s.warning,
                    "refused": s.refused,
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// Whether `handler`'s pods may have user namespaces: QEMU's (the `layers` back-end
    /// shifts image owners for them); not yet the built-in VMM's.
    pub fn handler_has_user_namespaces(&self, handler: &str) -> bool {
        self.inner
            .hypervisors
            .get(handler)
            .is_some_and(|h| h.kind == VmmKind::Qemu)
    }
}

/// vCPUs and memory for a pod: from its limits, or the defaults, plus the overhead.
pub fn size_vm(
    config: &crate::config::SandboxConfig,
    cpu: Option<(i64, i64)>,
    mem: Option<i64>,
) -> (u32, u64) {
    let vcpus = match cpu {
        Some((quota, period)) if quota > 0 && period > 0 => {
            ((quota + period - 1) / period).clamp(1, 64) as u32
        }
        _ => config.default_vcpus,
    };
    let memory = match mem {
        Some(b) if b > 0 => (b as u64).div_ceil(1 << 20).max(64) + config.memory_overhead_mib,
        _ => config.default_memory_mib,
    };
    (vcpus, memory)
}

impl SandboxManager {
    /// Opens the records and takes back the VMs that survived a restart.
    pub async fn open(config: &Config, store: Store) -> Result<Self, SandboxError> {
        let inner = Inner {
            config: config.clone(),
            records: SandboxStore::open(store)?,
            hypervisors: hypervisors(config),
            live: Mutex::new(HashMap::new()),
            locks: KeyedLocks::default(),
            create: tokio::sync::Mutex::new(()),
            network: crate::network::NetworkManager::new(
                &config.cni,
                config.cni.netns_dir.clone(),
                config.root_dir.join("cni"),
            )
            .with_plugin_timeout(Duration::from_secs(config.cni.plugin_timeout_secs.max(1))),
        };
        let m = Self {
            inner: Arc::new(inner),
        };
        m.recover().await?;
        Ok(m)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn paths(&self, id: &str) -> VmPaths {
        VmPaths::new(&self.inner.config.run_dir, id)
    }

    fn agent_timeout(&self) -> Duration {
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
    fn watch(&self, id: &str, vm: Arc<RunningVm>) {
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
        });
    }

    /// Finds a record by full id or unique prefix.
    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>, SandboxError> {
        crate::ids::by_prefix(self.inner.records.list()?, id, |r| r.id.as_str())
            .map_err(|e| SandboxError::InvalidArgument(format!("pod sandbox id: {e}")))
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
            crate::volumes::bind_read_only(src, &dir.join(name)).map_err(|e| {
                SandboxError::FailedPrecondition(format!("expose layer {name}: {e}"))
            })?;
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

    /// RunPodSandbox: boots the VM, waits for the agent, sets the pod up. Returns the id.
    pub async fn run(&self, req: RunRequest) -> Result<String, SandboxError> {
        let md = &req.metadata;
        if md.name.is_empty() || md.uid.is_empty() || md.namespace.is_empty() {
            return Err(SandboxError::InvalidArgument(
                "pod sandbox metadata needs name, uid and namespace".into(),
            ));
        }
        for (wanted, what) in [
            (req.host_network, "network namespace (hostNetwork)"),
            (req.host_pid, "PID namespace (hostPID)"),
            (req.host_ipc, "IPC namespace (hostIPC)"),
        ] {
            if wanted {
                return Err(SandboxError::FailedPrecondition(format!(
                    "a VM sandbox cannot share the host's {what}: run such pods with a runc-based RuntimeClass"
                )));
            }
        }
        super::identity::check_sysctls(&req.sysctls)?;
        let handler = if req.runtime_handler.is_empty() {
            self.inner.config.runtime.default_handler.clone()
        } else {
            req.runtime_handler.clone()
        };
        if !self.inner.config.runtime.handlers.contains_key(&handler) {
            let known: Vec<&String> = self.inner.config.runtime.handlers.keys().collect();
            return Err(SandboxError::InvalidArgument(format!(
                "runtime handler {handler:?} is not configured; moatd has {known:?}"
            )));
        }
        let handler_vmm = self
            .inner
            .hypervisors
            .get(&handler)
            .cloned()
            .ok_or_else(|| {
                SandboxError::InvalidArgument(format!(
                    "runtime handler {handler:?} has no hypervisor"
                ))
            })?;
        if let Some(r) = &handler_vmm.refused {
            return Err(SandboxError::FailedPrecondition(format!(
                "runtime handler {handler:?}: {r}"
            )));
        }
        if req.userns.is_some() && handler_vmm.kind == VmmKind::Builtin {
            return Err(SandboxError::FailedPrecondition(format!(
                "runtime handler {handler:?} runs the built-in VMM, whose pods have no user \
                 namespaces yet (its runtime handler features say user_namespaces: false); \
                 use a QEMU handler or run the pod with hostUsers: true"
            )));
        }
        let hostname = super::identity::hostname(&req.hostname)?;
        let (vcpus, memory_mib) =
            size_vm(&self.inner.config.sandbox, req.cpu, req.memory_limit_bytes);

        let (id, record) = {
            let _c = self.inner.create.lock().await;
            let name = md.reserved_name();
            if let Some(other) = self
                .inner
                .records
                .list()?
                .into_iter()
                .find(|r| r.metadata.reserved_name() == name)
            {
                return Err(SandboxError::NameTaken { name, id: other.id });
            }
            let mut id = crate::ids::random_id();
            while self.paths(&id).dir.exists() || self.get(&id[..12])?.is_some() {
                id = crate::ids::random_id();
            }
            let record = SandboxRecord {
                id: id.clone(),
                metadata: md.clone(),
                labels: req.labels.clone(),
                annotations: req.annotations.clone(),
                runtime_handler: handler.clone(),
                state: SandboxState::Creating,
                created_at: crate::time::now_nanos(),
                hostname: hostname.clone(),
                log_directory: req.log_directory.clone(),
                vcpus,
                memory_mib,
                vm: None,
                network: None,
                userns: req.userns.clone(),
            };
            self.inner.records.put(&record)?;
            (id, record)
        };
        let _g = self.inner.locks.lock(&id).await;
        let mut guard = BootGuard::new(self.clone(), &id);
        match self
            .boot(&mut guard, record, &req, &handler_vmm, hostname)
            .await
        {
            Ok(()) => {
                guard.disarm();
                Ok(id)
            }
            Err(e) => {
                guard.unwind().await;
                Err(e)
            }
        }
    }

    /// RunPodSandbox's boot of a new Creating sandbox: network, VM, agent set-up. What it
    /// makes is recorded in `guard`, which undoes it if the boot does not finish.
    async fn boot(
        &self,
        guard: &mut BootGuard,
        mut record: SandboxRecord,
        req: &RunRequest,
        handler_vmm: &HandlerVmm,
        hostname: String,
    ) -> Result<(), SandboxError> {
        let id = record.id.clone();
        let (vcpus, memory_mib) = (record.vcpus, record.memory_mib);
        let net = self.setup_network(&id, req).await?;
        let cfg = &self.inner.config.sandbox;
        let modules = cfg.modules();
        let kernel = match handler_vmm.kind {
            VmmKind::Qemu => cfg.kernel(),
            VmmKind::Builtin => cfg.builtin_kernel(),
        };
        let launched = vm::launch(
            handler_vmm.hypervisor.as_ref(),
            self.paths(&id),
            LaunchSpec {
                id: &id,
                vcpus,
                memory_mib,
                kernel: &kernel,
                initramfs: &cfg.initramfs(),
                kernel_args: cfg.kernel_args.clone(),
                boot_timeout: Duration::from_secs(cfg.boot_timeout_secs),
                share_layers: true,
                agent_timeout: self.agent_timeout(),
                net: net.as_ref().map(|(pn, fd)| crate::hypervisor::NetDevice {
                    tap_fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                    mac: pn.mac.clone(),
                }),
                // Debian's kernel (QEMU) has modules; the built-in VMM's has none.
                modules: (handler_vmm.kind == VmmKind::Qemu).then_some(modules.as_path()),
                confinement: Some(self.inner.config.confinement.clone()).filter(|c| c.enabled),
                console_log_max_bytes: cfg.console_log_max_bytes,
                userns: req.userns.as_ref(),
            },
        )
        .await;
        // The VMM has its own copy of the tap now.
        let network = net.map(|(pn, _fd)| pn);
        let (vm, agent) = launched?;
        let vm = Arc::new(vm);
        guard.vm = Some(vm.clone());
        record.network = network.clone();
        record.vm = Some(VmRecord {
            vmm_pid: vm.vmm.pid(),
            backend_pid: vm.backends.vsock.as_ref().map(|p| p.pid()),
            fs_backend_pids: vm.backends.fs.iter().map(|p| p.pid()).collect(),
            run_dir: vm.paths.dir.clone(),
        });
        self.inner.records.put(&record)?;
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        );
        let setup = crate::guest::SandboxSetup {
            hostname,
            resolv_conf: req.dns.resolv_conf(),
            hosts,
            time_unix_nanos: crate::time::now_nanos(),
            shares: vec![
                crate::guest::ShareMount {
                    tag: vm::LAYERS_TAG.into(),
                    mount_point: vm::LAYERS_MOUNT.into(),
                    read_only: true,
                },
                crate::guest::ShareMount {
                    tag: crate::volumes::VOLUMES_TAG.into(),
                    mount_point: crate::volumes::VOLUMES_MOUNT.into(),
                    read_only: false,
                },
            ],
            sysctls: req.sysctls.clone(),
            userns: req.userns.clone(),
        };
        // The agent's InvalidArgument (a sysctl this kernel does not have) is the request's
        // fault, and stays InvalidArgument; anything else is the VM's.
        agent.setup(setup).await.map_err(|e| match e {
            crate::guest::GuestError::BadRequest(_) => {
                SandboxError::InvalidArgument(format!("setting the sandbox up: {e}"))
            }
            _ => SandboxError::Agent {
                id: id.clone(),
                detail: format!("setting the sandbox up: {e}"),
            },
        })?;
        if let Some(pn) = &network {
            agent
                .setup_network(guest_network(pn))
                .await
                .map_err(|e| SandboxError::Agent {
                    id: id.clone(),
                    detail: format!("configuring the guest network: {e}"),
                })?;
        }
        self.transition(&mut record, SandboxEvent::AgentReady)?;
        self.watch(&id, vm.clone());
        self.live().insert(
            id.clone(),
            Live {
                vm,
                agent: Some(Arc::new(agent)),
            },
        );
        info!(sandbox = %id, pod = %record.metadata.name, namespace = %record.metadata.namespace, vcpus, memory_mib, ip = ?record.network.as_ref().and_then(|n| n.pod_ip()), "pod sandbox ready");
        Ok(())
    }

    /// Sets the pod network up when the node has a CNI network; None (loopback only)
    /// when it has none.
    async fn setup_network(
        &self,
        id: &str,
        req: &RunRequest,
    ) -> Result<Option<(crate::network::PodNetwork, std::os::fd::OwnedFd)>, SandboxError> {
        let conf_dir = &self.inner.config.cni.conf_dir;
        if let Err(why) = crate::network::cni_config::default_network(conf_dir) {
            warn!(sandbox = %id, %why, "no CNI network: the pod gets loopback only");
            return Ok(None);
        }
        let r = crate::network::PodNetworkRequest {
            sandbox_id: id.to_owned(),
            pod_name: req.metadata.name.clone(),
            pod_namespace: req.metadata.namespace.clone(),
            pod_uid: req.metadata.uid.clone(),
            port_mappings: req.port_mappings.clone(),
            pod_cidr: req.pod_cidr.clone(),
        };
        let (pn, fd) =
            self.inner
                .network
                .setup(&r)
                .await
                .map_err(|source| SandboxError::Network {
                    id: id.to_owned(),
                    source: Box::new(source),
                })?;
        info!(sandbox = %id, network = %pn.network_name, ip = ?pn.pod_ip(), "pod network set up");
        Ok(Some((pn, fd)))
    }

    /// Tears the pod network down on a failure path, where the first error is what counts.
    async fn teardown_network(&self, id: &str) {
        if let Err(e) = self.inner.network.teardown(id).await {
            warn!(sandbox = %id, error = %e, "tearing the pod network down failed");
        }
    }

    /// Undoes a boot that did not finish: the VM (`vm`, or whatever processes name its
    /// directory when the boot was cut short before the VM was known), its mounts and run
    /// dir, the pod network (CNI DEL is idempotent), and the Creating record.
    async fn undo_boot(&self, id: &str, vm: Option<Arc<RunningVm>>) -> Result<(), SandboxError> {
        let paths = self.paths(id);
        if let Some(vm) = vm {
            vm::teardown(&vm).await;
        }
        let left = vm::processes_in(&paths.dir);
        for p in &left {
            let _ = p.terminate(Duration::from_secs(2)).await;
        }
        if !left.is_empty() {
            warn!(sandbox = %id, processes = left.len(), "stopped the processes of an unfinished boot");
        }
        self.teardown_network(id).await;
        paths.remove();
        self.fail_boot(id)
    }

    /// Creating --BootFailed--> removed: nothing of a sandbox whose boot failed stays.
    fn fail_boot(&self, id: &str) -> Result<(), SandboxError> {
        match self.inner.records.get(id)? {
            Some(mut r) if r.state == SandboxState::Creating => {
                self.transition(&mut r, SandboxEvent::BootFailed)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Every change of a sandbox's state: applies `ev` to `r` and stores the result, the
    /// new state or the record's deletion. Returns whether the record remains.
    fn transition(&self, r: &mut SandboxRecord, ev: SandboxEvent) -> Result<bool, SandboxError> {
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
            None => Err(SandboxError::FailedPrecondition(format!(
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

/// Undoes a RunPodSandbox whose boot did not finish, so no half-made sandbox stays: the
/// VM (processes, mounts, run dir), the pod network and the Creating record. `unwind` does
/// it in order on an error; dropped still armed (a panic, or the call's future dropped when
/// its client went away), it does the same in a task of its own.
struct BootGuard {
    manager: SandboxManager,
    id: String,
    /// The VM is running.
    vm: Option<Arc<RunningVm>>,
    armed: bool,
}

impl BootGuard {
    fn new(manager: SandboxManager, id: &str) -> Self {
        Self {
            manager,
            id: id.to_owned(),
            vm: None,
            armed: true,
        }
    }

    /// The boot finished: keep everything.
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Undoes the boot now.
    async fn unwind(mut self) {
        self.armed = false;
        let (id, vm) = (std::mem::take(&mut self.id), self.vm.take());
        if let Err(e) = self.manager.undo_boot(&id, vm).await {
            warn!(sandbox = %id, error = %e, "cannot forget the sandbox whose boot failed");
        }
    }
}

impl Drop for BootGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        warn!(sandbox = %self.id, "RunPodSandbox ended before the boot finished; undoing it");
        let (manager, id, vm) = (
            self.manager.clone(),
            std::mem::take(&mut self.id),
            self.vm.take(),
        );
        let undo = async move {
            if let Err(e) = manager.undo_boot(&id, vm).await {
                warn!(sandbox = %id, error = %e, "cannot forget the sandbox whose boot failed");
            }
        };
        // Without a runtime (moatd is exiting) the restart's recovery removes the sandbox.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(undo);
        }
    }
}

#[cfg(test)]
mod tests {
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
