//! The container's stdio: three pipes (stdin optional, else /dev/null), or a pseudo-terminal
//! whose master the child sends back over a socket (`recv_master`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::super::error::{Error, Result};

/// The process's stdio, for the caller to read and write.
#[derive(Debug)]
pub enum Stdio {
    /// Three pipes.
    Pipes {
        /// The write end of its stdin, if asked for.
        stdin: Option<OwnedFd>,
        /// The read end of its stdout.
        stdout: OwnedFd,
        /// The read end of its stderr.
        stderr: OwnedFd,
    },
    /// A pseudo-terminal (process.terminal): the master side.
    Pty {
        /// The pty master: read the output, write the input.
        master: OwnedFd,
    },
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::errno("pipe", e))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    Ok(f.into())
}

/// The stdio fds for the child and what the parent keeps.
pub(super) struct StdioSetup {
    pub(super) child: [OwnedFd; 3],
    pub(super) parent: Option<Stdio>,
    /// (parent end, child end) of the socket the pty master comes back over.
    pub(super) console: Option<(OwnedFd, OwnedFd)>,
}

/// The stdio of a process with a terminal or not, and a stdin pipe or not.
pub(super) fn stdio_setup(terminal: bool, stdin: bool) -> Result<StdioSetup> {
    if terminal {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::errno("socketpair", e))?;
        return Ok(StdioSetup {
            child: [dev_null(false)?, dev_null(true)?, dev_null(true)?],
            parent: None,
            console: Some((a, b)),
        });
    }
    let (in_child, in_parent) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null(false)?, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(StdioSetup {
        child: [in_child, out_w, err_w],
        parent: Some(Stdio::Pipes {
            stdin: in_parent,
            stdout: out_r,
            stderr: err_r,
        }),
        console: None,
    })
}

/// Receives the pty master the child sends; None if it closed the socket first.
pub(super) fn recv_master(sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::errno("receive the pty master", e))?;
    for c in msg
        .cmsgs()
        .map_err(|e| Error::errno("receive the pty master", e))?
    {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: SCM_RIGHTS just installed this fd in our table; we own it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(None)
}
