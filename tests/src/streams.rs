//! Streaming clients for Exec, Attach and PortForward URLs, speaking what kubelet, crictl
//! and kubectl speak: an HTTP/1.1 upgrade to SPDY/3.1 with `X-Stream-Protocol-Version`
//! negotiation and one SPDY stream per channel (as client-go's SPDY executor and port
//! forwarder do), or a WebSocket with channel-prefixed binary messages (v4/v5.channel.k8s.io).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use moat_host::streaming::spdy::{Session, StreamReader, StreamWriter};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// host:port and path of an `http://host:port/path` URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    (host.to_owned(), format!("/{path}"))
}

/// The answer to an upgrade request: status and headers (lowercase names).
#[derive(Debug)]
pub struct UpgradeReply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The body, for refusals.
    pub body: String,
}

impl UpgradeReply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends the SPDY upgrade request; returns the reply and, on 101, the connection.
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> (UpgradeReply, Option<TcpStream>) {
    let (host, path) = split_url(url);
    let mut conn = TcpStream::connect(&host)
        .await
        .expect("connect to the streaming server");
    conn.set_nodelay(true).expect("nodelay");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())
        .await
        .expect("write the request");
    // Read the head byte by byte, so nothing after it (SPDY frames) is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut b).await.expect("read the reply");
        assert!(n == 1, "connection closed in the reply head: {head:?}");
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut reply = UpgradeReply {
        status,
        headers,
        body: String::new(),
    };
    if status == 101 {
        return (reply, Some(conn));
    }
    let len: usize = reply
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = conn.read_exact(&mut body).await;
    reply.body = String::from_utf8_lossy(&body).to_string();
    (reply, None)
}

/// Which streams an exec or attach client opens.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOpts {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr.
    pub stderr: bool,
    /// A terminal (opens the resize stream).
    pub tty: bool,
}

/// A remote command session over SPDY, as client-go's v4 executor opens it.
pub struct SpdyCommand {
    /// The session.
    pub session: Session,
    /// The negotiated protocol.
    pub protocol: String,
    /// stdin's writer.
    pub stdin: Option<StreamWriter>,
    /// stdout's reader.
    pub stdout: Option<StreamReader>,
    /// stderr's reader.
    pub stderr: Option<StreamReader>,
    /// The resize stream's writer.
    pub resize: Option<StreamWriter>,
    /// The error stream's reader.
    pub error: StreamReader,
    /// The same TCP connection, to cut it as a crashing client would.
    conn: std::net::TcpStream,
}

/// The result of a remote command, as a client sees it.
#[derive(Debug, Default)]
pub struct CommandResult {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The error stream's content (a Status object from v4).
    pub error: Vec<u8>,
}

impl CommandResult {
    /// The exit code from a v4 Status: 0 for Success, the ExitCode cause otherwise.
    pub fn exit_code(&self) -> Option<i32> {
        if self.error.is_empty() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&self.error).ok()?;
        if v["status"] == "Success" {
            return Some(0);
        }
        v["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    }
}

async fn drain(rd: Option<StreamReader>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut rd) = rd {
        while let Some(b) = rd.read().await {
            out.extend_from_slice(&b);
        }
    }
    out
}

impl SpdyCommand {
    /// Upgrades and opens the streams: error first, then the others, as client-go does.
    pub async fn connect(url: &str, o: StreamOpts) -> SpdyCommand {
        let (reply, conn) = spdy_upgrade(
            url,
            &[
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
                "channel.k8s.io",
            ],
        )
        .await;
        let conn = conn.unwrap_or_else(|| panic!("upgrade refused: {reply:?}"));
        let protocol = reply
            .header("x-stream-protocol-version")
            .unwrap_or_default()
            .to_owned();
        let std_conn = conn.into_std().expect("std socket");
        let conn_copy = std_conn.try_clone().expect("dup the socket");
        let conn = TcpStream::from_std(std_conn).expect("tokio socket");
        let (session, _incoming) = Session::client(conn);
        let open = |kind: &'static str| {
            let session = session.clone();
            async move {
                session
                    .open(vec![("streamtype".into(), kind.into())])
                    .await
                    .unwrap_or_else(|e| panic!("open the {kind} stream: {e}"))
                    .split()
            }
        };
        let (error, _) = open("error").await;
        let stdin = if o.stdin {
            Some(open("stdin").await.1)
        } else {
            None
        };
        let stdout = if o.stdout {
            Some(open("stdout").await.0)
        } else {
            None
        };
        let stderr = if o.stderr && !o.tty {
            Some(open("stderr").await.0)
        } else {
            None
        };
        let resize = if o.tty {
            Some(open("resize").await.1)
        } else {
            None
        };
        SpdyCommand {
            session,
            protocol,
            stdin,
            stdout,
            stderr,
            resize,
            error,
            conn: conn_copy,
        }
    }

    /// Cuts the connection without a goodbye, as a killed kubectl does.
    pub fn disconnect(self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }

    /// Sends a terminal size on the resize stream.
    pub async fn resize(&self, width: u16, height: u16) {
        let w = self.resize.as_ref().expect("a resize stream");
        w.write(format!("{{\"Width\":{width},\"Height\":{height}}}\n").as_bytes())
            .await
            .expect("write resize");
    }

    /// Reads stdout, stderr and the error stream to their ends (within `timeout`).
    pub async fn finish(mut self, timeout: Duration) -> CommandResult {
        let (so, se) = (self.stdout.take(), self.stderr.take());
        let fut = async {
            let (stdout, stderr, error) =
                tokio::join!(drain(so), drain(se), drain(Some(self.error)));
            CommandResult {
                stdout,
                stderr,
                error,
            }
        };
        let r = tokio::time::timeout(timeout, fut)
            .await
            .expect("the remote command ends in time");
        self.session.goaway().await;
        r
    }
}

/// A WebSocket connection to a streaming URL.
pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Upgrades to WebSocket offering `protocols`; returns the socket and the chosen one.
pub async fn ws_connect(url: &str, protocols: &str) -> Result<(Ws, String), String> {
    let (host, _) = split_url(url);
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocols.parse().map_err(|_| "bad protocols".to_string())?,
    );
    let conn = TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, resp) = tokio_tungstenite::client_async(req, conn)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((ws, chosen))
}

/// Sends `data` on `channel`.
pub async fn ws_send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut v = vec![channel];
    v.extend_from_slice(data);
    ws.send(Message::binary(v)).await.expect("websocket send");
}

/// Reads a WebSocket remote command to its end: (channel 1, channel 2, channel 3).
pub async fn ws_collect(ws: &mut Ws, timeout: Duration) -> CommandResult {
    let mut r = CommandResult::default();
    let fut = async {
        while let Some(m) = ws.next().await {
            let data = match m {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if let Some((&ch, payload)) = data.split_first() {
                match ch {
                    1 => r.stdout.extend_from_slice(payload),
                    2 => r.stderr.extend_from_slice(payload),
                    3 => r.error.extend_from_slice(payload),
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .expect("the websocket session ends in time");
    r
}

/// One forwarded connection over SPDY: the data stream's halves and the error stream.
pub struct SpdyForward {
    /// Bytes to the pod's port; `finish` is the half-close.
    pub data_out: StreamWriter,
    /// Bytes from the port; ends at the port's EOF.
    pub data_in: StreamReader,
    /// Error text, if the forward failed.
    pub error: StreamReader,
}

/// A SPDY port-forward connection, as client-go's port forwarder opens it.
pub struct SpdyPortForward {
    /// The session.
    pub session: Session,
    next_request: u32,
}

impl SpdyPortForward {
    /// Upgrades with `portforward.k8s.io`.
    pub async fn connect(url: &str) -> SpdyPortForward {
        let (reply, conn) = spdy_upgrade(url, &["portforward.k8s.io"]).await;
        let conn = conn.unwrap_or_else(|| panic!("upgrade refused: {reply:?}"));
        let (session, _incoming) = Session::client(conn);
        SpdyPortForward {
            session,
            next_request: 0,
        }
    }

    /// Opens the error and data streams of a new request for `port`.
    pub async fn forward(&mut self, port: u16) -> SpdyForward {
        let id = self.next_request;
        self.next_request += 1;
        let headers = |kind: &str| {
            vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), id.to_string()),
            ]
        };
        let (error, _) = self
            .session
            .open(headers("error"))
            .await
            .expect("open the error stream")
            .split();
        let (data_in, data_out) = self
            .session
            .open(headers("data"))
            .await
            .expect("open the data stream")
            .split();
        SpdyForward {
            data_out,
            data_in,
            error,
        }
    }
}

impl SpdyForward {
    /// Sends `request`, half-closes, and reads the reply and the error text.
    pub async fn round_trip(self, request: &[u8], timeout: Duration) -> (Vec<u8>, String) {
        if !request.is_empty() {
            self.data_out.write(request).await.expect("write data");
        }
        self.data_out.finish().await.expect("half-close");
        let fut = async { tokio::join!(drain(Some(self.data_in)), drain(Some(self.error))) };
        let (data, err) = tokio::time::timeout(timeout, fut)
            .await
            .expect("the forwarded connection ends in time");
        (data, String::from_utf8_lossy(&err).to_string())
    }
}
