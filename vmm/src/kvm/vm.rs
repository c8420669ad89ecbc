//! The VM: its KVM file, guest memory registered as memory slots, the in-kernel irqchip and
//! PIT, and the irqfd/ioeventfd helpers devices are wired with.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::memory::regions;
use super::{KvmError, ioctl};
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};

/// A VM with its memory.
pub struct Vm {
    // Declared first so the VM is closed before the memory it maps goes away.
    fd: VmFd,
    mem: GuestMemoryMmap,
    irqchip: bool,
}

impl Vm {
    /// Creates the VM, sets KVM's TSS and identity-map pages, registers `mem` as memory slots
    /// and creates the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
    ///
    /// When KVM refuses the irqchip the VM goes on without one (logged): no interrupts, no
    /// PIT, one vCPU; enough for payloads that poll.
    pub fn new(kvm: &Kvm, mem: GuestMemoryMmap) -> Result<Vm, KvmError> {
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_START as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        for (slot, (guest, len, host)) in regions(&mem).into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: guest,
                memory_size: len,
                userspace_addr: host,
            };
            // SAFETY: `host..host+len` is a live mapping owned by `mem`, which this `Vm`
            // keeps until after the VM file is closed; the regions do not overlap.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let irqchip = match fd.create_irq_chip() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "KVM refused KVM_CREATE_IRQCHIP; running without interrupts (one vCPU, no PIT)"
                );
                false
            }
        };
        if irqchip {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        }
        Ok(Vm { fd, mem, irqchip })
    }

    /// The KVM VM file.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Whether the in-kernel irqchip exists (interrupts can be injected).
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Makes a write to `evt` raise `gsi` (an IOAPIC pin for IRQs below 24). Without an
    /// irqchip nothing can be raised: logged and skipped.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmError> {
        if !self.irqchip {
            tracing::debug!(gsi, "no irqchip: interrupt line not connected");
            return Ok(());
        }
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("KVM_IRQFD"))
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO address `addr` signal `evt` inside
    /// KVM, without a vCPU exit.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), KvmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(ioctl("KVM_IOEVENTFD"))
    }
}
