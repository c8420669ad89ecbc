#![no_main]
//! Untrusted input: the name/value header blocks of a streaming client's SYN_STREAM frames
//! (what it sends after the SPDY/3.1 upgrade: `streamtype`, `port`, `requestid`, ...), which
//! moatd inflates with one zlib context per connection (the SPDY/3 dictionary) and parses with
//! `spdy::headers::decode_block`.
//!
//! Input: the first byte picks the mode. Even: the rest is one decompressed block for
//! `decode_block`. Odd: the rest is a series of compressed blocks (`u16 LE length, bytes`)
//! fed to one `HeaderDecoder`, as the frames of one connection are; the connection ends at
//! the first bad block. (`HeaderDecoder::decode` is `decompress` then `decode_block`; the
//! two steps are called apart here to check the decompressed size cap in between.)

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_host::streaming::spdy::headers::{HeaderDecoder, MAX_BLOCK, decode_block};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.u8() & 1 == 0 {
        check_block(input.rest());
        return;
    }
    let mut decoder = HeaderDecoder::new();
    while !input.is_empty() {
        let block = input.piece();
        match decoder.decompress(block) {
            Ok(raw) => {
                assert!(raw.len() <= MAX_BLOCK, "inflated past MAX_BLOCK");
                check_block(&raw);
            }
            Err(_) => return,
        }
    }
});

fn check_block(raw: &[u8]) {
    if let Ok(list) = decode_block(raw) {
        for (name, value) in &list {
            assert!(!name.is_empty(), "empty header name accepted");
            assert!(!value.contains('\0'), "NUL left in a value");
        }
    }
}
