//! virtio-vsock (device type 19) with a hybrid-vsock host side, in-process.
//!
//! The protocol (connections, credit, the `CONNECT <port>\n` handshake on the Unix socket,
//! `<uds_path>_<port>` for guest connections) is moat-devices' `Muxer`, the same code the
//! vhost-user backend runs for QEMU, so the host reaches the agent the same way whichever
//! VMM runs the guest. This module is the device model: features, config space (the guest
//! CID), and a worker thread (`worker`) that moves packets between the queues and the
//! muxer once the driver is up.
//!
//! The muxer binds its Unix listener in `Vsock::new`, before the guest runs: host CONNECTs
//! that arrive early wait in the listener's backlog and are served once the queues run,
//! and a driver reset voids only the connections the guest knew (pending CONNECTs wait for
//! the next driver).

mod worker;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use moat_devices::vsock::VsockError;
use moat_devices::vsock::muxer::Muxer;

use super::worker::DeviceRun;
use super::{ActivateError, Activation, RING_FEATURES, TYPE_VSOCK, VirtioDevice};

/// RX queue (device → driver).
pub const RX_QUEUE: usize = 0;
/// TX queue (driver → device).
pub const TX_QUEUE: usize = 1;
/// Event queue (transport reset events; we never send any).
pub const EVENT_QUEUE: usize = 2;
/// Each queue's size limit.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockDeviceError {
    /// The CID is one of the reserved ones.
    #[error("vsock guest CID {0} is reserved or out of range: use 3..=4294967294")]
    InvalidCid(u64),
    /// The hybrid-vsock listener could not be set up.
    #[error("vsock hybrid socket {}: {source}", path.display())]
    Muxer {
        /// The Unix socket path.
        path: PathBuf,
        /// Why.
        source: VsockError,
    },
}

/// The virtio-vsock device. See the module docs.
pub struct Vsock {
    guest_cid: u64,
    muxer: Arc<Mutex<Muxer>>,
    run: DeviceRun,
}

impl Vsock {
    /// A device for the guest `guest_cid`, with its hybrid-vsock listener bound at
    /// `uds_path` (a stale socket there is replaced; the socket is removed when the device
    /// is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockDeviceError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockDeviceError::InvalidCid(guest_cid));
        }
        let muxer = Muxer::new(uds_path, guest_cid).map_err(|source| VsockDeviceError::Muxer {
            path: uds_path.to_owned(),
            source,
        })?;
        Ok(Vsock {
            guest_cid,
            muxer: Arc::new(Mutex::new(muxer)),
            run: DeviceRun::default(),
        })
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.run.acked_features()
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        TYPE_VSOCK
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

    /// `struct virtio_vsock_config { le64 guest_cid; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        super::ignore_config_write("vsock", offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let muxer = self.muxer.clone();
        self.run
            .activate("vsock", activation, TX_QUEUE + 1, "RX and TX are", |a| {
                worker::start(a, muxer)
            })
    }

    fn reset(&mut self) -> bool {
        self.run.reset("vsock");
        // The worker is gone either way: the connections the old driver knew are void.
        self.muxer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .guest_reset();
        true
    }
}
