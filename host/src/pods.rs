//! The one owner of what spans a pod and its containers, so the CRI layer asks once:
//! stopping a pod exits its containers before its VM goes, removing it forgets both.
//! Pod-wide events and stats build on this owner.

use crate::containers::{ContainerError, ContainerManager};
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
}
