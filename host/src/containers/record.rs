//! Container records in the state store (one table, id -> JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::ContainerState;
use crate::store::{Record, Table};

/// A container's mount as CreateContainer asked for it, for ContainerStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MountRepr")]
pub struct MountRecord {
    /// Where it appears in the container.
    pub container_path: String,
    /// The host path.
    pub host_path: String,
    /// Read-only.
    pub read_only: bool,
    /// Read-only recursively.
    pub recursive_read_only: bool,
    /// Propagation.
    pub propagation: crate::volumes::Propagation,
}

/// What records hold: a struct, or (records written before propagation was kept) a
/// (container path, host path, read-only) tuple.
#[derive(Deserialize)]
#[serde(untagged)]
enum MountRepr {
    Full {
        container_path: String,
        host_path: String,
        read_only: bool,
        #[serde(default)]
        recursive_read_only: bool,
        #[serde(default)]
        propagation: crate::volumes::Propagation,
    },
    Tuple(String, String, bool),
}

impl From<MountRepr> for MountRecord {
    fn from(r: MountRepr) -> Self {
        match r {
            MountRepr::Full {
                container_path,
                host_path,
                read_only,
                recursive_read_only,
                propagation,
            } => MountRecord {
                container_path,
                host_path,
                read_only,
                recursive_read_only,
                propagation,
            },
            MountRepr::Tuple(container_path, host_path, read_only) => MountRecord {
                container_path,
                host_path,
                read_only,
                ..Default::default()
            },
        }
    }
}

impl From<&crate::volumes::HostMount> for MountRecord {
    fn from(m: &crate::volumes::HostMount) -> Self {
        MountRecord {
            container_path: m.container_path.clone(),
            host_path: m.host_path.display().to_string(),
            read_only: m.read_only,
            recursive_read_only: m.recursive_read_only,
            propagation: m.propagation,
        }
    }
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id (64 hex digits).
    pub id: String,
    /// Its pod sandbox.
    pub sandbox_id: String,
    /// CRI metadata name.
    pub name: String,
    /// CRI metadata attempt.
    pub attempt: u32,
    /// The image as the request named it.
    pub image: String,
    /// The image id (config digest).
    pub image_id: String,
    /// A repo digest (or tag) of the image, for ContainerStatus.image_ref.
    pub image_ref: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Absolute path of the CRI log file ("" = no log).
    pub log_path: String,
    /// The log path as the request gave it (relative to the pod's log directory).
    pub log_path_rel: String,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Nanoseconds since the epoch, 0 until started.
    pub started_at: i64,
    /// Nanoseconds since the epoch, 0 until exited.
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// Why it exited: Completed, Error, OOMKilled, StartError.
    pub reason: String,
    /// Details (the start error, for instance).
    pub message: String,
    /// The reserved name (unique among live containers).
    pub reserved_name: String,
    /// Mounts, as the request asked for them.
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
    /// The user the main process runs as, as the guest resolved it.
    #[serde(default)]
    pub user: Option<crate::guest::ContainerUser>,
    /// The main process has a terminal.
    #[serde(default)]
    pub tty: bool,
    /// The main process has a stdin Attach can write to.
    #[serde(default)]
    pub stdin: bool,
    /// Its stdin closes when the first attached client detaches.
    #[serde(default)]
    pub stdin_once: bool,
}

impl Record for ContainerRecord {
    const TABLE: &'static str = "containers";
    fn key(&self) -> &str {
        &self.id
    }
}

/// Container records, by id.
pub type ContainerStore = Table<ContainerRecord>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::Propagation;

    #[test]
    fn mounts_read_from_old_tuples_and_new_structs() {
        let old: Vec<MountRecord> =
            serde_json::from_str(r#"[["/data", "/srv/data", true]]"#).expect("old");
        assert_eq!(old[0].host_path, "/srv/data");
        assert!(old[0].read_only && !old[0].recursive_read_only);
        let m = MountRecord {
            container_path: "/a".into(),
            host_path: "/b".into(),
            read_only: true,
            recursive_read_only: true,
            propagation: Propagation::HostToContainer,
        };
        let back: MountRecord =
            serde_json::from_str(&serde_json::to_string(&m).expect("ser")).expect("de");
        assert_eq!(back, m);
    }
}
