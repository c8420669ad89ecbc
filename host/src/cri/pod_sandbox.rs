//! Conversions between CRI pod sandbox messages and the sandbox manager's own types.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;

use crate::sandbox::record::{PodMetadata, SandboxRecord};
use crate::sandbox::state::SandboxState;
use crate::sandbox::{DnsConfig, RunRequest};
use crate::userns::{IdMapping, UserNamespace};

/// The manager's request from RunPodSandbox.
pub fn run_request(req: cri::RunPodSandboxRequest) -> Result<RunRequest, tonic::Status> {
    let c = req
        .config
        .ok_or_else(|| tonic::Status::invalid_argument("RunPodSandbox needs a config"))?;
    let md = c
        .metadata
        .ok_or_else(|| tonic::Status::invalid_argument("pod sandbox config needs metadata"))?;
    let linux = c.linux.unwrap_or_default();
    let ns = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    let userns = ns
        .userns_options
        .as_ref()
        .map(user_namespace)
        .transpose()?
        .flatten();
    let res = linux.resources.unwrap_or_default();
    let mut port_mappings = Vec::new();
    for p in c.port_mappings {
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(tonic::Status::invalid_argument(format!(
                    "port mapping protocol {} is not TCP, UDP or SCTP",
                    p.protocol
                )));
            }
        };
        let port = |v: i32, what: &str, zero_ok: bool| {
            u16::try_from(v)
                .ok()
                .filter(|p| zero_ok || *p > 0)
                .ok_or_else(|| {
                    tonic::Status::invalid_argument(format!(
                        "port mapping {what} {v} is out of range (1-65535)"
                    ))
                })
        };
        port_mappings.push(crate::network::PortMapping {
            protocol: protocol.into(),
            container_port: port(p.container_port, "container_port", false)?,
            host_port: port(p.host_port, "host_port", true)?,
            host_ip: p.host_ip,
        });
    }
    let dns = c
        .dns_config
        .map(|d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        })
        .unwrap_or_default();
    Ok(RunRequest {
        metadata: PodMetadata {
            name: md.name,
            uid: md.uid,
            namespace: md.namespace,
            attempt: md.attempt,
        },
        hostname: c.hostname,
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        log_directory: c.log_directory,
        runtime_handler: req.runtime_handler,
        dns,
        cpu: (res.cpu_quota > 0).then_some((res.cpu_quota, res.cpu_period)),
        memory_limit_bytes: (res.memory_limit_in_bytes > 0).then_some(res.memory_limit_in_bytes),
        host_network: ns.network == node,
        host_pid: ns.pid == node,
        host_ipc: ns.ipc == node,
        sysctls: linux.sysctls.into_iter().collect(),
        port_mappings,
        pod_cidr: None,
        userns,
    })
}

/// The CRI's user namespace options: `None` for NODE (the VM's ids), the mappings for POD
/// (checked as the kernel will take them); CONTAINER and TARGET are not modes a user
/// namespace can have.
pub fn user_namespace(u: &cri::UserNamespace) -> Result<Option<UserNamespace>, tonic::Status> {
    let maps = |m: &[cri::IdMapping]| {
        m.iter()
            .map(|m| IdMapping {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect::<Vec<_>>()
    };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(tonic::Status::invalid_argument(
                    "user namespace mode NODE takes no uid or gid mappings",
                ));
            }
            Ok(None)
        }
        Ok(cri::NamespaceMode::Pod) => {
            let ns = UserNamespace {
                uids: maps(&u.uids),
                gids: maps(&u.gids),
            };
            ns.validate()
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            Ok(Some(ns))
        }
        _ => Err(tonic::Status::invalid_argument(format!(
            "user namespace mode {} is not supported: NODE or POD",
            u.mode
        ))),
    }
}

/// The pod's user namespace as the CRI reports it.
fn userns_status(u: Option<&UserNamespace>) -> cri::UserNamespace {
    let maps = |m: &[IdMapping]| {
        m.iter()
            .map(|m| cri::IdMapping {
                host_id: m.host_id,
                container_id: m.container_id,
                length: m.length,
            })
            .collect()
    };
    match u {
        Some(u) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: maps(&u.uids),
            gids: maps(&u.gids),
        },
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
    }
}

fn cri_state(s: SandboxState) -> i32 {
    if s.is_ready() {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

fn metadata(m: &PodMetadata) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The CRI status of a sandbox.
pub fn status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata(&r.metadata)),
        state: cri_state(r.state),
        created_at: r.created_at,
        network: Some(match &r.network {
            Some(n) => cri::PodSandboxNetworkStatus {
                ip: n.pod_ip().map(|ip| ip.to_string()).unwrap_or_default(),
                additional_ips: n
                    .additional_ips()
                    .into_iter()
                    .map(|ip| cri::PodIp { ip: ip.to_string() })
                    .collect(),
            },
            None => cri::PodSandboxNetworkStatus::default(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    userns_options: Some(userns_status(r.userns.as_ref())),
                    ..Default::default()
                }),
            }),
        }),
        labels: map(&r.labels),
        annotations: map(&r.annotations),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// The CRI list item of a sandbox.
pub fn item(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: Some(metadata(&r.metadata)),
        state: cri_state(r.state),
        created_at: r.created_at,
        labels: map(&r.labels),
        annotations: map(&r.annotations),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// Whether a sandbox passes a ListPodSandboxStats filter.
pub fn stats_match(r: &SandboxRecord, f: &cri::PodSandboxStatsFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

/// PodSandboxStats. The pod's CPU and memory are what its VM costs the host (its VMM and
/// back-ends: the guest's work and memory and the VMM's own), as a VM pod's cgroup shows
/// them under containerd; the containers inside are read from their cgroups in the guest,
/// so the pod's figure less its containers' is the sandbox's overhead. A pod whose host
/// processes cannot be read reports its containers' sum. Processes are the guest's; the
/// network is the CNI interface's on the host.
pub fn stats(s: &crate::pods::PodStats) -> cri::PodSandboxStats {
    let v = |value| Some(cri::UInt64Value { value });
    let sum = |f: fn(&crate::guest::Usage) -> u64| -> u64 {
        s.containers
            .iter()
            .filter_map(|(_, u)| u.as_ref().map(f))
            .sum()
    };
    let r = &s.sandbox;
    let network = s.network.as_ref().map(|n| {
        let i = cri::NetworkInterfaceUsage {
            name: n.name.clone(),
            rx_bytes: v(n.rx_bytes),
            rx_errors: v(n.rx_errors),
            tx_bytes: v(n.tx_bytes),
            tx_errors: v(n.tx_errors),
        };
        cri::NetworkUsage {
            timestamp: s.at,
            default_interface: Some(i.clone()),
            interfaces: vec![i],
        }
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.id.clone(),
            metadata: Some(metadata(&r.metadata)),
            labels: map(&r.labels),
            annotations: map(&r.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cri::CpuUsage {
                timestamp: s.at,
                usage_core_nano_seconds: v(s
                    .host
                    .map_or_else(|| sum(|u| u.cpu_nanos), |h| h.cpu_nanos)),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: s.at,
                working_set_bytes: v(s
                    .host
                    .map_or_else(|| sum(|u| u.working_set_bytes), |h| h.memory_bytes)),
                usage_bytes: v(s
                    .host
                    .map_or_else(|| sum(|u| u.memory_bytes), |h| h.memory_bytes)),
                ..Default::default()
            }),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: s.at,
                process_count: v(sum(|u| u.pids)),
            }),
            containers: s
                .containers
                .iter()
                .map(|(c, u)| super::container::stats(c, u.as_ref()))
                .collect(),
        }),
        windows: None,
    }
}

/// Whether a sandbox passes a ListPodSandbox filter.
pub fn matches(r: &SandboxRecord, f: &cri::PodSandboxFilter) -> bool {
    if !f.id.is_empty() && !r.id.starts_with(&f.id) {
        return false;
    }
    if f.state
        .as_ref()
        .is_some_and(|s| s.state != cri_state(r.state))
    {
        return false;
    }
    f.label_selector
        .iter()
        .all(|(k, v)| r.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_and_resources_are_read() {
        let req = cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "p".into(),
                    uid: "u".into(),
                    namespace: "n".into(),
                    attempt: 1,
                }),
                linux: Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            network: cri::NamespaceMode::Node as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    resources: Some(cri::LinuxContainerResources {
                        cpu_quota: 200_000,
                        cpu_period: 100_000,
                        memory_limit_in_bytes: 1 << 30,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            runtime_handler: "moat".into(),
        };
        let r = run_request(req).expect("convert");
        assert!(r.host_network);
        assert_eq!(r.cpu, Some((200_000, 100_000)));
        assert_eq!(r.memory_limit_bytes, Some(1 << 30));
        assert_eq!(r.metadata.attempt, 1);
        assert!(run_request(cri::RunPodSandboxRequest::default()).is_err());
    }

    #[test]
    fn user_namespace_options_are_checked_and_reported_back() {
        let map = |host_id| cri::IdMapping {
            host_id,
            container_id: 0,
            length: 65536,
        };
        let pod = cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![map(65536)],
            gids: vec![map(65536)],
        };
        let u = user_namespace(&pod).expect("ok").expect("a namespace");
        assert_eq!(u.root_uid(), Some(65536));
        assert_eq!(userns_status(Some(&u)), pod);
        let node = cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(user_namespace(&node).expect("NODE"), None);
        // The message's default mode is POD (0), which needs mappings.
        assert!(user_namespace(&cri::UserNamespace::default()).is_err());
        assert_eq!(userns_status(None).mode, cri::NamespaceMode::Node as i32);
        for bad in [
            cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            },
            cri::UserNamespace {
                mode: cri::NamespaceMode::Container as i32,
                ..pod.clone()
            },
            cri::UserNamespace {
                mode: cri::NamespaceMode::Node as i32,
                ..pod.clone()
            },
        ] {
            let e = user_namespace(&bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
