//! The bpf() system calls the device filter needs: load the program, attach it to the
//! container's cgroup, list the programs attached there and detach one; and the errors
//! they end in.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use super::program::Insn;
use crate::executor::error::{Error, Result};

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

pub(super) fn failed(dir: &Path, what: &str, errno: Errno, detail: &str) -> Error {
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
pub(super) fn load(dir: &Path, insns: &[Insn]) -> Result<OwnedFd> {
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

/// Attaches `prog` to the cgroup, beside the device programs attached there before
/// (`BPF_F_ALLOW_MULTI`).
pub(super) fn attach(cgroup: &File, prog: &OwnedFd) -> std::result::Result<(), Errno> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: the attr holds no pointer; both descriptors are open. The attachment keeps
    // its own reference to the program, which lives as long as the cgroup.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }?;
    Ok(())
}

/// The ids of the device programs attached to the cgroup itself.
pub(super) fn attached(cgroup: &File) -> std::result::Result<Vec<u32>, Errno> {
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
pub(super) fn detach(cgroup: &File, id: u32) -> std::result::Result<(), Errno> {
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
