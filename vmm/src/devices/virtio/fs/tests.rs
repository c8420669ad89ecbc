//! The virtio-fs device through the virtio-mmio transport: FUSE requests as a guest driver
//! sends them, against a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::mmio::MmioTransport;
use super::super::test_utils::{MmioDriver, guest_memory};
use super::super::{IrqTrigger, RING_FEATURES, VirtioDevice};
use super::*;

const HIPRIO: u16 = HIPRIO_QUEUE as u16;
const REQUEST: u16 = REQUEST_QUEUE as u16;
const WAIT: Duration = Duration::from_secs(5);
const ROOT: u64 = 1;

// FUSE opcodes and layouts (linux/fuse.h), little-endian; written here because the
// protocol crate (fuse-backend-rs) offers no request encoder for a client.
const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;

fn in_header(opcode: u32, unique: u64, nodeid: u64, body_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(IN_HEADER_LEN);
    h.extend_from_slice(&((IN_HEADER_LEN + body_len) as u32).to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0; 4]); // uid
    h.extend_from_slice(&[0; 4]); // gid
    h.extend_from_slice(&1u32.to_le_bytes()); // pid
    h.extend_from_slice(&[0; 4]); // padding
    h
}

fn le32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

struct Rig {
    dir: tempfile::TempDir,
    drv: MmioDriver,
    unique: u64,
}

fn rig(read_only: bool) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hello"), b"hello from the host\n").expect("write");
    let dev = Fs::new("layer0", dir.path(), read_only).expect("fs device");
    let irq = Arc::new(IrqTrigger::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let mem = guest_memory(16 << 20);
    let t = MmioTransport::new(Box::new(dev), mem.clone(), irq);
    Rig {
        dir,
        drv: MmioDriver::new(t, mem),
        unique: 0,
    }
}

impl Rig {
    /// One request on `queue`: header and body in separate descriptors, the reply's room in
    /// two (header, data). Returns (error, reply body).
    fn call(&mut self, queue: u16, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let hdr = in_header(opcode, self.unique, nodeid, body.len());
        self.drv
            .add_chain(queue, &[&hdr, body], &[OUT_HEADER_LEN as u32, 8192]);
        self.drv.kick(queue);
        let used = self.drv.wait_used(queue, 1, WAIT);
        assert_eq!(used.len(), 1, "opcode {opcode}: reply");
        let reply = &used[0].data;
        assert!(
            reply.len() >= OUT_HEADER_LEN,
            "opcode {opcode}: short reply"
        );
        assert_eq!(u32_at(reply, 0) as usize, reply.len(), "out header length");
        assert_eq!(u64_at(reply, 8), self.unique, "out header unique");
        let error = u32_at(reply, 4) as i32;
        (error, reply[OUT_HEADER_LEN..].to_vec())
    }

    fn init(&mut self) {
        // The passthrough filesystem sets the process umask to 0 on INIT: put it back.
        // SAFETY: umask only swaps the process's file mode creation mask.
        let old = unsafe { libc::umask(0o022) };
        let (err, body) = self.call(REQUEST, FUSE_INIT, ROOT, &le32s(&[7, 31, 128 << 10, 0]));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        assert_eq!(err, 0, "INIT");
        assert_eq!(u32_at(&body, 0), 7, "FUSE major version");
    }

    fn lookup(&mut self, name: &str) -> u64 {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        let (err, body) = self.call(REQUEST, FUSE_LOOKUP, ROOT, &b);
        assert_eq!(err, 0, "LOOKUP {name}");
        u64_at(&body, 0)
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let (err, body) = self.call(REQUEST, FUSE_OPEN, node, &le32s(&[flags as u32, 0]));
        if err != 0 {
            return Err(-err);
        }
        Ok(u64_at(&body, 0))
    }
}

#[test]
fn new_checks_the_tag_and_share_and_fills_the_config_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["", &"x".repeat(37)] {
        let err = Fs::new(bad, dir.path(), true).err().expect("bad tag");
        assert!(matches!(err, FsDeviceError::BadTag(_)), "{err}");
    }
    let err = Fs::new("t", &dir.path().join("missing"), true)
        .err()
        .expect("missing directory");
    assert!(err.to_string().contains("missing"), "{err}");

    let tag = "x".repeat(36);
    let dev = Fs::new(&tag, dir.path(), true).expect("36-byte tag fits");
    let mut cfg = [0xffu8; 44];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..36], tag.as_bytes());
    assert_eq!(u32_at(&cfg, 36), 1, "num_request_queues");
    assert_eq!(&cfg[40..], [0; 4], "past the end reads zero");

    let dev = Fs::new("layer0", dir.path(), true).expect("device");
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg, b"layer0\0\0");
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
}

#[test]
fn init_lookup_open_read_through_the_transport() {
    let mut r = rig(true);
    assert_eq!(r.drv.start(RING_FEATURES, 128), RING_FEATURES);
    r.init();
    let node = r.lookup("hello");
    assert_ne!(node, 0);
    let fh = r.open(node, libc::O_RDONLY).expect("open for reading");
    let mut read_in = fh.to_le_bytes().to_vec();
    read_in.extend_from_slice(&0u64.to_le_bytes()); // offset
    read_in.extend_from_slice(&le32s(&[4096, 0])); // size, read_flags
    read_in.extend_from_slice(&0u64.to_le_bytes()); // lock_owner
    read_in.extend_from_slice(&le32s(&[0, 0])); // flags, padding
    let (err, data) = r.call(REQUEST, FUSE_READ, node, &read_in);
    assert_eq!(err, 0, "READ");
    assert_eq!(data, b"hello from the host\n");

    // A read-only share refuses writes in the device.
    assert_eq!(r.open(node, libc::O_RDWR), Err(libc::EROFS));

    // FORGET on the high-priority queue: served, nothing written back.
    let hdr = in_header(FUSE_FORGET, 999, node, 8);
    r.drv.add_chain(HIPRIO, &[&hdr, &1u64.to_le_bytes()], &[]);
    r.drv.kick(HIPRIO);
    let used = r.drv.wait_used(HIPRIO, 1, WAIT);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len, 0);

    // A broken request (shorter than a FUSE header) is returned empty; the queue goes on.
    r.drv.add_chain(REQUEST, &[&[1, 2, 3]], &[64]);
    r.drv.kick(REQUEST);
    let used = r.drv.wait_used(REQUEST, 1, WAIT);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len, 0);
    assert_eq!(r.lookup("hello"), node);
    assert!(r.dir.path().join("hello").exists());
}

#[test]
fn reset_stops_serving_until_the_next_driver() {
    let mut r = rig(true);
    r.drv.start(RING_FEATURES, 64);
    r.init();
    r.drv.reset();
    let hdr = in_header(FUSE_LOOKUP, 5, ROOT, 6);
    r.drv.add_chain(REQUEST, &[&hdr, b"hello\0"], &[4096]);
    r.drv.kick(REQUEST);
    std::thread::sleep(Duration::from_millis(200));
    assert!(r.drv.poll_used(REQUEST).is_empty(), "served after reset");
    r.drv.start(RING_FEATURES, 64);
    r.init();
    assert_ne!(r.lookup("hello"), 0);
}
