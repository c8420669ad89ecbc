//! Which PID namespace a container gets, from the CRI's pid mode as moatd passes it on:
//! its own (CONTAINER), the pod's (POD: the namespace of the pod init, started on first
//! use and again if it died), or another container's (TARGET).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use moat_proto::agent::PidMode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tonic::Status;

use crate::executor::{PAUSE_ARG0, PodInit};

/// The pod's PID namespace: its init, started when a container first asks for it.
pub struct PodPidNamespace {
    init: Mutex<Option<PodInit>>,
    exe: PathBuf,
    argv: Vec<&'static str>,
}

impl Default for PodPidNamespace {
    /// The agent's own binary, re-executed as `pause`.
    fn default() -> Self {
        Self::with_init(PathBuf::from("/proc/self/exe"), vec![PAUSE_ARG0])
    }
}

impl PodPidNamespace {
    /// A pod namespace whose init is `exe` run with `argv` (tests use a plain binary).
    pub fn with_init(exe: PathBuf, argv: Vec<&'static str>) -> Self {
        Self {
            init: Mutex::new(None),
            exe,
            argv,
        }
    }

    /// The path of the pod's PID namespace, starting its init if none runs.
    pub fn path(&self) -> Result<PathBuf, Status> {
        let mut init = self.init.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = init.as_ref().filter(|i| i.alive()) {
            return Ok(i.namespace());
        }
        let started = PodInit::spawn(&self.exe, &self.argv)
            .map_err(|e| Status::internal(format!("start the pod's init: {e}")))?;
        tracing::info!(
            pid = started.pid(),
            "pod init started for the pod's PID namespace"
        );
        let path = started.namespace();
        *init = Some(started);
        Ok(path)
    }
}

/// Points the spec's PID namespace at `path` (adding the entry if the spec has none).
pub fn join_pid_namespace(spec: &mut Spec, path: &Path) -> Result<(), Status> {
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| Status::invalid_argument("the runtime spec has no linux section"))?;
    let mut list = linux.namespaces().clone().unwrap_or_default();
    list.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    let mut ns = oci_spec::runtime::LinuxNamespace::default();
    ns.set_typ(LinuxNamespaceType::Pid);
    ns.set_path(Some(path.to_path_buf()));
    list.push(ns);
    linux.set_namespaces(Some(list));
    Ok(())
}

/// The namespace path for `mode`: None keeps the spec's own (a new namespace);
/// `target_pid` gives the init pid of the TARGET container, if it runs.
pub fn namespace_for(
    mode: i32,
    pod: &PodPidNamespace,
    target: &str,
    target_pid: impl FnOnce(&str) -> Result<i32, Status>,
) -> Result<Option<PathBuf>, Status> {
    match PidMode::try_from(mode) {
        Ok(PidMode::PidContainer) => Ok(None),
        Ok(PidMode::PidPod) => pod.path().map(Some),
        Ok(PidMode::PidTarget) => {
            let pid = target_pid(target)?;
            Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))))
        }
        Err(_) => Err(Status::invalid_argument(format!("unknown pid mode {mode}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_pick_the_namespace() {
        let pod = PodPidNamespace::with_init(PathBuf::from("/bin/sleep"), vec!["pause", "100"]);
        let none = |_: &str| -> Result<i32, Status> { Err(Status::not_found("no target")) };
        assert_eq!(
            namespace_for(PidMode::PidContainer as i32, &pod, "", none).expect("own"),
            None
        );
        assert_eq!(
            namespace_for(PidMode::PidTarget as i32, &pod, "c1", |t| {
                assert_eq!(t, "c1");
                Ok(42)
            })
            .expect("target"),
            Some(PathBuf::from("/proc/42/ns/pid"))
        );
        let e = namespace_for(PidMode::PidTarget as i32, &pod, "gone", none).expect_err("gone");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(
            namespace_for(9, &pod, "", none).expect_err("bad").code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn the_pod_namespace_is_started_once_and_again_after_its_init_died() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a new PID namespace needs root");
            return;
        }
        let pod = PodPidNamespace::with_init(PathBuf::from("/bin/sleep"), vec!["pause", "100"]);
        let a = pod.path().expect("start");
        assert_eq!(pod.path().expect("again"), a, "one init while it lives");
        let pid: i32 = a
            .to_string_lossy()
            .split('/')
            .nth(2)
            .and_then(|p| p.parse().ok())
            .expect("pid");
        // SAFETY: plain kill of the init started above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let b = pod.path().expect("restart");
        assert_ne!(a, b, "a dead init is replaced");
    }

    #[test]
    fn joining_replaces_the_spec_pid_namespace() {
        let mut spec = Spec::default();
        join_pid_namespace(&mut spec, Path::new("/proc/7/ns/pid")).expect("join");
        let list = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("namespaces");
        let pid: Vec<_> = list
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Pid)
            .collect();
        assert_eq!(pid.len(), 1);
        assert_eq!(pid[0].path().as_deref(), Some(Path::new("/proc/7/ns/pid")));
    }
}
