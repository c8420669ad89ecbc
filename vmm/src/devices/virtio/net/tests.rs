//! The net device on a real tap, in a network namespace of the test's own: a frame the
//! guest sends comes out of the tap, and a frame the kernel sends into the tap reaches an
//! RX chain with its 12-byte header. Frames are seen and sent on the tap's interface with an
//! AF_PACKET socket. Needs root and /dev/net/tun; skips with the reason otherwise.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, unshare};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::mmio::MmioTransport;
use super::super::test_utils::{MmioDriver, guest_memory};
use super::super::{IrqTrigger, RING_FEATURES, VirtioDevice};
use super::*;

const RX: u16 = RX_QUEUE as u16;
const TX: u16 = TX_QUEUE as u16;
const GUEST_MAC: [u8; 6] = [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x02];
/// IEEE 802 local experimental ethertype: nothing else on the link uses it.
const ETHERTYPE: u16 = 0x88b5;
const TAP_NAME: &str = "moatvt0";

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (a tap and a network namespace need CAP_NET_ADMIN)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

/// Runs `body` on a thread in a new network namespace. `Err` carries a reason to skip.
fn in_new_netns(body: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        body();
        Ok(())
    });
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn open_tap(flags: libc::c_int) -> io::Result<File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = ifreq(TAP_NAME);
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// Brings the tap's interface up; returns its index.
fn link_up() -> i32 {
    // SAFETY: plain socket(2); the fd is owned right away.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(sock >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut req = ifreq(TAP_NAME);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one `struct ifreq`.
    unsafe {
        assert!(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) >= 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert!(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) >= 0);
    }
    let name = CString::new(TAP_NAME).expect("name");
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "tap interface index");
    index as i32
}

/// An AF_PACKET socket on interface `index` (every frame, both directions).
fn packet_socket(index: i32) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index;
    // SAFETY: binds to an address of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind packet socket: {}", io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO reads one timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO");
    fd
}

fn frame(dst: [u8; 6], src: [u8; 6], text: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(text);
    f.resize(60, 0); // the Ethernet minimum, without FCS
    f
}

/// Waits for `want` on the packet socket, skipping the kernel's own traffic.
fn wait_frame(sock: &OwnedFd, want: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: receives into a buffer of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 && &buf[..n as usize] == want {
            return true;
        }
    }
    false
}

fn send_frame(sock: &OwnedFd, f: &[u8]) {
    // SAFETY: sends from a buffer of the length given, on the bound interface.
    let n = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    assert_eq!(n, f.len() as isize, "send: {}", io::Error::last_os_error());
}

#[test]
fn new_refuses_what_is_not_a_tap() {
    let file = tempfile::tempfile().expect("tempfile");
    let err = Net::new(file, GUEST_MAC).err().expect("a plain file");
    assert!(
        matches!(err, NetDeviceError::Tap(TapError::NotATap(_))),
        "{err}"
    );
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let outcome = in_new_netns(|| {
        // A tap without the virtio-net header is refused.
        let plain = open_tap(libc::IFF_TAP | libc::IFF_NO_PI).expect("plain tap");
        let err = Net::new(plain, GUEST_MAC).err().expect("no IFF_VNET_HDR");
        assert!(
            matches!(err, NetDeviceError::Tap(TapError::Flags { .. })),
            "{err}"
        );

        let tap = open_tap(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR).expect("tap");
        let index = link_up();
        let sock = packet_socket(index);
        let dev = Net::new(tap, GUEST_MAC).expect("net device");
        let mut cfg = [0u8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(
            cfg,
            [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x01, 1, 0],
            "mac, LINK_UP"
        );

        let irq = Arc::new(IrqTrigger::new(
            EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        ));
        let mem = guest_memory(8 << 20);
        let mut drv = MmioDriver::new(MmioTransport::new(Box::new(dev), mem.clone(), irq), mem);
        let mac_feature = 1 << virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MAC;
        assert_eq!(
            drv.start(RING_FEATURES | mac_feature, 64),
            RING_FEATURES | mac_feature
        );

        // Guest → tap: header and frame in separate descriptors; the header's junk is zeroed.
        let out = frame([0xff; 6], GUEST_MAC, b"moat guest to host");
        drv.add_chain(TX, &[&[0x5a; VNET_HDR_LEN], &out], &[]);
        drv.kick(TX);
        assert_eq!(drv.wait_used(TX, 1, Duration::from_secs(5)).len(), 1);
        assert!(
            wait_frame(&sock, &out),
            "the guest's frame came out of the tap"
        );

        // Tap → guest, sent while the guest has no RX chain: it waits in the tap.
        let inbound = frame(GUEST_MAC, PEER_MAC, b"moat host to guest");
        send_frame(&sock, &inbound);
        // And the worker does not spin on the readable tap meanwhile.
        let before = thread_cpu_ticks("moat-net").expect("the worker thread");
        std::thread::sleep(Duration::from_millis(500));
        let spent = thread_cpu_ticks("moat-net").expect("the worker thread") - before;
        assert!(
            spent < 10,
            "worker busy without RX chains: {spent} ticks in 0.5 s"
        );
        for _ in 0..16 {
            drv.add_chain(RX, &[], &[2048]);
        }
        drv.kick(RX);
        let mut want = RX_HDR_EXPECTED.to_vec();
        want.extend_from_slice(&inbound);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while !seen.contains(&want) {
            assert!(
                Instant::now() < deadline,
                "frame not received; got {seen:?}"
            );
            for u in drv.wait_used(RX, 1, Duration::from_millis(100)) {
                assert_eq!(u.len as usize, u.data.len());
                assert_eq!(
                    &u.data[..VNET_HDR_LEN],
                    &RX_HDR_EXPECTED,
                    "header of every frame"
                );
                seen.push(u.data);
            }
        }
    });
    if let Err(why) = outcome {
        eprintln!("SKIPPED: {why}");
    }
}

/// User + system CPU time (clock ticks) of this process's thread named `name`.
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // After "pid (comm) ", fields count from 3 (state); utime is 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

/// The header the guest gets: nothing but `num_buffers = 1`.
const RX_HDR_EXPECTED: [u8; VNET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
