//! The container's device cgroup: which device nodes its processes may create (mknod),
//! read and write. Without it guest root in any container could `mknod` the console, /dev/mem
//! or the pod's disks and open them.
//!
//! Like runc on cgroup v2: the rules are the spec's `linux.resources.devices` followed by
//! runc's default devices (`DEFAULTS`: mknod of any node, /dev/null, zero, full, random,
//! urandom, tty, ptmx and the ptys), so a spec that starts with "deny everything", as
//! containerd's and moatd's do, leaves exactly the defaults. The last rule that matches a
//! device decides, for each access (m, r, w) on its own; a device no rule matches is denied,
//! so a spec without rules gets the defaults alone. A list that allows everything (a
//! privileged container's `a *:* rwm`) needs no program at all.
//!
//! The rules are enforced by a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's cgroup (cgroup v2 has no `devices.allow` file): the kernel runs it on every
//! mknod and open of a device node by a process of the cgroup and refuses the call with
//! EPERM when it returns 0. A kernel that cannot load or attach it fails the container's
//! creation, with a message naming what the kernel lacks; one without the bpf() system call
//! at all (the built-in VMM's optional minimal kernel) runs the container without it and
//! the agent logs a warning.
//!
//! # Why the program is assembled by hand
//!
//! No well-kept crate assembles BPF at run time without an LLVM toolchain: aya and libbpf-rs
//! load objects compiled ahead of time (and a compiled object cannot hold per-container
//! rules without maps and their own loader), `bpf-script` is a small experiment, and
//! rbpf's assembler comes with a user-space VM and JIT the agent has no use for. (runc
//! builds its program with cilium/ebpf's `asm` package, which is Go.) The program is
//! straight-line code, at most four instructions per rule and fourteen around them, so it
//! is built here from the instruction encoding (`Insn`).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::error::{Error, Result};

/// mknod (`BPF_DEVCG_ACC_MKNOD`).
pub(crate) const MKNOD: u8 = 1;
/// open for reading (`BPF_DEVCG_ACC_READ`).
pub(crate) const READ: u8 = 2;
/// open for writing (`BPF_DEVCG_ACC_WRITE`).
pub(crate) const WRITE: u8 = 4;
/// `rwm`.
pub(crate) const ALL: u8 = MKNOD | READ | WRITE;

/// The devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Block and character devices (`a`).
    Any,
    /// Block devices (`b`, `BPF_DEVCG_DEV_BLOCK`).
    Block,
    /// Character devices (`c`, `BPF_DEVCG_DEV_CHAR`).
    Char,
}

impl Kind {
    /// The kernel's device type number (`BPF_DEVCG_DEV_*`); `None` for any.
    fn devcg(self) -> Option<i32> {
        match self {
            Kind::Any => None,
            Kind::Block => Some(1),
            Kind::Char => Some(2),
        }
    }
}

/// One device cgroup rule: `allow`s or denies `access` to the devices of `kind` with `major`
/// and `minor` (`None`: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub allow: bool,
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

impl Rule {
    const fn char(major: u32, minor: Option<u32>, access: u8) -> Rule {
        Rule {
            allow: true,
            kind: Kind::Char,
            major: Some(major),
            minor,
            access,
        }
    }

    /// Whether it applies to every device.
    fn unconditional(&self) -> bool {
        self.kind == Kind::Any && self.major.is_none() && self.minor.is_none()
    }

    /// Whether it applies to the device `kind` (block or char) `major:minor`.
    fn covers(&self, kind: Kind, major: u32, minor: u32) -> bool {
        (self.kind == Kind::Any || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// `allowed` after this rule, for a device it covers.
    fn fold(&self, allowed: u8) -> u8 {
        if self.allow {
            allowed | self.access
        } else {
            allowed & !self.access
        }
    }
}

/// runc's default devices (libcontainer/specconv `AllowedDevices`), appended to every
/// container's rules: mknod of any node (the node is useless without r or w), the
/// harmless character devices every program expects, the pty master and the ptys of the
/// container's own devpts. Not /dev/console (5:1), /dev/mem (1:1), /dev/kmsg, disks, FUSE
/// nor /dev/net/tun (which runc 1.2 dropped from its defaults): a container that needs one
/// must be given it by rule, or be privileged.
pub(crate) const DEFAULTS: &[Rule] = &[
    Rule {
        allow: true,
        kind: Kind::Char,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        allow: true,
        kind: Kind::Block,
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule::char(1, Some(3), ALL), // /dev/null
    Rule::char(1, Some(8), ALL), // /dev/random
    Rule::char(1, Some(7), ALL), // /dev/full
    Rule::char(5, Some(0), ALL), // /dev/tty
    Rule::char(1, Some(5), ALL), // /dev/zero
    Rule::char(1, Some(9), ALL), // /dev/urandom
    Rule::char(136, None, ALL),  // /dev/pts/*
    Rule::char(5, Some(2), ALL), // /dev/ptmx
];

/// A rule of the spec, checked: types a, b and c; majors and minors a number or -1 (any);
/// an access of r, w and m.
fn parse(index: usize, d: &LinuxDeviceCgroup) -> Result<Rule> {
    let at = || format!("linux.resources.devices[{index}]");
    let kind = match d.typ() {
        None | Some(LinuxDeviceType::A) => Kind::Any,
        Some(LinuxDeviceType::B) => Kind::Block,
        Some(LinuxDeviceType::C) => Kind::Char,
        Some(other) => {
            return Err(Error::Spec(format!(
                "{}: type {:?} is not a device cgroup type: use a, b or c",
                at(),
                other.as_str()
            )));
        }
    };
    let number = |v: Option<i64>, what: &str| match v {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| i32::try_from(*n).is_ok())
            .map(Some)
            .ok_or_else(|| {
                Error::Spec(format!(
                    "{}: {what} {n} is out of range: give a device number or -1 for any",
                    at()
                ))
            }),
    };
    let access_str = d.access().as_deref().unwrap_or_default();
    let mut access = 0;
    for c in access_str.chars() {
        access |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            _ => {
                return Err(Error::Spec(format!(
                    "{}: access {access_str:?} may hold only r, w and m",
                    at()
                )));
            }
        };
    }
    if access == 0 {
        return Err(Error::Spec(format!(
            "{}: access is empty: give some of r, w and m",
            at()
        )));
    }
    Ok(Rule {
        allow: d.allow(),
        kind,
        major: number(d.major(), "major")?,
        minor: number(d.minor(), "minor")?,
        access,
    })
}

/// The container's rules, in order: the spec's, then `DEFAULTS`.
pub(crate) fn rules(resources: Option<&LinuxResources>) -> Result<Vec<Rule>> {
    let spec = resources
        .and_then(|r| r.devices().as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = spec
        .iter()
        .enumerate()
        .map(|(i, d)| parse(i, d))
        .collect::<Result<Vec<_>>>()?;
    out.extend_from_slice(DEFAULTS);
    Ok(out)
}

/// What a list of rules decides, reduced: the accesses every device starts with, and the
/// rules that still change them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    initial: u8,
    rules: Vec<Rule>,
}

impl Filter {
    /// The filter for `rules`; `None` when they allow every access to every device.
    pub(crate) fn new(rules: &[Rule]) -> Option<Filter> {
        let mut initial = 0;
        let mut kept: Vec<Rule> = Vec::new();
        for r in rules {
            if r.unconditional() && (r.access == ALL || kept.is_empty()) {
                // It sets these accesses for every device: what came before them no longer
                // matters.
                if r.access == ALL {
                    kept.clear();
                }
                initial = r.fold(initial);
            } else {
                kept.push(*r);
            }
        }
        if initial == ALL && kept.iter().all(|r| r.allow) {
            return None;
        }
        Some(Filter {
            initial,
            rules: kept,
        })
    }

    /// Whether the filter lets `access` to the device `kind` (block or char)
    /// `major:minor` through: the meaning the program must have.
    pub(crate) fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let allowed = self
            .rules
            .iter()
            .filter(|r| r.covers(kind, major, minor))
            .fold(self.initial, |a, r| r.fold(a));
        access & !allowed == 0
    }

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
    pub(crate) fn program(&self) -> Vec<Insn> {
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
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
pub(crate) const BPF_MOV: u8 = 0xb0;
pub(crate) const BPF_AND: u8 = 0x50;
pub(crate) const BPF_OR: u8 = 0x40;
pub(crate) const BPF_XOR: u8 = 0xa0;
pub(crate) const BPF_RSH: u8 = 0x70;
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
pub(crate) struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
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
    fn exit() -> Insn {
        Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }
}

// bpf(2): the commands, program and attach types, and the parts of `union bpf_attr` used
// here (include/uapi/linux/bpf.h). Each struct has no implicit padding: the kernel reads
// every byte up to the size passed, and wants those past a command's fields zero.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(`cmd`, `attr`).
///
/// # Safety
///
/// `T` must be the layout the kernel expects for `cmd`, and every pointer in `attr` must
/// point to memory of the length given beside it that stays valid (and, for buffers the
/// kernel writes, writable) for the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::result::Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a live, exclusively borrowed T of size_of::<T>() bytes; what its
    // pointers reach is the caller's promise.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// What to do about a failed bpf() call, by its errno.
fn hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOSYS => {
            "the guest kernel has no bpf() system call: build it with CONFIG_BPF_SYSCALL=y and CONFIG_CGROUP_BPF=y"
        }
        Errno::EPERM | Errno::EACCES => {
            "the agent needs CAP_SYS_ADMIN (or CAP_BPF) to load and attach the device filter"
        }
        Errno::EINVAL => {
            "the guest kernel refused a cgroup device program: build it with CONFIG_CGROUP_BPF=y"
        }
        _ => "this is a bug in the agent's device filter, or a guest kernel it does not support",
    }
}

fn failed(dir: &Path, what: &str, errno: Errno, detail: &str) -> Error {
    Error::Cgroup {
        path: dir.display().to_string(),
        source: std::io::Error::new(
            std::io::Error::from_raw_os_error(errno as i32).kind(),
            format!("{what}: {}: {}{detail}", errno.desc(), hint(errno)),
        ),
    }
}

/// Loads `insns` as a cgroup device program. On failure, loads it again with the
/// verifier's log, which the error then carries.
fn load(dir: &Path, insns: &[Insn]) -> Result<OwnedFd> {
    const WHAT: &str = "load the device filter (BPF_PROG_LOAD)";
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"moat_devices");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let owned = |fd: libc::c_long| {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor, ours alone.
        unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
    };
    // SAFETY: `insns` (insn_cnt instructions of struct bpf_insn's layout) and the
    // NUL-terminated license outlive the call; no log buffer is given.
    let errno = match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => return Ok(owned(fd)),
        Err(e) => e,
    };
    if errno != Errno::EINVAL && errno != Errno::EACCES {
        return Err(failed(dir, WHAT, errno, ""));
    }
    let mut log = vec![0u8; 64 << 10];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: as above, and `log` is a writable buffer of log_size bytes that outlives the
    // call.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => Ok(owned(fd)),
        Err(errno) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let text = text.trim();
            // The end of the log says why.
            let tail = &text[text.floor_char_boundary(text.len().saturating_sub(2000))..];
            let detail = if tail.is_empty() {
                String::new()
            } else {
                format!("; the verifier says: {tail}")
            };
            Err(failed(dir, WHAT, errno, &detail))
        }
    }
}

/// The ids of the device programs attached to the cgroup itself.
fn attached(cgroup: &File) -> std::result::Result<Vec<u32>, Errno> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: `ids` is a writable array of prog_cnt u32s that outlives the call.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }?;
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Detaches program `id` from the cgroup; one already gone is fine.
fn detach(cgroup: &File, id: u32) -> std::result::Result<(), Errno> {
    let mut get = GetFdByIdAttr {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: the attr holds no pointer.
    let prog = match unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut get) } {
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor, ours alone.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) },
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: the attr holds no pointer; both descriptors are open.
    match unsafe { bpf(BPF_PROG_DETACH, &mut attr) } {
        Ok(_) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Enforces the device rules of `resources` (see the module's doc) on the cgroup `dir`,
/// replacing the device programs attached there before. Call it before a process of the
/// container joins the cgroup.
pub(crate) fn apply(dir: &Path, resources: Option<&LinuxResources>) -> Result<()> {
    let filter = Filter::new(&rules(resources)?);
    let cgroup = File::open(dir).map_err(|e| Error::Cgroup {
        path: dir.display().to_string(),
        source: e,
    })?;
    let Some(filter) = filter else {
        // Everything is allowed: drop what an earlier container left here. Where the
        // kernel cannot say (no bpf(), no cgroup BPF) nothing can be attached either.
        for id in attached(&cgroup).unwrap_or_default() {
            detach(&cgroup, id)
                .map_err(|e| failed(dir, "detach an old device filter (BPF_PROG_DETACH)", e, ""))?;
        }
        return Ok(());
    };
    let old = match attached(&cgroup) {
        Ok(ids) => ids,
        Err(Errno::ENOSYS) => {
            // A guest kernel built without bpf() (the optional minimal kernel of the
            // built-in VMM): nothing the workload can cause, and no program can be loaded.
            // Refusing every container there would take the backend down for a rule
            // between containers of one pod, which the kernel never had; say so instead.
            tracing::warn!(
                cgroup = %dir.display(),
                "no device cgroup: the guest kernel has no bpf() system call; build it with \
                 CONFIG_BPF_SYSCALL=y and CONFIG_CGROUP_BPF=y"
            );
            return Ok(());
        }
        Err(e) => {
            return Err(failed(
                dir,
                "list the device filters (BPF_PROG_QUERY)",
                e,
                "",
            ));
        }
    };
    let prog = load(dir, &filter.program())?;
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: the attr holds no pointer; both descriptors are open. The attachment keeps
    // its own reference to the program, which lives as long as the cgroup.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map_err(|e| {
        failed(
            dir,
            "attach the device filter (BPF_PROG_ATTACH, BPF_CGROUP_DEVICE)",
            e,
            "",
        )
    })?;
    // The new program is in place before the old ones go: no moment without one.
    for id in old {
        detach(&cgroup, id)
            .map_err(|e| failed(dir, "detach an old device filter (BPF_PROG_DETACH)", e, ""))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::PathBuf;

    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxResourcesBuilder};

    use super::*;

    fn cgroup_rule(
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

    fn resources(devices: Vec<LinuxDeviceCgroup>) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .devices(devices)
            .build()
            .expect("resources")
    }

    /// moatd's (and containerd's) rule for an unprivileged container.
    fn deny_all() -> LinuxDeviceCgroup {
        cgroup_rule(false, None, None, None, "rwm")
    }

    /// ... and for a privileged one.
    fn allow_all() -> LinuxDeviceCgroup {
        cgroup_rule(true, None, None, None, "rwm")
    }

    fn filter(devices: Vec<LinuxDeviceCgroup>) -> Option<Filter> {
        Filter::new(&rules(Some(&resources(devices))).expect("rules"))
    }

    const C: Kind = Kind::Char;
    const B: Kind = Kind::Block;

    #[test]
    fn the_defaults_come_after_the_spec_rules() {
        assert_eq!(rules(None).expect("rules"), DEFAULTS);
        assert_eq!(rules(Some(&resources(vec![]))).expect("rules"), DEFAULTS);
        let r = rules(Some(&resources(vec![
            deny_all(),
            cgroup_rule(true, Some(LinuxDeviceType::C), Some(10), Some(200), "rw"),
        ])))
        .expect("rules");
        assert_eq!(r.len(), 2 + DEFAULTS.len());
        assert_eq!(
            r[0],
            Rule {
                allow: false,
                kind: Kind::Any,
                major: None,
                minor: None,
                access: ALL
            }
        );
        assert_eq!(
            r[1],
            Rule {
                allow: true,
                kind: Kind::Char,
                major: Some(10),
                minor: Some(200),
                access: READ | WRITE
            }
        );
        assert_eq!(&r[2..], DEFAULTS);
        // runc's list: the two mknod wildcards, seven devices, the ptys; no console.
        assert!(DEFAULTS.iter().all(|d| d.allow));
        assert!(
            !DEFAULTS
                .iter()
                .any(|d| d.major == Some(5) && d.minor == Some(1))
        );
    }

    #[test]
    fn spec_rules_are_checked() {
        let bad = |d: LinuxDeviceCgroup| {
            rules(Some(&resources(vec![deny_all(), d])))
                .expect_err("refused")
                .to_string()
        };
        let e = bad(cgroup_rule(true, Some(LinuxDeviceType::U), None, None, "r"));
        assert!(
            e.contains("linux.resources.devices[1]: type \"u\"") && e.contains("a, b or c"),
            "{e}"
        );
        assert!(bad(cgroup_rule(true, Some(LinuxDeviceType::P), None, None, "r")).contains("type"));
        let e = bad(cgroup_rule(true, None, None, None, ""));
        assert!(e.contains("access is empty"), "{e}");
        let e = bad(cgroup_rule(true, None, None, None, "rwx"));
        assert!(e.contains("only r, w and m"), "{e}");
        let e = bad(cgroup_rule(true, None, Some(-2), None, "r"));
        assert!(e.contains("major -2 is out of range"), "{e}");
        let e = bad(cgroup_rule(true, None, None, Some(1 << 31), "r"));
        assert!(e.contains("minor 2147483648 is out of range"), "{e}");
        let mut no_access = deny_all();
        no_access.set_access(None);
        assert!(bad(no_access).contains("access is empty"));
        // -1 is any, as in runc; a rule without a type is for every device.
        let r = rules(Some(&resources(vec![cgroup_rule(
            true,
            None,
            Some(-1),
            Some(-1),
            "mrwr",
        )])))
        .expect("rules");
        assert_eq!(
            r[0],
            Rule {
                allow: true,
                kind: Kind::Any,
                major: None,
                minor: None,
                access: ALL
            }
        );
    }

    #[test]
    fn a_leading_deny_all_leaves_runcs_defaults() {
        for f in [
            filter(vec![deny_all()]).expect("a filter"),
            Filter::new(&rules(None).expect("rules")).expect("a filter"),
        ] {
            for (major, minor) in [
                (1, 3),
                (1, 5),
                (1, 7),
                (1, 8),
                (1, 9),
                (5, 0),
                (5, 2),
                (136, 0),
                (136, 7),
            ] {
                assert!(f.allows(C, major, minor, READ | WRITE), "c {major}:{minor}");
                assert!(f.allows(C, major, minor, MKNOD), "c {major}:{minor}");
                assert!(!f.allows(B, major, minor, READ), "b {major}:{minor}");
            }
            // The console, /dev/mem, kmsg, tun, FUSE, a disk: made, never opened.
            for (kind, major, minor) in [
                (C, 5, 1),
                (C, 1, 1),
                (C, 1, 11),
                (C, 10, 200),
                (C, 10, 229),
                (B, 8, 0),
                (B, 253, 0),
            ] {
                assert!(
                    f.allows(kind, major, minor, MKNOD),
                    "{kind:?} {major}:{minor}"
                );
                for access in [READ, WRITE, READ | WRITE, READ | MKNOD] {
                    assert!(
                        !f.allows(kind, major, minor, access),
                        "{kind:?} {major}:{minor} {access}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_last_matching_rule_decides_each_access() {
        let c11 =
            |allow, access| cgroup_rule(allow, Some(LinuxDeviceType::C), Some(1), Some(11), access);
        let f = filter(vec![deny_all(), c11(true, "rw"), c11(false, "w")]).expect("f");
        assert!(f.allows(C, 1, 11, READ));
        assert!(!f.allows(C, 1, 11, WRITE));
        assert!(
            !f.allows(C, 1, 11, READ | WRITE),
            "a denied part denies the whole"
        );
        assert!(!f.allows(B, 1, 11, READ), "the type matters");
        // Allowed in two rules, allowed together.
        let f = filter(vec![deny_all(), c11(true, "r"), c11(true, "w")]).expect("f");
        assert!(f.allows(C, 1, 11, READ | WRITE));
        // An allow after a deny wins.
        let f = filter(vec![deny_all(), c11(false, "rwm"), c11(true, "r")]).expect("f");
        assert!(f.allows(C, 1, 11, READ));
        assert!(!f.allows(C, 1, 11, WRITE));
        // Wildcard minors and types.
        let f = filter(vec![
            deny_all(),
            cgroup_rule(true, Some(LinuxDeviceType::B), Some(8), None, "r"),
            cgroup_rule(true, None, Some(4), Some(64), "rw"),
        ])
        .expect("f");
        assert!(f.allows(B, 8, 0, READ) && f.allows(B, 8, 17, READ));
        assert!(!f.allows(B, 8, 0, WRITE) && !f.allows(C, 8, 0, READ));
        assert!(f.allows(B, 4, 64, READ | WRITE) && f.allows(C, 4, 64, READ | WRITE));
        assert!(!f.allows(C, 4, 65, READ));
        // Everything but the console: the defaults come after the deny and do not
        // mention it.
        let f = filter(vec![
            allow_all(),
            cgroup_rule(false, Some(LinuxDeviceType::C), Some(5), Some(1), "rw"),
        ])
        .expect("f");
        assert!(!f.allows(C, 5, 1, READ) && f.allows(C, 5, 1, MKNOD));
        assert!(f.allows(B, 8, 0, READ | WRITE) && f.allows(C, 1, 1, READ));
    }

    #[test]
    fn allowing_everything_needs_no_program_and_a_late_deny_all_resets() {
        assert_eq!(filter(vec![allow_all()]), None, "privileged");
        assert_eq!(filter(vec![deny_all(), allow_all()]), None);
        assert_eq!(
            filter(vec![
                cgroup_rule(true, None, None, None, "rw"),
                cgroup_rule(true, None, None, None, "m")
            ]),
            None
        );
        assert!(
            filter(vec![
                allow_all(),
                cgroup_rule(false, None, Some(1), Some(1), "r")
            ])
            .is_some()
        );
        // What came before an unconditional rwm rule is dropped from the program.
        let tun = cgroup_rule(true, Some(LinuxDeviceType::C), Some(10), Some(200), "rwm");
        let f = filter(vec![tun.clone(), deny_all()]).expect("f");
        assert!(!f.allows(C, 10, 200, READ));
        assert_eq!(f, filter(vec![deny_all()]).expect("f"));
        assert_eq!(f.initial, 0);
        assert_eq!(
            f.rules, DEFAULTS,
            "nothing of what came before the deny-all"
        );
        let f = filter(vec![deny_all(), tun]).expect("f");
        assert!(f.allows(C, 10, 200, READ | WRITE));
    }

    /// Runs the program on one request, over the instructions `program` emits only, with
    /// the checks the verifier makes that matter here: forward jumps within the program,
    /// registers written before they are read, and an exit on every path.
    fn run(insns: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> u64 {
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

    fn skip(test: &str, why: &str) {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    }

    /// A writable cgroup v2 mount: the first cgroup2 in /proc/self/mountinfo (on a hybrid
    /// host /sys/fs/cgroup/unified).
    fn cgroup2_root() -> Option<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
    }

    /// An open (or mknod) of one node, by a process in the cgroup, and whether it must
    /// succeed (else fail with EPERM).
    struct Try {
        what: &'static str,
        path: CString,
        flags: libc::c_int,
        mknod: Option<libc::dev_t>,
        ok: bool,
    }

    /// Forks a child that joins the cgroup (`procs`) and makes the `tries`; the first that
    /// goes otherwise, if any.
    fn in_cgroup(procs: &CString, tries: &[Try]) -> Option<&'static str> {
        // SAFETY: the child makes only async-signal-safe calls (open, write, close, mknod,
        // _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: as above; every pointer is a live C string.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(100);
                }
                libc::close(fd);
                for (n, t) in tries.iter().enumerate() {
                    let r = match t.mknod {
                        Some(dev) => libc::mknod(t.path.as_ptr(), libc::S_IFCHR | 0o600, dev),
                        None => libc::open(t.path.as_ptr(), t.flags | libc::O_NOCTTY),
                    };
                    let errno = *libc::__errno_location();
                    if r >= 0 && t.mknod.is_none() {
                        libc::close(r);
                    }
                    if (r >= 0) != t.ok || (r < 0 && errno != libc::EPERM) {
                        libc::_exit(1 + n as libc::c_int);
                    }
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid");
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        match libc::WEXITSTATUS(status) {
            0 => None,
            100 => Some("joining the cgroup"),
            n => Some(tries[n as usize - 1].what),
        }
    }

    #[test]
    fn the_kernel_enforces_the_filter() {
        const TEST: &str = "the_kernel_enforces_the_filter";
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return skip(TEST, "needs root");
        }
        let Some(root) = cgroup2_root() else {
            return skip(TEST, "no cgroup v2 mount in /proc/self/mountinfo");
        };
        let dir = root.join(format!("moat-devices-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            return skip(
                TEST,
                &format!("cannot create a cgroup in {}: {e}", root.display()),
            );
        }
        let result = std::panic::catch_unwind(|| kernel_checks(&dir));
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        match result {
            Ok(Some(why)) => skip(TEST, &why),
            Ok(None) => {}
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// The checks of `the_kernel_enforces_the_filter` in the cgroup `dir`; why they cannot
    /// run, if they cannot.
    fn kernel_checks(dir: &Path) -> Option<String> {
        let nodes = tempfile::tempdir().expect("tempdir");
        let node = |name: &str, kind: libc::mode_t, major: u32, minor: u32| {
            let p = nodes.path().join(name);
            let c = CString::new(p.as_os_str().as_bytes()).expect("path");
            // SAFETY: a live C string.
            let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
            assert_eq!(r, 0, "mknod {}: {}", p.display(), Errno::last());
            c
        };
        let null = node("null", libc::S_IFCHR, 1, 3);
        let zero = node("zero", libc::S_IFCHR, 1, 5);
        let console = node("console", libc::S_IFCHR, 5, 1);
        let kmsg = node("kmsg", libc::S_IFCHR, 1, 11);
        let disk = node("disk", libc::S_IFBLK, 7, 0);
        let made = CString::new(nodes.path().join("made").as_os_str().as_bytes()).expect("path");
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
        let t = |what, path: &CString, flags, ok| Try {
            what,
            path: path.clone(),
            flags,
            mknod: None,
            ok,
        };
        let count = |dir: &Path| {
            attached(&File::open(dir).expect("cgroup"))
                .expect("query")
                .len()
        };

        // An unprivileged container's rules: runc's defaults only.
        match apply(dir, Some(&resources(vec![deny_all()]))) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("CONFIG_") => {
                return Some(format!(
                    "this kernel cannot run cgroup device programs: {e}"
                ));
            }
            Err(e) => panic!("apply: {e}"),
        }
        assert_eq!(count(dir), 1);
        let tries = [
            t("read and write /dev/null (1:3)", &null, libc::O_RDWR, true),
            t("read /dev/zero (1:5)", &zero, libc::O_RDONLY, true),
            t("read the console (5:1)", &console, libc::O_RDONLY, false),
            t("write the console (5:1)", &console, libc::O_WRONLY, false),
            t("read kmsg (1:11)", &kmsg, libc::O_RDONLY, false),
            t("read a loop disk (b 7:0)", &disk, libc::O_RDONLY, false),
            Try {
                what: "mknod c 1:1 (mknod is allowed for every node)",
                path: made.clone(),
                flags: 0,
                mknod: Some(libc::makedev(1, 1)),
                ok: true,
            },
            t(
                "read the new /dev/mem node (1:1)",
                &made,
                libc::O_RDONLY,
                false,
            ),
        ];
        assert_eq!(in_cgroup(&procs, &tries), None, "deny-all and the defaults");

        // Read-only access to kmsg, by rule.
        let kmsg_r = cgroup_rule(true, Some(LinuxDeviceType::C), Some(1), Some(11), "r");
        apply(dir, Some(&resources(vec![deny_all(), kmsg_r]))).expect("apply");
        assert_eq!(count(dir), 1, "the new program replaced the old one");
        let tries = [
            t("read kmsg (1:11), allowed", &kmsg, libc::O_RDONLY, true),
            t("write kmsg (1:11), denied", &kmsg, libc::O_WRONLY, false),
            t("read /dev/null (1:3)", &null, libc::O_RDONLY, true),
            t("read the console (5:1)", &console, libc::O_RDONLY, false),
        ];
        assert_eq!(in_cgroup(&procs, &tries), None, "kmsg readable");

        // Privileged: no program, and the old one gone.
        apply(dir, Some(&resources(vec![allow_all()]))).expect("apply");
        assert_eq!(count(dir), 0);
        let tries = [t("read kmsg (1:11)", &kmsg, libc::O_RDONLY, true)];
        assert_eq!(in_cgroup(&procs, &tries), None, "privileged");
        None
    }
}
