//! The CRI side of streaming: Exec, Attach and PortForward requests are checked and stored
//! behind a single-use token on the streaming server, and `CriBackend` runs the sessions
//! that come back with those tokens against the pods' agents.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_cri::v1 as cri;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::containers::ContainerManager;
use crate::sandbox::SandboxManager;
use crate::sandbox::agent::{ExecEvent, ExecSpec, StdinEvent};
use crate::streaming::{
    AttachRequest, Backend, BackendError, ExecRequest, Io, PortForwardRequest, Request,
    StreamingServer,
};

/// The checks Exec and Attach share, as containerd makes them.
fn check_streams(
    call: &str,
    container_id: &str,
    (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{call} needs a container_id"
        )));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true: a terminal merges stderr into stdout",
        ));
    }
    Ok(())
}

/// Checks an ExecRequest the way containerd does.
pub fn exec_request(r: cri::ExecRequest) -> Result<ExecRequest, Status> {
    check_streams(
        "Exec",
        &r.container_id,
        (r.stdin, r.stdout, r.stderr, r.tty),
    )?;
    if r.cmd.is_empty() || r.cmd[0].is_empty() {
        return Err(Status::invalid_argument("Exec needs a command (cmd)"));
    }
    Ok(ExecRequest {
        container_id: r.container_id,
        cmd: r.cmd,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    })
}

/// Checks an AttachRequest.
pub fn attach_request(r: cri::AttachRequest) -> Result<AttachRequest, Status> {
    check_streams(
        "Attach",
        &r.container_id,
        (r.stdin, r.stdout, r.stderr, r.tty),
    )?;
    Ok(AttachRequest {
        container_id: r.container_id,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    })
}

/// Checks a PortForwardRequest.
pub fn port_forward_request(r: cri::PortForwardRequest) -> Result<PortForwardRequest, Status> {
    if r.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument(
            "PortForward needs a pod_sandbox_id",
        ));
    }
    let mut ports = Vec::new();
    for p in r.port {
        match u16::try_from(p) {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "invalid port {p}: want 1 to 65535"
                )));
            }
        }
    }
    Ok(PortForwardRequest {
        sandbox_id: r.pod_sandbox_id,
        ports,
    })
}

/// Stores a checked request and returns its URL.
pub fn url(server: &StreamingServer, req: Request) -> Result<String, Status> {
    server
        .url_for(req)
        .map_err(|e| Status::resource_exhausted(e.to_string()))
}

/// Runs streaming sessions against the pods' agents.
pub struct CriBackend {
    /// Containers.
    pub containers: ContainerManager,
    /// Pods.
    pub sandboxes: SandboxManager,
}

fn backend_err(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

impl CriBackend {
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
impl Backend for CriBackend {
    async fn exec(&self, req: &ExecRequest, io: Io) -> Result<i32, BackendError> {
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
            match ev.map_err(|s| backend_err(s.message()))? {
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
        let agent = self
            .sandboxes
            .agent(sandbox_id)
            .await
            .map_err(backend_err)?;
        let mut events = agent
            .port_forward(port, input)
            .await
            .map_err(|s| backend_err(s.message()))?;
        while let Some(ev) = events.next().await {
            match ev.map_err(|s| backend_err(s.message()))? {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> cri::ExecRequest {
        cri::ExecRequest {
            container_id: "c".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout,
            stderr,
        }
    }

    #[test]
    fn exec_requests_are_checked() {
        assert!(exec_request(exec(&["sh"], true, true, false, true)).is_ok());
        for bad in [
            exec(&[], false, true, false, false),
            exec(&[""], false, true, false, false),
            exec(&["sh"], false, false, false, false),
            exec(&["sh"], false, true, true, true),
        ] {
            let e = exec_request(bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        let mut no_id = exec(&["sh"], false, true, false, false);
        no_id.container_id.clear();
        assert!(exec_request(no_id).is_err());
    }

    #[test]
    fn port_forward_ports_are_checked() {
        let r = |ports: Vec<i32>| cri::PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: ports,
        };
        assert_eq!(
            port_forward_request(r(vec![80, 8080])).expect("ok").ports,
            vec![80, 8080]
        );
        for bad in [vec![0], vec![-1], vec![65536]] {
            assert_eq!(
                port_forward_request(r(bad)).expect_err("refused").code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
