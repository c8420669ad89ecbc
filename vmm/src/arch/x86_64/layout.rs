//! Where things live in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), then an empty IDT at 0x520
//! 0x0000_7000  boot_params (the "zero page")
//! 0x0000_8ff0  initial stack pointer (grows down)
//! 0x0000_9000  PML4, then the PDPT (0xa000) and four page directories (0xb000..0xf000)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (the last KiB of base memory, where Linux looks for it)
//! 0x0010_0000  high memory: the kernel (a vmlinux at its physical address, usually 16 MiB)
//!   ...        the initramfs, at the top of low memory
//! 0xd000_0000  the 32-bit MMIO gap: virtio-mmio devices (4 KiB each), IOAPIC, LAPIC,
//!              KVM's TSS and identity-map pages
//! 4 GiB        the rest of guest memory, when there is more than fits below the gap
//! ```

use vm_memory::GuestAddress;

/// The GDT.
pub const GDT_START: u64 = 0x500;
/// The (empty) IDT.
pub const IDT_START: u64 = 0x520;
/// The boot_params structure (zero page); `rsi` points at it on entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The top-level page table.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// The first of the page directories (one per GiB identity-mapped).
pub const PDE_START: u64 = 0xb000;
/// How many GiB the boot page tables identity-map (all of the 32-bit space, so an early
/// payload can reach the MMIO devices too).
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The largest command line accepted when the kernel does not say (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The end of conventional memory the e820 map reports as RAM (640 KiB less the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table (floating pointer first).
pub const MPTABLE_START: u64 = EBDA_START;
/// The room the MP table has (up to 640 KiB).
pub const MPTABLE_MAX_SIZE: u64 = 0xa0000 - MPTABLE_START;
/// Where high memory (and the kernel) starts.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap; guest RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The first virtio-mmio device; device `i` is at `VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// The window of one virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IRQ of the first virtio-mmio device; device `i` gets `VIRTIO_IRQ_START + i`.
pub const VIRTIO_IRQ_START: u32 = 5;
/// The last IRQ a virtio-mmio device may use (the IOAPIC has 24 pins).
pub const VIRTIO_IRQ_END: u32 = 23;
/// The IOAPIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's identity-map page (KVM_SET_IDENTITY_MAP_ADDR), one page below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// KVM's TSS (KVM_SET_TSS_ADDR, three pages).
pub const KVM_TSS_START: u64 = 0xfffb_d000;

/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Pins on the IOAPIC (IRQs 0..23).
pub const IOAPIC_PINS: u8 = 24;

/// The guest RAM ranges for `size` bytes: below the MMIO gap, then from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// The base address and IRQ of virtio-mmio device `index`, or `None` past the last IRQ.
pub fn virtio_mmio_slot(index: u32) -> Option<(u64, u32)> {
    let irq = VIRTIO_IRQ_START.checked_add(index)?;
    (irq <= VIRTIO_IRQ_END).then(|| (VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_SIZE, irq))
}

// The MMIO gap holds KVM's pages (three for the TSS, one identity-map page below it) and
// every virtio-mmio window below the IOAPIC.
const _: () = assert!(KVM_TSS_START + 3 * 0x1000 <= MMIO_GAP_END);
const _: () = assert!(KVM_IDENTITY_MAP_START + 0x1000 <= KVM_TSS_START);
const _: () = assert!(
    VIRTIO_MMIO_START + (VIRTIO_IRQ_END - VIRTIO_IRQ_START + 1) as u64 * VIRTIO_MMIO_SIZE
        <= IOAPIC_START
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_leaves_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(
            ram_ranges(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
        let big = 8u64 << 30;
        assert_eq!(
            ram_ranges(big),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(1 << 32), big - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn virtio_slots_stop_at_the_last_ioapic_pin() {
        assert_eq!(virtio_mmio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_mmio_slot(2), Some((0xd000_2000, 7)));
        assert_eq!(virtio_mmio_slot(18), Some((0xd001_2000, 23)));
        assert_eq!(virtio_mmio_slot(19), None);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let pde_end = PDE_START + IDENTITY_MAPPED_GIB * 0x1000;
        let areas = [
            (GDT_START, IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (BOOT_STACK_POINTER - 0xff0, BOOT_STACK_POINTER),
            (PML4_START, pde_end),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, MPTABLE_START + MPTABLE_MAX_SIZE),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.1 <= HIGH_MEMORY_START);
            for b in &areas[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }
}
