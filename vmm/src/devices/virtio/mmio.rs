//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register file a driver
//! sees in a 0x1000-byte MMIO window, the queues' configuration and the device status
//! state machine. The device model behind it (`VirtioDevice`) gets its queues when the
//! driver sets DRIVER_OK.
//!
//! Written here rather than taken from a crate: rust-vmm has no maintained virtio-mmio
//! transport crate (`virtio-device` was never published past a prototype), and Firecracker's
//! and Cloud Hypervisor's transports live inside their VMMs.
//!
//! Accesses: registers are 32-bit, aligned; anything else is ignored (reads as zero) with a
//! warning. The config space (0x100 and up) takes any width and is the device's.

use std::io;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Activation, IrqTrigger, VIRTIO_MMIO_INT_CONFIG, VirtioDevice};
use crate::devices::bus::BusDevice;

/// The size of a device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Where QueueNotify is in the window (the VMM registers the ioeventfds there).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// `virt` in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The virtio-mmio version (2: virtio 1.0 and later, no legacy).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor id: `MOAT` in little-endian.
pub const VENDOR_ID: u32 = 0x5441_4f4d;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    /// R: 0x74726976.
    pub const MAGIC: u64 = 0x000;
    /// R: 2.
    pub const VERSION: u64 = 0x004;
    /// R: the device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// R: the vendor.
    pub const VENDOR_ID: u64 = 0x00c;
    /// R: 32 feature bits, selected by DeviceFeaturesSel.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// W: which 32 feature bits DeviceFeatures shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// W: 32 accepted feature bits, selected by DriverFeaturesSel.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// W: which 32 feature bits DriverFeatures sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// W: the queue the queue registers address.
    pub const QUEUE_SEL: u64 = 0x030;
    /// R: the selected queue's largest size (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// W: the selected queue's size.
    pub const QUEUE_NUM: u64 = 0x038;
    /// RW: the selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// W: a queue index with new buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// R: why the interrupt was raised.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// W: the interrupt bits handled.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// RW: the device status.
    pub const STATUS: u64 = 0x070;
    /// W: descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// W: descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// W: driver (available) ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// W: driver (available) ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// W: device (used) ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// W: device (used) ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// W: shared memory region select.
    pub const SHM_SEL: u64 = 0x0ac;
    /// R: shared memory region length, low 32 bits (all ones: no region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// R: shared memory region length, high 32 bits.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// R: shared memory region base, low 32 bits.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// R: shared memory region base, high 32 bits.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// RW: queue reset (only with VIRTIO_F_RING_RESET, never offered).
    pub const QUEUE_RESET: u64 = 0x0c0;
    /// R: changes when the config space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// The device config space starts here.
    pub const CONFIG: u64 = 0x100;
}

const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
/// The status after each step of the initialization, in order.
const STAGE_ACK: u32 = ACKNOWLEDGE;
const STAGE_DRIVER: u32 = STAGE_ACK | DRIVER;
const STAGE_FEATURES: u32 = STAGE_DRIVER | FEATURES_OK;
const STAGE_DRIVER_OK: u32 = STAGE_FEATURES | DRIVER_OK;

/// A virtio device on the virtio-mmio transport. See the module docs.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    config_generation: u32,
}

impl MmioTransport {
    /// The transport for `device`, reset. One notification eventfd is made per queue.
    ///
    /// # Panics
    /// When the process cannot create an eventfd (out of file descriptors); `try_new`
    /// returns that error instead.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
    ) -> MmioTransport {
        MmioTransport::try_new(device, mem, interrupt)
            .expect("creating the queue notification eventfds of a virtio-mmio device")
    }

    /// As `new`, with the eventfd creation error returned.
    pub fn try_new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
    ) -> io::Result<MmioTransport> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).unwrap_or_else(|e| {
                    // A device bug, not the guest's: the queue can never be set up.
                    tracing::error!(device = device.name(), max, error = %e,
                        "virtio-mmio: invalid queue size limit");
                    Queue::default()
                })
            })
            .collect::<Vec<_>>();
        let queue_evts = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        })
    }

    /// One notification eventfd per queue, in index order. The VMM registers eventfd `i`
    /// as a KVM ioeventfd at `base + NOTIFY_REG_OFFSET` with datamatch `i`.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running (DRIVER_OK accepted, not reset since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn name(&self) -> &'static str {
        self.device.name()
    }

    /// Whether the status has all of `set` and none of `clear`.
    fn status_is(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: a length of all ones says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::QUEUE_RESET => 0,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::warn!(
                    device = self.name(),
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            reg::SHM_SEL => {}
            _ => {
                tracing::warn!(
                    device = self.name(),
                    offset,
                    value,
                    "virtio-mmio: write to a read-only or unknown register"
                );
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.status_is(DRIVER, FEATURES_OK | FAILED) {
            tracing::warn!(
                device = self.name(),
                status = self.status,
                "virtio-mmio: driver features written outside feature negotiation; ignored"
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                if value != 0 {
                    tracing::warn!(
                        device = self.name(),
                        sel,
                        value,
                        "virtio-mmio: driver features beyond bit 63; ignored"
                    );
                }
                return;
            }
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }

    fn notify(&mut self, value: u32) {
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!(device = self.name(), queue = value, error = %e, "virtio-mmio: queue notification failed");
                }
            }
            None => {
                tracing::warn!(
                    device = self.name(),
                    queue = value,
                    "virtio-mmio: notification for a queue that does not exist"
                );
            }
        }
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        if !self.status_is(FEATURES_OK, DRIVER_OK | FAILED) {
            tracing::warn!(
                device = self.name(),
                offset,
                status = self.status,
                "virtio-mmio: queue set-up outside FEATURES_OK..DRIVER_OK; ignored"
            );
            return;
        }
        let name = self.name();
        let sel = self.queue_sel;
        let Some(q) = self.selected_queue() else {
            tracing::warn!(
                device = name,
                queue = sel,
                "virtio-mmio: set-up of a queue that does not exist; ignored"
            );
            return;
        };
        match offset {
            reg::QUEUE_NUM => {
                let size = u16::try_from(value).unwrap_or(0);
                if q.try_set_size(size).is_err() {
                    tracing::warn!(
                        device = name,
                        queue = sel,
                        size = value,
                        "virtio-mmio: invalid queue size; ignored"
                    );
                }
            }
            reg::QUEUE_READY => q.set_ready(value == 1),
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
            reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
            reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    /// The Status register's state machine (virtio 1.2, 3.1.1): each write adds the next
    /// bit; 0 resets; FAILED is accepted at any time. Anything else is ignored.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & FAILED != 0 {
            tracing::warn!(
                device = self.name(),
                "virtio-mmio: the driver gave up on the device (FAILED)"
            );
            self.status |= FAILED;
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit; a driver writing back what it read keeps it.
        let old = self.status & !NEEDS_RESET;
        let new = value & !NEEDS_RESET;
        if new == old {
            return;
        }
        match (old, new) {
            (0, STAGE_ACK) | (STAGE_ACK, STAGE_DRIVER) => {
                self.status = new | (self.status & NEEDS_RESET);
            }
            (STAGE_DRIVER, STAGE_FEATURES) => self.features_ok(),
            (STAGE_FEATURES, STAGE_DRIVER_OK) => self.driver_ok(),
            _ => tracing::warn!(
                device = self.name(),
                status = self.status,
                value,
                "virtio-mmio: status write out of order; ignored"
            ),
        }
    }

    /// FEATURES_OK: accepted when the driver took only offered features, VERSION_1 among
    /// them (a version 2 transport has no legacy interface); otherwise the bit stays clear,
    /// which is how the driver learns it was refused.
    fn features_ok(&mut self) {
        let offered = self.device.features();
        let unoffered = self.driver_features & !offered;
        if unoffered != 0 {
            tracing::warn!(
                device = self.name(),
                unoffered,
                "virtio-mmio: driver accepted features not offered; FEATURES_OK refused"
            );
            return;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            tracing::warn!(
                device = self.name(),
                "virtio-mmio: driver did not accept VERSION_1; FEATURES_OK refused"
            );
            return;
        }
        self.device.ack_features(self.driver_features);
        self.status |= FEATURES_OK;
    }

    /// DRIVER_OK: the ready queues (a prefix of the queues, each valid in guest memory) go
    /// to the device. On failure the device needs a reset, and says so.
    fn driver_ok(&mut self) {
        match self.activation() {
            Ok(activation) => match self.device.activate(activation) {
                Ok(()) => {
                    self.status |= DRIVER_OK;
                    self.activated = true;
                    return;
                }
                Err(e) => {
                    tracing::warn!(device = self.name(), error = %e, "virtio-mmio: activation failed");
                }
            },
            Err(why) => {
                tracing::warn!(
                    device = self.name(),
                    why,
                    "virtio-mmio: bad queues at DRIVER_OK"
                );
            }
        }
        self.status |= DRIVER_OK | NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG) {
            tracing::warn!(device = self.name(), error = %e, "virtio-mmio: cannot raise the config interrupt");
        }
    }

    fn activation(&self) -> Result<Activation, String> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let ready = self.queues.iter().take_while(|q| q.ready()).count();
        if let Some(i) = self.queues.iter().skip(ready).position(|q| q.ready()) {
            return Err(format!(
                "queue {} is ready but queue {ready} is not",
                ready + i
            ));
        }
        let mut queues = Vec::with_capacity(ready);
        for (i, q) in self.queues.iter().take(ready).enumerate() {
            if !q.is_valid(&self.mem) {
                return Err(format!(
                    "queue {i} lies outside guest memory or has a bad size"
                ));
            }
            let mut copy = Queue::try_from(q.state()).map_err(|e| format!("queue {i}: {e}"))?;
            copy.set_event_idx(event_idx);
            let evt = self.queue_evts[i]
                .try_clone()
                .map_err(|e| format!("queue {i} eventfd: {e}"))?;
            queues.push((copy, evt));
        }
        Ok(Activation {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
        })
    }

    /// Status 0: the device stops and forgets its queues; the transport returns to its
    /// initial state. A device that cannot reset is marked as needing a reset instead.
    fn reset(&mut self) {
        if !self.device.reset() {
            tracing::warn!(
                device = self.name(),
                "virtio-mmio: the device could not reset"
            );
            self.status |= NEEDS_RESET;
            return;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.ack(u32::MAX);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.activated = false;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(
                device = self.name(),
                offset,
                len = data.len(),
                "virtio-mmio: register read that is not 32-bit aligned"
            );
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                device = self.name(),
                offset,
                len = data.len(),
                "virtio-mmio: register write that is not 32 bits; ignored"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            tracing::warn!(
                device = self.name(),
                offset,
                "virtio-mmio: unaligned register write; ignored"
            );
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
