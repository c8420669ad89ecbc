#![no_main]
//! Untrusted input: the packets a guest puts on the vsock device's TX queue: the 44-byte
//! `virtio_vsock_hdr` (`vsock::packet::Header::decode`) and its payload, validated by the
//! queue code (`vsock::queue::process_tx`: short chains, payload lengths against the header
//! and the credit window) and acted on by the muxer and the per-connection state machine
//! (ops, addresses, credit, shutdown flags), with the answers read back from the RX queue.
//!
//! Input: 44 bytes for the header codec alone; then packets, each a flags byte, a raw
//! header and a payload (`u16 LE length, bytes`). Flags: 1 gives the packet the right CIDs
//! and stream type, 2 addresses host port 1024 (where a host listener accepts), 4 makes the
//! op a known one, 8 puts the payload in a descriptor of its own, 16 has every host stream
//! write a few bytes toward the guest, 32 resets the guest driver (`guest_reset`).
//! Checks besides "no panic": every packet the device gives the guest is a well-formed
//! host-to-guest stream packet whose used length matches its header (FakeGuest::received).

use std::io::Write as _;
use std::os::unix::net::{UnixListener, UnixStream};

use libfuzzer_sys::fuzz_target;
use moat_devices::vsock::muxer::{Muxer, port_socket_path};
use moat_devices::vsock::packet::{HDR_LEN, HOST_CID, Header, Op, TYPE_STREAM};
use moat_devices::vsock::queue::{process_rx, process_tx};
use moat_devices::vsock::testutil::{FakeGuest, GUEST_CID, guest_memory};
use moat_fuzz::Input;

const MAX_PACKETS: usize = 32;

fn header(input: &mut Input<'_>) -> ([u8; HDR_LEN], Header) {
    let mut raw = [0u8; HDR_LEN];
    let b = input.bytes(HDR_LEN);
    raw[..b.len()].copy_from_slice(b);
    (raw, Header::decode(&raw))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (raw, h) = header(&mut input);
    assert_eq!(h.encode(), raw, "header codec round trip");
    assert_eq!(
        h.op().map(|o| o as u16),
        Op::from_raw(h.op).map(|o| o as u16)
    );
    if input.is_empty() {
        return;
    }

    moat_fuzz::ignore_sigpipe();
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock.sock");
    let mut muxer = Muxer::new(&uds, GUEST_CID).expect("muxer");
    let listener = UnixListener::bind(port_socket_path(&uds, 1024)).expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let mem = guest_memory();
    let mut guest = FakeGuest::new(&mem);
    guest.add_rx_buffers(8);
    let mut scratch = Vec::new();
    let mut hosts: Vec<UnixStream> = Vec::new();

    for _ in 0..MAX_PACKETS {
        if input.is_empty() {
            break;
        }
        let flags = input.u8();
        let (_, mut hdr) = header(&mut input);
        let payload = input.piece();
        if flags & 1 != 0 {
            hdr.src_cid = GUEST_CID;
            hdr.dst_cid = HOST_CID;
            hdr.type_ = TYPE_STREAM;
        }
        if flags & 2 != 0 {
            hdr.dst_port = 1024;
        }
        if flags & 4 != 0 {
            hdr.op = 1 + hdr.op % 7;
        }
        guest.send(&hdr, payload, flags & 8 != 0);
        process_tx(&mut guest.txq, &mem, &mut muxer, &mut scratch);
        while let Ok((s, _)) = listener.accept() {
            s.set_nonblocking(true).expect("nonblocking");
            hosts.push(s);
        }
        if flags & 16 != 0 {
            for s in &mut hosts {
                let _ = s.write(b"from the host");
            }
        }
        muxer.process_host_events();
        process_rx(&mut guest.rxq, &mem, &mut muxer);
        for (h, p) in guest.received() {
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID), "{h:?}");
            assert_eq!(h.type_, TYPE_STREAM, "{h:?}");
            let op = h.op().expect("the device sent an unknown op");
            if op != Op::Rw {
                assert!(p.is_empty(), "{op:?} with a payload");
            }
        }
        if guest.rx_outstanding() < 4 {
            guest.add_rx_buffers(4);
        }
        if flags & 32 != 0 {
            muxer.guest_reset();
        }
    }
});
