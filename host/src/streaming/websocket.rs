//! What the WebSocket transports share: Kubernetes' channel framing (one binary message per
//! write, its first byte the channel) and a writer task that owns the socket's sink.

use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// The incoming half of a WebSocket.
pub type Source<IO> = futures::stream::SplitStream<WebSocketStream<IO>>;

/// Splits `ws`: messages sent on the returned channel are written in order, and the socket
/// is closed once every sender is gone.
pub fn split<IO>(
    ws: WebSocketStream<IO>,
) -> (
    mpsc::Sender<Message>,
    Source<IO>,
    tokio::task::JoinHandle<()>,
)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    (tx, source, writer)
}

/// A client message, as the channel protocols see it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Data on a channel.
    Data(u8, Vec<u8>),
    /// A ping, pong or empty message.
    Other,
    /// The client closed, or the connection failed.
    Closed,
}

/// Reads a client message (the result of the source's `next()`) as channel data.
pub fn incoming(m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Incoming {
    let data = match m {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Incoming::Closed,
        Some(Ok(_)) => return Incoming::Other,
    };
    match data.split_first() {
        Some((&ch, rest)) => Incoming::Data(ch, rest.to_vec()),
        None => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_framing_both_ways() {
        let m = frame(3, b"status");
        assert_eq!(m.clone().into_data().as_ref(), b"\x03status");
        assert_eq!(incoming(Some(Ok(m))), Incoming::Data(3, b"status".to_vec()));
        assert_eq!(
            incoming(Some(Ok(Message::binary(Vec::new())))),
            Incoming::Other
        );
        assert_eq!(
            incoming(Some(Ok(Message::Ping(Vec::new().into())))),
            Incoming::Other
        );
        assert_eq!(incoming(Some(Ok(Message::Close(None)))), Incoming::Closed);
        assert_eq!(incoming(None), Incoming::Closed);
    }
}
