//! The streaming server: an HTTP/1.1 listener (address and port from the config) serving
//! `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`. Each token is single-use
//! and expires (see `tokens`); the connection is upgraded to SPDY/3.1 or WebSocket, with
//! the subprotocol negotiated the way kubelet's streaming server does it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::backend::{Backend, Request};
use super::portforward::{self, parse_port};
use super::remotecommand::{self, SPDY_VERSIONS, Version, WEBSOCKET_VERSIONS};
use super::tokens::{TokenCache, TokenError};

/// The header client-go names its SPDY subprotocols in.
pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

type Body = Full<Bytes>;

/// A running streaming server.
pub struct StreamingServer {
    addr: SocketAddr,
    tokens: Arc<TokenCache<Request>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamingServer {
    /// Binds `addr` (port 0 picks a free one) and serves until dropped.
    pub async fn start(addr: SocketAddr, backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tokens = Arc::new(TokenCache::default());
        let task = {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                loop {
                    let (conn, peer) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "streaming server accept");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _ = conn.set_nodelay(true);
                    let (tokens, backend) = (tokens.clone(), backend.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let (tokens, backend) = (tokens.clone(), backend.clone());
                            async move { Ok::<_, Infallible>(handle(req, &tokens, backend)) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(conn), svc)
                            .with_upgrades()
                            .await
                        {
                            tracing::debug!(%peer, error = %e, "streaming connection");
                        }
                    });
                }
            })
        };
        tracing::info!(%addr, "streaming server listening");
        Ok(Self { addr, tokens, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores `req` behind a new token and returns the URL a client connects to.
    pub fn url_for(&self, req: Request) -> Result<String, TokenError> {
        let kind = req.kind();
        let token = self.tokens.insert(req)?;
        Ok(format!("http://{}/{kind}/{token}", self.addr))
    }
}

fn reply(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// All values of a header, split at commas, trimmed.
fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn wants_upgrade(h: &HeaderMap, to: &str) -> bool {
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(to));
    let connection = header_list(h, header::CONNECTION.as_str())
        .iter()
        .any(|c| c.eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// The first protocol the client offers that we support (client order, as kubelet).
fn negotiate<'a>(client: &[String], ours: &[&'a str]) -> Option<&'a str> {
    client
        .iter()
        .find_map(|c| ours.iter().find(|o| **o == c.as_str()).copied())
}

fn handle(
    mut req: hyper::Request<Incoming>,
    tokens: &TokenCache<Request>,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let path = req.uri().path().trim_matches('/').to_owned();
    let Some((kind, token)) = path.split_once('/') else {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: expected /exec/, /attach/ or /portforward/<token>",
        );
    };
    if !matches!(kind, "exec" | "attach" | "portforward") {
        return reply(
            StatusCode::NOT_FOUND,
            format!("not found: unknown stream kind {kind:?}"),
        );
    }
    let Some(stored) = tokens.take(token) else {
        return reply(
            StatusCode::NOT_FOUND,
            "token not found: it was used already or expired (tokens are single-use and last a minute); ask the runtime for a new URL",
        );
    };
    if stored.kind() != kind {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("this token is for {}, not {kind}", stored.kind()),
        );
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    if wants_upgrade(req.headers(), "websocket") {
        websocket_upgrade(&mut req, stored, &query, backend)
    } else if wants_upgrade(req.headers(), "SPDY/3.1") {
        spdy_upgrade(&mut req, stored, backend)
    } else {
        reply(
            StatusCode::BAD_REQUEST,
            "expected a connection upgrade to SPDY/3.1 or websocket",
        )
    }
}

fn spdy_upgrade(
    req: &mut hyper::Request<Incoming>,
    stored: Request,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    let client = header_list(req.headers(), STREAM_PROTOCOL_HEADER);
    let ours: Vec<&str> = match &stored {
        Request::PortForward(_) => vec![portforward::SPDY_PROTOCOL],
        _ => SPDY_VERSIONS.iter().map(|v| v.name()).collect(),
    };
    let chosen = if client.is_empty() {
        // A client from before protocol negotiation.
        ours.last().copied().unwrap_or_default()
    } else {
        match negotiate(&client, &ours) {
            Some(p) => p,
            None => {
                return reply(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server supports {ours:?}"
                    ),
                );
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::info!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        match stored {
            Request::PortForward(p) => portforward::spdy::serve(io, p.sandbox_id, backend).await,
            other => {
                let v = Version::from_name(chosen).unwrap_or(Version::V1);
                remotecommand::spdy::serve(io, v, other, backend.as_ref()).await
            }
        }
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(chosen) {
        h.insert(STREAM_PROTOCOL_HEADER, v);
    }
    r
}

fn websocket_upgrade(
    req: &mut hyper::Request<Incoming>,
    stored: Request,
    query: &str,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(
            StatusCode::BAD_REQUEST,
            "websocket upgrade without Sec-WebSocket-Key",
        );
    };
    let client = header_list(req.headers(), "sec-websocket-protocol");
    let ours: Vec<&str> = match &stored {
        Request::PortForward(_) => portforward::WEBSOCKET_PROTOCOLS.to_vec(),
        _ => WEBSOCKET_VERSIONS.iter().map(|v| v.name()).collect(),
    };
    let chosen = match negotiate(&client, &ours) {
        Some(p) => Some(p),
        None if client.is_empty() && matches!(stored, Request::PortForward(_)) => None,
        None => {
            return reply(
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to negotiate a websocket subprotocol: client supports {client:?}, server supports {ours:?}"
                ),
            );
        }
    };
    // Port forwarding names its ports in the URL; without them, the CRI request's.
    let mut ports = Vec::new();
    if let Request::PortForward(p) = &stored {
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            if k == "ports" || k == "port" {
                for s in v.split(',') {
                    match parse_port(s) {
                        Ok(p) => ports.push(p),
                        Err(e) => return reply(StatusCode::BAD_REQUEST, e),
                    }
                }
            }
        }
        if ports.is_empty() {
            ports = p.ports.clone();
        }
        if ports.is_empty() || ports.len() > 127 {
            return reply(
                StatusCode::BAD_REQUEST,
                "name the ports to forward in the URL (?ports=8080,9090), at most 127",
            );
        }
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::info!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        match stored {
            Request::PortForward(p) => {
                portforward::websocket::serve(ws, p.sandbox_id, ports, backend).await
            }
            other => {
                let v = chosen.and_then(Version::from_name).unwrap_or(Version::V4);
                remotecommand::websocket::serve(ws, v, other, backend.as_ref()).await
            }
        }
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if let Some(p) = chosen
        && let Ok(v) = HeaderValue::from_str(p)
    {
        h.insert("sec-websocket-protocol", v);
    }
    r
}
