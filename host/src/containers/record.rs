//! Container records in the state store (one table, id -> JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ContainerError;
use super::state::ContainerState;
use crate::store::{JsonTable, Store, StoreError};

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
    /// Mounts: (container path, host path, read-only).
    #[serde(default)]
    pub mounts: Vec<(String, String, bool)>,
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

/// Container records, by id.
#[derive(Clone)]
pub struct ContainerStore {
    table: JsonTable<ContainerRecord>,
}

fn e(err: StoreError) -> ContainerError {
    ContainerError::Store(err.0)
}

impl ContainerStore {
    /// Opens the table.
    pub fn open(store: Store) -> Result<Self, ContainerError> {
        Ok(Self {
            table: JsonTable::open(store, "containers").map_err(e)?,
        })
    }

    /// Writes a record.
    pub fn put(&self, r: &ContainerRecord) -> Result<(), ContainerError> {
        self.table.put(&r.id, r).map_err(e)
    }

    /// Deletes a record; absent is fine.
    pub fn delete(&self, id: &str) -> Result<(), ContainerError> {
        self.table.delete(id).map_err(e)
    }

    /// Every record.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        self.table.list().map_err(e)
    }
}
