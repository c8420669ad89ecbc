//! The host's own types for what goes to and comes from the guest's agent; the proto
//! types stay in `client`.

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
    pub userns: Option<crate::userns::UserNamespace>,
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
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<OutputRecord, super::GuestError>> + Send>>;

/// A container the guest has, as its agent lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestContainer {
    /// Its id (the guest's word: checked against moatd's records, never used as a path).
    pub id: String,
    /// StartContainer reached it.
    pub started: bool,
    /// Its process has ended.
    pub exited: bool,
}
