//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio spec "Socket Device"):
//! its wire encoding and the protocol constants.
//!
//! The header is 44 bytes, packed, little-endian:
//! `src_cid: le64, dst_cid: le64, src_port: le32, dst_port: le32, len: le32, type: le16,
//! op: le16, flags: le32, buf_alloc: le32, fwd_cnt: le32`.

/// Size of the encoded header.
pub const HDR_LEN: usize = 44;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device offers.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `enum virtio_vsock_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    /// The op for a raw header value; `None` for `VIRTIO_VSOCK_OP_INVALID` (0) and unknown values.
    pub fn from_raw(raw: u16) -> Option<Op> {
        Some(match raw {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded packet header. `op` is kept raw so that invalid values survive decoding and can
/// be answered (with RST) by the muxer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The header's op, if it is a known one.
    pub fn op(&self) -> Option<Op> {
        Op::from_raw(self.op)
    }

    /// Encodes the header in its wire format.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Decodes a header from its wire format.
    pub fn decode(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The RST answering `pkt` (addresses swapped), for packets that belong to no connection.
    pub fn rst_reply_to(pkt: &Header) -> Header {
        Header {
            src_cid: pkt.dst_cid,
            dst_cid: pkt.src_cid,
            src_port: pkt.dst_port,
            dst_port: pkt.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 1024,
            len: 17,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x0004_0000,
            fwd_cnt: 0xffff_fff0,
        }
    }

    #[test]
    fn roundtrip() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()), h);
    }

    #[test]
    fn field_offsets_are_the_spec_layout() {
        let b = sample().encode();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[16..20], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[20..24], &1024u32.to_le_bytes());
        assert_eq!(&b[24..28], &17u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[32..36], &2u32.to_le_bytes());
        assert_eq!(&b[36..40], &0x0004_0000u32.to_le_bytes());
        assert_eq!(&b[40..44], &0xffff_fff0u32.to_le_bytes());
    }

    /// Cross-checks the encoding against rust-vmm's independent `virtio-vsock` parser.
    #[test]
    fn agrees_with_virtio_vsock_crate() {
        use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
        assert_eq!(PKT_HEADER_SIZE, HDR_LEN);
        let h = sample();
        let mut raw = h.encode();
        let mut backing = [0u8; HDR_LEN];
        // SAFETY: `backing` outlives `pkt` (both live to the end of this test) and nothing
        // else accesses it while `pkt` exists.
        let mut pkt = unsafe { VsockPacket::new(&mut backing, None) }.expect("packet");
        pkt.set_header_from_raw(&raw).expect("header");
        assert_eq!(pkt.src_cid(), h.src_cid);
        assert_eq!(pkt.dst_cid(), h.dst_cid);
        assert_eq!(pkt.src_port(), h.src_port);
        assert_eq!(pkt.dst_port(), h.dst_port);
        assert_eq!(pkt.len(), h.len);
        assert_eq!(pkt.type_(), h.type_);
        assert_eq!(pkt.op(), h.op);
        assert_eq!(pkt.flags(), h.flags);
        assert_eq!(pkt.buf_alloc(), h.buf_alloc);
        assert_eq!(pkt.fwd_cnt(), h.fwd_cnt);
        raw[30] = 9;
        assert_eq!(Header::decode(&raw).op(), None);
    }

    #[test]
    fn ops_map_both_ways() {
        for raw in 1..=7u16 {
            let op = Op::from_raw(raw).expect("known op");
            assert_eq!(op as u16, raw);
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(8), None);
    }

    #[test]
    fn rst_reply_swaps_addresses() {
        let r = Header::rst_reply_to(&sample());
        assert_eq!(r.src_cid, 2);
        assert_eq!(r.dst_cid, 0x0102_0304_0506_0708);
        assert_eq!(r.src_port, 1024);
        assert_eq!(r.dst_port, 0xdead_beef);
        assert_eq!(r.op(), Some(Op::Rst));
        assert_eq!(r.len, 0);
    }
}
