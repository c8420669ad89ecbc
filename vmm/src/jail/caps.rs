//! Capabilities: which ones a confined VMM keeps, dropping the rest (effective, permitted,
//! inheritable, ambient and bounding sets), and no_new_privs.
//!
//! The VMM itself needs no capability once the VM is built: KVM_RUN, eventfds, the tap fd
//! and Unix sockets owned by root need none. Only the virtio-fs passthrough
//! (fuse-backend-rs) acts on the host's files for the guest:
//! - any share: CAP_DAC_OVERRIDE (open, read and search whatever the guest may see,
//!   whatever its mode) and CAP_SYS_ADMIN (`trusted.*` xattrs: the guest's overlayfs reads
//!   `trusted.overlay.*` from the image layers). A read-only share keeps no more: not
//!   CAP_DAC_READ_SEARCH, although it would do for reads, since it also grants
//!   `open_by_handle_at`, which reaches any file of a bound filesystem, outside the jail
//!   too.
//! - a writable share also: CAP_CHOWN (setattr uid/gid), CAP_FOWNER (chmod, utimes,
//!   xattrs and hard links on files the VMM's fsuid does not own), CAP_FSETID (writes keep
//!   set-id bits; the passthrough drops it around writes itself when the guest asks),
//!   CAP_SETUID and CAP_SETGID (the passthrough creates files with the guest caller's uid
//!   and gid by switching the worker thread's effective ids with setresuid/setresgid), and
//!   CAP_DAC_READ_SEARCH after all: the passthrough makes hard links with
//!   `linkat(fd, "", AT_EMPTY_PATH)`, which the kernel allows only with it. The seccomp
//!   filter never allows `open_by_handle_at` (nor `name_to_handle_at`); a jail without
//!   the filter (`seccomp: false`) leaves that door open on writable shares.
//!
//! Not kept, on purpose: CAP_MKNOD (overlayfs whiteouts, 0:0 character devices, need none
//! since Linux 5.8; a real device node made by the guest on the host is exactly what must
//! not happen, and it could not be opened on the nodev bind anyway) and CAP_SETFCAP (file
//! capabilities set by the guest on host files could raise a host process that runs them).
//!
//! Every call here acts on the calling thread only (the kernel keeps capabilities per
//! thread); threads started afterwards inherit the result.
//!
//! capget/capset are two syscalls with a fixed two-struct ABI; the VMM's dependencies have
//! no wrapper for them (nix has none), so they are called directly.

use std::io;

use super::JailError;

/// A capability (the numbers of `linux/capability.h`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[repr(u32)]
pub enum Cap {
    /// CAP_CHOWN.
    Chown = 0,
    /// CAP_DAC_OVERRIDE.
    DacOverride = 1,
    /// CAP_DAC_READ_SEARCH.
    DacReadSearch = 2,
    /// CAP_FOWNER.
    Fowner = 3,
    /// CAP_FSETID.
    Fsetid = 4,
    /// CAP_KILL.
    Kill = 5,
    /// CAP_SETGID.
    Setgid = 6,
    /// CAP_SETUID.
    Setuid = 7,
    /// CAP_SETPCAP.
    Setpcap = 8,
    /// CAP_SYS_CHROOT.
    SysChroot = 18,
    /// CAP_SYS_ADMIN.
    SysAdmin = 21,
    /// CAP_MKNOD.
    Mknod = 27,
    /// CAP_SETFCAP.
    Setfcap = 31,
}

impl Cap {
    /// The capability's bit in a capability mask.
    pub fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// The mask of `caps`.
pub fn mask(caps: &[Cap]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bit())
}

/// The capabilities virtio-fs shares need (see the module docs); `read_only` has one item
/// per share. None without shares.
pub fn for_shares(read_only: impl IntoIterator<Item = bool>) -> Vec<Cap> {
    let mut any = false;
    let mut writable = false;
    for ro in read_only {
        any = true;
        writable |= !ro;
    }
    let mut caps = Vec::new();
    if any {
        caps.extend([Cap::DacOverride, Cap::SysAdmin]);
    }
    if writable {
        caps.extend([
            Cap::Chown,
            Cap::DacReadSearch,
            Cap::Fowner,
            Cap::Fsetid,
            Cap::Setgid,
            Cap::Setuid,
        ]);
    }
    caps.sort();
    caps
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets, as masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapState {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// The bounding set.
    pub bounding: u64,
}

fn join(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Reads the calling thread's capability sets.
pub fn current() -> io::Result<CapState> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a version 3 header writes two `Data` structs, which `data` holds;
    // both pointers are valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut bounding = 0;
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_READ takes an integer and touches no memory.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } {
            1 => bounding |= 1 << cap,
            0 => {}
            _ => break, // EINVAL: past the kernel's last capability
        }
    }
    Ok(CapState {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
        bounding,
    })
}

fn caps_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Caps { what, source }
}

fn prctl(op: libc::c_int, arg: libc::c_ulong, arg2: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the prctl operations used here (ambient clear, bounding-set drop,
    // no_new_privs) take integers only and touch no memory.
    if unsafe { libc::prctl(op, arg, arg2, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps only `keep` (effective and permitted) on the calling thread: clears the ambient
/// and inheritable sets and drops every other capability from the bounding set.
pub fn drop_all_but(keep: &[Cap]) -> Result<(), JailError> {
    drop_bounding_but(keep)?;
    let keep = mask(keep);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |m: u64| Data {
        effective: m as u32,
        permitted: m as u32,
        inheritable: 0,
    };
    let data = [half(keep), half(keep >> 32)];
    // SAFETY: capset with a version 3 header reads two `Data` structs, which `data` holds;
    // both pointers are valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(caps_err("setting the capabilities (capset)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Clears the ambient set and drops every capability but `keep` from the bounding set of
/// the calling thread (what it may ever gain again, by exec included), leaving its
/// effective and permitted sets as they are (a thread that then changes uid away from 0
/// loses those too). Needs CAP_SETPCAP.
pub fn drop_bounding_but(keep: &[Cap]) -> Result<(), JailError> {
    let keep = mask(keep);
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .map_err(caps_err("clearing the ambient capabilities"))?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    let bounding = current()
        .map_err(caps_err("reading the capabilities"))?
        .bounding;
    for cap in 0..64u32 {
        if bounding & (1 << cap) != 0 && keep & (1 << cap) == 0 {
            prctl(libc::PR_CAPBSET_DROP, cap.into(), 0).map_err(caps_err(format!(
                "dropping capability {cap} from the bounding set"
            )))?;
        }
    }
    Ok(())
}

/// Sets no_new_privs on the calling thread: nothing it runs can gain privileges.
pub fn set_no_new_privs() -> Result<(), JailError> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(caps_err("setting no_new_privs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_caps_follow_what_the_shares_allow() {
        assert!(for_shares([]).is_empty());
        assert_eq!(for_shares([true]), vec![Cap::DacOverride, Cap::SysAdmin]);
        assert_eq!(for_shares([true, true]), for_shares([true]));
        let rw = for_shares([true, false]);
        for c in [
            Cap::Chown,
            Cap::DacOverride,
            Cap::DacReadSearch,
            Cap::Fowner,
            Cap::Fsetid,
            Cap::Setgid,
            Cap::Setuid,
            Cap::SysAdmin,
        ] {
            assert!(rw.contains(&c), "{c:?} missing from {rw:?}");
        }
        for c in [Cap::Mknod, Cap::Setfcap, Cap::SysChroot] {
            assert!(!rw.contains(&c), "{c:?} kept");
        }
        assert_eq!(mask(&[Cap::Chown, Cap::SysAdmin]), 1 | 1 << 21);
    }

    #[test]
    fn current_reads_this_threads_sets() {
        let state = current().expect("capget");
        // Whatever this process runs with, the effective set is within the permitted one
        // and the permitted one within the bounding set.
        assert_eq!(state.effective & !state.permitted, 0, "{state:?}");
        assert_eq!(state.permitted & !state.bounding, 0, "{state:?}");
        assert_ne!(
            state.bounding, 0,
            "the bounding set has capabilities: {state:?}"
        );
    }
}
