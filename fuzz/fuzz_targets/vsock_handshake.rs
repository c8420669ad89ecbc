#![no_main]
//! Untrusted input: what a host process writes on the vsock back-end's hybrid-vsock Unix
//! socket before the connection is relayed: the `CONNECT <port>\n` line
//! (`vsock::handshake::parse_connect`), read by the muxer with peek-then-read so that no byte
//! past the newline is consumed.
//!
//! Input: the first byte picks the mode. Even: the rest is one line for `parse_connect`.
//! Odd: the rest is written on a real connection to a fresh `Muxer`'s socket in pieces
//! (`u8 length, bytes`...), the muxer handling its events after each; at the end the muxer
//! must have started a connection exactly when the stream begins with a valid CONNECT line.

use std::io::Write as _;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use moat_devices::vsock::handshake::{MAX_CONNECT_LINE, parse_connect};
use moat_devices::vsock::muxer::Muxer;
use moat_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.u8() & 1 == 0 {
        check_line(input.rest());
        return;
    }
    moat_fuzz::ignore_sigpipe();
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock.sock");
    let mut muxer = Muxer::new(&uds, 3).expect("muxer");
    let mut host = UnixStream::connect(&uds).expect("connect");
    let mut sent = Vec::new();
    while !input.is_empty() {
        let n = usize::from(input.u8());
        let chunk = input.bytes(n);
        if host.write_all(chunk).is_err() {
            // The muxer refused the stream and closed it.
            break;
        }
        sent.extend_from_slice(chunk);
        for _ in 0..4 {
            muxer.process_host_events();
        }
    }
    let want = match sent.iter().position(|&b| b == b'\n') {
        Some(nl) if nl < MAX_CONNECT_LINE => usize::from(parse_connect(&sent[..=nl]).is_ok()),
        _ => 0,
    };
    assert_eq!(
        muxer.connection_count(),
        want,
        "stream {:?}",
        String::from_utf8_lossy(&sent)
    );
});

fn check_line(line: &[u8]) {
    if let Ok(port) = parse_connect(line) {
        assert!(line.len() <= MAX_CONNECT_LINE);
        let text = std::str::from_utf8(line).expect("accepted a non-UTF-8 line");
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let digits = text
            .strip_prefix("CONNECT ")
            .expect("accepted without CONNECT");
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{digits:?}");
        assert_eq!(digits.parse::<u32>().ok(), Some(port));
    }
}
