//! The containers' output: threads copying a process's pipes into the `Output` channel
//! (`pump`) or into memory (`read_all`, for ExecSync), the stream an `Output` call reads,
//! and the gRPC stream types.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use moat_proto::agent::{OutputChunk, output_chunk};
use tokio::sync::mpsc;
use tonic::Status;

use super::{Entry, now_nanos};

/// Output stream type.
pub type OutputStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<OutputChunk, Status>> + Send>>;

/// Exec output stream type.
pub type ExecStream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<moat_proto::agent::ExecOutput, Status>> + Send>,
>;
/// PortForward stream type.
pub type PortForwardStream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<moat_proto::agent::PortForwardData, Status>> + Send>,
>;

/// Copies a pipe into the output channel until EOF.
pub(super) fn pump(fd: OwnedFd, stream: output_chunk::Stream, tx: mpsc::Sender<OutputChunk>) {
    std::thread::spawn(move || {
        crate::chunks::read_chunks(fd, |data| {
            let chunk = OutputChunk {
                stream: stream as i32,
                data,
                time: now_nanos(),
            };
            // Nobody listens: keep draining so the process never blocks on a full pipe.
            let _ = tx.blocking_send(chunk);
            true
        })
    });
}

/// Reads `fd` to its end on a thread of its own; nothing without one.
pub(super) fn read_all(fd: Option<OwnedFd>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(fd) = fd {
            let _ = std::fs::File::from(fd).read_to_end(&mut out);
        }
        out
    })
}

/// The output stream of one reader. When the reader goes away (moatd restarted, say) the
/// channel goes back to the container, so the next Output call carries on where this one
/// stopped instead of losing the rest.
pub(super) struct Resubscribable {
    pub(super) rx: Option<mpsc::Receiver<OutputChunk>>,
    pub(super) entry: Arc<Entry>,
}

impl futures_core::Stream for Resubscribable {
    type Item = Result<OutputChunk, Status>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|o| o.map(Ok)),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Resubscribable {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *self.entry.output.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        }
    }
}
