//! Which PID namespace a container gets, from the CRI's pid mode as moatd passes it on:
//! its own (CONTAINER), the pod's (POD: the namespace of the pod init, started on first
//! use and again if it died), or another container's (TARGET).
//!
//! And the pod's user namespace, when SetupSandbox gives one (CRI NamespaceMode POD for
//! users): the pod init is then started at once, in a new user namespace with those
//! mappings that owns its PID namespace, and a container whose spec asks for a user
//! namespace with the same mappings joins the init's (`join_user_namespace`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use moat_proto::agent::PidMode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tonic::Status;

use crate::executor::userns::{IdMap, IdMappings};
use crate::executor::{PAUSE_ARG0, PodInit};

/// The pod's PID namespace (and user namespace, if it has one): its init, started when a
/// container first asks for it, or with the user namespace.
pub struct PodPidNamespace {
    state: Mutex<PodState>,
    exe: PathBuf,
    argv: Vec<&'static str>,
}

#[derive(Default)]
struct PodState {
    init: Option<PodInit>,
    /// The pod's user namespace mappings, as SetupSandbox gave them.
    userns: Option<IdMappings>,
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
            state: Mutex::new(PodState::default()),
            exe,
            argv,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running init, started (in the pod's user namespace, if any) if none runs.
    fn running<'a>(&self, state: &'a mut PodState) -> Result<&'a PodInit, Status> {
        if !state.init.as_ref().is_some_and(PodInit::alive) {
            let restart = state.init.is_some();
            let started = PodInit::spawn(&self.exe, &self.argv, state.userns.as_ref())
                .map_err(|e| Status::internal(format!("start the pod's init: {e}")))?;
            match &state.userns {
                Some(m) => tracing::info!(
                    pid = started.pid(),
                    mappings = %m,
                    restart,
                    "pod init started in the pod's user namespace"
                ),
                None => tracing::info!(
                    pid = started.pid(),
                    restart,
                    "pod init started for the pod's PID namespace"
                ),
            }
            if restart && state.userns.is_some() {
                tracing::warn!(
                    "the pod's init had died: containers created from now on are in a new user \
                     namespace with the same mappings"
                );
            }
            state.init = Some(started);
        }
        state
            .init
            .as_ref()
            .ok_or_else(|| Status::internal("the pod's init is gone"))
    }

    /// The path of the pod's PID namespace, starting its init if none runs.
    pub fn path(&self) -> Result<PathBuf, Status> {
        let mut state = self.state();
        Ok(self.running(&mut state)?.namespace())
    }

    /// The path of the pod's user namespace (the pod init's), starting the init if none
    /// runs; None if the pod has no user namespace.
    pub fn user_path(&self) -> Result<Option<PathBuf>, Status> {
        let mut state = self.state();
        if state.userns.is_none() {
            return Ok(None);
        }
        Ok(Some(self.running(&mut state)?.user_namespace()))
    }

    /// The pod's user namespace mappings, if it has one.
    pub fn userns(&self) -> Option<IdMappings> {
        self.state().userns.clone()
    }

    /// Gives the pod a user namespace with `maps` (already validated) and starts the pod
    /// init in it. Again with the same mappings: nothing more. With others, or once an init
    /// runs without a user namespace: FailedPrecondition.
    pub fn set_userns(&self, maps: IdMappings) -> Result<(), Status> {
        let mut state = self.state();
        match &state.userns {
            Some(m) if m.same_as(&maps) => {}
            Some(m) => {
                return Err(Status::failed_precondition(format!(
                    "the pod already has a user namespace, with the mappings {m}"
                )));
            }
            None if state.init.as_ref().is_some_and(PodInit::alive) => {
                return Err(Status::failed_precondition(
                    "the pod's init already runs without a user namespace",
                ));
            }
            None => state.userns = Some(maps),
        }
        self.running(&mut state).map(|_| ())
    }
}

/// The mappings of SetupSandbox's `userns`, checked (InvalidArgument saying why not).
pub fn mappings_from_proto(u: &moat_proto::agent::UserNamespace) -> Result<IdMappings, Status> {
    let conv = |v: &[moat_proto::agent::IdMapping]| -> Vec<IdMap> {
        v.iter()
            .map(|m| IdMap {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect()
    };
    let maps = IdMappings {
        uids: conv(&u.uids),
        gids: conv(&u.gids),
    };
    maps.validate()
        .map_err(|e| Status::invalid_argument(format!("user namespace: {e}")))?;
    Ok(maps)
}

/// Points the spec's user namespace at the pod's: a spec asking for one (an entry of type
/// user without a path) gets the pod init's, if its uidMappings and gidMappings are the
/// pod's (in any order). Returns the pod's mappings when the container joins; None when
/// the spec asks for no user namespace (the container shares the VM's). InvalidArgument
/// when the spec names a path, when the pod has no user namespace, or when the mappings
/// differ: a container cannot have a user namespace of its own.
pub fn join_user_namespace(
    spec: &mut Spec,
    pod: &PodPidNamespace,
) -> Result<Option<IdMappings>, Status> {
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(None);
    };
    let mut list = linux.namespaces().clone().unwrap_or_default();
    let Some(entry) = list
        .iter_mut()
        .find(|n| n.typ() == LinuxNamespaceType::User)
    else {
        return Ok(None);
    };
    if let Some(p) = entry.path() {
        return Err(Status::invalid_argument(format!(
            "the runtime spec's user namespace has a path ({}): a container can only join \
             the pod's, which the agent names",
            p.display()
        )));
    }
    let asked = IdMappings::from_spec(linux);
    let Some(pod_maps) = pod.userns() else {
        return Err(Status::invalid_argument(
            "the runtime spec asks for a user namespace, but the pod has none \
             (SetupSandbox gave no userns)",
        ));
    };
    if !asked.same_as(&pod_maps) {
        return Err(Status::invalid_argument(format!(
            "the runtime spec's user namespace mappings ({asked}) are not the pod's \
             ({pod_maps}): a container can only join the pod's user namespace"
        )));
    }
    let path = pod
        .user_path()?
        .ok_or_else(|| Status::internal("the pod's user namespace is gone"))?;
    entry.set_path(Some(path));
    linux.set_namespaces(Some(list));
    Ok(Some(pod_maps))
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

    fn proto(
        uids: Vec<(u32, u32, u32)>,
        gids: Vec<(u32, u32, u32)>,
    ) -> moat_proto::agent::UserNamespace {
        let conv = |v: Vec<(u32, u32, u32)>| {
            v.into_iter()
                .map(
                    |(container_id, host_id, length)| moat_proto::agent::IdMapping {
                        container_id,
                        host_id,
                        length,
                    },
                )
                .collect()
        };
        moat_proto::agent::UserNamespace {
            uids: conv(uids),
            gids: conv(gids),
        }
    }

    #[test]
    fn setup_sandbox_mappings_are_checked() {
        let ok = proto(vec![(0, 100_000, 65536)], vec![(0, 100_000, 65536)]);
        assert_eq!(
            mappings_from_proto(&ok).expect("valid"),
            crate::executor::userns::tests::pod(100_000)
        );
        for (bad, why) in [
            (proto(vec![], vec![(0, 1, 1)]), "no uid mappings"),
            (
                proto(vec![(0, 1, 1)], vec![(0, 1, 0)]),
                "gid mapping 0 has length 0",
            ),
            (
                proto(vec![(0, 1, 10), (5, 100, 10)], vec![(0, 1, 1)]),
                "overlap on the container side",
            ),
            (
                proto(vec![(0, u32::MAX - 5, 10)], vec![(0, 1, 1)]),
                "overflow 32 bits",
            ),
        ] {
            let e = mappings_from_proto(&bad).expect_err(why);
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(why), "{}", e.message());
        }
    }

    /// A spec asking for a user namespace (no path) with the pod's mappings for `host`.
    fn userns_spec(host: u32) -> Spec {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().expect("linux");
        let mut list = linux.namespaces().clone().unwrap_or_default();
        list.push(
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .expect("ns"),
        );
        linux.set_namespaces(Some(list));
        let m = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(65536u32)
            .build()
            .expect("mapping");
        linux.set_uid_mappings(Some(vec![m]));
        linux.set_gid_mappings(Some(vec![m]));
        spec.set_linux(Some(linux));
        spec
    }

    fn user_entry(spec: &Spec) -> Option<Option<PathBuf>> {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::User)
            .map(|n| n.path().clone())
    }

    #[test]
    fn a_spec_without_a_user_namespace_is_left_alone_and_one_needs_the_pod_s() {
        let pod = PodPidNamespace::with_init(PathBuf::from("/bin/sleep"), vec!["pause", "100"]);
        let mut plain = Spec::default();
        assert_eq!(join_user_namespace(&mut plain, &pod).expect("plain"), None);
        assert_eq!(user_entry(&plain), None);
        let mut spec = userns_spec(100_000);
        let e = join_user_namespace(&mut spec, &pod).expect_err("no pod userns");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("the pod has none"), "{}", e.message());
        assert_eq!(pod.user_path().expect("none"), None);
    }

    #[test]
    fn a_spec_with_the_pod_s_mappings_joins_the_pod_init_s_user_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a new user namespace with these mappings needs root");
            return;
        }
        let pod = PodPidNamespace::with_init(PathBuf::from("/bin/sleep"), vec!["pause", "100"]);
        let maps = crate::executor::userns::tests::pod(100_000);
        pod.set_userns(maps.clone()).expect("userns");
        assert_eq!(pod.userns(), Some(maps.clone()));
        let user = pod.user_path().expect("path").expect("some");
        let pid = pod.path().expect("pid ns");
        assert_eq!(user.parent(), pid.parent(), "one init holds both");
        let mut spec = userns_spec(100_000);
        assert_eq!(
            join_user_namespace(&mut spec, &pod).expect("join"),
            Some(maps.clone())
        );
        assert_eq!(user_entry(&spec), Some(Some(user.clone())));
        // Again with the same mappings: fine; other ones: not.
        pod.set_userns(maps).expect("same again");
        assert_eq!(pod.user_path().expect("path"), Some(user));
        let e = pod
            .set_userns(crate::executor::userns::tests::pod(200_000))
            .expect_err("other");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // A spec with other mappings, or a path of its own, is refused.
        let mut other = userns_spec(200_000);
        let e = join_user_namespace(&mut other, &pod).expect_err("other mappings");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("are not the pod's"), "{}", e.message());
        let e = join_user_namespace(&mut spec, &pod).expect_err("a path");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // An init already running without a user namespace cannot get one.
        let plain = PodPidNamespace::with_init(PathBuf::from("/bin/sleep"), vec!["pause", "100"]);
        plain.path().expect("started");
        let e = plain
            .set_userns(crate::executor::userns::tests::pod(100_000))
            .expect_err("too late");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
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
