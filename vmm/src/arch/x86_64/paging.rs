//! Identity-mapped page tables for entering a kernel in 64-bit mode: one PML4 entry, one
//! PDPT, and one page directory of 2 MiB pages per GiB mapped.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{IDENTITY_MAPPED_GIB, PDE_START, PDPTE_START, PML4_START};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;

/// Writes page tables identity-mapping the first `IDENTITY_MAPPED_GIB` GiB; returns the CR3
/// value (the PML4's address).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<u64, GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT | WRITABLE, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PRESENT | WRITABLE, GuestAddress(PDPTE_START + gib * 8))?;
        for i in 0..512u64 {
            let frame = (gib << 30) | (i << 21);
            mem.write_obj(frame | PRESENT | WRITABLE | HUGE, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the 4-level tables the way the MMU does (2 MiB leaves only).
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let entry = |table: u64, index: u64| -> u64 {
            mem.read_obj::<u64>(GuestAddress((table & !0xfff) + index * 8))
                .expect("table in memory")
        };
        let pml4e = entry(cr3, (va >> 39) & 0x1ff);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = entry(pml4e & 0x000f_ffff_ffff_f000, (va >> 30) & 0x1ff);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = entry(pdpte & 0x000f_ffff_ffff_f000, (va >> 21) & 0x1ff);
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_the_first_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)])
            .expect("guest memory");
        let cr3 = write_page_tables(&mem).expect("tables");
        assert_eq!(cr3, PML4_START);
        for va in [
            0,
            0x7000,
            0x100_0000 + 0x1234,
            (1 << 30) + 0x20_0abc,
            0xd000_0050,
            0xfee0_0000,
            (4u64 << 30) - 1,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 4u64 << 30), None);
        // Every page-directory entry is writable and present.
        let pde: u64 = mem
            .read_obj(GuestAddress(PDE_START + 511 * 8))
            .expect("pde");
        assert_eq!(pde, (511 << 21) | 0x83);
    }
}
