//! Kubernetes remote command (Exec and Attach): the streams a client opens (stdin, stdout,
//! stderr, error, resize), what the error stream carries at the end for each protocol
//! version, and the terminal-size messages on the resize stream. The transports are in
//! `spdy` and `websocket`.

pub mod spdy;
pub mod websocket;

use serde::{Deserialize, Serialize};

use super::backend::{AttachRequest, Backend, BackendError, ExecRequest, Io, Request};

/// The remote command protocol versions, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`: the error stream carries text.
    V1,
    /// `v2.channel.k8s.io`: streams as the options ask, the error stream carries text.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a Status object with the exit code.
    V4,
    /// `v5.channel.k8s.io` (WebSocket): adds closing a channel (stdin EOF).
    V5,
}

impl Version {
    /// The subprotocol name.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "channel.k8s.io",
            Version::V2 => "v2.channel.k8s.io",
            Version::V3 => "v3.channel.k8s.io",
            Version::V4 => "v4.channel.k8s.io",
            Version::V5 => "v5.channel.k8s.io",
        }
    }

    /// By name.
    pub fn from_name(name: &str) -> Option<Version> {
        [
            Version::V1,
            Version::V2,
            Version::V3,
            Version::V4,
            Version::V5,
        ]
        .into_iter()
        .find(|v| v.name() == name)
    }
}

/// What kubelet's SPDY server offers, in its order of preference.
pub const SPDY_VERSIONS: [Version; 4] = [Version::V4, Version::V3, Version::V2, Version::V1];
/// What the WebSocket transport offers.
pub const WEBSOCKET_VERSIONS: [Version; 2] = [Version::V5, Version::V4];

/// Which streams take part: from the stored request, as kubelet's streaming server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Stdin.
    pub stdin: bool,
    /// Stdout.
    pub stdout: bool,
    /// Stderr (never with a terminal).
    pub stderr: bool,
    /// A terminal (and a resize stream, from v3).
    pub tty: bool,
}

impl Options {
    /// From a stored Exec or Attach; None for a PortForward.
    pub fn of(req: &Request) -> Option<Options> {
        match req {
            Request::Exec(e) => Some(Options {
                stdin: e.stdin,
                stdout: e.stdout,
                stderr: e.stderr && !e.tty,
                tty: e.tty,
            }),
            Request::Attach(a) => Some(Options {
                stdin: a.stdin,
                stdout: a.stdout,
                stderr: a.stderr && !a.tty,
                tty: a.tty,
            }),
            Request::PortForward(_) => None,
        }
    }
}

/// The outcome of a remote command, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exec ended with this code (0 is success); Attach ended.
    Exited(i32),
    /// It could not run, or failed.
    Failed(String),
}

#[derive(Serialize)]
struct Cause<'a> {
    reason: &'a str,
    message: String,
}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

/// A Kubernetes `Status` (meta/v1), as client-go's v4 error decoder reads it.
#[derive(Serialize)]
struct Status<'a> {
    metadata: serde_json::Map<String, serde_json::Value>,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
}

fn exit_message(cmd: &[String], code: i32) -> String {
    format!(
        "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
    )
}

/// What the error stream carries at the end; empty means nothing is written.
pub fn error_stream_payload(version: Version, outcome: &Outcome, cmd: &[String]) -> Vec<u8> {
    if version < Version::V4 {
        return match outcome {
            Outcome::Exited(0) => Vec::new(),
            Outcome::Exited(code) => exit_message(cmd, *code).into_bytes(),
            Outcome::Failed(m) => m.clone().into_bytes(),
        };
    }
    let status = match outcome {
        Outcome::Exited(0) => Status {
            metadata: Default::default(),
            status: "Success",
            message: None,
            reason: None,
            details: None,
        },
        Outcome::Exited(code) => Status {
            metadata: Default::default(),
            status: "Failure",
            message: Some(exit_message(cmd, *code)),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: "ExitCode",
                    message: code.to_string(),
                }],
            }),
        },
        Outcome::Failed(m) => Status {
            metadata: Default::default(),
            status: "Failure",
            message: Some(m.clone()),
            reason: Some("InternalError"),
            details: None,
        },
    };
    serde_json::to_vec(&status).unwrap_or_default()
}

/// A terminal size as client-go sends it on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Splits the resize stream (JSON objects one after another, as Go's json.Encoder writes
/// them) into sizes, across arbitrary chunk boundaries.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Feeds bytes; returns the complete sizes. Malformed input is dropped up to the next
    /// object, so a confused client cannot wedge the stream.
    pub fn push(&mut self, data: &[u8]) -> Vec<TerminalSize> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    out.push(s);
                    consumed = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Skip past the bad object.
                    consumed = self.buf[consumed..]
                        .iter()
                        .position(|&b| b == b'}')
                        .map(|p| consumed + p + 1)
                        .unwrap_or(self.buf.len());
                    break;
                }
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > 4096 {
            self.buf.clear();
        }
        out
    }
}

/// Runs the stored Exec or Attach against the backend.
pub async fn run(backend: &dyn Backend, req: &Request, io: Io) -> Outcome {
    let r = match req {
        Request::Exec(e) => exec(backend, e, io).await,
        Request::Attach(a) => attach(backend, a, io).await,
        Request::PortForward(_) => Err(BackendError("not a remote command".into())),
    };
    match r {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(e.0),
    }
}

async fn exec(backend: &dyn Backend, e: &ExecRequest, io: Io) -> Result<i32, BackendError> {
    backend.exec(e, io).await
}

async fn attach(backend: &dyn Backend, a: &AttachRequest, io: Io) -> Result<i32, BackendError> {
    backend.attach(a, io).await.map(|()| 0)
}

/// The command, for messages.
pub fn command_of(req: &Request) -> Vec<String> {
    match req {
        Request::Exec(e) => e.cmd.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code_as_client_go_reads_it() {
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        let ok: serde_json::Value = serde_json::from_slice(&error_stream_payload(
            Version::V4,
            &Outcome::Exited(0),
            &cmd,
        ))
        .expect("json");
        assert_eq!(ok, serde_json::json!({"metadata": {}, "status": "Success"}));
        let bad: serde_json::Value = serde_json::from_slice(&error_stream_payload(
            Version::V5,
            &Outcome::Exited(3),
            &cmd,
        ))
        .expect("json");
        assert_eq!(bad["status"], "Failure");
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
        let failed: serde_json::Value = serde_json::from_slice(&error_stream_payload(
            Version::V4,
            &Outcome::Failed("container x is not running".into()),
            &cmd,
        ))
        .expect("json");
        assert_eq!(failed["message"], "container x is not running");
        assert!(error_stream_payload(Version::V2, &Outcome::Exited(0), &cmd).is_empty());
        assert!(
            String::from_utf8_lossy(&error_stream_payload(
                Version::V3,
                &Outcome::Exited(3),
                &cmd
            ))
            .contains("exit code 3")
        );
    }

    #[test]
    fn resize_messages_split_anywhere() {
        let mut d = ResizeDecoder::default();
        let all = b"{\"Width\":80,\"Height\":24}\n{\"Width\":132,\"Height\":50}\n";
        let mut got = Vec::new();
        for chunk in all.chunks(7) {
            got.extend(d.push(chunk));
        }
        assert_eq!(
            got,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 132,
                    height: 50
                }
            ]
        );
        assert!(
            d.push(b"{\"Width\":\"x\"}").is_empty(),
            "garbage is dropped"
        );
        assert_eq!(
            d.push(b"{\"Width\":1,\"Height\":2}"),
            vec![TerminalSize {
                width: 1,
                height: 2
            }]
        );
    }

    #[test]
    fn versions_by_name() {
        for v in SPDY_VERSIONS.into_iter().chain(WEBSOCKET_VERSIONS) {
            assert_eq!(Version::from_name(v.name()), Some(v));
        }
        assert_eq!(Version::from_name("v9.channel.k8s.io"), None);
    }
}
