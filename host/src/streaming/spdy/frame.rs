//! SPDY/3 frame codec: the 8-byte frame headers and the fixed fields of every frame type.
//!
//! Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) stay opaque, compressed bytes here; the
//! shared zlib contexts that produce and consume them live in [`super::headers`].
//!
//! Wire layout (all integers big-endian):
//!
//! ```text
//! control: |1| version(15) | type(16) | flags(8) | length(24) | payload...
//! data:    |0| stream id(31)          | flags(8) | length(24) | payload...
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only protocol version spoken (SPDY/3; SPDY/3.1 frames are the same on the wire).
pub const VERSION: u16 = 3;
/// Length of every frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can carry. spdystream sends one DATA frame per
/// `Write` call, whatever its size, so DATA frames are accepted up to this limit.
pub const MAX_PAYLOAD: usize = 0xff_ffff;
/// Largest control frame payload accepted. Kubernetes' header blocks are a few dozen bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 1 << 20;

/// Control frame types.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// Frame flags.
pub mod flags {
    /// DATA, SYN_STREAM, SYN_REPLY, HEADERS: the sender's half of the stream ends here.
    pub const FIN: u8 = 0x01;
    /// SYN_STREAM: the opener will not receive data on this stream.
    pub const UNIDIRECTIONAL: u8 = 0x02;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24-bit id (4 = MAX_CONCURRENT_STREAMS, 7 = INITIAL_WINDOW_SIZE, ...).
    pub id: u32,
    pub value: u32,
}

/// A decoded frame; header blocks still compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 3-bit priority, 0 highest.
        priority: u8,
        slot: u8,
        flags: u8,
        header_block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type unknown to this codec (SPDY/3 says to ignore those); its
    /// payload has been consumed.
    Unknown {
        frame_type: u16,
        flags: u8,
        length: usize,
    },
}

/// Malformed or unsupported frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    #[error("frame payload of {length} bytes exceeds the limit of {max}")]
    TooLarge { length: usize, max: usize },
    #[error("control frame type {frame_type} with invalid length {length}")]
    InvalidLength { frame_type: u16, length: usize },
    #[error("{0} with stream id 0")]
    ZeroStreamId(&'static str),
    #[error("stream id {0:#x} does not fit in 31 bits")]
    InvalidStreamId(u32),
    #[error("{0} with a zero {1}")]
    ZeroField(&'static str, &'static str),
}

impl Frame {
    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                header_block,
            } => {
                check_id(*stream_id, "SYN_STREAM")?;
                check_id_bits(*associated_to)?;
                let len = payload_len(10 + header_block.len())?;
                control_header(dst, kind::SYN_STREAM, *flags, len);
                dst.put_u32(*stream_id);
                dst.put_u32(*associated_to);
                dst.put_u8((priority & 0x07) << 5);
                dst.put_u8(*slot);
                dst.put_slice(header_block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                header_block,
            } => {
                check_id(*stream_id, "SYN_REPLY")?;
                let len = payload_len(4 + header_block.len())?;
                control_header(dst, kind::SYN_REPLY, *flags, len);
                dst.put_u32(*stream_id);
                dst.put_slice(header_block);
            }
            Frame::RstStream { stream_id, status } => {
                check_id(*stream_id, "RST_STREAM")?;
                if *status == 0 {
                    return Err(FrameError::ZeroField("RST_STREAM", "status"));
                }
                control_header(dst, kind::RST_STREAM, 0, 8);
                dst.put_u32(*stream_id);
                dst.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                let len = payload_len(4 + 8 * entries.len())?;
                control_header(dst, kind::SETTINGS, *flags, len);
                dst.put_u32(entries.len() as u32);
                for e in entries {
                    dst.put_u32((u32::from(e.flags) << 24) | (e.id & 0xff_ffff));
                    dst.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                if *id == 0 {
                    return Err(FrameError::ZeroField("PING", "id"));
                }
                control_header(dst, kind::PING, 0, 4);
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                check_id_bits(*last_good_stream_id)?;
                control_header(dst, kind::GOAWAY, 0, 8);
                dst.put_u32(*last_good_stream_id);
                dst.put_u32(*status);
            }
            Frame::Headers {
                stream_id,
                flags,
                header_block,
            } => {
                check_id(*stream_id, "HEADERS")?;
                let len = payload_len(4 + header_block.len())?;
                control_header(dst, kind::HEADERS, *flags, len);
                dst.put_u32(*stream_id);
                dst.put_slice(header_block);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                check_id_bits(*stream_id)?;
                control_header(dst, kind::WINDOW_UPDATE, 0, 8);
                dst.put_u32(*stream_id);
                dst.put_u32(delta & STREAM_ID_MASK);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                check_id(*stream_id, "DATA")?;
                let len = payload_len(data.len())?;
                dst.reserve(HEADER_LEN + data.len());
                dst.put_u32(*stream_id);
                dst.put_u32((u32::from(*flags) << 24) | len);
                dst.put_slice(data);
            }
            Frame::Unknown { frame_type, .. } => {
                // Only ever produced by the decoder; nothing sensible to send.
                return Err(FrameError::InvalidLength {
                    frame_type: *frame_type,
                    length: 0,
                });
            }
        }
        Ok(())
    }
}

fn check_id_bits(id: u32) -> Result<(), FrameError> {
    if id & !STREAM_ID_MASK != 0 {
        return Err(FrameError::InvalidStreamId(id));
    }
    Ok(())
}

fn check_id(id: u32, what: &'static str) -> Result<(), FrameError> {
    check_id_bits(id)?;
    if id == 0 {
        return Err(FrameError::ZeroStreamId(what));
    }
    Ok(())
}

fn payload_len(len: usize) -> Result<u32, FrameError> {
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            length: len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(len as u32)
}

fn control_header(dst: &mut BytesMut, frame_type: u16, flags: u8, len: u32) {
    dst.reserve(HEADER_LEN + len as usize);
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(frame_type);
    dst.put_u32((u32::from(flags) << 24) | len);
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` (leaving `buf` as it
/// is, with room reserved for the rest) when the frame is not complete yet. Errors are final:
/// the stream of frames cannot be resynchronised after one.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let word0 = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let word1 = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let flags = (word1 >> 24) as u8;
    let len = (word1 & 0xff_ffff) as usize;
    let control = word0 & 0x8000_0000 != 0;
    if control {
        let version = ((word0 >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if len > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::TooLarge {
                length: len,
                max: MAX_CONTROL_PAYLOAD,
            });
        }
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let mut p = buf.split_to(len).freeze();
    if !control {
        let stream_id = word0 & STREAM_ID_MASK;
        if stream_id == 0 {
            return Err(FrameError::ZeroStreamId("DATA"));
        }
        return Ok(Some(Frame::Data {
            stream_id,
            flags,
            data: p,
        }));
    }
    let frame_type = (word0 & 0xffff) as u16;
    let bad_len = || FrameError::InvalidLength {
        frame_type,
        length: len,
    };
    let frame = match frame_type {
        kind::SYN_STREAM => {
            if len < 10 {
                return Err(bad_len());
            }
            let stream_id = p.get_u32() & STREAM_ID_MASK;
            let associated_to = p.get_u32() & STREAM_ID_MASK;
            let priority = p.get_u8() >> 5;
            let slot = p.get_u8();
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId("SYN_STREAM"));
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                header_block: p,
            }
        }
        kind::SYN_REPLY | kind::HEADERS => {
            if len < 4 {
                return Err(bad_len());
            }
            let stream_id = p.get_u32() & STREAM_ID_MASK;
            let syn = frame_type == kind::SYN_REPLY;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId(if syn {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                }));
            }
            if syn {
                Frame::SynReply {
                    stream_id,
                    flags,
                    header_block: p,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    header_block: p,
                }
            }
        }
        kind::RST_STREAM => {
            if len != 8 {
                return Err(bad_len());
            }
            let stream_id = p.get_u32() & STREAM_ID_MASK;
            let status = p.get_u32();
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId("RST_STREAM"));
            }
            if status == 0 {
                return Err(FrameError::ZeroField("RST_STREAM", "status"));
            }
            Frame::RstStream { stream_id, status }
        }
        kind::SETTINGS => {
            if len < 4 {
                return Err(bad_len());
            }
            let count = p.get_u32() as usize;
            if count.checked_mul(8) != Some(len - 4) {
                return Err(bad_len());
            }
            let entries = (0..count)
                .map(|_| {
                    let word = p.get_u32();
                    Setting {
                        flags: (word >> 24) as u8,
                        id: word & 0xff_ffff,
                        value: p.get_u32(),
                    }
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        kind::PING => {
            if len != 4 {
                return Err(bad_len());
            }
            let id = p.get_u32();
            if id == 0 {
                return Err(FrameError::ZeroField("PING", "id"));
            }
            Frame::Ping { id }
        }
        kind::GOAWAY => {
            // SPDY/3 added the status word; spdystream insists on exactly 8 bytes too.
            if len != 8 {
                return Err(bad_len());
            }
            Frame::GoAway {
                last_good_stream_id: p.get_u32() & STREAM_ID_MASK,
                status: p.get_u32(),
            }
        }
        kind::WINDOW_UPDATE => {
            if len != 8 {
                return Err(bad_len());
            }
            Frame::WindowUpdate {
                stream_id: p.get_u32() & STREAM_ID_MASK,
                delta: p.get_u32() & STREAM_ID_MASK,
            }
        }
        _ => Frame::Unknown {
            frame_type,
            flags,
            length: len,
        },
    };
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn encode(f: &Frame) -> Vec<u8> {
        let mut b = BytesMut::new();
        f.encode(&mut b).expect("encode");
        b.to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut b = BytesMut::from(bytes);
        let f = decode(&mut b);
        if let Ok(Some(_)) = f {
            assert!(b.is_empty(), "decoder left {} bytes", b.len());
        }
        f
    }

    /// Encodes `f`, compares with the known layout, decodes it back.
    fn known_answer(f: Frame, layout: &str) {
        let bytes = encode(&f);
        assert_eq!(bytes, hex(layout), "layout of {f:?}");
        assert_eq!(decode_all(&bytes), Ok(Some(f)));
    }

    #[test]
    fn syn_stream_layout() {
        known_answer(
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                header_block: Bytes::from_static(&[0xaa, 0xbb]),
            },
            "8003 0001 00 00000c  00000001 00000000 00 00  aabb",
        );
        known_answer(
            Frame::SynStream {
                stream_id: 0x7fff_fffd,
                associated_to: 3,
                priority: 7,
                slot: 1,
                flags: flags::FIN | flags::UNIDIRECTIONAL,
                header_block: Bytes::new(),
            },
            "8003 0001 03 00000a  7ffffffd 00000003 e0 01",
        );
    }

    #[test]
    fn a_spdy3_syn_stream_from_another_implementation_decodes() {
        // node-spdy's parser test vector (zlib level 9 with the SPDY/3 dictionary).
        let bytes = hex(
            "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006b32a48\
             04974d8cfa00000000ffff",
        );
        let Ok(Some(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            header_block,
        })) = decode_all(&bytes)
        else {
            panic!("not the SYN_STREAM expected");
        };
        assert_eq!(header_block.len(), 34);
        assert_eq!(&header_block[..6], hex("78f9e3c6a7c2"));
    }

    #[test]
    fn syn_reply_and_headers_layout() {
        known_answer(
            Frame::SynReply {
                stream_id: 2,
                flags: flags::FIN,
                header_block: Bytes::from_static(b"zz"),
            },
            "8003 0002 01 000006  00000002 7a7a",
        );
        known_answer(
            Frame::Headers {
                stream_id: 5,
                flags: 0,
                header_block: Bytes::from_static(b"h"),
            },
            "8003 0008 00 000005  00000005 68",
        );
    }

    #[test]
    fn data_layout() {
        // node-spdy's DATA vectors.
        known_answer(
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"Writing to stream"),
            },
            "00000001 00 000011 57726974696e6720746f2073747265616d",
        );
        known_answer(
            Frame::Data {
                stream_id: 1,
                flags: flags::FIN,
                data: Bytes::from_static(b"Writing to stream"),
            },
            "00000001 01 000011 57726974696e6720746f2073747265616d",
        );
        known_answer(
            Frame::Data {
                stream_id: 0x7fff_ffff,
                flags: flags::FIN,
                data: Bytes::new(),
            },
            "7fffffff 01 000000",
        );
    }

    #[test]
    fn control_frame_layouts() {
        known_answer(
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            "8003 0003 00 000008  00000003 00000005",
        );
        known_answer(
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x1_0000,
            },
            "8003 0009 00 000008  00000001 00010000",
        );
        known_answer(Frame::Ping { id: 1 }, "8003 0006 00 000004  00000001");
        known_answer(
            Frame::GoAway {
                last_good_stream_id: 7,
                status: goaway::OK,
            },
            "8003 0007 00 000008  00000007 00000000",
        );
        known_answer(
            Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 65536,
                }],
            },
            "8003 0004 00 00000c  00000001 01000007 00010000",
        );
    }

    #[test]
    fn frames_arrive_in_pieces_and_back_to_back() {
        let frames = [
            Frame::Ping { id: 2 },
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from(vec![7u8; 1000]),
            },
            Frame::GoAway {
                last_good_stream_id: 1,
                status: 0,
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).expect("encode");
        }
        // Byte by byte.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf).expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frames_wait_for_more_without_consuming() {
        let bytes = encode(&Frame::RstStream {
            stream_id: 1,
            status: 1,
        });
        for cut in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut b), Ok(None), "cut at {cut}");
            assert_eq!(b.len(), cut);
        }
    }

    #[test]
    fn bad_version_is_rejected() {
        // A SPDY/2 PING.
        let e = decode_all(&hex("8002 0006 00 000004 00000001"));
        assert_eq!(e, Err(FrameError::UnsupportedVersion(2)));
    }

    #[test]
    fn oversize_lengths_are_rejected() {
        // A control frame announcing 16 MiB - 1 bytes is refused before its payload arrives.
        let e = decode_all(&hex("8003 0001 00 ffffff"));
        assert!(matches!(e, Err(FrameError::TooLarge { .. })), "{e:?}");
        // DATA may be as large as the length field allows: waits for the payload.
        assert_eq!(decode_all(&hex("00000001 00 ffffff")), Ok(None));
        // Encoding refuses what the length field cannot express.
        let big = Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from(vec![0u8; MAX_PAYLOAD + 1]),
        };
        assert!(matches!(
            big.encode(&mut BytesMut::new()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn wrong_fixed_lengths_and_zero_fields_are_rejected() {
        for (bytes, what) in [
            ("8003 0003 00 000004 00000001", "short RST_STREAM"),
            ("8003 0006 00 000008 00000001 00000000", "long PING"),
            ("8003 0007 00 000004 00000001", "SPDY/2-sized GOAWAY"),
            ("8003 0009 00 000004 00000001", "short WINDOW_UPDATE"),
            ("8003 0001 00 000004 00000001", "short SYN_STREAM"),
            ("8003 0002 00 000002 0000", "short SYN_REPLY"),
            (
                "8003 0004 00 000008 00000002 00000000",
                "SETTINGS count mismatch",
            ),
            ("8003 0006 00 000004 00000000", "PING id 0"),
            ("8003 0003 00 000008 00000001 00000000", "RST status 0"),
            ("8003 0003 00 000008 00000000 00000001", "RST stream 0"),
            ("00000000 00 000001 ff", "DATA on stream 0"),
        ] {
            assert!(decode_all(&hex(bytes)).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut b =
            BytesMut::from(&hex("8003 000a 05 000003 010203  8003 0006 00 000004 00000009")[..]);
        assert_eq!(
            decode(&mut b),
            Ok(Some(Frame::Unknown {
                frame_type: 10,
                flags: 5,
                length: 3
            }))
        );
        assert_eq!(decode(&mut b), Ok(Some(Frame::Ping { id: 9 })));
    }

    #[test]
    fn encoding_rejects_ids_beyond_31_bits_and_zero_ids() {
        let e = Frame::Data {
            stream_id: 0x8000_0001,
            flags: 0,
            data: Bytes::new(),
        }
        .encode(&mut BytesMut::new());
        assert_eq!(e, Err(FrameError::InvalidStreamId(0x8000_0001)));
        let e = Frame::SynReply {
            stream_id: 0,
            flags: 0,
            header_block: Bytes::new(),
        }
        .encode(&mut BytesMut::new());
        assert_eq!(e, Err(FrameError::ZeroStreamId("SYN_REPLY")));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut v = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            // Half the time make it look like a SPDY/3 control frame.
            if x & 1 == 0 && v.len() >= 4 {
                v[0] = 0x80;
                v[1] = 3;
            }
            let mut b = BytesMut::from(&v[..]);
            while let Ok(Some(_)) = decode(&mut b) {}
        }
    }
}
