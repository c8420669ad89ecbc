//! Streams of a [`Session`](super::Session): the handle for a new stream and its two halves.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Error;
use super::frame::rst;
use super::headers::{self, HeaderList};
use super::session::{Command, Shared};

/// Largest DATA frame we send. spdystream reads any size; small frames keep streams
/// interleaved fairly on the one connection.
pub const MAX_DATA_FRAME: usize = 16 * 1024;
/// Bytes received on one stream and not yet read by its consumer. When a stream's buffer is
/// full the session stops reading the connection (spdystream applies the same backpressure).
pub const STREAM_BUFFER: usize = 256 * 1024;

/// Why a stream was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResetBy {
    Local,
    Peer(u32),
}

/// Per-stream state shared by the handles and the session's reader task.
pub(super) struct StreamShared {
    pub(super) id: u32,
    /// Opened by the peer (we owe it a SYN_REPLY) rather than by us.
    pub(super) peer_opened: bool,
    pub(super) state: Mutex<StreamState>,
    /// Free space of the inbound buffer, in bytes. Closed when the reader half is dropped.
    pub(super) budget: Arc<Semaphore>,
}

#[derive(Default)]
pub(super) struct StreamState {
    /// SYN_REPLY sent (peer-opened) or received (opened by us).
    pub(super) replied: bool,
    pub(super) local_fin: bool,
    pub(super) remote_fin: bool,
    pub(super) reset: Option<ResetBy>,
    /// Where the reader task delivers DATA; dropped at the peer's FIN, on reset, at session end.
    pub(super) inbound: Option<mpsc::UnboundedSender<Bytes>>,
    /// `Session::open` waiting for the SYN_REPLY.
    pub(super) reply_waiter: Option<oneshot::Sender<Result<(), Error>>>,
}

impl StreamState {
    pub(super) fn fully_closed(&self) -> bool {
        self.reset.is_some() || (self.local_fin && self.remote_fin)
    }
}

impl StreamShared {
    pub(super) fn new(id: u32, peer_opened: bool) -> (Arc<Self>, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            id,
            peer_opened,
            state: Mutex::new(StreamState {
                inbound: Some(tx),
                ..StreamState::default()
            }),
            budget: Arc::new(Semaphore::new(STREAM_BUFFER)),
        });
        (shared, rx)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error for sending on this stream, if it can no longer send.
    fn send_error(&self, st: &StreamState) -> Option<Error> {
        match st.reset {
            Some(ResetBy::Peer(status)) => Some(Error::Reset {
                id: self.id,
                status,
            }),
            Some(ResetBy::Local) => Some(Error::StreamClosed(self.id)),
            None if st.local_fin => Some(Error::StreamClosed(self.id)),
            None if self.peer_opened && !st.replied => Some(Error::InvalidState(
                self.id,
                "reply to a peer-opened stream before writing to it",
            )),
            None => None,
        }
    }
}

/// Receiving end of a stream's inbound buffer; closing the budget tells the reader task to
/// drop further data for this stream instead of waiting for space.
struct Inbound {
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Semaphore>,
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.budget.close();
    }
}

/// Held by every handle of one stream; when the last goes, a stream that is not finished both
/// ways is reset (CANCEL) so that neither side keeps state or sends into the void.
struct Guard {
    stream: Arc<StreamShared>,
    session: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.session.abandon(&self.stream);
    }
}

/// A stream opened by the peer (from the session's receiver) or by us ([`Session::open`]).
///
/// [`Session::open`]: super::Session::open
pub struct Stream {
    headers: HeaderList,
    stream: Arc<StreamShared>,
    session: Arc<Shared>,
    inbound: Inbound,
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.stream.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Stream {
    pub(super) fn new(
        headers: HeaderList,
        stream: Arc<StreamShared>,
        rx: mpsc::UnboundedReceiver<Bytes>,
        session: Arc<Shared>,
    ) -> Self {
        let inbound = Inbound {
            rx,
            budget: stream.budget.clone(),
        };
        let guard = Arc::new(Guard {
            stream: stream.clone(),
            session: session.clone(),
        });
        Self {
            headers,
            stream,
            session,
            inbound,
            guard,
        }
    }

    pub fn id(&self) -> u32 {
        self.stream.id
    }

    /// The first value of a SYN_STREAM header (names compare ASCII case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All SYN_STREAM headers: lowercase names, one entry per value.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Sends the SYN_REPLY that accepts a peer-opened stream. spdystream drops DATA on a stream
    /// it opened until this reply arrives, so writes before it are refused.
    pub async fn reply(&self, headers: Vec<(String, String)>) -> Result<(), Error> {
        let id = self.stream.id;
        if !self.stream.peer_opened {
            return Err(Error::InvalidState(
                id,
                "only a peer-opened stream is replied to",
            ));
        }
        let headers = headers::normalize(headers)?;
        {
            let mut st = self.stream.lock();
            if st.replied {
                return Err(Error::InvalidState(id, "already replied"));
            }
            if let Some(ResetBy::Peer(status)) = st.reset {
                return Err(Error::Reset { id, status });
            }
            if st.reset.is_some() {
                return Err(Error::StreamClosed(id));
            }
            st.replied = true;
        }
        self.session
            .enqueue(Command::SynReply {
                id,
                headers,
                fin: false,
            })
            .await
    }

    /// Splits into a reading and a (cloneable) writing half.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        let writer = StreamWriter {
            stream: self.stream.clone(),
            session: self.session,
            _guard: self.guard.clone(),
        };
        let reader = StreamReader {
            id: self.stream.id,
            inbound: self.inbound,
            _guard: self.guard,
        };
        (reader, writer)
    }
}

/// The receiving half of a stream.
pub struct StreamReader {
    id: u32,
    inbound: Inbound,
    _guard: Arc<Guard>,
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next piece of data; `None` once the peer finished (FIN) or reset the stream, or the
    /// session ended, after everything received before that has been returned.
    pub async fn read(&mut self) -> Option<Bytes> {
        let chunk = self.inbound.rx.recv().await?;
        self.inbound.budget.add_permits(chunk.len());
        Some(chunk)
    }

    /// Bytes received for this stream and not read yet (at most [`STREAM_BUFFER`]).
    pub fn buffered(&self) -> usize {
        STREAM_BUFFER.saturating_sub(self.inbound.budget.available_permits())
    }
}

/// The sending half of a stream; clones write to the same stream.
#[derive(Clone)]
pub struct StreamWriter {
    stream: Arc<StreamShared>,
    session: Arc<Shared>,
    _guard: Arc<Guard>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.stream.id
    }

    /// Queues `data` as DATA frames of at most [`MAX_DATA_FRAME`] bytes; waits while the
    /// session's send queue is full. Returns once queued, not once the peer has read it.
    pub async fn write(&self, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = self.stream.send_error(&self.stream.lock()) {
            return Err(e);
        }
        for chunk in data.chunks(MAX_DATA_FRAME) {
            // Checked again per frame: the peer may reset the stream meanwhile.
            if let Some(e) = self.stream.send_error(&self.stream.lock()) {
                return Err(e);
            }
            self.session
                .enqueue(Command::Data {
                    id: self.stream.id,
                    data: Bytes::copy_from_slice(chunk),
                    fin: false,
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes: an empty DATA frame with FIN. Reading goes on until the peer's FIN.
    pub async fn finish(&self) -> Result<(), Error> {
        let closed = {
            let mut st = self.stream.lock();
            if let Some(e) = self.stream.send_error(&st) {
                return Err(e);
            }
            st.local_fin = true;
            st.fully_closed()
        };
        let sent = self
            .session
            .enqueue(Command::Data {
                id: self.stream.id,
                data: Bytes::new(),
                fin: true,
            })
            .await;
        if closed {
            self.session.forget(self.stream.id);
        }
        sent
    }

    /// Aborts the stream both ways with RST_STREAM (`status`: see [`super::frame::rst`];
    /// spdystream itself resets with CANCEL). The reader half ends after what it already has.
    pub async fn reset(&self, status: u32) -> Result<(), Error> {
        let status = if status == 0 { rst::CANCEL } else { status };
        {
            let mut st = self.stream.lock();
            if st.fully_closed() {
                return Ok(());
            }
            st.reset = Some(ResetBy::Local);
            st.inbound = None;
        }
        self.session.forget(self.stream.id);
        self.session
            .enqueue(Command::Rst {
                id: self.stream.id,
                status,
            })
            .await
    }
}
