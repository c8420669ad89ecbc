//! VMM and backend processes: started in their own session so they outlive a moatd
//! restart, found again by pid, signalled, and waited on through a pidfd (which works for
//! processes moatd did not start itself).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// A process that belongs to one sandbox.
#[derive(Debug)]
pub struct VmProcess {
    pid: i32,
    pidfd: OwnedFd,
}

/// Makes `fd` descriptor `target` in the child `cmd` starts (inheritable there), whatever
/// its number here.
pub fn pass_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The niceness of every process moatd starts for a VM.
pub const VM_NICE: i32 = 10;
/// VM_NICE as /proc/<pid>/autogroup takes it (written in the child between fork and exec,
/// where formatting would allocate).
const VM_NICE_TEXT: &[u8] = b"10";

impl VmProcess {
    /// Spawns `cmd` in a new session with stdin closed and stdout/stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: setsid, open, write and close are async-signal-safe; the path and value
        // are static, and no memory of the parent is touched.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // moatd runs with a low OOM score (its unit keeps the runtime alive under
                // memory pressure, as containerd's does); a pod's VM is the workload and
                // must not inherit that protection. Raising the score needs no privilege.
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
                // Below moatd's CPU priority: VMs that boot or spin (every vCPU under TCG)
                // must not starve the daemon that answers kubelet. Pods among themselves
                // are equal; a niceness of VM_NICE gives moatd ~9x a VM's weight when both
                // want the CPU, and the VMs everything moatd does not use.
                libc::setpriority(libc::PRIO_PROCESS, 0, VM_NICE);
                // setsid put this process in a scheduler autogroup of its own (where
                // kernel.sched_autogroup_enabled is 1 and moatd runs in the root cgroup,
                // as outside systemd), and autogroups share the CPU equally whatever the
                // niceness inside them: twenty booting VMs took 20/21 of the CPU and
                // moatd's answers slowed to ~40 ms. The group gets VM_NICE too.
                let fd = libc::open(
                    c"/proc/self/autogroup".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    let _ = libc::write(fd, VM_NICE_TEXT.as_ptr().cast(), VM_NICE_TEXT.len());
                    libc::close(fd);
                }
                Ok(())
            });
        }
        // With a pre_exec hook std forks and waits for the child's exec: off the async
        // workers, so a burst of pod starts does not stall every other call.
        let child = crate::sync::off_the_workers(|| cmd.spawn())?;
        let pid = child.id() as i32;
        // The child is reaped by a thread so it never lingers as a zombie; the pidfd is what
        // callers wait on. (std's Child would reap on wait; we do it in the background.)
        let proc = Self::adopt(pid)?;
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(proc)
    }

    /// Takes hold of an existing process by pid (after a moatd restart).
    pub fn adopt(pid: i32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly opened descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { pid, pidfd })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal; a process already gone is fine.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal on our own pidfd; null siginfo means "as kill(2)".
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<()>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether the process has exited.
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & libc::POLLIN != 0
    }

    /// Waits until the process exits or `timeout` passes; true if it exited.
    pub async fn wait_timeout(&self, timeout: Duration) -> bool {
        let Ok(owned) = self.pidfd.try_clone() else {
            return self.exited();
        };
        // SAFETY: the AsyncFd owns `owned`, a duplicate of our pidfd, so the descriptor stays
        // open for as long as it is registered and is closed only when the AsyncFd drops.
        let registered =
            unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) };
        let Ok(fd) = registered else {
            return self.exited();
        };
        matches!(
            tokio::time::timeout(timeout, fd.readable()).await,
            Ok(Ok(_))
        )
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the end.
    pub async fn terminate(&self, grace: Duration) -> std::io::Result<()> {
        if self.exited() {
            return Ok(());
        }
        self.signal(libc::SIGTERM)?;
        if !self.wait_timeout(grace).await {
            self.signal(libc::SIGKILL)?;
            self.wait_timeout(Duration::from_secs(10)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_vm_process_does_not_inherit_moatds_oom_protection() {
        let own = "/proc/self/oom_score_adj";
        if std::fs::write(own, "-7").is_err() {
            println!(
                "SKIPPED a_vm_process_does_not_inherit_moatds_oom_protection: lowering the OOM score needs root"
            );
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("log");
        let mut c = Command::new("cat");
        c.arg(own);
        let p = VmProcess::spawn(c, &log);
        let _ = std::fs::write(own, "0");
        let p = p.expect("spawn");
        assert!(p.wait_timeout(Duration::from_secs(10)).await, "cat exits");
        assert_eq!(std::fs::read_to_string(&log).expect("log").trim(), "0");
    }

    #[tokio::test]
    async fn spawned_processes_can_be_waited_on_and_killed() {
        let d = tempfile::tempdir().expect("tmp");
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; exec sleep 30"]);
        let p = VmProcess::spawn(c, &d.path().join("log")).expect("spawn");
        assert!(!p.exited());
        assert!(!p.wait_timeout(Duration::from_millis(50)).await);
        // Its own session.
        // SAFETY: getsid on a pid.
        let sid = unsafe { libc::getsid(p.pid()) };
        assert_eq!(sid, p.pid());
        p.terminate(Duration::from_secs(5))
            .await
            .expect("terminate");
        assert!(p.exited());
        // Signalling a process that is gone is fine.
        p.signal(libc::SIGTERM).expect("gone is fine");
        let log = std::fs::read_to_string(d.path().join("log")).expect("log");
        assert!(log.contains("started"));
    }

    #[tokio::test]
    async fn a_vm_process_runs_below_moatd_also_across_autogroups() {
        assert_eq!(VM_NICE.to_string().as_bytes(), VM_NICE_TEXT);
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("log");
        let mut c = Command::new("sh");
        // Its niceness (field 19 of stat) and its autogroup's ("/autogroup-N nice 10").
        c.args([
            "-c",
            "cut -d' ' -f19 /proc/self/stat; cat /proc/self/autogroup 2>/dev/null || echo none",
        ]);
        let p = VmProcess::spawn(c, &log).expect("spawn");
        assert!(p.wait_timeout(Duration::from_secs(10)).await, "sh exits");
        let out = std::fs::read_to_string(&log).expect("log");
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("10"), "{out}");
        match lines.next() {
            Some("none") => println!(
                "SKIPPED a_vm_process_runs_below_moatd_also_across_autogroups: (in part) this kernel has no scheduler autogroups"
            ),
            Some(g) => assert!(g.ends_with(" nice 10"), "autogroup: {g}"),
            None => panic!("no autogroup line: {out}"),
        }
    }

    #[tokio::test]
    async fn adopt_finds_a_process_by_pid() {
        let d = tempfile::tempdir().expect("tmp");
        let mut c = Command::new("sleep");
        c.arg("30");
        let p = VmProcess::spawn(c, &d.path().join("log")).expect("spawn");
        let q = VmProcess::adopt(p.pid()).expect("adopt");
        q.signal(libc::SIGKILL).expect("kill");
        assert!(q.wait_timeout(Duration::from_secs(5)).await);
        assert!(VmProcess::adopt(999_999_999).is_err());
    }
}
