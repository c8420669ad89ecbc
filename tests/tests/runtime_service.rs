//! The CRI RuntimeService calls moatd serves today, and the daemon's socket and logs,
//! through a real moatd process.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use k8s_cri::v1 as cri;
use moat_tests::moatd::{Moatd, moatd_bin};
use tonic::Code;

fn condition<'a>(s: &'a cri::StatusResponse, t: &str) -> &'a cri::RuntimeCondition {
    s.status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.r#type == t)
        .expect("condition")
}

#[tokio::test(flavor = "multi_thread")]
async fn version_names_moat_and_the_v1_api() {
    let m = Moatd::start("").await;
    let v = m
        .runtime()
        .await
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("version")
        .into_inner();
    assert_eq!(v.runtime_name, "moat");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_tells_the_truth_about_runtime_and_network() {
    let m = Moatd::start("").await;
    let s = m
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    let rt = condition(&s, "RuntimeReady");
    assert!(!rt.status, "no guest image at the default path");
    assert!(
        rt.message.contains("guest-image/build.sh"),
        "{}",
        rt.message
    );
    assert!(!rt.message.is_empty());
    let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, vec!["moat"], "the configured runtime handlers");
    let net = condition(&s, "NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("no CNI network config"),
        "{}",
        net.message
    );

    // A CNI config appears: NetworkReady turns true without a restart.
    let cni = m.root().parent().expect("dir").join("cni");
    std::fs::create_dir_all(&cni).expect("mkdir");
    std::fs::write(
        cni.join("10-moat.conflist"),
        r#"{"cniVersion":"1.0.0","name":"moat-net","plugins":[{"type":"bridge","bridge":"moat0"}]}"#,
    )
    .expect("write conflist");
    let s = m
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner();
    assert!(condition(&s, "NetworkReady").status);
    let info: serde_json::Value =
        serde_json::from_str(&s.info["info"]).expect("verbose info is JSON");
    assert_eq!(info["cniNetwork"]["name"], "moat-net");
    assert_eq!(info["config"]["root_dir"], m.root().display().to_string());
    // Each handler's VMM, and whether QEMU runs it in TCG, with the warning.
    let h = &info["runtimeHandlers"]["moat"];
    let tcg = !hardware_kvm();
    assert_eq!(h["tcg"], tcg, "{h}");
    assert_eq!(
        h["warning"]
            .as_str()
            .is_some_and(|w| w.contains("security boundary")),
        tcg,
        "{h}"
    );
}

/// Whether /dev/kvm has hardware virtualization behind it (else QEMU runs TCG).
fn hardware_kvm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    std::path::Path::new("/dev/kvm").exists()
        && cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_that_would_run_in_tcg_are_refused_when_tcg_is_not_allowed() {
    if hardware_kvm() {
        eprintln!(
            "SKIPPED pods_that_would_run_in_tcg_are_refused_when_tcg_is_not_allowed: this host has hardware KVM, so no handler runs TCG"
        );
        return;
    }
    let m = Moatd::start("[qemu]\nallow_tcg = false\n").await;
    let logs = tempfile::tempdir().expect("logs");
    let e = moat_tests::pod::run_pod(&m, "tcg", logs.path(), |_| {})
        .await
        .expect_err("TCG forbidden");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("allow_tcg"), "{e:?}");
    assert!(m.log().contains("pods refused"), "logged at start-up");
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_config_reports_the_configured_cgroup_driver() {
    let m = Moatd::start("").await;
    let c = m
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("rc")
        .into_inner();
    assert_eq!(
        c.linux.expect("linux").cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );
    let m = Moatd::start("[runtime]\ncgroup_driver = \"cgroupfs\"\n").await;
    let c = m
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("rc")
        .into_inner();
    assert_eq!(
        c.linux.expect("linux").cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

fn cidr_request(cidr: &str) -> cri::UpdateRuntimeConfigRequest {
    cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_cidr_is_validated_and_kept_across_restarts() {
    let mut m = Moatd::start("").await;
    let e = m
        .runtime()
        .await
        .update_runtime_config(cidr_request("10.0.0.0/99"))
        .await
        .expect_err("bad cidr");
    assert_eq!(e.code(), Code::InvalidArgument);
    m.runtime()
        .await
        .update_runtime_config(cidr_request("10.244.1.0/24"))
        .await
        .expect("update");
    m.restart().await;
    let s = m
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).expect("json");
    assert_eq!(info["podCIDR"], "10.244.1.0/24");
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_refused_plainly_and_metrics_are_described() {
    let m = Moatd::start("").await;
    let e = m
        .runtime()
        .await
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .expect_err("not served");
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message().contains("CheckpointContainer is not supported"),
        "{}",
        e.message()
    );
    let d = m
        .runtime()
        .await
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest::default())
        .await
        .expect("descriptors")
        .into_inner()
        .descriptors;
    let cpu = d
        .iter()
        .find(|d| d.name == "container_cpu_usage_seconds_total")
        .expect("cAdvisor's CPU counter");
    assert_eq!(
        cpu.label_keys,
        ["container", "id", "image", "name", "namespace", "pod"]
    );
    // No pods: no series, and no error.
    let none = m
        .runtime()
        .await
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest::default())
        .await
        .expect("metrics")
        .into_inner();
    assert!(none.pod_metrics.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_requests_are_checked_before_a_url_is_given() {
    let m = Moatd::start("").await;
    let mut rt = m.runtime().await;
    let exec = |id: &str, stdout: bool, stderr: bool, tty: bool| cri::ExecRequest {
        container_id: id.into(),
        cmd: vec!["sh".into()],
        tty,
        stdin: false,
        stdout,
        stderr,
    };
    let e = rt
        .exec(exec("", true, false, false))
        .await
        .expect_err("no id");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = rt
        .exec(exec("abc", false, false, false))
        .await
        .expect_err("no streams");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = rt
        .exec(exec("abc", true, true, true))
        .await
        .expect_err("tty and stderr");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = rt
        .exec(exec("abc", true, false, false))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = rt
        .attach(cri::AttachRequest {
            container_id: "abc".into(),
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "abc".into(),
            port: vec![80],
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "abc".into(),
            port: vec![70000],
        })
        .await
        .expect_err("bad port");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_is_0660_and_a_second_moatd_is_refused() {
    let m = Moatd::start("").await;
    let mode = std::fs::metadata(&m.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let root_mode = std::fs::metadata(m.root())
        .expect("root dir")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(root_mode, 0o700, "the image store is root's alone");
    let out = Command::new(moatd_bin())
        .arg("--config")
        .arg(m.config_path())
        .arg("--root-dir")
        .arg(m.root().with_file_name("root2"))
        .output()
        .expect("second moatd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another moatd is already serving"), "{err}");
    // The first one still answers.
    m.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_socket_file_is_replaced() {
    let mut m = Moatd::start("").await;
    // SIGKILL leaves the socket file behind; the next start must take it over.
    m.crash_and_restart().await;
    m.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .expect("serving again");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_one_span_per_request() {
    let m = Moatd::start("[log]\nformat = \"json\"\nlevel = \"moat_host=debug,info\"\n").await;
    let e = m
        .runtime()
        .await
        .update_runtime_config(cidr_request("10.9.0.0/16"))
        .await;
    e.expect("update");
    let found = moat_tests::wait_until(std::time::Duration::from_secs(5), || {
        m.log().contains("pod CIDR updated")
    })
    .await;
    assert!(found, "log: {}", m.log());
    let line = m
        .log()
        .lines()
        .find(|l| l.contains("pod CIDR updated"))
        .expect("line")
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let spans = v["spans"].to_string();
    assert!(spans.contains("UpdateRuntimeConfig"), "{line}");
    assert!(spans.contains("10.9.0.0/16"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_takes_unix_urls_as_kubelet_writes_them_and_refuses_the_rest() {
    let d = tempfile::tempdir().expect("tmp");
    let cfg = d.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "root_dir = \"{0}/root\"\nrun_dir = \"{0}/run\"\n[metrics]\naddress = \"127.0.0.1:0\"\n",
            d.path().display()
        ),
    )
    .expect("config");
    let socket = d.path().join("crio-like.sock");
    let mut child = Command::new(moatd_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .current_dir(d.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moatd");
    let up = moat_tests::wait_until(std::time::Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "moatd serves on the URL's path");
    assert!(
        !d.path().join("unix:").exists(),
        "no folder named after the scheme"
    );
    for bad in ["tcp://127.0.0.1:1234", "unix:relative.sock"] {
        let out = Command::new(moatd_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("--listen")
            .arg(bad)
            .arg("check")
            .output()
            .expect("moatd");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("listen") && err.contains(bad), "{bad}: {err}");
    }
}
