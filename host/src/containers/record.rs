//! Container records in the state store (one table, id -> JSON).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::ContainerError;
use super::state::ContainerState;
use crate::store::Store;

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

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
}

/// Container records.
#[derive(Clone)]
pub struct ContainerStore {
    store: Store,
}

fn e(err: impl std::fmt::Display) -> ContainerError {
    ContainerError::Store(err.to_string())
}

impl ContainerStore {
    /// Opens the table.
    pub fn open(store: Store) -> Result<Self, ContainerError> {
        let txn = store.db().begin_write().map_err(e)?;
        txn.open_table(CONTAINERS).map_err(e)?;
        txn.commit().map_err(e)?;
        Ok(Self { store })
    }

    /// Writes a record.
    pub fn put(&self, r: &ContainerRecord) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec(r).map_err(e)?;
        let txn = self.store.db().begin_write().map_err(e)?;
        {
            let mut t = txn.open_table(CONTAINERS).map_err(e)?;
            t.insert(r.id.as_str(), bytes.as_slice()).map_err(e)?;
        }
        txn.commit().map_err(e)
    }

    /// Deletes a record; absent is fine.
    pub fn delete(&self, id: &str) -> Result<(), ContainerError> {
        let txn = self.store.db().begin_write().map_err(e)?;
        {
            let mut t = txn.open_table(CONTAINERS).map_err(e)?;
            t.remove(id).map_err(e)?;
        }
        txn.commit().map_err(e)
    }

    /// Every record.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        let txn = self.store.db().begin_read().map_err(e)?;
        let t = txn.open_table(CONTAINERS).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            out.push(serde_json::from_slice(v.value()).map_err(e)?);
        }
        Ok(out)
    }
}
