//! The `/metrics` endpoint: plain HTTP/1.1 on a TCP address, the Prometheus text format.
//! Each scrape reads what runs (`CensusSource`) off the async threads, then encodes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Census;

/// What a scrape reads about what runs.
pub trait CensusSource: Send + Sync + 'static {
    /// Pods and containers by state, and each running pod's host cost (blocking: reads
    /// the store and /proc).
    fn census(&self) -> Census;
}

/// The running endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free one) and serves until dropped.
    pub async fn start(addr: SocketAddr, source: Arc<dyn CensusSource>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics server accept");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let source = source.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let source = source.clone();
                        async move { Ok::<_, Infallible>(handle(&req, source).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "metrics connection");
                    }
                });
            }
        });
        tracing::info!(%addr, "metrics endpoint listening (/metrics)");
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn handle(
    req: &hyper::Request<Incoming>,
    source: Arc<dyn CensusSource>,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        if let Ok(v) = http::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(404, "text/plain", "moatd serves /metrics only\n".into());
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(405, "text/plain", "GET /metrics\n".into());
    }
    let census = tokio::task::spawn_blocking(move || source.census())
        .await
        .unwrap_or_default();
    reply(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        super::get().encode(census),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Two;
    impl CensusSource for Two {
        fn census(&self) -> Census {
            Census {
                pods_by_state: vec![("ready", 2)],
                ..Census::default()
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn metrics_are_served_and_other_paths_are_not() {
        let s = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), Arc::new(Two))
            .await
            .expect("start");
        let page = get(s.addr(), "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"), "{page}");
        assert!(
            page.contains("moat_pod_sandboxes{state=\"ready\"} 2"),
            "{page}"
        );
        assert!(get(s.addr(), "/").await.starts_with("HTTP/1.1 404"));
    }
}
