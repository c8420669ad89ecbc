//! SPDY/3.1, written by hand: no maintained Rust crate implements SPDY/3.1; this is the subset
//! Kubernetes streaming uses.
//!
//! kubelet, crictl and kubectl reach a CRI streaming server (exec, attach, port-forward) with
//! client-go's SPDY executor, which is built on github.com/moby/spdystream. After the HTTP
//! upgrade to `SPDY/3.1` both ends exchange SPDY/3 frames; every behaviour here is chosen to
//! interoperate with spdystream:
//!
//! - [`frame`]: the frame codec (control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS,
//!   PING, GOAWAY, HEADERS, WINDOW_UPDATE; DATA frames).
//! - [`headers`] and [`dictionary`]: name/value header blocks, zlib-compressed with the SPDY/3
//!   dictionary, one compression context per direction for the whole connection.
//! - [`Session`] (session.rs, with its reader.rs and writer.rs tasks): the connection, its
//!   stream table, PING answers, GOAWAY, and the flow-control decision (spdystream ignores
//!   WINDOW_UPDATE, so we rely on TCP backpressure with bounded buffers; see session.rs).
//! - [`Stream`], [`StreamReader`], [`StreamWriter`] (stream.rs): one stream and its halves.
//!
//! Not implemented because Kubernetes does not use them: server push (associated streams),
//! priorities (we send 0 and ignore the peer's), sending HEADERS or SETTINGS, CREDENTIAL.
//!
//! A server-side sketch (kubelet's server replies to every stream it accepts):
//!
//! ```no_run
//! # async fn serve(conn: tokio::net::TcpStream) {
//! use moat_host::streaming::spdy::Session;
//! let (session, mut incoming) = Session::server(conn);
//! while let Some(stream) = incoming.recv().await {
//!     let kind = stream.header("streamtype").map(str::to_owned);
//!     if stream.reply(vec![]).await.is_err() {
//!         break;
//!     }
//!     let (mut rd, wr) = stream.split();
//!     tokio::spawn(async move {
//!         while let Some(data) = rd.read().await {
//!             let _ = (&kind, data); // ...
//!         }
//!         let _ = wr.finish().await;
//!     });
//! }
//! session.goaway().await;
//! # }
//! ```

pub mod dictionary;
pub mod frame;
pub mod headers;
mod reader;
mod session;
mod stream;
mod writer;

#[cfg(test)]
mod tests;

pub use session::Session;
pub use stream::{MAX_DATA_FRAME, STREAM_BUFFER, Stream, StreamReader, StreamWriter};

/// Session and stream errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection is gone, or we sent GOAWAY.
    #[error("SPDY session closed")]
    SessionClosed,
    /// The peer reset the stream (RST_STREAM `status`, see [`frame::rst`]).
    #[error("SPDY stream {id} reset by the peer (status {status})")]
    Reset { id: u32, status: u32 },
    /// We already finished (FIN) or reset this stream.
    #[error("SPDY stream {0} is closed for sending")]
    StreamClosed(u32),
    #[error("SPDY stream {0}: {1}")]
    InvalidState(u32, &'static str),
    #[error("no SPDY stream ids left on this connection")]
    StreamIdsExhausted,
    #[error(transparent)]
    Header(#[from] headers::HeaderError),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}
