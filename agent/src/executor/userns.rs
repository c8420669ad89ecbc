//! User namespaces: the id mappings of a pod's user namespace (CRI NamespaceMode POD for
//! users, `hostUsers: false`), checked before the kernel sees them, written to
//! /proc/PID/uid_map and gid_map by the agent (root in the VM, the namespace's parent), and
//! read back to check the namespace a container joins.
//!
//! How processes get into one:
//!
//! - The pod init (`PodInit::spawn` with mappings) is cloned with CLONE_NEWUSER and
//!   CLONE_NEWPID together, so the pod's PID namespace is owned by the new user namespace;
//!   it waits on a pipe until the agent has written its maps, becomes root of the namespace
//!   (uid and gid 0 inside, the mapped ids outside) and execs.
//! - A container's spec names the namespace by path (`{"type": "user", "path":
//!   "/proc/<init>/ns/user"}`, the agent's rewrite): its process first does what needs the
//!   VM's root (rlimits, oom_score_adj, joining namespaces the VM's user namespace owns),
//!   then setns(2)s into the user namespace and becomes its root, and only then unshares
//!   its mount, UTS, IPC and cgroup namespaces, which the user namespace thereby owns. A
//!   new PID namespace must be owned by it too (so that the container may mount /proc for
//!   it): the process unshares it and clones the container's init into it with
//!   CLONE_PARENT, so that the init is still the agent's child (`child`, `container`).
//! - What a user namespace cannot mount is replaced as runc does: device nodes are bound
//!   from the VM's /dev onto empty files, sysfs (the network namespace is the VM's) by a
//!   recursive read-only bind of the VM's /sys, cgroup2 (the cgroup namespace is the
//!   VM's) by one of the cgroup root, mqueue (the IPC namespace is the VM's) by a bind of
//!   the VM's /dev/mqueue, or left out when the VM has none; a bind's remount keeps the
//!   flags its source mount locks (nosuid, nodev, noexec, read-only, atime).
//!
//! Creating a user namespace of the container's own (a spec entry without a path) is not
//! supported: `plan::ns::ns_plan` refuses it.

use std::fmt;

// MAX_EXTENTS is re-exported for the tests only.
#[cfg_attr(not(test), allow(unused_imports))]
pub use moat_proto::userns::MAX_EXTENTS;
use moat_proto::userns::to_host;
pub use moat_proto::userns::{IdMap, map_text};

/// A user namespace's uid and gid mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMappings {
    /// The uid_map.
    pub uids: Vec<IdMap>,
    /// The gid_map.
    pub gids: Vec<IdMap>,
}

fn parse_map(text: &str) -> Option<Vec<IdMap>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace().map(str::parse::<u32>);
            let m = IdMap {
                container_id: w.next()?.ok()?,
                host_id: w.next()?.ok()?,
                length: w.next()?.ok()?,
            };
            w.next().is_none().then_some(m)
        })
        .collect()
}

fn sorted(maps: &[IdMap]) -> Vec<IdMap> {
    let mut v = maps.to_vec();
    v.sort();
    v
}

impl IdMappings {
    /// Checks them as the kernel would, and more: each side non-empty, at most
    /// `MAX_EXTENTS` lines of under a page, no empty range, no range past 2^32 - 2, no two
    /// ranges overlapping inside or outside, and container uid 0 and gid 0 mapped (the
    /// agent makes every process root of the namespace before it takes the spec's user).
    pub fn validate(&self) -> Result<(), String> {
        moat_proto::userns::check(&self.uids, &self.gids)
    }

    /// The VM's uid and gid of the namespace's root (container uid 0, gid 0).
    pub fn root(&self) -> Option<(u32, u32)> {
        Some((to_host(&self.uids, 0)?, to_host(&self.gids, 0)?))
    }

    /// The same mappings, whatever the order of their lines.
    pub fn same_as(&self, other: &IdMappings) -> bool {
        sorted(&self.uids) == sorted(&other.uids) && sorted(&self.gids) == sorted(&other.gids)
    }

    /// The spec's linux.uidMappings and gidMappings (empty where it has none).
    pub fn from_spec(linux: &oci_spec::runtime::Linux) -> IdMappings {
        let conv = |v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
            v.iter()
                .flatten()
                .map(|m| IdMap {
                    container_id: m.container_id(),
                    host_id: m.host_id(),
                    length: m.size(),
                })
                .collect()
        };
        IdMappings {
            uids: conv(linux.uid_mappings()),
            gids: conv(linux.gid_mappings()),
        }
    }

    /// Writes them as the maps of process `pid`, which must have just entered a new user
    /// namespace (each file takes one write, once).
    pub fn write(&self, pid: i32) -> std::io::Result<()> {
        use std::io::Write;
        for (file, maps) in [("uid_map", &self.uids), ("gid_map", &self.gids)] {
            let text = map_text(maps);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/{file}"))?;
            let n = f.write(text.as_bytes())?;
            if n != text.len() {
                return Err(std::io::Error::other(format!(
                    "{file}: {n} of {} bytes written",
                    text.len()
                )));
            }
        }
        Ok(())
    }

    /// The maps of process `pid`'s user namespace.
    pub fn read(pid: i32) -> std::io::Result<IdMappings> {
        let read = |file: &str| -> std::io::Result<Vec<IdMap>> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
            parse_map(&text).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("/proc/{pid}/{file}: {text:?}"),
                )
            })
        };
        Ok(IdMappings {
            uids: read("uid_map")?,
            gids: read("gid_map")?,
        })
    }
}

impl fmt::Display for IdMappings {
    /// `uids 0:100000:65536, gids 0:100000:65536` (container:host:length).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |maps: &[IdMap]| {
            if maps.is_empty() {
                return "none".to_string();
            }
            maps.iter()
                .map(|m| format!("{}:{}:{}", m.container_id, m.host_id, m.length))
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(f, "uids {}, gids {}", side(&self.uids), side(&self.gids))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pod(host: u32) -> IdMappings {
        let m = IdMap {
            container_id: 0,
            host_id: host,
            length: 65536,
        };
        IdMappings {
            uids: vec![m],
            gids: vec![m],
        }
    }

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMap {
        IdMap {
            container_id,
            host_id,
            length,
        }
    }

    fn with_uids(uids: Vec<IdMap>) -> IdMappings {
        IdMappings {
            uids,
            ..pod(100_000)
        }
    }

    #[test]
    fn good_mappings_pass_and_give_the_root() {
        let p = pod(100_000);
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.root(), Some((100_000, 100_000)));
        let split = with_uids(vec![m(1000, 201_000, 1000), m(0, 200_000, 1000)]);
        assert_eq!(split.validate(), Ok(()));
        assert_eq!(split.root(), Some((200_000, 100_000)));
        // The last mappable id is 2^32 - 2.
        assert_eq!(with_uids(vec![m(0, u32::MAX - 1, 1)]).validate(), Ok(()));
        assert_eq!(p.to_string(), "uids 0:100000:65536, gids 0:100000:65536");
    }

    #[test]
    fn bad_mappings_say_why() {
        let err = |p: IdMappings| p.validate().expect_err("invalid");
        assert_eq!(err(with_uids(vec![])), "no uid mappings");
        assert_eq!(
            err(IdMappings {
                gids: vec![],
                ..pod(1)
            }),
            "no gid mappings"
        );
        assert_eq!(
            err(with_uids(vec![m(0, 1, 0)])),
            "uid mapping 0 has length 0"
        );
        assert_eq!(
            err(with_uids(vec![m(0, 1, 1), m(u32::MAX - 9, 2, 10)])),
            "uid mapping 1: container ids 4294967286 + 10 overflow 32 bits"
        );
        assert_eq!(
            err(with_uids(vec![m(0, u32::MAX, 1)])),
            "uid mapping 0: host ids 4294967295 + 1 overflow 32 bits"
        );
        assert_eq!(
            err(with_uids(vec![m(0, 100, 10), m(5, 1000, 10)])),
            "uid mappings 0 and 1 overlap on the container side"
        );
        assert_eq!(
            err(with_uids(vec![m(100, 1009, 10), m(0, 1000, 10)])),
            "uid mappings 0 and 1 overlap on the host side"
        );
        // Adjacent ranges are fine.
        assert_eq!(
            with_uids(vec![m(0, 1000, 10), m(10, 1010, 10)]).validate(),
            Ok(())
        );
        let many: Vec<IdMap> = (0..=MAX_EXTENTS as u32)
            .map(|i| m(i, 1000 + i, 1))
            .collect();
        assert_eq!(
            err(with_uids(many)),
            "341 uid mappings, over the 340 the kernel takes"
        );
        let long: Vec<IdMap> = (0..200u32)
            .map(|i| m(i * 10_000_000, 2_000_000_000 + i * 10_000_000, 1_000_000))
            .collect();
        assert!(err(with_uids(long)).contains("over the kernel's 4095"));
        assert_eq!(
            err(with_uids(vec![m(1, 100, 10)])),
            "container uid 0 and gid 0 must be mapped"
        );
    }

    #[test]
    fn order_does_not_matter_and_maps_parse_back() {
        let a = with_uids(vec![m(0, 200_000, 1000), m(1000, 201_000, 1000)]);
        let b = with_uids(vec![m(1000, 201_000, 1000), m(0, 200_000, 1000)]);
        assert!(a.same_as(&b));
        assert!(!a.same_as(&pod(100_000)));
        let text = map_text(&a.uids);
        assert_eq!(text, "0 200000 1000\n1000 201000 1000\n");
        // As the kernel shows them.
        assert_eq!(
            parse_map("         0     200000       1000\n      1000     201000       1000\n"),
            Some(a.uids.clone())
        );
        assert_eq!(parse_map("0 1"), None);
        assert_eq!(parse_map("0 1 2 3"), None);
    }

    #[test]
    fn the_spec_mappings_convert() {
        let mut linux = oci_spec::runtime::Linux::default();
        assert_eq!(IdMappings::from_spec(&linux), IdMappings::default());
        let lm = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100_000u32)
            .size(65536u32)
            .build()
            .expect("mapping");
        linux.set_uid_mappings(Some(vec![lm]));
        linux.set_gid_mappings(Some(vec![lm]));
        assert_eq!(IdMappings::from_spec(&linux), pod(100_000));
    }
}
