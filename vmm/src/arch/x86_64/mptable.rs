//! The Intel MultiProcessor table (MP spec 1.4), so Linux finds the CPUs and the IOAPIC
//! without ACPI.
//!
//! Written by hand: no rust-vmm crate publishes an MP table writer (Firecracker and crosvm
//! keep theirs in-tree), and the format is a handful of fixed little-endian records.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{APIC_START, IOAPIC_PINS, IOAPIC_START, MPTABLE_MAX_SIZE, MPTABLE_START};

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;
const SPEC_REVISION: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6, as a CPU signature.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;

/// Why an MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than fit in the room below 640 KiB (or than APIC ids allow).
    #[error("an MP table for {0} vCPUs does not fit below 640 KiB; use fewer vCPUs")]
    TooManyCpus(u8),
    /// Guest memory refused the write.
    #[error("writing the MP table to guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// The IOAPIC's id: the first APIC id after the CPUs'.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// The size of the whole structure (floating pointer and configuration table).
pub fn mptable_size(num_cpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + PROCESSOR_ENTRY_SIZE * usize::from(num_cpus)
        + SMALL_ENTRY_SIZE * (2 + usize::from(IOAPIC_PINS) + 2)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP table bytes for `num_cpus` CPUs (APIC ids 0..num_cpus, CPU 0 the bootstrap
/// processor), to be placed at guest address `base`.
pub fn mptable_bytes(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    let size = mptable_size(num_cpus);
    if num_cpus == 0 || size as u64 > MPTABLE_MAX_SIZE {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic = ioapic_id(num_cpus);
    let mut t: Vec<u8> = Vec::with_capacity(size);

    // Floating pointer: signature, table address, length in 16-byte units, revision,
    // checksum (patched below), feature bytes (0: a configuration table is present, virtual
    // wire mode).
    t.extend_from_slice(b"_MP_");
    t.extend_from_slice(&((base + FLOATING_POINTER_SIZE as u64) as u32).to_le_bytes());
    t.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    t[10] = checksum(&t[..FLOATING_POINTER_SIZE]);

    // Configuration table header; length, checksum and entry count patched below.
    let header = t.len();
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&[SPEC_REVISION, 0]);
    t.extend_from_slice(b"MOAT    ");
    t.extend_from_slice(b"MOAT-VMM    ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&0u16.to_le_bytes()); // entry count
    t.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut entries: u16 = 0;

    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        t.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    t.extend_from_slice(b"ISA   ");
    entries += 1;
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entries += 1;
    // ISA IRQ n is IOAPIC pin n, polarity and trigger as the bus defines (flags 0).
    for irq in 0..IOAPIC_PINS {
        t.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic,
            irq,
        ]);
        entries += 1;
    }
    // LINT0 is the 8259's ExtINT (on the bootstrap processor), LINT1 the NMI (on all).
    t.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS_ID,
        0,
        0,
        0,
    ]);
    t.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        1,
    ]);
    entries += 2;

    let table_len = (t.len() - header) as u16;
    t[header + 4..header + 6].copy_from_slice(&table_len.to_le_bytes());
    t[header + 34..header + 36].copy_from_slice(&entries.to_le_bytes());
    t[header + 7] = checksum(&t[header..]);
    debug_assert_eq!(t.len(), size);
    Ok(t)
}

/// Writes the MP table for `num_cpus` CPUs at `MPTABLE_START`.
pub fn write_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = mptable_bytes(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Parses the table the way Linux's mpparse does: the floating pointer, then the header,
    /// then the entries by type; returns (processor entries, entries by type, ioapic id).
    fn parse(mem: &GuestMemoryMmap) -> (Vec<[u8; 4]>, [usize; 5], u8) {
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(MPTABLE_START))
            .expect("read fp");
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!((fp[8], fp[9]), (1, 4));
        let table = u64::from(u32_at(&fp, 4));
        let mut hdr = [0u8; HEADER_SIZE];
        mem.read_slice(&mut hdr, GuestAddress(table))
            .expect("read header");
        assert_eq!(&hdr[..4], b"PCMP");
        let len = usize::from(u16_at(&hdr, 4));
        let mut all = vec![0u8; len];
        mem.read_slice(&mut all, GuestAddress(table))
            .expect("read table");
        assert_eq!(sum(&all), 0, "configuration table checksum");
        assert_eq!(u32_at(&all, 36), 0xfee0_0000);
        let count = usize::from(u16_at(&all, 34));

        let (mut cpus, mut by_type, mut ioapic) = (vec![], [0usize; 5], 0xff);
        let mut at = HEADER_SIZE;
        for _ in 0..count {
            let kind = all[at];
            by_type[usize::from(kind)] += 1;
            match kind {
                ENTRY_PROCESSOR => {
                    cpus.push([all[at + 1], all[at + 2], all[at + 3], 0]);
                    at += PROCESSOR_ENTRY_SIZE;
                }
                ENTRY_IOAPIC => {
                    ioapic = all[at + 1];
                    assert_eq!(u32_at(&all, at + 4), 0xfec0_0000);
                    at += SMALL_ENTRY_SIZE;
                }
                ENTRY_IO_INTERRUPT => {
                    // Source IRQ n goes to pin n of the IOAPIC.
                    assert_eq!(all[at + 5], all[at + 7]);
                    at += SMALL_ENTRY_SIZE;
                }
                ENTRY_BUS => {
                    assert_eq!(&all[at + 2..at + 8], b"ISA   ");
                    at += SMALL_ENTRY_SIZE;
                }
                ENTRY_LOCAL_INTERRUPT => at += SMALL_ENTRY_SIZE,
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(at, len, "entries fill the table exactly");
        (cpus, by_type, ioapic)
    }

    #[test]
    fn table_for_four_cpus_parses_with_valid_checksums() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)])
            .expect("guest memory");
        write_mptable(&mem, 4).expect("mptable");
        let (cpus, by_type, ioapic) = parse(&mem);
        assert_eq!(cpus.len(), 4);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[0] as usize, i, "APIC id");
            let bsp = if i == 0 { CPU_BOOTSTRAP } else { 0 };
            assert_eq!(cpu[2], CPU_ENABLED | bsp);
        }
        assert_eq!(by_type, [4, 1, 1, 24, 2]);
        assert_eq!(ioapic, 4);
    }

    #[test]
    fn thirty_two_cpus_fit_below_640k_and_more_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)])
            .expect("guest memory");
        write_mptable(&mem, 32).expect("32 vCPUs fit");
        let (cpus, by_type, _) = parse(&mem);
        assert_eq!(cpus.len(), 32);
        assert_eq!(by_type[ENTRY_IO_INTERRUPT as usize], 24);
        assert!(mptable_size(32) as u64 <= MPTABLE_MAX_SIZE);
        assert!(matches!(
            mptable_bytes(64, MPTABLE_START),
            Err(MpTableError::TooManyCpus(64))
        ));
        assert!(mptable_bytes(0, MPTABLE_START).is_err());
    }
}
