//! One thread per vCPU: the KVM_RUN loop, with port I/O and MMIO exits dispatched on the
//! buses, and the exits that end the VM turned into an `Exit`.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::control::{Next, VmControl};
use crate::devices::bus::Bus;
use crate::kick::VcpuKick;
use crate::vmm::Exit;

/// What a read of an address nothing answers returns (a floating bus).
const UNCLAIMED: u8 = 0xff;

/// The buses exits are dispatched on.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
}

/// One vCPU and what its run loop needs.
pub struct VcpuRunner {
    /// The vCPU.
    pub vcpu: VcpuFd,
    /// Its index (APIC id).
    pub index: u8,
    /// The buses.
    pub buses: Buses,
    /// The shared run state.
    pub control: Arc<VmControl>,
    /// The handle others kick this vCPU with.
    pub kick: Arc<VcpuKick>,
    /// Whether a HLT exit means "halted for good" (no in-kernel irqchip to wake it).
    pub halt_parks: bool,
}

/// What one exit means for the loop.
enum Step {
    Continue,
    Halted,
    End(Exit),
}

impl VcpuRunner {
    /// Starts the run loop on a thread named `<vm>-vcpu<index>`.
    pub fn spawn(self, vm_id: &str) -> std::io::Result<JoinHandle<()>> {
        let name = format!("{}-vcpu{}", short(vm_id), self.index);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run())
    }

    fn run(mut self) {
        // Declared after `self` (a parameter), so dropped before the vCPU: the kick handle
        // is disarmed before the kvm_run mapping goes away, even on a panic.
        let _end = EndGuard {
            control: self.control.clone(),
            kick: self.kick.clone(),
        };
        // A thread inherits its creator's signal mask; the kick signal must get through here.
        if let Err(e) = vmm_sys_util::signal::unblock_signal(crate::kick::kick_signal()) {
            tracing::warn!(vcpu = self.index, error = %e, "unblocking the kick signal");
        }
        self.kick.arm(&mut self.vcpu);
        while self.control.checkpoint() == Next::Run {
            match self.step() {
                Step::Continue => {}
                Step::Halted => self.control.park_until_stop(),
                Step::End(exit) => self.control.request_exit(exit),
            }
        }
    }

    fn step(&mut self) -> Step {
        let index = self.index;
        let buses = &self.buses;
        match self.vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(0);
                if !buses.pio.read(u64::from(port), data) {
                    tracing::debug!(
                        vcpu = index,
                        port = format_args!("{port:#x}"),
                        "read of an unclaimed port"
                    );
                    data.fill(UNCLAIMED);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !buses.pio.write(u64::from(port), data) {
                    tracing::debug!(
                        vcpu = index,
                        port = format_args!("{port:#x}"),
                        "write to an unclaimed port"
                    );
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0);
                if !buses.mmio.read(addr, data) {
                    tracing::debug!(
                        vcpu = index,
                        addr = format_args!("{addr:#x}"),
                        "read of unclaimed MMIO"
                    );
                    data.fill(UNCLAIMED);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !buses.mmio.write(addr, data) {
                    tracing::debug!(
                        vcpu = index,
                        addr = format_args!("{addr:#x}"),
                        "write to unclaimed MMIO"
                    );
                }
                Step::Continue
            }
            Ok(VcpuExit::Intr) => {
                self.kick.clear();
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => {
                if self.halt_parks {
                    tracing::info!(vcpu = index, "vCPU halted (no irqchip to wake it)");
                    Step::Halted
                } else {
                    Step::Continue
                }
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::info!(vcpu = index, "guest triple fault (reset)");
                Step::End(Exit::GuestShutdown)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                    tracing::info!(vcpu = index, kind, "guest system event");
                    Step::End(Exit::GuestShutdown)
                }
                KVM_SYSTEM_EVENT_CRASH => {
                    tracing::error!(vcpu = index, "guest reported a crash");
                    Step::End(Exit::Crashed)
                }
                other => {
                    tracing::error!(vcpu = index, kind = other, "unknown KVM system event");
                    Step::End(Exit::Crashed)
                }
            },
            Ok(VcpuExit::InternalError) => {
                let run = self.vcpu.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, whose union member is
                // `internal`; it is plain data.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                tracing::error!(
                    vcpu = index,
                    suberror = internal.suberror,
                    data = ?&internal.data[..n],
                    "KVM internal error; the VM crashed"
                );
                Step::End(Exit::Crashed)
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                tracing::error!(
                    vcpu = index,
                    reason = format_args!("{reason:#x}"),
                    host_cpu = cpu,
                    "KVM could not enter the guest; the VM crashed"
                );
                Step::End(Exit::Crashed)
            }
            Ok(other) => {
                tracing::error!(vcpu = index, exit = ?other, "unexpected vCPU exit; the VM crashed");
                Step::End(Exit::Crashed)
            }
            Err(e) if e.errno() == libc::EINTR => {
                self.kick.clear();
                Step::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => {
                tracing::error!(vcpu = index, error = %e, "KVM_RUN failed; the VM crashed");
                Step::End(Exit::Crashed)
            }
        }
    }
}

/// Ends a run loop: disarms the kick handle and tells the control; a panicking vCPU thread
/// crashes the VM instead of leaving it running short of a vCPU.
struct EndGuard {
    control: Arc<VmControl>,
    kick: Arc<VcpuKick>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.kick.disarm();
        if std::thread::panicking() {
            tracing::error!("a vCPU thread panicked; the VM crashed");
            self.control.request_exit(Exit::Crashed);
        }
        self.control.vcpu_ended();
    }
}

/// The VM id cut to fit a thread name (15 bytes) with the `-vcpuNN` suffix.
fn short(id: &str) -> &str {
    let mut end = id.len().min(8);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}
