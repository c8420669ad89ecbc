//! Every host process that serves a pod runs confined (docs/security.md, "Host processes
//! that serve a pod"): checked on a real pod through /proc, the way an operator would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_host::confine::{Bind, JailSpec, Kind};
use moat_tests::pod::pod_with_image;

/// A process's /proc/PID/status as key → value.
fn status(pid: i32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The jails of sandbox `id`: (waiting parent, confined process) pairs.
fn jails_of(id: &str) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let args = cmdline(pid);
        if args.get(1).is_some_and(|a| a == "jail") && args.iter().any(|a| a.contains(id)) {
            for child in children(pid) {
                out.push((pid, child));
            }
        }
    }
    out
}

fn cap_mask(caps: &[moat_vmm::jail::Cap]) -> String {
    format!("{:016x}", moat_vmm::jail::caps::mask(caps))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_serving_a_pod_is_confined() {
    let p = pod_with_image("jailed").await;
    let jails = jails_of(&p.id);
    let kinds: Vec<String> = jails
        .iter()
        .map(|&(_, c)| {
            let args = cmdline(c);
            if args[0].contains("qemu") {
                "qemu".into()
            } else {
                args.get(1).cloned().unwrap_or_default()
            }
        })
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["fs-backend", "fs-backend", "qemu", "vsock-backend"],
        "{jails:?}\n{}",
        p.m.log()
    );

    let host_ns = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
    let mut pod_uids = Vec::new();
    for (&(parent, pid), kind) in jails.iter().zip(&kinds) {
        let s = status(pid);
        let what = format!("{kind} (pid {pid}): {s:?}");
        assert_eq!(s["Seccomp"], "2", "{what}");
        assert_eq!(s["NoNewPrivs"], "1", "{what}");
        let uid = s["Uid"].split_whitespace().next().expect("uid").to_owned();
        let args = cmdline(pid);
        let expected_caps = match kind.as_str() {
            "fs-backend" => {
                assert_eq!(uid, "0", "{what}");
                let ro = args.iter().any(|a| a == "--read-only");
                cap_mask(&moat_vmm::jail::caps::for_shares([ro]))
            }
            _ => {
                let n: u32 = uid.parse().expect("numeric uid");
                assert!(n >= 2_100_000_000, "{what}");
                pod_uids.push(n);
                cap_mask(&[])
            }
        };
        assert_eq!(s["CapEff"], expected_caps, "{what}");
        assert_eq!(s["CapPrm"], expected_caps, "{what}");
        assert_eq!(s["CapBnd"], expected_caps, "{what}");
        for ns in ["mnt", "net", "pid", "ipc", "uts", "cgroup"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns");
            assert_ne!(
                theirs,
                host_ns(ns),
                "{kind} shares the host's {ns} namespace"
            );
        }
        // PID 1 of its own PID namespace.
        let nspid = s["NSpid"]
            .split_whitespace()
            .last()
            .expect("nspid")
            .to_owned();
        assert_eq!(nspid, "1", "{what}");
        // Its root: no /etc, /home or /root of the host; not moatd's state either.
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        for hidden in ["etc", "home", "root", "var/lib"] {
            assert!(!root.join(hidden).exists(), "{kind} sees /{hidden}");
        }
        let state = p.m.root();
        let state_in_jail = root.join(state.strip_prefix("/").expect("absolute"));
        assert!(
            !state_in_jail.join("root").exists(),
            "{kind} sees moatd's image store"
        );
        assert!(root.join("usr/lib").is_dir(), "{kind} has its libraries");

        // The waiting parent: outside the namespaces, CAP_KILL only, filtered too.
        let ps = status(parent);
        assert_eq!(ps["Seccomp"], "2", "jail parent of {kind}: {ps:?}");
        assert_eq!(ps["NoNewPrivs"], "1", "jail parent of {kind}: {ps:?}");
        assert_eq!(
            ps["CapEff"],
            cap_mask(&[moat_vmm::jail::Cap::Kill]),
            "jail parent of {kind}: {ps:?}"
        );
    }
    assert!(
        pod_uids.windows(2).all(|w| w[0] == w[1]),
        "QEMU and the vsock back-end run as the pod's one uid: {pod_uids:?}"
    );

    // The pod works through its confined devices: a container runs, exec answers.
    let c = p.create("c", &["sleep", "1000"]).await.expect("create");
    p.start(&c).await;
    let r = p.exec(&c, &["echo", "through the jail"]).await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "through the jail",
        "{r:?}"
    );

    // A second pod gets another uid.
    let logs = tempfile::tempdir().expect("logs");
    let other = moat_tests::pod::run_pod(&p.m, "jailed-2", logs.path(), |_| {})
        .await
        .expect("second pod");
    let other_uids: Vec<String> = jails_of(&other)
        .iter()
        .map(|&(_, c)| status(c)["Uid"].clone())
        .filter(|u| !u.starts_with("0\t") && !u.starts_with("0 "))
        .collect();
    assert!(!other_uids.is_empty());
    assert!(
        other_uids
            .iter()
            .all(|u| !u.starts_with(&pod_uids[0].to_string())),
        "{other_uids:?} vs {pod_uids:?}"
    );
}

/// A spec for `moatd jail` confining a program as the vsock back-end is confined.
fn vsock_like_spec(root: &Path) -> JailSpec {
    let mut binds = vec![
        Bind::program("/usr"),
        Bind::device("/dev/null"),
        Bind::program(
            moat_tests::moatd::moatd_bin()
                .canonicalize()
                .expect("moatd"),
        ),
    ];
    binds.retain(|b| b.path.exists());
    let symlinks = ["/bin", "/lib", "/lib64", "/sbin"]
        .iter()
        .filter_map(|l| Some((PathBuf::from(l), std::fs::read_link(l).ok()?)))
        .collect();
    JailSpec {
        kind: Kind::VsockBackend,
        sandbox: "seccomp-test".into(),
        root: root.to_owned(),
        binds,
        symlinks,
        user: Some((2_100_099_999, 2_100_099_999)),
        groups: vec![],
        caps: vec![],
        output: None,
    }
}

/// A confined process that writes without end (`yes`, as a guest could make a back-end
/// warn forever) fills its output log only up to the cap: the jail's parent keeps the head
/// and a rotating tail, and what the process said last is in the tail.
#[test]
fn a_confined_process_output_is_capped() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let log = d.path().join("out.log");
    let max = 64 << 10;
    let mut spec = vsock_like_spec(&root);
    spec.output = Some(moat_host::confine::OutputLog {
        path: log.clone(),
        max_bytes: max,
    });
    let spec = serde_json::to_string(&spec).expect("json");
    let mut jail = std::process::Command::new(moat_tests::moatd::moatd_bin())
        .args(["jail", "--spec", &spec, "--", "/usr/bin/yes", "moat"])
        .spawn()
        .expect("run moatd jail");
    // Long enough for many rotations (`yes` writes hundreds of MiB a second).
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill on the pid of a child of ours.
    assert_eq!(unsafe { libc::kill(jail.id() as i32, libc::SIGTERM) }, 0);
    let status = jail.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{status:?}");
    let [older, newer] = moat_devices::console_log::segment_paths(&log).expect("segments");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let total = size(&log) + size(&older) + size(&newer);
    assert!(
        total <= max + moat_devices::console_log::MARKER_MAX,
        "{total} bytes on disk for a {max}-byte cap"
    );
    let head = std::fs::read_to_string(&log).expect("head");
    assert!(
        head.starts_with("moat\nmoat\n"),
        "{:?}",
        &head[..40.min(head.len())]
    );
    assert!(
        head.contains("bytes of console output dropped"),
        "a marker line"
    );
    let tail = moat_devices::console_log::read_tail(&log, 4096).expect("tail");
    assert!(
        String::from_utf8_lossy(&tail).contains("moat\nmoat\n"),
        "the newest output is kept"
    );
}

#[test]
fn a_forbidden_syscall_kills_the_process_and_says_so() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let moatd = moat_tests::moatd::moatd_bin()
        .canonicalize()
        .expect("moatd");
    let spec = serde_json::to_string(&vsock_like_spec(&root)).expect("json");
    let run = |args: &[&str]| {
        std::process::Command::new(&moatd)
            .args(["jail", "--spec", &spec, "--"])
            .arg(&moatd)
            .args(args)
            .output()
            .expect("run moatd jail")
    };
    // Allowed: it runs under the filter.
    let ok = run(&["--version"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("moatd"),
        "{ok:?}"
    );
    // A jail inside the jail needs unshare(2), which is in no allowlist: SIGSYS, exit
    // 128 + 31, and a line naming the filter.
    // (Its root is a folder the outer jail shows, so that its checks pass.)
    let mut inner = vsock_like_spec(Path::new("/usr/share"));
    inner.binds.clear();
    let inner = serde_json::to_string(&inner).expect("json");
    let bad = run(&["jail", "--spec", &inner, "--", "/usr/bin/true"]);
    assert_eq!(bad.status.code(), Some(128 + libc::SIGSYS), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("killed by its seccomp filter"), "{err}");
    // A spec that cannot be applied is a hard failure, not a warning.
    let mut broken = vsock_like_spec(&root);
    broken.binds.push(Bind::read_only("/no/such/path"));
    let spec = serde_json::to_string(&broken).expect("json");
    let out = std::process::Command::new(&moatd)
        .args(["jail", "--spec", &spec, "--", "/usr/bin/true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not confined, not started"),
        "{out:?}"
    );
}

/// A back-end that dies takes its pod to NOTREADY, and moatd passes on what its jail said.
/// (SIGKILL: a seccomp kill cannot be caused from outside, and PID 1 of a namespace gets
/// no other signal from the host; the kill itself is tested above.)
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_back_end_takes_its_pod_to_notready() {
    let p = pod_with_image("sigsys").await;
    let vsock = jails_of(&p.id)
        .into_iter()
        .find(|&(_, c)| cmdline(c).get(1).is_some_and(|a| a == "vsock-backend"))
        .expect("the vsock back-end");
    // SAFETY: kill(2) on a pid read from /proc.
    unsafe { libc::kill(vsock.1, libc::SIGKILL) };
    let mut rt = p.m.runtime().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status");
        if s.state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after the vsock back-end died\n{}",
            p.m.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = p.m.log();
    assert!(
        log.contains("vsock backend exited on its own"),
        "moatd says which process ended:\n{log}"
    );
    assert!(
        log.contains("(pid") && log.contains("was killed by SIGKILL"),
        "and passes on what its jail said:\n{log}"
    );
    assert!(
        jails_of(&p.id).is_empty(),
        "the rest of the VM is torn down"
    );
}
