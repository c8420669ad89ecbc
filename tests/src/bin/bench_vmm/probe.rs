//! What bench-vmm watches: a VMM's serial console through a FIFO (the instant its first byte
//! arrives, and the text), and a process's memory from /proc.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

/// The read end of a FIFO a VMM writes its serial console to. Opened before the VMM starts
/// (non-blocking, so opening does not wait for a writer, and the writer's open does not
/// block either), then polled: the first byte is timed when poll(2) wakes for it, not by
/// a sleep loop's granularity.
pub struct Console {
    file: File,
    /// What arrived so far.
    pub text: String,
    /// When the first byte arrived.
    pub first: Option<Instant>,
    /// The writer closed its end (the VMM exited or closed the console).
    pub closed: bool,
}

impl Console {
    /// Creates the FIFO at `path` and opens its read end.
    pub fn create(path: &Path) -> Result<Self, String> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: mkfifo reads the NUL-terminated path and creates a file; no memory is kept.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(format!(
                "mkfifo {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(Self {
            file,
            text: String::new(),
            first: None,
            closed: false,
        })
    }

    /// Waits until `deadline` for output; reads what is there. Returns whether anything was
    /// read. Before any writer has opened the FIFO, poll(2) just waits (Linux reports a
    /// hang-up only once a writer has come and gone).
    pub fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for an fd we own, for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        let woke = Instant::now();
        if r <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        let mut got = false;
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => {
                    if self.first.is_none() {
                        self.first = Some(woke);
                    }
                    got = true;
                    self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        got
    }

    /// Reads until `done` holds, the writer closes, `alive` says the writer's process is
    /// gone, or `deadline`; returns whether `done` held. Polls in slices of 20 ms so a VMM
    /// that died without writing is noticed; data wakes the poll at once.
    pub fn wait(
        &mut self,
        done: impl Fn(&Console) -> bool,
        deadline: Instant,
        mut alive: impl FnMut() -> bool,
    ) -> bool {
        while !done(self) {
            if self.closed || Instant::now() >= deadline {
                return false;
            }
            if !alive() {
                // Whatever it wrote before exiting is still in the pipe.
                self.pump(Instant::now());
                return done(self);
            }
            let slice = Instant::now() + std::time::Duration::from_millis(20);
            self.pump(slice.min(deadline));
        }
        true
    }

    /// Reads until the text holds `needle` (see `wait`).
    pub fn wait_for(
        &mut self,
        needle: &str,
        deadline: Instant,
        alive: impl FnMut() -> bool,
    ) -> bool {
        self.wait(|c| c.text.contains(needle), deadline, alive)
    }
}

/// A process's resident memory, KiB, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rss {
    /// VmRSS: all of it.
    pub total: u64,
    /// RssAnon: private anonymous pages (heap, stacks; guest RAM of an anonymous mapping).
    pub anon: u64,
    /// RssFile: file pages (the binary, its libraries), page cache shared with others.
    pub file: u64,
    /// RssShmem: shared memory (guest RAM on a memfd).
    pub shmem: u64,
}

impl Rss {
    /// Reads `pid`'s figures; `None` once it is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> u64 {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        Some(Self {
            total: kib("VmRSS:"),
            anon: kib("RssAnon:"),
            file: kib("RssFile:"),
            shmem: kib("RssShmem:"),
        })
    }
}

/// The resident KiB of `pid`'s mappings exactly `size_mib` long: its guest RAM, for a VMM
/// that maps the guest's memory as one region (Moat's VMM under 3 GiB, QEMU's memfd).
pub fn mapping_rss_kib(pid: u32, size_mib: u64) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let want = size_mib * 1024;
    let mut total = 0;
    let mut size = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Size:") => size = words.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") if size == want => {
                total += words
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    total
}

/// The median of `v` (sorts it); 0 when empty.
pub fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
