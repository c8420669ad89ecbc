//! Per-vCPU fix-ups of the CPUID table KVM supports: the APIC id and the topology (one
//! socket, one thread per core, `count` cores), and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

/// The hypervisor-present bit (leaf 1, ECX).
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Hyper-threading / multi-core valid (leaf 1, EDX).
const EDX_HTT: u32 = 1 << 28;
/// AMD CmpLegacy (leaf 0x8000_0001, ECX): the core count in leaf 0x8000_0008 is valid.
const ECX_CMP_LEGACY: u32 = 1 << 1;
/// Topology level types (leaves 0xb and 0x1f, ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The number of APIC-id bits that number `count` cores.
pub fn core_id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for the vCPU with APIC id `apic_id` of
/// `count` vCPUs.
pub fn fix_up(entries: &mut [kvm_cpuid_entry2], apic_id: u8, count: u8) {
    let apic = u32::from(apic_id);
    let n = u32::from(count.max(1));
    let shift = core_id_bits(count);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0xffff) | (n.min(255) << 16) | (apic << 24);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: cores per package - 1 in EAX[31:26]; the
                // threads sharing a cache in EAX[25:14] (every core shares L3, nothing else).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1).min(63) << 26) | ((sharing & 0xfff) << 14);
            }
            0xb | 0x1f => {
                let (eax, ebx, level_type) = match e.index {
                    0 => (0, 1, LEVEL_SMT),
                    1 => (shift, n, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = apic;
            }
            0x8000_0001 => {
                if n > 1 {
                    e.ecx |= ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                // ECX: [15:12] APIC-id bits for the core id, [7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | ((n - 1) & 0xff);
            }
            0x8000_001e => {
                // AMD extended APIC id; core id = APIC id, one thread per core, node 0.
                e.eax = apic;
                e.ebx = (e.ebx & !0xffff) | apic;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// CPUID.1:ECX bit 24: the LAPIC timer has TSC-deadline mode.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Sets the TSC-deadline bit in leaf 1 (for a KVM with KVM_CAP_TSC_DEADLINE_TIMER).
pub fn advertise_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut().filter(|e| e.function == 0x1) {
        e.ecx |= ECX_TSC_DEADLINE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    fn table() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0x1, 0, 0xa0f11, 0xff08_0800, 0x1, 0x1000_0000),
            entry(0x4, 0, 0x1c00_4121, 0, 0, 0),
            entry(0x4, 3, 0x1c00_c163, 0, 0, 0),
            entry(0xb, 0, 5, 5, 5, 5),
            entry(0xb, 1, 5, 5, 5, 5),
            entry(0xb, 2, 5, 5, 5, 5),
            entry(0x8000_0001, 0, 0, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0x1_7007, 0),
            entry(0x8000_001e, 0, 9, 0x0109, 0x0100, 0),
        ]
    }

    #[test]
    fn third_of_four_vcpus() {
        let mut t = table();
        fix_up(&mut t, 2, 4);
        let l1 = find(&t, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical count");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(find(&t, 4, 0).eax >> 26, 3, "cores - 1");
        assert_eq!((find(&t, 4, 0).eax >> 14) & 0xfff, 0, "L1 not shared");
        assert_eq!((find(&t, 4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(find(&t, 4, 3).eax & 0x3fff, 0x0163, "cache fields kept");
        let smt = find(&t, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&t, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
        let end = find(&t, 0xb, 2);
        assert_eq!(
            (end.ebx, end.ecx >> 8),
            (0, 0),
            "invalid level ends the list"
        );
        assert_ne!(find(&t, 0x8000_0001, 0).ecx & ECX_CMP_LEGACY, 0);
        // Core-id bits (15:12) and core count (7:0) replaced, the rest kept.
        assert_eq!(find(&t, 0x8000_0008, 0).ecx, 0x1_0000 | (2 << 12) | 3);
        let ext = find(&t, 0x8000_001e, 0);
        assert_eq!(
            (ext.eax, ext.ebx, ext.ecx),
            (2, 2, 0),
            "one thread per core"
        );
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut t = table();
        fix_up(&mut t, 0, 1);
        assert_eq!(find(&t, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&t, 0xb, 1).eax, 0);
        assert_eq!(find(&t, 0x8000_0001, 0).ecx & ECX_CMP_LEGACY, 0);
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(32), 5);
    }

    #[test]
    fn tsc_deadline_is_set_in_leaf_one_only() {
        let mut t = vec![entry(0x1, 0, 0, 0, 0, 0), entry(0x7, 0, 0, 0, 0, 0)];
        advertise_tsc_deadline(&mut t);
        assert_eq!(t[0].ecx & ECX_TSC_DEADLINE, ECX_TSC_DEADLINE);
        assert_eq!(t[1].ecx, 0);
    }
}
