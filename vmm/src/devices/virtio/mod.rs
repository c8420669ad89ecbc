//! Virtio devices on the virtio-mmio transport.
//!
//! The transport (`mmio`) owns the register file, the queues' configuration and the
//! device status; a device (`vsock`, `fs`, `net`) owns its config space and, once the driver
//! sets DRIVER_OK, a worker thread that waits on its queues' notification eventfds (KVM
//! ioeventfds registered at the QueueNotify register) and signals used buffers through an
//! `IrqTrigger` (a KVM irqfd).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: a queue has used buffers.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
/// virtio-vsock.
pub const TYPE_VSOCK: u32 = 19;
/// virtio-fs.
pub const TYPE_FS: u32 = 26;

/// A device's interrupt line: the status bits the driver reads (InterruptStatus) and
/// acknowledges (InterruptACK), and the eventfd KVM injects the interrupt from (irqfd).
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// A trigger signalling through `evt`.
    pub fn new(evt: EventFd) -> IrqTrigger {
        IrqTrigger {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Sets `bits` in the interrupt status and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd (registered with KVM as an irqfd).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What activating a device hands over: guest memory, the interrupt, and each queue with
/// the eventfd the driver's notifications for it arrive on.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<IrqTrigger>,
    /// The queues, in index order, each ready, with its notification eventfd.
    pub queues: Vec<(Queue, EventFd)>,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer queues than the device needs, or a bad one.
    #[error("virtio device {device}: {why}")]
    BadQueues {
        /// Device name.
        device: &'static str,
        /// What was wrong.
        why: String,
    },
    /// The worker thread or its resources could not be set up.
    #[error("virtio device {device}: {source}")]
    Io {
        /// Device name.
        device: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A virtio device model behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// A short name for logs (`vsock`, `fs`, `net`).
    fn name(&self) -> &'static str;
    /// The virtio device id (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits offered (VERSION_1 included).
    fn features(&self) -> u64;
    /// The feature bits the driver accepted (a subset of `features`).
    fn ack_features(&mut self, features: u64);
    /// Reads the device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device config space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: start serving the queues (on a worker thread of the device's own).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: stop the worker and drop the queues. Returns false when
    /// the device cannot be reset (the transport then marks it as needing a reset).
    fn reset(&mut self) -> bool;
}

pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;
mod worker;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

/// The ring features every device here offers: VERSION_1 (no legacy interface), EVENT_IDX
/// (the workers do the notification dance, `worker::serve_queue`) and INDIRECT_DESC
/// (virtio-queue follows indirect tables).
pub const RING_FEATURES: u64 = (1 << virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    | (1 << virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);

/// A driver's write to a config space that is read-only: logged and ignored.
pub fn ignore_config_write(device: &'static str, offset: u64, data: &[u8]) {
    tracing::warn!(
        device,
        offset,
        len = data.len(),
        "virtio: config space is read-only; write ignored"
    );
}

/// Reads a device config space held as bytes: `config[offset..]` into `data`, bytes past
/// its end as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}
