//! CRI v1 RuntimeService: each call checks and translates its request, asks the owner
//! (`Pods`, the sandbox and container managers, the pod CIDR, the streaming server) and
//! translates the answer; errors map to gRPC codes in `status`. Pod metrics are shaped in
//! `metrics`; CheckpointContainer alone answers Unimplemented.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::container;
use super::events::EventStream;
use super::pod_sandbox;
use super::status::checkpoint_unsupported;
use crate::config::{CgroupDriver, Config};
use crate::containers::ContainerManager;
use crate::network::cni_config::default_network;
use crate::network::pod_cidr::PodCidr;
use crate::pods::Pods;
use crate::sandbox::SandboxManager;
use crate::store::Store;

/// The gRPC service.
pub struct CriRuntimeService {
    config: Config,
    pod_cidr: PodCidr,
    pods: Pods,
    sandboxes: SandboxManager,
    containers: ContainerManager,
    streaming: Option<std::sync::Arc<crate::streaming::StreamingServer>>,
}

impl CriRuntimeService {
    /// From the config, the state store and the sandbox manager.
    pub fn new(
        config: Config,
        store: Store,
        sandboxes: SandboxManager,
        containers: ContainerManager,
    ) -> Self {
        Self {
            pod_cidr: PodCidr::new(store, config.cni.conf_dir.clone()),
            pods: Pods::new(sandboxes.clone(), containers.clone()),
            config,
            sandboxes,
            containers,
            streaming: None,
        }
    }

    /// Serves Exec, Attach and PortForward URLs on `server`.
    pub fn with_streaming(
        mut self,
        server: std::sync::Arc<crate::streaming::StreamingServer>,
    ) -> Self {
        self.streaming = Some(server);
        self
    }

    fn streaming(&self) -> Result<&crate::streaming::StreamingServer, Status> {
        self.streaming
            .as_deref()
            .ok_or_else(|| Status::unavailable("the streaming server is not running"))
    }

    /// A container that exists and runs, for Exec and Attach.
    fn running_container(&self, id: &str) -> Result<String, Status> {
        let r = self
            .containers
            .get(id)?
            .ok_or_else(|| Status::not_found(format!("container {id} not found")))?;
        if r.state != crate::containers::state::ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running (it is {:?})",
                r.id, r.state
            )));
        }
        Ok(r.id)
    }

    /// RuntimeReady and NetworkReady, from the same evaluation as `moatd check`.
    async fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        let config = self.config.clone();
        let report = tokio::task::spawn_blocking(move || crate::check::run(&config))
            .await
            .unwrap_or_else(|e| crate::check::Report {
                findings: vec![crate::check::Finding::missing(
                    "host check",
                    format!("the host check failed: {e}"),
                    true,
                )],
            });
        let runtime = match report.runtime_problem() {
            None => cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            Some(why) => cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: false,
                reason: "GuestNotReady".into(),
                message: why,
            },
        };
        let network = match report.network_problem() {
            None => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                ..Default::default()
            },
            Some(why) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: {why}"),
            },
        };
        vec![runtime, network]
    }
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for CriRuntimeService {
    type GetContainerEventsStream = EventStream;

    #[instrument(skip_all)]
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "moat".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    #[instrument(skip_all)]
    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        let mut info = HashMap::new();
        if verbose {
            let pod_cidr = self.pod_cidr.get();
            let v = serde_json::json!({
                "config": self.config,
                "podCIDR": pod_cidr,
                "cniNetwork": default_network(&self.config.cni.conf_dir).ok().map(|n| serde_json::json!({"name": n.name, "file": n.file})),
                "runtimeHandlers": self.sandboxes.handlers_info(),
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: self.conditions().await,
            }),
            info,
            runtime_handlers: self
                .config
                .runtime
                .handlers
                .keys()
                .map(|name| cri::RuntimeHandler {
                    name: name.clone(),
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: true,
                        user_namespaces: self.sandboxes.handler_has_user_namespaces(name),
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    #[instrument(skip_all)]
    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let driver = match self.config.runtime.cgroup_driver {
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    #[instrument(skip_all, fields(pod_cidr))]
    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        tracing::Span::current().record("pod_cidr", cidr.as_str());
        self.pod_cidr.update(&cidr).await?;
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    #[instrument(skip_all)]
    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.containers.subscribe();
        let (sandboxes, containers) = (self.sandboxes.clone(), self.containers.clone());
        Ok(Response::new(super::events::stream(
            rx, sandboxes, containers,
        )))
    }

    #[instrument(skip_all, fields(pod, sandbox))]
    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let mut req = pod_sandbox::run_request(request.into_inner())?;
        req.pod_cidr = self.pod_cidr.get();
        tracing::Span::current().record(
            "pod",
            format!("{}/{}", req.metadata.namespace, req.metadata.name).as_str(),
        );
        let id = self.sandboxes.run(req).await?;
        tracing::Span::current().record("sandbox", id.as_str());
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    #[instrument(skip_all, fields(sandbox))]
    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        tracing::Span::current().record("sandbox", id.as_str());
        self.pods.stop(&id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    #[instrument(skip_all, fields(sandbox))]
    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        tracing::Span::current().record("sandbox", id.as_str());
        self.pods.remove(&id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    #[instrument(skip_all, fields(sandbox))]
    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("sandbox", req.pod_sandbox_id.as_str());
        let r = self.sandboxes.get(&req.pod_sandbox_id)?.ok_or_else(|| {
            Status::not_found(format!("pod sandbox {} not found", req.pod_sandbox_id))
        })?;
        let mut info = HashMap::new();
        if req.verbose {
            let mut agent_rss = None;
            let mut agent_root = None;
            let mut guest_containers = None;
            if r.state.is_ready()
                && let Ok(a) = self.sandboxes.agent(&r.id).await
                && let Ok(h) = a.health().await
            {
                agent_rss = Some(h.rss_kib);
                agent_root = Some(h.root_fs);
                // What the guest itself holds, to hold against ListContainers.
                guest_containers = a.list_containers().await.ok().map(|l| {
                    l.into_iter()
                        .map(|c| serde_json::json!({"id": c.id, "started": c.started, "exited": c.exited}))
                        .collect::<Vec<_>>()
                });
            }
            let v = serde_json::json!({
                "vcpus": r.vcpus,
                "memoryMiB": r.memory_mib,
                "vm": r.vm,
                "hostname": r.hostname,
                "agentRssKiB": agent_rss,
                "agentRootFs": agent_root,
                "guestContainers": guest_containers,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(pod_sandbox::status(&r)),
            info,
            containers_statuses: vec![],
            timestamp: crate::time::now_nanos(),
        }))
    }

    #[instrument(skip_all)]
    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let items = self
            .sandboxes
            .list()?
            .iter()
            .filter(|r| pod_sandbox::matches(r, &filter))
            .map(pod_sandbox::item)
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    #[instrument(skip_all, fields(sandbox, container))]
    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = container::create_request(request.into_inner())?;
        tracing::Span::current().record("sandbox", req.sandbox_id.as_str());
        let id = self.containers.create(req).await?;
        tracing::Span::current().record("container", id.as_str());
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    #[instrument(skip_all, fields(container))]
    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        tracing::Span::current().record("container", id.as_str());
        self.containers.start(&id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    #[instrument(skip_all, fields(container))]
    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("container", req.container_id.as_str());
        let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
        self.containers.stop(&req.container_id, timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    #[instrument(skip_all, fields(container))]
    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        tracing::Span::current().record("container", id.as_str());
        self.containers.remove(&id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    #[instrument(skip_all)]
    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self
            .containers
            .list()?
            .iter()
            .filter(|r| container::matches(r, &filter))
            .map(container::item)
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    #[instrument(skip_all, fields(container))]
    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("container", req.container_id.as_str());
        let r = self.containers.get(&req.container_id)?.ok_or_else(|| {
            Status::not_found(format!("container {} not found", req.container_id))
        })?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container::status(&r)),
            info: HashMap::new(),
        }))
    }

    #[instrument(skip_all, fields(container))]
    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("container", req.container_id.as_str());
        let res = req.linux.unwrap_or_default();
        let cpu = (res.cpu_quota > 0).then_some((res.cpu_quota, res.cpu_period.max(1)));
        let mem = (res.memory_limit_in_bytes > 0).then_some(res.memory_limit_in_bytes);
        self.containers
            .update_resources(&req.container_id, cpu, mem)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    #[instrument(skip_all, fields(container))]
    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        tracing::Span::current().record("container", id.as_str());
        self.containers.reopen_log(&id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    #[instrument(skip_all, fields(container))]
    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("container", req.container_id.as_str());
        let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
        let r = self
            .containers
            .exec_sync(&req.container_id, req.cmd, timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        }))
    }

    #[instrument(skip_all, fields(container))]
    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let mut r = super::streaming::exec_request(request.into_inner())?;
        tracing::Span::current().record("container", r.container_id.as_str());
        r.container_id = self.running_container(&r.container_id)?;
        let url = super::streaming::url(self.streaming()?, crate::streaming::Request::Exec(r))?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    #[instrument(skip_all, fields(container))]
    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let mut r = super::streaming::attach_request(request.into_inner())?;
        tracing::Span::current().record("container", r.container_id.as_str());
        r.container_id = self.running_container(&r.container_id)?;
        let url = super::streaming::url(self.streaming()?, crate::streaming::Request::Attach(r))?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    #[instrument(skip_all, fields(sandbox))]
    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let mut r = super::streaming::port_forward_request(request.into_inner())?;
        tracing::Span::current().record("sandbox", r.sandbox_id.as_str());
        let sandbox = self
            .sandboxes
            .get(&r.sandbox_id)?
            .ok_or_else(|| Status::not_found(format!("pod sandbox {} not found", r.sandbox_id)))?;
        if sandbox.state != crate::sandbox::state::SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready (it is {:?})",
                sandbox.id, sandbox.state
            )));
        }
        r.sandbox_id = sandbox.id;
        let url =
            super::streaming::url(self.streaming()?, crate::streaming::Request::PortForward(r))?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    #[instrument(skip_all, fields(container))]
    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        tracing::Span::current().record("container", id.as_str());
        let (r, s) = self.containers.stats(&id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(container::stats(&r, s.as_ref())),
        }))
    }

    #[instrument(skip_all)]
    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = cri::ContainerFilter {
            id: f.id,
            pod_sandbox_id: f.pod_sandbox_id,
            label_selector: f.label_selector,
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
        };
        let wanted: Vec<_> = self
            .containers
            .list()?
            .into_iter()
            .filter(|r| container::matches(r, &filter))
            .collect();
        // Asked at once: a hung guest costs the list one agent deadline. A container that
        // exits meanwhile is simply left out.
        let asked = wanted.iter().map(|r| self.containers.stats(&r.id));
        let stats = futures::future::join_all(asked)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .map(|(r, s)| container::stats(&r, s.as_ref()))
            .collect();
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    #[instrument(skip_all, fields(sandbox))]
    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        tracing::Span::current().record("sandbox", id.as_str());
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "PodSandboxStats needs a pod_sandbox_id",
            ));
        }
        let s = self.pods.stats(&id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(pod_sandbox::stats(&s)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let all = self
            .pods
            .list_stats(|r| pod_sandbox::stats_match(r, &f))
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse {
            stats: all.iter().map(pod_sandbox::stats).collect(),
        }))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(checkpoint_unsupported())
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: super::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let all = self.pods.list_stats(|_| true).await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: all.iter().map(super::metrics::pod_metrics).collect(),
        }))
    }
}
