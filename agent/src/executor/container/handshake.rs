//! The handshake between the parent and the forked child over two pipes: `sync` (parent to
//! child: `G` once it is in its cgroup, `S` to start) and `report` (child to parent: `R`
//! when set up, `P` and a pid, `E` and a `Failure` when a step failed). The parent's side
//! reads and writes through `File`s; the child's makes raw calls only.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};

use nix::errno::Errno;

use super::super::error::{Error, Result};
use super::super::failure::Failure;

/// What the child reported.
pub(super) enum Report {
    Ready,
    Failed(Failure),
    /// The pid of the container's init, forked into its PID namespace.
    Pid(i32),
    Eof,
}

/// Reads what the child reported.
pub(super) fn read_report(fd: &OwnedFd) -> Result<Report> {
    let mut f = File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
    let mut tag = [0u8; 1];
    loop {
        match f.read(&mut tag) {
            Ok(0) => return Ok(Report::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read the child's report", e)),
        }
    }
    match tag[0] {
        b'R' => Ok(Report::Ready),
        b'P' => {
            let mut pid = [0u8; 4];
            f.read_exact(&mut pid)
                .map_err(|e| Error::io("read the child's report", e))?;
            Ok(Report::Pid(i32::from_ne_bytes(pid)))
        }
        b'E' => {
            let mut rec = [0u8; 12];
            f.read_exact(&mut rec)
                .map_err(|e| Error::io("read the child's report", e))?;
            Failure::decode(&rec).map(Report::Failed).ok_or_else(|| {
                Error::io(
                    "read the child's report",
                    std::io::Error::other("bad record"),
                )
            })
        }
        _ => Err(Error::io(
            "read the child's report",
            std::io::Error::other("bad tag"),
        )),
    }
}

/// Sends the child `byte`.
pub(super) fn send(fd: &OwnedFd, byte: u8) -> std::io::Result<()> {
    File::from(fd.try_clone()?).write_all(&[byte])
}

// --- the child's side (after fork, before execve: raw calls only) ---------------------

/// Writes `buf` to `fd`: one write(2), its result ignored.
pub(super) fn child_write(fd: RawFd, buf: &[u8]) {
    // SAFETY: buf is valid for buf.len() bytes.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Reports `f` (`E` and its 12 bytes) and exits with `code`.
pub(super) fn child_fail(report: RawFd, f: Failure, code: i32) -> ! {
    let mut buf = [0u8; 13];
    buf[0] = b'E';
    buf[1..].copy_from_slice(&f.encode());
    child_write(report, &buf);
    // SAFETY: _exit ends the process without running the agent's atexit handlers.
    unsafe { libc::_exit(code) }
}

/// Exits with `code`.
pub(super) fn child_exit(code: i32) -> ! {
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Reports the pid of the container's init, forked into its PID namespace.
pub(super) fn child_send_pid(report: RawFd, pid: i32) {
    let mut buf = [0u8; 5];
    buf[0] = b'P';
    buf[1..].copy_from_slice(&pid.to_ne_bytes());
    child_write(report, &buf);
}

/// Reads one byte from the parent; None on EOF or error.
pub(super) fn child_read(fd: RawFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: b is a valid 1-byte buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return Some(b[0]);
        }
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None;
    }
}
