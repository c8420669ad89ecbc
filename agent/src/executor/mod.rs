//! The agent's embedded OCI executor: runs a container's process from an OCI runtime spec
//! (`oci_spec::runtime::Spec`) and a prepared rootfs.
//!
//! # Why not youki's `libcontainer`
//!
//! `libcontainer` 0.7 is a whole runtime: it keeps container state in a directory of JSON
//! files, re-runs its init through an intermediate process and a notify socket, and pulls
//! in what a PID-1 agent in a statically linked initramfs does not want: `libseccomp`
//! (the C library, to be linked statically — without the feature the spec's seccomp
//! profile is not applied at all), `libcgroups` with systemd/D-Bus and cgroup v1 support,
//! `rust-criu` (protobuf), netlink crates, `procfs`, `pathrs`, `regex`, `chrono`, and a
//! second `nix` (0.29 beside the workspace's 0.30). The guest needs a small part of it:
//! one kind of cgroup (v2), no systemd, no checkpointing, no hooks, no state directory
//! (the agent holds the `Container` in memory), and errors shaped for `ContainerStatus`.
//!
//! So the executor is built on `nix`/`libc` (the calls), `caps` (capability sets),
//! `seccompiler` (rust-vmm's pure-Rust BPF compiler, no C) and `oci-spec` (the types):
//! all pure Rust, linked statically with `+crt-static` like the rest of the agent.
//!
//! # How it runs a container
//!
//! - `plan`: the spec and rootfs become a `Plan` (paths resolved inside the rootfs,
//!   options turned into flags, C strings), in the parent, where allocating is fine.
//! - `container`: a short-lived thread unshares the PID namespace and forks; the child
//!   (PID 1 of the new namespace, still the agent's child) waits until the parent has put
//!   it in its cgroup, then runs `rootfs::setup_rootfs` and `child::setup_process` and
//!   blocks before `execve` until `start`. Pipes carry the handshake and, when a step
//!   fails, which one and its errno (`failure`), which the parent words as e.g.
//!   `exec /bin/nope: No such file or directory`.
//! - `sys`: every privileged call goes through the `Syscall` seam; the unit tests record
//!   the calls with `Recorder` instead of making them.
//! - `process`: waiting by pidfd (`wait` on tokio, or `wait_blocking`), signals by pidfd,
//!   and `reap_children` for PID 1's SIGCHLD loop (which must route the executor's
//!   children's statuses to their waiters rather than reap them blindly).
//! - `cgroup` (v2 limits, OOM kills), `devices` (the device cgroup: the spec's rules, then
//!   runc's default devices, enforced by a BPF program on the container's cgroup),
//!   `seccomp` (compiling profiles, RuntimeDefault), `user` (`resolve_user`), `overlay`
//!   (`mount_overlay`), `userns` (the pod's user namespace: mappings checked and written,
//!   joined by containers and execs before their other new namespaces).
//!
//! Not supported (refused with `Error::Spec`): a user namespace other than the pod's, time
//! namespaces, joining a mount namespace, idmapped mounts, SCMP_ACT_NOTIFY; ignored: hooks,
//! AppArmor/SELinux labels, the spec's `root.path` (the caller gives the rootfs).

mod cgroup;
mod child;
mod container;
mod devices;
mod error;
mod failure;
mod overlay;
mod plan;
mod pod_init;
mod process;
mod rootfs;
mod seccomp;
mod sys;
mod user;
pub mod userns;

#[cfg(test)]
mod tests;

// Re-exported for the executor's tests only (`use super::*`).
#[cfg_attr(not(test), allow(unused_imports))]
pub use cgroup::is_cgroup2;
#[cfg_attr(not(test), allow(unused_imports))]
pub use container::State;
pub use container::{Container, ExecProcess, Options, Stdio};
pub use error::Error;
pub use overlay::mount_overlay;
pub use pod_init::{PAUSE_ARG0, PodInit, pause_main};
#[cfg_attr(not(test), allow(unused_imports))]
pub use process::ExitStatus;
pub use process::reap_children;
pub use seccomp::runtime_default as runtime_default_seccomp;
#[cfg_attr(not(test), allow(unused_imports))]
pub use user::ResolvedUser;
pub use user::resolve_user;
