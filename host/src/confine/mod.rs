//! Confinement of the host processes that serve a pod: QEMU, the vhost-user vsock and
//! virtio-fs back-ends, and the built-in VMM. The guest can send any of them any bytes, so each runs as if it
//! were already the guest's: in the spirit of Firecracker's jailer and virtiofsd's
//! sandbox, one mechanism for every kind.
//!
//! The built-in VMM (`moatd vmm`), whose devices run in its own process, is confined the
//! same way, as root with the virtio-fs capabilities (like the virtio-fs back-end), and
//! then confines itself further once its VM is built (`moat_vmm::jail`: capabilities
//! again, and its own, narrower seccomp filter).
//!
//! moatd starts such a process as `moatd jail --spec <json> -- <program> <args>` (`wrap`).
//! The jail (`launch`):
//! - gives it PID, mount, network, IPC, UTS and cgroup namespaces of its own: it is PID 1
//!   of a namespace holding nothing else, in an empty network namespace (it talks over
//!   Unix sockets bound into its root and descriptors passed in: the pod's tap reaches
//!   QEMU as an open descriptor), so host abstract sockets are out of reach too;
//! - builds a minimal root (`root`): a tmpfs holding only what `plan` lists for that kind
//!   (its binary and libraries read-only, the files and sockets of its own pod, a few
//!   device nodes, a read-only procfs of its own PID namespace) and pivots into it;
//! - runs it as the pod's own uid with no capability where the process can work without
//!   root (QEMU, the vsock back-end: `uid`), and otherwise as root with capabilities
//!   dropped to the documented minimum (the virtio-fs back-end, which creates files as the
//!   guest's users: `moat_vmm::jail::caps::for_shares`);
//! - sets no_new_privs and installs the seccomp allowlist of that kind (`seccomp`); a
//!   forbidden syscall kills the process, and the jail's waiting parent says so in the
//!   process's log;
//! - copies the process's output into a capped log (`OutputLog`), from its waiting parent;
//! - fails hard: a step that cannot be applied ends the launch with exit status 126 and
//!   a line saying which step, and the pod does not start.
//!
//! The waiting parent stays outside the namespaces (it is how moatd tracks, signals and
//! adopts the process after a restart): it forwards SIGTERM, SIGINT and SIGHUP (as
//! SIGKILL to the back-ends, which, as PID 1 with no handler, would never get them), keeps
//! only CAP_KILL, and runs under a seccomp filter of its own; if it is killed, the
//! confined process gets SIGKILL (parent-death signal).

pub mod launch;
pub mod plan;
pub mod root;
pub mod seccomp;
pub mod uid;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

pub use plan::PodJail;

/// The `[confinement]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfinementConfig {
    /// Confine QEMU, the vhost-user back-ends and the built-in VMM (namespaces, minimal
    /// root, pod uid, capabilities, seccomp). Off only to measure what confinement costs.
    pub enabled: bool,
    /// The first uid (and gid) given to pods' unprivileged processes.
    pub uid_base: u32,
    /// How many pod uids there are (at most this many confined pods at once).
    pub uid_count: u32,
    /// The most each confined process's own output (its log: `vmm.log`, `vsock.log`,
    /// `fs-<tag>.log`) keeps on disk: the first half, then a rotating tail.
    pub output_log_max_bytes: u64,
}

impl Default for ConfinementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            uid_base: 2_100_000_000,
            uid_count: 65_536,
            output_log_max_bytes: 1 << 20,
        }
    }
}

impl ConfinementConfig {
    /// The pod uid range, when confinement is on.
    pub fn uid_range(&self) -> Option<uid::UidRange> {
        self.enabled.then_some(uid::UidRange {
            base: self.uid_base,
            count: self.uid_count,
        })
    }
}

/// What kind of process a jail holds: it decides the seccomp allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// QEMU (`-M microvm`).
    Qemu,
    /// `moatd vsock-backend`.
    VsockBackend,
    /// `moatd fs-backend`.
    FsBackend,
    /// `moatd vmm`, the built-in VMM, with its devices in process.
    Vmm,
}

impl Kind {
    /// The name used in logs and in the jail's root directory.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Qemu => "qemu",
            Kind::VsockBackend => "vsock-backend",
            Kind::FsBackend => "fs-backend",
            Kind::Vmm => "vmm",
        }
    }
}

/// A path bound into the jail at its own absolute path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bind {
    /// The host path (absolute, existing): a directory, a file, a socket or (with `dev`)
    /// a device node.
    pub path: PathBuf,
    /// Bound read-only.
    pub read_only: bool,
    /// Programs may run from it (otherwise noexec).
    #[serde(default)]
    pub exec: bool,
    /// Device nodes on it may be opened (otherwise nodev).
    #[serde(default)]
    pub dev: bool,
}

impl Bind {
    /// A read-only, noexec, nodev bind.
    pub fn read_only(path: impl Into<PathBuf>) -> Bind {
        Bind {
            path: path.into(),
            read_only: true,
            exec: false,
            dev: false,
        }
    }
    /// A writable, noexec, nodev bind.
    pub fn writable(path: impl Into<PathBuf>) -> Bind {
        Bind {
            read_only: false,
            ..Bind::read_only(path)
        }
    }
    /// A read-only bind programs may run from.
    pub fn program(path: impl Into<PathBuf>) -> Bind {
        Bind {
            exec: true,
            ..Bind::read_only(path)
        }
    }
    /// A device node, read-write.
    pub fn device(path: impl Into<PathBuf>) -> Bind {
        Bind {
            dev: true,
            ..Bind::writable(path)
        }
    }
}

/// Everything the jail needs to confine one process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JailSpec {
    /// The kind of process.
    pub kind: Kind,
    /// The sandbox it serves (for logs).
    pub sandbox: String,
    /// An empty directory, not under any bind, on which the jail mounts its root.
    pub root: PathBuf,
    /// What the root holds.
    pub binds: Vec<Bind>,
    /// Host symlinks recreated at the root (`/lib` -> `usr/lib` on merged-/usr hosts).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// The uid and gid to run as; `None` keeps root (with `caps` only).
    pub user: Option<(u32, u32)>,
    /// Supplementary groups (with `user`: the group of /dev/kvm, for instance).
    pub groups: Vec<u32>,
    /// Capabilities kept (root only; a process given `user` keeps none).
    pub caps: Vec<moat_vmm::jail::Cap>,
    /// Where the process's output goes, capped; `None` leaves it on the jail's own
    /// stdout and stderr.
    #[serde(default)]
    pub output: Option<OutputLog>,
}

/// A confined process's output (stdout and stderr), which the guest can make it write
/// without end (a warning per bad packet, per bad request): the jail's parent copies it
/// through a pipe into a capped log (`moat_devices::console_log`: the head, then a
/// rotating tail), outside the jail, so the process itself never holds the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputLog {
    /// The log file (its tail segments are `<path>.1` and `<path>.2`).
    pub path: PathBuf,
    /// The most the log keeps on disk.
    pub max_bytes: u64,
}

/// Why a process could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// A step of the confinement failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The spec is unusable.
    #[error("{0}")]
    Spec(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// Dropping capabilities failed.
    #[error(transparent)]
    Caps(#[from] moat_vmm::jail::JailError),
}

impl ConfineError {
    /// A closure for `map_err` on a failed `step`.
    pub fn step<E: Into<std::io::Error>>(step: impl Into<String>) -> impl FnOnce(E) -> Self {
        let step = step.into();
        move |e| ConfineError::Step {
            step,
            source: e.into(),
        }
    }
}

/// The command that runs `program` with `args` confined as `spec` says: `moatd jail`,
/// this moatd's.
pub fn wrap(
    spec: &JailSpec,
    program: impl Into<OsString>,
    args: impl IntoIterator<Item = OsString>,
) -> std::io::Result<Command> {
    wrap_as(&plan::moatd_binary()?, spec, program, args)
}

/// `wrap`, with the `moatd` binary given (tests that are not moatd themselves).
pub fn wrap_as(
    moatd: &std::path::Path,
    spec: &JailSpec,
    program: impl Into<OsString>,
    args: impl IntoIterator<Item = OsString>,
) -> std::io::Result<Command> {
    let json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(moatd);
    cmd.arg("jail").arg("--spec").arg(json).arg("--");
    cmd.arg(program.into());
    cmd.args(args);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_command_line() {
        let spec = JailSpec {
            kind: Kind::FsBackend,
            sandbox: "abc".into(),
            root: "/run/moat/vm/abc/jail/fs-0".into(),
            binds: vec![Bind::program("/usr"), Bind::device("/dev/null")],
            symlinks: vec![("/lib".into(), "usr/lib".into())],
            user: None,
            groups: vec![],
            caps: vec![moat_vmm::jail::Cap::DacOverride],
            output: Some(OutputLog {
                path: "/run/moat/vm/abc/fs-layers.log".into(),
                max_bytes: 4096,
            }),
        };
        let cmd = wrap(&spec, "/bin/true", ["x".into()]).expect("wrap");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        assert_eq!(args[0], "jail");
        assert_eq!(args[3], "--");
        assert_eq!(args[4], "/bin/true");
        let back: JailSpec = serde_json::from_str(args[2].to_str().expect("utf-8")).expect("json");
        assert_eq!(back, spec);
    }
}
