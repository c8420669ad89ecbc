//! The pod's shared PID namespace and its init, the part containerd's pause container
//! plays: containers whose CRI pid mode is POD join this namespace, so none of them is its
//! PID 1 (a PID 1 only gets the signals it handles, so a `top` stopped with SIGTERM would
//! ignore it), and orphans of any of them are reaped here.
//!
//! The init is the agent's own binary re-executed as `pause` (see `pause_main`), forked on
//! a thread that first unshared the PID namespace, like a container's init.
//!
//! A pod with a user namespace (CRI NamespaceMode POD for users) has its init cloned into a
//! new user namespace and a new PID namespace together, so the user namespace owns the PID
//! namespace (containers in it may then mount /proc for it). The init waits on a pipe until
//! the agent has written the namespace's uid_map and gid_map, becomes its root and execs;
//! the containers of the pod join both namespaces (`userns`).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::container::{child_close_fds, child_reset_signals, fork_on_thread};
use super::error::{Error, Result};
use super::plan::PidNs;
use super::process::Proc;
use super::sys::{CVec, Linux, Syscall};
use super::userns::IdMappings;

/// The argv[0] the agent's binary is re-executed with to become a pod init.
pub const PAUSE_ARG0: &str = "pause";

/// A running pod init: PID 1 of the pod's PID namespace. Dropping it kills it, and with it
/// every process left in its namespace.
#[derive(Debug)]
pub struct PodInit {
    proc: Proc,
}

impl PodInit {
    /// Starts `exe` with `argv` as PID 1 of a new PID namespace; with `userns`, of a new
    /// PID namespace owned by a new user namespace with these mappings (checked by
    /// `IdMappings::validate`), in which it runs as root.
    pub fn spawn(exe: &Path, argv: &[&str], userns: Option<&IdMappings>) -> Result<PodInit> {
        let cstr = |s: &[u8]| {
            CString::new(s).map_err(|_| Error::Spec("pod init argument has a NUL byte".into()))
        };
        let path = cstr(exe.as_os_str().as_bytes())?;
        let args = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let Some(maps) = userns else {
            let pid = fork_on_thread(&PidNs::New, None, 0, (&args, &[]), &|argv, envp| {
                child(&path, argv, envp)
            })?;
            let proc = Proc::new(pid).inspect_err(|_| {
                // SAFETY: plain kill of the child just forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            })?;
            return Ok(PodInit { proc });
        };
        maps.validate()
            .map_err(|e| Error::Spec(format!("user namespace: {e}")))?;
        let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::errno("pipe", e))?;
        let sync = sync_r.as_raw_fd();
        let pid = fork_on_thread(
            &PidNs::Host,
            None,
            libc::CLONE_NEWUSER | libc::CLONE_NEWPID,
            (&args, &[]),
            &|argv, envp| child_in_userns(&path, argv, envp, sync),
        )?;
        drop(sync_r);
        let proc = Proc::new(pid).inspect_err(|_| {
            // SAFETY: plain kill of the child just cloned.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })?;
        // The maps first: until then the child is nobody in its namespace.
        let released = maps
            .write(pid)
            .map_err(|e| Error::io(format!("write the id maps of the pod init {pid}"), e))
            .and_then(|()| {
                std::fs::File::from(sync_w)
                    .write_all(b"M")
                    .map_err(|e| Error::io("release the pod init", e))
            });
        if let Err(e) = released {
            proc.kill_and_reap();
            return Err(e);
        }
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

    /// Its user namespace (the VM's when it was started without mappings).
    pub fn user_namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.proc.pid()))
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

/// The child cloned into new user and PID namespaces: it must make raw calls only (see
/// `fork_on_thread`). It waits for the agent to write its maps (`M`), becomes root of the
/// namespace (no supplementary groups, gid and uid 0 inside) and execs.
fn child_in_userns(path: &CString, argv: &CVec<'_>, envp: &CVec<'_>, sync: RawFd) -> ! {
    child_reset_signals();
    child_close_fds(&[sync]);
    let mut b = [0u8; 1];
    let got = loop {
        // SAFETY: b is a valid 1-byte buffer.
        let n = unsafe { libc::read(sync, b.as_mut_ptr().cast(), 1) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        break n == 1 && b[0] == b'M';
    };
    let sys = Linux;
    if !got || sys.setgroups(&[]).is_err() || sys.setresgid(0).is_err() || sys.setresuid(0).is_err()
    {
        // SAFETY: _exit is async-signal-safe; the cloned child ends here.
        unsafe { libc::_exit(125) }
    }
    let e: Errno = sys.execve(path, argv, envp);
    // SAFETY: as above.
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
        let init =
            PodInit::spawn(Path::new("/bin/sleep"), &[PAUSE_ARG0, "1000"], None).expect("spawn");
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
    fn a_pod_init_with_mappings_is_root_of_a_user_namespace_that_owns_its_pid_namespace() {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a new user namespace with these mappings needs root");
            return;
        }
        let maps = crate::executor::userns::tests::pod(100_000);
        let init = PodInit::spawn(Path::new("/bin/sleep"), &[PAUSE_ARG0, "1000"], Some(&maps))
            .expect("spawn");
        let pid = init.pid();
        assert_eq!(nspid(pid), vec![pid, 1], "PID 1 of its own namespace");
        assert_eq!(IdMappings::read(pid).expect("maps"), maps);
        // Root of its namespace: the mapped ids in the VM, no supplementary groups.
        let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |st: &str, key: &str| -> Vec<String> {
            st.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        let mut st = status();
        for _ in 0..200 {
            if field(&st, "Uid:") == ["100000"; 4] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            st = status();
        }
        assert_eq!(field(&st, "Uid:"), ["100000"; 4], "{st}");
        assert_eq!(field(&st, "Gid:"), ["100000"; 4], "{st}");
        assert!(field(&st, "Groups:").is_empty(), "{st}");
        // Its user namespace owns its PID namespace.
        let user = std::fs::metadata(init.user_namespace())
            .expect("userns")
            .ino();
        assert_ne!(
            user,
            std::fs::metadata("/proc/self/ns/user").expect("own").ino()
        );
        let pidns = std::fs::File::open(init.namespace()).expect("pidns");
        // SAFETY: NS_GET_USERNS (_IO(0xb7, 1)) takes no argument and returns a new fd.
        let fd = unsafe { libc::ioctl(pidns.as_raw_fd(), 0xb701 as _) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: the kernel just gave us this fd.
        let owner = unsafe { std::fs::File::from_raw_fd(fd) };
        assert_eq!(owner.metadata().expect("fstat").ino(), user);
        // Mappings the kernel would refuse are refused before.
        let mut bad = maps.clone();
        bad.uids[0].length = 0;
        assert!(matches!(
            PodInit::spawn(Path::new("/bin/sleep"), &[PAUSE_ARG0], Some(&bad)),
            Err(Error::Spec(_))
        ));
        drop(init);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_missing_binary_ends_the_init_at_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a new PID namespace needs root");
            return;
        }
        let init =
            PodInit::spawn(Path::new("/nonexistent/pause"), &[PAUSE_ARG0], None).expect("fork");
        for _ in 0..100 {
            if !init.alive() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the init should have ended");
    }
}
