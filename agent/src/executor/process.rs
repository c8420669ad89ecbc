//! Processes the agent forked: waiting on them (by pidfd, without stealing other children
//! from whoever waits on them), signalling them, and the registry that lets PID 1's reaper
//! hand their exit statuses over instead of dropping them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;

use super::error::{Error, Result};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal that killed it (137 for SIGKILL), as a shell
    /// reports it.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The OOM killer killed something in the container's cgroup while it ran.
    pub oom_killed: bool,
}

impl ExitStatus {
    /// Decodes a wait(2) status.
    pub(crate) fn from_raw(status: i32, oom_killed: bool) -> Self {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            ExitStatus {
                code: 128 + sig,
                signal: Some(sig),
                oom_killed,
            }
        } else {
            ExitStatus {
                code: libc::WEXITSTATUS(status),
                signal: None,
                oom_killed,
            }
        }
    }
}

/// Children of the executor, by pid: `None` while running, the wait status once a reaper
/// other than the executor collected it.
static REGISTRY: Mutex<Option<HashMap<i32, Option<i32>>>> = Mutex::new(None);

pub(crate) fn registry() -> MutexGuard<'static, Option<HashMap<i32, Option<i32>>>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps every exited child of this process without blocking. The exit statuses of the
/// executor's containers and exec'd processes are kept for their `wait`; the rest
/// (orphans reparented to PID 1) are dropped. PID 1's SIGCHLD handler must call this
/// instead of `waitpid(-1)` itself, or containers' exit statuses are lost.
pub fn reap_children() {
    let mut reg = registry();
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            if pid < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        if let Some(slot) = reg.get_or_insert_with(HashMap::new).get_mut(&pid) {
            *slot = Some(status);
        }
    }
}

/// A forked process: its pid, a pidfd on it, and its wait status once collected.
#[derive(Debug)]
pub(crate) struct Proc {
    pid: i32,
    pidfd: OwnedFd,
    status: Mutex<Option<i32>>,
}

fn pidfd_open(pid: i32) -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: plain syscall; on success the fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Proc {
    /// Wraps a child just forked (and registered).
    pub(crate) fn new(pid: i32) -> Result<Self> {
        // The child cannot have been reaped yet: it is registered, so a reaper keeps it.
        let pidfd = pidfd_open(pid).map_err(|e| Error::errno(format!("pidfd_open {pid}"), e))?;
        Ok(Proc {
            pid,
            pidfd,
            status: Mutex::new(None),
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The wait status if the process has ended (collecting it if need be).
    pub(crate) fn try_wait(&self) -> Result<Option<i32>> {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.is_some() {
            return Ok(*st);
        }
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                *st = Some(status);
                break;
            }
            if r == 0 {
                return Ok(None);
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => {
                    // `reap_children` took it; it records under the registry lock, which
                    // it held across its waitpid, so the status is there now.
                    let reg = registry();
                    match reg
                        .as_ref()
                        .and_then(|m| m.get(&self.pid))
                        .copied()
                        .flatten()
                    {
                        Some(s) => {
                            *st = Some(s);
                            break;
                        }
                        None => {
                            return Err(Error::State {
                                id: self.pid.to_string(),
                                reason: "process reaped by someone else".into(),
                            });
                        }
                    }
                }
                e => return Err(Error::errno(format!("waitpid {}", self.pid), e)),
            }
        }
        if let Some(m) = registry().as_mut() {
            m.remove(&self.pid);
        }
        Ok(*st)
    }

    /// Blocks until the process ends.
    pub(crate) fn wait_blocking(&self) -> Result<i32> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            if r < 0 && Errno::last() != Errno::EINTR {
                return Err(Error::errno("poll pidfd", Errno::last()));
            }
        }
    }

    /// Waits (asynchronously, on the tokio reactor) until the process ends.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
    pub(crate) async fn wait(&self) -> Result<i32> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        // Each waiter registers its own duplicate of the pidfd with the reactor.
        let dup = self
            .pidfd
            .try_clone()
            .map_err(|e| Error::io("dup pidfd", e))?;
        // SAFETY: `dup` is an OwnedFd the AsyncFd owns from here; nothing else closes or
        // replaces it while it is registered.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE)
        }
        .map_err(|e| Error::io("register pidfd", std::io::Error::from(e)))?;
        loop {
            let mut guard = afd
                .readable()
                .await
                .map_err(|e| Error::io("poll pidfd", e))?;
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            guard.clear_ready();
        }
    }

    /// Sends `sig` (through the pidfd: never to a recycled pid).
    pub(crate) fn signal(&self, sig: i32) -> Result<()> {
        // SAFETY: plain syscall on our pidfd, with no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::ESRCH {
                return Err(Error::State {
                    id: self.pid.to_string(),
                    reason: "process has exited".into(),
                });
            }
            return Err(Error::errno(format!("signal {sig} to {}", self.pid), e));
        }
        Ok(())
    }

    /// Kills the process if it still runs and collects it.
    pub(crate) fn kill_and_reap(&self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.wait_blocking();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(m) = registry().as_mut() {
            m.remove(&self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_decode() {
        assert_eq!(
            ExitStatus::from_raw(0, false),
            ExitStatus {
                code: 0,
                signal: None,
                oom_killed: false
            }
        );
        assert_eq!(ExitStatus::from_raw(1 << 8, false).code, 1);
        let killed = ExitStatus::from_raw(libc::SIGKILL, true);
        assert_eq!(
            killed,
            ExitStatus {
                code: 137,
                signal: Some(9),
                oom_killed: true
            }
        );
    }
}
