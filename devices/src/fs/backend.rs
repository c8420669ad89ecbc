//! The vhost-user device: queues, features, and the event handler the vring worker calls.
//!
//! virtio-fs has one high-priority queue (index 0: FORGET, BATCH_FORGET, INTERRUPT) and one
//! or more request queues (1..): we serve one request queue, which is QEMU's default
//! (`num-request-queues=1`). The device's config space (the mount tag and the queue count)
//! is QEMU's: `vhost-user-fs-device` builds it from its `tag` property and never asks us,
//! so the backend needs no CONFIG protocol feature.
//!
//! Robustness rule (as in the vsock backend): `handle_event` never returns an error, since
//! vhost-user-backend ends its worker thread for good on the first one. Per-event failures
//! are logged; a queue is touched only while it is ready and enabled.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard, PoisonError};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::queue::{Scratch, process_queue};
use super::server::FuseServer;

/// Guest memory as vhost-user-backend hands it over.
pub use super::super::vring::GuestMem;
/// The vring type of this backend.
pub use super::super::vring::Vring;

/// High-priority queue.
pub const HIPRIO_QUEUE: u16 = 0;
/// The (only) request queue.
pub const REQUEST_QUEUE: u16 = 1;
/// 1 hiprio + 1 request queue.
pub const NUM_QUEUES: usize = 2;
/// Queue size limit (QEMU's vhost-user-fs default is 128; it allows up to 1024).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// The vhost-user-fs backend.
pub struct FsBackend {
    server: FuseServer,
    /// One scratch per queue; the single vring worker thread serves both.
    scratch: Mutex<[Scratch; NUM_QUEUES]>,
    mem: Mutex<GuestMem>,
}

impl FsBackend {
    pub fn new(server: FuseServer, mem: GuestMem) -> FsBackend {
        FsBackend {
            server,
            scratch: Mutex::new(Default::default()),
            mem: Mutex::new(mem),
        }
    }

    fn scratch(&self) -> MutexGuard<'_, [Scratch; NUM_QUEUES]> {
        self.scratch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn guest_memory(&self) -> GuestMem {
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The body of `handle_event`; errors are the caller's to log.
    fn on_event(&self, device_event: u16, vrings: &[Vring]) -> io::Result<()> {
        let index = match device_event {
            HIPRIO_QUEUE | REQUEST_QUEUE => usize::from(device_event),
            other => {
                tracing::warn!(event = other, "virtio-fs: unexpected event");
                return Ok(());
            }
        };
        let Some(vring) = vrings.get(index) else {
            return Err(io::Error::other(format!("no vring {index}")));
        };
        let mut scratch = self.scratch();
        self.run_queue(vring, &mut scratch[index])
    }

    /// Serves `vring` if it is ready and enabled, with the notification dance EVENT_IDX
    /// needs (disable, work, re-enable, and go again if the driver added chains meanwhile),
    /// then signals the guest if needed.
    fn run_queue(&self, vring: &Vring, scratch: &mut Scratch) -> io::Result<()> {
        let atomic = self.guest_memory();
        let mem = atomic.memory();
        super::super::vring::drain(&mem, vring, |queue, mem| {
            (process_queue(queue, mem, &self.server, scratch), true)
        })
    }
}

impl VhostUserBackend for FsBackend {
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
        // MQ: QEMU asks how many queues we serve (GET_QUEUE_NUM), so a frontend configured
        // with more request queues than we have fails at start-up instead of hanging.
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend sets it on each vring's queue, which `run_queue` relies on.
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!(error = %e, "virtio-fs: no exit event for the vring worker");
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
            Ok(Err(e)) => {
                tracing::warn!(event = device_event, error = %e, "virtio-fs: event failed")
            }
            Err(_) => tracing::error!(event = device_event, "virtio-fs: event handler panicked"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    use vhost_user_backend::VringT;
    use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    use fuse_backend_rs::passthrough::{Config, PassthroughFs};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::{Bytes, GuestAddress};

    use super::super::guard::{GuardedFs, umask_test_lock};
    use super::super::server::testutil::*;
    use super::super::server::{OUT_HEADER_LEN, OutHeader};
    use super::*;

    const QSIZE: u16 = 16;
    const MEM_SIZE: usize = 0x40_0000;
    const BUF_BASE: u64 = 0x10_0000;

    /// The driver side of both queues, laid out by hand in guest memory:
    /// queue q has its descriptor table at q*0x4000, avail ring +0x1000, used ring +0x2000.
    struct Guest {
        mem: GuestMemoryMmap,
        next_desc: [u16; NUM_QUEUES],
        avail_idx: [u16; NUM_QUEUES],
        used_seen: [u16; NUM_QUEUES],
        next_buf: u64,
    }

    fn ring_addrs(q: usize) -> (u64, u64, u64) {
        let base = 0x4000 * q as u64;
        (base, base + 0x1000, base + 0x2000)
    }

    impl Guest {
        fn new() -> Guest {
            let mem =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
            Guest {
                mem,
                next_desc: [0; NUM_QUEUES],
                avail_idx: [0; NUM_QUEUES],
                used_seen: [0; NUM_QUEUES],
                next_buf: BUF_BASE,
            }
        }

        fn alloc(&mut self, len: u32) -> u64 {
            let addr = self.next_buf;
            self.next_buf += u64::from(len).next_multiple_of(64);
            addr
        }

        /// Publishes a chain: `readable` buffers, then writable ones of `writable` sizes.
        /// Returns the writable buffers (address, length).
        fn push(&mut self, q: usize, readable: &[&[u8]], writable: &[u32]) -> Vec<(u64, u32)> {
            let (desc_table, avail, _) = ring_addrs(q);
            let mut descs = Vec::new();
            for data in readable {
                let addr = self.alloc(data.len() as u32);
                self.mem
                    .write_slice(data, GuestAddress(addr))
                    .expect("write");
                descs.push((addr, data.len() as u32, 0u16));
            }
            let mut out = Vec::new();
            for &len in writable {
                let addr = self.alloc(len);
                out.push((addr, len));
                descs.push((addr, len, VRING_DESC_F_WRITE as u16));
            }
            let head = self.next_desc[q];
            for (i, (addr, len, flags)) in descs.iter().enumerate() {
                let index = (head + i as u16) % QSIZE;
                let last = i + 1 == descs.len();
                let flags = if last {
                    *flags
                } else {
                    *flags | VRING_DESC_F_NEXT as u16
                };
                let at = desc_table + 16 * u64::from(index);
                self.mem.write_obj(*addr, GuestAddress(at)).expect("addr");
                self.mem.write_obj(*len, GuestAddress(at + 8)).expect("len");
                self.mem
                    .write_obj(flags, GuestAddress(at + 12))
                    .expect("flags");
                self.mem
                    .write_obj((index + 1) % QSIZE, GuestAddress(at + 14))
                    .expect("next");
            }
            self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
            let slot = avail + 4 + 2 * u64::from(self.avail_idx[q] % QSIZE);
            self.mem
                .write_obj(head, GuestAddress(slot))
                .expect("avail slot");
            self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
                .expect("avail idx");
            out
        }

        /// The used entries added since the last call: (head, len).
        fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
            let (_, _, used) = ring_addrs(q);
            let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).expect("used idx");
            let mut got = Vec::new();
            while self.used_seen[q] != idx {
                let at = used + 4 + 8 * u64::from(self.used_seen[q] % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("id");
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("len");
                got.push((id as u16, len));
                self.used_seen[q] = self.used_seen[q].wrapping_add(1);
            }
            got
        }

        /// The bytes the device wrote, gathered from the writable buffers.
        fn gather(&self, bufs: &[(u64, u32)], len: u32) -> Vec<u8> {
            let mut out = Vec::new();
            let mut left = len as usize;
            for &(addr, blen) in bufs {
                let n = left.min(blen as usize);
                let mut b = vec![0u8; n];
                self.mem
                    .read_slice(&mut b, GuestAddress(addr))
                    .expect("read");
                out.extend_from_slice(&b);
                left -= n;
            }
            out
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        backend: FsBackend,
        vrings: Vec<Vring>,
    }

    fn setup(guest: &Guest, content: &[u8]) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("file"), content).expect("write");
        let cfg = Config {
            root_dir: dir.path().to_str().expect("utf-8").to_owned(),
            xattr: true,
            ..Config::default()
        };
        let fs = GuardedFs::new(PassthroughFs::new(cfg).expect("passthrough"), true);
        let atomic = GuestMemoryAtomic::new(guest.mem.clone());
        let backend = FsBackend::new(FuseServer::new(fs).expect("server"), atomic.clone());
        let vrings: Vec<Vring> = (0..NUM_QUEUES)
            .map(|_| Vring::new(atomic.clone(), MAX_QUEUE_SIZE as u16).expect("vring"))
            .collect();
        for (q, vring) in vrings.iter().enumerate() {
            let (d, a, u) = ring_addrs(q);
            vring.set_queue_size(QSIZE);
            vring.set_queue_info(d, a, u).expect("queue info");
            vring.set_queue_ready(true);
            vring.set_enabled(true);
        }
        Setup {
            _dir: dir,
            backend,
            vrings,
        }
    }

    impl Setup {
        fn kick(&self, q: u16) {
            self.backend
                .handle_event(q, EventSet::IN, &self.vrings, 0)
                .expect("handle_event never fails");
        }
    }

    /// Sends a request split as Linux does (header, then arguments) with reply room in
    /// `room` pieces; returns the reply.
    fn call(
        g: &mut Guest,
        s: &Setup,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        args: &[u8],
        room: &[u32],
    ) -> (OutHeader, Vec<u8>) {
        let req = request(opcode, unique, nodeid, args);
        let (hdr, body) = req.split_at(40);
        let readable: Vec<&[u8]> = if body.is_empty() {
            vec![hdr]
        } else {
            vec![hdr, body]
        };
        let bufs = g.push(usize::from(REQUEST_QUEUE), &readable, room);
        s.kick(REQUEST_QUEUE);
        let used = g.used(usize::from(REQUEST_QUEUE));
        assert_eq!(used.len(), 1, "one chain used");
        let reply = g.gather(&bufs, used[0].1);
        let out = OutHeader::parse(&reply).expect("reply header");
        assert_eq!(out.unique, unique);
        assert_eq!(out.len, used[0].1, "used length = reply length");
        (out, reply[OUT_HEADER_LEN..].to_vec())
    }

    #[test]
    fn features() {
        let g = Guest::new();
        let s = setup(&g, b"");
        let f = s.backend.features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert_eq!(s.backend.num_queues(), 2);
        assert!(
            s.backend
                .protocol_features()
                .contains(VhostUserProtocolFeatures::MQ)
        );
    }

    #[test]
    fn requests_over_the_request_queue() {
        let mut g = Guest::new();
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let s = setup(&g, &content);
        let _umask = umask_test_lock();
        let (out, _) = call(&mut g, &s, FUSE_INIT, 1, 1, &init_in(), &[16, 256]);
        assert_eq!(out.error, 0);
        let (out, body) = call(&mut g, &s, FUSE_LOOKUP, 2, 1, &name("file"), &[16, 128]);
        assert_eq!(out.error, 0);
        let node = u64_at(&body, 0);
        let (out, body) = call(
            &mut g,
            &s,
            FUSE_OPEN,
            3,
            node,
            &open_in(libc::O_RDONLY),
            &[16, 16],
        );
        assert_eq!(out.error, 0);
        let fh = u64_at(&body, 0);
        // The reply header in its own descriptor, the data over three pages.
        let (out, data) = call(
            &mut g,
            &s,
            FUSE_READ,
            4,
            node,
            &read_in(fh, 0, 3 * 4096),
            &[16, 4096, 4096, 4096],
        );
        assert_eq!(out.error, 0);
        assert_eq!(data, content);
        // A write on the read-only share: EROFS.
        let (out, _) = call(
            &mut g,
            &s,
            FUSE_WRITE,
            5,
            node,
            &write_in(fh, 0, b"x"),
            &[16, 8],
        );
        assert_eq!(-out.error, libc::EROFS);

        // FORGET on the hiprio queue: used, nothing written.
        let forget = request(FUSE_FORGET, 6, node, &1u64.to_le_bytes());
        g.push(usize::from(HIPRIO_QUEUE), &[&forget], &[]);
        s.kick(HIPRIO_QUEUE);
        let used = g.used(usize::from(HIPRIO_QUEUE));
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, 0);
    }

    #[test]
    fn bad_chains_and_stray_events_do_not_stop_the_worker() {
        let mut g = Guest::new();
        let s = setup(&g, b"data");
        // Stray events.
        for ev in [2, 7, u16::MAX] {
            s.kick(ev);
        }
        // A readable buffer outside guest memory: returned with nothing written.
        let (desc, avail, _) = ring_addrs(1);
        g.mem
            .write_obj(0x7000_0000u64, GuestAddress(desc))
            .expect("addr");
        g.mem.write_obj(64u32, GuestAddress(desc + 8)).expect("len");
        g.mem
            .write_obj(0u16, GuestAddress(desc + 12))
            .expect("flags");
        g.mem
            .write_obj(0u16, GuestAddress(avail + 4))
            .expect("slot");
        g.mem.write_obj(1u16, GuestAddress(avail + 2)).expect("idx");
        g.next_desc[1] = 1;
        g.avail_idx[1] = 1;
        s.kick(REQUEST_QUEUE);
        assert_eq!(g.used(1), vec![(0, 0)]);
        // Garbage that is not a FUSE request: returned with nothing written.
        g.push(1, &[b"short"], &[64]);
        s.kick(REQUEST_QUEUE);
        assert_eq!(g.used(1), vec![(1, 0)]);
        // The worker still serves.
        let _umask = umask_test_lock();
        let (out, _) = call(&mut g, &s, FUSE_INIT, 9, 1, &init_in(), &[16, 256]);
        assert_eq!(out.error, 0);
    }
}
