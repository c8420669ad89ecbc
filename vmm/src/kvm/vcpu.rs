//! Creating a vCPU and giving it its boot state: CPUID (with its APIC id and the topology),
//! MSRs, registers in 64-bit mode, FPU, and the local APIC's LINT pins.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

use super::{KvmError, Vm, ioctl};
use crate::arch::x86_64::{cpuid, regs};

/// Where and how a vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct VcpuBoot {
    /// This vCPU's index (its APIC id).
    pub index: u8,
    /// How many vCPUs the VM has.
    pub count: u8,
    /// The kernel's 64-bit entry point.
    pub entry: u64,
    /// The boot_params address (`rsi`).
    pub boot_params: u64,
    /// The PML4 address (`cr3`).
    pub cr3: u64,
}

/// The CPUID table KVM supports on this host, to be fixed up per vCPU.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, KvmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    // KVM reports the TSC-deadline timer as a capability, not in the supported CPUID table.
    // Without it (and with no ACPI timers) the guest's LAPIC timer has nothing to calibrate
    // against but the PIT.
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        cpuid::advertise_tsc_deadline(cpuid.as_mut_slice());
    }
    Ok(cpuid)
}

/// Checks that KVM allows `count` vCPUs.
pub fn check_vcpu_count(kvm: &Kvm, count: u8) -> Result<(), KvmError> {
    let max = kvm.get_max_vcpus();
    if usize::from(count) > max {
        return Err(KvmError::TooManyVcpus {
            asked: usize::from(count),
            max,
        });
    }
    Ok(())
}

/// Creates vCPU `boot.index` and sets its boot state. Application processors get the same
/// state; with the in-kernel irqchip they wait for INIT/SIPI regardless.
pub fn create_vcpu(vm: &Vm, cpuid: &CpuId, boot: VcpuBoot) -> Result<VcpuFd, KvmError> {
    let vcpu = vm
        .fd()
        .create_vcpu(u64::from(boot.index))
        .map_err(ioctl("KVM_CREATE_VCPU"))?;

    let mut cpuid = cpuid.clone();
    cpuid::fix_up(cpuid.as_mut_slice(), boot.index, boot.count);
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;

    set_boot_msrs(&vcpu)?;
    vcpu.set_regs(&regs::boot_regs(boot.entry, boot.boot_params))
        .map_err(ioctl("KVM_SET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&regs::long_mode_sregs(sregs, boot.cr3))
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(ioctl("KVM_SET_FPU"))?;
    if vm.has_irqchip() {
        let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        regs::set_lint_modes(&mut lapic);
        vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    }
    Ok(vcpu)
}

/// Sets the boot MSRs; KVM stops at the first one it refuses, which is logged and skipped
/// (a kernel reprograms them all anyway).
fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let mut entries = regs::boot_msrs();
    while !entries.is_empty() {
        let msrs = Msrs::from_entries(&entries).map_err(|_| KvmError::Ioctl {
            what: "KVM_SET_MSRS (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if set >= entries.len() {
            break;
        }
        tracing::warn!(
            msr = format_args!("{:#x}", entries[set].index),
            "KVM refused a boot MSR; leaving it at its reset value"
        );
        entries.drain(..=set);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::regs;
    use crate::kvm::memory::create_guest_memory;

    /// Creates a 2-vCPU VM and checks that KVM took each vCPU's boot state as given.
    #[test]
    fn boot_state_reads_back() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED: /dev/kvm is absent on this host");
            return;
        }
        let kvm = crate::kvm::open().expect("open /dev/kvm");
        check_vcpu_count(&kvm, 2).expect("two vCPUs allowed");
        let vm = Vm::new(&kvm, create_guest_memory(64).expect("memory")).expect("vm");
        let cpuid = supported_cpuid(&kvm).expect("cpuid");
        for index in 0..2u8 {
            let boot = VcpuBoot {
                index,
                count: 2,
                entry: 0x100_0000,
                boot_params: 0x7000,
                cr3: 0x9000,
            };
            let vcpu = create_vcpu(&vm, &cpuid, boot).expect("vcpu");
            let r = vcpu.get_regs().expect("regs");
            assert_eq!((r.rip, r.rsi, r.rsp), (0x100_0000, 0x7000, 0x8ff0));
            let s = vcpu.get_sregs().expect("sregs");
            assert_eq!(s.cr3, 0x9000);
            assert_ne!(s.efer & (1 << 10), 0, "long mode active");
            assert_eq!((s.cs.selector, s.cs.l), (0x8, 1));
            let leaf1 = vcpu
                .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .expect("get cpuid")
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .copied()
                .expect("leaf 1");
            assert_eq!(leaf1.ebx >> 24, u32::from(index), "APIC id in CPUID");
            let mut msrs = Msrs::from_entries(&regs::boot_msrs()).expect("msrs");
            let n = vcpu.get_msrs(&mut msrs).expect("get msrs");
            assert_eq!(n, regs::boot_msrs().len(), "every boot MSR readable");
            let mtrr = msrs
                .as_slice()
                .iter()
                .find(|m| m.index == 0x2ff)
                .expect("mtrr");
            assert_eq!(mtrr.data, 0x806);
            if vm.has_irqchip() {
                let lapic = vcpu.get_lapic().expect("lapic");
                let lvt = |off: usize| {
                    u32::from_le_bytes([0, 1, 2, 3].map(|i| lapic.regs[off + i] as u8))
                };
                assert_eq!(lvt(0x350) & 0x700, 0x700, "LINT0 ExtINT");
                assert_eq!(lvt(0x360) & 0x700, 0x400, "LINT1 NMI");
            }
        }
    }
}
