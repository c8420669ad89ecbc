//! RunPodSandbox: the request's checks, the Creating record, then the boot (pod network,
//! VM, agent set-up). What the boot makes is held by a `BootGuard`, which undoes all of it
//! if the boot does not finish, whether it failed or its call was dropped.

use crate::metrics::BootPhase;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::error::SandboxError;
use super::handlers::{HandlerVmm, size_vm};
use super::manager::{Live, RunRequest, SandboxManager};
use super::record::{SandboxRecord, VmRecord};
use super::state::{SandboxEvent, SandboxState};
use super::vm::{self, LaunchSpec, RunningVm};
use crate::hypervisor::select::VmmKind;

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

impl SandboxManager {
    /// RunPodSandbox: boots the VM, waits for the agent, sets the pod up. Returns the id.
    pub async fn run(&self, req: RunRequest) -> Result<String, SandboxError> {
        let md = &req.metadata;
        if md.name.is_empty() || md.uid.is_empty() || md.namespace.is_empty() {
            return Err(SandboxError::BadRequest(
                "pod sandbox metadata needs name, uid and namespace".into(),
            ));
        }
        for (wanted, what) in [
            (req.host_network, "network namespace (hostNetwork)"),
            (req.host_pid, "PID namespace (hostPID)"),
            (req.host_ipc, "IPC namespace (hostIPC)"),
        ] {
            if wanted {
                return Err(SandboxError::WrongState(format!(
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
            return Err(SandboxError::BadRequest(format!(
                "runtime handler {handler:?} is not configured; moatd has {known:?}"
            )));
        }
        let handler_vmm = self
            .inner
            .hypervisors
            .get(&handler)
            .cloned()
            .ok_or_else(|| {
                SandboxError::BadRequest(format!("runtime handler {handler:?} has no hypervisor"))
            })?;
        if let Some(r) = &handler_vmm.refused {
            return Err(SandboxError::WrongState(format!(
                "runtime handler {handler:?}: {r}"
            )));
        }
        if req.userns.is_some() && handler_vmm.kind == VmmKind::Builtin {
            return Err(SandboxError::WrongState(format!(
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
        let begun = std::time::Instant::now();
        let net = self.setup_network(&id, req).await?;
        let network_took = begun.elapsed();
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
        let (vm, agent, times) = launched?;
        let set_up = std::time::Instant::now();
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
                SandboxError::BadRequest(format!("setting the sandbox up: {e}"))
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
        let phases = [
            (BootPhase::Network, network_took),
            (BootPhase::VmmStart, times.vmm_start),
            (BootPhase::KernelBoot, times.kernel_boot),
            (BootPhase::Setup, set_up.elapsed()),
            (BootPhase::Total, begun.elapsed()),
        ];
        let m = crate::metrics::get();
        for (phase, took) in phases {
            m.boot_phase(phase, took);
        }
        let ms = |i: usize| phases[i].1.as_millis() as u64;
        info!(sandbox = %id, network_ms = ms(0), vmm_start_ms = ms(1), kernel_boot_ms = ms(2), setup_ms = ms(3), total_ms = ms(4), "boot phases");
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
    pub(super) async fn teardown_network(&self, id: &str) {
        if let Err(e) = self.inner.network.teardown(id).await {
            warn!(sandbox = %id, error = %e, "tearing the pod network down failed");
        }
    }

    /// Undoes a boot that did not finish: the VM (`vm`, or whatever processes name its
    /// directory when the boot was cut short before the VM was known), its mounts and run
    /// dir, the pod network (CNI DEL is idempotent), and the Creating record.
    pub(super) async fn undo_boot(
        &self,
        id: &str,
        vm: Option<Arc<RunningVm>>,
    ) -> Result<(), SandboxError> {
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
