//! The vhost-user device: queues, features, config space, and the event handler the vring
//! worker thread calls.
//!
//! Robustness rule: `handle_event` never returns an error. vhost-user-backend ends its worker
//! thread for good on the first error from `handle_event` (that is how rust-vmm's
//! vhost-device-vsock died when a host CONNECT arrived after SET_MEM_TABLE but before the
//! queues were ready), so every per-event failure is logged and the worker carries on. A
//! queue is touched only while it is ready and enabled; host CONNECTs that arrive before
//! then wait in the muxer and are served when the queue comes up (enabling a ring makes the
//! worker call `handle_event` for it).

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard, PoisonError};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::muxer::Muxer;
use super::queue::{process_rx, process_tx};

/// Guest memory as vhost-user-backend hands it over.
pub use super::super::vring::GuestMem;
/// The vring type of this backend.
pub use super::super::vring::Vring;

/// RX queue (device → driver).
pub const RX_QUEUE: u16 = 0;
/// TX queue (driver → device).
pub const TX_QUEUE: u16 = 1;
/// Event queue. QEMU keeps it to itself (vhost-user-vsock hands only RX and TX to the
/// backend); it would carry `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, which we never send.
pub const EVENT_QUEUE: u16 = 2;
/// Number of queues of a virtio-vsock device.
pub const NUM_QUEUES: usize = 3;
/// Queue size limit (QEMU uses 128).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// The epoll token of the muxer's fd in the vring worker (`0..=NUM_QUEUES` are reserved).
pub const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;

struct DeviceState {
    muxer: Muxer,
    tx_scratch: Vec<u8>,
}

/// The vhost-user-vsock backend.
pub struct VsockBackend {
    guest_cid: u64,
    state: Mutex<DeviceState>,
    mem: Mutex<GuestMem>,
}

impl VsockBackend {
    pub fn new(guest_cid: u64, muxer: Muxer, mem: GuestMem) -> VsockBackend {
        VsockBackend {
            guest_cid,
            state: Mutex::new(DeviceState {
                muxer,
                tx_scratch: Vec::new(),
            }),
            mem: Mutex::new(mem),
        }
    }

    fn state(&self) -> MutexGuard<'_, DeviceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn guest_memory(&self) -> GuestMem {
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The body of `handle_event`; errors are the caller's to log.
    fn on_event(&self, device_event: u16, vrings: &[Vring]) -> io::Result<()> {
        let mut st = self.state();
        let st = &mut *st;
        let (rx, tx) = match vrings {
            [rx, tx, ..] => (rx, tx),
            _ => return Err(io::Error::other("fewer than two vrings")),
        };
        match device_event {
            RX_QUEUE | EVENT_QUEUE => {}
            TX_QUEUE => {
                let (muxer, scratch) = (&mut st.muxer, &mut st.tx_scratch);
                self.run_queue(tx, |q, m| (process_tx(q, m, muxer, scratch), true))?;
            }
            HOST_EVENT => st.muxer.process_host_events(),
            other => tracing::warn!(event = other, "vsock: unexpected event"),
        }
        // Guest packets and host events both may have left packets for the guest.
        let muxer = &mut st.muxer;
        self.run_queue(rx, |q, m| {
            let used = process_rx(q, m, muxer);
            (used, muxer.has_rx_work())
        })
    }

    /// Runs `work` on `vring` if it is ready and enabled, with the notification dance that
    /// EVENT_IDX needs (disable, work, re-enable, and go again if the driver added buffers
    /// meanwhile and `work` still has something to do), then signals the guest if needed.
    /// `work` returns (used any chain, would use more chains).
    fn run_queue(
        &self,
        vring: &Vring,
        mut work: impl FnMut(&mut Queue, &GuestMemoryMmap) -> (bool, bool),
    ) -> io::Result<()> {
        let atomic = self.guest_memory();
        let mem = atomic.memory();
        super::super::vring::drain(&mem, vring, |queue, mem| work(queue, mem))
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        super::super::vring::base_features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // CONFIG: QEMU reads the guest CID from us (GET_CONFIG) when it realizes the device.
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend sets it on each vring's queue, which `run_queue` relies on.
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }`.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.guest_cid.to_le_bytes();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= config.len() => config[start..end].to_vec(),
            // Out of range: an empty answer tells the frontend it failed.
            _ => Vec::new(),
        }
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn reset_device(&self) {
        self.state().muxer.guest_reset();
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(RX_QUEUE) || queue_index == u32::from(TX_QUEUE) {
            self.state().muxer.guest_reset();
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!(error = %e, "vsock: no exit event for the vring worker");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        match catch_unwind(AssertUnwindSafe(|| self.on_event(device_event, vrings))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(event = device_event, error = %e, "vsock: event failed"),
            Err(_) => tracing::error!(event = device_event, "vsock: event handler panicked"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    use vhost_user_backend::VringT;
    use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;

    use vm_memory::GuestMemoryAtomic;

    use super::super::muxer::FIRST_LOCAL_PORT;
    use super::super::packet::{HOST_CID, Op};
    use super::super::testutil::{FakeGuest, GUEST_CID, QSIZE, guest_hdr, guest_memory, read_n};
    use super::*;

    struct Setup {
        _dir: tempfile::TempDir,
        uds: std::path::PathBuf,
        backend: VsockBackend,
        vrings: Vec<Vring>,
    }

    fn setup(mem: &GuestMemoryMmap) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let muxer = Muxer::new(&uds, GUEST_CID).expect("muxer");
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vrings = (0..NUM_QUEUES)
            .map(|_| Vring::new(atomic.clone(), MAX_QUEUE_SIZE as u16).expect("vring"))
            .collect();
        Setup {
            _dir: dir,
            uds,
            backend: VsockBackend::new(GUEST_CID, muxer, atomic),
            vrings,
        }
    }

    fn start(vring: &Vring, (desc, avail, used): (u64, u64, u64)) {
        vring.set_queue_size(QSIZE);
        vring.set_queue_info(desc, avail, used).expect("queue info");
        vring.set_queue_ready(true);
        vring.set_enabled(true);
    }

    fn event(s: &Setup, ev: u16) {
        s.backend
            .handle_event(ev, EventSet::IN, &s.vrings, 0)
            .expect("handle_event never fails");
    }

    #[test]
    fn device_features_and_config() {
        let mem = guest_memory();
        let s = setup(&mem);
        let f = s.backend.features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert!(
            s.backend
                .protocol_features()
                .contains(VhostUserProtocolFeatures::CONFIG)
        );
        assert_eq!(s.backend.num_queues(), 3);
        assert_eq!(s.backend.get_config(0, 8), GUEST_CID.to_le_bytes().to_vec());
        assert_eq!(s.backend.get_config(4, 4), vec![0, 0, 0, 0]);
        assert!(s.backend.get_config(4, 8).is_empty());
        assert!(s.backend.get_config(u32::MAX, 8).is_empty());
    }

    /// The rust-vmm vhost-device-vsock failure: a host CONNECT after the memory table but
    /// before the queues are ready. Here every event succeeds, the CONNECT waits, and it is
    /// served once the rings come up.
    #[test]
    fn host_connect_before_queues_ready_is_served_later() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let s = setup(&mem);
        let mut host = UnixStream::connect(&s.uds).expect("connect");
        host.write_all(b"CONNECT 1024\n").expect("write");
        // Memory is there, the rings are not: host event, stray kicks.
        for ev in [HOST_EVENT, RX_QUEUE, TX_QUEUE, EVENT_QUEUE, 99] {
            event(&s, ev);
        }
        // Ready but not yet enabled: still untouched.
        g.add_rx_buffers(4);
        s.vrings[0].set_queue_size(QSIZE);
        let (d, a, u) = g.rx_ring_addrs();
        s.vrings[0].set_queue_info(d, a, u).expect("info");
        s.vrings[0].set_queue_ready(true);
        event(&s, HOST_EVENT);
        assert!(g.received().is_empty());
        // Enabled: the next event (vhost-user-backend raises one on enable) sends REQUEST.
        s.vrings[0].set_enabled(true);
        start(&s.vrings[1], g.tx_ring_addrs());
        event(&s, RX_QUEUE);
        let got = g.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.op(), Some(Op::Request));
        assert_eq!(got[0].0.dst_port, 1024);
        assert_eq!(got[0].0.src_cid, HOST_CID);
        // And the worker still serves: the guest answers, the host gets OK.
        g.send(&guest_hdr(Op::Response, 1024, FIRST_LOCAL_PORT), &[], false);
        event(&s, TX_QUEUE);
        let ok = format!("OK {FIRST_LOCAL_PORT}\n");
        assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
    }

    #[test]
    fn broken_rings_do_not_stop_the_worker() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let s = setup(&mem);
        // Rings pointing outside guest memory.
        start(&s.vrings[0], (0x7000_0000, 0x7100_0000, 0x7200_0000));
        start(&s.vrings[1], (0x7300_0000, 0x7400_0000, 0x7500_0000));
        let _host = {
            let mut h = UnixStream::connect(&s.uds).expect("connect");
            h.write_all(b"CONNECT 5\n").expect("write");
            h
        };
        for ev in [HOST_EVENT, TX_QUEUE, RX_QUEUE] {
            event(&s, ev);
        }
        // The frontend fixes the rings (as after a reset): the pending CONNECT goes out.
        start(&s.vrings[0], g.rx_ring_addrs());
        g.add_rx_buffers(2);
        event(&s, RX_QUEUE);
        assert_eq!(g.received().len(), 1);
    }

    #[test]
    fn stopping_a_ring_voids_guest_connections() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let s = setup(&mem);
        start(&s.vrings[0], g.rx_ring_addrs());
        start(&s.vrings[1], g.tx_ring_addrs());
        g.add_rx_buffers(4);
        let mut host = UnixStream::connect(&s.uds).expect("connect");
        host.write_all(b"CONNECT 1024\n").expect("write");
        event(&s, HOST_EVENT);
        g.send(&guest_hdr(Op::Response, 1024, FIRST_LOCAL_PORT), &[], false);
        event(&s, TX_QUEUE);
        let ok = format!("OK {FIRST_LOCAL_PORT}\n");
        assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
        s.backend.stop_vring(u32::from(RX_QUEUE)).expect("stop");
        let mut b = [0u8; 1];
        use std::io::Read;
        assert_eq!(host.read(&mut b).expect("EOF"), 0);
    }
}
