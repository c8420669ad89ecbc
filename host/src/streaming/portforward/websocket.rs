//! Port forwarding over WebSocket, as kubelet serves it: the URL names the ports
//! (`?ports=8080,9090`); port i gets data channel 2i and error channel 2i+1, each opened by
//! a first message carrying the port number (two bytes, little-endian). One connection per
//! port lives as long as the WebSocket.

use std::sync::Arc;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

use super::forward_error;
use crate::streaming::backend::Backend;
use crate::streaming::websocket::{Incoming, frame, incoming, split};

/// Serves the forwarded `ports` on a WebSocket until either side closes it.
pub async fn serve<IO>(
    ws: WebSocketStream<IO>,
    sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (out_tx, mut source, writer) = split(ws);
    let mut inputs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out_tx.send(frame(ch, &port.to_le_bytes())).await;
        }
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(16);
        inputs.push(in_tx);
        let (fwd_tx, mut fwd_rx) = mpsc::channel::<Vec<u8>>(16);
        let out = out_tx.clone();
        tasks.spawn(async move {
            while let Some(b) = fwd_rx.recv().await {
                if out.send(frame(data_ch, &b)).await.is_err() {
                    while fwd_rx.recv().await.is_some() {}
                    return;
                }
            }
        });
        let (backend, sandbox, out) = (backend.clone(), sandbox_id.clone(), out_tx.clone());
        tasks.spawn(async move {
            if let Err(e) = backend.port_forward(&sandbox, port, in_rx, fwd_tx).await {
                let msg = forward_error(port, &sandbox, &e.0);
                tracing::info!(port, error = %msg, "port forward failed");
                let _ = out.send(frame(err_ch, msg.as_bytes())).await;
            }
        });
    }
    drop(out_tx);
    loop {
        let (ch, payload) = match incoming(source.next().await) {
            Incoming::Data(ch, payload) => (ch, payload),
            Incoming::Other => continue,
            Incoming::Closed => break,
        };
        if ch % 2 == 0
            && let Some(tx) = inputs.get(usize::from(ch) / 2)
        {
            let _ = tx.send(payload).await;
        }
    }
    // The client closed: every forwarded connection goes with it.
    drop(inputs);
    tasks.shutdown().await;
    writer.abort();
}
