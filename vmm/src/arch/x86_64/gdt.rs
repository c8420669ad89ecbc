//! The boot GDT: null, 64-bit code, data and TSS descriptors, and their `kvm_segment` forms.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{GDT_START, IDT_START};

/// Access byte + flags nibble (`0xF0FF` layout) of the 64-bit code segment: present, ring 0,
/// execute/read, long mode, 4 KiB granularity.
pub const CODE_FLAGS: u16 = 0xa09b;
/// Of the data segment: present, ring 0, read/write, 32-bit, 4 KiB granularity.
pub const DATA_FLAGS: u16 = 0xc093;
/// Of the TSS: present, busy 64-bit TSS, 4 KiB granularity.
pub const TSS_FLAGS: u16 = 0x808b;

/// The GDT index of the code segment (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// The GDT index of the data segment (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// The GDT index of the TSS (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// The boot GDT.
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(CODE_FLAGS, 0, 0xfffff),
    gdt_entry(DATA_FLAGS, 0, 0xfffff),
    gdt_entry(TSS_FLAGS, 0, 0xfffff),
];

/// Packs a segment descriptor from `flags` (access byte in bits 0..8, the G/DB/L/AVL nibble in
/// bits 12..16), a 32-bit base and a 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` KVM loads for descriptor `entry` at GDT index `index`; the limit is in
/// bytes (scaled by 4 KiB when G is set), as KVM expects.
pub fn segment_from_entry(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Writes the boot GDT at `GDT_START` and an empty IDT at `IDT_START`.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_the_usual_descriptors() {
        // The well-known flat 64-bit code and data descriptors.
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn segments_round_trip_their_fields() {
        let code = segment_from_entry(BOOT_GDT[1], CODE_INDEX);
        assert_eq!(
            (code.selector, code.type_, code.l, code.db, code.g, code.s),
            (0x8, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(
            (code.base, code.limit, code.present, code.dpl),
            (0, u32::MAX, 1, 0)
        );
        let data = segment_from_entry(BOOT_GDT[2], DATA_INDEX);
        assert_eq!(
            (data.selector, data.type_, data.l, data.db),
            (0x10, 3, 0, 1)
        );
        let tss = segment_from_entry(BOOT_GDT[3], TSS_INDEX);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.unusable),
            (0x18, 0xb, 0, 0)
        );
        let odd = segment_from_entry(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 5);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(segment_from_entry(0, 0).unusable, 1);
    }
}
