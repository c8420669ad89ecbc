//! A capped console log: the guest's serial output, which a hostile guest (root in its VM)
//! can write forever, kept on disk in bounded space.
//!
//! # On-disk layout
//!
//! A log at `console.log` is three files, all created (and emptied) by `CappedLog::create`:
//!
//! - `console.log`: the **head**, the first `head_bytes` of output, verbatim. Once output
//!   goes past the head, one **marker line** follows it (on a line of its own):
//!   `[moat: N bytes of console output dropped; continued in console.log.2 then console.log.1]`
//!   where N counts the bytes between the head and the tail kept, and the file names give
//!   the tail's order (older first; one name while only one holds output).
//! - `console.log.1`, `console.log.2`: the **tail**, two segments of at most
//!   `tail_bytes / 2` bytes each. Output past the head is appended to the current segment;
//!   when it is full, the other one (the older) is emptied and becomes the current one, and
//!   the marker is rewritten (the head file is cut back to the head and the new marker
//!   appended). So the tail keeps between `tail_bytes / 2` and `tail_bytes` of the newest
//!   output, and `cat console.log <older> <newer>` reads head, marker and tail in order;
//!   `read_tail` does that for a program.
//!
//! Together the files never hold more than `head_bytes + tail_bytes` plus the marker line
//! (at most `MARKER_MAX` bytes). Each `write` is O(1), whatever its length: at most one
//! write of data, and on a rotation one `ftruncate` of a segment and one of the head with
//! one marker write; a write of more than the tail can keep empties both segments and drops
//! what would be overwritten anyway without writing it. Nothing is buffered in memory:
//! every byte kept is written before `write` returns.
//!
//! A path that is not a regular file (a FIFO a benchmark reads, `/dev/null`) is written to
//! as it is, uncapped, with no segments: whoever reads it decides what to keep.
//!
//! With `tail_bytes < 2` there is no tail: the head, then `[moat: N bytes of console output
//! dropped]`, rewritten as N grows.
//!
//! Once created the log needs only `write(2)` and `ftruncate(2)` on descriptors it holds
//! (files opened `O_APPEND`; no seek, no path look-ups), so it keeps working inside a
//! sandbox that can no longer open its paths.
//!
//! The guest can print a line that looks like a marker; only the last line of the head
//! file, when the head is full, is the real one. `read_tail` follows only the two segment
//! names it expects, so a forged marker can at most make it read those (emptied) files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The default cap, head and tail together: 1 MiB of head and 1 MiB of tail.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 20;

/// The most bytes the marker line takes (with segment names of up to 255 bytes).
pub const MARKER_MAX: u64 = 1024;

/// What a log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapConfig {
    /// The first bytes of output, kept whole.
    pub head_bytes: u64,
    /// The newest bytes of output, in two segments of half this each; between half and all
    /// of it is kept. Below 2, nothing past the head is kept.
    pub tail_bytes: u64,
}

impl CapConfig {
    /// A cap of `total` bytes: half (rounded down) for the head, the rest for the tail.
    pub fn split(total: u64) -> CapConfig {
        CapConfig {
            head_bytes: total / 2,
            tail_bytes: total - total / 2,
        }
    }

    /// The size of one tail segment.
    fn segment(&self) -> u64 {
        self.tail_bytes / 2
    }
}

impl Default for CapConfig {
    fn default() -> Self {
        CapConfig::split(DEFAULT_MAX_BYTES)
    }
}

/// The paths of the two tail segments of a log at `path` (`<path>.1`, `<path>.2`).
pub fn segment_paths(path: &Path) -> io::Result<[PathBuf; 2]> {
    let [a, b] = segment_names(path)?;
    Ok([path.with_file_name(a), path.with_file_name(b)])
}

/// The file names of the two tail segments of a log at `path`.
fn segment_names(path: &Path) -> io::Result<[String; 2]> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("console log path {} names no file", path.display()),
        )
    })?;
    let name = name.to_string_lossy();
    Ok([format!("{name}.1"), format!("{name}.2")])
}

/// Opens `path` for appending, creating it.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Opens `path` for appending, creating it, and empties it.
fn open_empty(path: &Path) -> io::Result<File> {
    let file = open_append(path)?;
    file.set_len(0)?;
    Ok(file)
}

/// A console log capped to a head and a rotating tail (see the module docs). A path that
/// is not a regular file (a FIFO a test or benchmark reads, `/dev/null`) is written to as
/// it is, uncapped: whoever reads it keeps what it wants.
#[derive(Debug)]
pub struct CappedLog(Inner);

#[derive(Debug)]
enum Inner {
    Plain(File),
    Capped(Capped),
}

/// The log of a regular file.
#[derive(Debug)]
struct Capped {
    caps: CapConfig,
    head: File,
    segments: [File; 2],
    names: [String; 2],
    /// Bytes in the head file before the marker.
    head_len: u64,
    /// Whether the head is empty or ends with a newline (else the marker starts one).
    head_ends_line: bool,
    /// Whether output has gone past the head (the marker is due).
    past_head: bool,
    /// The segment being appended to; the other is the older.
    cur: usize,
    cur_len: u64,
    old_len: u64,
    /// Output bytes between the head and the older segment's first byte.
    dropped: u64,
    /// The marker on disk does not say what it should yet.
    marker_stale: bool,
}

impl CappedLog {
    /// Creates (or empties) the log at `path` and its two tail segments; opens a path that
    /// is not a regular file as it is.
    pub fn create(path: &Path, caps: CapConfig) -> io::Result<CappedLog> {
        let names = segment_names(path)?;
        let [p1, p2] = segment_paths(path)?;
        let head = open_append(path)?;
        if !head.metadata()?.file_type().is_file() {
            return Ok(CappedLog(Inner::Plain(head)));
        }
        head.set_len(0)?;
        Ok(CappedLog(Inner::Capped(Capped {
            caps,
            head,
            segments: [open_empty(&p1)?, open_empty(&p2)?],
            names,
            head_len: 0,
            head_ends_line: true,
            past_head: false,
            cur: 0,
            cur_len: 0,
            old_len: 0,
            dropped: 0,
            marker_stale: false,
        })))
    }

    /// Output bytes dropped so far (not on disk).
    pub fn dropped(&self) -> u64 {
        match &self.0 {
            Inner::Plain(_) => 0,
            Inner::Capped(c) => c.dropped,
        }
    }
}

impl Capped {
    fn write_head(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.caps.head_bytes - self.head_len;
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.head.write(&buf[..n])?;
        if let Some(&last) = buf[..n].last() {
            self.head_len += n as u64;
            self.head_ends_line = last == b'\n';
        }
        Ok(n)
    }

    /// The marker line as it should be now.
    fn marker(&self) -> String {
        let newline = if self.head_ends_line { "" } else { "\n" };
        let mut m = format!(
            "{newline}[moat: {} bytes of console output dropped",
            self.dropped
        );
        if self.caps.segment() > 0 {
            let newer = &self.names[self.cur];
            if self.old_len > 0 {
                let older = &self.names[1 - self.cur];
                m.push_str(&format!("; continued in {older} then {newer}"));
            } else {
                m.push_str(&format!("; continued in {newer}"));
            }
        }
        m.push_str("]\n");
        m
    }

    /// Cuts the head file back to the head and appends the marker.
    fn write_marker(&mut self) -> io::Result<()> {
        self.marker_stale = true;
        let marker = self.marker();
        self.head.set_len(self.head_len)?;
        self.head.write_all(marker.as_bytes())?;
        self.marker_stale = false;
        Ok(())
    }

    /// Empties the older segment and makes it the current one.
    fn rotate(&mut self) -> io::Result<()> {
        let other = 1 - self.cur;
        self.segments[other].set_len(0)?;
        self.dropped += self.old_len;
        self.old_len = self.cur_len;
        self.cur_len = 0;
        self.cur = other;
        self.marker_stale = true;
        Ok(())
    }

    /// For a write of `len` bytes, more than both segments hold: everything in the
    /// segments and all but the last two segments' worth of the write would be overwritten
    /// by the rest of it, so they are dropped without being written. Returns how many
    /// bytes of the write were dropped.
    fn drop_overwritten(&mut self, len: u64) -> io::Result<usize> {
        let skip = len - 2 * self.caps.segment();
        for s in &self.segments {
            s.set_len(0)?;
        }
        self.dropped += self.old_len + self.cur_len + skip;
        self.old_len = 0;
        self.cur_len = 0;
        self.marker_stale = true;
        // `skip` is less than `len`, the length of a slice.
        Ok(usize::try_from(skip).unwrap_or(usize::MAX))
    }

    fn write_tail(&mut self, buf: &[u8]) -> io::Result<usize> {
        let seg = self.caps.segment();
        let len = buf.len() as u64;
        if !self.past_head {
            self.past_head = true;
            self.marker_stale = true;
        }
        if seg == 0 {
            self.dropped += len;
            if let Err(e) = self.write_marker() {
                self.dropped -= len;
                return Err(e);
            }
            return Ok(buf.len());
        }
        if len > 2 * seg {
            return self.drop_overwritten(len);
        }
        if self.cur_len >= seg {
            self.rotate()?;
        }
        if self.marker_stale {
            self.write_marker()?;
        }
        let room = seg - self.cur_len;
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.segments[self.cur].write(&buf[..n])?;
        self.cur_len += n as u64;
        Ok(n)
    }
}

impl Write for CappedLog {
    /// Writes some of `buf` (the head, or the current segment, up to its end) or drops it;
    /// returns how much was taken either way.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let c = match &mut self.0 {
            Inner::Plain(f) => return f.write(buf),
            Inner::Capped(c) => c,
        };
        if buf.is_empty() {
            return Ok(0);
        }
        if c.head_len < c.caps.head_bytes {
            c.write_head(buf)
        } else {
            c.write_tail(buf)
        }
    }

    /// Brings the marker up to date (nothing else is buffered).
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Inner::Capped(c) if c.marker_stale => c.write_marker(),
            _ => Ok(()),
        }
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        if self.marker_stale
            && let Err(e) = self.write_marker()
        {
            tracing::warn!(error = %e, "writing the console log's marker");
        }
    }
}

/// How much of the head file's end `read_tail` looks at for the marker.
const MARKER_SCAN: u64 = 2 * MARKER_MAX;

/// The tail segments (indexes into `names`, older first) a marker line names, if `line`
/// (without its newline) is one.
fn parse_marker(line: &[u8], names: &[String; 2]) -> Option<Vec<usize>> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("[moat: ")?.strip_suffix(']')?;
    let (count, rest) = rest.split_once(" bytes of console output dropped")?;
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let index = |n: &str| names.iter().position(|x| x == n);
    let files = rest.strip_prefix("; continued in ")?;
    match files.split_once(" then ") {
        Some((a, b)) => {
            let (a, b) = (index(a)?, index(b)?);
            (a != b).then(|| vec![a, b])
        }
        None => Some(vec![index(files)?]),
    }
}

/// The last line of `tail` (the end of a file), without its newline, if it is whole in
/// `tail` (`at_start`: `tail` begins at the file's start).
fn last_line(tail: &[u8], at_start: bool) -> Option<&[u8]> {
    let body = tail.strip_suffix(b"\n")?;
    match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => Some(&body[i + 1..]),
        None => at_start.then_some(body),
    }
}

/// Reads the last `max_bytes` of the log at `path` in order: the head file (head and
/// marker), then the tail segments the marker names. A plain file (no marker) is read as
/// it is; anything but a regular file is refused. Reads at most `max_bytes`, whatever the
/// files hold.
pub fn read_tail(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let names = segment_names(path)?;
    let paths = segment_paths(path)?;
    if !std::fs::metadata(path)?.is_file() {
        // Not a log this module wrote (and a FIFO would block the open).
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut head = File::open(path)?;
    let head_len = head.metadata()?.len();
    let scan_from = head_len.saturating_sub(MARKER_SCAN);
    head.seek(SeekFrom::Start(scan_from))?;
    let mut end = Vec::new();
    (&mut head).take(MARKER_SCAN).read_to_end(&mut end)?;
    let order = last_line(&end, scan_from == 0)
        .and_then(|line| parse_marker(line, &names))
        .unwrap_or_default();

    let mut parts = vec![(head, head_len)];
    for i in order {
        match File::open(&paths[i]) {
            Ok(f) => {
                let len = f.metadata()?.len();
                parts.push((f, len));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let total: u64 = parts.iter().map(|(_, len)| len).sum();
    let mut skip = total.saturating_sub(max_bytes);
    let mut out = Vec::with_capacity(usize::try_from(total.min(max_bytes)).unwrap_or(0));
    for (mut file, len) in parts {
        if skip >= len {
            skip -= len;
            continue;
        }
        file.seek(SeekFrom::Start(skip))?;
        file.take(len - skip).read_to_end(&mut out)?;
        skip = 0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// The byte at `pos` of the test output stream.
    fn byte_at(pos: u64) -> u8 {
        // Lines of printable bytes, 97 long; prime so they don't line up with the caps.
        if pos % 97 == 96 {
            b'\n'
        } else {
            b' ' + (pos % 89) as u8
        }
    }

    fn stream(from: u64, len: usize) -> Vec<u8> {
        (from..from + len as u64).map(byte_at).collect()
    }

    /// Writes `total` bytes of the stream in chunks of the sizes `size` gives, from
    /// `written` on; returns the new total written.
    fn pump(log: &mut CappedLog, written: u64, total: u64, mut size: impl FnMut() -> usize) -> u64 {
        let mut pos = written;
        let mut buf = Vec::new();
        while pos < written + total {
            let n = size().min((written + total - pos) as usize).max(1);
            buf.clear();
            buf.extend((pos..pos + n as u64).map(byte_at));
            log.write_all(&buf).expect("write");
            pos += n as u64;
        }
        pos
    }

    fn disk_bytes(path: &Path) -> u64 {
        let [a, b] = segment_paths(path).expect("segments");
        [path, a.as_path(), b.as_path()]
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Checks what is on disk after `written` bytes of the stream against `caps`: the cap,
    /// the head, the marker's count and order, the newest bytes kept.
    fn check(path: &Path, caps: CapConfig, written: u64) {
        let disk = disk_bytes(path);
        assert!(
            disk <= caps.head_bytes + caps.tail_bytes + MARKER_MAX,
            "{disk} bytes on disk for {caps:?}"
        );
        let head_file = std::fs::read(path).expect("read head");
        let head_len = written.min(caps.head_bytes);
        assert_eq!(
            head_file[..head_len as usize],
            stream(0, head_len as usize)[..]
        );
        let all = read_tail(path, u64::MAX).expect("read_tail");
        assert_eq!(all[..head_len as usize], head_file[..head_len as usize]);
        if written <= caps.head_bytes {
            assert_eq!(head_file.len() as u64, written, "no marker yet");
            assert_eq!(all, head_file);
            return;
        }
        let marker = &head_file[head_len as usize..];
        let text = std::str::from_utf8(marker).expect("utf8 marker");
        let ends_line = head_len == 0 || byte_at(head_len - 1) == b'\n';
        assert_eq!(
            text.starts_with('\n'),
            !ends_line,
            "marker on a line of its own: {text:?}"
        );
        assert!(text.ends_with("]\n"), "{text:?}");
        let dropped: u64 = text
            .trim_start()
            .strip_prefix("[moat: ")
            .and_then(|t| t.split_once(' '))
            .and_then(|(n, _)| n.parse().ok())
            .expect("count in the marker");
        let kept = &all[head_file.len()..];
        assert_eq!(
            dropped + kept.len() as u64,
            written - caps.head_bytes,
            "the marker counts every byte not kept: {text:?}"
        );
        assert_eq!(
            kept,
            &stream(written - kept.len() as u64, kept.len())[..],
            "newest kept"
        );
        let seg = caps.tail_bytes / 2;
        assert!(kept.len() as u64 <= 2 * seg);
        assert!(
            kept.len() as u64 >= seg.min(written - caps.head_bytes),
            "at least half the tail kept: {} of {seg}",
            kept.len()
        );
        if seg == 0 {
            assert_eq!(
                text.trim(),
                format!("[moat: {dropped} bytes of console output dropped]")
            );
        }
    }

    fn setup(caps: CapConfig) -> (tempfile::TempDir, PathBuf, CappedLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let log = CappedLog::create(&path, caps).expect("create");
        (dir, path, log)
    }

    const SMALL: CapConfig = CapConfig {
        head_bytes: 1000,
        tail_bytes: 4000,
    };

    #[test]
    fn console_log_below_the_head_is_a_plain_file() {
        let (_d, path, mut log) = setup(SMALL);
        let n = pump(&mut log, 0, 999, || 10);
        check(&path, SMALL, n);
        let n = pump(&mut log, n, 1, || 1);
        check(&path, SMALL, n);
        drop(log);
        assert_eq!(std::fs::read(&path).expect("read"), stream(0, 1000));
        let [a, b] = segment_paths(&path).expect("segments");
        assert_eq!(std::fs::metadata(a).expect("seg 1").len(), 0);
        assert_eq!(std::fs::metadata(b).expect("seg 2").len(), 0);
    }

    #[test]
    fn console_log_marker_names_the_segments_in_order() {
        let (_d, path, mut log) = setup(SMALL);
        pump(&mut log, 0, 1001, || 7);
        let head = std::fs::read_to_string(&path).expect("read");
        assert!(
            head.ends_with(
                "[moat: 0 bytes of console output dropped; continued in console.log.1]\n"
            ),
            "{head:?}"
        );
        pump(&mut log, 1001, 2000, || 7);
        let head = std::fs::read_to_string(&path).expect("read");
        assert!(
            head.ends_with(
                "[moat: 0 bytes of console output dropped; continued in console.log.1 then console.log.2]\n"
            ),
            "{head:?}"
        );
        pump(&mut log, 3001, 2000, || 7);
        let head = std::fs::read_to_string(&path).expect("read");
        assert!(
            head.ends_with(
                "[moat: 2000 bytes of console output dropped; continued in console.log.2 then console.log.1]\n"
            ),
            "{head:?}"
        );
        check(&path, SMALL, 5001);
    }

    #[test]
    fn console_log_flood_in_4_mib_chunks_stays_capped() {
        let (_d, path, mut log) = setup(SMALL);
        let mut n = 0;
        for _ in 0..25 {
            n = pump(&mut log, n, 4 << 20, || 4 << 20);
            check(&path, SMALL, n);
        }
        assert_eq!(n, 100 << 20);
        assert_eq!(log.dropped(), n - 1000 - 4000, "both segments full");
    }

    #[test]
    fn console_log_flood_in_1_byte_chunks_stays_capped() {
        let (_d, path, mut log) = setup(SMALL);
        let mut n = 0;
        for _ in 0..64 {
            n = pump(&mut log, n, 16 << 10, || 1);
            check(&path, SMALL, n);
        }
    }

    #[test]
    fn console_log_writes_of_many_sizes_stay_capped() {
        for caps in [
            SMALL,
            CapConfig {
                head_bytes: 0,
                tail_bytes: 4000,
            },
            CapConfig {
                head_bytes: 97 * 3,
                tail_bytes: 4001,
            },
            CapConfig {
                head_bytes: 1,
                tail_bytes: 2,
            },
            CapConfig::split(3),
        ] {
            let (_d, path, mut log) = setup(caps);
            // A fixed pseudo-random sequence, with the sizes around the caps mixed in.
            let mut x: u64 = 12345;
            let seg = (caps.tail_bytes / 2) as usize;
            let special = [1, seg.max(1), 2 * seg, 2 * seg + 1, 3 * seg + 7];
            let mut i = 0;
            let mut n = 0;
            for _ in 0..300 {
                n = pump(&mut log, n, 5000, || {
                    i += 1;
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if i % 3 == 0 {
                        special[(x >> 33) as usize % special.len()]
                    } else {
                        (x >> 40) as usize % 9000 + 1
                    }
                });
                check(&path, caps, n);
            }
        }
    }

    #[test]
    fn console_log_without_a_tail_counts_what_it_drops() {
        for tail_bytes in [0, 1] {
            let caps = CapConfig {
                head_bytes: 100,
                tail_bytes,
            };
            let (_d, path, mut log) = setup(caps);
            let n = pump(&mut log, 0, 10_000, || 33);
            check(&path, caps, n);
            assert_eq!(log.dropped(), 9_900);
            let head = std::fs::read_to_string(&path).expect("read");
            assert!(
                head.ends_with("\n[moat: 9900 bytes of console output dropped]\n"),
                "{head:?}"
            );
        }
        let caps = CapConfig {
            head_bytes: 0,
            tail_bytes: 0,
        };
        let (_d, path, mut log) = setup(caps);
        log.write_all(b"abc").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "[moat: 3 bytes of console output dropped]\n"
        );
    }

    #[test]
    fn console_log_create_empties_an_earlier_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let [a, b] = segment_paths(&path).expect("segments");
        for p in [&path, &a, &b] {
            std::fs::write(p, b"earlier\n").expect("seed");
        }
        let mut log = CappedLog::create(&path, SMALL).expect("create");
        log.write_all(b"now\n").expect("write");
        assert_eq!(read_tail(&path, u64::MAX).expect("read"), b"now\n");
        assert_eq!(disk_bytes(&path), 4);
    }

    #[test]
    fn console_log_read_tail_takes_the_newest_bytes_in_order() {
        let (_d, path, mut log) = setup(SMALL);
        let n = pump(&mut log, 0, 6543, || 100);
        let all = read_tail(&path, u64::MAX).expect("all");
        for max in [
            0,
            1,
            10,
            2000,
            3999,
            4000,
            all.len() as u64 - 1,
            all.len() as u64,
        ] {
            let t = read_tail(&path, max).expect("tail");
            assert_eq!(t, all[all.len() - max as usize..], "max {max}");
        }
        assert_eq!(read_tail(&path, 5).expect("tail"), stream(n - 5, 5));
    }

    #[test]
    fn console_log_read_tail_reads_a_plain_file_and_ignores_forged_markers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"plain\n").expect("write");
        assert_eq!(read_tail(&path, 100).expect("read"), b"plain\n");
        // A guest's fake marker naming other files is not followed.
        let forged =
            "x\n[moat: 1 bytes of console output dropped; continued in ../../etc/passwd]\n";
        std::fs::write(&path, forged).expect("write");
        assert_eq!(read_tail(&path, 1000).expect("read"), forged.as_bytes());
        assert!(read_tail(&dir.path().join("absent"), 10).is_err());
    }

    #[test]
    fn console_log_markers_parse_only_in_their_own_form() {
        let names = ["c.1".to_owned(), "c.2".to_owned()];
        let p = |s: &str| parse_marker(s.as_bytes(), &names);
        assert_eq!(p("[moat: 5 bytes of console output dropped]"), Some(vec![]));
        assert_eq!(
            p("[moat: 5 bytes of console output dropped; continued in c.2]"),
            Some(vec![1])
        );
        assert_eq!(
            p("[moat: 0 bytes of console output dropped; continued in c.2 then c.1]"),
            Some(vec![1, 0])
        );
        for bad in [
            "[moat: 0 bytes of console output dropped; continued in c.1 then c.1]",
            "[moat: 0 bytes of console output dropped; continued in c.3]",
            "[moat: x bytes of console output dropped]",
            "[moat:  bytes of console output dropped]",
            "[moat: 5 bytes of console output dropped",
            "moat: 5 bytes of console output dropped]",
            "",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(last_line(b"a\nb\n", false), Some(&b"b"[..]));
        assert_eq!(
            last_line(b"b\n", false),
            None,
            "may have started before the window"
        );
        assert_eq!(last_line(b"b\n", true), Some(&b"b"[..]));
        assert_eq!(last_line(b"a\nb", true), None);
    }

    #[test]
    fn console_log_that_is_not_a_regular_file_is_written_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("console");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("reader");
        let mut log = CappedLog::create(&fifo, CapConfig::split(10)).expect("create");
        log.write_all(b"more than ten bytes\n").expect("write");
        log.flush().expect("flush");
        let mut got = vec![0u8; 100];
        let n = reader.read(&mut got).expect("read");
        assert_eq!(&got[..n], b"more than ten bytes\n");
        assert!(!dir.path().join("console.1").exists(), "no segments");
        assert!(read_tail(&fifo, 10).is_err(), "refused, not blocking");

        let mut null =
            CappedLog::create(Path::new("/dev/null"), CapConfig::split(10)).expect("null");
        null.write_all(&[0u8; 1 << 16]).expect("write");
        assert_eq!(null.dropped(), 0);
    }

    #[test]
    fn console_log_bad_paths_are_errors() {
        assert!(CappedLog::create(Path::new("/"), SMALL).is_err());
        assert!(CappedLog::create(Path::new("/nonexistent/dir/console.log"), SMALL).is_err());
        assert!(read_tail(Path::new("/"), 10).is_err());
    }

    #[test]
    fn caps_split_covers_the_total() {
        assert_eq!(
            CapConfig::split(3),
            CapConfig {
                head_bytes: 1,
                tail_bytes: 2
            }
        );
        let d = CapConfig::default();
        assert_eq!(d.head_bytes + d.tail_bytes, DEFAULT_MAX_BYTES);
        let max = CapConfig::split(u64::MAX);
        assert_eq!(max.head_bytes.checked_add(max.tail_bytes), Some(u64::MAX));
    }
}
