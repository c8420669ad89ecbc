//! The fixed zlib dictionary of SPDY/3 header compression (draft 3, section 2.6.10.1).
//!
//! The draft prints it as 1423 raw bytes; it is built here from its two parts so that it can be
//! read: first a list of words, each prefixed by its length as a 32-bit big-endian integer, then
//! plain text without separators. The tests pin its length and its Adler-32 (0xe3c6a7c2), which
//! zlib writes as the dictionary id (DICTID) into the header of every SPDY/3 header stream, so a
//! single wrong byte would make every peer reject our headers.

/// Words of the first part, each written as `len(u32 BE) ++ word`.
const WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The second part, concatenated as is (no lengths, no separators between the pieces).
const TAIL: &[&str] = &[
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec ",
    "00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, ",
    "GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,public",
    "privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

const fn total_len() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < WORDS.len() {
        n += 4 + WORDS[i].len();
        i += 1;
    }
    let mut j = 0;
    while j < TAIL.len() {
        n += TAIL[j].len();
        j += 1;
    }
    n
}

/// Length of the dictionary: 1423 bytes.
pub const LEN: usize = total_len();

const fn build() -> [u8; LEN] {
    let mut out = [0u8; LEN];
    let mut at = 0;
    let mut i = 0;
    while i < WORDS.len() {
        let w = WORDS[i].as_bytes();
        let len = (w.len() as u32).to_be_bytes();
        let mut k = 0;
        while k < 4 {
            out[at] = len[k];
            at += 1;
            k += 1;
        }
        let mut k = 0;
        while k < w.len() {
            out[at] = w[k];
            at += 1;
            k += 1;
        }
        i += 1;
    }
    let mut j = 0;
    while j < TAIL.len() {
        let t = TAIL[j].as_bytes();
        let mut k = 0;
        while k < t.len() {
            out[at] = t[k];
            at += 1;
            k += 1;
        }
        j += 1;
    }
    out
}

/// The SPDY/3 header compression dictionary.
pub static DICTIONARY: [u8; LEN] = build();

/// Adler-32 of [`DICTIONARY`]: the DICTID in the zlib header of every SPDY/3 header stream
/// (Go's `compress/zlib` as used by spdystream writes `78 f9 e3 c6 a7 c2`).
pub const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

#[cfg(test)]
mod tests {
    use super::*;

    /// Adler-32 (RFC 1950, section 8), written out so the test does not trust zlib for it.
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_has_the_drafts_length_and_checksum() {
        assert_eq!(LEN, 1423);
        assert_eq!(adler32(&DICTIONARY), DICTIONARY_ID);
    }

    #[test]
    fn dictionary_starts_and_ends_like_the_draft() {
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
        // The last length-prefixed word, then the first byte of the plain part.
        let origin = DICTIONARY
            .windows(10)
            .position(|w| w == b"\0\0\0\x06origin");
        assert_eq!(origin.map(|p| DICTIONARY[p + 10]), Some(b'1'));
    }
}
