//! virtio-net (device type 1) on a tap: one RX and one TX queue, no offloads, no control
//! queue, no mergeable buffers. Every frame in the queues and on the tap is preceded by the
//! 12-byte `virtio_net_hdr_v1`; with no offloads negotiated that header carries nothing, so
//! the device writes it zeroed (with `num_buffers = 1` towards the guest) in both
//! directions. The guest's MAC comes from the config space.
//!
//! Offloads (CSUM, GUEST_CSUM, TSO) would need the tap's TUNSETOFFLOAD to follow what the
//! guest negotiates and the header to be passed through; not offered, so frames are whole
//! and checksummed both ways (the kernel finishes them before the tap hands them over).

mod tap;
mod worker;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_S_LINK_UP};

use super::worker::DeviceRun;
use super::{ActivateError, Activation, RING_FEATURES, TYPE_NET, VirtioDevice};

pub use tap::{TapError, VNET_HDR_LEN};

/// RX queue (device → driver).
pub const RX_QUEUE: usize = 0;
/// TX queue (driver → device).
pub const TX_QUEUE: usize = 1;
/// Each queue's size limit.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// `struct virtio_net_config` up to `status`: `u8 mac[6]; le16 status`.
const CONFIG_LEN: usize = 8;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetDeviceError {
    /// The tap is unusable.
    #[error("virtio-net: {0}")]
    Tap(#[from] TapError),
}

/// The virtio-net device. See the module docs.
pub struct Net {
    tap: Arc<File>,
    config: [u8; CONFIG_LEN],
    run: DeviceRun,
}

impl Net {
    /// A NIC with address `mac` on `tap` (opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    /// its header size, offloads and blocking mode are set here).
    pub fn new(tap: File, mac: [u8; 6]) -> Result<Net, NetDeviceError> {
        tap::prepare(&tap)?;
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Ok(Net {
            tap: Arc::new(tap),
            config,
            run: DeviceRun::default(),
        })
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.run.acked_features()
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "net"
    }

    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        RING_FEATURES | (1 << VIRTIO_NET_F_MAC)
    }

    fn ack_features(&mut self, features: u64) {
        self.run.ack_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        super::ignore_config_write("net", offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let tap = self.tap.clone();
        self.run
            .activate("net", activation, TX_QUEUE + 1, "RX and TX are", |a| {
                worker::start(a, tap)
            })
    }

    fn reset(&mut self) -> bool {
        self.run.reset("net");
        true
    }
}
