//! The agent client: one sandbox's agent in moatd's own terms. Every call has a deadline
//! (the configured one plus what the call itself waits for); proto types stay in this
//! file and `streams`; answers are the guest's word, bounded before they are kept.

use std::path::Path;
use std::time::Duration;

use moat_proto::agent as pb;
use moat_proto::agent::agent_client::AgentClient;
use tonic::transport::Channel;

use super::GuestError;
use super::types::*;

/// The agent of one sandbox, in moatd's own terms: every call has a deadline (the
/// configured one, plus what the call itself waits for), and proto types stay here.
#[derive(Clone)]
pub struct GuestClient {
    pub(super) client: AgentClient<Channel>,
    pub(super) timeout: Duration,
}

impl GuestClient {
    /// Wraps a connected client.
    pub fn new(client: AgentClient<Channel>, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Connects through the sandbox's hybrid-vsock socket.
    pub async fn connect(uds: &Path, timeout: Duration) -> Result<Self, GuestError> {
        Ok(Self::new(
            super::vsock::channel(uds, timeout).await?,
            timeout,
        ))
    }

    /// One unary call (or a stream's opening) named `method`, under the deadline, timed
    /// for /metrics.
    pub(super) async fn call<T, F>(
        &self,
        method: &'static str,
        extra: Duration,
        f: F,
    ) -> Result<T, GuestError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = self.timeout + extra;
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(deadline, f).await {
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .map_err(|s| GuestError::from_status(&s, deadline)),
            Err(_) => Err(GuestError::NoAnswer(deadline)),
        };
        let error = result.as_ref().err().map(GuestError::kind);
        crate::metrics::get().agent_call(method, started.elapsed(), error);
        result
    }

    /// The error of a stream item, read against this client's deadline.
    pub(super) fn stream_err(&self, s: &tonic::Status) -> GuestError {
        GuestError::from_status(s, self.timeout)
    }

    pub(super) fn req<T>(&self, msg: T, extra: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout + extra);
        r
    }

    /// Health.
    pub async fn health(&self) -> Result<AgentHealth, GuestError> {
        let r = self.req(pb::HealthRequest {}, Duration::ZERO);
        let mut c = self.client.clone();
        let h = self.call("health", Duration::ZERO, c.health(r)).await?;
        Ok(AgentHealth {
            version: h.version,
            rss_kib: h.rss_kib,
            root_fs: h.root_fs,
        })
    }

    /// SetupSandbox.
    pub async fn setup(&self, s: SandboxSetup) -> Result<(), GuestError> {
        let msg = pb::SetupSandboxRequest {
            hostname: s.hostname,
            resolv_conf: s.resolv_conf,
            hosts: s.hosts,
            time_unix_nanos: s.time_unix_nanos,
            shares: s
                .shares
                .into_iter()
                .map(|m| pb::Share {
                    tag: m.tag,
                    mount_point: m.mount_point,
                    read_only: m.read_only,
                })
                .collect(),
            sysctls: s.sysctls.into_iter().collect(),
            userns: s
                .userns
                .as_ref()
                .map(crate::userns::UserNamespace::to_proto),
        };
        let r = self.req(msg, Duration::ZERO);
        let mut c = self.client.clone();
        self.call("setup_sandbox", Duration::ZERO, c.setup_sandbox(r))
            .await
            .map(|_| ())
    }

    /// Shutdown.
    pub async fn shutdown(&self) -> Result<(), GuestError> {
        let r = self.req(pb::ShutdownRequest {}, Duration::ZERO);
        let mut c = self.client.clone();
        self.call("shutdown", Duration::ZERO, c.shutdown(r))
            .await
            .map(|_| ())
    }

    /// CreateContainer; returns the user the main process runs as.
    pub async fn create_container(&self, k: ContainerCreate) -> Result<ContainerUser, GuestError> {
        let msg = pb::CreateContainerRequest {
            container_id: k.id,
            spec_json: k.spec_json,
            layers: k.layers,
            image_user: k.image_user,
            default_seccomp: k.default_seccomp,
            stdin: k.stdin,
            pid_mode: match &k.pid_namespace {
                PidNamespace::Pod => pb::PidMode::PidPod,
                PidNamespace::Container => pb::PidMode::PidContainer,
                PidNamespace::Target(_) => pb::PidMode::PidTarget,
            } as i32,
            pid_target: match k.pid_namespace {
                PidNamespace::Target(t) => t,
                _ => String::new(),
            },
            strict_groups: k.strict_groups,
        };
        let extra = Duration::from_secs(20);
        let r = self.req(msg, extra);
        let mut c = self.client.clone();
        let made = self
            .call("create_container", extra, c.create_container(r))
            .await?;
        // The guest's word, kept in the record and reported to kubelet: no more groups than
        // Linux lets a process have (NGROUPS_MAX).
        Ok(ContainerUser {
            uid: made.uid,
            gid: made.gid,
            groups: made.groups.into_iter().take(65_536).collect(),
        })
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), GuestError> {
        let r = self.req(
            pb::ContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        self.call("start_container", Duration::ZERO, c.start_container(r))
            .await
            .map(|_| ())
    }

    /// WaitContainer: up to `wait`; `None` if still running.
    pub async fn wait_container(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<ExitInfo>, GuestError> {
        let ms = wait.as_millis().min(u32::MAX as u128) as u32;
        let r = self.req(
            pb::WaitContainerRequest {
                container_id: id.into(),
                timeout_ms: ms,
            },
            wait,
        );
        let mut c = self.client.clone();
        let w = self
            .call("wait_container", wait, c.wait_container(r))
            .await?;
        Ok(w.exited.then_some(ExitInfo {
            code: w.exit_code,
            oom_killed: w.oom_killed,
            finished_at: w.finished_at,
            start_error: w.error,
        }))
    }

    /// SignalContainer.
    pub async fn signal_container(&self, id: &str, signal: i32) -> Result<(), GuestError> {
        let r = self.req(
            pb::SignalContainerRequest {
                container_id: id.into(),
                signal,
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        self.call("signal_container", Duration::ZERO, c.signal_container(r))
            .await
            .map(|_| ())
    }

    /// ListContainers. The guest's answer is bounded by the message cap; ids that are not
    /// container ids (64 hex digits) are dropped.
    pub async fn list_containers(&self) -> Result<Vec<GuestContainer>, GuestError> {
        let r = self.req(pb::ListContainersRequest {}, Duration::ZERO);
        let mut c = self.client.clone();
        let l = self
            .call("list_containers", Duration::ZERO, c.list_containers(r))
            .await?;
        Ok(l.containers
            .into_iter()
            .filter(|e| {
                e.container_id.len() == 64 && e.container_id.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(|e| GuestContainer {
                id: e.container_id,
                started: e.started,
                exited: e.exited,
            })
            .collect())
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str) -> Result<(), GuestError> {
        let r = self.req(
            pb::ContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        self.call("remove_container", Duration::ZERO, c.remove_container(r))
            .await
            .map(|_| ())
    }

    /// ExecSync with a timeout for the command itself.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, GuestError> {
        let ms = timeout.as_millis().min(u32::MAX as u128) as u32;
        let r = self.req(
            pb::ExecSyncRequest {
                container_id: id.into(),
                cmd,
                timeout_ms: ms,
            },
            timeout,
        );
        let mut c = self.client.clone();
        let x = self.call("exec_sync", timeout, c.exec_sync(r)).await?;
        Ok(ExecOutcome {
            stdout: x.stdout,
            stderr: x.stderr,
            exit_code: x.exit_code,
            timed_out: x.timed_out,
        })
    }

    /// Output: the records of the main process's stdout and stderr. Only opening the
    /// stream has a deadline; the stream lasts as long as the container writes.
    pub async fn output(&self, id: &str) -> Result<OutputStream, GuestError> {
        let r = tonic::Request::new(pb::ContainerRequest {
            container_id: id.into(),
        });
        let mut c = self.client.clone();
        let s = self.call("output", Duration::ZERO, c.output(r)).await?;
        let timeout = self.timeout;
        Ok(Box::pin(futures::StreamExt::map(s, move |chunk| {
            chunk
                .map_err(|s| GuestError::from_status(&s, timeout))
                .map(|c| OutputRecord {
                    stderr: c.stream == pb::output_chunk::Stream::Stderr as i32,
                    data: c.data,
                    time: c.time,
                })
        })))
    }

    /// SetupNetwork.
    pub async fn setup_network(&self, n: GuestNetwork) -> Result<(), GuestError> {
        let msg = pb::SetupNetworkRequest {
            interfaces: n
                .interfaces
                .into_iter()
                .map(|i| pb::Interface {
                    name: i.name,
                    mac: i.mac,
                    mtu: i.mtu,
                    addresses: i.addresses,
                })
                .collect(),
            routes: n
                .routes
                .into_iter()
                .map(|r| pb::Route {
                    destination: r.destination,
                    gateway: r.gateway,
                    device: r.device,
                })
                .collect(),
        };
        let r = self.req(msg, Duration::ZERO);
        let mut c = self.client.clone();
        self.call("setup_network", Duration::ZERO, c.setup_network(r))
            .await
            .map(|_| ())
    }

    /// UpdateResources.
    pub async fn update_resources(
        &self,
        id: &str,
        cpu: Option<(i64, i64)>,
        memory: Option<i64>,
    ) -> Result<(), GuestError> {
        let (quota, period) = cpu.unwrap_or((0, 100_000));
        let msg = pb::UpdateResourcesRequest {
            container_id: id.into(),
            cpu_quota: quota,
            cpu_period: period.max(1) as u64,
            memory_limit: memory.unwrap_or(0),
        };
        let r = self.req(msg, Duration::ZERO);
        let mut c = self.client.clone();
        self.call("update_resources", Duration::ZERO, c.update_resources(r))
            .await
            .map(|_| ())
    }

    /// Stats.
    pub async fn stats(&self, id: &str) -> Result<Usage, GuestError> {
        let r = self.req(
            pb::ContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        let s = self.call("stats", Duration::ZERO, c.stats(r)).await?;
        Ok(Usage {
            timestamp: s.timestamp,
            cpu_nanos: s.cpu_usage_nanos,
            memory_bytes: s.memory_usage_bytes,
            working_set_bytes: s.memory_working_set_bytes,
            pids: s.pids,
        })
    }
}
