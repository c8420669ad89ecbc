//! What the device cgroup's tests share: spec rules built the way moatd and containerd
//! write them, and an interpreter for the program.

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources,
    LinuxResourcesBuilder,
};

use super::program::{BPF_ALU, BPF_AND, BPF_K, BPF_MOV, BPF_OR, BPF_RSH, BPF_X, BPF_XOR, Insn};
use super::rules::{Filter, Kind, rules};

pub(super) fn cgroup_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access);
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().expect("rule")
}

pub(super) fn resources(devices: Vec<LinuxDeviceCgroup>) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .devices(devices)
        .build()
        .expect("resources")
}

/// moatd's (and containerd's) rule for an unprivileged container.
pub(super) fn deny_all() -> LinuxDeviceCgroup {
    cgroup_rule(false, None, None, None, "rwm")
}

/// ... and for a privileged one.
pub(super) fn allow_all() -> LinuxDeviceCgroup {
    cgroup_rule(true, None, None, None, "rwm")
}

pub(super) fn filter(devices: Vec<LinuxDeviceCgroup>) -> Option<Filter> {
    Filter::new(&rules(Some(&resources(devices))).expect("rules"))
}

pub(super) const C: Kind = Kind::Char;
pub(super) const B: Kind = Kind::Block;

/// Runs the program on one request, over the instructions `program` emits only, with
/// the checks the verifier makes that matter here: forward jumps within the program,
/// registers written before they are read, and an exit on every path.
pub(super) fn run(insns: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> u64 {
    let ctx = [
        (u32::from(access) << 16) | kind.devcg().expect("block or char") as u32,
        major,
        minor,
    ];
    let mut reg = [None::<u64>; 11];
    reg[1] = Some(u64::MAX); // the context pointer: only loaded from
    let get = |reg: &[Option<u64>; 11], r: u8| reg[r as usize].expect("read before written");
    let mut pc = 0usize;
    loop {
        let i = insns.get(pc).expect("ran off the end");
        let (dst, src) = (i.regs & 0xf, i.regs >> 4);
        pc += 1;
        let alu = |op: u8, a: u64, b: u64| -> u64 {
            let (a, b) = (a as u32, b as u32);
            u64::from(match op {
                BPF_MOV => b,
                BPF_AND => a & b,
                BPF_OR => a | b,
                BPF_XOR => a ^ b,
                BPF_RSH => a >> b,
                _ => panic!("unexpected ALU op {op:#x}"),
            })
        };
        match i.code {
            0x61 => {
                assert_eq!(src, 1, "loads only from the context");
                reg[dst as usize] = Some(u64::from(ctx[(i.off / 4) as usize]));
            }
            c if c & 0x0f == BPF_ALU | BPF_K => {
                let a = if c & 0xf0 == BPF_MOV {
                    0
                } else {
                    get(&reg, dst)
                };
                reg[dst as usize] = Some(alu(c & 0xf0, a, i.imm as i64 as u64));
            }
            c if c & 0x0f == BPF_ALU | BPF_X => {
                let a = if c & 0xf0 == BPF_MOV {
                    0
                } else {
                    get(&reg, dst)
                };
                reg[dst as usize] = Some(alu(c & 0xf0, a, get(&reg, src)));
            }
            0x55 => {
                assert!(i.off > 0, "forward jumps only");
                if get(&reg, dst) != i.imm as i64 as u64 {
                    pc += i.off as usize;
                }
            }
            0x95 => return get(&reg, 0),
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}
