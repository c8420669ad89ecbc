//! The device filter as eBPF: the instruction encoding (`Insn`), as much of it as the
//! program uses, and the program a `Filter` compiles to.

use super::rules::Filter;

impl Filter {
    /// The program: the accesses the device gets, folded rule by rule, then whether the
    /// requested ones are among them.
    ///
    /// ```text
    /// r2 = ctx->access_type & 0xffff      device type
    /// r3 = ctx->access_type >> 16         requested access
    /// r4 = ctx->major; r5 = ctx->minor
    /// r6 = initial                        allowed access
    /// per rule:  if r2 != type  goto next   (each test only when the rule has it)
    ///            if r4 != major goto next
    ///            if r5 != minor goto next
    ///            r6 |= access  (allow)  or  r6 &= ~access  (deny)
    /// next:      ...
    /// r0 = (r3 & ~r6) == 0
    /// ```
    pub(super) fn program(&self) -> Vec<Insn> {
        let mut p = vec![
            Insn::load_u32(R2, R1, 0),
            Insn::alu32_reg(BPF_MOV, R3, R2),
            Insn::alu32_imm(BPF_RSH, R3, 16),
            Insn::alu32_imm(BPF_AND, R2, 0xffff),
            Insn::load_u32(R4, R1, 4),
            Insn::load_u32(R5, R1, 8),
            Insn::alu32_imm(BPF_MOV, R6, i32::from(self.initial)),
        ];
        for r in &self.rules {
            let tests: Vec<(u8, i32)> = [
                r.kind.devcg().map(|t| (R2, t)),
                // Parsed numbers fit in an i32 (`parse`); the defaults are small.
                r.major.map(|m| (R4, m as i32)),
                r.minor.map(|m| (R5, m as i32)),
            ]
            .into_iter()
            .flatten()
            .collect();
            let n = tests.len();
            for (i, (reg, value)) in tests.into_iter().enumerate() {
                // Over the tests left and the rule's one ALU instruction.
                p.push(Insn::jne_imm(reg, value, (n - i) as i16));
            }
            p.push(if r.allow {
                Insn::alu32_imm(BPF_OR, R6, i32::from(r.access))
            } else {
                Insn::alu32_imm(BPF_AND, R6, i32::from(!r.access))
            });
        }
        p.extend([
            Insn::alu32_reg(BPF_MOV, R1, R6),
            Insn::alu32_imm(BPF_XOR, R1, -1),
            Insn::alu32_reg(BPF_AND, R3, R1),
            Insn::alu32_imm(BPF_MOV, R0, 0),
            Insn::jne_imm(R3, 0, 1),
            Insn::alu32_imm(BPF_MOV, R0, 1),
            Insn::exit(),
        ]);
        p
    }
}

// The eBPF instruction set, as much of it as the program uses (the kernel's
// Documentation/bpf/standardization/instruction-set.rst).
const BPF_LDX: u8 = 0x01;
pub(super) const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
pub(super) const BPF_K: u8 = 0x00;
pub(super) const BPF_X: u8 = 0x08;
pub(super) const BPF_MOV: u8 = 0xb0;
pub(super) const BPF_AND: u8 = 0x50;
pub(super) const BPF_OR: u8 = 0x40;
pub(super) const BPF_XOR: u8 = 0xa0;
pub(super) const BPF_RSH: u8 = 0x70;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn` on a little-endian
/// machine: opcode, destination register in the low nibble and source in the high one,
/// offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insn {
    pub(super) code: u8,
    pub(super) regs: u8,
    pub(super) off: i16,
    pub(super) imm: i32,
}

const _: () = assert!(std::mem::size_of::<Insn>() == 8);
#[cfg(not(target_endian = "little"))]
compile_error!("Insn packs its registers for a little-endian kernel");

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`.
    fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
    }

    /// `dst = (u32)dst OP imm` (`BPF_MOV`: `dst = imm`).
    fn alu32_imm(op: u8, dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU | op | BPF_K, dst, 0, 0, imm)
    }

    /// `dst = (u32)dst OP (u32)src` (`BPF_MOV`: `dst = (u32)src`).
    fn alu32_reg(op: u8, dst: u8, src: u8) -> Insn {
        Insn::new(BPF_ALU | op | BPF_X, dst, src, 0, 0)
    }

    /// `if dst != imm goto +off`.
    fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JNE | BPF_K, dst, 0, off, imm)
    }

    /// `return r0`.
    pub(super) fn exit() -> Insn {
        Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::LinuxDeviceType;

    use super::super::rules::{ALL, READ, Rule, WRITE};
    use super::super::testing::{B, C, allow_all, cgroup_rule, deny_all, filter, run};
    use super::*;

    #[test]
    fn the_program_does_what_the_rules_say() {
        let filters = [
            filter(vec![deny_all()]).expect("f"),
            filter(vec![
                deny_all(),
                cgroup_rule(true, Some(LinuxDeviceType::B), Some(8), None, "r"),
                cgroup_rule(false, Some(LinuxDeviceType::C), Some(1), Some(3), "w"),
                cgroup_rule(true, None, Some(4), Some(64), "rw"),
                cgroup_rule(true, None, None, Some(5), "w"),
            ])
            .expect("f"),
            filter(vec![
                allow_all(),
                cgroup_rule(false, Some(LinuxDeviceType::C), Some(5), Some(1), "rw"),
            ])
            .expect("f"),
            filter(vec![
                cgroup_rule(true, None, None, None, "r"),
                cgroup_rule(false, Some(LinuxDeviceType::B), None, None, "r"),
            ])
            .expect("f"),
        ];
        let mut checked = 0;
        for f in &filters {
            let p = f.program();
            for kind in [B, C] {
                for major in [0, 1, 4, 5, 8, 10, 136, 254, 4095] {
                    for minor in [0, 1, 2, 3, 5, 7, 8, 9, 11, 64, 200, 0xfffff] {
                        for access in 1..=ALL {
                            let want = u64::from(f.allows(kind, major, minor, access));
                            assert_eq!(
                                run(&p, kind, major, minor, access),
                                want,
                                "{kind:?} {major}:{minor} access {access} under {f:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, filters.len() * 2 * 9 * 12 * 7);
    }

    #[test]
    fn the_program_is_encoded_as_the_kernel_reads_it() {
        let f = Filter::new(&[Rule::char(1, Some(3), READ | WRITE)]).expect("f");
        let bytes: Vec<[u8; 8]> = f
            .program()
            .iter()
            .map(|i| {
                let mut b = [0u8; 8];
                b[0] = i.code;
                b[1] = i.regs;
                b[2..4].copy_from_slice(&i.off.to_le_bytes());
                b[4..].copy_from_slice(&i.imm.to_le_bytes());
                b
            })
            .collect();
        let want: &[[u8; 8]] = &[
            [0x61, 0x12, 0, 0, 0, 0, 0, 0],             // r2 = *(u32 *)(r1 + 0)
            [0xbc, 0x23, 0, 0, 0, 0, 0, 0],             // w3 = w2
            [0x74, 0x03, 0, 0, 16, 0, 0, 0],            // w3 >>= 16
            [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0],       // w2 &= 0xffff
            [0x61, 0x14, 4, 0, 0, 0, 0, 0],             // r4 = *(u32 *)(r1 + 4)
            [0x61, 0x15, 8, 0, 0, 0, 0, 0],             // r5 = *(u32 *)(r1 + 8)
            [0xb4, 0x06, 0, 0, 0, 0, 0, 0],             // w6 = 0
            [0x55, 0x02, 3, 0, 2, 0, 0, 0],             // if r2 != 2 goto +3
            [0x55, 0x04, 2, 0, 1, 0, 0, 0],             // if r4 != 1 goto +2
            [0x55, 0x05, 1, 0, 3, 0, 0, 0],             // if r5 != 3 goto +1
            [0x44, 0x06, 0, 0, 6, 0, 0, 0],             // w6 |= rw
            [0xbc, 0x61, 0, 0, 0, 0, 0, 0],             // w1 = w6
            [0xa4, 0x01, 0, 0, 0xff, 0xff, 0xff, 0xff], // w1 ^= -1
            [0x5c, 0x13, 0, 0, 0, 0, 0, 0],             // w3 &= w1
            [0xb4, 0x00, 0, 0, 0, 0, 0, 0],             // w0 = 0
            [0x55, 0x03, 1, 0, 0, 0, 0, 0],             // if r3 != 0 goto +1
            [0xb4, 0x00, 0, 0, 1, 0, 0, 0],             // w0 = 1
            [0x95, 0, 0, 0, 0, 0, 0, 0],                // exit
        ];
        assert_eq!(bytes, want);
        // The default program: a block per rule, its tests (type, major, minor: those the
        // rule has) and one ALU instruction.
        let p = filter(vec![deny_all()]).expect("f").program();
        assert_eq!(p.len(), 7 + (2 * 2 + 7 * 4 + 3) + 7, "{p:?}");
        assert_eq!(p.last(), Some(&Insn::exit()));
    }
}
