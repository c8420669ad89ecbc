//! The CRI v1 edge: the gRPC services kubelet and crictl talk to, the Unix socket they
//! listen on, and the mapping of typed errors to gRPC statuses.

pub mod container;
pub mod events;
pub mod image_service;
pub mod metrics;
pub mod pod_sandbox;
pub mod runtime_service;
pub mod socket;
pub mod status;
pub mod streaming;

use std::future::Future;
use std::path::Path;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::images::ImageManager;
use crate::sandbox::SandboxManager;
use crate::store::Store;

/// Serves both CRI services on `socket` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    store: Store,
    images: ImageManager,
    sandboxes: SandboxManager,
    containers: crate::containers::ContainerManager,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = socket::bind(socket)?;
    tracing::info!(socket = %socket.display(), "serving CRI v1");
    let addr = std::net::SocketAddr::new(config.streaming.address, config.streaming.port);
    let backend =
        crate::containers::sessions::Sessions::shared(containers.clone(), sandboxes.clone());
    let server = crate::streaming::StreamingServer::start(addr, backend)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the streaming server on {addr}: {e}"))?;
    let runtime = runtime_service::CriRuntimeService::new(config, store, sandboxes, containers)
        .with_streaming(std::sync::Arc::new(server));
    let image = image_service::CriImageService::new(images);
    let result = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("cri", method = %req.uri().path()))
        .add_service(RuntimeServiceServer::new(runtime).max_decoding_message_size(16 << 20))
        .add_service(ImageServiceServer::new(image).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(Into::into)
}
