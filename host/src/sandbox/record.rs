//! Sandbox records in the state store, so moatd finds its pods (and their VMM processes)
//! again after a restart. One table, id -> JSON record; writes are single transactions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::state::SandboxState;
use crate::store::{Record, Table};

/// The pod's identity as kubelet gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PodMetadata {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Attempt number.
    pub attempt: u32,
}

impl PodMetadata {
    /// The name reserved for the sandbox, as containerd forms it.
    pub fn reserved_name(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// The processes and files of a sandbox's VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VMM process (QEMU or `moatd vmm`).
    pub vmm_pid: i32,
    /// The vsock backend process; none when the VMM serves its devices itself.
    #[serde(default)]
    pub backend_pid: Option<i32>,
    /// The virtio-fs backend processes.
    #[serde(default)]
    pub fs_backend_pids: Vec<i32>,
    /// The sandbox's run directory (sockets, logs).
    pub run_dir: PathBuf,
}

/// One pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The sandbox id (64 hex digits).
    pub id: String,
    /// Pod metadata.
    pub metadata: PodMetadata,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The runtime handler it runs under.
    pub runtime_handler: String,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// The guest's hostname.
    pub hostname: String,
    /// Where kubelet wants container logs.
    pub log_directory: String,
    /// vCPUs of the VM.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The VM, while it exists.
    pub vm: Option<VmRecord>,
    /// The pod network, while it exists (none when no CNI network is configured).
    #[serde(default)]
    pub network: Option<crate::network::PodNetwork>,
    /// The pod's user namespace, when it has one.
    #[serde(default)]
    pub userns: Option<crate::userns::UserNamespace>,
}

impl Record for SandboxRecord {
    const TABLE: &'static str = "sandboxes";
    fn key(&self) -> &str {
        &self.id
    }
}

/// Sandbox records, by id.
pub type SandboxStore = Table<SandboxRecord>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_delete() {
        let d = tempfile::tempdir().expect("tmp");
        let s = SandboxStore::open(crate::store::Store::open(&d.path().join("db")).expect("store"))
            .expect("open");
        let r = SandboxRecord {
            id: "a".repeat(64),
            metadata: PodMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            labels: BTreeMap::from([("app".into(), "web".into())]),
            annotations: BTreeMap::new(),
            runtime_handler: "moat".into(),
            state: SandboxState::Ready,
            created_at: 1,
            hostname: "web".into(),
            log_directory: "/var/log/pods/x".into(),
            vcpus: 1,
            memory_mib: 256,
            vm: Some(VmRecord {
                vmm_pid: 10,
                backend_pid: Some(11),
                fs_backend_pids: vec![],
                run_dir: "/run/moat/x".into(),
            }),
            network: None,
            userns: None,
        };
        s.put(&r).expect("put");
        assert_eq!(s.list().expect("list"), vec![r.clone()]);
        assert_eq!(s.get(&r.id).expect("get"), Some(r.clone()));
        assert_eq!(r.metadata.reserved_name(), "web_default_u1_0");
        s.delete(&r.id).expect("delete");
        s.delete(&r.id).expect("delete again");
        assert!(s.list().expect("list").is_empty());
    }

    #[test]
    fn records_from_before_in_process_devices_still_load() {
        let old = r#"{"vmm_pid":10,"backend_pid":11,"run_dir":"/run/moat/x"}"#;
        let v: VmRecord = serde_json::from_str(old).expect("old record");
        assert_eq!((v.backend_pid, v.fs_backend_pids.len()), (Some(11), 0));
        let none = r#"{"vmm_pid":10,"backend_pid":null,"run_dir":"/run/moat/x"}"#;
        let v: VmRecord = serde_json::from_str(none).expect("no backend");
        assert_eq!(v.backend_pid, None);
    }
}
