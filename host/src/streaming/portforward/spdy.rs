//! Port forwarding over SPDY, as client-go's port forwarder speaks it: for each forwarded
//! connection the client opens an `error` and a `data` stream with the same `requestID`
//! and a `port` header. The data stream carries the connection both ways (the client's FIN
//! is a half-close toward the port, ours follows the port's EOF); a failure is written as
//! text on the error stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{forward_error, parse_port};
use crate::streaming::backend::Backend;
use crate::streaming::spdy::{Session, Stream};

/// How long the second stream of a pair may take to arrive.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<tokio::time::Instant>,
}

/// Relays one pair: data stream to and from the port.
async fn forward(
    backend: Arc<dyn Backend>,
    sandbox_id: String,
    port: u16,
    data: Stream,
    error: Stream,
) {
    let (mut data_rd, data_wr) = data.split();
    let (_, err_wr) = error.split();
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    // Client to port; the client's FIN ends `input`.
    let reader = tokio::spawn(async move {
        while let Some(b) = data_rd.read().await {
            if in_tx.send(b.to_vec()).await.is_err() {
                break;
            }
        }
    });
    // Port to client; the port's EOF is our FIN.
    let writer = {
        let data_wr = data_wr.clone();
        tokio::spawn(async move {
            while let Some(b) = out_rx.recv().await {
                if data_wr.write(&b).await.is_err() {
                    while out_rx.recv().await.is_some() {}
                    return;
                }
            }
            let _ = data_wr.finish().await;
        })
    };
    let r = backend.port_forward(&sandbox_id, port, in_rx, out_tx).await;
    let _ = writer.await;
    reader.abort();
    if let Err(e) = r {
        let msg = forward_error(port, &sandbox_id, &e.0);
        tracing::info!(port, error = %msg, "port forward failed");
        let _ = err_wr.write(msg.as_bytes()).await;
        let _ = data_wr.finish().await;
    }
    let _ = err_wr.finish().await;
}

/// Serves port forwarding on an upgraded connection until the client closes it.
pub async fn serve<IO>(io: IO, sandbox_id: String, backend: Arc<dyn Backend>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (session, mut incoming) = Session::server(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                let now = tokio::time::Instant::now();
                pairs.retain(|id, p| {
                    let keep = p.since.is_some_and(|t| now.duration_since(t) < PAIR_TIMEOUT);
                    if !keep {
                        tracing::info!(request = %id, "port forward stream pair never completed");
                    }
                    keep
                });
                continue;
            }
            _ = session.closed() => break,
        };
        if stream.reply(Vec::new()).await.is_err() {
            break;
        }
        let request_id = stream.header("requestid").unwrap_or_default().to_owned();
        let kind = stream.header("streamtype").unwrap_or_default().to_owned();
        let pair = pairs.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        match kind.as_str() {
            "data" => pair.data = Some(stream),
            "error" => pair.error = Some(stream),
            other => {
                tracing::debug!(stream_type = other, "ignoring a stream of unknown type");
                continue;
            }
        }
        if pair.data.is_some()
            && pair.error.is_some()
            && let Some(Pair {
                data: Some(data),
                error: Some(error),
                ..
            }) = pairs.remove(&request_id)
        {
            let port = data
                .header("port")
                .map(parse_port)
                .unwrap_or_else(|| Err("the data stream names no port".into()));
            match port {
                Ok(port) => {
                    tasks.spawn(forward(
                        backend.clone(),
                        sandbox_id.clone(),
                        port,
                        data,
                        error,
                    ));
                }
                Err(e) => {
                    let (_, wr) = error.split();
                    let _ = wr.write(e.as_bytes()).await;
                    let _ = wr.finish().await;
                    let _ = data.split().1.finish().await;
                }
            }
        }
        // Reap finished forwards as we go.
        while tasks.try_join_next().is_some() {}
    }
    // The client is gone: dropping the tasks closes every forwarded connection.
    tasks.shutdown().await;
    session.goaway().await;
}
