//! The session's writer task: the only user of the connection's write half and of the
//! outgoing header compressor, so header blocks are compressed in the order they go out.
//! Gathers queued frames into batches; stops when the session dies, or after writing GOAWAY.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};

use super::Error;
use super::frame::{Frame, flags};
use super::headers::HeaderEncoder;
use super::session::{Command, Phase, Shared};

/// How much the writer gathers from its queue into one socket write.
const WRITE_BATCH: usize = 256 * 1024;

/// Marks the session dead when the writer stops for any reason but a completed GOAWAY.
struct DeadOnDrop(Option<Arc<Shared>>);

impl Drop for DeadOnDrop {
    fn drop(&mut self) {
        if let Some(sh) = self.0.take() {
            sh.phase.send_replace(Phase::Dead);
        }
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let mut guard = DeadOnDrop(Some(shared.clone()));
    let server = shared.server;
    let mut encoder = match HeaderEncoder::new() {
        Ok(e) => e,
        Err(e) => {
            warn!(server, error = %e, "spdy: no header compressor");
            return;
        }
    };
    let dead = shared.dead();
    tokio::pin!(dead);
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    loop {
        let cmd = tokio::select! {
            biased;
            () = &mut dead => return,
            cmd = rx.recv() => cmd,
        };
        let Some(mut cmd) = cmd else { return };
        let mut goaway_done = None;
        loop {
            if let Command::GoAway { status, done } = cmd {
                let last = shared.last_peer_id.load(Ordering::Relaxed);
                let f = Frame::GoAway {
                    last_good_stream_id: last,
                    status,
                };
                trace!(last, status, "spdy: -> GOAWAY");
                if let Err(e) = f.encode(&mut buf) {
                    warn!(server, error = %e, "spdy: cannot encode GOAWAY");
                    return;
                }
                goaway_done = Some(done);
                break;
            }
            if let Err(e) = encode(cmd, &mut encoder, &mut buf) {
                warn!(server, error = %e, "spdy: cannot encode a frame");
                return;
            }
            if buf.len() >= WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => cmd = next,
                Err(_) => break,
            }
        }
        let write = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        let written = tokio::select! {
            biased;
            () = &mut dead => return,
            r = write => r,
        };
        if let Err(e) = written {
            debug!(server, error = %e, "spdy: write failed");
            return;
        }
        buf.clear();
        if let Some(done) = goaway_done {
            // Our half of the connection ends here; the reader carries on until the peer closes.
            guard.0 = None;
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            let _ = done.send(());
            return;
        }
    }
}

/// Encodes one command (not GOAWAY) onto `buf`, compressing header blocks in wire order.
fn encode(cmd: Command, enc: &mut HeaderEncoder, buf: &mut BytesMut) -> Result<(), Error> {
    let fin = |f: bool| if f { flags::FIN } else { 0 };
    let frame = match cmd {
        Command::SynStream {
            id,
            headers,
            fin: f,
        } => {
            trace!(stream = id, ?headers, "spdy: -> SYN_STREAM");
            Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: fin(f),
                header_block: enc.encode(&headers)?,
            }
        }
        Command::SynReply {
            id,
            headers,
            fin: f,
        } => {
            trace!(stream = id, ?headers, "spdy: -> SYN_REPLY");
            Frame::SynReply {
                stream_id: id,
                flags: fin(f),
                header_block: enc.encode(&headers)?,
            }
        }
        Command::Data { id, data, fin: f } => {
            trace!(stream = id, len = data.len(), fin = f, "spdy: -> DATA");
            Frame::Data {
                stream_id: id,
                flags: fin(f),
                data,
            }
        }
        Command::Rst { id, status } => {
            trace!(stream = id, status, "spdy: -> RST_STREAM");
            Frame::RstStream {
                stream_id: id,
                status,
            }
        }
        Command::Ping { id } => {
            trace!(id, "spdy: -> PING");
            Frame::Ping { id }
        }
        Command::GoAway { status, .. } => Frame::GoAway {
            last_good_stream_id: 0,
            status,
        },
    };
    frame.encode(buf)?;
    Ok(())
}
