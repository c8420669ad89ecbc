//! CRI semantics as a client that is not Moat's own harness meets them: requests filled in
//! the way crictl and the CRI validation suite fill them (no hostname, no namespace options,
//! no seccomp profile, busybox `top`, stop timeouts of 60 s), against a real moatd running
//! pods as QEMU micro-VMs.

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::pod::{Pod, pod_with, pod_with_image, run_pod};
use tonic::Code;

fn out(r: &cri::ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_owned()
}

fn pid_mode(mode: cri::NamespaceMode, target: &str) -> impl FnOnce(&mut cri::ContainerConfig) {
    let target = target.to_owned();
    move |c: &mut cri::ContainerConfig| {
        let linux = c.linux.get_or_insert_with(Default::default);
        let sc = linux.security_context.get_or_insert_with(Default::default);
        sc.namespace_options = Some(cri::NamespaceOption {
            pid: mode as i32,
            target_id: target,
            ..Default::default()
        });
    }
}

fn security(
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> impl FnOnce(&mut cri::ContainerConfig) {
    move |c: &mut cri::ContainerConfig| {
        let linux = c.linux.get_or_insert_with(Default::default);
        f(linux.security_context.get_or_insert_with(Default::default));
    }
}

async fn stop(p: &Pod, id: &str, timeout: i64) -> Duration {
    let t = Instant::now();
    p.m.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        })
        .await
        .unwrap_or_else(|e| panic!("stop: {e:?}"));
    t.elapsed()
}

async fn runtime_status(p: &Pod) -> cri::StatusResponse {
    p.m.runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner()
}

async fn touch(p: &Pod, id: &str, path: &str) -> i32 {
    p.exec(id, &["touch", path]).await.exit_code
}

async fn started(
    p: &Pod,
    name: &str,
    cmd: &[&str],
    adjust: impl FnOnce(&mut cri::ContainerConfig),
) -> String {
    let id = Box::pin(p.create_with(name, cmd, adjust))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}\n{}", p.m.log()));
    p.start(&id).await;
    p.wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_without_a_hostname_gets_the_nodes_and_a_bad_hostname_is_invalid() {
    // A pod name longer than 64 characters, no hostname: what crictl's pod config has.
    let name = format!("busybox-sandbox-{}", "x".repeat(60));
    let p = pod_with(&name, "", |c| c.hostname.clear()).await;
    let id = started(&p, "top", &["top"], |_| {}).await;
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("node hostname");
    assert_eq!(out(&p.exec(&id, &["hostname"]).await), node.trim());
    assert_eq!(
        out(&p.exec(&id, &["cat", "/etc/hostname"]).await),
        node.trim()
    );

    let logs = tempfile::tempdir().expect("logs");
    let e = run_pod(&p.m, "bad-hostname", logs.path(), |c| {
        c.hostname = "h".repeat(65);
    })
    .await
    .expect_err("a hostname the kernel cannot take");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("hostname"), "{e:?}");
    for (what, ns) in [
        (
            "hostPID",
            cri::NamespaceOption {
                pid: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
        (
            "hostIPC",
            cri::NamespaceOption {
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
    ] {
        let e = run_pod(&p.m, what, logs.path(), |c| {
            c.linux = Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            });
        })
        .await
        .expect_err(what);
        assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
        assert!(e.message().contains(what), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_returns_as_soon_as_the_process_is_gone() {
    let p = pod_with_image("stop").await;
    // The CRI suite's container: busybox top, no namespace options (pid POD), stopped with a
    // 60 s timeout. SIGTERM ends top at once: it is not PID 1 of its namespace.
    let top = started(&p, "top", &["top"], |_| {}).await;
    let took = stop(&p, &top, 60).await;
    assert!(
        took < Duration::from_secs(10),
        "StopContainer took {took:?}"
    );
    let st = p
        .wait_state(&top, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 143, "killed by SIGTERM: {st:?}");
    // Stopping it again, and removing what is not there, answer at once.
    assert!(stop(&p, &top, 60).await < Duration::from_secs(2));
    let t = Instant::now();
    p.m.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest {
            container_id: "0".repeat(64),
        })
        .await
        .expect("removing an unknown container succeeds");
    assert!(t.elapsed() < Duration::from_secs(2));

    // In a PID namespace of its own a process without a SIGTERM handler is PID 1 and the
    // kernel drops SIGTERM for it, as under runc: the timeout, then SIGKILL, and not much
    // more. (Not top: busybox top installs a handler for SIGTERM soon after it starts, so
    // whether it dies of SIGTERM depends on when the signal comes.)
    let own = started(
        &p,
        "own",
        &["sleep", "1000"],
        pid_mode(cri::NamespaceMode::Container, ""),
    )
    .await;
    let took = stop(&p, &own, 2).await;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "StopContainer took {took:?}"
    );
    let st = p
        .wait_state(&own, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 137, "{st:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_namespaces_follow_the_cri_modes() {
    let p = pod_with_image("pids").await;
    let a = started(&p, "a", &["sleep", "1001"], |_| {}).await;
    let b = started(&p, "b", &["sleep", "1002"], |_| {}).await;
    // POD (the default when the request names nothing): one namespace, PID 1 is the pod's
    // init, and each container sees the other.
    let init = p.exec(&a, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(String::from_utf8_lossy(&init.stdout), "pause\0");
    let ps = out(&p.exec(&a, &["ps", "-o", "args"]).await);
    assert!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "{ps}"
    );
    assert!(out(&p.exec(&b, &["ps", "-o", "args"]).await).contains("sleep 1001"));

    // CONTAINER: its own, the main process is PID 1 and sees no one else.
    let own = started(
        &p,
        "own",
        &["sleep", "1003"],
        pid_mode(cri::NamespaceMode::Container, ""),
    )
    .await;
    let cmd = p.exec(&own, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(String::from_utf8_lossy(&cmd.stdout), "sleep\x001003\0");
    assert!(!out(&p.exec(&own, &["ps", "-o", "args"]).await).contains("sleep 1001"));

    // TARGET: the target container's namespace.
    let joined = started(
        &p,
        "joined",
        &["sleep", "1004"],
        pid_mode(cri::NamespaceMode::Target, &own),
    )
    .await;
    let ps = out(&p.exec(&joined, &["ps", "-o", "args"]).await);
    assert!(
        ps.contains("sleep 1003") && !ps.contains("sleep 1001"),
        "{ps}"
    );
    let e = p
        .create_with(
            "nobody",
            &["true"],
            pid_mode(cri::NamespaceMode::Target, &"f".repeat(64)),
        )
        .await
        .expect_err("unknown target");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = p
        .create_with("host", &["true"], pid_mode(cri::NamespaceMode::Node, ""))
        .await
        .expect_err("host pid");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_profiles_are_unconfined_when_unset_and_localhost_ones_apply() {
    let p = pod_with_image("seccomp").await;
    let dir = tempfile::tempdir().expect("profiles");
    let profile = dir.path().join("no-sethostname.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .expect("write profile");
    let localhost = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    };
    let sys_admin = |seccomp: Option<cri::SecurityProfile>, privileged: bool| {
        security(move |sc| {
            sc.capabilities = Some(cri::Capability {
                add_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            });
            sc.seccomp = seccomp;
            sc.privileged = privileged;
        })
    };
    let set_hostname = ["sh", "-c", "hostname renamed && hostname"];
    // No profile: Unconfined, so CAP_SYS_ADMIN may rename its UTS namespace.
    let free = started(&p, "free", &["top"], sys_admin(None, false)).await;
    let r = p.exec(&free, &set_hostname).await;
    assert_eq!((r.exit_code, out(&r)), (0, "renamed".into()), "{r:?}");
    // The Localhost profile blocks sethostname.
    let blocked = started(
        &p,
        "blocked",
        &["top"],
        sys_admin(Some(localhost.clone()), false),
    )
    .await;
    let r = p.exec(&blocked, &set_hostname).await;
    assert_ne!(r.exit_code, 0, "{r:?}");
    // A privileged container ignores the profile, as under containerd.
    let privileged = started(&p, "privileged", &["top"], sys_admin(Some(localhost), true)).await;
    assert_eq!(p.exec(&privileged, &set_hostname).await.exit_code, 0);
    // A profile that is not there is the request's fault.
    let missing = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: dir.path().join("missing.json").display().to_string(),
    };
    let e = p
        .create_with("missing", &["top"], sys_admin(Some(missing), false))
        .await
        .expect_err("missing profile");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("missing.json"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn security_context_details_follow_containerd() {
    let p = pod_with_image("secctx").await;
    // A group without a user.
    let e = p
        .create_with(
            "group",
            &["top"],
            security(|sc| sc.run_as_group = Some(cri::Int64Value { value: 10 })),
        )
        .await
        .expect_err("run_as_group alone");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // No masked paths asked for: none (kubelet sends the defaults itself).
    let plain = started(&p, "plain", &["top"], |_| {}).await;
    let r = p
        .exec(&plain, &["head", "-c", "64", "/proc/timer_list"])
        .await;
    assert!(!r.stdout.is_empty(), "unmasked: {r:?}");
    // The request's lists replace the defaults.
    let custom = started(
        &p,
        "custom",
        &["top"],
        security(|sc| {
            sc.masked_paths = vec!["/proc/cpuinfo".into()];
            sc.readonly_paths = vec!["/etc".into()];
        }),
    )
    .await;
    let r = p.exec(&custom, &["cat", "/proc/cpuinfo"]).await;
    assert!(r.stdout.is_empty(), "masked: {r:?}");
    assert!(
        !p.exec(&custom, &["head", "-c", "64", "/proc/timer_list"])
            .await
            .stdout
            .is_empty()
    );
    assert_ne!(p.exec(&custom, &["touch", "/etc/new"]).await.exit_code, 0);
    assert_eq!(p.exec(&custom, &["touch", "/tmp/new"]).await.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_mounts_are_recursive_only_when_asked() {
    let p = pod_with_image("rro").await;
    let host = tempfile::tempdir().expect("host dir");
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let tmpfs = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .expect("mount");
    assert!(tmpfs.success());
    let mount = |path: &str, recursive: bool| cri::Mount {
        container_path: path.into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        recursive_read_only: recursive,
        ..Default::default()
    };
    let (m1, m2) = (mount("/ro", false), mount("/rro", true));
    let id = started(&p, "mounts", &["top"], move |c| c.mounts = vec![m1, m2]).await;
    assert_ne!(touch(&p, &id, "/ro/top").await, 0, "read-only at the top");
    assert_eq!(
        touch(&p, &id, "/ro/sub/a").await,
        0,
        "the submount stays writable"
    );
    assert_ne!(touch(&p, &id, "/rro/top").await, 0);
    assert_ne!(
        touch(&p, &id, "/rro/sub/b").await,
        0,
        "recursive: the submount too"
    );
    assert!(sub.join("a").exists() && !sub.join("b").exists());
    assert!(!host.path().join("top").exists());
    let st = p.status(&id).await;
    let rro = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/rro")
        .expect("/rro");
    assert!(rro.readonly && rro.recursive_read_only);
    // Recursive read-only needs read-only.
    let bad = cri::Mount {
        readonly: false,
        ..mount("/bad", true)
    };
    let e = p
        .create_with("bad", &["top"], move |c| c.mounts = vec![bad])
        .await
        .expect_err("rro without ro");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Advertised per handler.
    let status = runtime_status(&p).await;
    assert!(status.runtime_handlers.iter().all(|h| {
        h.features
            .as_ref()
            .is_some_and(|f| f.recursive_read_only_mounts)
    }));
    drop(p);
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&sub)
        .status();
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_sysctls_are_set_in_the_vm() {
    let sysctls = [
        ("kernel.shm_rmid_forced", "1"),
        ("kernel.msgmax", "9000"),
        ("net.ipv4.ip_local_port_range", "20000\t30000"),
        ("net.ipv4.ip_unprivileged_port_start", "80"),
    ];
    let p = pod_with("sysctls", "", |c| {
        c.linux.get_or_insert_with(Default::default).sysctls = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    })
    .await;
    let id = started(&p, "reader", &["top"], |_| {}).await;
    for (k, v) in sysctls {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        assert_eq!(out(&p.exec(&id, &["cat", &path]).await), v, "{k}");
    }
    let logs = tempfile::tempdir().expect("logs");
    let e = run_pod(&p.m, "bad-sysctl", logs.path(), |c| {
        c.linux.get_or_insert_with(Default::default).sysctls =
            [("../../etc/passwd".to_string(), "x".to_string())].into();
    })
    .await
    .expect_err("bad sysctl");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Well formed, but not a sysctl of the guest's kernel: the agent says so, the pod's VM
    // is torn down, and the request is still the one at fault.
    let e = run_pod(&p.m, "unknown-sysctl", logs.path(), |c| {
        c.linux.get_or_insert_with(Default::default).sysctls =
            [("kernel.no_such_sysctl".to_string(), "1".to_string())].into();
    })
    .await
    .expect_err("unknown sysctl");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("kernel.no_such_sysctl"), "{e:?}");
    let pods =
        p.m.runtime()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list")
            .into_inner()
            .items;
    assert_eq!(pods.len(), 1, "only the first pod is left: {pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_container_gets_kernel_modules_on_demand() {
    let p = pod_with_image("privileged").await;
    let id = started(&p, "admin", &["top"], security(|sc| sc.privileged = true)).await;
    // The bridge and veth modules are not loaded at boot: the kernel asks the guest's
    // modprobe for them.
    let r = p
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "brctl addbr br0 && ip link add v0 type veth peer name v1 && \
                 ip link set v0 master br0 && ip link show br0 && ip link show v0",
            ],
        )
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let text = out(&r);
    assert!(text.contains("br0") && text.contains("v0"), "{text}");
    let modules = out(&p.exec(&id, &["cat", "/proc/modules"]).await);
    for m in ["bridge", "veth"] {
        assert!(
            modules.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} loaded: {modules}"
        );
    }
    // Without CAP_NET_ADMIN the same kind of request is refused, and loads nothing.
    let plain = started(&p, "plain", &["top"], |_| {}).await;
    let r = p
        .exec(&plain, &["ip", "link", "add", "d0", "type", "dummy"])
        .await;
    assert_ne!(r.exit_code, 0, "{r:?}");
    let modules = out(&p.exec(&id, &["cat", "/proc/modules"]).await);
    assert!(
        !modules.lines().any(|l| l.starts_with("dummy ")),
        "{modules}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn supplemental_groups_merge_or_stay_strict_and_are_reported() {
    let p = pod_with_image("groups").await;
    let as_moat = |policy: cri::SupplementalGroupsPolicy| {
        security(move |sc| {
            sc.run_as_user = Some(cri::Int64Value { value: 1000 });
            sc.supplemental_groups = vec![3000];
            sc.supplemental_groups_policy = policy as i32;
        })
    };
    // Merge (the default): the image's /etc/group adds `extra` (2000), which lists moat.
    let merge = started(
        &p,
        "merge",
        &["top"],
        as_moat(cri::SupplementalGroupsPolicy::Merge),
    )
    .await;
    let strict = started(
        &p,
        "strict",
        &["top"],
        as_moat(cri::SupplementalGroupsPolicy::Strict),
    )
    .await;
    let groups = |s: String| {
        let mut g: Vec<i64> = s
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        g.sort_unstable();
        g
    };
    assert_eq!(
        groups(out(&p.exec(&merge, &["id", "-G"]).await)),
        vec![1000, 2000, 3000]
    );
    assert_eq!(
        groups(out(&p.exec(&strict, &["id", "-G"]).await)),
        vec![1000, 3000]
    );
    for (id, want) in [
        (&merge, vec![1000, 2000, 3000]),
        (&strict, vec![1000, 3000]),
    ] {
        let user = p
            .status(id)
            .await
            .user
            .and_then(|u| u.linux)
            .expect("user reported");
        assert_eq!(
            (user.uid, user.gid),
            (1000, 1000),
            "gid from the image's /etc/passwd"
        );
        let mut got = user.supplemental_groups.clone();
        got.sort_unstable();
        assert_eq!(got, want);
    }
    let status = runtime_status(&p).await;
    assert!(
        status
            .features
            .is_some_and(|f| f.supplemental_groups_policy)
    );
}

/// Kubernetes' `hostUsers: false`: the pod's user namespace (NamespaceMode POD with
/// kubelet's mappings, container 0..65535 on 65536..131071). Inside, container root is uid
/// 0 with the mappings in /proc/self/uid_map and the image's files keep the image's owners
/// (the `layers` back-end shifts them); files it creates on a volume belong on the host to
/// the mapped ids. The handler advertises user namespaces and PodSandboxStatus reports the
/// mappings; a container asking for other mappings is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_namespaced_pod_maps_its_ids_and_its_files_belong_to_the_mapped_ids() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let map = |host_id| cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    };
    let userns = cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![map(65536)],
        gids: vec![map(65536)],
    };
    let ns_options = |u: cri::UserNamespace| cri::NamespaceOption {
        userns_options: Some(u),
        ..Default::default()
    };
    let pod_ns = ns_options(userns.clone());
    let p = pod_with("userns", "", move |c| {
        let linux = c.linux.get_or_insert_with(Default::default);
        linux
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options = Some(pod_ns);
    })
    .await;
    let status = runtime_status(&p).await;
    assert!(
        status
            .runtime_handlers
            .iter()
            .all(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces)),
        "{:?}",
        status.runtime_handlers
    );
    let pod =
        p.m.runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .expect("pod status")
            .into_inner();
    let reported = pod
        .status
        .and_then(|s| s.linux)
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options);
    assert_eq!(reported.as_ref(), Some(&userns));

    let vol = tempfile::tempdir().expect("volume");
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let host_path = vol.path().display().to_string();
    let c_ns = ns_options(userns.clone());
    let id = started(&p, "inside", &["sleep", "100000"], move |c| {
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path,
            ..Default::default()
        }];
        security(|sc| sc.namespace_options = Some(c_ns))(c);
    })
    .await;
    let r = p.exec(&id, &["cat", "/proc/self/uid_map"]).await;
    let text = out(&r);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields, ["0", "65536", "65536"], "{r:?}");
    let r = p.exec(&id, &["id", "-u"]).await;
    assert_eq!(out(&r), "0", "{r:?}");
    // The image's files keep the image's owners inside the namespace.
    let r = p
        .exec(&id, &["stat", "-c", "%u:%g", "/bin/busybox", "/etc"])
        .await;
    assert_eq!(out(&r), "0:0\n0:0", "{r:?}");
    // Container root owns its rootfs: it writes at / and changes an image file.
    for cmd in [
        "touch /made-here",
        "echo extra:x:1234:1234::/:/bin/sh >> /etc/passwd",
    ] {
        let r = p.exec(&id, &["sh", "-c", cmd]).await;
        assert_eq!(r.exit_code, 0, "{cmd}: {r:?}");
    }
    // What it creates on the volume belongs, on the host, to the mapped ids.
    let r = p
        .exec(&id, &["sh", "-c", "echo hi > /data/f && mkdir /data/d"])
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    for name in ["f", "d"] {
        let meta = std::fs::metadata(vol.path().join(name)).expect("on the host");
        assert_eq!((meta.uid(), meta.gid()), (65536, 65536), "{name}");
    }
    // A container that names no user namespace gets its pod's.
    let plain = started(&p, "plain", &["sleep", "100000"], |_| {}).await;
    let r = p.exec(&plain, &["cat", "/proc/self/uid_map"]).await;
    assert!(out(&r).starts_with('0'), "{r:?}");
    assert!(out(&r).contains("65536"), "{r:?}");
    // Other mappings than the pod's are refused.
    let other = ns_options(cri::UserNamespace {
        uids: vec![map(200_000)],
        gids: vec![map(200_000)],
        ..userns.clone()
    });
    let e = Box::pin(p.create_with(
        "other",
        &["true"],
        security(|sc| sc.namespace_options = Some(other)),
    ))
    .await
    .expect_err("other mappings");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not its pod's"), "{e:?}");
}
