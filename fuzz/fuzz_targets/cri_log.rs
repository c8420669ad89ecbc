#![no_main]
//! Untrusted input: a container's output (the guest relays whatever its processes write),
//! turned into CRI log records by `containers::logs::Formatter` and appended to the log
//! file kubelet reads back (`containers::logs::LogFile`, optionally capped). moatd has no
//! parser of CRI log lines of its own (kubelet reads them), so this checks the writer:
//! every record it makes must be what kubelet's parser accepts.
//!
//! Input: a cap selector (u8: 0 no cap, else a cap of 64 * n bytes on the log file), then
//! chunks, each a flags byte (bit 0: stderr; bit 1: the output ends here, `finish`), a
//! timestamp (i64 LE nanoseconds) and the bytes (`u16 LE length, bytes`).
//! Checks:
//! - every record is `<RFC 3339 timestamp with nanoseconds> <stdout|stderr> <F|P> <text>\n`,
//!   the text without a newline and at most MAX_RECORD bytes; P records are exactly that
//!   long;
//! - per stream, the records' texts put back together (P joined, F ending a line) are the
//!   bytes written, newlines included;
//! - a capped file stays within its cap and holds whole records.

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_host::containers::logs::{Formatter, LogFile, MAX_RECORD, Stream};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cap = match input.u8() {
        0 => None,
        n => Some(64 * u64::from(n)),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pod/container/0.log");
    let mut file = LogFile::open_capped(&path, cap).expect("log file");
    let mut fmt = Formatter::default();
    // What each stream wrote, and what its records say it wrote.
    let mut written = [Vec::new(), Vec::new()];
    let mut rebuilt = [Vec::new(), Vec::new()];
    let mut all_records = Vec::new();
    while !input.is_empty() {
        let flags = input.u8();
        let time = input.u64() as i64;
        let bytes = input.piece();
        let (stream, s) = if flags & 1 == 0 {
            (Stream::Stdout, 0)
        } else {
            (Stream::Stderr, 1)
        };
        written[s].extend_from_slice(bytes);
        let mut records = fmt.push(stream, bytes, time);
        if flags & 2 != 0 {
            records.extend(fmt.finish(time));
            for w in &mut written {
                // `finish` ends an unfinished line as if a newline came.
                if !w.is_empty() && !w.ends_with(b"\n") {
                    w.push(b'\n');
                }
            }
        }
        check_records(&records, &mut rebuilt, time);
        file.write(&records).expect("write");
        all_records.extend_from_slice(&records);
        if let Some(cap) = cap {
            let on_disk = std::fs::read(&path).expect("read");
            assert!(
                on_disk.len() as u64 <= cap,
                "log file of {} bytes past its cap {cap}",
                on_disk.len()
            );
            assert!(
                is_whole_records(&on_disk),
                "the capped file is not whole records"
            );
        }
    }
    // Per stream: complete lines written == lines rebuilt from the records.
    for s in 0..2 {
        let done = written[s]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let rebuilt_done = rebuilt[s]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        assert_eq!(
            String::from_utf8_lossy(&rebuilt[s][..rebuilt_done]),
            String::from_utf8_lossy(&written[s][..done]),
            "stream {s}: records do not add up to the output"
        );
        assert!(
            written[s][done..].starts_with(&rebuilt[s][rebuilt_done..]),
            "stream {s}: partial records are not the start of the unfinished line"
        );
    }
    if cap.is_none() {
        assert_eq!(std::fs::read(&path).expect("read"), all_records);
    }
});

fn is_whole_records(b: &[u8]) -> bool {
    b.split_inclusive(|&c| c == b'\n')
        .all(|r| r.ends_with(b"\n") && parse_record(&r[..r.len() - 1]).is_some())
}

/// `<timestamp> <stream> <tag> <text>` (without its newline), as kubelet's parser splits it.
fn parse_record(r: &[u8]) -> Option<(&[u8], usize, u8, &[u8])> {
    let mut parts = r.splitn(4, |&b| b == b' ');
    let ts = parts.next()?;
    let stream = match parts.next()? {
        b"stdout" => 0,
        b"stderr" => 1,
        _ => return None,
    };
    let tag = match parts.next()? {
        [t @ (b'F' | b'P')] => *t,
        _ => return None,
    };
    let text = parts.next()?;
    let ts_str = std::str::from_utf8(ts).ok()?;
    humantime::parse_rfc3339(ts_str).ok()?;
    Some((ts, stream, tag, text))
}

fn check_records(records: &[u8], rebuilt: &mut [Vec<u8>; 2], time: i64) {
    if records.is_empty() {
        return;
    }
    assert!(records.ends_with(b"\n"), "records end mid-line");
    let want_ts = moat_host::containers::logs::rfc3339_nanos(time);
    let mut queue: VecDeque<&[u8]> = records[..records.len() - 1]
        .split(|&b| b == b'\n')
        .collect();
    while let Some(r) = queue.pop_front() {
        let (ts, s, tag, text) = parse_record(r)
            .unwrap_or_else(|| panic!("malformed record {:?}", String::from_utf8_lossy(r)));
        assert_eq!(ts, want_ts.as_bytes(), "timestamp");
        // RFC 3339 with nanoseconds: the fraction has nine digits.
        let frac = want_ts
            .rsplit_once('.')
            .map(|(_, f)| f.trim_end_matches('Z'));
        assert_eq!(
            frac.map(str::len),
            Some(9),
            "timestamp {want_ts} without nanoseconds"
        );
        assert!(text.len() <= MAX_RECORD, "record of {} bytes", text.len());
        rebuilt[s].extend_from_slice(text);
        if tag == b'F' {
            rebuilt[s].push(b'\n');
        } else {
            assert_eq!(text.len(), MAX_RECORD, "short partial record");
        }
    }
}
