//! The register file and the status state machine, against a fake device that records what
//! the transport asks of it.

use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::test_utils::{MmioDriver, guest_memory};
use super::super::{ActivateError, Activation, VIRTIO_MMIO_INT_VRING};
use super::*;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// A device-specific feature bit the fake offers.
const FEATURE_X: u64 = 1 << 3;
const MEM_SIZE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueSeen {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
}

#[derive(Default)]
struct Record {
    acked: Option<u64>,
    activations: Vec<Vec<QueueSeen>>,
    evts: Vec<EventFd>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_activate: bool,
    fail_reset: bool,
}

struct Fake {
    rec: Arc<Mutex<Record>>,
    config: [u8; 8],
}

const SIZES: [u16; 2] = [256, 64];

impl VirtioDevice for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &SIZES
    }
    fn features(&self) -> u64 {
        VERSION_1 | EVENT_IDX | FEATURE_X | 1 << 40
    }
    fn ack_features(&mut self, features: u64) {
        self.rec.lock().expect("lock").acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self
                .config
                .get(offset as usize + i)
                .copied()
                .unwrap_or_default();
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.rec
            .lock()
            .expect("lock")
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut rec = self.rec.lock().expect("lock");
        if rec.fail_activate {
            return Err(ActivateError::BadQueues {
                device: "fake",
                why: "told to fail".into(),
            });
        }
        let seen = a
            .queues
            .iter()
            .map(|(q, _)| QueueSeen {
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                event_idx: q.event_idx_enabled(),
            })
            .collect();
        rec.activations.push(seen);
        rec.evts = a.queues.into_iter().map(|(_, e)| e).collect();
        Ok(())
    }
    fn reset(&mut self) -> bool {
        let mut rec = self.rec.lock().expect("lock");
        rec.resets += 1;
        !rec.fail_reset
    }
}

struct Rig {
    rec: Arc<Mutex<Record>>,
    irq: Arc<IrqTrigger>,
    evts: Vec<EventFd>,
    drv: MmioDriver,
}

fn rig() -> Rig {
    let rec = Arc::new(Mutex::new(Record::default()));
    let fake = Fake {
        rec: rec.clone(),
        config: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    let irq = Arc::new(IrqTrigger::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let mem = guest_memory(MEM_SIZE);
    let t = MmioTransport::new(Box::new(fake), mem.clone(), irq.clone());
    let evts = t
        .queue_evts()
        .iter()
        .map(|e| e.try_clone().expect("clone"))
        .collect();
    Rig {
        rec,
        irq,
        evts,
        drv: MmioDriver::new(t, mem),
    }
}

impl Rig {
    fn rec(&self) -> std::sync::MutexGuard<'_, Record> {
        self.rec.lock().expect("lock")
    }
}

#[test]
fn identity_and_read_only_registers() {
    let mut r = rig();
    let d = &mut r.drv;
    assert_eq!(d.read32(reg::MAGIC), 0x7472_6976);
    assert_eq!(d.read32(reg::VERSION), 2);
    assert_eq!(d.read32(reg::DEVICE_ID), 42);
    assert_eq!(d.read32(reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(
        d.device_features(),
        VERSION_1 | EVENT_IDX | FEATURE_X | 1 << 40
    );
    d.write32(reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(d.read32(reg::DEVICE_FEATURES), 0);
    for (i, max) in [(0, 256), (1, 64), (2, 0), (u32::MAX, 0)] {
        d.write32(reg::QUEUE_SEL, i);
        assert_eq!(d.read32(reg::QUEUE_NUM_MAX), max, "queue {i}");
        assert_eq!(d.read32(reg::QUEUE_READY), 0);
    }
    assert_eq!(d.read32(reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(d.read32(reg::SHM_LEN_HIGH), u32::MAX);
    assert_eq!(d.read32(reg::CONFIG_GENERATION), 0);
    assert_eq!(d.read32(reg::STATUS), 0);
    // A write-only register reads as zero; so do odd-sized and unaligned register reads.
    assert_eq!(d.read32(reg::QUEUE_NOTIFY), 0);
    let mut two = [0xffu8; 2];
    d.device().read(reg::MAGIC, &mut two);
    assert_eq!(two, [0xff, 0xff], "a 16-bit register read is ignored");
    assert_eq!(d.read32(reg::MAGIC + 2), 0);
    // Read-only registers ignore writes.
    d.write32(reg::MAGIC, 0);
    d.write32(reg::DEVICE_ID, 7);
    assert_eq!(d.read32(reg::MAGIC), 0x7472_6976);
    assert_eq!(d.read32(reg::DEVICE_ID), 42);
}

#[test]
fn config_space_goes_to_the_device_at_any_width() {
    let mut r = rig();
    assert_eq!(r.drv.read_config(0, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(r.drv.read_config(6, 1), [7]);
    assert_eq!(r.drv.read_config(4, 2), [5, 6]);
    assert_eq!(
        r.drv.read_config(6, 4),
        [7, 8, 0, 0],
        "past the end reads zero"
    );
    r.drv.device().write(reg::CONFIG + 3, &[9, 9]);
    assert_eq!(r.rec().config_writes, vec![(3, vec![9, 9])]);
}

#[test]
fn full_initialization_activates_with_the_programmed_queues() {
    let mut r = rig();
    let features = r.drv.start(VERSION_1 | EVENT_IDX | FEATURE_X, 32);
    assert_eq!(features, VERSION_1 | EVENT_IDX | FEATURE_X);
    assert_eq!(r.rec().acked, Some(features));
    let acts = r.rec().activations.clone();
    assert_eq!(acts.len(), 1);
    let qs = &acts[0];
    assert_eq!(qs.len(), 2);
    assert_eq!(qs[0].size, 32);
    assert_eq!(qs[1].size, 32);
    assert!(qs.iter().all(|q| q.event_idx), "EVENT_IDX negotiated");
    assert_ne!(qs[0].desc, qs[1].desc);
    assert_eq!(qs[0].desc % 16, 0);
    assert_eq!(r.drv.status(), 0xf);
    // The activation's eventfds are the transport's: a notification reaches the device.
    r.drv.kick(1);
    assert_eq!(r.rec().evts[1].read().expect("kick seen by the device"), 1);
    assert!(r.rec().evts[0].read().is_err(), "queue 0 was not notified");
}

#[test]
fn without_event_idx_queues_have_it_off_and_high_features_work() {
    let mut r = rig();
    let features = r.drv.start(VERSION_1 | 1 << 40, 64);
    assert_eq!(features, VERSION_1 | 1 << 40);
    assert_eq!(r.rec().acked, Some(VERSION_1 | 1 << 40));
    assert!(r.rec().activations[0].iter().all(|q| !q.event_idx));
}

#[test]
fn features_ok_is_refused_for_unoffered_features_or_without_version_1() {
    let mut r = rig();
    // Unoffered bit 5.
    assert_eq!(r.drv.negotiate(0), None);
    r.drv.write_driver_features(VERSION_1 | 1 << 5);
    r.drv.write32(reg::STATUS, 0xb);
    assert_eq!(r.drv.status(), 0x3, "FEATURES_OK did not stick");
    // No VERSION_1.
    assert_eq!(r.drv.negotiate(FEATURE_X), None);
    assert_eq!(r.drv.status(), 0x3);
    assert_eq!(r.rec().acked, None);
    // Queue set-up is refused before FEATURES_OK.
    r.drv.write32(reg::QUEUE_SEL, 0);
    r.drv.write32(reg::QUEUE_READY, 1);
    assert_eq!(r.drv.read32(reg::QUEUE_READY), 0);
    // A subset that is fine.
    assert_eq!(r.drv.negotiate(VERSION_1), Some(VERSION_1));
    assert_eq!(r.rec().acked, Some(VERSION_1));
}

#[test]
fn out_of_order_status_writes_are_ignored() {
    let mut r = rig();
    let d = &mut r.drv;
    d.write32(reg::STATUS, 0x2); // DRIVER before ACKNOWLEDGE
    assert_eq!(d.status(), 0);
    d.write32(reg::STATUS, 0x1);
    d.write32(reg::STATUS, 0x9); // FEATURES_OK before DRIVER
    assert_eq!(d.status(), 0x1);
    d.write32(reg::STATUS, 0x5); // DRIVER_OK before DRIVER
    assert_eq!(d.status(), 0x1);
    d.write32(reg::STATUS, 0x3);
    d.write_driver_features(VERSION_1);
    d.write32(reg::STATUS, 0x7); // DRIVER_OK before FEATURES_OK
    assert_eq!(d.status(), 0x3);
    d.write32(reg::STATUS, 0x1); // clearing a bit
    assert_eq!(d.status(), 0x3);
    d.write32(reg::STATUS, 0xb);
    assert_eq!(d.status(), 0xb);
    // Driver features are fixed once FEATURES_OK is set.
    d.write_driver_features(VERSION_1 | FEATURE_X);
    assert!(d.setup_queue(0, 16));
    assert!(d.setup_queue(1, 16));
    assert_eq!(d.driver_ok(), 0xf);
    assert_eq!(r.rec().acked, Some(VERSION_1));
    assert_eq!(r.rec().activations.len(), 1);
    // DRIVER_OK again: no second activation.
    r.drv.write32(reg::STATUS, 0xf);
    assert_eq!(r.rec().activations.len(), 1);
    // FAILED is accepted at any time.
    r.drv.write32(reg::STATUS, 0x8f);
    assert_eq!(r.drv.status(), 0x8f);
}

#[test]
fn queue_registers_are_fixed_after_driver_ok_and_bad_sizes_ignored() {
    let mut r = rig();
    let d = &mut r.drv;
    d.negotiate(VERSION_1).expect("features");
    d.write32(reg::QUEUE_SEL, 1);
    d.write32(reg::QUEUE_NUM, 3); // not a power of two
    d.write32(reg::QUEUE_NUM, 128); // above the maximum (64)
    d.write32(reg::QUEUE_NUM, 0x1_0010); // not 16 bits
    d.write32(reg::QUEUE_SEL, 7); // no such queue: ignored, no panic
    d.write32(reg::QUEUE_NUM, 16);
    d.write32(reg::QUEUE_READY, 1);
    assert!(d.setup_queue(0, 8));
    // Queue 1: everything but its size, which stays at its maximum.
    d.write32(reg::QUEUE_SEL, 1);
    d.write32(reg::QUEUE_DESC_LOW, 0x8_0000);
    d.write32(reg::QUEUE_DESC_HIGH, 0);
    d.write32(reg::QUEUE_DRIVER_LOW, 0x8_1000);
    d.write32(reg::QUEUE_DEVICE_LOW, 0x8_2000);
    d.write32(reg::QUEUE_DESC_LOW, 0x8_0004); // misaligned: ignored
    d.write32(reg::QUEUE_READY, 1);
    assert_eq!(d.driver_ok(), 0xf);
    let qs = r.rec().activations[0].clone();
    assert_eq!(qs[0].size, 8);
    assert_eq!(
        qs[1],
        QueueSeen {
            size: 64,
            desc: 0x8_0000,
            avail: 0x8_1000,
            used: 0x8_2000,
            event_idx: false,
        }
    );
    r.drv.write32(reg::QUEUE_SEL, 1);
    r.drv.write32(reg::QUEUE_READY, 0);
    assert_eq!(r.drv.read32(reg::QUEUE_READY), 1, "locked after DRIVER_OK");
}

#[test]
fn queue_outside_guest_memory_needs_reset_and_raises_config_interrupt() {
    let mut r = rig();
    let d = &mut r.drv;
    d.negotiate(VERSION_1).expect("features");
    assert!(d.setup_queue(0, 16));
    d.write32(reg::QUEUE_SEL, 1);
    d.write32(reg::QUEUE_NUM, 16);
    d.write32(reg::QUEUE_DESC_LOW, 0);
    d.write32(reg::QUEUE_DESC_HIGH, 1); // 4 GiB: far beyond 1 MiB of memory
    d.write32(reg::QUEUE_READY, 1);
    let status = d.driver_ok();
    assert_eq!(status & NEEDS_RESET, NEEDS_RESET);
    assert!(r.rec().activations.is_empty());
    assert_eq!(
        r.irq.status() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(r.irq.eventfd().read().expect("interrupt raised"), 1);
    // Reset clears it all, and a good set-up then works.
    r.drv.reset();
    assert_eq!(r.drv.status(), 0);
    assert_eq!(r.irq.status(), 0);
    r.drv.start(VERSION_1, 16);
    assert_eq!(r.rec().activations.len(), 1);
}

#[test]
fn ready_queues_must_be_a_prefix_and_activation_errors_need_reset() {
    let mut r = rig();
    r.drv.negotiate(VERSION_1).expect("features");
    assert!(r.drv.setup_queue(1, 16)); // queue 1 ready, queue 0 not
    assert_eq!(r.drv.driver_ok() & NEEDS_RESET, NEEDS_RESET);
    assert!(r.rec().activations.is_empty());

    // Only queue 0 ready: the device gets one queue (it decides whether that is enough).
    r.drv.negotiate(VERSION_1).expect("features");
    assert!(r.drv.setup_queue(0, 16));
    assert_eq!(r.drv.driver_ok(), 0xf);
    assert_eq!(r.rec().activations[0].len(), 1);

    r.rec().fail_activate = true;
    r.drv.negotiate(VERSION_1).expect("features");
    assert!(r.drv.setup_queue(0, 16));
    assert!(r.drv.setup_queue(1, 16));
    assert_eq!(r.drv.driver_ok(), 0xf | NEEDS_RESET);
    // A driver writing back what it read keeps the bit and changes nothing else.
    r.drv.write32(reg::STATUS, 0xf | NEEDS_RESET);
    assert_eq!(r.drv.status(), 0xf | NEEDS_RESET);
}

#[test]
fn reset_returns_everything_to_defaults() {
    let mut r = rig();
    r.drv.start(VERSION_1 | EVENT_IDX, 16);
    r.irq.trigger(VIRTIO_MMIO_INT_VRING).expect("trigger");
    r.drv.kick(0); // a notification nobody consumed
    let resets = r.rec().resets;
    r.drv.write32(reg::STATUS, 0);
    assert_eq!(r.rec().resets, resets + 1);
    assert_eq!(r.drv.status(), 0);
    assert_eq!(r.drv.read32(reg::INTERRUPT_STATUS), 0);
    assert!(r.evts[0].read().is_err(), "stale notification dropped");
    for q in 0..2 {
        r.drv.write32(reg::QUEUE_SEL, q);
        assert_eq!(r.drv.read32(reg::QUEUE_READY), 0);
        assert_eq!(
            r.drv.read32(reg::QUEUE_NUM_MAX),
            u32::from(SIZES[q as usize])
        );
    }
    // Driver features start over: FEATURES_OK with none accepted is refused.
    r.drv.write32(reg::STATUS, 0x1);
    r.drv.write32(reg::STATUS, 0x3);
    r.drv.write32(reg::STATUS, 0xb);
    assert_eq!(r.drv.status(), 0x3);
    // Restart: a second activation, queue sizes back to what the driver now asks.
    r.drv.start(VERSION_1, 8);
    let acts = r.rec().activations.clone();
    assert_eq!(acts.len(), 2);
    assert!(acts[1].iter().all(|q| q.size == 8 && !q.event_idx));
}

#[test]
fn a_device_that_cannot_reset_needs_reset() {
    let mut r = rig();
    r.drv.start(VERSION_1, 16);
    r.rec().fail_reset = true;
    r.drv.write32(reg::STATUS, 0);
    assert_eq!(r.drv.status(), 0xf | NEEDS_RESET);
    r.drv.write32(reg::QUEUE_SEL, 0);
    assert_eq!(r.drv.read32(reg::QUEUE_READY), 1, "queues kept");
}

#[test]
fn notify_signals_the_queue_eventfd_and_interrupts_are_acked() {
    let mut r = rig();
    r.drv.kick(0);
    r.drv.kick(1);
    r.drv.kick(1);
    r.drv.kick(9); // no such queue: ignored
    assert_eq!(r.evts[0].read().expect("queue 0"), 1);
    assert_eq!(r.evts[1].read().expect("queue 1"), 2);
    // A 16-bit write to QueueNotify is not a register write.
    r.drv.device().write(reg::QUEUE_NOTIFY, &[0, 0]);
    assert!(r.evts[0].read().is_err());

    r.irq
        .trigger(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG)
        .expect("trigger");
    assert_eq!(r.drv.read32(reg::INTERRUPT_STATUS), 3);
    r.drv.write32(reg::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(r.drv.read32(reg::INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    r.drv.write32(reg::INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(r.drv.read32(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn driver_features_outside_negotiation_are_ignored() {
    let mut r = rig();
    r.drv.write_driver_features(VERSION_1); // status 0: ignored
    r.drv.write32(reg::STATUS, 0x1);
    r.drv.write32(reg::STATUS, 0x3);
    r.drv.write32(reg::STATUS, 0xb);
    assert_eq!(r.drv.status(), 0x3, "nothing was accepted, so no VERSION_1");
    // Selector 2 and up: ignored.
    r.drv.write32(reg::DRIVER_FEATURES_SEL, 0);
    r.drv.write32(reg::DRIVER_FEATURES, 0);
    r.drv.write32(reg::DRIVER_FEATURES_SEL, 1);
    r.drv
        .write32(reg::DRIVER_FEATURES, (VERSION_1 >> 32) as u32 | 1 << 8);
    r.drv.write32(reg::DRIVER_FEATURES_SEL, 2);
    r.drv.write32(reg::DRIVER_FEATURES, 0xffff_ffff);
    r.drv.write32(reg::STATUS, 0xb);
    assert_eq!(r.drv.status(), 0xb);
    assert_eq!(r.rec().acked, Some(VERSION_1 | 1 << 40));
}
