//! Kicking a vCPU out of KVM_RUN: set `kvm_run.immediate_exit` (so a KVM_RUN about to start
//! returns at once) and send the vCPU thread a real-time signal (so one in progress returns
//! EINTR). Either way the thread gets back to its checkpoint without a lost wake-up.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, Once, PoisonError};

use kvm_ioctls::VcpuFd;

/// The signal used for kicks: the first real-time signal.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing: the signal's only job is to interrupt KVM_RUN.
}

/// Installs the (empty) kick signal handler, once per process.
pub fn install_kick_handler() -> Result<(), std::io::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

struct Target {
    /// `kvm_run.immediate_exit` of the vCPU, as an address.
    immediate_exit: usize,
    thread: libc::pthread_t,
}

/// A handle other threads kick one vCPU with. Armed by the vCPU thread while it runs.
#[derive(Default)]
pub struct VcpuKick {
    target: Mutex<Option<Target>>,
}

impl VcpuKick {
    /// An unarmed handle (kicks do nothing until the vCPU thread arms it).
    pub fn new() -> VcpuKick {
        VcpuKick::default()
    }

    fn immediate_exit(addr: usize) -> &'static AtomicU8 {
        // SAFETY: `addr` is the `immediate_exit` byte of a live kvm_run mapping: it is only
        // stored by `arm` and cleared by `disarm` before the vCPU (and its mapping) goes away,
        // and every access happens under the `target` lock. A u8 and an AtomicU8 share size
        // and alignment; all of this process's accesses to the byte go through this atomic.
        unsafe { &*(addr as *const AtomicU8) }
    }

    /// Called on the vCPU thread before its run loop: kicks now reach this thread and `vcpu`.
    pub fn arm(&self, vcpu: &mut VcpuFd) {
        let immediate_exit = &mut vcpu.get_kvm_run().immediate_exit as *mut u8 as usize;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = Some(Target {
            immediate_exit,
            thread,
        });
    }

    /// Called on the vCPU thread after its run loop, before the vCPU is dropped.
    pub fn disarm(&self) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Called on the vCPU thread after KVM_RUN returned because of a kick.
    pub fn clear(&self) {
        if let Some(t) = &*self.target.lock().unwrap_or_else(PoisonError::into_inner) {
            Self::immediate_exit(t.immediate_exit).store(0, Ordering::SeqCst);
        }
    }

    /// Makes the vCPU leave KVM_RUN (or not enter it) soon.
    pub fn kick(&self) {
        if let Some(t) = &*self.target.lock().unwrap_or_else(PoisonError::into_inner) {
            Self::immediate_exit(t.immediate_exit).store(1, Ordering::SeqCst);
            // SAFETY: the thread is alive: it disarms (under this lock) before it ends.
            let rc = unsafe { libc::pthread_kill(t.thread, kick_signal()) };
            if rc != 0 {
                tracing::warn!(errno = rc, "kicking a vCPU thread");
            }
        }
    }
}
