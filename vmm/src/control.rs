//! The VM's run state shared by the vCPU threads, the devices that end the VM, the control
//! API and the thread waiting for the end: running, paused (every vCPU parked) or stopping
//! (with how it ended). Changing it kicks the vCPUs out of KVM_RUN (see `kick`).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::kick::VcpuKick;
use crate::vmm::Exit;

/// Where the VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The vCPUs run.
    Running,
    /// The vCPUs are parked.
    Paused,
    /// The VM is ending, for this reason.
    Stopping(Exit),
}

/// What a vCPU does after a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Enter the guest again.
    Run,
    /// Leave the run loop.
    Stop,
}

struct State {
    phase: Phase,
    /// vCPUs currently parked (paused or halted).
    parked: usize,
    /// vCPU run loops not yet ended.
    live: usize,
}

/// The shared run state.
pub struct VmControl {
    state: Mutex<State>,
    changed: Condvar,
    kicks: Mutex<Vec<Arc<VcpuKick>>>,
    started: Instant,
}

impl VmControl {
    /// A running VM with no vCPUs yet.
    pub fn new() -> Arc<VmControl> {
        Arc::new(VmControl {
            state: Mutex::new(State {
                phase: Phase::Running,
                parked: 0,
                live: 0,
            }),
            changed: Condvar::new(),
            kicks: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a vCPU's run loop (before its thread starts) and its kick handle.
    pub fn add_vcpu(&self, kick: Arc<VcpuKick>) {
        self.lock().live += 1;
        self.kicks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(kick);
    }

    fn kick_all(&self) {
        for k in self
            .kicks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            k.kick();
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Since when the VM exists.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the VM for `exit` (the first reason given wins) and kicks every vCPU.
    pub fn request_exit(&self, exit: Exit) {
        {
            let mut s = self.lock();
            if matches!(s.phase, Phase::Stopping(_)) {
                return;
            }
            s.phase = Phase::Stopping(exit);
        }
        self.changed.notify_all();
        self.kick_all();
    }

    /// Pauses the VM: returns once every live vCPU is parked. False when the VM is stopping.
    pub fn pause(&self) -> bool {
        {
            let mut s = self.lock();
            match s.phase {
                Phase::Stopping(_) => return false,
                Phase::Paused => return true,
                Phase::Running => s.phase = Phase::Paused,
            }
        }
        self.changed.notify_all();
        self.kick_all();
        let mut s = self.lock();
        while s.phase == Phase::Paused && s.parked < s.live {
            s = self.wait(s);
        }
        s.phase == Phase::Paused
    }

    /// Resumes a paused VM. False when the VM is stopping.
    pub fn resume(&self) -> bool {
        {
            let mut s = self.lock();
            match s.phase {
                Phase::Stopping(_) => return false,
                Phase::Running => return true,
                Phase::Paused => s.phase = Phase::Running,
            }
        }
        self.changed.notify_all();
        true
    }

    /// Called by a vCPU between runs: parks while paused; says whether to go on.
    pub fn checkpoint(&self) -> Next {
        let mut s = self.lock();
        if s.phase == Phase::Paused {
            s.parked += 1;
            self.changed.notify_all();
            while s.phase == Phase::Paused {
                s = self.wait(s);
            }
            s.parked -= 1;
        }
        match s.phase {
            Phase::Stopping(_) => Next::Stop,
            _ => Next::Run,
        }
    }

    /// Called by a vCPU that halted with no way to be woken (no irqchip): parks until the VM
    /// stops.
    pub fn park_until_stop(&self) {
        let mut s = self.lock();
        s.parked += 1;
        self.changed.notify_all();
        while !matches!(s.phase, Phase::Stopping(_)) {
            s = self.wait(s);
        }
        s.parked -= 1;
    }

    /// Called by a vCPU thread as its run loop ends.
    pub fn vcpu_ended(&self) {
        self.lock().live -= 1;
        self.changed.notify_all();
    }

    /// Blocks until the VM is stopping; returns why.
    pub fn wait_for_exit(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let Phase::Stopping(exit) = s.phase {
                return exit;
            }
            s = self.wait(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn first_exit_reason_wins() {
        let c = VmControl::new();
        assert_eq!(c.phase(), Phase::Running);
        c.request_exit(Exit::ApiShutdown);
        c.request_exit(Exit::Crashed);
        assert_eq!(c.wait_for_exit(), Exit::ApiShutdown);
        assert_eq!(c.checkpoint(), Next::Stop);
        assert!(!c.pause());
        assert!(!c.resume());
    }

    #[test]
    fn pause_waits_for_every_vcpu_to_park_and_resume_releases_them() {
        let c = VmControl::new();
        let vcpus = 3;
        for _ in 0..vcpus {
            c.add_vcpu(Arc::new(VcpuKick::new()));
        }
        let threads: Vec<_> = (0..vcpus)
            .map(|_| {
                let c = c.clone();
                thread::spawn(move || {
                    let mut rounds = 0u32;
                    while c.checkpoint() == Next::Run {
                        rounds += 1;
                        thread::sleep(Duration::from_millis(1));
                    }
                    c.vcpu_ended();
                    rounds
                })
            })
            .collect();
        assert!(c.pause());
        assert_eq!(c.phase(), Phase::Paused);
        assert_eq!(c.lock().parked, vcpus);
        assert!(c.resume());
        assert_eq!(c.phase(), Phase::Running);
        c.request_exit(Exit::GuestShutdown);
        for t in threads {
            t.join().expect("vcpu thread");
        }
        assert_eq!(c.lock().live, 0);
        assert_eq!(c.wait_for_exit(), Exit::GuestShutdown);
    }
}
