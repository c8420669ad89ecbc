//! Conversions between CRI container messages and the container manager's own types.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;

use crate::containers::CreateRequest;
use crate::containers::manager::PidNamespace;
use crate::containers::record::ContainerRecord;
use crate::containers::spec::{self, ContainerInput};
use crate::containers::state::ContainerState;
use crate::volumes::{HostMount, Propagation};

/// The manager's request from CreateContainer.
pub fn create_request(req: cri::CreateContainerRequest) -> Result<CreateRequest, tonic::Status> {
    let c = req
        .config
        .ok_or_else(|| tonic::Status::invalid_argument("CreateContainer needs a config"))?;
    let md = c
        .metadata
        .ok_or_else(|| tonic::Status::invalid_argument("container config needs metadata"))?;
    let image = c.image.map(|i| i.image).unwrap_or_default();
    if image.trim().is_empty() {
        return Err(tonic::Status::invalid_argument(
            "container config needs an image",
        ));
    }
    if !c.devices.is_empty() || !c.cdi_devices.is_empty() {
        return Err(tonic::Status::failed_precondition(
            "devices are not supported by this version of moatd",
        ));
    }
    let mounts = c
        .mounts
        .iter()
        .map(host_mount)
        .collect::<Result<Vec<_>, _>>()?;
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    let res = linux.resources.unwrap_or_default();
    // The deprecated field still reaches moatd from older kubelets and crictl configs.
    #[allow(deprecated)]
    let seccomp = seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?;
    let ns = sc.namespace_options.unwrap_or_default();
    let pid_namespace = match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Pod) => PidNamespace::Pod,
        Ok(cri::NamespaceMode::Container) => PidNamespace::Container,
        Ok(cri::NamespaceMode::Target) if !ns.target_id.is_empty() => {
            PidNamespace::Target(ns.target_id.clone())
        }
        Ok(cri::NamespaceMode::Target) => {
            return Err(tonic::Status::invalid_argument(
                "pid namespace mode TARGET needs target_id",
            ));
        }
        Ok(cri::NamespaceMode::Node) => {
            return Err(tonic::Status::failed_precondition(
                "a container in a VM sandbox cannot share the host's PID namespace: run it with a runc-based RuntimeClass",
            ));
        }
        Err(_) => {
            return Err(tonic::Status::invalid_argument(format!(
                "unknown pid namespace mode {}",
                ns.pid
            )));
        }
    };
    let userns = ns
        .userns_options
        .as_ref()
        .map(super::pod_sandbox::user_namespace)
        .transpose()?;
    if ns.ipc == cri::NamespaceMode::Node as i32 {
        return Err(tonic::Status::failed_precondition(
            "a container in a VM sandbox cannot share the host's IPC namespace: run it with a runc-based RuntimeClass",
        ));
    }
    let input = ContainerInput {
        command: c.command,
        args: c.args,
        env: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        working_dir: c.working_dir,
        run_as_user: sc.run_as_user.map(|v| v.value),
        run_as_group: sc.run_as_group.map(|v| v.value),
        run_as_username: sc.run_as_username,
        supplemental_groups: sc.supplemental_groups,
        strict_groups: sc.supplemental_groups_policy
            == cri::SupplementalGroupsPolicy::Strict as i32,
        tty: c.tty,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        readonly_rootfs: sc.readonly_rootfs,
        privileged: sc.privileged,
        add_caps: caps.add_capabilities,
        drop_caps: caps.drop_capabilities,
        seccomp,
        masked_paths: sc.masked_paths,
        readonly_paths: sc.readonly_paths,
        ipc_private: ns.ipc == cri::NamespaceMode::Container as i32,
        no_new_privs: sc.no_new_privs,
        cpu: (res.cpu_quota > 0).then_some((res.cpu_quota, res.cpu_period.max(1))),
        cpu_shares: (res.cpu_shares > 0).then_some(res.cpu_shares as u64),
        memory_limit: (res.memory_limit_in_bytes > 0).then_some(res.memory_limit_in_bytes),
        hostname: String::new(),
        binds: Vec::new(),
        userns: None,
    };
    Ok(CreateRequest {
        sandbox_id: req.pod_sandbox_id,
        name: md.name,
        attempt: md.attempt,
        image,
        input,
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        log_path: c.log_path,
        mounts,
        pid_namespace,
        userns,
    })
}

/// A CRI mount as a volume; recursive read-only needs read-only and private propagation,
/// as containerd checks.
fn host_mount(m: &cri::Mount) -> Result<HostMount, tonic::Status> {
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(tonic::Status::invalid_argument(format!(
                "mount {}: unknown propagation {}",
                m.container_path, m.propagation
            )));
        }
    };
    if m.recursive_read_only && !m.readonly {
        return Err(tonic::Status::invalid_argument(format!(
            "mount {}: recursive_read_only needs readonly",
            m.container_path
        )));
    }
    if m.recursive_read_only && propagation != Propagation::Private {
        return Err(tonic::Status::invalid_argument(format!(
            "mount {}: recursive_read_only needs private propagation",
            m.container_path
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(tonic::Status::invalid_argument(format!(
            "mount {}: idmapped mounts are not supported by this version of moatd",
            m.container_path
        )));
    }
    Ok(HostMount {
        host_path: m.host_path.clone().into(),
        container_path: m.container_path.clone(),
        read_only: m.readonly,
        recursive_read_only: m.recursive_read_only,
        propagation,
    })
}

/// The seccomp profile from the request: `seccomp`, else the deprecated
/// `seccomp_profile_path` ("runtime/default", "docker/default", "unconfined",
/// "localhost/<path>"), else unset.
fn seccomp(
    profile: Option<&cri::SecurityProfile>,
    path: &str,
) -> Result<spec::Seccomp, tonic::Status> {
    use cri::security_profile::ProfileType;
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(spec::Seccomp::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(spec::Seccomp::Unconfined),
            Ok(ProfileType::Localhost) if p.localhost_ref.starts_with('/') => {
                Ok(spec::Seccomp::Localhost(p.localhost_ref.clone().into()))
            }
            Ok(ProfileType::Localhost) => Err(tonic::Status::invalid_argument(format!(
                "Localhost seccomp profile {:?} must be an absolute path on the node",
                p.localhost_ref
            ))),
            Err(_) => Err(tonic::Status::invalid_argument(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    match path {
        "" => Ok(spec::Seccomp::Unset),
        "runtime/default" | "docker/default" => Ok(spec::Seccomp::RuntimeDefault),
        "unconfined" => Ok(spec::Seccomp::Unconfined),
        p => match p.strip_prefix("localhost/") {
            Some(file) if file.starts_with('/') => Ok(spec::Seccomp::Localhost(file.into())),
            _ => Err(tonic::Status::invalid_argument(format!(
                "seccomp profile path {p:?} is not runtime/default, unconfined or localhost/<absolute path>"
            ))),
        },
    }
}

fn state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// ContainerStatus.
pub fn status(r: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: r.name.clone(),
            attempt: r.attempt,
        }),
        state: state(r.state),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(cri::ImageSpec {
            image: r.image.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: map(&r.labels),
        annotations: map(&r.annotations),
        mounts: r
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.read_only,
                recursive_read_only: m.recursive_read_only,
                propagation: match m.propagation {
                    Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
                } as i32,
                ..Default::default()
            })
            .collect(),
        log_path: r.log_path.clone(),
        resources: None,
        image_id: r.image_id.clone(),
        user: r.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                supplemental_groups: u.groups.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
    }
}

/// ListContainers item.
pub fn item(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: r.name.clone(),
            attempt: r.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: r.image.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        state: state(r.state),
        created_at: r.created_at,
        labels: map(&r.labels),
        annotations: map(&r.annotations),
        image_id: r.image_id.clone(),
    }
}

/// Whether a container passes a ListContainers filter.
pub fn matches(r: &ContainerRecord, f: &cri::ContainerFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state.as_ref().is_none_or(|s| s.state == state(r.state))
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

/// ContainerStats from a record and the guest's figures.
pub fn stats(r: &ContainerRecord, s: Option<&crate::guest::Usage>) -> cri::ContainerStats {
    let v = |value| Some(cri::UInt64Value { value });
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: r.name.clone(),
                attempt: r.attempt,
            }),
            labels: map(&r.labels),
            annotations: map(&r.annotations),
        }),
        cpu: s.map(|s| cri::CpuUsage {
            timestamp: s.timestamp,
            usage_core_nano_seconds: v(s.cpu_nanos),
            usage_nano_cores: None,
        }),
        memory: s.map(|s| cri::MemoryUsage {
            timestamp: s.timestamp,
            working_set_bytes: v(s.working_set_bytes),
            usage_bytes: v(s.memory_bytes),
            ..Default::default()
        }),
        writable_layer: None,
        swap: None,
    }
}
