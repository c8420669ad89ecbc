//! Guest memory: anonymous mappings laid out by `arch::x86_64::layout::ram_ranges`.

use vm_memory::{GuestMemoryMmap, GuestMemoryRegion};

use super::KvmError;
use crate::arch::x86_64::layout::ram_ranges;

/// Allocates `mib` MiB of guest memory (anonymous, not yet touched), with the 32-bit MMIO gap
/// left out.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, KvmError> {
    let ranges: Vec<_> = ram_ranges(mib << 20)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| KvmError::Memory { mib, source })
}

/// The (guest address, length, host address) of each region, in slot order.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u64)> {
    use vm_memory::{GuestMemoryBackend, MemoryRegionAddress};
    mem.iter()
        .map(|r| {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_or(0, |p| p as u64);
            (r.start_addr().0, r.len(), host)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_the_layout() {
        let mem = create_guest_memory(64).expect("memory");
        let r = regions(&mem);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].0, r[0].1), (0, 64 << 20));
        assert_ne!(r[0].2, 0);
    }
}
