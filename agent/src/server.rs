//! The agent's gRPC service.

use std::time::Instant;

use moat_proto::agent::agent_server::{Agent, AgentServer};
use moat_proto::agent::{HealthRequest, HealthResponse};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// The service state.
pub struct AgentService {
    started: Instant,
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }))
    }
}

/// Serves the agent API on `listener` until the process ends.
pub async fn serve(listener: UnixListener) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentService {
            started: Instant::now(),
        }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use moat_proto::agent::agent_client::AgentClient;

    #[tokio::test]
    async fn health_answers_with_the_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(serve(listener));
        let p = path.clone();
        let channel = tonic::transport::Endpoint::from_static("http://agent")
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .expect("connect");
        let r = AgentClient::new(channel)
            .health(HealthRequest {})
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
    }
}
