//! The SPDY session: one connection, a reader task and a writer task, and the stream table.
//!
//! The writer task owns the socket's write half and the outgoing header compressor: every
//! frame goes through its one bounded queue, so header blocks are compressed in wire order and
//! a stream's frames keep their order. The reader task owns the read half and the header
//! decompressor; it routes DATA into per-stream buffers and answers PINGs.
//!
//! Flow control: SPDY/3 has per-stream windows (WINDOW_UPDATE, 64 KiB initial), but the peer
//! here is always spdystream (kubelet, client-go), which neither honours nor sends them: its
//! frame loop (`connection.go`, `Serve`/`frameHandler`) has no case for `*spdy.WindowUpdateFrame`
//! (the frame lands in `default:` and is dropped as "unhandled frame type"), nothing in it ever
//! writes one, and `Stream.WriteData` (`stream.go`) writes every frame straight to the framer
//! with no window check. A sender that waited for WINDOW_UPDATE would stall forever after 64
//! KiB. So we ignore received WINDOW_UPDATE and SETTINGS, never send them, and rely, as
//! spdystream does, on TCP for backpressure: spdystream's `handleDataFrame` blocks on an
//! unbuffered channel until the application reads, which stalls its (bounded, 50-frame)
//! frame queues and then its socket reads. Our equivalent: each stream buffers at most
//! [`STREAM_BUFFER`] unread bytes; when a frame does not fit, the reader task waits, and with it
//! all reading from the connection, until the consumer reads. Our sending side is bounded by
//! the writer queue and the socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use super::Error;
use super::frame::{goaway, rst};
use super::headers::{self, HeaderList};
use super::reader::Reader;
use super::stream::{ResetBy, Stream, StreamShared};
use super::writer::write_loop;

#[cfg(doc)]
use super::stream::STREAM_BUFFER;

/// Commands queued to the writer task.
const OUT_QUEUE: usize = 64;
/// Peer-opened streams waiting to be taken from the receiver.
const ACCEPT_QUEUE: usize = 16;

/// What the writer task sends. Header lists are already normalized.
pub(super) enum Command {
    SynStream {
        id: u32,
        headers: HeaderList,
        fin: bool,
    },
    SynReply {
        id: u32,
        headers: HeaderList,
        fin: bool,
    },
    Data {
        id: u32,
        data: Bytes,
        fin: bool,
    },
    Rst {
        id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        status: u32,
        done: oneshot::Sender<()>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    /// We sent (or are sending) GOAWAY at this instant: no new streams, no more sending.
    GoingAway(Instant),
    /// The connection is finished.
    Dead,
}

/// State shared by the session handle, the stream handles and the tasks.
pub(super) struct Shared {
    pub(super) server: bool,
    pub(super) out: mpsc::Sender<Command>,
    pub(super) streams: Mutex<HashMap<u32, Arc<StreamShared>>>,
    /// Next id for a stream we open; locked across queueing its SYN_STREAM so that ids reach
    /// the wire in increasing order (spdystream resets a stream whose id goes backwards).
    pub(super) next_id: tokio::sync::Mutex<u32>,
    pub(super) next_ping: AtomicU32,
    pub(super) pings: Mutex<HashMap<u32, oneshot::Sender<()>>>,
    /// Highest stream id the peer opened (GOAWAY's last-good-stream-id).
    pub(super) last_peer_id: AtomicU32,
    pub(super) phase: watch::Sender<Phase>,
    pub(super) closed: watch::Sender<bool>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(super) fn running(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }

    /// Queues a command for the writer; fails once the session is going away or gone.
    pub(super) async fn enqueue(&self, cmd: Command) -> Result<(), Error> {
        if !self.running() {
            return Err(Error::SessionClosed);
        }
        self.out.send(cmd).await.map_err(|_| Error::SessionClosed)
    }

    /// Resolves when the phase becomes `Dead`.
    pub(super) async fn dead(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Dead).await;
    }

    pub(super) fn forget(&self, id: u32) {
        lock(&self.streams).remove(&id);
    }

    /// The last handle of a stream is gone: reset it unless it finished both ways.
    pub(super) fn abandon(&self, stream: &StreamShared) {
        let id = stream.id;
        let reset = {
            let mut st = stream.lock();
            let reset = !st.fully_closed();
            if reset {
                st.reset = Some(ResetBy::Local);
                st.inbound = None;
            }
            reset
        };
        self.forget(id);
        if reset && self.running() {
            debug!(stream = id, "spdy: stream dropped unfinished; resetting it");
            let cmd = Command::Rst {
                id,
                status: rst::CANCEL,
            };
            match self.out.try_send(cmd) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        let out = self.out.clone();
                        rt.spawn(async move {
                            let _ = out.send(cmd).await;
                        });
                    }
                }
            }
        }
    }
}

/// A SPDY/3.1 session over one connection. Cheap to clone; all clones drive the same session.
///
/// The session runs until the peer closes the connection or sends GOAWAY, an I/O or protocol
/// error, or [`Session::goaway`]. Dropping the handles does not end it.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.shared.server)
            .field("phase", &*self.shared.phase.borrow())
            .finish()
    }
}

impl Session {
    /// Starts a server-side session (we open even stream ids, the peer odd ones) on `io`;
    /// returns the handle and the streams the peer opens. Needs a Tokio runtime.
    pub fn server<IO>(io: IO) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, true)
    }

    /// Starts a client-side session (we open odd stream ids).
    pub fn client<IO>(io: IO) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, false)
    }

    fn start<IO>(io: IO, server: bool) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
        let first = if server { 2 } else { 1 };
        let shared = Arc::new(Shared {
            server,
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            next_id: tokio::sync::Mutex::new(first),
            next_ping: AtomicU32::new(first),
            pings: Mutex::new(HashMap::new()),
            last_peer_id: AtomicU32::new(0),
            phase: watch::Sender::new(Phase::Running),
            closed: watch::Sender::new(false),
        });
        debug!(server, "spdy: session started");
        let reader = tokio::spawn(Reader::new(shared.clone(), accept_tx).run(rd));
        let writer = tokio::spawn(write_loop(wr, out_rx, shared.clone()));
        let sup = shared.clone();
        tokio::spawn(async move {
            let _ = reader.await;
            // Also covers a panicking reader task.
            sup.phase.send_replace(Phase::Dead);
            let _ = writer.await;
            sup.closed.send_replace(true);
            debug!(server = sup.server, "spdy: session closed");
        });
        (Session { shared }, accept_rx)
    }

    /// Opens a stream: SYN_STREAM with `headers` (names are lowercased; repeated names are sent
    /// as one NUL-separated value), then waits for the peer's SYN_REPLY (as client-go does; it
    /// gives up after 30 s, callers wanting a limit wrap this in a timeout).
    pub async fn open(&self, headers: Vec<(String, String)>) -> Result<Stream, Error> {
        let headers = headers::normalize(headers)?;
        let sh = &self.shared;
        let (reply_tx, reply_rx) = oneshot::channel();
        let (stream, rx) = {
            let mut next = sh.next_id.lock().await;
            let id = *next;
            if id > 0x7fff_ffff {
                return Err(Error::StreamIdsExhausted);
            }
            *next += 2;
            let (stream, rx) = StreamShared::new(id, false);
            stream.lock().reply_waiter = Some(reply_tx);
            lock(&sh.streams).insert(id, stream.clone());
            let cmd = Command::SynStream {
                id,
                headers: headers.clone(),
                fin: false,
            };
            if let Err(e) = sh.enqueue(cmd).await {
                sh.forget(id);
                return Err(e);
            }
            (stream, rx)
        };
        debug!(
            stream = stream.id,
            "spdy: opened stream, waiting for its reply"
        );
        // From here on, dropping the Stream (also on error) resets it.
        let handle = Stream::new(headers, stream, rx, sh.clone());
        tokio::select! {
            r = reply_rx => match r {
                Ok(Ok(())) => Ok(handle),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::SessionClosed),
            },
            () = sh.dead() => Err(Error::SessionClosed),
        }
    }

    /// Sends PING and waits for the echo; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let sh = &self.shared;
        // Ours are odd from a client, even from a server (as in spdystream); wrap before 2^31.
        let next = |id: u32| {
            let base = if id >= 0x7fff_fffd { id & 1 } else { id };
            Some(base + 2)
        };
        let id = sh
            .next_ping
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, next)
            .unwrap_or_else(|id| id);
        let (tx, rx) = oneshot::channel();
        lock(&sh.pings).insert(id, tx);
        let start = Instant::now();
        if let Err(e) = sh.enqueue(Command::Ping { id }).await {
            lock(&sh.pings).remove(&id);
            return Err(e);
        }
        tokio::select! {
            r = rx => r.map(|()| start.elapsed()).map_err(|_| Error::SessionClosed),
            () = sh.dead() => Err(Error::SessionClosed),
        }
    }

    /// Sends GOAWAY (after everything queued before it) and stops sending: new streams and
    /// writes fail from now on. Incoming data is still delivered until the peer closes the
    /// connection (spdystream closes it on GOAWAY), or for a few seconds at most. Resolves
    /// once the GOAWAY is written, or the connection is gone; a second call returns at once.
    pub async fn goaway(&self) {
        let sh = &self.shared;
        let first = sh.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::GoingAway(Instant::now());
                true
            } else {
                false
            }
        });
        if !first {
            return;
        }
        debug!(server = sh.server, "spdy: going away");
        let (done, wait) = oneshot::channel();
        let cmd = Command::GoAway {
            status: goaway::OK,
            done,
        };
        if sh.out.send(cmd).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Resolves when the connection is gone (EOF, error, GOAWAY either way) and both of the
    /// session's tasks have finished.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }
}
