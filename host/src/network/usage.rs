//! A pod's network traffic, for PodSandboxStats: the counters of its CNI interface in the
//! pod's network namespace on the host (the tap's peer, so everything the guest sends or
//! receives). Read from `/proc/thread-self/net/dev` on a short-lived thread that joined
//! that namespace, so moatd's own threads never change namespace.

use std::os::fd::AsFd;
use std::path::Path;

use super::error::NetworkError;

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    /// The interface.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets dropped on sending.
    pub tx_dropped: u64,
}

/// The counters of `name` in a `/proc/net/dev` text.
pub fn parse_net_dev(text: &str, name: &str) -> Option<InterfaceUsage> {
    text.lines().skip(2).find_map(|line| {
        let (ifname, rest) = line.split_once(':')?;
        if ifname.trim() != name {
            return None;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
        // bytes packets errs ...
        (f.len() >= 11).then(|| InterfaceUsage {
            name: name.to_owned(),
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_errors: f[2],
            rx_dropped: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_errors: f[10],
            tx_dropped: f.get(11).copied().unwrap_or(0),
        })
    })
}

/// The counters of `name` in the network namespace pinned at `netns`.
pub async fn interface_usage(netns: &Path, name: &str) -> Result<InterfaceUsage, NetworkError> {
    let failed = |reason: String| NetworkError::Netns {
        path: netns.to_owned(),
        reason,
    };
    let ns = std::fs::File::open(netns).map_err(|e| failed(format!("cannot open it: {e}")))?;
    let name = name.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it enters the pod's namespace and ends with it.
    std::thread::spawn(move || {
        let read = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| std::fs::read_to_string("/proc/thread-self/net/dev"));
        let _ = tx.send(read);
    });
    let text = rx
        .await
        .map_err(|_| failed("the counters' reader thread ended".into()))?
        .map_err(|e| failed(format!("cannot read its interface counters: {e}")))?;
    parse_net_dev(&text, &name).ok_or_else(|| failed(format!("it has no interface {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 123456     789    1    4    0     0          0         0    65432     321    2    5    0     0       0          0
";

    #[test]
    fn an_interface_is_read_from_net_dev() {
        assert_eq!(
            parse_net_dev(NET_DEV, "eth0"),
            Some(InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 123456,
                rx_packets: 789,
                rx_errors: 1,
                rx_dropped: 4,
                tx_bytes: 65432,
                tx_packets: 321,
                tx_errors: 2,
                tx_dropped: 5,
            })
        );
        assert_eq!(parse_net_dev(NET_DEV, "eth1"), None);
    }

    #[tokio::test]
    async fn the_current_namespace_is_read_through_its_file() {
        // Joining one's own namespace needs CAP_SYS_ADMIN.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED the_current_namespace_is_read_through_its_file: needs root");
            return;
        }
        let lo = interface_usage(Path::new("/proc/self/ns/net"), "lo")
            .await
            .expect("lo");
        assert_eq!(lo.name, "lo");
        assert!(
            interface_usage(Path::new("/proc/self/ns/net"), "no-such0")
                .await
                .is_err()
        );
    }
}
