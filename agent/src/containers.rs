//! The pod's containers inside the guest. This build has no executor yet: every call says
//! so; the executor (agent/src/executor) replaces this.

use moat_proto::agent::{
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    OutputChunk, RemoveContainerResponse, SignalContainerRequest, SignalContainerResponse,
    StartContainerResponse, WaitContainerRequest, WaitContainerResponse,
};
use tonic::Status;

/// Output stream type.
pub type OutputStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<OutputChunk, Status>> + Send>>;

/// The containers of this pod.
#[derive(Default)]
pub struct Containers {}

fn missing() -> Status {
    Status::unimplemented("this agent build has no container executor")
}

impl Containers {
    /// CreateContainer.
    pub async fn create(
        &self,
        _r: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, Status> {
        Err(missing())
    }
    /// StartContainer.
    pub async fn start(&self, _id: &str) -> Result<StartContainerResponse, Status> {
        Err(missing())
    }
    /// WaitContainer.
    pub async fn wait(&self, _r: WaitContainerRequest) -> Result<WaitContainerResponse, Status> {
        Err(missing())
    }
    /// SignalContainer.
    pub async fn signal(
        &self,
        _r: SignalContainerRequest,
    ) -> Result<SignalContainerResponse, Status> {
        Err(missing())
    }
    /// RemoveContainer.
    pub async fn remove(&self, _id: &str) -> Result<RemoveContainerResponse, Status> {
        Err(missing())
    }
    /// ExecSync.
    pub async fn exec_sync(&self, _r: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        Err(missing())
    }
    /// Output.
    pub async fn output(&self, _id: &str) -> Result<OutputStream, Status> {
        Err(missing())
    }
}
