//! Moving packets between the virtqueues (in guest memory) and the muxer.
//!
//! Descriptor chains are read and written through virtio-queue's `Reader`/`Writer`, which
//! accept any chain layout: Linux ≥ 6.2 puts header and payload in one descriptor, older
//! kernels use two, zerocopy sends use several. (virtio-vsock's `VsockPacket` assumes at most
//! two descriptors, which is why it is not used here.)
//!
//! Nothing here fails the caller: a bad chain is logged, returned to the guest, and skipped.

use std::io::{Read, Write};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::connection::CONN_BUF_ALLOC;
use super::muxer::Muxer;
use super::packet::{HDR_LEN, Header, Op};

/// Reads every available TX chain and hands its packet to the muxer. Returns whether any
/// chain was used (the guest should be notified).
pub fn process_tx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    muxer: &mut Muxer,
    scratch: &mut Vec<u8>,
) -> bool {
    let mut used = false;
    for _ in 0..crate::vring::chain_budget(queue) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        match read_tx_packet(chain.reader(mem), scratch) {
            TxPacket::Good(hdr) => muxer.on_guest_packet(&hdr, scratch),
            TxPacket::BadPayload(hdr, why) => {
                crate::warn_limited!(op = hdr.op, len = hdr.len, why, "vsock: bad guest packet");
                muxer.on_bad_guest_packet(&hdr);
            }
            TxPacket::Unreadable(why) => {
                crate::warn_limited!(why, "vsock: unreadable TX chain")
            }
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            crate::warn_limited!(error = %e, "vsock: returning a TX chain failed");
        }
        used = true;
    }
    used
}

enum TxPacket {
    Good(Header),
    BadPayload(Header, &'static str),
    Unreadable(String),
}

fn read_tx_packet(
    reader: Result<virtio_queue::Reader<'_>, virtio_queue::Error>,
    payload: &mut Vec<u8>,
) -> TxPacket {
    payload.clear();
    let mut reader = match reader {
        Ok(r) => r,
        Err(e) => return TxPacket::Unreadable(e.to_string()),
    };
    let mut raw = [0u8; HDR_LEN];
    if reader.available_bytes() < HDR_LEN {
        return TxPacket::Unreadable(format!("{} bytes, no header", reader.available_bytes()));
    }
    if let Err(e) = reader.read_exact(&mut raw) {
        return TxPacket::Unreadable(e.to_string());
    }
    let hdr = Header::decode(&raw);
    if hdr.op() != Some(Op::Rw) || hdr.len == 0 {
        return TxPacket::Good(hdr);
    }
    let len = hdr.len as usize;
    if hdr.len > CONN_BUF_ALLOC {
        return TxPacket::BadPayload(hdr, "payload larger than the credit window");
    }
    if reader.available_bytes() < len {
        return TxPacket::BadPayload(hdr, "payload shorter than its header says");
    }
    payload.resize(len, 0);
    if reader.read_exact(payload).is_err() {
        payload.clear();
        return TxPacket::BadPayload(hdr, "payload unreadable");
    }
    TxPacket::Good(hdr)
}

/// Fills available RX chains with the muxer's pending packets. Returns whether any chain was
/// used. A chain that cannot be filled now is put back.
pub fn process_rx(queue: &mut Queue, mem: &GuestMemoryMmap, muxer: &mut Muxer) -> bool {
    let mut used = false;
    let mut budget = crate::vring::chain_budget(queue);
    while muxer.has_rx_work() && budget > 0 {
        budget -= 1;
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                crate::warn_limited!(error = %e, "vsock: unwritable RX chain");
                give_back(queue, mem, head, 0);
                used = true;
                continue;
            }
        };
        let room = writer.available_bytes();
        if room < HDR_LEN {
            crate::warn_limited!(room, "vsock: RX chain too small for a header");
            give_back(queue, mem, head, 0);
            used = true;
            continue;
        }
        let Some(hdr) = muxer.next_rx_packet(room - HDR_LEN) else {
            queue.go_to_previous_position();
            break;
        };
        let written = writer
            .write_all(&hdr.encode())
            .and_then(|()| writer.write_all(muxer.rx_payload(hdr.len)));
        let len = match written {
            Ok(()) => HDR_LEN as u32 + hdr.len,
            Err(e) => {
                crate::warn_limited!(error = %e, op = hdr.op, "vsock: writing an RX packet failed");
                0
            }
        };
        give_back(queue, mem, head, len);
        used = true;
    }
    used
}

fn give_back(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        crate::warn_limited!(error = %e, "vsock: returning an RX chain failed");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;

    use super::super::connection::CONN_BUF_ALLOC;
    use super::super::muxer::{FIRST_LOCAL_PORT, Muxer, port_socket_path};
    use super::super::packet::{HDR_LEN, HOST_CID, Header, Op, SHUTDOWN_BOTH, SHUTDOWN_SEND};
    use super::super::testutil::{FakeGuest, GUEST_CID, guest_hdr, guest_memory, read_n};
    use super::*;

    struct Rig {
        _dir: tempfile::TempDir,
        uds: PathBuf,
        muxer: Muxer,
        scratch: Vec<u8>,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().expect("tempdir");
            let uds = dir.path().join("vsock.sock");
            let muxer = Muxer::new(&uds, GUEST_CID).expect("muxer");
            Rig {
                _dir: dir,
                uds,
                muxer,
                scratch: Vec::new(),
            }
        }

        fn listen(&self, port: u32) -> UnixListener {
            UnixListener::bind(port_socket_path(&self.uds, port)).expect("bind port socket")
        }

        /// Runs TX, host events and RX like the backend does after any event.
        fn pump(&mut self, g: &mut FakeGuest<'_>, mem: &GuestMemoryMmap) {
            process_tx(&mut g.txq, mem, &mut self.muxer, &mut self.scratch);
            self.muxer.process_host_events();
            process_rx(&mut g.rxq, mem, &mut self.muxer);
        }

        fn host_connect(&self, port: u32) -> UnixStream {
            let mut s = UnixStream::connect(&self.uds).expect("connect uds");
            writeln!(s, "CONNECT {port}").expect("write CONNECT");
            s
        }
    }

    fn ops(pkts: &[(Header, Vec<u8>)]) -> Vec<Op> {
        pkts.iter()
            .map(|(h, _)| h.op().expect("known op"))
            .collect()
    }

    fn read_line(s: &mut UnixStream) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            line.extend(read_n(s, 1));
        }
        String::from_utf8(line).expect("utf8")
    }

    /// A guest connection to host port 1025, accepted by the host listener.
    fn guest_connection(rig: &mut Rig, g: &mut FakeGuest<'_>, mem: &GuestMemoryMmap) -> UnixStream {
        let listener = rig.listen(1025);
        g.add_rx_buffers(8);
        g.send(&guest_hdr(Op::Request, 5000, 1025), &[], false);
        rig.pump(g, mem);
        let (host, _) = listener.accept().expect("accept");
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Response]);
        host
    }

    #[test]
    fn guest_connects_to_listening_host_port_and_relays() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let listener = rig.listen(1025);
        g.add_rx_buffers(4);
        g.send(&guest_hdr(Op::Request, 5000, 1025), &[], false);
        rig.pump(&mut g, &mem);
        assert_eq!(g.tx_completed(), 1);
        let (mut host, _) = listener.accept().expect("host side accepted");

        let got = g.received();
        assert_eq!(got.len(), 1);
        let (resp, _) = &got[0];
        assert_eq!(resp.op(), Some(Op::Response));
        assert_eq!((resp.src_cid, resp.src_port), (HOST_CID, 1025));
        assert_eq!((resp.dst_cid, resp.dst_port), (GUEST_CID, 5000));
        assert_eq!(resp.type_, 1);
        assert_eq!(resp.buf_alloc, CONN_BUF_ALLOC);
        assert_eq!(resp.fwd_cnt, 0);

        // Guest → host, payload in its own descriptor and inline.
        g.send(&guest_hdr(Op::Rw, 5000, 1025), b"hello ", true);
        g.send(&guest_hdr(Op::Rw, 5000, 1025), b"world", false);
        rig.pump(&mut g, &mem);
        assert_eq!(read_n(&mut host, 11), b"hello world");

        // Host → guest.
        host.write_all(b"pong").expect("host write");
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rw]);
        assert_eq!(got[0].1, b"pong");
        assert_eq!(got[0].0.src_port, 1025);
        assert_eq!(got[0].0.dst_port, 5000);
        assert_eq!(got[0].0.fwd_cnt, 11);
    }

    #[test]
    fn guest_connect_without_host_listener_gets_rst() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(2);
        g.send(&guest_hdr(Op::Request, 5000, 4444), &[], false);
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rst]);
        assert_eq!((got[0].0.src_port, got[0].0.dst_port), (4444, 5000));
        assert_eq!(got[0].0.dst_cid, GUEST_CID);
        assert_eq!(rig.muxer.connection_count(), 0);
    }

    #[test]
    fn host_connect_gets_ok_after_guest_response() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        let mut host = rig.host_connect(1024);
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Request]);
        let req = got[0].0;
        assert_eq!((req.src_cid, req.src_port), (HOST_CID, FIRST_LOCAL_PORT));
        assert_eq!((req.dst_cid, req.dst_port), (GUEST_CID, 1024));
        assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);

        g.send(&guest_hdr(Op::Response, 1024, FIRST_LOCAL_PORT), &[], false);
        rig.pump(&mut g, &mem);
        assert_eq!(read_line(&mut host), format!("OK {FIRST_LOCAL_PORT}\n"));

        host.write_all(b"ping").expect("write");
        g.send(&guest_hdr(Op::Rw, 1024, FIRST_LOCAL_PORT), b"hi", false);
        rig.pump(&mut g, &mem);
        assert_eq!(read_n(&mut host, 2), b"hi");
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rw]);
        assert_eq!(got[0].1, b"ping");
    }

    #[test]
    fn bytes_after_the_connect_line_are_kept_for_the_guest() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        let mut host = UnixStream::connect(&rig.uds).expect("connect");
        host.write_all(b"CONNECT 1024\nearly").expect("write");
        rig.pump(&mut g, &mem);
        assert_eq!(ops(&g.received()), vec![Op::Request]);
        g.send(&guest_hdr(Op::Response, 1024, FIRST_LOCAL_PORT), &[], false);
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rw]);
        assert_eq!(got[0].1, b"early");
    }

    #[test]
    fn connect_line_split_across_writes() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        let mut host = UnixStream::connect(&rig.uds).expect("connect");
        host.write_all(b"CONN").expect("write");
        rig.pump(&mut g, &mem);
        assert!(g.received().is_empty());
        host.write_all(b"ECT 77\n").expect("write");
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Request]);
        assert_eq!(got[0].0.dst_port, 77);
    }

    #[test]
    fn host_connect_refused_by_guest_closes_the_stream() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        let mut host = rig.host_connect(1024);
        rig.pump(&mut g, &mem);
        assert_eq!(ops(&g.received()), vec![Op::Request]);
        g.send(&guest_hdr(Op::Rst, 1024, FIRST_LOCAL_PORT), &[], false);
        rig.pump(&mut g, &mem);
        // Closed without an OK line, and no RST back to the guest.
        host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).expect("read EOF"), 0);
        assert!(g.received().is_empty());
        assert_eq!(rig.muxer.connection_count(), 0);
    }

    #[test]
    fn bad_connect_lines_are_refused_with_the_stream_closed() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'A'; 40]] {
            let mut host = UnixStream::connect(&rig.uds).expect("connect");
            host.write_all(line).expect("write");
            rig.pump(&mut g, &mem);
            host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 8];
            let n = host.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "refused stream is closed");
        }
        assert!(g.received().is_empty());
        assert_eq!(rig.muxer.connection_count(), 0);
    }

    #[test]
    fn host_connect_waits_for_rx_buffers() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let _host = rig.host_connect(1024);
        // No RX buffers yet (driver not up): the REQUEST waits.
        rig.pump(&mut g, &mem);
        rig.pump(&mut g, &mem);
        assert!(g.received().is_empty());
        assert!(rig.muxer.has_rx_work());
        g.add_rx_buffers(2);
        process_rx(&mut g.rxq, &mem, &mut rig.muxer);
        assert_eq!(ops(&g.received()), vec![Op::Request]);
        assert!(!rig.muxer.has_rx_work());
    }

    #[test]
    fn host_to_guest_never_exceeds_guest_credit() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let mut host = guest_connection(&mut rig, &mut g, &mem);
        // The guest advertises 10000 bytes.
        let credit = Header {
            buf_alloc: 10_000,
            ..guest_hdr(Op::CreditUpdate, 5000, 1025)
        };
        g.send(&credit, &[], false);
        rig.pump(&mut g, &mem);
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        host.write_all(&data).expect("host write");
        g.add_rx_buffers(30);
        for _ in 0..4 {
            rig.pump(&mut g, &mem);
        }
        let got = g.received();
        let sent: Vec<u8> = got
            .iter()
            .filter(|(h, _)| h.op() == Some(Op::Rw))
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert_eq!(sent.len(), 10_000, "exactly the credit, no more");
        assert_eq!(sent, data[..10_000]);
        assert!(got.iter().all(|(_, p)| p.len() <= 4096 - HDR_LEN));
        // Blocked: one CREDIT_REQUEST.
        assert_eq!(
            got.iter()
                .filter(|(h, _)| h.op() == Some(Op::CreditRequest))
                .count(),
            1
        );
        // The guest consumed 6000.
        let update = Header {
            buf_alloc: 10_000,
            fwd_cnt: 6000,
            ..guest_hdr(Op::CreditUpdate, 5000, 1025)
        };
        g.send(&update, &[], false);
        rig.pump(&mut g, &mem);
        rig.pump(&mut g, &mem);
        let more: Vec<u8> = g
            .received()
            .iter()
            .filter(|(h, _)| h.op() == Some(Op::Rw))
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert_eq!(more, data[10_000..16_000]);
    }

    /// A guest that honours our credit, and a host that stops reading for a while: the
    /// guest stalls on credit (our buffer stays within the window), and CREDIT_UPDATEs
    /// unblock it once the host reads again. Every byte arrives in order.
    #[test]
    fn guest_to_host_flow_control_end_to_end() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let mut host = guest_connection(&mut rig, &mut g, &mem);
        host.set_nonblocking(true).expect("nonblocking");
        let total = 2 * 1024 * 1024usize;
        let chunk = 16 * 1024usize;
        let data: Vec<u8> = (0..total as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (mut sent, mut fwd_view, mut stalls) = (0usize, 0usize, 0usize);
        let mut drained = Vec::with_capacity(total);
        for _ in 0..10_000 {
            let before = sent;
            while sent < total && (sent - fwd_view) + chunk <= CONN_BUF_ALLOC as usize {
                g.send(
                    &guest_hdr(Op::Rw, 5000, 1025),
                    &data[sent..sent + chunk],
                    true,
                );
                sent += chunk;
            }
            while g.rx_outstanding() < 8 {
                g.add_rx_buffers(1);
            }
            rig.pump(&mut g, &mem);
            for (h, _) in g.received() {
                assert_ne!(h.op(), Some(Op::Rst));
                assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
                fwd_view = fwd_view.max(h.fwd_cnt as usize);
            }
            if sent == before && sent < total {
                // Stalled on credit: the host reads again.
                stalls += 1;
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = host.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    drained.extend_from_slice(&buf[..n]);
                }
            }
            if sent == total {
                break;
            }
        }
        assert_eq!(sent, total, "the guest was never left without credit");
        assert!(stalls > 0, "the window was actually exhausted");
        let mut buf = vec![0u8; 256 * 1024];
        for _ in 0..1000 {
            if drained.len() == total {
                break;
            }
            rig.pump(&mut g, &mem);
            while let Ok(n) = host.read(&mut buf) {
                if n == 0 {
                    break;
                }
                drained.extend_from_slice(&buf[..n]);
            }
        }
        let first_diff = drained.iter().zip(&data).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "bytes arrive in order");
        assert_eq!(drained.len(), data.len(), "bytes arrive complete");
        assert_eq!(rig.muxer.connection_count(), 1);
    }

    #[test]
    fn oversized_guest_packet_resets_its_connection() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let _host = guest_connection(&mut rig, &mut g, &mem);
        let big = vec![0u8; CONN_BUF_ALLOC as usize + 1];
        g.send(&guest_hdr(Op::Rw, 5000, 1025), &big, true);
        rig.pump(&mut g, &mem);
        assert_eq!(g.tx_completed(), 2);
        assert_eq!(ops(&g.received()), vec![Op::Rst]);
        assert_eq!(rig.muxer.connection_count(), 0);
    }

    #[test]
    fn rx_chains_split_over_several_descriptors() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let listener = rig.listen(1025);
        // Header alone in one descriptor, payload over two more (pre-6.2 Linux style).
        g.add_rx_chain(&[HDR_LEN as u32, 5, 100]);
        g.add_rx_chain(&[HDR_LEN as u32, 5, 100]);
        g.send(&guest_hdr(Op::Request, 5000, 1025), &[], false);
        rig.pump(&mut g, &mem);
        let (mut host, _) = listener.accept().expect("accept");
        assert_eq!(ops(&g.received()), vec![Op::Response]);
        host.write_all(b"split packet").expect("write");
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rw]);
        assert_eq!(got[0].1, b"split packet");
    }

    #[test]
    fn packets_for_unknown_connections_get_rst_but_rst_gets_nothing() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        g.send(&guest_hdr(Op::Rw, 7, 8), b"stray", false);
        g.send(&guest_hdr(Op::Rst, 7, 8), &[], false);
        g.send(&guest_hdr(Op::Response, 9, 10), &[], false);
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rst, Op::Rst]);
        assert_eq!((got[0].0.src_port, got[0].0.dst_port), (8, 7));
        assert_eq!((got[1].0.src_port, got[1].0.dst_port), (10, 9));
    }

    #[test]
    fn wrong_cids_and_short_chains_are_dropped() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        g.add_rx_buffers(4);
        let mut spoofed = guest_hdr(Op::Request, 5000, 1025);
        spoofed.src_cid = 99;
        g.send(&spoofed, &[], false);
        // RW whose header claims more payload than the chain has.
        let mut lying = guest_hdr(Op::Rw, 5000, 1025);
        lying.len = 100;
        g.send(&lying, b"short", false);
        rig.pump(&mut g, &mem);
        assert_eq!(g.tx_completed(), 2, "bad chains are still returned");
        // The spoofed REQUEST is dropped silently; the lying RW gets an RST.
        assert_eq!(ops(&g.received()), vec![Op::Rst]);
    }

    #[test]
    fn seqpacket_requests_are_refused() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let _l = rig.listen(1025);
        g.add_rx_buffers(2);
        let mut req = guest_hdr(Op::Request, 5000, 1025);
        req.type_ = 2;
        g.send(&req, &[], false);
        rig.pump(&mut g, &mem);
        assert_eq!(ops(&g.received()), vec![Op::Rst]);
        assert_eq!(rig.muxer.connection_count(), 0);
    }

    #[test]
    fn host_close_sends_data_then_shutdown() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let mut host = guest_connection(&mut rig, &mut g, &mem);
        g.add_rx_buffers(4);
        host.write_all(b"last words").expect("write");
        drop(host);
        rig.pump(&mut g, &mem);
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Rw, Op::Shutdown]);
        assert_eq!(got[0].1, b"last words");
        assert_eq!(got[1].0.flags, SHUTDOWN_BOTH);
        assert_eq!(rig.muxer.connection_count(), 0);
        // The guest's answering RST is ignored.
        g.send(&guest_hdr(Op::Rst, 5000, 1025), &[], false);
        rig.pump(&mut g, &mem);
        assert!(g.received().is_empty());
    }

    #[test]
    fn host_half_close_sends_shutdown_send_and_keeps_receiving() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let mut host = guest_connection(&mut rig, &mut g, &mem);
        host.shutdown(std::net::Shutdown::Write)
            .expect("half close");
        rig.pump(&mut g, &mem);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Shutdown]);
        assert_eq!(got[0].0.flags, SHUTDOWN_SEND);
        g.send(&guest_hdr(Op::Rw, 5000, 1025), b"reply", false);
        rig.pump(&mut g, &mem);
        assert_eq!(read_n(&mut host, 5), b"reply");
        // The guest closes: RST back, host sees EOF.
        let sd = Header {
            flags: SHUTDOWN_BOTH,
            ..guest_hdr(Op::Shutdown, 5000, 1025)
        };
        g.send(&sd, &[], false);
        rig.pump(&mut g, &mem);
        assert_eq!(ops(&g.received()), vec![Op::Rst]);
        let mut buf = [0u8; 4];
        assert_eq!(host.read(&mut buf).expect("EOF"), 0);
        assert_eq!(rig.muxer.connection_count(), 0);
    }

    #[test]
    fn guest_reset_voids_known_connections_but_keeps_unsent_connects() {
        let mem = guest_memory();
        let mut g = FakeGuest::new(&mem);
        let mut rig = Rig::new();
        let mut known = guest_connection(&mut rig, &mut g, &mem);
        // A CONNECT whose REQUEST has not reached the guest yet.
        let _waiting = rig.host_connect(2000);
        rig.muxer.process_host_events();
        rig.muxer.guest_reset();
        known
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut b = [0u8; 4];
        assert_eq!(
            known.read(&mut b).expect("EOF"),
            0,
            "known connection closed"
        );
        assert_eq!(rig.muxer.connection_count(), 1);
        // The next driver gets the REQUEST.
        process_rx(&mut g.rxq, &mem, &mut rig.muxer);
        let got = g.received();
        assert_eq!(ops(&got), vec![Op::Request]);
        assert_eq!(got[0].0.dst_port, 2000);
    }
}
