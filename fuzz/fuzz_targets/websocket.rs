#![no_main]
//! Untrusted input: what a client sends on the WebSocket transports of the streaming server
//! (`v4/v5.channel.k8s.io` remote command, `portforward.k8s.io` / `v4.channel.k8s.io` port
//! forward): each message's first byte is the channel, the rest its payload
//! (`websocket::incoming`); the resize channel carries JSON terminal sizes split anywhere
//! (`remotecommand::ResizeDecoder`); port forwarding names its ports in the URL query, each
//! checked by `portforward::parse_port`.
//!
//! Input: the first byte picks what the rest is: 0 a binary message, 1 a text message, 2 a
//! resize stream cut into pieces (`u8 length, bytes`...), 3 a URL query string.

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_host::streaming::portforward::parse_port;
use moat_host::streaming::remotecommand::ResizeDecoder;
use moat_host::streaming::websocket::{Incoming, frame, incoming};
use tokio_tungstenite::tungstenite::Message;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 4 {
        0 => channel_message(input.rest(), false),
        1 => channel_message(input.rest(), true),
        2 => {
            let mut resize = ResizeDecoder::default();
            while !input.is_empty() {
                let n = usize::from(input.u8());
                let chunk = input.bytes(n);
                for size in resize.push(chunk) {
                    // What reaches the backend: u16s widened, nothing else to check.
                    let _ = (u32::from(size.width), u32::from(size.height));
                }
            }
        }
        _ => {
            let Ok(query) = std::str::from_utf8(input.rest()) else {
                return;
            };
            // As server.rs's websocket upgrade splits `?ports=8080,9090&...`.
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                if k == "ports" || k == "port" {
                    for s in v.split(',') {
                        if let Ok(p) = parse_port(s) {
                            assert_ne!(p, 0, "port 0 accepted from {s:?}");
                            let digits = s.trim().trim_start_matches('+').trim_start_matches('0');
                            assert_eq!(digits, p.to_string(), "port {p} from {s:?}");
                        }
                    }
                }
            }
        }
    }
});

fn channel_message(bytes: &[u8], text: bool) {
    let msg = if text {
        let Ok(s) = std::str::from_utf8(bytes) else {
            return;
        };
        Message::text(s)
    } else {
        Message::binary(bytes.to_vec())
    };
    match incoming(Some(Ok(msg))) {
        Incoming::Data(ch, payload) => {
            assert_eq!(Some(&ch), bytes.first());
            assert_eq!(payload, bytes[1..]);
            // What we send back is framed the same way.
            assert_eq!(
                incoming(Some(Ok(frame(ch, &payload)))),
                Incoming::Data(ch, payload)
            );
        }
        Incoming::Other => assert!(bytes.is_empty(), "a non-empty message was dropped"),
        Incoming::Closed => panic!("a data message read as a close"),
    }
}
