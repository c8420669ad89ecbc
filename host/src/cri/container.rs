//! Conversions between CRI container messages and the container manager's own types.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;

use crate::containers::CreateRequest;
use crate::containers::record::ContainerRecord;
use crate::containers::spec::ContainerInput;
use crate::containers::state::ContainerState;

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
        .map(|m| crate::sandbox::volumes::HostMount {
            host_path: m.host_path.clone().into(),
            container_path: m.container_path.clone(),
            read_only: m.readonly,
        })
        .collect();
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    let res = linux.resources.unwrap_or_default();
    let seccomp_unconfined = sc
        .seccomp
        .as_ref()
        .is_some_and(|p| p.profile_type == cri::security_profile::ProfileType::Unconfined as i32);
    if sc
        .seccomp
        .as_ref()
        .is_some_and(|p| p.profile_type == cri::security_profile::ProfileType::Localhost as i32)
    {
        return Err(tonic::Status::failed_precondition(
            "Localhost seccomp profiles are not supported yet; use RuntimeDefault or Unconfined",
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
        tty: c.tty,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        readonly_rootfs: sc.readonly_rootfs,
        privileged: sc.privileged,
        add_caps: caps.add_capabilities,
        drop_caps: caps.drop_capabilities,
        seccomp_unconfined,
        no_new_privs: sc.no_new_privs,
        cpu: (res.cpu_quota > 0).then_some((res.cpu_quota, res.cpu_period.max(1))),
        cpu_shares: (res.cpu_shares > 0).then_some(res.cpu_shares as u64),
        memory_limit: (res.memory_limit_in_bytes > 0).then_some(res.memory_limit_in_bytes),
        hostname: String::new(),
        binds: Vec::new(),
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
    })
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
            .map(|(c, h, ro)| cri::Mount {
                container_path: c.clone(),
                host_path: h.clone(),
                readonly: *ro,
                ..Default::default()
            })
            .collect(),
        log_path: r.log_path.clone(),
        resources: None,
        image_id: r.image_id.clone(),
        user: None,
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
pub fn stats(r: &ContainerRecord, s: Option<&crate::sandbox::agent::Usage>) -> cri::ContainerStats {
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
