//! Preparing the tap the device serves: it must be a tap (not tun) without packet info and
//! with a virtio-net header on every frame; we set that header to the 12 bytes of
//! `virtio_net_hdr_v1` (the tap's default is the 10-byte legacy header), turn every offload
//! off (the guest is offered none, so the tap must hand us only whole, checksummed frames),
//! and make it non-blocking.
//!
//! The tun ioctls are three calls on an fd; no crate wraps them for an fd opened elsewhere
//! (moatd opens the tap in the pod's netns and hands it to the VMM).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers): what precedes every frame on the tap and in the queues.
pub const VNET_HDR_LEN: usize = 12;

/// Why the tap cannot serve the device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// TUNGETIFF failed: not a tun/tap fd.
    #[error(
        "the network device fd is not a tap (TUNGETIFF: {0}); open /dev/net/tun with TUNSETIFF first"
    )]
    NotATap(io::Error),
    /// The tap lacks one of the flags the device needs.
    #[error("the tap has flags {flags:#x}; it needs IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    Flags {
        /// What TUNGETIFF said.
        flags: u32,
    },
    /// An ioctl or fcntl the set-up needs failed.
    #[error("setting up the tap ({what}): {source}")]
    Setup {
        /// Which call.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Checks and sets up `tap`; see the module docs.
pub fn prepare(tap: &File) -> Result<(), TapError> {
    let fd = tap.as_raw_fd();
    // SAFETY: ifreq is plain old data (a name array and a union of integers and sockaddrs);
    // all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `struct ifreq`, which `req` is, for the duration of the
    // call; on anything but a tun/tap fd it fails without touching it.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
        return Err(TapError::NotATap(io::Error::last_os_error()));
    }
    // SAFETY: TUNGETIFF filled the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags }) as u32 & 0xffff;
    let needed = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u32;
    if flags & needed != needed || flags & libc::IFF_TUN as u32 != 0 {
        return Err(TapError::Flags { flags });
    }
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(setup_err("TUNSETVNETHDRSZ"));
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value (the offload bits); 0 turns every
    // offload off.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(setup_err("TUNSETOFFLOAD"));
    }
    let fl = fcntl(tap, FcntlArg::F_GETFL).map_err(|e| TapError::Setup {
        what: "F_GETFL",
        source: e.into(),
    })?;
    let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
    fcntl(tap, FcntlArg::F_SETFL(fl)).map_err(|e| TapError::Setup {
        what: "F_SETFL O_NONBLOCK",
        source: e.into(),
    })?;
    Ok(())
}

fn setup_err(what: &'static str) -> TapError {
    TapError::Setup {
        what,
        source: io::Error::last_os_error(),
    }
}
