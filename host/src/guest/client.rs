//! Reaching a sandbox's agent: hybrid vsock (connect to the sandbox's vsock Unix socket,
//! `CONNECT <port>\n`, wait for `OK <port>\n`), then gRPC over that stream. Every call
//! carries a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use moat_proto::agent::agent_client::AgentClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tonic::transport::Channel;

mod streams;
pub use streams::{ExecEvent, ExecEvents, ExecSpec, PortEvents, StdinEvent};

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

/// What the agent reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHealth {
    /// The agent's version.
    pub version: String,
    /// Its resident set size, KiB.
    pub rss_kib: u64,
    /// The guest root's filesystem type.
    pub root_fs: String,
}

/// A virtio-fs share for the guest to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    /// The virtio-fs tag.
    pub tag: String,
    /// Where the guest mounts it.
    pub mount_point: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The pod identity the guest is given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxSetup {
    /// Hostname.
    pub hostname: String,
    /// /etc/resolv.conf.
    pub resolv_conf: String,
    /// /etc/hosts.
    pub hosts: String,
    /// The host clock, ns since the epoch.
    pub time_unix_nanos: i64,
    /// Shares to mount.
    pub shares: Vec<ShareMount>,
    /// The pod's sysctls, set in the VM.
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// The pod's user namespace, when it has one.
    pub userns: Option<crate::sandbox::userns::UserNamespace>,
}

/// A container for the agent to create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerCreate {
    /// Container id.
    pub id: String,
    /// OCI runtime spec JSON.
    pub spec_json: Vec<u8>,
    /// Layer DiffID hex digests, bottom first.
    pub layers: Vec<String>,
    /// Image user to resolve in the guest.
    pub image_user: String,
    /// Apply the RuntimeDefault seccomp profile.
    pub default_seccomp: bool,
    /// Keep stdin open.
    pub stdin: bool,
    /// The PID namespace it lives in.
    pub pid_namespace: PidNamespace,
    /// No groups from the image's /etc/group (SupplementalGroupsPolicy Strict).
    pub strict_groups: bool,
}

/// The user a container's main process runs as, as the guest resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ContainerUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Every group, the primary first.
    pub groups: Vec<u32>,
}

/// A container's PID namespace (the CRI's pid NamespaceMode, NODE aside: a VM pod has no
/// host PID namespace to share).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PidNamespace {
    /// The pod's, shared by its containers, whose PID 1 is the agent's pod init (POD).
    #[default]
    Pod,
    /// Its own: its main process is PID 1 (CONTAINER).
    Container,
    /// That of the container with this id (TARGET).
    Target(String),
}

/// How a container's main process ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitInfo {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// The OOM killer struck.
    pub oom_killed: bool,
    /// When, ns since the epoch.
    pub finished_at: i64,
    /// Why it could not start, if it could not.
    pub start_error: String,
}

/// A guest interface to configure (matched by MAC).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestInterface {
    /// Its name in the guest.
    pub name: String,
    /// Its MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Addresses, CIDR notation.
    pub addresses: Vec<String>,
}

/// A guest route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestRoute {
    /// Destination, CIDR notation.
    pub destination: String,
    /// Next hop, or empty for on-link.
    pub gateway: String,
    /// Output interface.
    pub device: String,
}

/// The guest's network configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestNetwork {
    /// Interfaces.
    pub interfaces: Vec<GuestInterface>,
    /// Routes.
    pub routes: Vec<GuestRoute>,
}

/// The result of ExecSync.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutcome {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
    /// It ran past its timeout and was killed.
    pub timed_out: bool,
}

/// A container's cgroup usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// When, ns since the epoch.
    pub timestamp: i64,
    /// CPU time, ns.
    pub cpu_nanos: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Working set, bytes.
    pub working_set_bytes: u64,
    /// Processes.
    pub pids: u64,
}

/// One piece of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// From stderr (else stdout).
    pub stderr: bool,
    /// The bytes.
    pub data: Vec<u8>,
    /// When the agent read them, ns since the epoch.
    pub time: i64,
}

/// A stream of output records.
pub type OutputStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<OutputRecord, tonic::Status>> + Send>>;

/// The agent of one sandbox, in moatd's own terms: every call has a deadline (the
/// configured one, plus what the call itself waits for), and proto types stay here.
#[derive(Clone)]
pub struct Agent {
    client: AgentClient<Channel>,
    timeout: Duration,
}

use moat_proto::agent as pb;

impl Agent {
    /// Wraps a connected client.
    pub fn new(client: AgentClient<Channel>, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Connects through the sandbox's hybrid-vsock socket.
    pub async fn connect(uds: &Path, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        Ok(Self::new(channel(uds, timeout).await?, timeout))
    }

    async fn call<T, F>(&self, extra: Duration, f: F) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout + extra, f).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the agent did not answer in time",
            )),
        }
    }

    fn req<T>(&self, msg: T, extra: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout + extra);
        r
    }

    /// Health.
    pub async fn health(&mut self) -> Result<AgentHealth, tonic::Status> {
        let r = self.req(pb::HealthRequest {}, Duration::ZERO);
        let mut c = self.client.clone();
        let h = self.call(Duration::ZERO, c.health(r)).await?;
        Ok(AgentHealth {
            version: h.version,
            rss_kib: h.rss_kib,
            root_fs: h.root_fs,
        })
    }

    /// SetupSandbox.
    pub async fn setup(&mut self, s: SandboxSetup) -> Result<(), tonic::Status> {
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
                .map(crate::sandbox::userns::UserNamespace::to_proto),
        };
        let r = self.req(msg, Duration::ZERO);
        let mut c = self.client.clone();
        self.call(Duration::ZERO, c.setup_sandbox(r))
            .await
            .map(|_| ())
    }

    /// Shutdown.
    pub async fn shutdown(&mut self) -> Result<(), tonic::Status> {
        let r = self.req(pb::ShutdownRequest {}, Duration::ZERO);
        let mut c = self.client.clone();
        self.call(Duration::ZERO, c.shutdown(r)).await.map(|_| ())
    }

    /// CreateContainer; returns the user the main process runs as.
    pub async fn create_container(
        &mut self,
        k: ContainerCreate,
    ) -> Result<ContainerUser, tonic::Status> {
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
        let made = self.call(extra, c.create_container(r)).await?;
        // The guest's word, kept in the record and reported to kubelet: no more groups than
        // Linux lets a process have (NGROUPS_MAX).
        Ok(ContainerUser {
            uid: made.uid,
            gid: made.gid,
            groups: made.groups.into_iter().take(65_536).collect(),
        })
    }

    /// StartContainer.
    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let r = self.req(
            pb::ContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        self.call(Duration::ZERO, c.start_container(r))
            .await
            .map(|_| ())
    }

    /// WaitContainer: up to `wait`; `None` if still running.
    pub async fn wait_container(
        &mut self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<ExitInfo>, tonic::Status> {
        let ms = wait.as_millis().min(u32::MAX as u128) as u32;
        let r = self.req(
            pb::WaitContainerRequest {
                container_id: id.into(),
                timeout_ms: ms,
            },
            wait,
        );
        let mut c = self.client.clone();
        let w = self.call(wait, c.wait_container(r)).await?;
        Ok(w.exited.then_some(ExitInfo {
            code: w.exit_code,
            oom_killed: w.oom_killed,
            finished_at: w.finished_at,
            start_error: w.error,
        }))
    }

    /// SignalContainer.
    pub async fn signal_container(&mut self, id: &str, signal: i32) -> Result<(), tonic::Status> {
        let r = self.req(
            pb::SignalContainerRequest {
                container_id: id.into(),
                signal,
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        self.call(Duration::ZERO, c.signal_container(r))
            .await
            .map(|_| ())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let r = self.req(
            pb::ContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        self.call(Duration::ZERO, c.remove_container(r))
            .await
            .map(|_| ())
    }

    /// ExecSync with a timeout for the command itself.
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, tonic::Status> {
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
        let x = self.call(timeout, c.exec_sync(r)).await?;
        Ok(ExecOutcome {
            stdout: x.stdout,
            stderr: x.stderr,
            exit_code: x.exit_code,
            timed_out: x.timed_out,
        })
    }

    /// Output: the records of the main process's stdout and stderr. Only opening the
    /// stream has a deadline; the stream lasts as long as the container writes.
    pub async fn output(&mut self, id: &str) -> Result<OutputStream, tonic::Status> {
        let r = tonic::Request::new(pb::ContainerRequest {
            container_id: id.into(),
        });
        let mut c = self.client.clone();
        let s = self.call(Duration::ZERO, c.output(r)).await?;
        Ok(Box::pin(futures::StreamExt::map(s, |chunk| {
            chunk.map(|c| OutputRecord {
                stderr: c.stream == pb::output_chunk::Stream::Stderr as i32,
                data: c.data,
                time: c.time,
            })
        })))
    }

    /// SetupNetwork.
    pub async fn setup_network(&mut self, n: GuestNetwork) -> Result<(), tonic::Status> {
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
        self.call(Duration::ZERO, c.setup_network(r))
            .await
            .map(|_| ())
    }

    /// UpdateResources.
    pub async fn update_resources(
        &mut self,
        id: &str,
        cpu: Option<(i64, i64)>,
        memory: Option<i64>,
    ) -> Result<(), tonic::Status> {
        let (quota, period) = cpu.unwrap_or((0, 100_000));
        let msg = pb::UpdateResourcesRequest {
            container_id: id.into(),
            cpu_quota: quota,
            cpu_period: period.max(1) as u64,
            memory_limit: memory.unwrap_or(0),
        };
        let r = self.req(msg, Duration::ZERO);
        let mut c = self.client.clone();
        self.call(Duration::ZERO, c.update_resources(r))
            .await
            .map(|_| ())
    }

    /// Stats.
    pub async fn stats(&mut self, id: &str) -> Result<Usage, tonic::Status> {
        let r = self.req(
            pb::ContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        );
        let mut c = self.client.clone();
        let s = self.call(Duration::ZERO, c.stats(r)).await?;
        Ok(Usage {
            timestamp: s.timestamp,
            cpu_nanos: s.cpu_usage_nanos,
            memory_bytes: s.memory_usage_bytes,
            working_set_bytes: s.memory_working_set_bytes,
            pids: s.pids,
        })
    }
}
