//! The executor's errors. Each says what failed in words a `ContainerStatus` can show,
//! e.g. `exec /bin/nope: No such file or directory`.

use nix::errno::Errno;

/// What went wrong creating, starting or running a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime spec asks for something malformed or unsupported.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A step of the container's setup failed inside the container's process (a mount, a
    /// capability, `execve`...). `what` names the step, e.g. `exec /bin/nope`.
    #[error("{what}: {}", errno.desc())]
    Setup {
        /// The step, e.g. `mount proc on /proc` or `exec /bin/nope`.
        what: String,
        /// Why.
        errno: Errno,
    },
    /// The program named by the process's args is on no directory of `$PATH`.
    #[error("exec {0}: executable file not found in $PATH")]
    NotFound(String),
    /// An operation of the agent's own (outside the container's process) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A cgroup v2 operation failed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The seccomp profile cannot be compiled.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A user or group named by the image config is not in the image.
    #[error("user {spec}: {reason}")]
    User {
        /// The `user[:group]` asked for.
        spec: String,
        /// Why it cannot be resolved.
        reason: String,
    },
    /// The operation does not fit the container's state (e.g. start twice).
    #[error("container {id}: {reason}")]
    State {
        /// The container.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The container's process ended during its setup without saying why.
    #[error("container {0}: the init process exited during setup")]
    Died(String),
}

impl Error {
    /// An `Io` error from a message and an `io::Error`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// An `Io` error from a message and an errno.
    pub(crate) fn errno(what: impl Into<String>, errno: Errno) -> Self {
        Error::Io {
            what: what.into(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        }
    }
}

/// The executor's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
