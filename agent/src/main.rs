//! `moat-agent`: the guest agent. In a pod VM it runs as PID 1 and serves moatd over
//! vsock; on a plain host it serves on a Unix socket, which is how its tests run.

use std::path::PathBuf;

use clap::Parser;

mod server;

/// The Moat guest agent.
#[derive(Debug, Parser)]
#[command(name = "moat-agent", version)]
struct Args {
    /// Serve on this Unix socket.
    #[arg(long)]
    listen: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let _ = std::fs::remove_file(&args.listen);
    let listener = tokio::net::UnixListener::bind(&args.listen)?;
    tracing::info!(socket = %args.listen.display(), "moat-agent serving");
    server::serve(listener).await?;
    Ok(())
}
