//! Remote command over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): one binary
//! message per write, its first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize). v5 adds a close signal: a message on channel 255 whose payload is the channel
//! being closed (stdin's EOF). The error channel carries the outcome as a Status object.

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::streaming::websocket::{Incoming, frame, incoming, split};

use super::{Options, Outcome, ResizeDecoder, Version, command_of, error_stream_payload, run};
use crate::streaming::backend::{Backend, Io, Request, StdinEvent};

/// Channel numbers.
pub const STDIN: u8 = 0;
/// Standard output.
pub const STDOUT: u8 = 1;
/// Standard error.
pub const STDERR: u8 = 2;
/// The outcome.
pub const ERROR: u8 = 3;
/// Terminal sizes.
pub const RESIZE: u8 = 4;
/// v5: "this channel is closed".
pub const CLOSE: u8 = 255;

/// Output channel into channel-prefixed messages.
fn pump_output(
    channel: u8,
    out: mpsc::Sender<Message>,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if out.send(frame(channel, &b)).await.is_err() {
                while rx.recv().await.is_some() {}
                return;
            }
        }
    });
    (tx, task)
}

/// Serves one remote command on an upgraded connection whose WebSocket handshake is done.
pub async fn serve<IO>(
    ws: WebSocketStream<IO>,
    version: Version,
    req: Request,
    backend: &dyn Backend,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let Some(opts) = Options::of(&req) else {
        return;
    };
    let (out_tx, mut source, writer) = split(ws);
    // Tell the client the connection is up: an empty message on the lowest writable
    // channel, as kubelet does.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.send(frame(first, &[])).await;

    // Client messages: stdin, resize, close signals; the connection's end is noticed here.
    let (in_tx, in_rx) = mpsc::channel(16);
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let stdin_wanted = opts.stdin;
    let reader = tokio::spawn(async move {
        let mut resize = ResizeDecoder::default();
        let mut stdin_open = stdin_wanted;
        loop {
            let (ch, payload) = match incoming(source.next().await) {
                Incoming::Data(ch, payload) => (ch, payload),
                Incoming::Other => continue,
                Incoming::Closed => break,
            };
            let ev = match ch {
                STDIN if stdin_open => vec![StdinEvent::Data(payload)],
                RESIZE => resize
                    .push(&payload)
                    .into_iter()
                    .map(|s| StdinEvent::Resize(s.width.into(), s.height.into()))
                    .collect(),
                CLOSE if version >= Version::V5 && payload.first() == Some(&STDIN) => {
                    stdin_open = false;
                    vec![StdinEvent::Close]
                }
                _ => Vec::new(),
            };
            for e in ev {
                if in_tx.send(e).await.is_err() {
                    break;
                }
            }
        }
        let _ = gone_tx.send(());
    });

    let mut writers = Vec::new();
    let mut output = |wanted: bool, ch: u8| {
        wanted.then(|| {
            let (tx, task) = pump_output(ch, out_tx.clone());
            writers.push(task);
            tx
        })
    };
    let io = Io {
        input: in_rx,
        stdout: output(opts.stdout, STDOUT),
        stderr: output(opts.stderr, STDERR),
    };
    let outcome = tokio::select! {
        o = run(backend, &req, io) => o,
        _ = &mut gone_rx => {
            tracing::info!(kind = req.kind(), "client went away mid-stream");
            writer.abort();
            return;
        }
    };
    for w in writers {
        let _ = w.await;
    }
    let payload = error_stream_payload(version, &outcome, &command_of(&req));
    if !payload.is_empty() {
        let _ = out_tx.send(frame(ERROR, &payload)).await;
    }
    if let Outcome::Failed(m) = &outcome {
        tracing::info!(kind = req.kind(), error = %m, "remote command failed");
    }
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}
