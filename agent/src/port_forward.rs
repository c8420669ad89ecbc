//! PortForward: one TCP connection to localhost:port inside the pod (the guest's network
//! namespace, which the pod's containers share), relayed over one bidirectional gRPC
//! stream. Either side's `close` is a TCP half-close; the host going away closes the
//! connection.

use std::time::Duration;

use moat_proto::agent::PortForwardData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::containers::PortForwardStream;

/// How long connecting to the port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(port: u16) -> Result<TcpStream, Status> {
    let mut last = None;
    for addr in [
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("timed out".into()),
        }
    }
    Err(Status::unavailable(format!(
        "nothing accepts connections on port {port} inside the pod: {}",
        last.unwrap_or_default()
    )))
}

/// PortForward: the first message names the port.
pub async fn port_forward<S>(mut input: S) -> Result<PortForwardStream, Status>
where
    S: futures_core::Stream<Item = Result<PortForwardData, Status>> + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt as _;
    let first = match input.next().await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e),
        None => return Err(Status::invalid_argument("port forward: no port given")),
    };
    let port = u16::try_from(first.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("invalid port {}", first.port)))?;
    let conn = connect(port).await?;
    tracing::debug!(port, "port forward connected");
    let (mut rd, mut wr) = conn.into_split();
    let (tx, rx) = mpsc::channel::<Result<PortForwardData, Status>>(16);
    // Host to port.
    let to_port = tokio::spawn(async move {
        let mut pending = Some(first);
        loop {
            let m = match pending.take() {
                Some(m) => m,
                None => match input.next().await {
                    Some(Ok(m)) => m,
                    // The host went away: no half-close, the connection is dropped.
                    Some(Err(_)) => return false,
                    None => {
                        let _ = wr.shutdown().await;
                        return true;
                    }
                },
            };
            if !m.data.is_empty() && wr.write_all(&m.data).await.is_err() {
                return true;
            }
            if m.close {
                let _ = wr.shutdown().await;
                // Keep reading so a cancelled call is still noticed.
                while let Some(r) = input.next().await {
                    if r.is_err() {
                        return false;
                    }
                }
                return true;
            }
        }
    });
    // Port to host.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let host_gone = loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => {
                        break tx
                            .send(Ok(PortForwardData { port: 0, data: Vec::new(), close: true }))
                            .await
                            .is_err();
                    }
                    Ok(n) => {
                        let m = PortForwardData { port: 0, data: buf[..n].to_vec(), close: false };
                        if tx.send(Ok(m)).await.is_err() {
                            break true;
                        }
                    }
                },
                _ = tx.closed() => break true,
            }
        };
        if host_gone {
            to_port.abort();
        } else if let Ok(clean) = to_port.await
            && !clean
        {
            tracing::debug!(port, "port forward client went away");
        }
        // Dropping both halves closes the connection.
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    fn data(port: u32, d: &[u8], close: bool) -> Result<PortForwardData, Status> {
        Ok(PortForwardData {
            port,
            data: d.to_vec(),
            close,
        })
    }

    #[tokio::test]
    async fn bytes_go_both_ways_with_half_close() {
        // An upper-casing echo server that answers after the client's half-close.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.expect("read");
            s.write_all(&all.to_ascii_uppercase()).await.expect("write");
        });
        let (tx, rx) = mpsc::channel(4);
        tx.send(data(port.into(), b"", false)).await.expect("send");
        let mut out = port_forward(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("connect");
        tx.send(data(0, b"hello ", false)).await.expect("send");
        tx.send(data(0, b"moat", true)).await.expect("send");
        let mut got = Vec::new();
        let mut closed = false;
        while let Some(m) = out.next().await {
            let m = m.expect("ok");
            got.extend(m.data);
            if m.close {
                closed = true;
                break;
            }
        }
        assert_eq!(got, b"HELLO MOAT");
        assert!(closed, "the port's EOF is passed on");
        // Both directions are done once the host's input ends: then the stream ends.
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(5), out.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ends");
    }

    #[tokio::test]
    async fn a_closed_port_or_a_bad_request_is_an_error() {
        // A port bound but not listening refuses connections, and stays ours for the whole
        // test: a port merely freed could be taken by a parallel test, or be the source
        // port the kernel picks for the connect itself (a TCP self-connect succeeds).
        let held = tokio::net::TcpSocket::new_v4().expect("socket");
        held.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let port = held.local_addr().expect("addr").port();
        let e = port_forward(tokio_stream::iter(vec![data(port.into(), b"", false)]))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains(&port.to_string()), "{}", e.message());
        for bad in [0, 70000] {
            let e = port_forward(tokio_stream::iter(vec![data(bad, b"", false)]))
                .await
                .err()
                .expect("bad port");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
    }

    #[tokio::test]
    async fn a_host_that_goes_away_closes_the_connection() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel(4);
        tx.send(data(port.into(), b"", false)).await.expect("send");
        let out = port_forward(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("connect");
        let (mut s, _) = l.accept().await.expect("accept");
        tx.send(Err(Status::cancelled("gone"))).await.expect("send");
        drop(out);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the connection ends")
            .unwrap_or(0);
        assert_eq!(n, 0, "EOF or reset, nothing else");
    }
}
