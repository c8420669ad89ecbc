//! Confinement of the VMM process, in the spirit of Firecracker's jailer, in two steps:
//!
//! 1. `confine` (mount namespace, capabilities, no_new_privs): the process gets a mount
//!    namespace of its own whose root is an empty tmpfs on `JailConfig::root`, holding only
//!    what the VMM opens by path once the VM is built (see `Confinement::for_vm`), each at
//!    its own absolute host path, plus `/proc/self/{fd,status}`; it keeps only the
//!    capabilities the virtio-fs passthrough needs (none without shares), with the
//!    mounts the host makes later under a kept directory still showing (see `mounts`).
//!    Mount namespaces, capabilities and
//!    no_new_privs belong to a *thread*: this must run before the VMM starts any thread of
//!    its own (the threads started later inherit them from the thread that starts them),
//!    so the builder calls it once the VM and its devices are built, before the control
//!    socket's thread starts.
//! 2. `lock_down` (seccomp): installs the allowlist (`seccomp`) on every thread of the
//!    process (TSYNC) before the vCPUs run the guest; threads started later inherit it. A
//!    forbidden syscall ends the VMM with a message naming it (`sigsys`).

pub mod caps;
pub mod mounts;
pub mod seccomp;
pub mod sigsys;

use std::path::PathBuf;

use crate::config::{JailConfig, VmmConfig};

pub use caps::Cap;
pub use mounts::Keep;

/// Why the VMM could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail root is unusable.
    #[error(
        "jail root {}: {why}; moatd must give the VMM an existing, absolute directory of its own",
        path.display()
    )]
    Root {
        /// The root.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A path the VMM needs inside the jail is unusable.
    #[error(
        "jail: cannot keep {}: {why}; every path in the VMM config must be absolute and exist",
        path.display()
    )]
    Keep {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A mount, namespace or root change failed.
    #[error("jail: {what}: {source} (the VMM must run as root, with CAP_SYS_ADMIN)")]
    Mount {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Dropping capabilities or setting no_new_privs failed.
    #[error("jail: {what}: {source}")]
    Caps {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The seccomp filter could not be built or installed.
    #[error("jail: seccomp filter: {0}")]
    Seccomp(String),
    /// Threads already ran when the VMM confined itself: they would stay outside the jail
    /// with every capability.
    #[error(
        "jail: {0} threads already run; they would stay outside the jail with their \
         capabilities (the VMM must confine itself before starting any thread)"
    )]
    Threads(usize),
    /// The SIGSYS handler could not be installed.
    #[error("jail: installing the SIGSYS handler: {0}")]
    Signal(std::io::Error),
}

/// What a VM keeps once confined: the paths it still opens, binds or connects to by name,
/// and its capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Bound into the jail, each at its own absolute path.
    pub keep: Vec<Keep>,
    /// The capabilities kept (permitted and effective; every other one is dropped from the
    /// bounding set too).
    pub caps: Vec<Cap>,
}

impl Confinement {
    /// What `config`'s VM needs after it is built:
    /// - the directory of the hybrid-vsock socket: guest connections dial
    ///   `<uds_path>_<port>` there, and the socket is removed from it at the end;
    /// - the directory of the control socket, bound after confinement and removed at the end;
    /// - every virtio-fs shared directory (read-only binds for read-only shares): the
    ///   passthrough filesystem opens it by path when the guest mounts it, by its canonical
    ///   path (symlinks resolved), so that is the path kept;
    /// - the capabilities of `caps::for_shares`.
    ///
    /// Everything else (kernel, initramfs, console log, /dev/kvm, the tap) is open by then.
    pub fn for_vm(config: &VmmConfig) -> Confinement {
        let mut keep = Vec::new();
        let dir_of = |p: &std::path::Path| p.parent().map(std::path::Path::to_path_buf);
        if let Some(dir) = config.vsock.as_ref().and_then(|v| dir_of(&v.uds_path)) {
            keep.push(Keep::writable(dir));
        }
        if let Some(dir) = config.api_socket.as_deref().and_then(dir_of) {
            keep.push(Keep::writable(dir));
        }
        for share in &config.fs {
            keep.push(Keep {
                path: std::fs::canonicalize(&share.shared_dir)
                    .unwrap_or_else(|_| share.shared_dir.clone()),
                read_only: share.read_only,
            });
        }
        let caps = caps::for_shares(config.fs.iter().map(|s| s.read_only));
        Confinement { keep, caps }
    }
}

/// Step 1 (see the module docs): enters the jail `jail` describes with what `config`'s VM
/// needs. Call on the thread that builds the VM, before the VMM starts any thread.
pub fn confine(jail: &JailConfig, config: &VmmConfig) -> Result<(), JailError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|source| JailError::Caps {
            what: "counting the VMM's threads (/proc/self/task)".into(),
            source,
        })?
        .count();
    if threads > 1 {
        return Err(JailError::Threads(threads));
    }
    let plan = Confinement::for_vm(config);
    let binds = if jail.mount_namespace {
        mounts::enter(jail, &plan.keep)?
    } else {
        Vec::new()
    };
    caps::drop_all_but(&plan.caps)?;
    caps::set_no_new_privs()?;
    tracing::info!(
        vm = %config.id,
        root = %if jail.mount_namespace { jail.root.display().to_string() } else { "its jail's".into() },
        binds = ?binds
            .iter()
            .map(|k| format!("{}{}", k.path.display(), if k.read_only { " (ro)" } else { "" }))
            .collect::<Vec<_>>(),
        caps = ?plan.caps,
        "VMM confined (mount namespace, capabilities)"
    );
    Ok(())
}

/// Step 2 (see the module docs): the seccomp filter for `config`'s VM on every thread, when
/// `jail.seccomp` asks for it. Call after the VM is built, before its vCPUs run.
pub fn lock_down(jail: &JailConfig, config: &VmmConfig) -> Result<(), JailError> {
    if !jail.seccomp {
        tracing::warn!(vm = %config.id, "jail: seccomp is off in the config");
        return Ok(());
    }
    // The kick handler is installed here, while rt_sigaction is still allowed (`run` finds
    // it installed).
    crate::kick::install_kick_handler().map_err(JailError::Signal)?;
    sigsys::install_handler().map_err(JailError::Signal)?;
    let groups = seccomp::Groups::for_vm(config);
    seccomp::install(&groups)?;
    tracing::info!(vm = %config.id, ?groups, "VMM seccomp filter installed on every thread");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FsConfig, VsockConfig};

    fn config() -> VmmConfig {
        VmmConfig {
            id: "j".into(),
            vcpus: 1,
            memory_mib: 64,
            kernel: "/k".into(),
            initramfs: None,
            cmdline: String::new(),
            console_log: "/run/vm/console.log".into(),
            console_log_max_bytes: crate::config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
            api_socket: None,
            vsock: None,
            fs: vec![],
            net: None,
            jail: None,
        }
    }

    #[test]
    fn confining_with_other_threads_running_is_refused_before_anything_changes() {
        // The harness runs this test on a thread of its own, beside its main thread.
        let jail = JailConfig {
            root: "/nonexistent".into(),
            seccomp: true,
            mount_namespace: true,
        };
        let parked = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        let err = confine(&jail, &config()).expect_err("other threads run");
        assert!(matches!(err, JailError::Threads(n) if n >= 2), "{err}");
        assert!(
            err.to_string().contains("before starting any thread"),
            "{err}"
        );
        parked.join().expect("join");
    }

    #[test]
    fn a_bare_vm_keeps_nothing() {
        let plan = Confinement::for_vm(&config());
        assert!(plan.keep.is_empty(), "{plan:?}");
        assert!(plan.caps.is_empty(), "{plan:?}");
    }

    #[test]
    fn sockets_and_shares_are_kept_with_the_caps_shares_need() {
        let mut c = config();
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/run/vm/sock/vsock".into(),
        });
        c.api_socket = Some("/run/vm/sock/api".into());
        c.fs = vec![
            FsConfig {
                tag: "layers".into(),
                shared_dir: "/var/lib/moat/layers".into(),
                read_only: true,
            },
            FsConfig {
                tag: "vol".into(),
                shared_dir: "/var/lib/moat/vol".into(),
                read_only: false,
            },
        ];
        let plan = Confinement::for_vm(&c);
        assert_eq!(
            plan.keep,
            vec![
                Keep::writable("/run/vm/sock".into()),
                Keep::writable("/run/vm/sock".into()),
                Keep {
                    path: "/var/lib/moat/layers".into(),
                    read_only: true
                },
                Keep::writable("/var/lib/moat/vol".into()),
            ]
        );
        assert!(plan.caps.contains(&Cap::SysAdmin));
        assert!(plan.caps.contains(&Cap::Chown));

        // Read-only shares only: no capability that changes files.
        c.fs.pop();
        let plan = Confinement::for_vm(&c);
        assert!(plan.caps.contains(&Cap::DacOverride));
        assert!(!plan.caps.contains(&Cap::DacReadSearch));
        assert!(!plan.caps.contains(&Cap::Chown));
        assert!(!plan.caps.contains(&Cap::Setuid));
    }
}
