//! The tap device that carries the pod's traffic into the VM, joined to the CNI interface the
//! way Kata Containers' "tcfilter" interworking model does:
//!
//! ```text
//!   host bridge ── veth ══ eth0 (pod netns) ──tc ingress: mirred egress redirect──▶ tap0_moat ─▶ fd (QEMU)
//!                            ◀──tc ingress: mirred egress redirect── tap0_moat ◀─ fd (QEMU)
//! ```
//!
//! Every frame arriving on eth0 is redirected to the tap before the netns' own IP stack sees
//! it, and every frame QEMU writes into the tap leaves through eth0. eth0 keeps the addresses
//! and routes the CNI plugins gave it (Kata clears them only in its macvtap model), so CNI
//! CHECK still finds what ADD made; the guest NIC takes eth0's MAC and IP, so the bridge, ARP
//! caches and firewall rules on the host see the same endpoint as for a container.
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: with a virtio-net header QEMU
//! can negotiate checksum and segmentation offloads (TUNSETOFFLOAD) and vhost-net, which is
//! what Kata does too. QEMU detects the flag itself on `-netdev tap,fd=N` (TUNGETIFF).
//!
//! The tap is not persistent: it lives as long as an fd to it is open (moatd's until handed
//! over, then QEMU's), so a VM that dies takes its tap with it and nothing leaks if moatd
//! crashes in between; the netns going away removes it as well. There is nothing to re-attach
//! to after a moatd restart anyway: the VM (QEMU) holds the fd.
//!
//! tc is programmed over rtnetlink (the `rtnetlink` crate's ingress qdisc and u32 redirect
//! filter), not by running `tc`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::netns;

/// The tap's name in every pod netns (each netns has its own).
pub const TAP_NAME: &str = "tap0_moat";

/// `TC_H_INGRESS`: the parent of an ingress qdisc.
const TC_H_INGRESS: u32 = 0xffff_fff1;
/// The ingress qdisc's handle, `ffff:`; also the parent of its filters.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// The CNI interface as the tap was joined to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its index in the netns.
    pub index: u32,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
}

/// Creates the tap in the netns at `netns_path`, gives it `ifname`'s MTU, brings it up and
/// cross-connects the two with tc. Returns the tap's fd (the only one: closing it removes the
/// tap) and `ifname`'s link details.
pub async fn attach(netns_path: &Path, ifname: &str, tap: &str) -> io::Result<(OwnedFd, LinkInfo)> {
    let rt = tokio::runtime::Handle::current();
    let tap_name = tap.to_owned();
    let (fd, handle) = netns::run_in(netns_path, move || {
        let fd = open_tap(&tap_name)?;
        // Keep the netns stack off the tap: no IPv6 link-local address, DAD or router
        // solicitations leaking into the guest. Best effort (IPv6 may be disabled).
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{tap_name}/disable_ipv6"),
            "1",
        );
        // The netlink socket belongs to this thread's (the pod's) netns; it is driven on the
        // caller's runtime.
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok((fd, handle))
    })
    .await?;
    let eth = link_by_name(&handle, ifname)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {ifname}")))?;
    let eth = link_info(&eth);
    let tap_link = link_by_name(&handle, tap)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {tap}")))?;
    let tap_index = tap_link.header.index;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(tap_index)
                .mtu(eth.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl_err("setting MTU and up", e))?;
    for (from, to) in [(eth.index, tap_index), (tap_index, eth.index)] {
        add_ingress_qdisc(&handle, from).await?;
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_HANDLE)
            // tcm_info carries the protocol in network byte order.
            .protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(to)
            .map_err(|e| nl_err("building the redirect filter", e))?
            .execute()
            .await
            .map_err(|e| nl_err("adding the redirect filter", e))?;
    }
    Ok((fd, eth))
}

/// Undoes `attach`: deletes the tap (even while QEMU still holds it) and `ifname`'s ingress
/// qdisc with its filter. A missing netns, tap or qdisc is fine.
pub async fn detach(netns_path: &Path, ifname: &str, tap: &str) -> io::Result<()> {
    if !netns::is_netns(netns_path) {
        return Ok(());
    }
    let handle = connect(netns_path).await?;
    if let Some(t) = link_by_name(&handle, tap).await? {
        match handle.link().del(t.header.index).execute().await {
            Err(e) if errno(&e) != Some(libc::ENODEV) => return Err(nl_err("deleting the tap", e)),
            _ => {}
        }
    }
    if let Some(eth) = link_by_name(&handle, ifname).await? {
        let mut req = handle.qdisc().del(eth.header.index as i32);
        req.message_mut().header.parent = TC_H_INGRESS.into();
        req.message_mut().header.handle = INGRESS_HANDLE.into();
        match req.execute().await {
            // ENOENT/EINVAL: no ingress qdisc there.
            Err(e) if !matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
                return Err(nl_err("deleting the ingress qdisc", e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `tap` exists and is up in the netns.
pub async fn is_up(netns_path: &Path, tap: &str) -> io::Result<bool> {
    let handle = connect(netns_path).await?;
    Ok(link_by_name(&handle, tap).await?.is_some_and(|l| {
        l.header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up)
    }))
}

/// A netlink handle for the netns at `netns_path`.
async fn connect(netns_path: &Path) -> io::Result<Handle> {
    let rt = tokio::runtime::Handle::current();
    netns::run_in(netns_path, move || {
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(handle)
    })
    .await
}

/// Opens a new non-persistent tap named `name` in the calling thread's netns.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?} must have 1 to 15 bytes"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data (a name array and a union of integers and sockaddrs);
    // all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, for the duration
    // of the call; the fd is a /dev/net/tun fd we own.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}

async fn link_by_name(handle: &Handle, name: &str) -> io::Result<Option<LinkMessage>> {
    match handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err("looking up a link", e)),
    }
}

fn link_info(l: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: l.header.index,
        mac: String::new(),
        mtu: 1500,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Address(mac) => {
                info.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            _ => {}
        }
    }
    info
}

async fn add_ingress_qdisc(handle: &Handle, index: u32) -> io::Result<()> {
    match handle.qdisc().add(index as i32).ingress().execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => Err(nl_err("adding an ingress qdisc", e)),
        _ => Ok(()),
    }
}

/// The errno of a netlink NACK.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl_err(what: &str, e: rtnetlink::Error) -> io::Error {
    let kind = match errno(&e) {
        Some(code) => io::Error::from_raw_os_error(code).kind(),
        None => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_info_reads_mac_and_mtu() {
        let mut l = LinkMessage::default();
        l.header.index = 7;
        l.attributes.push(LinkAttribute::Mtu(1450));
        l.attributes
            .push(LinkAttribute::Address(vec![0x0a, 0x58, 0, 1, 0xfe, 0x2]));
        assert_eq!(
            link_info(&l),
            LinkInfo {
                index: 7,
                mac: "0a:58:00:01:fe:02".into(),
                mtu: 1450
            }
        );
    }

    #[test]
    fn tap_names_are_checked() {
        assert!(open_tap("").is_err());
        assert!(open_tap("sixteen-chars-xx").is_err());
        assert!(TAP_NAME.len() < libc::IFNAMSIZ);
    }
}
