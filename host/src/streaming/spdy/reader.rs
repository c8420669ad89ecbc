//! The session's reader task: decodes frames, inflates header blocks (every one, in order, as
//! the shared zlib context requires), routes DATA into the per-stream buffers (waiting, and so
//! not reading the connection, while a stream's buffer is full), answers PINGs, and ends the
//! session at EOF, on error or on the peer's GOAWAY.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, trace, warn};

use super::Error;
use super::frame::{self, Frame, flags, rst};
use super::headers::{HeaderDecoder, HeaderList};
use super::session::{Command, Phase, Shared, lock};
use super::stream::{ResetBy, Stream, StreamShared};

/// Open streams the peer may have at once; more are refused. (kubectl exec uses up to 5.)
const MAX_PEER_STREAMS: usize = 1024;
/// Largest piece handed to a stream reader at once.
const READ_CHUNK: usize = 64 * 1024;
/// After our GOAWAY we keep reading (so that closing does not reset the connection under data
/// the peer has not read yet) until the peer closes, but no longer than this.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// Runs `f` unless the session stops first. Stop means dead, or `GOAWAY_GRACE` after our
/// GOAWAY.
async fn or_stop<F: Future>(phase: &mut watch::Receiver<Phase>, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = stopped(phase) => None,
        v = f => Some(v),
    }
}

async fn stopped(phase: &mut watch::Receiver<Phase>) {
    loop {
        let now = *phase.borrow_and_update();
        match now {
            Phase::Dead => return,
            Phase::GoingAway(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at + GOAWAY_GRACE) => return,
                    r = phase.changed() => if r.is_err() { return },
                }
            }
            Phase::Running => {
                if phase.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Why the reader stopped.
enum Stop {
    Eof,
    GoAway,
    Stopped,
}

pub(super) struct Reader {
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    decoder: HeaderDecoder,
    accept: mpsc::Sender<Stream>,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, accept: mpsc::Sender<Stream>) -> Self {
        Self {
            phase: shared.phase.subscribe(),
            shared,
            decoder: HeaderDecoder::new(),
            accept,
        }
    }

    pub(super) async fn run<R: AsyncRead + Unpin>(mut self, mut rd: R) {
        let server = self.shared.server;
        match self.read_loop(&mut rd).await {
            Ok(Stop::Eof) => debug!(server, "spdy: peer closed the connection"),
            Ok(Stop::GoAway) => debug!(server, "spdy: peer sent GOAWAY"),
            Ok(Stop::Stopped) => debug!(server, "spdy: reader stopped"),
            Err(e) => warn!(server, error = %e, "spdy: session failed"),
        }
        self.teardown();
    }

    async fn read_loop<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<Stop, Error> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match frame::decode(&mut buf)? {
                Some(f) => {
                    if let Some(stop) = self.handle(f).await? {
                        return Ok(stop);
                    }
                }
                None => {
                    if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(READ_CHUNK);
                    }
                    match or_stop(&mut self.phase, rd.read_buf(&mut buf)).await {
                        None => return Ok(Stop::Stopped),
                        Some(Ok(0)) => return Ok(Stop::Eof),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Handles one frame; `Some` ends the session.
    async fn handle(&mut self, f: Frame) -> Result<Option<Stop>, Error> {
        match f {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                trace!(stream = stream_id, len = data.len(), flags, "spdy: <- DATA");
                return self.on_data(stream_id, flags, data).await;
            }
            Frame::SynStream {
                stream_id,
                flags,
                header_block,
                ..
            } => {
                // Always inflate: the zlib context must see every block.
                let headers = self.decoder.decode(&header_block)?;
                trace!(stream = stream_id, flags, ?headers, "spdy: <- SYN_STREAM");
                return self.on_syn_stream(stream_id, flags, headers).await;
            }
            Frame::SynReply {
                stream_id,
                flags,
                header_block,
            } => {
                let headers = self.decoder.decode(&header_block)?;
                trace!(stream = stream_id, flags, ?headers, "spdy: <- SYN_REPLY");
                return self.on_syn_reply(stream_id, flags).await;
            }
            Frame::Headers {
                stream_id,
                flags,
                header_block,
            } => {
                let headers = self.decoder.decode(&header_block)?;
                trace!(
                    stream = stream_id,
                    flags,
                    ?headers,
                    "spdy: <- HEADERS (ignored)"
                );
                if flags & flags::FIN != 0 {
                    self.remote_finish(stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => {
                debug!(stream = stream_id, status, "spdy: <- RST_STREAM");
                self.on_reset(stream_id, status);
            }
            Frame::Ping { id } => {
                // Our own pings have our parity; the peer's are echoed (as spdystream does).
                let ours = if self.shared.server { 0 } else { 1 };
                if id & 1 == ours {
                    trace!(id, "spdy: <- PING reply");
                    if let Some(w) = lock(&self.shared.pings).remove(&id) {
                        let _ = w.send(());
                    }
                } else {
                    trace!(id, "spdy: <- PING, echoing");
                    let out = &self.shared.out;
                    if self.shared.running()
                        && or_stop(&mut self.phase, out.send(Command::Ping { id }))
                            .await
                            .is_none()
                    {
                        return Ok(Some(Stop::Stopped));
                    }
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                debug!(last_good_stream_id, status, "spdy: <- GOAWAY");
                return Ok(Some(Stop::GoAway));
            }
            Frame::Settings { entries, .. } => {
                // spdystream never sends SETTINGS; windows are not enforced (module doc).
                trace!(?entries, "spdy: <- SETTINGS (ignored)");
            }
            Frame::WindowUpdate { stream_id, delta } => {
                trace!(
                    stream = stream_id,
                    delta, "spdy: <- WINDOW_UPDATE (ignored)"
                );
            }
            Frame::Unknown { frame_type, .. } => {
                trace!(frame_type, "spdy: <- unknown control frame (ignored)");
            }
        }
        Ok(None)
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamShared>> {
        lock(&self.shared.streams).get(&id).cloned()
    }

    async fn on_data(&mut self, id: u32, fl: u8, data: Bytes) -> Result<Option<Stop>, Error> {
        let Some(stream) = self.stream(id) else {
            trace!(
                stream = id,
                "spdy: DATA for an unknown or closed stream dropped"
            );
            return Ok(None);
        };
        let tx = stream.lock().inbound.clone();
        if let Some(tx) = tx {
            for chunk in data.chunks(READ_CHUNK) {
                let budget = stream.budget.clone();
                let want = chunk.len() as u32;
                match or_stop(&mut self.phase, budget.acquire_many_owned(want)).await {
                    None => return Ok(Some(Stop::Stopped)),
                    // The reader half is gone: nobody wants the rest.
                    Some(Err(_)) => break,
                    Some(Ok(permit)) => permit.forget(),
                }
                // A copy, so buffered data never pins the (possibly 16 MiB) read buffer.
                if tx.send(Bytes::copy_from_slice(chunk)).is_err() {
                    break;
                }
            }
        }
        if fl & flags::FIN != 0 {
            self.remote_finish(id);
        }
        Ok(None)
    }

    async fn on_syn_stream(
        &mut self,
        id: u32,
        fl: u8,
        headers: HeaderList,
    ) -> Result<Option<Stop>, Error> {
        let sh = self.shared.clone();
        if !sh.running() {
            trace!(stream = id, "spdy: SYN_STREAM after our GOAWAY ignored");
            return Ok(None);
        }
        // The peer opens odd ids when we are the server, even ones when we are the client,
        // always increasing.
        let peer_parity = u32::from(sh.server);
        let last = sh.last_peer_id.load(Ordering::Relaxed);
        if id & 1 != peer_parity || id <= last {
            warn!(
                stream = id,
                last, "spdy: SYN_STREAM with an invalid stream id"
            );
            return self.send_reset(id, rst::PROTOCOL_ERROR).await;
        }
        sh.last_peer_id.store(id, Ordering::Relaxed);
        let open = lock(&sh.streams).values().filter(|s| s.peer_opened).count();
        if open >= MAX_PEER_STREAMS {
            warn!(stream = id, open, "spdy: too many streams; refusing");
            return self.send_reset(id, rst::REFUSED_STREAM).await;
        }
        let (stream, rx) = StreamShared::new(id, true);
        {
            let mut st = stream.lock();
            if fl & flags::FIN != 0 {
                st.remote_fin = true;
                st.inbound = None;
            }
            if fl & flags::UNIDIRECTIONAL != 0 {
                st.local_fin = true;
            }
        }
        lock(&sh.streams).insert(id, stream.clone());
        debug!(stream = id, ?headers, "spdy: peer opened stream");
        let handle = Stream::new(headers, stream.clone(), rx, sh.clone());
        match or_stop(&mut self.phase, self.accept.send(handle)).await {
            None => Ok(Some(Stop::Stopped)),
            Some(Ok(())) => Ok(None),
            Some(Err(mpsc::error::SendError(handle))) => {
                // Nobody accepts streams any more.
                stream.lock().reset = Some(ResetBy::Local);
                drop(handle);
                sh.forget(id);
                self.send_reset(id, rst::REFUSED_STREAM).await
            }
        }
    }

    async fn on_syn_reply(&mut self, id: u32, fl: u8) -> Result<Option<Stop>, Error> {
        let Some(stream) = self.stream(id) else {
            return Ok(None);
        };
        if stream.peer_opened {
            trace!(
                stream = id,
                "spdy: SYN_REPLY for a peer-opened stream ignored"
            );
            return Ok(None);
        }
        let waiter = {
            let mut st = stream.lock();
            if st.replied {
                return Ok(None);
            }
            st.replied = true;
            st.reply_waiter.take()
        };
        if fl & flags::FIN != 0 {
            self.remote_finish(id);
        }
        let delivered = waiter.is_some_and(|w| w.send(Ok(())).is_ok());
        if !delivered {
            // `open` was cancelled meanwhile; the dropped handle has reset the stream.
            trace!(stream = id, "spdy: SYN_REPLY for an abandoned stream");
        }
        Ok(None)
    }

    fn on_reset(&mut self, id: u32, status: u32) {
        let Some(stream) = lock(&self.shared.streams).remove(&id) else {
            return;
        };
        let waiter = {
            let mut st = stream.lock();
            st.reset = Some(ResetBy::Peer(status));
            st.inbound = None;
            st.reply_waiter.take()
        };
        if let Some(w) = waiter {
            let _ = w.send(Err(Error::Reset { id, status }));
        }
    }

    /// The peer's half of stream `id` ended.
    fn remote_finish(&mut self, id: u32) {
        let Some(stream) = self.stream(id) else {
            return;
        };
        let closed = {
            let mut st = stream.lock();
            st.remote_fin = true;
            st.inbound = None;
            st.fully_closed()
        };
        if closed {
            self.shared.forget(id);
        }
    }

    async fn send_reset(&mut self, id: u32, status: u32) -> Result<Option<Stop>, Error> {
        let out = &self.shared.out;
        let cmd = Command::Rst { id, status };
        match or_stop(&mut self.phase, out.send(cmd)).await {
            None => Ok(Some(Stop::Stopped)),
            Some(_) => Ok(None),
        }
    }

    /// The connection is finished: end every stream and waiter.
    fn teardown(&mut self) {
        let sh = &self.shared;
        sh.phase.send_replace(Phase::Dead);
        let streams = std::mem::take(&mut *lock(&sh.streams));
        for s in streams.values() {
            let waiter = {
                let mut st = s.lock();
                st.inbound = None;
                st.reply_waiter.take()
            };
            if let Some(w) = waiter {
                let _ = w.send(Err(Error::SessionClosed));
            }
        }
        lock(&sh.pings).clear();
    }
}
