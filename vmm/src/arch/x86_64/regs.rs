//! The register state a vCPU starts the kernel with: 64-bit long mode, paging on with the
//! identity-mapped boot tables, the boot GDT, `rip` at the entry point and `rsi` at
//! boot_params (the Linux 64-bit boot protocol).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};

use super::gdt::{BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX, segment_from_entry};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Long-mode special registers, starting from the vCPU's reset state `sregs`; `cr3` is the
/// PML4's address.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let code = segment_from_entry(BOOT_GDT[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_entry(BOOT_GDT[usize::from(DATA_INDEX)], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_entry(BOOT_GDT[usize::from(TSS_INDEX)], TSS_INDEX);
    sregs.cr3 = cr3;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET | CR0_PG) & !(CR0_CD | CR0_NW);
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers: `rip` at `entry`, `rsi` at `boot_params`, the boot stack, and only the
/// reserved bit of RFLAGS set.
pub fn boot_regs(entry: u64, boot_params: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot_params,
        ..Default::default()
    }
}

/// The FPU as after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs a kernel expects cleared or set at boot: the SYSENTER/SYSCALL MSRs zeroed, the TSC at
/// zero, fast strings on, and MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const SYSENTER_CS: u32 = 0x174;
    const SYSENTER_ESP: u32 = 0x175;
    const SYSENTER_EIP: u32 = 0x176;
    const STAR: u32 = 0xc000_0081;
    const LSTAR: u32 = 0xc000_0082;
    const CSTAR: u32 = 0xc000_0083;
    const SYSCALL_MASK: u32 = 0xc000_0084;
    const KERNEL_GS_BASE: u32 = 0xc000_0102;
    const TSC: u32 = 0x10;
    const MISC_ENABLE: u32 = 0x1a0;
    const MTRR_DEF_TYPE: u32 = 0x2ff;
    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(SYSENTER_CS, 0),
        msr(SYSENTER_ESP, 0),
        msr(SYSENTER_EIP, 0),
        msr(STAR, 0),
        msr(CSTAR, 0),
        msr(KERNEL_GS_BASE, 0),
        msr(SYSCALL_MASK, 0),
        msr(LSTAR, 0),
        msr(TSC, 0),
        msr(MISC_ENABLE, 1),
        msr(MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// The local APIC's LVT LINT0 register offset.
const APIC_LVT0: usize = 0x350;
/// The local APIC's LVT LINT1 register offset.
const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_EXTINT: u32 = 0x700;
const DELIVERY_NMI: u32 = 0x400;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| state.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[offset + i] = byte as _;
    }
}

/// Sets LINT0 to ExtINT (the 8259 PIC) and LINT1 to NMI, as a BIOS leaves them.
pub fn set_lint_modes(state: &mut kvm_lapic_state) {
    for (offset, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let value = lapic_reg(state, offset);
        set_lapic_reg(state, offset, (value & !DELIVERY_MODE_MASK) | mode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_from_reset_state() {
        let reset = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let s = long_mode_sregs(reset, 0x9000);
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x8, 1, 0));
        assert_eq!(
            (s.ss.selector, s.ds.selector, s.tr.selector),
            (0x10, 0x10, 0x18)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
    }

    #[test]
    fn regs_follow_the_boot_protocol() {
        let r = boot_regs(0x100_0000, 0x7000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
        assert_eq!(boot_fpu().fcw, 0x37f);
        assert!(
            boot_msrs()
                .iter()
                .any(|m| m.index == 0x2ff && m.data == 0x806)
        );
    }

    #[test]
    fn lint_modes_keep_other_bits() {
        let mut state = kvm_lapic_state::default();
        set_lapic_reg(&mut state, APIC_LVT0, 0x0001_0000 | 0x400);
        set_lapic_reg(&mut state, APIC_LVT1, 0x0001_0000);
        set_lint_modes(&mut state);
        assert_eq!(lapic_reg(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&state, APIC_LVT1), 0x0001_0400);
    }
}
