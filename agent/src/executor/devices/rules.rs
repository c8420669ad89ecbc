//! The device cgroup's rules: the spec's `linux.resources.devices`, checked, followed by
//! runc's default devices; and what a list of them decides (`Filter`).

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use crate::executor::error::{Error, Result};

/// mknod (`BPF_DEVCG_ACC_MKNOD`).
pub(super) const MKNOD: u8 = 1;
/// open for reading (`BPF_DEVCG_ACC_READ`).
pub(super) const READ: u8 = 2;
/// open for writing (`BPF_DEVCG_ACC_WRITE`).
pub(super) const WRITE: u8 = 4;
/// `rwm`.
pub(super) const ALL: u8 = MKNOD | READ | WRITE;

/// The devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Block and character devices (`a`).
    Any,
    /// Block devices (`b`, `BPF_DEVCG_DEV_BLOCK`).
    Block,
    /// Character devices (`c`, `BPF_DEVCG_DEV_CHAR`).
    Char,
}

impl Kind {
    /// The kernel's device type number (`BPF_DEVCG_DEV_*`); `None` for any.
    pub(super) fn devcg(self) -> Option<i32> {
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
pub(super) struct Rule {
    pub(super) allow: bool,
    pub(super) kind: Kind,
    pub(super) major: Option<u32>,
    pub(super) minor: Option<u32>,
    pub(super) access: u8,
}

impl Rule {
    pub(super) const fn char(major: u32, minor: Option<u32>, access: u8) -> Rule {
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
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
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
pub(super) const DEFAULTS: &[Rule] = &[
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
pub(super) fn rules(resources: Option<&LinuxResources>) -> Result<Vec<Rule>> {
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
pub(super) struct Filter {
    pub(super) initial: u8,
    pub(super) rules: Vec<Rule>,
}

impl Filter {
    /// The filter for `rules`; `None` when they allow every access to every device.
    pub(super) fn new(rules: &[Rule]) -> Option<Filter> {
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
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
    pub(super) fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let allowed = self
            .rules
            .iter()
            .filter(|r| r.covers(kind, major, minor))
            .fold(self.initial, |a, r| r.fold(a));
        access & !allowed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{B, C, allow_all, cgroup_rule, deny_all, filter, resources};
    use super::*;

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
}
