#![no_main]
//! Untrusted input: the byte stream a streaming client sends after the HTTP upgrade to
//! SPDY/3.1 (kubelet, crictl, or kubectl's exec/attach/port-forward bytes relayed by the API
//! server and kubelet's stream proxy), as the session's reader task feeds it to
//! `spdy::frame::decode`: whatever TCP delivered appended to a buffer, decoded until it says
//! "need more" (None) or fails.
//!
//! Input: the first byte is the size of the pieces the bytes arrive in (0: all at once); the
//! rest is the wire. Checks besides "no panic": a frame consumes its bytes, "need more"
//! consumes none, and every decoded frame encodes back to something that decodes to itself.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use moat_host::streaming::spdy::frame::{Frame, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, wire)) = data.split_first() else {
        return;
    };
    let piece = if piece == 0 {
        wire.len().max(1)
    } else {
        usize::from(piece)
    };
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'feed: for chunk in wire.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(buf.len() < before, "a frame consumed nothing");
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "need-more consumed bytes");
                    break;
                }
                // Errors are final: the session sends GOAWAY and closes.
                Err(_) => break 'feed,
            }
        }
    }
    for f in frames {
        if matches!(f, Frame::Unknown { .. }) {
            continue;
        }
        let mut wire = BytesMut::new();
        f.encode(&mut wire).expect("a decoded frame encodes");
        let back = decode(&mut wire)
            .expect("an encoded frame decodes")
            .expect("an encoded frame is complete");
        assert_eq!(back, f, "round trip");
        assert!(wire.is_empty(), "round trip left bytes");
    }
});
