//! Test support: the driver side of the RX and TX virtqueues over real guest memory
//! (virtio-queue's `MockSplitQueue`), speaking raw vsock packets.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{HDR_LEN, HOST_CID, Header, Op, TYPE_STREAM};

pub const GUEST_CID: u64 = 3;
pub const QSIZE: u16 = 64;
pub const RX_RING: u64 = 0x0;
pub const TX_RING: u64 = 0x8000;
pub const RX_USED: u64 = 0x4000;
pub const TX_USED: u64 = 0xc000;
const BUF_BASE: u64 = 0x10_0000;
pub const MEM_SIZE: usize = 0x100_0000;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// A stream/packet header from the guest (`GUEST_CID:src_port` → host `dst_port`).
pub fn guest_hdr(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
        ..Header::default()
    }
}

/// Reads exactly `n` bytes from a host stream, failing after a few seconds.
pub fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read from host stream");
    buf
}

/// Writes a chain's descriptors at `first..` and makes it available. (MockSplitQueue's
/// `add_desc_chains` does not wrap around the avail ring, so long tests do it here.)
fn publish(q: &MockSplitQueue<'_, GuestMemoryMmap>, descs: &[RawDescriptor], first: u16) {
    for (i, d) in descs.iter().enumerate() {
        q.desc_table()
            .store(first + i as u16, *d)
            .expect("store descriptor");
    }
    let idx = q.avail().idx().load();
    q.avail()
        .ring()
        .ref_at(usize::from(idx % QSIZE))
        .expect("avail slot")
        .store(first);
    q.avail().idx().store(idx.wrapping_add(1));
}

/// The driver side of both queues.
pub struct FakeGuest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    pub rxq: Queue,
    pub txq: Queue,
    rx_seen: u16,
    tx_seen: u16,
    rx_slot: u16,
    tx_slot: u16,
    next_buf: u64,
    /// RX chain head → its buffers.
    rx_bufs: HashMap<u16, Vec<(u64, u32)>>,
}

impl<'a> FakeGuest<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> FakeGuest<'a> {
        let rx = MockSplitQueue::create(mem, GuestAddress(RX_RING), QSIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(TX_RING), QSIZE);
        // MockSplitQueue lays its used ring over the second half of the avail ring (its
        // `end()` adds the element count, not bytes): give each queue a used ring of its own.
        let mut rxq: Queue = rx.create_queue().expect("rx queue");
        let mut txq: Queue = tx.create_queue().expect("tx queue");
        rxq.set_used_ring_address(Some(RX_USED as u32), Some(0));
        txq.set_used_ring_address(Some(TX_USED as u32), Some(0));
        FakeGuest {
            mem,
            rx,
            tx,
            rxq,
            txq,
            rx_seen: 0,
            tx_seen: 0,
            rx_slot: 0,
            tx_slot: 0,
            next_buf: BUF_BASE,
            rx_bufs: HashMap::new(),
        }
    }

    /// The RX queue's ring addresses (descriptor table, avail, used).
    pub fn rx_ring_addrs(&self) -> (u64, u64, u64) {
        (self.rx.desc_table_addr().0, self.rx.avail_addr().0, RX_USED)
    }

    /// The TX queue's ring addresses (descriptor table, avail, used).
    pub fn tx_ring_addrs(&self) -> (u64, u64, u64) {
        (self.tx.desc_table_addr().0, self.tx.avail_addr().0, TX_USED)
    }

    fn used_idx(&self, used: u64) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(used + 2))
            .expect("used idx")
    }

    /// (head, len) of used element `pos`.
    fn used_elem(&self, used: u64, pos: u16) -> (u16, u32) {
        let at = used + 4 + 8 * u64::from(pos % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (u16::try_from(id).expect("head"), len)
    }

    fn alloc_buf(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "fake guest out of buffer memory"
        );
        addr
    }

    fn alloc_slots(slot: &mut u16, n: u16) -> u16 {
        if *slot + n > QSIZE {
            *slot = 0;
        }
        let first = *slot;
        *slot += n;
        first
    }

    /// Posts one RX chain made of buffers of the given sizes (write-only).
    pub fn add_rx_chain(&mut self, sizes: &[u32]) {
        let first = Self::alloc_slots(&mut self.rx_slot, sizes.len() as u16);
        let mut descs = Vec::new();
        let mut bufs = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let addr = self.alloc_buf(len);
            let last = i + 1 == sizes.len();
            let mut flags = VRING_DESC_F_WRITE as u16;
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                addr, len, flags, next,
            )));
            bufs.push((addr, len));
        }
        publish(&self.rx, &descs, first);
        self.rx_bufs.insert(first, bufs);
    }

    /// Posts `n` single-descriptor 4 KiB RX buffers (what Linux ≥ 6.2 does).
    pub fn add_rx_buffers(&mut self, n: usize) {
        for _ in 0..n {
            self.add_rx_chain(&[4096]);
        }
    }

    /// Queues a packet on TX; `split` puts the payload in its own descriptor.
    pub fn send(&mut self, hdr: &Header, payload: &[u8], split: bool) {
        let mut hdr = *hdr;
        if hdr.op() == Some(Op::Rw) && hdr.len == 0 {
            hdr.len = payload.len() as u32;
        }
        let mut descs = Vec::new();
        if split && !payload.is_empty() {
            let first = Self::alloc_slots(&mut self.tx_slot, 2);
            let h = self.alloc_buf(HDR_LEN as u32);
            let p = self.alloc_buf(payload.len() as u32);
            self.mem
                .write_slice(&hdr.encode(), GuestAddress(h))
                .expect("hdr");
            self.mem
                .write_slice(payload, GuestAddress(p))
                .expect("payload");
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                h,
                HDR_LEN as u32,
                VRING_DESC_F_NEXT as u16,
                first + 1,
            )));
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                p,
                payload.len() as u32,
                0,
                0,
            )));
            publish(&self.tx, &descs, first);
        } else {
            let first = Self::alloc_slots(&mut self.tx_slot, 1);
            let len = (HDR_LEN + payload.len()) as u32;
            let a = self.alloc_buf(len);
            self.mem
                .write_slice(&hdr.encode(), GuestAddress(a))
                .expect("hdr");
            self.mem
                .write_slice(payload, GuestAddress(a + HDR_LEN as u64))
                .expect("payload");
            descs.push(RawDescriptor::from(SplitDescriptor::new(a, len, 0, 0)));
            publish(&self.tx, &descs, first);
        }
    }

    /// RX chains posted and not yet used.
    pub fn rx_outstanding(&self) -> usize {
        self.rx_bufs.len()
    }

    /// TX chains the device returned since the last call.
    pub fn tx_completed(&mut self) -> usize {
        let idx = self.used_idx(TX_USED);
        let n = idx.wrapping_sub(self.tx_seen);
        self.tx_seen = idx;
        usize::from(n)
    }

    /// Packets the device put in RX buffers since the last call.
    pub fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let idx = self.used_idx(RX_USED);
        let mut out = Vec::new();
        while self.rx_seen != idx {
            let (head, used_len) = self.used_elem(RX_USED, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let bufs = self.rx_bufs.remove(&head).expect("known rx chain");
            let mut bytes = Vec::new();
            for (addr, len) in bufs {
                let mut b = vec![0u8; len as usize];
                self.mem
                    .read_slice(&mut b, GuestAddress(addr))
                    .expect("read rx");
                bytes.extend_from_slice(&b);
            }
            bytes.truncate(used_len as usize);
            assert!(bytes.len() >= HDR_LEN, "rx packet shorter than a header");
            let mut raw = [0u8; HDR_LEN];
            raw.copy_from_slice(&bytes[..HDR_LEN]);
            let hdr = Header::decode(&raw);
            let payload = bytes[HDR_LEN..].to_vec();
            assert_eq!(payload.len(), hdr.len as usize, "used len matches hdr.len");
            out.push((hdr, payload));
        }
        out
    }
}
