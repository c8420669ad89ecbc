//! The e820 memory map handed to Linux in boot_params.

use super::layout::{EBDA_START, HIGH_MEMORY_START, MMIO_GAP_END, MMIO_GAP_START};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The map for `mem_size` bytes of guest RAM laid out by `layout::ram_ranges`: base memory up to
/// the EBDA (where the MP table lives), then RAM from 1 MiB up to the MMIO gap, then the rest
/// from 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let ram = |addr: u64, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RAM,
    };
    let mut map = vec![ram(0, EBDA_START)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIGH_MEMORY_START {
        map.push(ram(HIGH_MEMORY_START, low_end));
    }
    if mem_size > MMIO_GAP_START {
        map.push(ram(
            MMIO_GAP_END,
            MMIO_GAP_END + (mem_size - MMIO_GAP_START),
        ));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::ram_ranges;
    use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn backed(mem_size: u64) {
        let ranges: Vec<_> = ram_ranges(mem_size)
            .into_iter()
            .map(|(a, l)| (a, l as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
        let map = e820_map(mem_size);
        let mut total = 0;
        for e in &map {
            assert_eq!(e.kind, E820_RAM);
            // Every byte the guest is told is RAM is backed by guest memory.
            assert!(mem.address_in_range(GuestAddress(e.addr)), "{e:x?}");
            assert!(
                mem.address_in_range(GuestAddress(e.addr + e.size - 1)),
                "{e:x?}"
            );
            assert!(
                mem.checked_offset(GuestAddress(e.addr), e.size as usize - 1)
                    .is_some()
            );
            total += e.size;
        }
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "sorted, no overlap");
        }
        // Only the legacy hole (EBDA to 1 MiB) is left out.
        assert_eq!(total, mem_size - (HIGH_MEMORY_START - EBDA_START));
        assert_eq!(
            mem.last_addr().raw_value() + 1,
            map.last().map(|e| e.addr + e.size).unwrap_or_default()
        );
    }

    #[test]
    fn small_guest_has_two_ram_entries() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
        backed(128 << 20);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let size = (4u64 << 30) + (512 << 20);
        let map = e820_map(size);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, 1 << 32);
        assert_eq!(map[2].size, size - MMIO_GAP_START);
        backed(size);
    }
}
