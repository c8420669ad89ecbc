//! The pod's shared PID namespace and its init, the part containerd's pause container
//! plays: containers whose CRI pid mode is POD join this namespace, so none of them is its
//! PID 1 (a PID 1 only gets the signals it handles, so a `top` stopped with SIGTERM would
//! ignore it), and orphans of any of them are reaped here.
//!
//! The init is the agent's own binary re-executed as `pause` (see `pause_main`), forked on
//! a thread that first unshared the PID namespace, like a container's init.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::container::{child_close_fds, child_reset_signals, fork_on_thread};
use super::error::{Error, Result};
use super::plan::PidNs;
use super::process::Proc;
use super::sys::{CVec, Linux, Syscall};

/// The argv[0] the agent's binary is re-executed with to become a pod init.
pub const PAUSE_ARG0: &str = "pause";

/// A running pod init: PID 1 of the pod's PID namespace. Dropping it kills it, and with it
/// every process left in its namespace.
#[derive(Debug)]
pub struct PodInit {
    proc: Proc,
}

impl PodInit {
    /// Starts `exe` with `argv` as PID 1 of a new PID namespace.
    pub fn spawn(exe: &Path, argv: &[&str]) -> Result<PodInit> {
        let cstr = |s: &[u8]| {
            CString::new(s).map_err(|_| Error::Spec("pod init argument has a NUL byte".into()))
        };
        let path = cstr(exe.as_os_str().as_bytes())?;
        let args = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let pid = fork_on_thread(&PidNs::New, None, (&args, &[]), &|argv, envp| {
            child(&path, argv, envp)
        })?;
        let proc = Proc::new(pid).inspect_err(|_| {
            // SAFETY: plain kill of the child just forked.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })?;
        Ok(PodInit { proc })
    }

    /// Its pid in the agent's namespace.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Its PID namespace, for containers to join.
    pub fn namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.proc.pid()))
    }

    /// Whether it still runs (a dead init leaves a namespace nothing can enter).
    pub fn alive(&self) -> bool {
        matches!(self.proc.try_wait(), Ok(None))
    }
}

impl Drop for PodInit {
    fn drop(&mut self) {
        self.proc.kill_and_reap();
    }
}

fn child(path: &CString, argv: &CVec<'_>, envp: &CVec<'_>) -> ! {
    child_reset_signals();
    child_close_fds(&[]);
    let e: Errno = Linux.execve(path, argv, envp);
    // SAFETY: _exit is async-signal-safe; the forked child ends here.
    unsafe { libc::_exit(126 + i32::from(e == Errno::ENOENT)) }
}

/// The pod init's whole life: reap every child, forever. SIGCHLD is blocked and waited for,
/// so no exit is missed between two reaps; other signals have no handler, so (as PID 1 of
/// its namespace) only SIGKILL from the agent ends it.
pub fn pause_main() -> ! {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_block();
    loop {
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let _ = set.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nspid(pid: i32) -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .expect("NSpid")
            .split_whitespace()
            .map(|p| p.parse().expect("pid"))
            .collect()
    }

    #[test]
    fn the_pod_init_is_pid_1_of_a_namespace_of_its_own_and_dies_with_its_handle() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a new PID namespace needs root");
            return;
        }
        let init = PodInit::spawn(Path::new("/bin/sleep"), &[PAUSE_ARG0, "1000"]).expect("spawn");
        let pid = init.pid();
        assert_eq!(nspid(pid), vec![pid, 1], "in its own namespace, as PID 1");
        let mine = std::fs::read_link("/proc/self/ns/pid").expect("own ns");
        let its = std::fs::read_link(init.namespace()).expect("its ns");
        assert_ne!(mine, its);
        // The exec may still be on its way.
        let mut cmdline = Vec::new();
        for _ in 0..200 {
            cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
            if cmdline.starts_with(b"pause\0") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(cmdline.starts_with(b"pause\0"), "{cmdline:?}");
        assert!(init.alive());
        drop(init);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_missing_binary_ends_the_init_at_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a new PID namespace needs root");
            return;
        }
        let init = PodInit::spawn(Path::new("/nonexistent/pause"), &[PAUSE_ARG0]).expect("fork");
        for _ in 0..100 {
            if !init.alive() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the init should have ended");
    }
}
