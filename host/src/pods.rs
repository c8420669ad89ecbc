//! The one owner of what spans a pod and its containers, so the CRI layer asks once:
//! stopping a pod exits its containers before its VM goes, removing it forgets both.
//! Pod sandbox stats gather the pod's containers' usage and its network traffic here.

use crate::containers::record::ContainerRecord;
use crate::containers::state::ContainerState;
use crate::containers::{ContainerError, ContainerManager};
use crate::guest::Usage;
use crate::hypervisor::usage::{HostUsage, ProcessTable};
use crate::network::usage::InterfaceUsage;
use crate::sandbox::record::SandboxRecord;
use crate::sandbox::{SandboxError, SandboxManager};

/// A call on a whole pod failed in its sandbox or in one of its containers.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The sandbox (its VM, network or record).
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// One of its containers.
    #[error(transparent)]
    Container(#[from] ContainerError),
}

/// A pod's figures, for PodSandboxStats.
#[derive(Debug, Clone)]
pub struct PodStats {
    /// The pod.
    pub sandbox: SandboxRecord,
    /// Its running containers and their usage in the guest.
    pub containers: Vec<(ContainerRecord, Option<Usage>)>,
    /// Its CNI interface's traffic, when it has a pod network.
    pub network: Option<InterfaceUsage>,
    /// What its VM's host processes cost (the whole VM: the guest's work and memory, and
    /// the VMM's own); none when the pod is not running.
    pub host: Option<HostUsage>,
    /// When the figures were read, ns since the epoch.
    pub at: i64,
}

/// Pods: their sandboxes and containers together.
#[derive(Clone)]
pub struct Pods {
    sandboxes: SandboxManager,
    containers: ContainerManager,
}

impl Pods {
    /// Over the two managers.
    pub fn new(sandboxes: SandboxManager, containers: ContainerManager) -> Self {
        Self {
            sandboxes,
            containers,
        }
    }

    /// StopPodSandbox: the containers are stopped and marked exited, then the VM powers
    /// off and the network goes. Idempotent; an unknown id is fine.
    pub async fn stop(&self, id: &str) -> Result<(), PodError> {
        if let Some(r) = self.sandboxes.get(id)? {
            self.containers.sandbox_gone(&r.id, false).await?;
        }
        self.sandboxes.stop(id).await?;
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed, then forgets its containers and itself.
    /// Idempotent; an unknown id is fine.
    pub async fn remove(&self, id: &str) -> Result<(), PodError> {
        if let Some(r) = self.sandboxes.get(id)? {
            self.containers.sandbox_gone(&r.id, true).await?;
        }
        self.sandboxes.remove(id).await?;
        Ok(())
    }

    /// PodSandboxStats of one pod: NotFound for an unknown one.
    pub async fn stats(&self, id: &str) -> Result<PodStats, PodError> {
        let r = self
            .sandboxes
            .get(id)?
            .ok_or_else(|| SandboxError::Unknown(id.to_owned()))?;
        self.stats_of(r, &processes().await).await
    }

    /// ListPodSandboxStats: the ready pods that `keep` accepts. Pods are asked at once, so
    /// a pod whose guest hangs costs the list one agent deadline, not one per container.
    pub async fn list_stats(
        &self,
        keep: impl Fn(&SandboxRecord) -> bool,
    ) -> Result<Vec<PodStats>, PodError> {
        let pods = self
            .sandboxes
            .list()?
            .into_iter()
            .filter(|r| r.state.is_ready() && keep(r));
        let table = processes().await;
        futures::future::join_all(pods.map(|r| self.stats_of(r, &table)))
            .await
            .into_iter()
            .collect()
    }

    async fn stats_of(
        &self,
        r: SandboxRecord,
        processes: &ProcessTable,
    ) -> Result<PodStats, PodError> {
        let at = crate::time::now_nanos();
        let mut containers = Vec::new();
        if r.state.is_ready() {
            let running: Vec<ContainerRecord> = self
                .containers
                .list()?
                .into_iter()
                .filter(|c| c.sandbox_id == r.id && c.state == ContainerState::Running)
                .collect();
            let asked = running.iter().map(|c| self.containers.stats(&c.id));
            // A container that exits meanwhile, or whose guest does not answer, is left out.
            containers = futures::future::join_all(asked)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
        }
        let network = match (&r.network, r.state.is_ready()) {
            (Some(pn), true) => match self.sandboxes.network_usage(&r.id, &pn.interface).await {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::warn!(sandbox = %r.id, error = %e, "no network figures for the pod");
                    None
                }
            },
            _ => None,
        };
        let pids = self.sandboxes.host_pids(&r.id);
        let host = (!pids.is_empty()).then(|| processes.usage(&pids));
        Ok(PodStats {
            sandbox: r,
            containers,
            network,
            host,
            at,
        })
    }
}

/// The host's processes, read off the async threads.
async fn processes() -> ProcessTable {
    tokio::task::spawn_blocking(ProcessTable::read)
        .await
        .unwrap_or_default()
}

impl crate::metrics::server::CensusSource for Pods {
    fn census(&self) -> crate::metrics::Census {
        use crate::sandbox::state::SandboxState;
        let sandboxes = self.sandboxes.list().unwrap_or_default();
        let containers = self.containers.list().unwrap_or_default();
        let count = |states: &[&'static str], of: &mut dyn Iterator<Item = &'static str>| {
            let mut n: Vec<(&'static str, u64)> = states.iter().map(|s| (*s, 0)).collect();
            for s in of {
                if let Some(row) = n.iter_mut().find(|(k, _)| *k == s) {
                    row.1 += 1;
                }
            }
            n
        };
        let pods_by_state = count(
            &["creating", "ready", "notready"],
            &mut sandboxes.iter().map(|r| match r.state {
                SandboxState::Creating => "creating",
                SandboxState::Ready => "ready",
                SandboxState::Stopped => "notready",
            }),
        );
        let containers_by_state = count(
            &["created", "running", "exited"],
            &mut containers.iter().map(|c| match c.state {
                ContainerState::Created => "created",
                ContainerState::Running => "running",
                ContainerState::Exited => "exited",
            }),
        );
        let table = crate::hypervisor::usage::ProcessTable::read();
        let pods = sandboxes
            .iter()
            .filter(|r| r.state.is_ready())
            .map(|r| crate::metrics::PodCost {
                id: r.id.clone(),
                namespace: r.metadata.namespace.clone(),
                name: r.metadata.name.clone(),
                usage: table.usage(&self.sandboxes.host_pids(&r.id)),
            })
            .collect();
        crate::metrics::Census {
            pods_by_state,
            containers_by_state,
            pods,
        }
    }
}
