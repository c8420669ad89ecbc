//! `moatd check`: what this host offers moatd, one finding per item (KVM, devices, cgroups,
//! CNI, the guest image, QEMU, each runtime handler's VMM), each with why and what to do.
//!
//! - `facts`: reads the host (devices, /proc, /sys, files, `qemu --version`).
//! - `items`: turns facts into findings, one pure function per item.
//!
//! Printing is the caller's: each `Finding` displays as one line.

pub mod facts;
pub mod items;

use std::fmt;

pub use facts::HostFacts;

use crate::config::Config;

/// How an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Present and usable.
    Ok,
    /// Absent or unusable.
    Missing,
    /// Usable with a caveat, or a choice that will not work well here.
    Warn,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Missing => "missing",
            Level::Warn => "warn",
        })
    }
}

/// One item of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`KVM`, `tun`, `handler moat`).
    pub item: String,
    /// How it stands.
    pub level: Level,
    /// What was found, why it matters, and the fix when it is not ok.
    pub detail: String,
    /// The configured handlers cannot run pods here because of it.
    pub blocking: bool,
}

impl Finding {
    /// A usable item.
    pub fn ok(item: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(item, Level::Ok, detail, false)
    }
    /// An item with a caveat.
    pub fn warn(item: impl Into<String>, detail: impl Into<String>, blocking: bool) -> Self {
        Self::new(item, Level::Warn, detail, blocking)
    }
    /// An absent or unusable item.
    pub fn missing(item: impl Into<String>, detail: impl Into<String>, blocking: bool) -> Self {
        Self::new(item, Level::Missing, detail, blocking)
    }
    fn new(
        item: impl Into<String>,
        level: Level,
        detail: impl Into<String>,
        blocking: bool,
    ) -> Self {
        Self {
            item: item.into(),
            level,
            detail: detail.into(),
            blocking,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {:<18} {}", self.level, self.item, self.detail)
    }
}

/// Every finding for this host and config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The findings, in the order they print.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether the configured handlers can run pods here.
    pub fn pods_can_run(&self) -> bool {
        !self.findings.iter().any(|f| f.blocking)
    }

    /// The closing line: the verdict and, when negative, the items in the way.
    pub fn verdict(&self) -> String {
        let blocking: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.blocking)
            .map(|f| f.item.as_str())
            .collect();
        if blocking.is_empty() {
            "the configured runtime handlers can run pods on this host".into()
        } else {
            format!(
                "pods cannot run on this host until these are fixed: {}",
                blocking.join(", ")
            )
        }
    }
}

/// The items that decide NetworkReady; every other blocking item makes RuntimeReady false.
const NETWORK_ITEMS: &[&str] = &["CNI network", "CNI plugins", "tun"];

impl Report {
    /// Why pods cannot run here (RuntimeReady false), if they cannot: the blocking items
    /// that are not about networking.
    pub fn runtime_problem(&self) -> Option<String> {
        let why: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.blocking && !NETWORK_ITEMS.contains(&f.item.as_str()))
            .map(|f| format!("{}: {}", f.item, f.detail))
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Why pod networks cannot be set up (NetworkReady false), if they cannot: no CNI
    /// network yet, or a blocking networking item.
    pub fn network_problem(&self) -> Option<String> {
        let why: Vec<String> = self
            .findings
            .iter()
            .filter(|f| NETWORK_ITEMS.contains(&f.item.as_str()))
            .filter(|f| f.blocking || (f.item == "CNI network" && f.level != Level::Ok))
            .map(|f| format!("{}: {}", f.item, f.detail))
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Probes the host and judges it against `config`.
pub fn run(config: &Config) -> Report {
    items::evaluate(config, &HostFacts::probe(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_blocked_by_any_blocking_finding() {
        let mut r = Report {
            findings: vec![
                Finding::ok("KVM", "fine"),
                Finding::warn("cgroup v2", "hybrid", false),
            ],
        };
        assert!(r.pods_can_run());
        assert!(r.verdict().contains("can run pods"), "{}", r.verdict());
        r.findings
            .push(Finding::missing("QEMU", "not installed", true));
        assert!(!r.pods_can_run());
        assert!(r.verdict().ends_with("fixed: QEMU"), "{}", r.verdict());
        assert_eq!(r.runtime_problem().as_deref(), Some("QEMU: not installed"));
        assert_eq!(r.network_problem(), None);
        r.findings
            .push(Finding::warn("CNI network", "no CNI network config", false));
        assert_eq!(
            r.network_problem().as_deref(),
            Some("CNI network: no CNI network config")
        );
        assert_eq!(r.runtime_problem().as_deref(), Some("QEMU: not installed"));
        let line = Finding::missing("tun", "no /dev/net/tun", false).to_string();
        assert!(line.starts_with("missing  tun "), "{line}");
        assert!(line.ends_with(" no /dev/net/tun"), "{line}");
    }

    #[test]
    fn this_host_gets_one_finding_per_item_and_handler() {
        let r = run(&Config::default());
        for f in &r.findings {
            eprintln!("{f}");
        }
        eprintln!("{}", r.verdict());
        let items: Vec<&str> = r.findings.iter().map(|f| f.item.as_str()).collect();
        assert_eq!(
            items,
            [
                "KVM",
                "vhost-vsock",
                "tun",
                "cgroup v2",
                "CNI network",
                "CNI plugins",
                "guest image",
                "built-in kernel",
                "QEMU",
                "handler moat"
            ]
        );
        assert_eq!(r.pods_can_run(), r.verdict().contains("can run pods"));
    }
}
