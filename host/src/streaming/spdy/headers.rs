//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! An uncompressed block is `count(u32)` then, per header, `len(u32) name len(u32) value`, all
//! big-endian. Names are lowercase; a header with several values carries them in one value,
//! separated by NUL bytes. spdystream (Go) fails the whole connection on a block whose names are
//! not lowercase or that names a header twice, so [`normalize`] lowercases and merges.
//!
//! Every block on a connection goes through ONE zlib stream per direction, primed with the
//! SPDY/3 dictionary and ended by a sync flush per block, so block N can only be inflated by the
//! context that inflated blocks 0..N. The sender's first block starts with a zlib header that
//! carries the dictionary's id; the inflater then stops asking for it (zlib's Z_NEED_DICT),
//! and we hand it the dictionary.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::{DICTIONARY, DICTIONARY_ID};

/// Ordered header list: lowercase names; after [`decode_block`], one entry per value.
pub type HeaderList = Vec<(String, String)>;

/// Largest inflated header block accepted (a guard against decompression bombs).
pub const MAX_BLOCK: usize = 1 << 20;

/// Headers spdystream refuses in SYN_STREAM/SYN_REPLY/HEADERS (it fails the connection).
const FORBIDDEN: &[&str] = &[
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// Bad header lists or blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("invalid header name {0:?}")]
    InvalidName(String),
    #[error("header {0:?} may not be sent over SPDY")]
    Forbidden(String),
    #[error("value of header {0:?} contains a NUL byte")]
    InvalidValue(String),
    #[error("malformed header block: {0}")]
    Malformed(&'static str),
    #[error("header block larger than {0} bytes")]
    TooLarge(usize),
    #[error("header block wants zlib dictionary {0:#010x}, not SPDY/3's")]
    WrongDictionary(u32),
    #[error("zlib: {0}")]
    Zlib(String),
}

/// Prepares a header list for sending: names lowercased (ASCII), repeated names merged into one
/// NUL-separated value in first-seen order. Rejects empty or non-token names, NULs in values and
/// the connection-level headers spdystream refuses.
pub fn normalize(headers: Vec<(String, String)>) -> Result<HeaderList, HeaderError> {
    let mut out: HeaderList = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(HeaderError::InvalidName(name));
        }
        let name = name.to_ascii_lowercase();
        if FORBIDDEN.contains(&name.as_str()) {
            return Err(HeaderError::Forbidden(name));
        }
        if value.contains('\0') {
            return Err(HeaderError::InvalidValue(name));
        }
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(&value);
            }
            None => out.push((name, value)),
        }
    }
    // A block must be compressible into one frame, and one our own decoder would accept.
    let size: usize = 4 + out
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>();
    if size > MAX_BLOCK {
        return Err(HeaderError::TooLarge(MAX_BLOCK));
    }
    Ok(out)
}

/// Serialises a (normalized) list as an uncompressed block.
pub fn encode_block(headers: &[(String, String)]) -> Vec<u8> {
    let size = 4 + headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (n, v) in headers {
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Parses an uncompressed block. Names are lowercased; NUL-separated values become separate
/// entries; invalid UTF-8 is replaced rather than failing the connection.
pub fn decode_block(raw: &[u8]) -> Result<HeaderList, HeaderError> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if raw.len() < n {
            return Err(HeaderError::Malformed("truncated"));
        }
        let (head, rest) = raw.split_at(n);
        *raw = rest;
        Ok(head)
    }
    fn take_u32(raw: &mut &[u8]) -> Result<usize, HeaderError> {
        let b = take(raw, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut raw = raw;
    let count = take_u32(&mut raw)?;
    // Each pair needs at least its two length words: bounds the allocation below.
    if count > raw.len() / 8 {
        return Err(HeaderError::Malformed(
            "more headers announced than present",
        ));
    }
    let mut out = Vec::with_capacity(count);
    // The decoded list costs at most what the block holds, plus a bound on the copies of
    // each name that NUL-separated values make: without it, one long name with a value of
    // NULs would be copied once per NUL (a 1 KiB compressed block could ask for 240 GB).
    let budget = raw.len();
    let mut spent = 0usize;
    for _ in 0..count {
        let len = take_u32(&mut raw)?;
        let name = String::from_utf8_lossy(take(&mut raw, len)?).to_lowercase();
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        let len = take_u32(&mut raw)?;
        let value = String::from_utf8_lossy(take(&mut raw, len)?);
        for v in value.split('\0') {
            spent = spent.saturating_add(name.len() + v.len());
            if spent > budget.saturating_mul(2).max(4096) {
                return Err(HeaderError::Malformed(
                    "header values repeat their name past the block's size",
                ));
            }
            out.push((name.clone(), v.to_owned()));
        }
    }
    if !raw.is_empty() {
        return Err(HeaderError::Malformed("bytes after the last header"));
    }
    Ok(out)
}

fn zlib_err(e: impl std::fmt::Display) -> HeaderError {
    HeaderError::Zlib(e.to_string())
}

/// The sending half of a connection's header compression: one per connection, used for every
/// SYN_STREAM, SYN_REPLY and HEADERS frame in the order they go on the wire.
pub struct HeaderEncoder {
    z: Compress,
}

impl HeaderEncoder {
    pub fn new() -> Result<Self, HeaderError> {
        // Level 9 like Go's spdy framer (zlib.BestCompression); blocks are tiny.
        let mut z = Compress::new(Compression::best(), true);
        let id = z.set_dictionary(&DICTIONARY).map_err(zlib_err)?;
        if id != DICTIONARY_ID {
            return Err(HeaderError::WrongDictionary(id));
        }
        Ok(Self { z })
    }

    /// Compresses a (normalized) header list into the next block of this connection.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Bytes, HeaderError> {
        self.compress(&encode_block(headers))
    }

    /// Compresses one raw block and sync-flushes, so the peer can inflate it completely.
    pub fn compress(&mut self, raw: &[u8]) -> Result<Bytes, HeaderError> {
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(zlib_err)?;
            pos += (self.z.total_in() - before) as usize;
            // With output space left over, zlib has emitted everything up to the flush marker.
            if pos == raw.len() && out.len() < out.capacity() {
                return Ok(Bytes::from(out));
            }
        }
    }
}

/// The receiving half: one per connection, fed every received header block in wire order.
pub struct HeaderDecoder {
    z: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Inflates and parses the next block of this connection.
    pub fn decode(&mut self, block: &[u8]) -> Result<HeaderList, HeaderError> {
        decode_block(&self.decompress(block)?)
    }

    /// Inflates one block (everything up to its sync flush).
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).clamp(256, MAX_BLOCK));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len());
            }
            let (in_before, out_before) = (self.z.total_in(), out.len());
            let res = self
                .z
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.z.total_in() - in_before) as usize;
            if out.len() > MAX_BLOCK {
                return Err(HeaderError::TooLarge(MAX_BLOCK));
            }
            match res {
                Ok(Status::StreamEnd) => {
                    // The peer ended its zlib stream; later blocks will fail to inflate.
                    if pos < input.len() {
                        return Err(HeaderError::Malformed(
                            "data after the end of the zlib stream",
                        ));
                    }
                    return Ok(out);
                }
                Ok(_) => {
                    if pos == input.len() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if pos == input.len() && out.len() == out_before {
                        return Err(HeaderError::Malformed("truncated zlib data"));
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.z.set_dictionary(&DICTIONARY).map_err(zlib_err)?;
                    }
                    Some(other) => return Err(HeaderError::WrongDictionary(other)),
                    None => return Err(zlib_err(e)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_separated_values_cannot_multiply_a_long_name() {
        // One header: a 400 000-byte name, a value of 600 000 NULs (the fuzzer's
        // fuzz/regressions/spdy_headers/nul-split-amplification, uncompressed).
        let mut raw = 1u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&400_000u32.to_be_bytes());
        raw.extend(std::iter::repeat_n(b'a', 400_000));
        raw.extend_from_slice(&600_000u32.to_be_bytes());
        raw.extend(std::iter::repeat_n(0u8, 600_000));
        assert!(matches!(decode_block(&raw), Err(HeaderError::Malformed(_))));
        // Ordinary multi-valued headers still split.
        let mut raw = 1u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&4u32.to_be_bytes());
        raw.extend_from_slice(b"Port");
        raw.extend_from_slice(&9u32.to_be_bytes());
        raw.extend_from_slice(b"80\x008080\x001");
        assert_eq!(
            decode_block(&raw).expect("decode"),
            vec![
                ("port".to_owned(), "80".to_owned()),
                ("port".to_owned(), "8080".to_owned()),
                ("port".to_owned(), "1".to_owned()),
            ]
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn block_layout_and_round_trip() {
        let list = h(&[("streamtype", "error"), ("x", "")]);
        let raw = encode_block(&list);
        let want = b"\0\0\0\x02\0\0\0\x0astreamtype\0\0\0\x05error\0\0\0\x01x\0\0\0\0";
        assert_eq!(raw, want.to_vec());
        assert_eq!(decode_block(&raw), Ok(list));
        assert_eq!(decode_block(b"\0\0\0\0"), Ok(vec![]));
    }

    #[test]
    fn normalize_lowercases_merges_and_refuses() {
        let n = normalize(h(&[
            ("StreamType", "stdin"),
            ("Port", "80"),
            ("port", "81"),
        ]));
        assert_eq!(n, Ok(h(&[("streamtype", "stdin"), ("port", "80\x0081")])));
        // Merged values come back as separate entries.
        let back = decode_block(&encode_block(&n.expect("normalized")));
        assert_eq!(
            back,
            Ok(h(&[
                ("streamtype", "stdin"),
                ("port", "80"),
                ("port", "81")
            ]))
        );
        assert!(matches!(
            normalize(h(&[("", "x")])),
            Err(HeaderError::InvalidName(_))
        ));
        assert!(matches!(
            normalize(h(&[("a b", "x")])),
            Err(HeaderError::InvalidName(_))
        ));
        assert!(matches!(
            normalize(h(&[("Host", "x")])),
            Err(HeaderError::Forbidden(_))
        ));
        assert!(matches!(
            normalize(h(&[("a", "x\0y")])),
            Err(HeaderError::InvalidValue(_))
        ));
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        for raw in [
            &b""[..],
            b"\0\0\0",
            b"\0\0\0\x01",
            b"\0\0\0\x01\0\0\0\x05ab",
            b"\xff\xff\xff\xff\0\0\0\0\0\0\0\0",
            b"\0\0\0\x01\0\0\0\0\0\0\0\0",
            b"\0\0\0\0extra",
        ] {
            assert!(decode_block(raw).is_err(), "{raw:?} accepted");
        }
        // A decoder fed garbage errors out.
        let mut d = HeaderDecoder::new();
        assert!(d.decode(b"not zlib at all").is_err());
    }

    #[test]
    fn the_first_block_names_the_spdy3_dictionary() {
        let mut e = HeaderEncoder::new().expect("encoder");
        let block = e.encode(&h(&[("streamtype", "error")])).expect("encode");
        // CMF 0x78 (deflate, 32 KiB window), FLG 0xf9 (level 9, FDICT), DICTID e3c6a7c2: the
        // same six bytes Go's compress/zlib writes for spdystream.
        assert_eq!(&block[..6], hex("78f9e3c6a7c2"));
        // Sync flush: every block ends with an empty stored block.
        assert!(block.ends_with(&[0, 0, 0xff, 0xff]));
        let second = e.encode(&h(&[("streamtype", "stdout")])).expect("encode");
        assert_ne!(
            &second[..2],
            &[0x78, 0xf9],
            "only the first block has a zlib header"
        );
    }

    #[test]
    fn one_context_across_blocks_both_ways() {
        let mut e = HeaderEncoder::new().expect("encoder");
        let mut d = HeaderDecoder::new();
        let lists = [
            h(&[("streamtype", "error"), ("requestid", "0")]),
            h(&[("streamtype", "stdout"), ("requestid", "0")]),
            h(&[]),
            h(&[("streamtype", "stderr"), ("requestid", "0")]),
            h(&[("port", "8080"), ("streamtype", "data"), ("requestid", "1")]),
        ];
        let blocks: Vec<Bytes> = lists.iter().map(|l| e.encode(l).expect("encode")).collect();
        // Later blocks refer back to earlier ones, so they are smaller than the first...
        assert!(blocks[1].len() < blocks[0].len());
        for (l, b) in lists.iter().zip(&blocks) {
            assert_eq!(&d.decode(b).expect("decode"), l);
        }
        // ...and cannot be read by a fresh context.
        assert!(HeaderDecoder::new().decode(&blocks[1]).is_err());
    }

    #[test]
    fn blocks_from_c_zlib_decode_across_frames() {
        // Made by CPython's zlib 1.2.13: compressobj(level=9, zdict=<SPDY/3 dictionary>), one
        // Z_SYNC_FLUSH per block, three blocks from one context (as Go's framer does).
        let mut d = HeaderDecoder::new();
        let b1 = hex(
            "78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0800632388b20d196094ace8c0600000000ffff",
        );
        let b2 = hex("c2aa1898bc53f2c1a5369a6a00000000ffff");
        let b3 = hex("c26e345075263803e796e69464824b61862400000000ffff");
        assert_eq!(
            d.decode(&b1),
            Ok(h(&[("streamtype", "error"), ("requestid", "0")]))
        );
        assert_eq!(
            d.decode(&b2),
            Ok(h(&[("streamtype", "stdout"), ("requestid", "0")]))
        );
        assert_eq!(
            d.decode(&b3),
            Ok(h(&[
                ("streamtype", "stdin"),
                ("multi", "a"),
                ("multi", "b")
            ]))
        );
    }

    #[test]
    fn node_spdy_vectors_decode() {
        // Header blocks of node-spdy's SYN_STREAM and (empty) SYN_REPLY test frames.
        let syn = hex("78f9e3c6a7c202e50e507ab442a45a77d7105006b32a4804974d8cfa00000000ffff");
        assert_eq!(
            HeaderDecoder::new().decode(&syn),
            Ok(h(&[(":method", "GET"), (":path", "/")]))
        );
        let reply = hex("78f9e3c6a7c202a6230600000000ffff");
        assert_eq!(HeaderDecoder::new().decode(&reply), Ok(vec![]));
    }

    #[test]
    fn a_foreign_dictionary_is_refused() {
        // zlib header naming dictionary id 0x01020304.
        let mut input = vec![0x78, 0xbb];
        input.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(
            HeaderDecoder::new().decompress(&input),
            Err(HeaderError::WrongDictionary(0x0102_0304))
        );
    }

    #[test]
    fn large_blocks_round_trip_and_bombs_are_refused() {
        let mut e = HeaderEncoder::new().expect("encoder");
        let mut d = HeaderDecoder::new();
        let big = h(&[("x-big", &"v".repeat(200_000)), ("y", "z")]);
        assert_eq!(d.decode(&e.encode(&big).expect("encode")), Ok(big));
        let bomb = e.compress(&vec![0u8; MAX_BLOCK + 1]).expect("compress");
        assert!(bomb.len() < 4096);
        assert!(matches!(
            d.decompress(&bomb),
            Err(HeaderError::TooLarge(MAX_BLOCK))
        ));
    }
}
