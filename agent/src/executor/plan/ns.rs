//! The namespaces part of a plan: which are joined (by path), which unshared, what happens
//! to the PID namespace, and the user namespace a container joins.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::super::error::{Error, Result};
use super::super::userns::IdMappings;

/// What happens to the PID namespace (done by the forking thread, before the fork).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PidNs {
    /// A new one: the process is its PID 1.
    New,
    /// Join the one at this path.
    Join(PathBuf),
    /// Stay in the agent's.
    Host,
}

/// The user namespace a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserNsPlan {
    /// The namespace file.
    pub path: PathBuf,
    /// The spec's mappings, which the namespace must have (None: the spec gives none).
    pub mappings: Option<IdMappings>,
}

/// Namespaces: those joined (opened by the parent, in this order), then the user namespace
/// (joined), then those unshared.
#[derive(Debug, Clone)]
pub(crate) struct NsPlan {
    pub pid: PidNs,
    pub join: Vec<(PathBuf, libc::c_int)>,
    pub unshare: libc::c_int,
    pub has_uts: bool,
    pub user: Option<UserNsPlan>,
}

impl NsPlan {
    /// Whether the container's new PID namespace must be made inside the user namespace
    /// it joins (by its process, which then forks its init: see `child`).
    pub(crate) fn pid_in_userns(&self) -> bool {
        self.user.is_some() && self.pid == PidNs::New
    }

    /// The namespaces a failed `Setns` step indexes: those joined, then the user namespace.
    pub(crate) fn described_joins(&self) -> Vec<(PathBuf, libc::c_int)> {
        let mut v = self.join.clone();
        v.extend(
            self.user
                .iter()
                .map(|u| (u.path.clone(), libc::CLONE_NEWUSER)),
        );
        v
    }
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// The namespaces of `spec`; without a list: new mount, PID, IPC and UTS namespaces (the
/// network namespace is the pod's, which is the VM's). A user namespace can only be joined
/// (by path); the spec's uidMappings and gidMappings, if any, are what it must have.
pub(crate) fn ns_plan(spec: &Spec) -> Result<NsPlan> {
    use LinuxNamespaceType as T;
    let mappings = spec
        .linux()
        .as_ref()
        .map(IdMappings::from_spec)
        .filter(|m| !m.uids.is_empty() || !m.gids.is_empty());
    let list: Vec<(T, Option<PathBuf>)> =
        match spec.linux().as_ref().and_then(|l| l.namespaces().clone()) {
            Some(list) => list.iter().map(|n| (n.typ(), n.path().clone())).collect(),
            None => vec![
                (T::Mount, None),
                (T::Pid, None),
                (T::Ipc, None),
                (T::Uts, None),
            ],
        };
    let mut plan = NsPlan {
        pid: PidNs::Host,
        join: vec![],
        unshare: 0,
        has_uts: false,
        user: None,
    };
    let mut seen = HashSet::new();
    for (typ, path) in list {
        if !seen.insert(typ) {
            return Err(Error::Spec(format!("namespace {typ} is listed twice")));
        }
        match (typ, path) {
            (T::User, None) => {
                return Err(Error::Spec(
                    "creating a user namespace is not supported: a container can only join \
                     one by path (the pod's)"
                        .into(),
                ));
            }
            (T::User, Some(p)) => {
                plan.user = Some(UserNsPlan {
                    path: p,
                    mappings: mappings.clone(),
                });
            }
            (T::Time, _) => {
                return Err(Error::Spec("time namespaces are not supported".into()));
            }
            (T::Mount, Some(_)) => {
                return Err(Error::Spec(
                    "joining a mount namespace is not supported".into(),
                ));
            }
            (T::Pid, None) => plan.pid = PidNs::New,
            (T::Pid, Some(p)) => plan.pid = PidNs::Join(p),
            (t, Some(p)) => {
                plan.has_uts |= t == T::Uts;
                plan.join.push((p, ns_flag(t)));
            }
            (t, None) => {
                plan.has_uts |= t == T::Uts;
                plan.unshare |= ns_flag(t);
            }
        }
    }
    if plan.unshare & libc::CLONE_NEWNS == 0 {
        return Err(Error::Spec(
            "the container needs a new mount namespace".into(),
        ));
    }
    if plan.user.is_none() && mappings.is_some() {
        return Err(Error::Spec(
            "uidMappings or gidMappings without a user namespace".into(),
        ));
    }
    if let Some(m) = plan.user.as_ref().and_then(|u| u.mappings.as_ref()) {
        m.validate()
            .map_err(|e| Error::Spec(format!("user namespace: {e}")))?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_default_and_refuse_what_is_unsupported() {
        let spec = Spec::default();
        // The default spec lists pid, network, ipc, uts, mount, cgroup.
        let ns = ns_plan(&spec).expect("plan");
        assert_eq!(ns.pid, PidNs::New);
        assert_eq!(
            ns.unshare,
            libc::CLONE_NEWNS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWCGROUP
        );
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_namespaces(None);
        let mut spec2 = spec.clone();
        spec2.set_linux(Some(linux.clone()));
        let ns = ns_plan(&spec2).expect("plan");
        assert_eq!(
            ns.unshare,
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS
        );
        assert!(ns.has_uts);
        linux.set_namespaces(Some(
            oci_spec::runtime::get_default_namespaces()
                .into_iter()
                .chain([oci_spec::runtime::LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .build()
                    .expect("ns")])
                .collect(),
        ));
        spec2.set_linux(Some(linux.clone()));
        let err = ns_plan(&spec2).expect_err("user ns");
        assert_eq!(
            err.to_string(),
            "invalid spec: creating a user namespace is not supported: a container can only \
             join one by path (the pod's)"
        );
        // Joined by path: the user namespace, with the spec's mappings, apart from the
        // others.
        let user = |path: Option<&str>| {
            let mut b =
                oci_spec::runtime::LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
            if let Some(p) = path {
                b = b.path(p);
            }
            b.build().expect("ns")
        };
        let mapping = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100_000u32)
            .size(65536u32)
            .build()
            .expect("mapping");
        linux.set_namespaces(Some(
            oci_spec::runtime::get_default_namespaces()
                .into_iter()
                .chain([user(Some("/proc/7/ns/user"))])
                .collect(),
        ));
        linux.set_uid_mappings(Some(vec![mapping]));
        linux.set_gid_mappings(Some(vec![mapping]));
        spec2.set_linux(Some(linux.clone()));
        let ns = ns_plan(&spec2).expect("plan");
        assert_eq!(
            ns.user,
            Some(UserNsPlan {
                path: PathBuf::from("/proc/7/ns/user"),
                mappings: Some(crate::executor::userns::tests::pod(100_000)),
            })
        );
        assert_eq!(ns.unshare & libc::CLONE_NEWUSER, 0);
        assert!(ns.join.is_empty());
        assert!(ns.pid_in_userns(), "a new PID namespace inside it");
        assert_eq!(
            ns.described_joins(),
            vec![(PathBuf::from("/proc/7/ns/user"), libc::CLONE_NEWUSER)]
        );
        // Mappings the kernel would refuse are refused here.
        let bad = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100_000u32)
            .size(0u32)
            .build()
            .expect("mapping");
        linux.set_uid_mappings(Some(vec![bad]));
        spec2.set_linux(Some(linux.clone()));
        assert_eq!(
            ns_plan(&spec2).expect_err("bad").to_string(),
            "invalid spec: user namespace: uid mapping 0 has length 0"
        );
        // Mappings without a user namespace make no sense.
        linux.set_uid_mappings(Some(vec![mapping]));
        linux.set_namespaces(None);
        spec2.set_linux(Some(linux));
        assert_eq!(
            ns_plan(&spec2).expect_err("no userns").to_string(),
            "invalid spec: uidMappings or gidMappings without a user namespace"
        );
    }
}
