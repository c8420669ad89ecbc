//! The sandbox flows end to end on the built-in backend (`backend = "builtin"`: Moat's own
//! VMM, `moatd vmm`, instead of QEMU): a pod comes up READY, runs a busybox container whose
//! output reaches its log, answers ExecSync, and leaves no VMM process once stopped and
//! removed; a pod on a CNI bridge network serves HTTP on its pod IP.
//!
//! The guest is an ordinary Linux kernel, so this needs hardware KVM (a CPU with VT-x or
//! AMD-V and /dev/kvm); elsewhere each test prints what the host lacks and returns. The last
//! test runs `moatd vmm` exactly as the backend starts it, confined, with the tiny smoke
//! guest, which any /dev/kvm runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_host::hypervisor::HostCaps;
use moat_host::sandbox::vm::VmPaths;
use moat_tests::pod::{Pod, pod_on_network, pod_with};
use moat_tests::wait_until;

/// The config that puts the default handler's pods on the built-in VMM.
const BUILTIN: &str = "[runtime.handlers.moat]\nbackend = \"builtin\"\n";

/// Whether `test` cannot run here; if so, says what the host lacks.
fn skip(test: &str) -> bool {
    let caps = HostCaps::probe();
    let lacks = match (caps.kvm_device, caps.hardware_virt) {
        (true, true) => return false,
        (false, false) => {
            "a usable /dev/kvm and a CPU with VT-x/AMD-V (no vmx/svm in /proc/cpuinfo)"
        }
        (false, true) => "a usable /dev/kvm (load kvm_intel or kvm_amd; run as root)",
        (true, false) => {
            "a CPU with VT-x/AMD-V (no vmx/svm in /proc/cpuinfo): its /dev/kvm cannot boot a Linux guest"
        }
    };
    eprintln!("SKIPPED {test}: the built-in backend needs hardware KVM; this host lacks {lacks}");
    true
}

/// The pod's VM directory under moatd's run dir.
fn vm_dir(p: &Pod, id: &str) -> PathBuf {
    VmPaths::new(&p.m.root().with_file_name("run"), id).dir
}

/// The pids whose command line names `needle`.
fn pids_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.display().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

/// Stops and removes pod `id`, then checks its VMM process is gone.
async fn stop_remove_and_check_no_vmm(p: &Pod, id: &str, config: &Path) {
    let mut rt = p.m.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("stop: {e:?}\n{}", p.m.log()));
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("remove: {e:?}\n{}", p.m.log()));
    let gone = wait_until(Duration::from_secs(15), || {
        pids_mentioning(config).is_empty()
    })
    .await;
    assert!(
        gone,
        "VMM processes left after StopPodSandbox and RemovePodSandbox: {:?}",
        pids_mentioning(config)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_runs_logs_and_execs_on_the_builtin_vmm() {
    if skip("a_pod_runs_logs_and_execs_on_the_builtin_vmm") {
        return;
    }
    let p = pod_with("builtin-a", BUILTIN, |_| {}).await;
    let status =
        p.m.runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status");
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);

    // The built-in backend ran it: its VMM config, and a `moatd vmm` process reading it.
    let config = vm_dir(&p, &p.id).join(moat_host::hypervisor::builtin::CONFIG_FILE);
    assert!(config.is_file(), "no {}: {}", config.display(), p.m.log());
    let vmms = pids_mentioning(&config);
    assert_eq!(vmms.len(), 1, "one `moatd vmm` for the pod: {vmms:?}");

    let cid = p
        .create(
            "echo",
            &["sh", "-c", "echo hello-from-builtin && exec sleep 3600"],
        )
        .await
        .expect("create");
    p.start(&cid).await;
    let logged = wait_until(Duration::from_secs(20), || {
        p.log("echo").contains("stdout F hello-from-builtin")
    })
    .await;
    assert!(logged, "container log: {:?}", p.log("echo"));

    let r = p.exec(&cid, &["echo", "hi"]).await;
    assert_eq!(
        r.exit_code,
        0,
        "stderr {:?}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(r.stdout, b"hi\n");

    stop_remove_and_check_no_vmm(&p, &p.id, &config).await;
}

fn conflist(name: &str, bridge: &str, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        }]
    })
    .to_string()
}

/// GETs `url` until the body holds `want` (30 s at most); the last body or error otherwise.
async fn eventually_get(url: &str, want: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..60 {
        match client.get(url).send().await {
            Ok(r) => match r.text().await {
                Ok(body) if body.contains(want) => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_on_a_bridge_network_is_reached_by_its_ip_on_the_builtin_vmm() {
    let test = "a_pod_on_a_bridge_network_is_reached_by_its_ip_on_the_builtin_vmm";
    if skip(test) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let plugins = ["bridge", "host-local"]
        .iter()
        .all(|p| Path::new("/usr/lib/cni").join(p).exists());
    if !root || !plugins {
        eprintln!(
            "SKIPPED {test}: needs root and Debian's containernetworking-plugins in /usr/lib/cni"
        );
        return;
    }
    const BRIDGE: &str = "moate2eb";
    const NET: &str = "moat-e2e-builtin";
    // What a run that died midway left: the bridge and its IPAM reservations.
    let _ = std::process::Command::new("ip")
        .args(["link", "del", BRIDGE])
        .status();
    let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{NET}"));

    let p = pod_on_network(
        "builtin-net",
        BUILTIN,
        Some(&conflist(NET, BRIDGE, "10.203.0.0/24")),
        |_| {},
    )
    .await;
    let ip = p.pod_ip(&p.id).await;
    assert!(ip.starts_with("10.203.0."), "pod IP {ip:?}");
    let web = p
        .create(
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/w && echo hello-builtin-net > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w",
            ],
        )
        .await
        .expect("create web");
    p.start(&web).await;
    let got = eventually_get(&format!("http://{ip}:8080/index.html"), "hello-builtin-net").await;
    let config = vm_dir(&p, &p.id).join(moat_host::hypervisor::builtin::CONFIG_FILE);
    if let Err(last) = got {
        panic!(
            "GET http://{ip}:8080/ never answered; last: {last}\n{}",
            p.m.log()
        );
    }
    stop_remove_and_check_no_vmm(&p, &p.id, &config).await;
    let _ = std::process::Command::new("ip")
        .args(["link", "del", BRIDGE])
        .status();
}

/// The VMM exactly as the backend starts it for a confined pod (`moatd jail` running
/// `moatd vmm --config <run_dir>/vmm.json`: PID 1 of its own namespaces in a minimal root,
/// root with the virtio-fs capabilities only, the jail's seccomp filter and then its own;
/// control socket and hybrid-vsock socket under the run dir, a read-only and a writable
/// share), with the smoke payload as the guest: unlike a Linux guest, it runs under any
/// /dev/kvm, so this runs here too. SIGTERM to the jail ends the VM cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn moatd_vmm_runs_confined_in_the_run_dir_as_the_backend_starts_it() {
    use moat_host::hypervisor::builtin::{API_SOCKET, Builtin, JAIL_DIR};
    use moat_host::hypervisor::{FsShare, Hypervisor, VmSpec};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: confining the VMM needs root, and the smoke guest needs /dev/kvm");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let run_dir = tmp.path().join("vm");
    let shares = tmp.path().join("shares");
    for d in [
        &run_dir.join("vsock"),
        &shares.join("layers"),
        &shares.join("volumes"),
    ] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let kernel = moat_vmm::test_utils::payload::build_elf(tmp.path()).expect("smoke payload");
    let initramfs = tmp.path().join("initramfs.cpio");
    std::fs::write(&initramfs, [0u8; 512]).expect("initramfs");
    let share = |tag: &str, read_only| FsShare {
        tag: tag.into(),
        shared_dir: shares.join(tag),
        read_only,
        vhost_socket: run_dir.join(format!("{tag}.sock")),
    };
    let spec = VmSpec {
        id: "confined".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel,
        initramfs,
        kernel_args: vec!["smoke=vsock".into()],
        run_dir: run_dir.clone(),
        // As moatd lays a VM's directory out (`VmPaths`): the sockets in folders of their
        // own.
        vsock_uds: run_dir.join("vsock/vsock"),
        vsock_vhost_socket: run_dir.join("v.sock"),
        guest_cid: 3,
        fs_shares: vec![share("layers", true), share("volumes", false)],
        console_log: run_dir.join("console.log"),
        vmm_log: run_dir.join("vmm.log"),
        net: None,
        jail: Some(moat_host::confine::PodJail {
            sandbox: "confined".into(),
            uid: 2_100_000_001,
            dir: run_dir.join(JAIL_DIR),
            output_max_bytes: 64 << 10,
        }),
        console_log_max_bytes: 1 << 20,
    };
    std::fs::create_dir_all(run_dir.join(JAIL_DIR)).expect("jail dir");
    let vmm = Builtin::with_binary(moat_tests::moatd::moatd_bin())
        .boot(&spec)
        .expect("start moatd vmm");
    let log = || std::fs::read_to_string(&spec.vmm_log).unwrap_or_default();

    let listening = wait_until(Duration::from_secs(30), || {
        spec.vsock_uds.exists() || vmm.exited()
    })
    .await;
    assert!(
        listening && !vmm.exited(),
        "no hybrid-vsock socket:\n{}",
        log()
    );
    let host = UnixStream::connect(&spec.vsock_uds).expect("connect");
    host.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    (&host).write_all(b"CONNECT 1024\n").expect("CONNECT");
    let mut reader = BufReader::new(host.try_clone().expect("clone"));
    let mut ok = String::new();
    reader.read_line(&mut ok).expect("CONNECT reply");
    assert!(ok.starts_with("OK "), "{ok:?}\n{}", log());

    // The guest now waits for data: look at the running VMM meanwhile, the jail's child.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", vmm.pid()))
        .expect("the jail's children");
    let child: u32 = children.trim().parse().expect("one child: the VMM");
    let proc_dir = PathBuf::from(format!("/proc/{child}"));
    let status = std::fs::read_to_string(proc_dir.join("status")).expect("status");
    assert!(status.contains("Seccomp:\t2"), "not filtered:\n{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let caps = moat_vmm::jail::caps::for_shares([true, false]);
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff"),
        moat_vmm::jail::caps::mask(&caps),
        "only the virtio-fs capabilities:\n{status}"
    );
    assert_eq!(
        u64::from_str_radix(&field("CapBnd:"), 16).expect("CapBnd"),
        moat_vmm::jail::caps::mask(&caps),
        "{status}"
    );
    assert!(
        field("NSpid:").split_whitespace().nth(1) == Some("1"),
        "PID 1 of its own PID namespace:\n{status}"
    );
    for ns in ["mnt", "net", "pid", "ipc", "uts", "cgroup"] {
        let of = |p: &Path| std::fs::read_link(p.join("ns").join(ns)).expect("ns");
        assert_ne!(
            of(&proc_dir),
            of(Path::new("/proc/self")),
            "its own {ns} namespace"
        );
    }
    // Its root holds only what it needs: not the host's /etc, nor the run dir's other
    // files.
    let root = proc_dir.join("root");
    assert!(!root.join("etc/passwd").exists());
    assert!(
        !root
            .join(spec.vmm_log.strip_prefix("/").expect("abs"))
            .exists()
    );
    assert!(root.join("dev/kvm").exists());
    let api = UnixStream::connect(run_dir.join(API_SOCKET)).expect("control socket");
    (&api)
        .write_all(b"{\"op\":\"status\"}\n")
        .expect("status request");
    let mut reply = String::new();
    BufReader::new(api)
        .read_line(&mut reply)
        .expect("status reply");
    assert!(reply.contains(r#""state":"running""#), "{reply}");

    (&host).write_all(b"ping").expect("ping");
    let mut pong = [0u8; 10];
    reader.read_exact(&mut pong).expect("the guest's reply");
    assert_eq!(&pong, b"pong: ping");

    assert!(
        vmm.wait_timeout(Duration::from_secs(30)).await,
        "the VMM did not end with its guest:\n{}",
        log()
    );
    let log = log();
    assert!(
        log.contains("the VM ended") && log.contains("GuestShutdown"),
        "{log}"
    );
    let console = std::fs::read_to_string(&spec.console_log).expect("console log");
    assert!(console.contains("moat-smoke: vsock got: ping"), "{console}");
    let jail = run_dir.join(JAIL_DIR).join("vmm");
    assert_eq!(
        std::fs::read_dir(&jail).expect("jail dir").count(),
        0,
        "the jail root is left empty on the host"
    );
    assert!(!spec.vsock_uds.exists(), "the hybrid socket is removed");

    // SIGTERM to the jail (what moatd sends to stop a VM) ends the VM cleanly, through
    // the VMM's own handling. The smoke guest waits for a vsock connection meanwhile.
    let vmm = Builtin::with_binary(moat_tests::moatd::moatd_bin())
        .boot(&spec)
        .expect("start moatd vmm again");
    let listening = wait_until(Duration::from_secs(30), || {
        spec.vsock_uds.exists() || vmm.exited()
    })
    .await;
    assert!(
        listening && !vmm.exited(),
        "{}",
        std::fs::read_to_string(&spec.vmm_log).unwrap_or_default()
    );
    vmm.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(
        vmm.wait_timeout(Duration::from_secs(30)).await,
        "SIGTERM did not end it"
    );
    let log = std::fs::read_to_string(&spec.vmm_log).unwrap_or_default();
    assert!(log.contains("Signalled"), "a clean end on SIGTERM:\n{log}");
}
