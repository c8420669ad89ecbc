//! SetupNetwork: the guest side of the pod network. The VMM gave the virtio-net device the
//! MAC of the pod's CNI interface; here that device is found by MAC, named, given the MTU
//! and the pod's addresses, brought up, and the routes from the CNI result are added.
//! Everything is idempotent (an address or route already there is fine), so a retried call
//! succeeds. The netlink calls sit behind the `Netlink` seam; the order and the checks are
//! tested with a recording fake, the real calls in a throwaway network namespace.

use std::net::IpAddr;

use moat_proto::agent::SetupNetworkRequest;
use tonic::Status;

/// An address or destination with its prefix length.
pub type Cidr = (IpAddr, u8);

/// A link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC, lowercase `aa:bb:...`; empty for links without one (lo).
    pub mac: String,
}

/// The privileged calls, one per netlink request.
pub trait Netlink {
    /// Every link.
    fn links(&self) -> impl Future<Output = std::io::Result<Vec<Link>>> + Send;
    /// Sets a link down (needed to rename it).
    fn down(&self, index: u32) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Renames a link.
    fn rename(&self, index: u32, name: &str) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Sets the MTU (0 leaves it) and brings the link up.
    fn up(&self, index: u32, mtu: u32) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Adds an address; one already there is fine.
    fn add_address(
        &self,
        index: u32,
        addr: Cidr,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Adds a route; one already there is fine.
    fn add_route(
        &self,
        dst: Cidr,
        gateway: Option<IpAddr>,
        index: Option<u32>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// One interface to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Name in the guest.
    pub name: String,
    /// MAC to find it by.
    pub mac: String,
    /// MTU (0 leaves it).
    pub mtu: u32,
    /// Addresses.
    pub addresses: Vec<Cidr>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination.
    pub dst: Cidr,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface name, if given.
    pub device: Option<String>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Interfaces.
    pub interfaces: Vec<InterfacePlan>,
    /// Routes: on-link ones first, so gateways are reachable when theirs are added.
    pub routes: Vec<RoutePlan>,
}

fn parse_cidr(s: &str) -> Result<Cidr, Status> {
    let bad = || Status::invalid_argument(format!("{s:?} is not an address in CIDR notation"));
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

fn normalize_mac(s: &str) -> Result<String, Status> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Status::invalid_argument(format!(
            "{s:?} is not a MAC address"
        )));
    }
    Ok(s.to_ascii_lowercase())
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Plan {
    /// Checks a request.
    pub fn from_request(r: &SetupNetworkRequest) -> Result<Plan, Status> {
        let mut plan = Plan::default();
        for i in &r.interfaces {
            if !valid_ifname(&i.name) {
                return Err(Status::invalid_argument(format!(
                    "invalid interface name {:?}",
                    i.name
                )));
            }
            plan.interfaces.push(InterfacePlan {
                name: i.name.clone(),
                mac: normalize_mac(&i.mac)?,
                mtu: i.mtu,
                addresses: i
                    .addresses
                    .iter()
                    .map(|a| parse_cidr(a))
                    .collect::<Result<_, _>>()?,
            });
        }
        let mut routes = Vec::new();
        for r in &r.routes {
            let gateway = if r.gateway.is_empty() {
                None
            } else {
                Some(r.gateway.parse::<IpAddr>().map_err(|_| {
                    Status::invalid_argument(format!("invalid gateway {:?}", r.gateway))
                })?)
            };
            let device = (!r.device.is_empty()).then(|| r.device.clone());
            if let Some(d) = &device
                && !plan.interfaces.iter().any(|i| &i.name == d)
            {
                return Err(Status::invalid_argument(format!(
                    "route to {} names interface {d}, which the request does not configure",
                    r.destination
                )));
            }
            routes.push(RoutePlan {
                dst: parse_cidr(&r.destination)?,
                gateway,
                device,
            });
        }
        routes.sort_by_key(|r| r.gateway.is_some());
        plan.routes = routes;
        Ok(plan)
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Status {
    move |e| Status::internal(format!("{what}: {e}"))
}

/// Applies a plan: loopback up, interfaces, routes.
pub async fn apply<N: Netlink>(n: &N, plan: &Plan) -> Result<(), Status> {
    let links = n.links().await.map_err(io_err("list links".into()))?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        n.up(lo.index, 0)
            .await
            .map_err(io_err("bring lo up".into()))?;
    }
    let mut names = Vec::new();
    for i in &plan.interfaces {
        let Some(link) = links.iter().find(|l| l.mac == i.mac) else {
            let seen: Vec<String> = links
                .iter()
                .map(|l| {
                    format!(
                        "{} ({})",
                        l.name,
                        if l.mac.is_empty() { "-" } else { &l.mac }
                    )
                })
                .collect();
            return Err(Status::failed_precondition(format!(
                "no guest interface has MAC {}; the guest has {}",
                i.mac,
                seen.join(", ")
            )));
        };
        if link.name != i.name {
            n.down(link.index)
                .await
                .map_err(io_err(format!("set {} down", link.name)))?;
            n.rename(link.index, &i.name)
                .await
                .map_err(io_err(format!("rename {} to {}", link.name, i.name)))?;
        }
        n.up(link.index, i.mtu)
            .await
            .map_err(io_err(format!("bring {} up", i.name)))?;
        for a in &i.addresses {
            n.add_address(link.index, *a)
                .await
                .map_err(io_err(format!("add {}/{} to {}", a.0, a.1, i.name)))?;
        }
        names.push((i.name.clone(), link.index));
    }
    for r in &plan.routes {
        let index = r
            .device
            .as_ref()
            .and_then(|d| names.iter().find(|(n, _)| n == d).map(|(_, i)| *i));
        n.add_route(r.dst, r.gateway, index)
            .await
            .map_err(io_err(format!(
                "add route to {}/{}{}",
                r.dst.0,
                r.dst.1,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            )))?;
    }
    Ok(())
}

/// The real calls, over rtnetlink. Each call opens its own netlink socket, in the network
/// namespace of the calling thread.
pub struct Rtnetlink;

fn nl(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => std::io::Error::from_raw_os_error(-m.raw_code()),
        other => std::io::Error::other(other.to_string()),
    }
}

fn exists_ok(r: Result<(), rtnetlink::Error>) -> std::io::Result<()> {
    match r.map_err(nl) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn handle() -> std::io::Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

impl Netlink for Rtnetlink {
    async fn links(&self) -> std::io::Result<Vec<Link>> {
        use rtnetlink::packet_route::link::LinkAttribute;
        use tokio_stream::StreamExt as _;
        let h = handle()?;
        let mut out = Vec::new();
        let s = h.link().get().execute();
        tokio::pin!(s);
        while let Some(m) = s.next().await {
            let m = m.map_err(nl)?;
            let mut l = Link {
                index: m.header.index,
                name: String::new(),
                mac: String::new(),
            };
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => l.name = n.clone(),
                    LinkAttribute::Address(mac) if mac.len() == 6 => {
                        l.mac = mac
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":");
                    }
                    _ => {}
                }
            }
            out.push(l);
        }
        Ok(out)
    }

    async fn down(&self, index: u32) -> std::io::Result<()> {
        let h = handle()?;
        let m = rtnetlink::LinkUnspec::new_with_index(index).down().build();
        h.link().set(m).execute().await.map_err(nl)
    }

    async fn rename(&self, index: u32, name: &str) -> std::io::Result<()> {
        let h = handle()?;
        let m = rtnetlink::LinkUnspec::new_with_index(index)
            .name(name.to_owned())
            .build();
        h.link().set(m).execute().await.map_err(nl)
    }

    async fn up(&self, index: u32, mtu: u32) -> std::io::Result<()> {
        let h = handle()?;
        let mut b = rtnetlink::LinkUnspec::new_with_index(index).up();
        if mtu > 0 {
            b = b.mtu(mtu);
        }
        h.link().set(b.build()).execute().await.map_err(nl)
    }

    async fn add_address(&self, index: u32, addr: Cidr) -> std::io::Result<()> {
        let h = handle()?;
        exists_ok(h.address().add(index, addr.0, addr.1).execute().await)
    }

    async fn add_route(
        &self,
        dst: Cidr,
        gateway: Option<IpAddr>,
        index: Option<u32>,
    ) -> std::io::Result<()> {
        let h = handle()?;
        fn invalid(e: impl std::fmt::Display) -> std::io::Error {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        }
        let mut b = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.0, dst.1)
            .map_err(invalid)?;
        if let Some(g) = gateway {
            b = b.gateway(g).map_err(invalid)?;
        } else {
            b = b.scope(rtnetlink::packet_route::route::RouteScope::Link);
        }
        if let Some(i) = index {
            b = b.output_interface(i);
        }
        exists_ok(h.route().add(b.build()).execute().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::agent::{Interface, Route};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        links: Vec<Link>,
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn push(&self, c: String) -> std::io::Result<()> {
            self.calls.lock().expect("lock").push(c);
            Ok(())
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().expect("lock").clone()
        }
    }

    impl Netlink for Recorder {
        async fn links(&self) -> std::io::Result<Vec<Link>> {
            Ok(self.links.clone())
        }
        async fn down(&self, index: u32) -> std::io::Result<()> {
            self.push(format!("down {index}"))
        }
        async fn rename(&self, index: u32, name: &str) -> std::io::Result<()> {
            self.push(format!("rename {index} {name}"))
        }
        async fn up(&self, index: u32, mtu: u32) -> std::io::Result<()> {
            self.push(format!("up {index} mtu {mtu}"))
        }
        async fn add_address(&self, index: u32, a: Cidr) -> std::io::Result<()> {
            self.push(format!("addr {index} {}/{}", a.0, a.1))
        }
        async fn add_route(
            &self,
            dst: Cidr,
            gateway: Option<IpAddr>,
            index: Option<u32>,
        ) -> std::io::Result<()> {
            self.push(format!("route {}/{} {gateway:?} {index:?}", dst.0, dst.1))
        }
    }

    fn request() -> SetupNetworkRequest {
        SetupNetworkRequest {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0A:58:0A:C9:00:05".into(),
                mtu: 1450,
                addresses: vec!["10.201.0.5/24".into(), "fd00::5/64".into()],
            }],
            routes: vec![
                Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.201.0.1".into(),
                    device: "eth0".into(),
                },
                Route {
                    destination: "10.202.0.0/16".into(),
                    gateway: String::new(),
                    device: "eth0".into(),
                },
            ],
        }
    }

    fn guest() -> Recorder {
        Recorder {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    mac: String::new(),
                },
                Link {
                    index: 2,
                    name: "enp0s1".into(),
                    mac: "0a:58:0a:c9:00:05".into(),
                },
            ],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_nic_is_found_by_mac_renamed_addressed_and_routed_in_order() {
        let r = guest();
        let plan = Plan::from_request(&request()).expect("plan");
        apply(&r, &plan).await.expect("apply");
        assert_eq!(
            r.calls(),
            vec![
                "up 1 mtu 0",
                "down 2",
                "rename 2 eth0",
                "up 2 mtu 1450",
                "addr 2 10.201.0.5/24",
                "addr 2 fd00::5/64",
                "route 10.202.0.0/16 None Some(2)",
                "route 0.0.0.0/0 Some(10.201.0.1) Some(2)",
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_mac_names_what_the_guest_has() {
        let mut r = guest();
        r.links.pop();
        let plan = Plan::from_request(&request()).expect("plan");
        let e = apply(&r, &plan).await.expect_err("no such NIC");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("0a:58:0a:c9:00:05") && e.message().contains("lo"));
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        type Edit = Box<dyn Fn(&mut SetupNetworkRequest)>;
        let edits: Vec<Edit> = vec![
            Box::new(|r| r.interfaces[0].mac = "0a:58".into()),
            Box::new(|r| r.interfaces[0].name = "a/b".into()),
            Box::new(|r| r.interfaces[0].addresses = vec!["10.0.0.1".into()]),
            Box::new(|r| r.interfaces[0].addresses = vec!["10.0.0.1/33".into()]),
            Box::new(|r| r.routes[0].gateway = "nope".into()),
            Box::new(|r| r.routes[0].device = "eth9".into()),
        ];
        for edit in edits {
            let mut req = request();
            edit(&mut req);
            let e = Plan::from_request(&req).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        }
    }

    #[test]
    fn a_real_namespace_is_configured_and_a_retry_is_fine() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED a_real_namespace_is_configured_and_a_retry_is_fine: needs root");
            return;
        }
        let out = std::thread::spawn(|| {
            // SAFETY: unshare on this throwaway thread only changes its own namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let h = handle().expect("netlink");
                // A veth pair stands in for the virtio NIC (the dummy module may be absent).
                h.link()
                    .add(
                        rtnetlink::LinkVeth::new("nic0", "peer0")
                            .address(vec![0x0a, 0x58, 0x0a, 0xc9, 0x00, 0x05])
                            .build(),
                    )
                    .execute()
                    .await
                    .expect("add veth");
                h.link()
                    .set(rtnetlink::LinkUnspec::new_with_name("peer0").up().build())
                    .execute()
                    .await
                    .expect("peer up");
                let plan = Plan::from_request(&request()).expect("plan");
                apply(&Rtnetlink, &plan).await.expect("apply");
                apply(&Rtnetlink, &plan).await.expect("apply again");
                let links = Rtnetlink.links().await.expect("links");
                assert!(
                    links
                        .iter()
                        .any(|l| l.name == "eth0" && l.mac == "0a:58:0a:c9:00:05")
                );
            });
            let ip = |args: &[&str]| {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let out = std::process::Command::new("nsenter")
                    .arg(format!(
                        "--net=/proc/{}/task/{tid}/ns/net",
                        std::process::id()
                    ))
                    .arg("ip")
                    .args(args)
                    .output()
                    .expect("ip");
                String::from_utf8_lossy(&out.stdout).to_string()
            };
            (
                ip(&["addr", "show", "eth0"]),
                ip(&["route"]),
                ip(&["link", "show", "lo"]),
            )
        })
        .join()
        .expect("thread");
        let (addr, route, lo) = out;
        assert!(addr.contains("mtu 1450") && addr.contains("UP"), "{addr}");
        assert!(
            addr.contains("10.201.0.5/24") && addr.contains("fd00::5/64"),
            "{addr}"
        );
        assert!(route.contains("default via 10.201.0.1 dev eth0"), "{route}");
        assert!(route.contains("10.202.0.0/16 dev eth0"), "{route}");
        assert!(lo.contains("UP"), "{lo}");
    }
}
