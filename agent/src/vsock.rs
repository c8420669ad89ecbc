//! Serving moatd over AF_VSOCK, and announcing readiness to the host.
//!
//! The agent does not wait to be polled: once its listener is up it connects to the host
//! (CID 2) on `ANNOUNCE_PORT` and writes one line. With hybrid vsock that connection lands
//! on the host's Unix socket `<vsock uds>_1025`, where moatd waits for it.

use tokio::io::AsyncWriteExt;
use tokio_vsock::{VMADDR_CID_ANY, VMADDR_CID_HOST, VsockAddr, VsockListener, VsockStream};

/// The port the agent's gRPC API listens on.
pub const AGENT_PORT: u32 = 1024;
/// The host port the agent announces itself on.
pub const ANNOUNCE_PORT: u32 = 1025;

/// The line the agent writes on the announce connection.
pub fn announce_line() -> String {
    format!("moat-agent {} ready\n", env!("CARGO_PKG_VERSION"))
}

/// Listens on `port`, announces, and serves until the process ends.
pub async fn serve(
    port: u32,
    system: std::sync::Arc<dyn crate::system::System>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
    tracing::info!(port, "moat-agent serving on vsock");
    tokio::spawn(async {
        match announce().await {
            Ok(stream) => {
                // Keep the announce connection open: its end tells the host the agent is gone.
                let _keep = stream;
                std::future::pending::<()>().await;
            }
            Err(e) => tracing::warn!(error = %e, "could not announce to the host"),
        }
    });
    crate::server::serve_incoming(listener.incoming(), system).await?;
    Ok(())
}

async fn announce() -> std::io::Result<VsockStream> {
    let mut last = None;
    for _ in 0..50 {
        match VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, ANNOUNCE_PORT)).await {
            Ok(mut s) => {
                s.write_all(announce_line().as_bytes()).await?;
                s.flush().await?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("announce failed")))
}
