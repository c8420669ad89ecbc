//! The guest: how moatd talks to the agent inside a pod's VM.
//!
//! - `vsock`: the hybrid-vsock handshake and the gRPC channel over it.
//! - `client`: [`GuestClient`], every agent call with its deadline; `streams`: Exec,
//!   Attach input and PortForward.
//! - `types`: the host's own types for what goes in and comes out (proto types stay in
//!   `client` and `streams`).
//! - `error`: [`GuestError`], named after causes.
//!
//! The sandbox and container managers use the agent through the [`Guest`] trait, so their
//! logic can be tested against [`testing::FakeGuest`] without a VM.
//!
//! Every byte the agent sends is the guest's word: the guest may run a replaced agent.

mod client;
mod error;
mod streams;
pub mod types;
pub mod vsock;

#[cfg(test)]
pub mod testing;

use std::time::Duration;

use tokio::sync::mpsc;

pub use client::GuestClient;
pub use error::GuestError;
pub use streams::{ExecEvent, ExecEvents, ExecSpec, PortEvents, StdinEvent};
pub use types::*;
pub use vsock::{AGENT_PORT, ANNOUNCE_PORT, MAX_AGENT_MESSAGE, hybrid_connect, wait_announce};

/// The calls moatd makes into one pod's agent. Object-safe (`Box<dyn Guest>`), so a
/// manager can be handed a fake in its tests.
#[async_trait::async_trait]
pub trait Guest: Send + Sync {
    /// The agent's version, memory and root filesystem.
    async fn health(&self) -> Result<AgentHealth, GuestError>;
    /// Sets the pod up: identity, shares, sysctls, user namespace.
    async fn setup(&self, s: SandboxSetup) -> Result<(), GuestError>;
    /// Powers the guest off.
    async fn shutdown(&self) -> Result<(), GuestError>;
    /// Configures the pod's interfaces and routes.
    async fn setup_network(&self, n: GuestNetwork) -> Result<(), GuestError>;
    /// Creates a container; returns the user its main process runs as.
    async fn create_container(&self, k: ContainerCreate) -> Result<ContainerUser, GuestError>;
    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), GuestError>;
    /// Waits up to `wait` for a container's exit; `None` if it still runs.
    async fn wait_container(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<ExitInfo>, GuestError>;
    /// Sends `signal` to a container's main process.
    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), GuestError>;
    /// Frees a container in the guest.
    async fn remove_container(&self, id: &str) -> Result<(), GuestError>;
    /// ListContainers: what the guest has, and how far each got.
    async fn list_containers(&self) -> Result<Vec<GuestContainer>, GuestError>;
    /// Runs a command in a container to its end or `timeout`.
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, GuestError>;
    /// The main process's output records, as long as it writes.
    async fn output(&self, id: &str) -> Result<OutputStream, GuestError>;
    /// Changes a container's CPU (quota, period) and memory limits.
    async fn update_resources(
        &self,
        id: &str,
        cpu: Option<(i64, i64)>,
        memory: Option<i64>,
    ) -> Result<(), GuestError>;
    /// A container's resource usage.
    async fn stats(&self, id: &str) -> Result<Usage, GuestError>;
    /// Starts a streamed Exec; the stream ends with `ExecEvent::Exit`.
    async fn exec(
        &self,
        spec: ExecSpec,
        input: mpsc::Receiver<StdinEvent>,
    ) -> Result<ExecEvents, GuestError>;
    /// Feeds a container's main process stdin and terminal size.
    async fn attach_input(
        &self,
        id: &str,
        input: mpsc::Receiver<StdinEvent>,
    ) -> Result<(), GuestError>;
    /// Connects to `port` inside the pod.
    async fn port_forward(
        &self,
        port: u16,
        input: mpsc::Receiver<Vec<u8>>,
    ) -> Result<PortEvents, GuestError>;
}

#[async_trait::async_trait]
impl Guest for GuestClient {
    async fn health(&self) -> Result<AgentHealth, GuestError> {
        GuestClient::health(self).await
    }
    async fn setup(&self, s: SandboxSetup) -> Result<(), GuestError> {
        GuestClient::setup(self, s).await
    }
    async fn shutdown(&self) -> Result<(), GuestError> {
        GuestClient::shutdown(self).await
    }
    async fn setup_network(&self, n: GuestNetwork) -> Result<(), GuestError> {
        GuestClient::setup_network(self, n).await
    }
    async fn create_container(&self, k: ContainerCreate) -> Result<ContainerUser, GuestError> {
        GuestClient::create_container(self, k).await
    }
    async fn start_container(&self, id: &str) -> Result<(), GuestError> {
        GuestClient::start_container(self, id).await
    }
    async fn wait_container(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<ExitInfo>, GuestError> {
        GuestClient::wait_container(self, id, wait).await
    }
    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), GuestError> {
        GuestClient::signal_container(self, id, signal).await
    }
    async fn remove_container(&self, id: &str) -> Result<(), GuestError> {
        GuestClient::remove_container(self, id).await
    }
    async fn list_containers(&self) -> Result<Vec<GuestContainer>, GuestError> {
        GuestClient::list_containers(self).await
    }
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, GuestError> {
        GuestClient::exec_sync(self, id, cmd, timeout).await
    }
    async fn output(&self, id: &str) -> Result<OutputStream, GuestError> {
        GuestClient::output(self, id).await
    }
    async fn update_resources(
        &self,
        id: &str,
        cpu: Option<(i64, i64)>,
        memory: Option<i64>,
    ) -> Result<(), GuestError> {
        GuestClient::update_resources(self, id, cpu, memory).await
    }
    async fn stats(&self, id: &str) -> Result<Usage, GuestError> {
        GuestClient::stats(self, id).await
    }
    async fn exec(
        &self,
        spec: ExecSpec,
        input: mpsc::Receiver<StdinEvent>,
    ) -> Result<ExecEvents, GuestError> {
        GuestClient::exec(self, spec, input).await
    }
    async fn attach_input(
        &self,
        id: &str,
        input: mpsc::Receiver<StdinEvent>,
    ) -> Result<(), GuestError> {
        GuestClient::attach_input(self, id, input).await
    }
    async fn port_forward(
        &self,
        port: u16,
        input: mpsc::Receiver<Vec<u8>>,
    ) -> Result<PortEvents, GuestError> {
        GuestClient::port_forward(self, port, input).await
    }
}
