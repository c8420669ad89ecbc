//! virtio-fs (device type 26), in-process: one high-priority queue (FORGET, INTERRUPT) and
//! one request queue, both served by a worker thread with moat-devices' FUSE server over
//! the passthrough filesystem (the same server and read-only policy the vhost-user backend
//! gives QEMU). The guest mounts it with `mount -t virtiofs <tag> <dir>`.
//!
//! Process-wide side effect (from the passthrough filesystem): the process umask becomes 0
//! when the guest mounts (FUSE INIT). The VMM is a process of its own per pod VM, so that
//! stays inside it.

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use moat_devices::fs::FsError;
use moat_devices::fs::server::FuseServer;

use super::worker::DeviceRun;
use super::{ActivateError, Activation, RING_FEATURES, TYPE_FS, VirtioDevice};

mod worker;

/// The high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// The (only) request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Each queue's size limit.
pub const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// The tag field of the config space (`u8 tag[36]`).
pub const TAG_LEN: usize = 36;
/// The config space: the tag, then `le32 num_request_queues`.
const CONFIG_LEN: usize = TAG_LEN + 4;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsDeviceError {
    /// The tag is empty or too long for the config space.
    #[error("virtio-fs tag {0:?} must have 1 to 36 bytes")]
    BadTag(String),
    /// The shared directory or the FUSE server could not be set up.
    #[error("virtio-fs share: {0}")]
    Share(#[from] FsError),
}

/// The virtio-fs device. See the module docs.
pub struct Fs {
    config: [u8; CONFIG_LEN],
    server: Arc<FuseServer>,
    run: DeviceRun,
}

impl Fs {
    /// A device sharing `shared_dir` under the mount tag `tag`; `read_only` refuses every
    /// change (EROFS) in the device itself.
    pub fn new(tag: &str, shared_dir: &Path, read_only: bool) -> Result<Fs, FsDeviceError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsDeviceError::BadTag(tag.to_owned()));
        }
        let server = moat_devices::fs::in_process_server(shared_dir, read_only)?;
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            config,
            server: Arc::new(server),
            run: DeviceRun::default(),
        })
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.run.acked_features()
    }
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        RING_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.run.ack_features(features);
    }

    /// `struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        super::ignore_config_write("fs", offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let server = self.server.clone();
        self.run.activate(
            "fs",
            activation,
            REQUEST_QUEUE + 1,
            "the high-priority and the request queue are",
            |a| worker::start(a, server),
        )
    }

    fn reset(&mut self) -> bool {
        self.run.reset("fs");
        true
    }
}
