//! The agent's gRPC service: each handler checks its request, does the work through the
//! `System` seam, and maps failures to a status.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use moat_proto::agent::agent_server::{Agent, AgentServer};
use moat_proto::agent::{
    ContainerRequest, CreateContainerRequest, CreateContainerResponse, ExecSyncRequest,
    ExecSyncResponse, HealthRequest, HealthResponse, OutputChunk, RemoveContainerResponse,
    SetupSandboxRequest, SetupSandboxResponse, ShutdownRequest, ShutdownResponse,
    SignalContainerRequest, SignalContainerResponse, StartContainerResponse, WaitContainerRequest,
    WaitContainerResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::system::System;

/// Runs a call that changes the guest as its own task, so that the host going away (the
/// call's future dropped) cannot cut it short.
async fn run_to_end<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<Response<T>, Status> {
    match tokio::spawn(call).await {
        Ok(r) => r.map(Response::new),
        Err(e) => Err(Status::internal(format!("the call's task failed: {e}"))),
    }
}

/// The service state.
pub struct AgentService {
    started: Instant,
    system: Arc<dyn System>,
    containers: Arc<crate::containers::Containers>,
}

impl AgentService {
    /// A service doing its work through `system`.
    pub fn new(system: Arc<dyn System>) -> Self {
        Self {
            started: Instant::now(),
            system,
            containers: Arc::new(crate::containers::Containers::default()),
        }
    }

    /// The pod's user namespace: the files the containers bind from the VM (/etc/hostname,
    /// /etc/resolv.conf, /etc/hosts, read-only) owned by its root, as containerd does; the
    /// VM's mqueue mounted on /dev/mqueue for containers to bind (the IPC namespace is the
    /// VM's, whose mqueue a user namespace may not mount); and the pod init started in it.
    fn setup_userns(&self, maps: crate::executor::userns::IdMappings) -> Result<(), Status> {
        let (uid, gid) = maps
            .root()
            .ok_or_else(|| Status::invalid_argument("user namespace: container uid 0 unmapped"))?;
        for f in ["/etc/hostname", "/etc/resolv.conf", "/etc/hosts"] {
            match self.system.chown(Path::new(f), uid, gid) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && f == "/etc/hosts" => {}
                Err(e) => return Err(internal(&format!("chown {f}"), e)),
            }
        }
        if let Err(e) = self.system.mount_mqueue(Path::new("/dev/mqueue")) {
            tracing::warn!(error = %e, "cannot mount mqueue on /dev/mqueue: containers in the user namespace get none");
        }
        self.containers.set_userns(maps)
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// VmRSS of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn internal(what: &str, e: std::io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
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
            rss_kib: rss_kib(),
            root_fs: crate::init::root_fs_type(),
        }))
    }

    async fn setup_sandbox(
        &self,
        request: Request<SetupSandboxRequest>,
    ) -> Result<Response<SetupSandboxResponse>, Status> {
        let r = request.into_inner();
        if !valid_hostname(&r.hostname) {
            return Err(Status::invalid_argument(format!(
                "invalid hostname {:?}",
                r.hostname
            )));
        }
        let userns = r
            .userns
            .as_ref()
            .map(crate::pid_ns::mappings_from_proto)
            .transpose()?;
        if r.time_unix_nanos > 0 {
            self.system
                .set_clock(r.time_unix_nanos)
                .map_err(|e| internal("set the clock", e))?;
        }
        self.system
            .set_hostname(&r.hostname)
            .map_err(|e| internal("set the hostname", e))?;
        self.system
            .write_file(
                Path::new("/etc/hostname"),
                format!("{}\n", r.hostname).as_bytes(),
            )
            .map_err(|e| internal("write /etc/hostname", e))?;
        // Containers bind-mount it: it must exist even when the pod sets no DNS.
        self.system
            .write_file(Path::new("/etc/resolv.conf"), r.resolv_conf.as_bytes())
            .map_err(|e| internal("write /etc/resolv.conf", e))?;
        if !r.hosts.is_empty() {
            self.system
                .write_file(Path::new("/etc/hosts"), r.hosts.as_bytes())
                .map_err(|e| internal("write /etc/hosts", e))?;
        }
        for share in &r.shares {
            if share.tag.is_empty() || !share.mount_point.starts_with("/run/moat/") {
                return Err(Status::invalid_argument(format!(
                    "share {:?} must have a tag and a mount point under /run/moat/",
                    share.tag
                )));
            }
            self.system
                .mount_virtiofs(&share.tag, Path::new(&share.mount_point), share.read_only)
                .map_err(|e| internal(&format!("mount virtio-fs share {}", share.tag), e))?;
        }
        // The VM's kernel and namespaces are the pod's own: every sysctl of the pod, namespaced
        // (net.*, kernel.shm*, fs.mqueue.*...) or not, is set here once, in the namespaces
        // the containers share (network, IPC).
        let mut sysctls: Vec<(&String, &String)> = r.sysctls.iter().collect();
        sysctls.sort();
        for (key, value) in sysctls {
            let path = crate::system::sysctl_path(key).ok_or_else(|| {
                Status::invalid_argument(format!("sysctl {key:?} is not a sysctl name"))
            })?;
            self.system.set_sysctl(&path, value).map_err(|e| {
                let code = match e.kind() {
                    std::io::ErrorKind::NotFound => tonic::Code::InvalidArgument,
                    _ => tonic::Code::Internal,
                };
                Status::new(code, format!("set sysctl {key}={value:?}: {e}"))
            })?;
        }
        if let Some(maps) = userns {
            self.setup_userns(maps)?;
        }
        tracing::info!(hostname = %r.hostname, shares = r.shares.len(), sysctls = r.sysctls.len(), userns = r.userns.is_some(), "sandbox set up");
        Ok(Response::new(SetupSandboxResponse {}))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let system = self.system.clone();
        tokio::spawn(async move {
            // Let the answer reach the host first.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            system.power_off();
        });
        Ok(Response::new(ShutdownResponse {}))
    }

    type OutputStream =
        std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<OutputChunk, Status>> + Send>>;

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        // Run to the end even if moatd goes away meanwhile: a create cut short would leave
        // a process in no one's list; finished, it is listed (ListContainers) and the
        // host reconciles it.
        let containers = self.containers.clone();
        let req = request.into_inner();
        run_to_end(async move { containers.create(req).await }).await
    }

    async fn start_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let containers = self.containers.clone();
        let id = request.into_inner().container_id;
        run_to_end(async move { containers.start(&id).await }).await
    }

    async fn wait_container(
        &self,
        request: Request<WaitContainerRequest>,
    ) -> Result<Response<WaitContainerResponse>, Status> {
        self.containers
            .wait(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn signal_container(
        &self,
        request: Request<SignalContainerRequest>,
    ) -> Result<Response<SignalContainerResponse>, Status> {
        self.containers
            .signal(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.containers
            .remove(&request.into_inner().container_id)
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        _request: Request<moat_proto::agent::ListContainersRequest>,
    ) -> Result<Response<moat_proto::agent::ListContainersResponse>, Status> {
        Ok(Response::new(moat_proto::agent::ListContainersResponse {
            containers: self.containers.list().await,
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        self.containers
            .exec_sync(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_resources(
        &self,
        request: Request<moat_proto::agent::UpdateResourcesRequest>,
    ) -> Result<Response<moat_proto::agent::UpdateResourcesResponse>, Status> {
        self.containers
            .update_resources(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn input(
        &self,
        request: Request<tonic::Streaming<moat_proto::agent::InputChunk>>,
    ) -> Result<Response<moat_proto::agent::InputResponse>, Status> {
        self.containers.input(request.into_inner()).await?;
        Ok(Response::new(moat_proto::agent::InputResponse {}))
    }

    async fn resize(
        &self,
        request: Request<moat_proto::agent::ResizeRequest>,
    ) -> Result<Response<moat_proto::agent::ResizeResponse>, Status> {
        self.containers.resize(request.into_inner()).await?;
        Ok(Response::new(moat_proto::agent::ResizeResponse {}))
    }

    async fn setup_network(
        &self,
        request: Request<moat_proto::agent::SetupNetworkRequest>,
    ) -> Result<Response<moat_proto::agent::SetupNetworkResponse>, Status> {
        let plan = crate::netconf::Plan::from_request(request.get_ref())?;
        crate::netconf::apply(&crate::netconf::Rtnetlink, &plan).await?;
        tracing::info!(
            interfaces = plan.interfaces.len(),
            routes = plan.routes.len(),
            "network configured"
        );
        Ok(Response::new(moat_proto::agent::SetupNetworkResponse {}))
    }

    type ExecStream = crate::containers::ExecStream;

    async fn exec(
        &self,
        request: Request<tonic::Streaming<moat_proto::agent::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        crate::exec::exec(&self.containers, request.into_inner())
            .await
            .map(Response::new)
    }

    type PortForwardStream = crate::containers::PortForwardStream;

    async fn port_forward(
        &self,
        request: Request<tonic::Streaming<moat_proto::agent::PortForwardData>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        crate::port_forward::port_forward(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stats(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<moat_proto::agent::StatsResponse>, Status> {
        self.containers
            .stats(&request.into_inner().container_id)
            .await
            .map(Response::new)
    }

    async fn output(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        self.containers
            .output(&request.into_inner().container_id)
            .await
            .map(Response::new)
    }
}

/// Serves the agent API on a Unix socket until the process ends.
pub async fn serve_unix(
    listener: UnixListener,
    system: Arc<dyn System>,
) -> Result<(), tonic::transport::Error> {
    serve_incoming(UnixListenerStream::new(listener), system).await
}

/// Serves the agent API on any stream of connections.
pub async fn serve_incoming<S, IO, E>(
    incoming: S,
    system: Arc<dyn System>,
) -> Result<(), tonic::transport::Error>
where
    S: futures_core::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: tonic::transport::server::Connected
        + tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + Unpin
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentService::new(system)))
        .serve_with_incoming(incoming)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::{Call, Recorder};
    use hyper_util::rt::TokioIo;
    use moat_proto::agent::agent_client::AgentClient;

    async fn start() -> (
        tempfile::TempDir,
        Arc<Recorder>,
        AgentClient<tonic::transport::Channel>,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let rec = Arc::new(Recorder::default());
        tokio::spawn(serve_unix(listener, rec.clone()));
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
        (dir, rec, AgentClient::new(channel))
    }

    #[tokio::test]
    async fn health_answers_with_the_version() {
        let (_d, _rec, mut c) = start().await;
        let r = c
            .health(HealthRequest {})
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
    }

    #[tokio::test]
    async fn setup_sandbox_sets_identity_dns_and_clock() {
        let (_d, rec, mut c) = start().await;
        c.setup_sandbox(SetupSandboxRequest {
            hostname: "web-0".into(),
            resolv_conf: "nameserver 10.96.0.10\n".into(),
            hosts: "127.0.0.1 localhost\n".into(),
            time_unix_nanos: 42,
            shares: vec![moat_proto::agent::Share {
                tag: "layers".into(),
                mount_point: "/run/moat/layers".into(),
                read_only: true,
            }],
            sysctls: [
                ("net.ipv4.ip_forward".to_string(), "1".to_string()),
                ("kernel.shmmni".to_string(), "8192".to_string()),
            ]
            .into(),
            userns: None,
        })
        .await
        .expect("setup");
        let calls = rec.calls.lock().expect("calls").clone();
        assert_eq!(
            calls,
            vec![
                Call::Clock(42),
                Call::Hostname("web-0".into()),
                Call::Write("/etc/hostname".into(), "web-0\n".into()),
                Call::Write("/etc/resolv.conf".into(), "nameserver 10.96.0.10\n".into()),
                Call::Write("/etc/hosts".into(), "127.0.0.1 localhost\n".into()),
                Call::MountVirtiofs("layers".into(), "/run/moat/layers".into(), true),
                Call::Sysctl("kernel/shmmni".into(), "8192".into()),
                Call::Sysctl("net/ipv4/ip_forward".into(), "1".into()),
            ]
        );
        let e = c
            .setup_sandbox(SetupSandboxRequest {
                hostname: "web-0".into(),
                sysctls: [("../../etc/passwd".to_string(), "x".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect_err("bad sysctl");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = c
            .setup_sandbox(SetupSandboxRequest {
                hostname: "bad host/".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad hostname");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn setup_sandbox_with_a_user_namespace() {
        let rec = Arc::new(Recorder::default());
        let svc = AgentService {
            started: Instant::now(),
            system: rec.clone(),
            containers: Arc::new(crate::containers::Containers::with_dirs(
                "/nonexistent".into(),
                "/nonexistent".into(),
            )),
        };
        let mapping = |host_id, length| moat_proto::agent::IdMapping {
            container_id: 0,
            host_id,
            length,
        };
        let req = |length| SetupSandboxRequest {
            hostname: "web-0".into(),
            userns: Some(moat_proto::agent::UserNamespace {
                uids: vec![mapping(100_000, length)],
                gids: vec![mapping(100_000, 65536)],
            }),
            ..Default::default()
        };
        let e = svc
            .setup_sandbox(Request::new(req(0)))
            .await
            .expect_err("bad mappings");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "user namespace: uid mapping 0 has length 0");
        assert!(
            rec.calls.lock().expect("calls").is_empty(),
            "checked before anything is done"
        );
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED setup_sandbox_with_a_user_namespace: the pod init needs root");
            return;
        }
        svc.setup_sandbox(Request::new(req(65536)))
            .await
            .expect("setup");
        let calls = rec.calls.lock().expect("calls").clone();
        assert_eq!(
            calls[calls.len() - 4..],
            [
                Call::Chown("/etc/hostname".into(), 100_000, 100_000),
                Call::Chown("/etc/resolv.conf".into(), 100_000, 100_000),
                Call::Chown("/etc/hosts".into(), 100_000, 100_000),
                Call::MountMqueue("/dev/mqueue".into()),
            ]
        );
        // The pod has it now: other mappings are refused, the same ones are fine.
        svc.setup_sandbox(Request::new(req(65536)))
            .await
            .expect("again");
        let e = svc
            .containers
            .set_userns(crate::executor::userns::tests::pod(200_000))
            .expect_err("other");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn shutdown_answers_then_powers_off() {
        let (_d, rec, mut c) = start().await;
        c.shutdown(ShutdownRequest {}).await.expect("shutdown");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            rec.calls.lock().expect("calls").last(),
            Some(&Call::PowerOff)
        );
    }
}
