//! Remote command over SPDY, as kubelet serves it to client-go's SPDY executor: the client
//! opens one stream per channel, each named by its `streamType` header; the server replies
//! to each, waits until every stream the options call for is there, runs the command, then
//! writes the outcome on the error stream and closes.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Options, Outcome, ResizeDecoder, Version, command_of, error_stream_payload, run};
use crate::streaming::backend::{Backend, Io, Request, StdinEvent};
use crate::streaming::spdy::{Session, Stream, StreamReader, StreamWriter};

/// How long the client has to open all its streams (kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the connection stays up after the outcome was sent, for the client to close it.
pub const LINGER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Streams {
    fn complete(&self, o: &Options, v: Version) -> bool {
        self.error.is_some()
            && (!o.stdin || self.stdin.is_some())
            && (!o.stdout || self.stdout.is_some())
            && (!o.stderr || self.stderr.is_some())
            && (!(o.tty && v >= Version::V3) || self.resize.is_some())
    }
}

/// Accepts the client's streams: replies to each and sorts them by type.
async fn accept(
    incoming: &mut mpsc::Receiver<Stream>,
    o: &Options,
    v: Version,
) -> Result<Streams, String> {
    let mut s = Streams::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !s.complete(o, v) {
        let stream = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(st)) => st,
            Ok(None) => return Err("the client went away before opening its streams".into()),
            Err(_) => return Err("timed out waiting for the client to open its streams".into()),
        };
        stream
            .reply(Vec::new())
            .await
            .map_err(|e| format!("reply: {e}"))?;
        let slot = match stream.header("streamtype").unwrap_or_default() {
            "error" => &mut s.error,
            "stdin" => &mut s.stdin,
            "stdout" => &mut s.stdout,
            "stderr" => &mut s.stderr,
            "resize" => &mut s.resize,
            other => {
                tracing::debug!(stream_type = other, "ignoring a stream of unknown type");
                continue;
            }
        };
        *slot = Some(stream);
    }
    Ok(s)
}

/// Client bytes into the input channel; its FIN is stdin's EOF.
fn pump_stdin(mut rd: StreamReader, tx: mpsc::Sender<StdinEvent>) {
    tokio::spawn(async move {
        while let Some(b) = rd.read().await {
            if tx.send(StdinEvent::Data(b.to_vec())).await.is_err() {
                return;
            }
        }
        let _ = tx.send(StdinEvent::Close).await;
    });
}

/// Resize messages into the input channel.
fn pump_resize(mut rd: StreamReader, tx: mpsc::Sender<StdinEvent>) {
    tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        while let Some(b) = rd.read().await {
            for s in dec.push(&b) {
                let ev = StdinEvent::Resize(s.width.into(), s.height.into());
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// Output channel into a client stream; FIN when the backend is done with it.
fn pump_output(wr: StreamWriter) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write(&b).await.is_err() {
                // The client stopped reading this stream: drain so the backend never blocks.
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = wr.finish().await;
    });
    (tx, task)
}

/// Serves one remote command on an upgraded connection.
pub async fn serve<IO>(io: IO, version: Version, req: Request, backend: &dyn Backend)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let Some(opts) = Options::of(&req) else {
        return;
    };
    let (session, mut incoming) = Session::server(io);
    let streams = match accept(&mut incoming, &opts, version).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "remote command not started");
            session.goaway().await;
            return;
        }
    };
    // Streams opened later are refused by dropping them.
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    let (in_tx, in_rx) = mpsc::channel(16);
    if let Some(s) = streams.stdin {
        pump_stdin(s.split().0, in_tx.clone());
    }
    if let Some(s) = streams.resize {
        pump_resize(s.split().0, in_tx.clone());
    }
    drop(in_tx);
    let mut writers = Vec::new();
    let mut output = |s: Option<Stream>| {
        s.map(|s| {
            let (tx, task) = pump_output(s.split().1);
            writers.push(task);
            tx
        })
    };
    let io = Io {
        input: in_rx,
        stdout: output(streams.stdout),
        stderr: output(streams.stderr),
    };
    let outcome = tokio::select! {
        o = run(backend, &req, io) => o,
        _ = session.closed() => {
            tracing::info!(kind = req.kind(), "client went away mid-stream");
            return;
        }
    };
    for w in writers {
        let _ = w.await;
    }
    if let Some(err) = streams.error {
        let (_, wr) = err.split();
        let payload = error_stream_payload(version, &outcome, &command_of(&req));
        if !payload.is_empty() {
            let _ = wr.write(&payload).await;
        }
        let _ = wr.finish().await;
    }
    if let Outcome::Failed(m) = &outcome {
        tracing::info!(kind = req.kind(), error = %m, "remote command failed");
    }
    // The client closes once it read the error stream; give it a moment to, so our last
    // frames are not cut off.
    let _ = tokio::time::timeout(LINGER, session.closed()).await;
    session.goaway().await;
}
