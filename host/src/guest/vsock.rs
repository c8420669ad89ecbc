//! Reaching a sandbox's agent: hybrid vsock (connect to the sandbox's vsock Unix socket,
//! `CONNECT <port>\n`, wait for `OK <port>\n`), then a gRPC channel over that stream.
//!
//! Written by hand: the hybrid-vsock handshake is one line each way (Firecracker's and
//! Cloud Hypervisor's convention), and no crate implements its client side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use moat_proto::agent::agent_client::AgentClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tonic::transport::Channel;

/// The agent's gRPC port inside the guest.
pub const AGENT_PORT: u32 = 1024;
/// The host port the agent announces itself on.
pub const ANNOUNCE_PORT: u32 = 1025;

/// Connects to the Unix socket at `uds` without following a symlink there: the folder
/// holding it belongs to the pod's (confined, untrusted) vsock back-end, which could
/// otherwise point moatd at any socket of the host. The socket is opened O_PATH with
/// O_NOFOLLOW, checked to be a socket, and connected to through its descriptor.
async fn connect_no_follow(uds: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(uds)?;
    if !file.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a socket", uds.display()),
        ));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd())).await
}

/// Opens one hybrid-vsock stream to `port` in the guest.
pub async fn hybrid_connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = connect_no_follow(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the answer byte by byte so nothing after the line is swallowed by a buffer.
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut byte).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "vsock backend closed the connection",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "vsock backend answered garbage",
            ));
        }
    }
    let text = String::from_utf8_lossy(&line);
    if !text.starts_with("OK ") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("vsock backend answered {text:?}"),
        ));
    }
    Ok(s)
}

/// A gRPC channel to the agent through `uds`, connecting within `timeout`. No per-request
/// timeout here: it would cap every call, ExecSync with a long timeout included; each call
/// sets its own deadline instead.
pub async fn channel(
    uds: &Path,
    timeout: Duration,
) -> Result<AgentClient<Channel>, tonic::transport::Error> {
    let uds: PathBuf = uds.to_owned();
    let ch =
        tonic::transport::Endpoint::from_static("http://moat-agent")
            .connect_timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_| {
                let uds = uds.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(hybrid_connect(&uds, AGENT_PORT).await?))
                }
            }))
            .await?;
    Ok(AgentClient::new(ch)
        .max_decoding_message_size(MAX_AGENT_MESSAGE)
        .max_encoding_message_size(MAX_AGENT_MESSAGE))
}

/// The largest message moatd takes from (or sends to) an agent, which the guest controls:
/// output chunks, ExecSync output and stats all stay far below it.
pub const MAX_AGENT_MESSAGE: usize = 4 << 20;

/// Waits for the agent's announce line on `listener` (bound at `<uds>_1025`).
pub async fn wait_announce(listener: &tokio::net::UnixListener) -> std::io::Result<String> {
    let (stream, _) = listener.accept().await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    if !line.starts_with("moat-agent ") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected announce {line:?}"),
        ));
    }
    Ok(line.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_symlink_planted_for_the_socket_is_not_followed() {
        let d = tempfile::tempdir().expect("tmp");
        let host = d.path().join("host-service.sock");
        let _l = tokio::net::UnixListener::bind(&host).expect("bind");
        connect_no_follow(&host)
            .await
            .expect("a real socket connects");
        let planted = d.path().join("vsock");
        std::os::unix::fs::symlink(&host, &planted).expect("symlink");
        let e = connect_no_follow(&planted)
            .await
            .expect_err("a symlink is refused");
        assert!(e.to_string().contains("not a socket"), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(connect_no_follow(&file).await.is_err());
    }

    #[tokio::test]
    async fn connect_handshake_and_refusal() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("v.sock");
        let l = tokio::net::UnixListener::bind(&p).expect("bind");
        tokio::spawn(async move {
            for answer in ["OK 5000\nhello", "RST\n"] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 13];
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf)
                    .await
                    .expect("read");
                assert_eq!(&buf, b"CONNECT 1024\n");
                s.write_all(answer.as_bytes()).await.expect("write");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut s = hybrid_connect(&p, AGENT_PORT).await.expect("ok");
        let mut rest = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut rest)
            .await
            .expect("rest");
        assert_eq!(
            &rest, b"hello",
            "bytes after the OK line belong to the stream"
        );
        let e = hybrid_connect(&p, AGENT_PORT).await.expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn announce_line_is_checked() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("v.sock_1025");
        let l = tokio::net::UnixListener::bind(&p).expect("bind");
        let p2 = p.clone();
        tokio::spawn(async move {
            let mut s = UnixStream::connect(&p2).await.expect("connect");
            s.write_all(b"moat-agent 0.1.0 ready\n")
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        assert_eq!(
            wait_announce(&l).await.expect("announce"),
            "moat-agent 0.1.0 ready"
        );
    }
}
