//! Streaming sessions (the streaming server's Exec, Attach and PortForward, after their
//! token came back) run against the pods' agents, with the CRI's session rules: an
//! attached client's stdin EOF closes the container's stdin only with `stdin_once`, output
//! fans out to every attached client, and a client that falls behind loses output rather
//! than slowing the container.

use std::sync::Arc;

use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc};

use super::ContainerManager;
use crate::guest::{ExecEvent, ExecSpec, StdinEvent};
use crate::sandbox::SandboxManager;
use crate::streaming::{AttachRequest, Backend, BackendError, ExecRequest, Io};

/// Runs streaming sessions against the pods' agents.
pub struct Sessions {
    /// Containers.
    pub containers: ContainerManager,
    /// Pods.
    pub sandboxes: SandboxManager,
}

fn backend_err(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

impl Sessions {
    /// Shared, for the streaming server.
    pub fn shared(containers: ContainerManager, sandboxes: SandboxManager) -> Arc<dyn Backend> {
        Arc::new(Self {
            containers,
            sandboxes,
        })
    }
}

async fn send(to: &Option<mpsc::Sender<Vec<u8>>>, data: Vec<u8>) {
    if let Some(tx) = to {
        let _ = tx.send(data).await;
    }
}

#[tonic::async_trait]
impl Backend for Sessions {
    async fn exec(&self, req: &ExecRequest, io: Io) -> Result<i32, BackendError> {
        let _open = crate::metrics::get().streaming_session("exec");
        let Io {
            input,
            stdout,
            stderr,
        } = io;
        let spec = ExecSpec {
            container_id: req.container_id.clone(),
            cmd: req.cmd.clone(),
            tty: req.tty,
            stdin: req.stdin,
            size: (0, 0),
        };
        let mut events = self
            .containers
            .exec_stream(&req.container_id, spec, input)
            .await
            .map_err(backend_err)?;
        while let Some(ev) = events.next().await {
            match ev.map_err(backend_err)? {
                ExecEvent::Stdout(d) => send(&stdout, d).await,
                ExecEvent::Stderr(d) => send(&stderr, d).await,
                ExecEvent::Exit { code, error } => {
                    if !error.is_empty() {
                        return Err(BackendError(error));
                    }
                    return Ok(code);
                }
            }
        }
        Err(BackendError(
            "the agent ended the exec without an exit status".into(),
        ))
    }

    async fn attach(&self, req: &AttachRequest, io: Io) -> Result<(), BackendError> {
        let _open = crate::metrics::get().streaming_session("attach");
        let Io {
            input,
            stdout,
            stderr,
        } = io;
        let (record, mut output, agent) = self
            .containers
            .attach(&req.container_id)
            .await
            .map_err(backend_err)?;
        if req.stdin && !record.stdin {
            return Err(BackendError(format!(
                "container {} was not created with stdin open; attach without stdin",
                record.id
            )));
        }
        // A client's EOF closes the container's stdin only with stdin_once (CRI); otherwise
        // stdin stays open for the next client.
        let input = if record.stdin_once {
            input
        } else {
            let (tx, rx) = mpsc::channel(16);
            let mut input = input;
            tokio::spawn(async move {
                while let Some(ev) = input.recv().await {
                    if ev != StdinEvent::Close && tx.send(ev).await.is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let feeder = {
            let id = record.id.clone();
            tokio::spawn(async move { agent.attach_input(&id, input).await })
        };
        let result = loop {
            match output.recv().await {
                Ok(rec) => {
                    if rec.stderr {
                        send(&stderr, rec.data).await
                    } else {
                        send(&stdout, rec.data).await
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(container = %record.id, missed = n, "attached client fell behind");
                }
                // The container's output ended: it exited.
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            }
        };
        feeder.abort();
        result
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        input: mpsc::Receiver<Vec<u8>>,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), BackendError> {
        let _open = crate::metrics::get().streaming_session("portforward");
        let agent = self
            .sandboxes
            .agent(sandbox_id)
            .await
            .map_err(backend_err)?;
        let mut events = agent.port_forward(port, input).await.map_err(backend_err)?;
        while let Some(ev) = events.next().await {
            match ev.map_err(backend_err)? {
                Some(data) => {
                    if output.send(data).await.is_err() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }
}
