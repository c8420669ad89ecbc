//! The agent's streaming calls: Exec with streamed stdio, the main process's stdin and
//! terminal (for Attach), and PortForward. Each call's start has the agent's deadline;
//! the stream itself lasts as long as its user keeps it, and dropping it cancels the call,
//! which the agent answers by killing the exec'd process or closing the connection.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use moat_proto::agent as pb;

use super::{GuestClient, GuestError};

/// What to run for a streamed Exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// The container.
    pub container_id: String,
    /// The command.
    pub cmd: Vec<String>,
    /// On a terminal.
    pub tty: bool,
    /// With a stdin.
    pub stdin: bool,
    /// The terminal's first size (columns, rows); (0, 0) leaves the default.
    pub size: (u32, u32),
}

/// Input to a streamed process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinEvent {
    /// Bytes for its stdin.
    Data(Vec<u8>),
    /// EOF.
    Close,
    /// A new terminal size (columns, rows).
    Resize(u32, u32),
}

/// Output of a streamed Exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Standard output (or the terminal).
    Stdout(Vec<u8>),
    /// Standard error.
    Stderr(Vec<u8>),
    /// The process ended: its exit code, or why it could not run.
    Exit {
        /// Exit code (128 + signal when killed).
        code: i32,
        /// Why it could not run, if it could not.
        error: String,
    },
}

/// A stream of Exec events.
pub type ExecEvents =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExecEvent, GuestError>> + Send>>;

/// Bytes from a forwarded port; `None` is the port's half-close.
pub type PortEvents =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Option<Vec<u8>>, GuestError>> + Send>>;

impl GuestClient {
    /// Starts a streamed Exec. `input` carries stdin and resizes; the returned stream ends
    /// with `Exit`.
    pub async fn exec(
        &self,
        spec: ExecSpec,
        input: mpsc::Receiver<StdinEvent>,
    ) -> Result<ExecEvents, GuestError> {
        let start = pb::ExecInput {
            kind: Some(pb::exec_input::Kind::Start(pb::ExecStart {
                container_id: spec.container_id,
                cmd: spec.cmd,
                tty: spec.tty,
                stdin: spec.stdin,
                width: spec.size.0,
                height: spec.size.1,
            })),
        };
        let rest = ReceiverStream::new(input).map(|e| pb::ExecInput {
            kind: Some(match e {
                StdinEvent::Data(d) => pb::exec_input::Kind::Stdin(d),
                StdinEvent::Close => pb::exec_input::Kind::CloseStdin(true),
                StdinEvent::Resize(width, height) => {
                    pb::exec_input::Kind::Resize(pb::TerminalSize { width, height })
                }
            }),
        });
        let requests = futures::stream::iter([start]).chain(rest);
        let mut c = self.client.clone();
        let s = self.call("exec", Duration::ZERO, c.exec(requests)).await?;
        let timeout = self.timeout;
        Ok(Box::pin(s.filter_map(move |m| async move {
            match m {
                Err(e) => Some(Err(GuestError::from_status(&e, timeout))),
                Ok(pb::ExecOutput { kind: None }) => None,
                Ok(pb::ExecOutput { kind: Some(k) }) => Some(Ok(match k {
                    pb::exec_output::Kind::Stdout(d) => ExecEvent::Stdout(d),
                    pb::exec_output::Kind::Stderr(d) => ExecEvent::Stderr(d),
                    pb::exec_output::Kind::Exit(e) => ExecEvent::Exit {
                        code: e.exit_code,
                        error: e.error,
                    },
                })),
            }
        })))
    }

    /// Feeds the main process of container `id`: stdin bytes and EOF go to its stdin (or
    /// terminal), resizes to its terminal. Runs until `input` ends or EOF was sent.
    pub async fn attach_input(
        &self,
        id: &str,
        mut input: mpsc::Receiver<StdinEvent>,
    ) -> Result<(), GuestError> {
        let (tx, rx) = mpsc::channel::<pb::InputChunk>(8);
        let mut stdin_call = {
            let mut c = self.client.clone();
            let first = pb::InputChunk {
                container_id: id.into(),
                data: Vec::new(),
                close: false,
            };
            let requests = futures::stream::iter([first]).chain(ReceiverStream::new(rx));
            tokio::spawn(async move { c.input(requests).await.map(|_| ()) })
        };
        let mut tx = Some(tx);
        loop {
            let ev = tokio::select! {
                ev = input.recv() => ev,
                r = &mut stdin_call => {
                    return match r {
                        Ok(r) => r.map_err(|e| self.stream_err(&e)),
                        Err(e) => Err(GuestError::Failed(format!("the stdin call ended: {e}"))),
                    };
                }
            };
            match ev {
                None => break,
                Some(StdinEvent::Data(data)) => {
                    if let Some(t) = &tx {
                        let chunk = pb::InputChunk {
                            container_id: String::new(),
                            data,
                            close: false,
                        };
                        if t.send(chunk).await.is_err() {
                            tx = None;
                        }
                    }
                }
                Some(StdinEvent::Close) => {
                    if let Some(t) = tx.take() {
                        let _ = t
                            .send(pb::InputChunk {
                                container_id: String::new(),
                                data: Vec::new(),
                                close: true,
                            })
                            .await;
                    }
                }
                Some(StdinEvent::Resize(width, height)) => {
                    let r = self.req(
                        pb::ResizeRequest {
                            container_id: id.into(),
                            width,
                            height,
                        },
                        Duration::ZERO,
                    );
                    let mut c = self.client.clone();
                    self.call("resize", Duration::ZERO, c.resize(r)).await?;
                }
            }
        }
        // Detach: end the input call without closing the process's stdin.
        drop(tx);
        stdin_call.abort();
        Ok(())
    }

    /// Connects to `port` inside the pod. `input` carries bytes for the port; its end is a
    /// half-close. The returned stream yields the port's bytes, then `None` at its EOF.
    pub async fn port_forward(
        &self,
        port: u16,
        input: mpsc::Receiver<Vec<u8>>,
    ) -> Result<PortEvents, GuestError> {
        let first = pb::PortForwardData {
            port: port.into(),
            data: Vec::new(),
            close: false,
        };
        let rest = ReceiverStream::new(input)
            .map(|data| pb::PortForwardData {
                port: 0,
                data,
                close: false,
            })
            .chain(futures::stream::iter([pb::PortForwardData {
                port: 0,
                data: Vec::new(),
                close: true,
            }]));
        let requests = futures::stream::iter([first]).chain(rest);
        let mut c = self.client.clone();
        let s = self
            .call("port_forward", Duration::ZERO, c.port_forward(requests))
            .await?;
        let timeout = self.timeout;
        Ok(Box::pin(s.flat_map(move |m| {
            let items: Vec<Result<Option<Vec<u8>>, GuestError>> = match m {
                Err(e) => vec![Err(GuestError::from_status(&e, timeout))],
                Ok(m) => {
                    let mut v = Vec::new();
                    if !m.data.is_empty() {
                        v.push(Ok(Some(m.data)));
                    }
                    if m.close {
                        v.push(Ok(None));
                    }
                    v
                }
            };
            futures::stream::iter(items)
        })))
    }
}
