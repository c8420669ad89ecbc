//! The guest console of a VM whose VMM writes it to a pipe (QEMU): a thread reads the pipe
//! to its end and writes into a capped log (`moat_devices::console_log`: the first bytes,
//! then a rotating tail of the newest), so a guest writing to its console forever costs
//! the host a bounded amount of disk and a fixed buffer of memory.
//!
//! moatd makes the pipe (`console_pipe`), starts the pump on the read end, gives the write
//! end to the VMM and closes its own copy once the VMM has it: the pump ends when the VMM's
//! copy closes too (the VMM exited).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::thread::JoinHandle;

use moat_devices::console_log::{CapConfig, CappedLog};
use tracing::warn;

/// What the pump reads at a time.
const READ_BUF: usize = 16 << 10;

/// A pipe for a guest console: (read end, write end), both close-on-exec (the write end
/// must be handed to the VMM explicitly).
pub fn console_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = io::pipe()?;
    Ok((read.into(), write.into()))
}

/// Creates (or empties) the capped log at `path` (and its tail segments) and starts a
/// thread that copies `read_end` into it until end of file. Errors are the log's creation
/// and the thread's start; once running, a failing write is logged (once) and the output
/// still drained, so the VMM never blocks on a full pipe.
pub fn spawn_console_pump(
    read_end: OwnedFd,
    path: &Path,
    caps: CapConfig,
) -> io::Result<JoinHandle<()>> {
    let log = CappedLog::create(path, caps)?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("console-pump".into())
        .spawn(move || pump(File::from(read_end), log, &shown))
}

/// Copies `input` into `log` until end of file or a read error.
fn pump(mut input: impl Read, mut log: impl Write, shown: &str) {
    let mut buf = vec![0u8; READ_BUF];
    let mut failed = false;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(log = shown, error = %e, "reading the guest console; it is no longer logged");
                break;
            }
        };
        if let Err(e) = log.write_all(&buf[..n])
            && !failed
        {
            failed = true;
            warn!(log = shown, error = %e, "writing the guest console log; output is dropped");
        }
    }
    if let Err(e) = log.flush() {
        warn!(log = shown, error = %e, "finishing the guest console log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_devices::console_log::{MARKER_MAX, read_tail, segment_paths};

    #[test]
    fn console_pump_copies_a_pipe_into_a_capped_log_until_eof() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let caps = CapConfig {
            head_bytes: 1000,
            tail_bytes: 4000,
        };
        let (read, write) = console_pipe().expect("pipe");
        let pump = spawn_console_pump(read, &path, caps).expect("spawn");
        let mut writer = io::BufWriter::with_capacity(64 << 10, File::from(write));
        // 8 MiB of numbered lines, far more than the pipe holds: the pump must keep up.
        let mut written = Vec::new();
        let mut total = 0usize;
        let mut i = 0u64;
        while total < 8 << 20 {
            let line = format!("line {i}\n");
            writer.write_all(line.as_bytes()).expect("write");
            total += line.len();
            if written.len() < 1000 {
                written.extend_from_slice(line.as_bytes());
            }
            i += 1;
        }
        let last = format!("line {}\n", i - 1);
        drop(writer);
        pump.join().expect("the pump ends at end of file");

        let [a, b] = segment_paths(&path).expect("segments");
        let disk: u64 = [&path, &a, &b]
            .iter()
            .map(|p| std::fs::metadata(p).expect("file").len())
            .sum();
        assert!(disk <= 1000 + 4000 + MARKER_MAX, "{disk} bytes on disk");
        let all = read_tail(&path, u64::MAX).expect("read");
        assert_eq!(all[..1000], written[..1000], "the head kept");
        let text = String::from_utf8_lossy(&all[1000..]);
        assert!(text.contains("bytes of console output dropped"), "{text:?}");
        assert!(text.ends_with(&last), "the newest line kept: {text:?}");
    }

    #[test]
    fn console_pump_reports_a_log_it_cannot_create() {
        let (read, _write) = console_pipe().expect("pipe");
        let caps = CapConfig::default();
        assert!(spawn_console_pump(read, Path::new("/nonexistent/dir/console.log"), caps).is_err());
    }

    #[test]
    fn console_pump_drains_what_it_cannot_write() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut input = io::repeat(b'x').take(1 << 20);
        pump(&mut input, Full, "test");
        assert_eq!(input.limit(), 0, "read to the end");
    }
}
