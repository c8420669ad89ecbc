//! The vsock device through the virtio-mmio transport, driven like a guest driver would,
//! with a real host side on the hybrid Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moat_devices::vsock::muxer::FIRST_LOCAL_PORT;
use moat_devices::vsock::packet::{HDR_LEN, HOST_CID, Header, Op, TYPE_STREAM};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::mmio::MmioTransport;
use super::super::test_utils::{MmioDriver, RawDesc, guest_memory};
use super::super::{IrqTrigger, RING_FEATURES, VIRTIO_MMIO_INT_VRING, VirtioDevice};
use super::*;

const GUEST_CID: u64 = 3;
const RX: u16 = RX_QUEUE as u16;
const TX: u16 = TX_QUEUE as u16;
const WAIT: Duration = Duration::from_secs(5);
/// Long enough for the worker to have acted, if it were going to.
const QUIET: Duration = Duration::from_millis(200);

struct Rig {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    irq: Arc<IrqTrigger>,
    drv: MmioDriver,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock.sock");
    let dev = Vsock::new(GUEST_CID, &uds).expect("vsock device");
    let irq = Arc::new(IrqTrigger::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let mem = guest_memory(16 << 20);
    let t = MmioTransport::new(Box::new(dev), mem.clone(), irq.clone());
    Rig {
        _dir: dir,
        uds,
        irq,
        drv: MmioDriver::new(t, mem),
    }
}

fn guest_hdr(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl Rig {
    fn host_connect(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).expect("connect to the hybrid socket");
        writeln!(s, "CONNECT {port}").expect("write CONNECT");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            self.drv.add_chain(RX, &[], &[4096]);
        }
        self.drv.kick(RX);
    }

    /// Sends one packet on TX (header and payload in separate descriptors) and waits for the
    /// device to return the chain.
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let hdr = Header {
            len: payload.len() as u32,
            ..hdr
        };
        let encoded = hdr.encode();
        let parts: Vec<&[u8]> = if payload.is_empty() {
            vec![&encoded]
        } else {
            vec![&encoded, payload]
        };
        self.drv.add_chain(TX, &parts, &[]);
        self.drv.kick(TX);
        assert_eq!(self.drv.wait_used(TX, 1, WAIT).len(), 1, "TX chain used");
    }

    /// Waits for at least `n` packets on RX; returns all that came.
    fn recv(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let used = self.drv.wait_used(RX, n, WAIT);
        assert!(used.len() >= n, "packets received: {used:?}");
        used.into_iter().map(decode).collect()
    }

    /// Packets that arrive within `QUIET`.
    fn recv_quiet(&mut self) -> Vec<(Header, Vec<u8>)> {
        std::thread::sleep(QUIET);
        self.drv.poll_used(RX).into_iter().map(decode).collect()
    }

    /// A host-initiated connection to guest port `port`, established. Returns the host
    /// stream (after its OK line) and the host's local port.
    fn established(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let mut host = self.host_connect(port);
        let (req, _) = self.recv(1).remove(0);
        assert_eq!(req.op(), Some(Op::Request));
        assert_eq!((req.dst_cid, req.dst_port), (GUEST_CID, port));
        let local = req.src_port;
        let resp = Header {
            buf_alloc,
            ..guest_hdr(Op::Response, port, local)
        };
        self.send(resp, &[]);
        assert_eq!(read_line(&mut host), format!("OK {local}\n"));
        (host, local)
    }
}

fn decode(u: super::super::test_utils::Used) -> (Header, Vec<u8>) {
    assert!(u.data.len() >= HDR_LEN, "RX packet shorter than a header");
    let raw: [u8; HDR_LEN] = u.data[..HDR_LEN].try_into().expect("header bytes");
    let hdr = Header::decode(&raw);
    let payload = u.data[HDR_LEN..].to_vec();
    assert_eq!(
        payload.len(),
        hdr.len as usize,
        "used length matches the header"
    );
    (hdr, payload)
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        s.read_exact(&mut b).expect("read the OK line");
        line.push(b[0]);
    }
    String::from_utf8(line).expect("utf-8")
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).expect("read from the host stream");
    b
}

#[test]
fn new_checks_the_cid_and_config_space_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let err = Vsock::new(cid, &dir.path().join("v"))
            .err()
            .expect("reserved CID");
        assert!(
            matches!(err, VsockDeviceError::InvalidCid(c) if c == cid),
            "{err}"
        );
    }
    let err = Vsock::new(3, &dir.path().join("missing/v"))
        .err()
        .expect("no such directory");
    assert!(err.to_string().contains("missing/v"), "{err}");
    let dev = Vsock::new(0xfedc_ba98, &dir.path().join("v")).expect("device");
    assert!(dir.path().join("v").exists(), "listener bound by new");
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0xfedc_ba98);
    let mut tail = [0xffu8; 8];
    dev.read_config(2, &mut tail);
    assert_eq!(
        tail,
        [0xdc, 0xfe, 0, 0, 0, 0, 0, 0],
        "past the end reads zero"
    );
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    drop(dev);
    assert!(
        !dir.path().join("v").exists(),
        "socket removed with the device"
    );
}

#[test]
fn host_connect_before_driver_then_relay_both_ways_and_guest_rst() {
    let mut r = rig();
    // The host connects while the guest driver is not up yet.
    let mut host = r.host_connect(1024);
    std::thread::sleep(Duration::from_millis(50));
    let features = r.drv.start(RING_FEATURES, 64);
    assert_eq!(
        features, RING_FEATURES,
        "EVENT_IDX and INDIRECT_DESC offered"
    );
    r.post_rx(8);

    let (req, _) = r.recv(1).remove(0);
    assert_eq!(req.op(), Some(Op::Request));
    assert_eq!((req.src_cid, req.src_port), (HOST_CID, FIRST_LOCAL_PORT));
    assert_eq!((req.dst_cid, req.dst_port), (GUEST_CID, 1024));
    assert_eq!(req.type_, TYPE_STREAM);
    assert_ne!(
        r.irq.status() & VIRTIO_MMIO_INT_VRING,
        0,
        "interrupt status"
    );
    assert!(r.irq.eventfd().read().expect("irq raised") >= 1);

    r.send(guest_hdr(Op::Response, 1024, FIRST_LOCAL_PORT), &[]);
    assert_eq!(read_line(&mut host), format!("OK {FIRST_LOCAL_PORT}\n"));

    host.write_all(b"ping").expect("host write");
    let got = r.recv(1);
    assert_eq!(got[0].0.op(), Some(Op::Rw));
    assert_eq!(got[0].1, b"ping");
    assert_eq!(
        (got[0].0.src_port, got[0].0.dst_port),
        (FIRST_LOCAL_PORT, 1024)
    );

    r.send(guest_hdr(Op::Rw, 1024, FIRST_LOCAL_PORT), b"pong");
    assert_eq!(read_n(&mut host, 4), b"pong");

    r.send(guest_hdr(Op::Rst, 1024, FIRST_LOCAL_PORT), &[]);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).expect("EOF after RST"), 0);
}

#[test]
fn host_data_beyond_the_guest_credit_waits_for_a_credit_update() {
    let mut r = rig();
    r.drv.start(RING_FEATURES, 64);
    r.post_rx(16);
    let (mut host, local) = r.established(1024, 16);
    let data: Vec<u8> = (0..40u8).collect();
    host.write_all(&data).expect("host write");

    let mut got = Vec::new();
    let take_rw = |pkts: Vec<(Header, Vec<u8>)>, got: &mut Vec<u8>| {
        for (h, p) in pkts {
            match h.op() {
                Some(Op::Rw) => got.extend(p),
                // Out of credit, the device may ask for an update.
                Some(Op::CreditRequest) => {}
                other => panic!("unexpected packet {other:?}"),
            }
        }
    };
    let first = r.recv(1);
    take_rw(first, &mut got);
    take_rw(r.recv_quiet(), &mut got);
    assert_eq!(got, data[..16], "no more than the guest's buf_alloc");

    for (fwd_cnt, total) in [(16, 32), (32, 40)] {
        let update = Header {
            buf_alloc: 16,
            fwd_cnt,
            ..guest_hdr(Op::CreditUpdate, 1024, local)
        };
        r.send(update, &[]);
        take_rw(r.recv(1), &mut got);
        take_rw(r.recv_quiet(), &mut got);
        assert_eq!(got, data[..total], "after fwd_cnt {fwd_cnt}");
    }
}

#[test]
fn bad_chains_do_not_stop_the_worker() {
    let mut r = rig();
    r.drv.start(RING_FEATURES, 64);
    // TX: a descriptor outside guest memory, a chain too short for a header, an RW that
    // claims more payload than it has, and an unknown op (answered with RST).
    r.drv.add_raw_chain(
        TX,
        &[RawDesc {
            addr: 0x4000_0000_0000,
            len: HDR_LEN as u32,
            writable: false,
        }],
    );
    r.drv.add_chain(TX, &[&[0u8; 10]], &[]);
    let lying = Header {
        len: 100,
        ..guest_hdr(Op::Rw, 5000, 1025)
    };
    r.drv.add_chain(TX, &[&lying.encode(), b"short"], &[]);
    let bogus = Header {
        op: 99,
        ..guest_hdr(Op::Rw, 5001, 1026)
    };
    r.drv.add_chain(TX, &[&bogus.encode()], &[]);
    r.drv.kick(TX);
    assert_eq!(
        r.drv.wait_used(TX, 4, WAIT).len(),
        4,
        "every TX chain returned"
    );
    // RX: a chain the device cannot write into, then good ones.
    r.drv.add_chain(RX, &[&[0u8; 64]], &[]);
    r.drv.add_chain(RX, &[], &[16]);
    r.post_rx(4);
    let used = r.drv.wait_used(RX, 4, WAIT);
    assert_eq!(used.len(), 4, "{used:?}");
    assert_eq!(
        (used[0].len, used[1].len),
        (0, 0),
        "unusable chains returned empty"
    );
    let rsts: Vec<(u32, u32)> = used[2..]
        .iter()
        .map(|u| {
            let (h, _) = decode(u.clone());
            assert_eq!(h.op(), Some(Op::Rst));
            (h.src_port, h.dst_port)
        })
        .collect();
    assert_eq!(
        rsts,
        [(1025, 5000), (1026, 5001)],
        "RSTs for the lying and the bogus packet"
    );
    // Still serving.
    let (mut host, local) = r.established(77, 4096);
    r.send(guest_hdr(Op::Rw, 77, local), b"alive");
    assert_eq!(read_n(&mut host, 5), b"alive");
}

#[test]
fn reset_stops_the_worker_and_a_new_driver_gets_pending_connects() {
    let mut r = rig();
    r.drv.start(RING_FEATURES, 64);
    r.post_rx(8);
    let (mut known, _) = r.established(1024, 4096);
    r.drv.reset();
    assert_eq!(r.drv.status(), 0);
    let mut b = [0u8; 1];
    assert_eq!(
        known.read(&mut b).expect("EOF"),
        0,
        "connections the old driver knew are closed"
    );
    // No worker: a CONNECT now leaves the old rings (which still have buffers) alone.
    let mut waiting = r.host_connect(2000);
    std::thread::sleep(QUIET);
    assert!(
        r.drv.poll_used(RX).is_empty(),
        "device used a ring after reset"
    );
    assert_eq!(r.drv.outstanding(RX), 7);
    // The next driver gets the REQUEST.
    r.drv
        .start(RING_FEATURES & !(1 << VIRTIO_RING_F_EVENT_IDX), 32);
    r.post_rx(4);
    let (req, _) = r.recv(1).remove(0);
    assert_eq!(req.op(), Some(Op::Request));
    assert_eq!(req.dst_port, 2000);
    r.send(guest_hdr(Op::Response, 2000, req.src_port), &[]);
    assert_eq!(read_line(&mut waiting), format!("OK {}\n", req.src_port));
}
