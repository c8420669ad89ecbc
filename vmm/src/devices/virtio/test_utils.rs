//! Test support: the driver side of a virtio-mmio device, over real guest memory. It
//! programs the transport through its registers only (feature negotiation, split rings laid
//! out in guest memory, DRIVER_OK), posts descriptor chains, kicks through QueueNotify and
//! reads the used rings back. Shared by the device tests here and, through the `test-utils`
//! feature, by other crates' tests.
//!
//! The rings are written by hand (split virtqueue layout, virtio 1.2 2.7) rather than with
//! virtio-queue's `MockSplitQueue`, which neither wraps around its avail ring nor gives the
//! used ring room of its own.

use std::collections::HashMap;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::mmio::reg;
use crate::devices::bus::BusDevice;

/// Guest memory of `size` bytes at guest address 0, for tests.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
}

/// One descriptor of a hand-made chain.
#[derive(Clone, Copy, Debug)]
pub struct RawDesc {
    /// Guest address (need not be in guest memory: bad chains are the point).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A chain the device returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Used {
    /// Its head descriptor.
    pub head: u16,
    /// The length the device reported.
    pub len: u32,
    /// The first `len` bytes of its writable buffers (as far as they are in guest memory).
    pub data: Vec<u8>,
}

struct Chain {
    descs: Vec<u16>,
    writable: Vec<(u64, u32)>,
}

struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    chains: HashMap<u16, Chain>,
}

/// The driver side of one virtio-mmio device. See the module docs.
pub struct MmioDriver {
    dev: Box<dyn BusDevice>,
    mem: GuestMemoryMmap,
    queues: HashMap<u16, DriverQueue>,
    next_alloc: u64,
    end: u64,
}

impl MmioDriver {
    /// A driver for `dev` (usually a `MmioTransport`), allocating rings and buffers from
    /// all of `mem`.
    pub fn new(dev: impl BusDevice + 'static, mem: GuestMemoryMmap) -> MmioDriver {
        let end = mem.last_addr().0 + 1;
        MmioDriver {
            dev: Box::new(dev),
            mem,
            queues: HashMap::new(),
            next_alloc: 0,
            end,
        }
    }

    /// Allocates rings and buffers from `start..end` only.
    pub fn set_arena(&mut self, start: u64, end: u64) {
        self.next_alloc = start;
        self.end = end;
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The device behind the driver.
    pub fn device(&mut self) -> &mut dyn BusDevice {
        self.dev.as_mut()
    }

    /// Reads a 32-bit register.
    pub fn read32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a 32-bit register.
    pub fn write32(&mut self, offset: u64, value: u32) {
        self.dev.write(offset, &value.to_le_bytes());
    }

    /// Reads `len` bytes of the device config space at `offset`.
    pub fn read_config(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.dev.read(reg::CONFIG + offset, &mut b);
        b
    }

    /// The Status register.
    pub fn status(&mut self) -> u32 {
        self.read32(reg::STATUS)
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read32(reg::DEVICE_FEATURES);
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read32(reg::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    /// Writes the 64 feature bits the driver accepts.
    pub fn write_driver_features(&mut self, features: u64) {
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, features as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Resets the device (Status 0). The driver keeps its view of the old rings (so a test
    /// can check the device leaves them alone) until `setup_queue` replaces them.
    pub fn reset(&mut self) {
        self.write32(reg::STATUS, 0);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accepts `offered & accept`, FEATURES_OK. Returns the
    /// features accepted, or `None` when the device refused them (FEATURES_OK did not stick).
    pub fn negotiate(&mut self, accept: u64) -> Option<u64> {
        self.reset();
        self.write32(reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write32(
            reg::STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        let features = self.device_features() & accept;
        self.write_driver_features(features);
        let status =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.write32(reg::STATUS, status);
        (self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0).then_some(features)
    }

    fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let addr = self.next_alloc.next_multiple_of(align);
        assert!(
            addr + len <= self.end,
            "test driver out of guest memory ({len} bytes wanted)"
        );
        self.next_alloc = addr + len;
        addr
    }

    fn zero(&self, addr: u64, len: u64) {
        let zeros = vec![0u8; len as usize];
        self.mem
            .write_slice(&zeros, GuestAddress(addr))
            .expect("zeroing a ring");
    }

    /// Lays out queue `index`'s rings (`size` entries) in guest memory and programs and
    /// enables the queue. Returns whether the device shows it ready.
    pub fn setup_queue(&mut self, index: u16, size: u16) -> bool {
        self.write32(reg::QUEUE_SEL, u32::from(index));
        let max = self.read32(reg::QUEUE_NUM_MAX);
        assert!(
            max != 0 && u32::from(size) <= max,
            "queue {index}: size {size}, device max {max}"
        );
        self.write32(reg::QUEUE_NUM, u32::from(size));
        let n = u64::from(size);
        let desc = self.alloc(16 * n, 4096);
        let avail = self.alloc(6 + 2 * n, 4);
        let used = self.alloc(6 + 8 * n, 4096);
        self.zero(desc, 16 * n);
        self.zero(avail, 6 + 2 * n);
        self.zero(used, 6 + 8 * n);
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_DRIVER_LOW, avail),
            (reg::QUEUE_DEVICE_LOW, used),
        ] {
            self.write32(low, addr as u32);
            self.write32(low + 4, (addr >> 32) as u32);
        }
        self.write32(reg::QUEUE_READY, 1);
        self.queues.insert(
            index,
            DriverQueue {
                size,
                desc,
                avail,
                used,
                free: (0..size).rev().collect(),
                avail_idx: 0,
                last_used: 0,
                chains: HashMap::new(),
            },
        );
        self.read32(reg::QUEUE_READY) == 1
    }

    /// Sets DRIVER_OK; returns the status read back.
    pub fn driver_ok(&mut self) -> u32 {
        let status = self.status();
        self.write32(reg::STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
        self.status()
    }

    /// The whole initialization: negotiates `offered & accept`, sets up every queue the
    /// device has (`size` entries, or its maximum if smaller), DRIVER_OK. Panics if the
    /// device refuses any step. Returns the features accepted.
    pub fn start(&mut self, accept: u64, size: u16) -> u64 {
        let features = self.negotiate(accept).expect("device accepts the features");
        let mut index = 0u16;
        loop {
            self.write32(reg::QUEUE_SEL, u32::from(index));
            let max = self.read32(reg::QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let size = size.min(u16::try_from(max).unwrap_or(u16::MAX));
            assert!(self.setup_queue(index, size), "queue {index} ready");
            index += 1;
        }
        let status = self.driver_ok();
        assert_eq!(
            status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET),
            VIRTIO_CONFIG_S_DRIVER_OK,
            "device accepts DRIVER_OK (status {status:#x})"
        );
        features
    }

    fn queue(&mut self, index: u16) -> &mut DriverQueue {
        self.queues
            .get_mut(&index)
            .unwrap_or_else(|| panic!("queue {index} is not set up"))
    }

    /// Posts a chain of hand-made descriptors on queue `q`; returns its head.
    pub fn add_raw_chain(&mut self, q: u16, descs: &[RawDesc]) -> u16 {
        assert!(!descs.is_empty(), "a chain has at least one descriptor");
        let mem = self.mem.clone();
        let queue = self.queue(q);
        assert!(
            queue.free.len() >= descs.len(),
            "queue {q}: no free descriptors"
        );
        let ids: Vec<u16> = (0..descs.len())
            .map(|_| queue.free.pop().expect("free descriptor"))
            .collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = 0u16;
            if d.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = ids.get(i + 1).copied();
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            mem.write_slice(&raw, GuestAddress(queue.desc + 16 * u64::from(ids[i])))
                .expect("descriptor");
        }
        let head = ids[0];
        let slot = u64::from(queue.avail_idx % queue.size);
        mem.write_obj(head, GuestAddress(queue.avail + 4 + 2 * slot))
            .expect("avail slot");
        // used_event: interrupt us for the next used chain (EVENT_IDX; ignored otherwise).
        mem.write_obj(
            queue.last_used,
            GuestAddress(queue.avail + 4 + 2 * u64::from(queue.size)),
        )
        .expect("used_event");
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_obj(queue.avail_idx, GuestAddress(queue.avail + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
        let writable = descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| (d.addr, d.len))
            .collect();
        queue.chains.insert(
            head,
            Chain {
                descs: ids,
                writable,
            },
        );
        head
    }

    /// Posts a chain on queue `q`: one device-readable buffer per item of `readable` (with
    /// its bytes), then one device-writable buffer per size in `writable`. Returns its head.
    pub fn add_chain(&mut self, q: u16, readable: &[&[u8]], writable: &[u32]) -> u16 {
        let mut descs = Vec::new();
        for bytes in readable {
            let addr = self.alloc(bytes.len() as u64, 8);
            self.mem
                .write_slice(bytes, GuestAddress(addr))
                .expect("readable buffer");
            descs.push(RawDesc {
                addr,
                len: bytes.len() as u32,
                writable: false,
            });
        }
        for &len in writable {
            let addr = self.alloc(u64::from(len), 8);
            // Poison, so that tests see what the device really wrote.
            self.mem
                .write_slice(&vec![0xa5; len as usize], GuestAddress(addr))
                .expect("writable buffer");
            descs.push(RawDesc {
                addr,
                len,
                writable: true,
            });
        }
        self.add_raw_chain(q, &descs)
    }

    /// Notifies the device of new chains on queue `q` (QueueNotify).
    pub fn kick(&mut self, q: u16) {
        self.write32(reg::QUEUE_NOTIFY, u32::from(q));
    }

    /// The chains the device returned on queue `q` since the last call.
    pub fn poll_used(&mut self, q: u16) -> Vec<Used> {
        let mem = self.mem.clone();
        let queue = self.queue(q);
        fence(Ordering::SeqCst);
        let idx: u16 = mem
            .read_obj(GuestAddress(queue.used + 2))
            .expect("used idx");
        fence(Ordering::SeqCst);
        let mut out = Vec::new();
        while queue.last_used != idx {
            let at = queue.used + 4 + 8 * u64::from(queue.last_used % queue.size);
            queue.last_used = queue.last_used.wrapping_add(1);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
            let head = u16::try_from(id).expect("used id is a descriptor index");
            let chain = queue
                .chains
                .remove(&head)
                .unwrap_or_else(|| panic!("queue {q}: device returned unknown chain {head}"));
            queue.free.extend(chain.descs.iter().rev());
            let mut data = Vec::new();
            let mut left = len as usize;
            for (addr, blen) in chain.writable {
                let take = left.min(blen as usize);
                let mut b = vec![0u8; take];
                if mem.read_slice(&mut b, GuestAddress(addr)).is_err() {
                    break;
                }
                data.extend_from_slice(&b);
                left -= take;
            }
            out.push(Used { head, len, data });
        }
        out
    }

    /// Waits (polling) until the device has returned at least `n` chains on queue `q`, or
    /// `timeout` passes; returns what came back (fewer than `n` on timeout).
    pub fn wait_used(&mut self, q: u16, n: usize, timeout: Duration) -> Vec<Used> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            got.extend(self.poll_used(q));
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Chains posted on queue `q` and not yet returned.
    pub fn outstanding(&mut self, q: u16) -> usize {
        self.queue(q).chains.len()
    }
}
