//! SIGTERM and SIGINT end the VM cleanly (`Exit::Signalled`): moatd stops a VMM that did not
//! end on its own with SIGTERM before SIGKILL, and a clean end drops the devices, which
//! removes the hybrid-vsock socket and the control socket.
//!
//! The two signals are blocked in the calling thread before any other thread starts (threads
//! inherit the mask), and one thread waits for them with sigwait.

use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::control::VmControl;
use crate::vmm::Exit;

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT in this thread and the threads it starts from now on.
pub fn block_termination() -> std::io::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&termination_signals()), None)
        .map_err(std::io::Error::from)
}

/// Starts the thread that turns SIGTERM or SIGINT into the end of the VM.
pub fn watch_termination(control: Arc<VmControl>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vmm-signals".into())
        .spawn(move || {
            let set = termination_signals();
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = %sig, "VMM: ending the VM on a termination signal");
                control.request_exit(Exit::Signalled);
            }
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::thread::JoinHandleExt;

    use super::*;

    #[test]
    fn sigterm_to_the_watcher_ends_the_vm_as_signalled() {
        let control = VmControl::new();
        let c = control.clone();
        // Block in a thread of our own (the mask is per thread), so the test harness's
        // threads keep theirs; the signal is sent to the watcher thread alone.
        let watcher = std::thread::spawn(move || {
            block_termination().expect("block");
            watch_termination(c).expect("watch")
        })
        .join()
        .expect("spawner");
        // SAFETY: pthread_kill on a thread that is alive (it waits in sigwait until it gets
        // the signal), with a valid signal number.
        let rc = unsafe { libc::pthread_kill(watcher.as_pthread_t(), libc::SIGTERM) };
        assert_eq!(rc, 0);
        assert_eq!(control.wait_for_exit(), Exit::Signalled);
        watcher.join().expect("watcher ends after the signal");
    }
}
