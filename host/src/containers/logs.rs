//! Container logs in the CRI format kubelet reads: one line per record,
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>`, P marking a partial line (the
//! text continues in the next record) and F a full one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Longest record before a line is split into partial records (as containerd does).
pub const MAX_RECORD: usize = 16 * 1024;

/// Formats a timestamp (nanoseconds since the epoch) as RFC 3339 with nanoseconds.
pub fn rfc3339_nanos(unix_nanos: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Turns output chunks into CRI log records. Keeps the unfinished line of each stream.
#[derive(Debug, Default)]
pub struct Formatter {
    pending: [Vec<u8>; 2],
}

impl Formatter {
    /// Formats `data` read at `time`; returns the records to append (each ends in '\n').
    /// Linear in the bytes given: each byte is looked at once and the unfinished rest is
    /// moved once per call (a guest writing megabytes of newlines costs moatd no more than
    /// as many bytes of text).
    pub fn push(&mut self, stream: Stream, data: &[u8], time: i64) -> Vec<u8> {
        let buf = &mut self.pending[stream as usize];
        buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(buf.len() + buf.len() / 8);
        let ts = rfc3339_nanos(time);
        let mut start = 0;
        loop {
            let rest = &buf[start..];
            let window = &rest[..rest.len().min(MAX_RECORD + 1)];
            if let Some(nl) = window.iter().position(|b| *b == b'\n') {
                record(&mut out, &ts, stream, 'F', &rest[..nl]);
                start += nl + 1;
            } else if rest.len() > MAX_RECORD {
                record(&mut out, &ts, stream, 'P', &rest[..MAX_RECORD]);
                start += MAX_RECORD;
            } else {
                break;
            }
        }
        buf.drain(..start);
        out
    }

    /// At the end of the streams: what is left of unfinished lines, as full records.
    pub fn finish(&mut self, time: i64) -> Vec<u8> {
        let mut out = Vec::new();
        let ts = rfc3339_nanos(time);
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if !self.pending[i].is_empty() {
                let rest = std::mem::take(&mut self.pending[i]);
                record(&mut out, &ts, stream, 'F', &rest);
            }
        }
        out
    }
}

fn record(out: &mut Vec<u8>, ts: &str, stream: Stream, tag: char, text: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.tag().as_bytes());
    out.extend_from_slice(&[b' ', tag as u8, b' ']);
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// An append-only log file that can be reopened (after kubelet rotated it), optionally
/// capped in size like CRI-O's `log_size_max`: a write that would take the file past the
/// cap empties it first, and a single batch larger than the cap keeps only its newest
/// whole records. So a container that floods its output costs at most the cap on disk
/// between two of kubelet's rotations.
pub struct LogFile {
    path: PathBuf,
    file: File,
    max: Option<u64>,
    len: u64,
}

impl LogFile {
    /// Opens (creating) the file and its directory, uncapped.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_capped(path, None)
    }

    /// Opens (creating) the file and its directory, holding it at `max` bytes at most.
    pub fn open_capped(path: &Path, max: Option<u64>) -> std::io::Result<Self> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            max,
            len,
        })
    }

    /// Appends records (whole lines).
    pub fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(max) = self.max {
            if bytes.len() as u64 > max {
                // The newest whole records that fit.
                let from = bytes.len() - max as usize;
                let start = bytes[from..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |nl| from + nl + 1);
                bytes = &bytes[start..];
            }
            if self.len + bytes.len() as u64 > max {
                self.file.set_len(0)?;
                self.len = 0;
            }
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Opens the path again: a rotated file keeps what it had, new records go to a new file.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        *self = Self::open_capped(&self.path, self.max)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_full_records_and_long_ones_partial() {
        let mut f = Formatter::default();
        let t = 1_700_000_000_123_456_789;
        let out = String::from_utf8(f.push(Stream::Stdout, b"hello\nwor", t)).expect("utf8");
        assert_eq!(out, "2023-11-14T22:13:20.123456789Z stdout F hello\n");
        let out = String::from_utf8(f.push(Stream::Stdout, b"ld\n", t)).expect("utf8");
        assert!(out.ends_with(" stdout F world\n"), "{out}");
        let out = String::from_utf8(f.push(Stream::Stderr, b"oops", t)).expect("utf8");
        assert!(out.is_empty());
        let out = String::from_utf8(f.finish(t)).expect("utf8");
        assert!(out.ends_with(" stderr F oops\n"), "{out}");
        let long = vec![b'x'; MAX_RECORD + 10];
        let out = String::from_utf8(f.push(Stream::Stdout, &long, t)).expect("utf8");
        assert_eq!(out.matches(" P ").count(), 1);
        let out = String::from_utf8(f.push(Stream::Stdout, b"\n", t)).expect("utf8");
        assert!(out.ends_with(&format!(" F {}\n", "x".repeat(10))), "{out}");
    }

    #[test]
    fn a_chunk_of_four_mib_of_newlines_is_four_mi_records() {
        // Drained once per line, this chunk costs ~10^13 byte moves; once per call, 4 MiB.
        let mut f = Formatter::default();
        let chunk = vec![b'\n'; 4 << 20];
        let out = f.push(Stream::Stdout, &chunk, 0);
        let records = out.split(|b| *b == b'\n').filter(|r| !r.is_empty()).count();
        assert_eq!(records, 4 << 20);
        assert!(out.ends_with(b" stdout F \n"));
        assert!(f.finish(0).is_empty(), "nothing left over");
        // Long lines mixed in split the same way as before.
        let mut data = vec![b'y'; 3 * MAX_RECORD + 5];
        data.extend_from_slice(b"\nz\n");
        let text = String::from_utf8(f.push(Stream::Stderr, &data, 0)).expect("utf8");
        let tags: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(2).unwrap_or(""))
            .collect();
        assert_eq!(tags, vec!["P", "P", "P", "F", "F"]);
        assert!(text.ends_with(" stderr F z\n"));
    }

    #[test]
    fn reopen_starts_a_new_file_after_rotation() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("c/0.log");
        let mut l = LogFile::open(&p).expect("open");
        l.write(b"one\n").expect("w");
        std::fs::rename(&p, d.path().join("c/0.log.1")).expect("rotate");
        l.reopen().expect("reopen");
        l.write(b"two\n").expect("w");
        assert_eq!(std::fs::read_to_string(&p).expect("r"), "two\n");
        assert_eq!(
            std::fs::read_to_string(d.path().join("c/0.log.1")).expect("r"),
            "one\n"
        );
    }
}
