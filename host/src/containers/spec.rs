//! The OCI runtime spec of a container, from the CRI request merged with the image config
//! the way containerd does it: entrypoint/cmd/args, env, working dir, user, security
//! context, resources, and the defaults (mounts, masked paths, capabilities) a container
//! runtime gives every container.

use serde_json::{Value, json};

/// The parts of the image config that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`K=V`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

/// What the CRI request asks for, in moatd's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInput {
    /// CRI `command` (replaces the entrypoint).
    pub command: Vec<String>,
    /// CRI `args` (replace the image's Cmd).
    pub args: Vec<String>,
    /// CRI `envs`.
    pub env: Vec<(String, String)>,
    /// CRI `working_dir`.
    pub working_dir: String,
    /// `run_as_user`.
    pub run_as_user: Option<i64>,
    /// `run_as_group`.
    pub run_as_group: Option<i64>,
    /// `run_as_username`.
    pub run_as_username: String,
    /// `supplemental_groups`.
    pub supplemental_groups: Vec<i64>,
    /// SupplementalGroupsPolicy Strict: no groups from the image's /etc/group.
    pub strict_groups: bool,
    /// Allocate a TTY.
    pub tty: bool,
    /// Keep stdin open for Attach.
    pub stdin: bool,
    /// Close stdin when the first attached client detaches.
    pub stdin_once: bool,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Privileged container (all capabilities, no seccomp, no masked paths).
    pub privileged: bool,
    /// Capabilities to add (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`).
    pub add_caps: Vec<String>,
    /// Capabilities to drop.
    pub drop_caps: Vec<String>,
    /// The seccomp profile asked for.
    pub seccomp: Seccomp,
    /// Paths masked in the container (the request's list; privileged: none).
    pub masked_paths: Vec<String>,
    /// Paths made read-only in the container (the request's list; privileged: none).
    pub readonly_paths: Vec<String>,
    /// An IPC namespace of its own (otherwise the pod's, the VM's).
    pub ipc_private: bool,
    /// The pod's user namespace, which the container joins (set by the manager).
    pub userns: Option<crate::userns::UserNamespace>,
    /// no_new_privileges.
    pub no_new_privs: bool,
    /// CPU quota and period.
    pub cpu: Option<(i64, i64)>,
    /// CPU shares.
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// The pod's hostname.
    pub hostname: String,
    /// Bind mounts of volumes, from the guest's view of the volumes share.
    pub binds: Vec<Bind>,
}

/// A container's seccomp profile, as the CRI names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// The request names none: Unconfined per the CRI, unless the operator configured
    /// otherwise (`containers.seccomp_when_unset`).
    #[default]
    Unset,
    /// No filter.
    Unconfined,
    /// Moat's RuntimeDefault profile (Docker's default), built in the guest.
    RuntimeDefault,
    /// A profile file on the node.
    Localhost(std::path::PathBuf),
}

/// A volume's bind mount into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    /// The source in the guest (under the volumes share).
    pub source: String,
    /// Where it appears in the container.
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
    /// Read-only down to every mount below.
    pub recursive_read_only: bool,
}

/// The runtime spec plus what the agent must still resolve inside the image.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltSpec {
    /// The OCI runtime spec JSON.
    pub spec: Value,
    /// The image user to resolve from the image's /etc/passwd, if any.
    pub image_user: String,
    /// Apply the RuntimeDefault seccomp profile.
    pub default_seccomp: bool,
}

/// Why a spec cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Docker's and containerd's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the guest kernel (6.1) knows.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The paths containerd masks by default (kubelet sends the same list).
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The paths containerd makes read-only by default (kubelet sends the same list).
pub const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn cap_name(c: &str) -> Result<String, SpecError> {
    let up = c.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError(format!("unknown capability {c:?}")))
    }
}

fn capabilities(i: &ContainerInput) -> Result<Vec<String>, SpecError> {
    if i.privileged {
        return Ok(ALL_CAPS.iter().map(|s| s.to_string()).collect());
    }
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    for a in &i.add_caps {
        if a.eq_ignore_ascii_case("ALL") {
            caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
        } else {
            let c = cap_name(a)?;
            if !caps.contains(&c) {
                caps.push(c);
            }
        }
    }
    for d in &i.drop_caps {
        if d.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            let c = cap_name(d)?;
            caps.retain(|x| *x != c);
        }
    }
    Ok(caps)
}

/// The process arguments: CRI command replaces the entrypoint, CRI args replace Cmd.
pub fn process_args(image: &ImageDefaults, i: &ContainerInput) -> Result<Vec<String>, SpecError> {
    let (entry, cmd) = if !i.command.is_empty() {
        (i.command.clone(), i.args.clone())
    } else {
        (
            image.entrypoint.clone(),
            if i.args.is_empty() {
                image.cmd.clone()
            } else {
                i.args.clone()
            },
        )
    };
    let all: Vec<String> = entry.into_iter().chain(cmd).collect();
    if all.is_empty() {
        return Err(SpecError(
            "no command: the image has no Entrypoint or Cmd and the request gives none".into(),
        ));
    }
    Ok(all)
}

/// Image env, then the request's, later keys overriding earlier ones.
pub fn merge_env(image: &[String], request: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(ok, _)| ok == k) {
        Some(e) => e.1 = v.to_owned(),
        None => out.push((k.to_owned(), v.to_owned())),
    };
    for e in image {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for (k, v) in request {
        set(k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The mounts every container gets.
fn default_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "rprivate", "ro"]}),
        json!({"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "rprivate", "ro"]}),
        json!({"destination": "/etc/hostname", "type": "bind", "source": "/etc/hostname", "options": ["rbind", "rprivate", "ro"]}),
    ]
}

/// The device cgroup rules (`linux.resources.devices`), as containerd's CRI plugin writes
/// them: a privileged container may use every device; any other starts from "deny
/// everything". moatd refuses CRI `devices` (the node's devices are not the guest's), so no
/// allow rule follows; the guest's executor adds runc's default devices (/dev/null,
/// /dev/zero, ptys...) after these rules and enforces the list with a BPF program on the
/// container's cgroup.
fn device_rules(i: &ContainerInput) -> Value {
    json!([{"allow": i.privileged, "access": "rwm"}])
}

/// Builds the runtime spec for container `id` of sandbox `sandbox_id`.
pub fn build(
    id: &str,
    sandbox_id: &str,
    image: &ImageDefaults,
    i: &ContainerInput,
) -> Result<BuiltSpec, SpecError> {
    let args = process_args(image, i)?;
    let env = merge_env(&image.env, &i.env);
    let cwd = if !i.working_dir.is_empty() {
        i.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".into()
    };
    if !cwd.starts_with('/') {
        return Err(SpecError(format!("working dir {cwd:?} must be absolute")));
    }
    if i.run_as_group.is_some() && i.run_as_user.is_none() && i.run_as_username.is_empty() {
        return Err(SpecError(
            "run_as_group needs run_as_user or run_as_username: a group alone cannot say which user runs".into(),
        ));
    }
    // The user: CRI's run_as_user wins, then run_as_username, then the image's User. The
    // guest resolves it in the image (the primary group from /etc/passwd unless
    // run_as_group names one; the groups of /etc/group under the Merge policy), as
    // containerd does.
    let group = i.run_as_group.map(|g| format!(":{g}")).unwrap_or_default();
    let (uid, image_user) = match (i.run_as_user, i.run_as_username.as_str()) {
        (Some(u), _) if u < 0 => return Err(SpecError(format!("run_as_user {u} is negative"))),
        (Some(u), _) => (u, format!("{u}{group}")),
        (None, name) if !name.is_empty() => (0, format!("{name}{group}")),
        (None, _) => (0, image.user.clone()),
    };
    let gid = i.run_as_group.unwrap_or(0);
    if gid < 0 || i.supplemental_groups.iter().any(|g| *g < 0) {
        return Err(SpecError("group ids must not be negative".into()));
    }
    let caps = capabilities(i)?;
    let mut resources = json!({"devices": device_rules(i)});
    if let Some((quota, period)) = i.cpu {
        resources["cpu"] = json!({"quota": quota, "period": period});
    }
    if let Some(shares) = i.cpu_shares {
        resources["cpu"]["shares"] = json!(shares);
    }
    if let Some(m) = i.memory_limit {
        resources["memory"] = json!({"limit": m});
    }
    let mut mounts = default_mounts();
    for b in &i.binds {
        let access = match (b.read_only, b.recursive_read_only) {
            (true, true) => "rro",
            (true, false) => "ro",
            (false, _) => "rw",
        };
        mounts.push(json!({
            "destination": b.destination,
            "type": "bind",
            "source": b.source,
            "options": ["rbind", "rprivate", access],
        }));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if i.ipc_private {
        namespaces.push(json!({"type": "ipc"}));
    }
    // The agent joins the pod's user namespace when the mappings are the pod's.
    if i.userns.is_some() {
        namespaces.push(json!({"type": "user"}));
    }
    let seccomp = if i.privileged {
        None
    } else {
        match &i.seccomp {
            Seccomp::Localhost(path) => Some(super::seccomp::load_localhost(path, &caps)?),
            _ => None,
        }
    };
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": i.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": i.supplemental_groups},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1_048_576u64, "soft": 1_048_576u64}],
            "noNewPrivileges": i.no_new_privs,
        },
        "root": {"path": "rootfs", "readonly": i.readonly_rootfs},
        "hostname": i.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": format!("/moat/{}/{id}", &sandbox_id[..12.min(sandbox_id.len())]),
            "resources": resources,
            "maskedPaths": if i.privileged { &[][..] } else { &i.masked_paths[..] },
            "readonlyPaths": if i.privileged { &[][..] } else { &i.readonly_paths[..] },
        },
    });
    let mut spec = spec;
    if let Some(u) = &i.userns {
        let maps = |m: &[crate::userns::IdMapping]| {
            m.iter()
                .map(crate::userns::IdMapping::to_oci)
                .collect::<Vec<_>>()
        };
        spec["linux"]["uidMappings"] = json!(maps(&u.uids));
        spec["linux"]["gidMappings"] = json!(maps(&u.gids));
    }
    if let Some(profile) = seccomp {
        spec["linux"]["seccomp"] = profile;
    }
    Ok(BuiltSpec {
        spec,
        image_user,
        default_seccomp: !i.privileged && i.seccomp == Seccomp::RuntimeDefault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `i`, built as a privileged container.
    fn privileged(i: ContainerInput) -> BuiltSpec {
        let i = ContainerInput {
            privileged: true,
            ..i
        };
        build("c", "s", &image(), &i).expect("build")
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/srv".into(),
            user: "www:www".into(),
        }
    }

    #[test]
    fn args_merge_like_containerd() {
        let img = image();
        let none = ContainerInput::default();
        assert_eq!(
            process_args(&img, &none).expect("a"),
            vec!["/entry", "serve", "--port=80"]
        );
        let args = ContainerInput {
            args: vec!["debug".into()],
            ..Default::default()
        };
        assert_eq!(
            process_args(&img, &args).expect("a"),
            vec!["/entry", "debug"]
        );
        let cmd = ContainerInput {
            command: vec!["/bin/sh".into()],
            ..Default::default()
        };
        assert_eq!(process_args(&img, &cmd).expect("a"), vec!["/bin/sh"]);
        assert!(process_args(&ImageDefaults::default(), &none).is_err());
    }

    #[test]
    fn env_overrides_and_path_default() {
        let e = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &[("A".into(), "2".into()), ("B".into(), "3".into())],
        );
        assert_eq!(e, vec!["PATH=/bin", "A=2", "B=3"]);
        assert!(merge_env(&[], &[])[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn spec_parses_as_an_oci_runtime_spec() {
        let i = ContainerInput {
            run_as_user: Some(1000),
            run_as_group: Some(1000),
            supplemental_groups: vec![5],
            add_caps: vec!["NET_ADMIN".into()],
            drop_caps: vec!["CAP_KILL".into()],
            cpu: Some((50_000, 100_000)),
            memory_limit: Some(64 << 20),
            hostname: "web".into(),
            seccomp: Seccomp::RuntimeDefault,
            ..Default::default()
        };
        let b = build("c1", &"s".repeat(64), &image(), &i).expect("build");
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(b.spec.clone()).expect("a valid OCI spec");
        let p = spec.process().as_ref().expect("process");
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.cwd().display().to_string(), "/srv");
        let caps = p.capabilities().as_ref().expect("caps");
        let bounding: Vec<String> = caps
            .bounding()
            .as_ref()
            .expect("b")
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert!(
            bounding.iter().any(|c| c.contains("NET_ADMIN")),
            "{bounding:?}"
        );
        assert!(!bounding.iter().any(|c| c.contains("KILL")), "{bounding:?}");
        assert_eq!(
            b.image_user, "1000:1000",
            "resolved in the image for its groups"
        );
        assert!(b.default_seccomp);
        assert_eq!(b.spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
    }

    #[test]
    fn image_user_is_left_to_the_guest_and_privileged_gets_everything() {
        let b = build("c", "s", &image(), &ContainerInput::default()).expect("build");
        assert_eq!(b.image_user, "www:www");
        let p = build(
            "c",
            "s",
            &image(),
            &ContainerInput {
                privileged: true,
                ..Default::default()
            },
        )
        .expect("build");
        assert!(!p.default_seccomp);
        assert_eq!(
            p.spec["process"]["capabilities"]["bounding"]
                .as_array()
                .expect("caps")
                .len(),
            ALL_CAPS.len()
        );
        assert!(
            build(
                "c",
                "s",
                &image(),
                &ContainerInput {
                    add_caps: vec!["NOPE".into()],
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            build(
                "c",
                "s",
                &image(),
                &ContainerInput {
                    working_dir: "rel".into(),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            build(
                "c",
                "s",
                &image(),
                &ContainerInput {
                    run_as_user: Some(-1),
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn cri_defaults_an_unset_profile_is_unconfined_and_paths_come_from_the_request() {
        let b = build("c", "s", &image(), &ContainerInput::default()).expect("build");
        assert!(!b.default_seccomp, "no profile asked for: Unconfined");
        assert!(b.spec["linux"].get("seccomp").is_none());
        assert_eq!(
            b.spec["linux"]["maskedPaths"],
            json!([]),
            "an empty list means none"
        );
        let i = ContainerInput {
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into(), "/proc/bus".into()],
            ..Default::default()
        };
        let b = build("c", "s", &image(), &i).expect("build");
        assert_eq!(b.spec["linux"]["maskedPaths"], json!(["/proc/kcore"]));
        assert_eq!(
            b.spec["linux"]["readonlyPaths"],
            json!(["/proc/sys", "/proc/bus"])
        );
        let p = privileged(i);
        assert_eq!(p.spec["linux"]["maskedPaths"], json!([]));
    }

    #[test]
    fn a_group_without_a_user_is_refused() {
        let i = ContainerInput {
            run_as_group: Some(10),
            ..Default::default()
        };
        let e = build("c", "s", &image(), &i).expect_err("group alone");
        assert!(e.0.contains("run_as_user"), "{e}");
        for i in [
            ContainerInput {
                run_as_group: Some(10),
                run_as_user: Some(10),
                ..Default::default()
            },
            ContainerInput {
                run_as_group: Some(10),
                run_as_username: "www".into(),
                ..Default::default()
            },
        ] {
            build("c", "s", &image(), &i).expect("with a user");
        }
    }

    #[test]
    fn the_ipc_namespace_is_the_pods_unless_private_and_binds_carry_rro() {
        let i = ContainerInput {
            binds: vec![
                Bind {
                    source: "/run/moat/volumes/c/0".into(),
                    destination: "/a".into(),
                    read_only: true,
                    recursive_read_only: true,
                },
                Bind {
                    source: "/run/moat/volumes/c/1".into(),
                    destination: "/b".into(),
                    read_only: true,
                    recursive_read_only: false,
                },
            ],
            ..Default::default()
        };
        let b = build("c", "s", &image(), &i).expect("build");
        let types: Vec<&str> = b.spec["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .map(|n| n["type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(types, vec!["pid", "uts", "mount"]);
        let mounts = b.spec["mounts"].as_array().expect("mounts");
        let opts = |dest: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == dest)
                .map(|m| m["options"].clone())
                .expect("mount")
        };
        assert_eq!(opts("/a"), json!(["rbind", "rprivate", "rro"]));
        assert_eq!(opts("/b"), json!(["rbind", "rprivate", "ro"]));
        let private = build(
            "c",
            "s",
            &image(),
            &ContainerInput {
                ipc_private: true,
                ..Default::default()
            },
        )
        .expect("build");
        assert!(
            private.spec["linux"]["namespaces"]
                .as_array()
                .expect("ns")
                .iter()
                .any(|n| n["type"] == "ipc")
        );
    }

    #[test]
    fn a_pod_user_namespace_is_joined_with_its_mappings() {
        use crate::userns::{IdMapping, UserNamespace};
        let none = build("c", "s", &image(), &ContainerInput::default()).expect("build");
        assert!(none.spec["linux"].get("uidMappings").is_none());
        let m = IdMapping {
            container_id: 0,
            host_id: 65536,
            length: 65536,
        };
        let input = ContainerInput {
            userns: Some(UserNamespace {
                uids: vec![m],
                gids: vec![m],
            }),
            ..Default::default()
        };
        let b = build("c", "s", &image(), &input).expect("build");
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(b.spec.clone()).expect("a valid OCI spec");
        let linux = spec.linux().as_ref().expect("linux");
        assert!(
            linux
                .namespaces()
                .as_ref()
                .expect("ns")
                .iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        );
        let uids = linux.uid_mappings().as_ref().expect("uid mappings");
        assert_eq!(
            (uids[0].container_id(), uids[0].host_id(), uids[0].size()),
            (0, 65536, 65536)
        );
        assert_eq!(
            linux.gid_mappings().as_ref().expect("gid mappings").len(),
            1
        );
    }

    #[test]
    fn devices_are_denied_unless_privileged_like_containerd() {
        let b = build("c", "s", &image(), &ContainerInput::default()).expect("build");
        assert_eq!(
            b.spec["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}]),
            "a leading deny-all: only the runtime's default devices are allowed"
        );
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(b.spec.clone()).expect("a valid OCI spec");
        let rules = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .expect("devices");
        assert_eq!(rules.len(), 1);
        assert!(!rules[0].allow());
        assert_eq!(rules[0].typ(), None, "no type: every device");
        assert_eq!((rules[0].major(), rules[0].minor()), (None, None));
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        // Limits go beside the rules, not instead of them.
        let limited = build(
            "c",
            "s",
            &image(),
            &ContainerInput {
                memory_limit: Some(1 << 20),
                cpu: Some((1000, 100_000)),
                ..Default::default()
            },
        )
        .expect("build");
        assert_eq!(
            limited.spec["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert_eq!(
            limited.spec["linux"]["resources"]["memory"]["limit"],
            1 << 20
        );
        let p = privileged(ContainerInput::default());
        assert_eq!(
            p.spec["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}]),
            "privileged: every device"
        );
    }

    #[test]
    fn a_localhost_profile_lands_in_the_spec_and_privileged_ignores_it() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(
            f.path(),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("w");
        let i = ContainerInput {
            seccomp: Seccomp::Localhost(f.path().to_owned()),
            ..Default::default()
        };
        let b = build("c", "s", &image(), &i).expect("build");
        assert!(!b.default_seccomp);
        assert_eq!(
            b.spec["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ALLOW"
        );
        let p = privileged(i);
        assert!(p.spec["linux"].get("seccomp").is_none());
    }
}
