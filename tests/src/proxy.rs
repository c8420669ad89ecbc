//! A fault-injecting HTTP proxy in front of a real registry: it forwards every request,
//! counts blob fetches, and on demand corrupts or stalls large blobs mid-body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What the proxy does to blobs of at least 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Flip one byte in the middle of the body.
    Corrupt,
    /// Send half the body, then go silent (the connection stays open).
    Stall,
    /// Send the body, then zeros without end (chunked: no length to hold it to).
    Endless,
}

const BIG: usize = 64 * 1024;

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub async fn start(upstream: &str, fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let upstream = upstream.to_owned();
        let client = reqwest::Client::new();
        let c2 = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (upstream, client, counts) = (upstream.clone(), client.clone(), c2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        forward(req, upstream.clone(), client.clone(), counts.clone(), fault)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, counts, task }
    }

    /// How many GETs of blob `digest` went through.
    pub fn blob_fetches(&self, digest: &str) -> usize {
        let c = self.counts.lock().expect("counts");
        c.iter()
            .filter(|(k, _)| k.ends_with(&format!("/blobs/{digest}")))
            .map(|(_, v)| *v)
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    req: Request<hyper::body::Incoming>,
    upstream: String,
    client: reqwest::Client,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    fault: Fault,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let is_blob_get = req.method() == hyper::Method::GET && path.contains("/blobs/sha256:");
    if is_blob_get {
        *counts
            .lock()
            .expect("counts")
            .entry(path.clone())
            .or_default() += 1;
    }
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).expect("method");
    let mut out = client.request(method, format!("http://{upstream}{pq}"));
    for (k, v) in req.headers() {
        if k != "host" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::new(full(Bytes::from(e.to_string())));
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if fault == Fault::Endless && is_blob_get && k == "content-length" {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: Body = if is_blob_get && bytes.len() >= BIG {
        match fault {
            Fault::None => full(bytes),
            Fault::Corrupt => {
                let mut v = bytes.to_vec();
                let mid = v.len() / 2;
                v[mid] ^= 0xff;
                full(Bytes::from(v))
            }
            Fault::Stall => {
                let half = bytes.slice(..bytes.len() / 2);
                let s = futures::stream::once(
                    async move { Ok::<_, std::io::Error>(Frame::data(half)) },
                )
                .chain(futures::stream::pending());
                BoxBody::new(StreamBody::new(s))
            }
            Fault::Endless => {
                let zeros = Bytes::from(vec![0u8; BIG]);
                let s =
                    futures::stream::once(
                        async move { Ok::<_, std::io::Error>(Frame::data(bytes)) },
                    )
                    .chain(futures::stream::repeat_with(move || {
                        Ok(Frame::data(zeros.clone()))
                    }));
                BoxBody::new(StreamBody::new(s))
            }
        }
    } else {
        full(bytes)
    };
    Ok(builder.body(body).expect("response"))
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

use futures::StreamExt as _;
