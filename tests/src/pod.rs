//! A pod VM with a busybox image, for end-to-end tests: a real docker-registry holding an
//! image built from busybox-static, a moatd that pulled it, and a running pod sandbox.

use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;

use crate::moatd::Moatd;
use crate::registry::Registry;

/// The guest image built by guest-image/build.sh.
pub fn guest_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out");
    assert!(
        dir.join("vmlinuz").is_file(),
        "the guest image is missing: run guest-image/build.sh"
    );
    dir
}

/// A running pod and what it needs.
pub struct Pod {
    /// The moatd serving it.
    pub m: Moatd,
    /// The pod sandbox id.
    pub id: String,
    /// The busybox image reference.
    pub image: String,
    /// The pod's log directory.
    pub logs: tempfile::TempDir,
    _reg: Registry,
}

/// A pod named `name` on a fresh moatd.
pub async fn pod_with_image(name: &str) -> Pod {
    pod_with(name, "", |_| {}).await
}

/// A pod named `name` on a fresh moatd with `extra_config` (TOML: bare keys set `[sandbox]`
/// settings, or tables) added, its sandbox config adjusted by `adjust`.
pub async fn pod_with(
    name: &str,
    extra_config: &str,
    adjust: impl FnOnce(&mut cri::PodSandboxConfig),
) -> Pod {
    pod_on_network(name, extra_config, None, adjust).await
}

/// Like `pod_with`, with `conflist` (JSON) as the node's CNI network when given.
pub async fn pod_on_network(
    name: &str,
    extra_config: &str,
    conflist: Option<&str>,
    adjust: impl FnOnce(&mut cri::PodSandboxConfig),
) -> Pod {
    let (reg, image) = Registry::with_busybox("t/busybox").await;
    // After the [sandbox] header: bare keys in `extra_config` are sandbox settings.
    let m = Moatd::start(&format!(
        "[sandbox]\nguest_dir = \"{}\"\n{extra_config}\n",
        guest_dir().display()
    ))
    .await;
    m.pull(&image).await;
    if let Some(c) = conflist {
        std::fs::create_dir_all(m.cni_dir()).expect("cni dir");
        std::fs::write(m.cni_dir().join("10-test.conflist"), c).expect("write conflist");
    }
    let logs = tempfile::tempdir().expect("logs");
    let id = run_pod(&m, name, logs.path(), adjust)
        .await
        .unwrap_or_else(|e| panic!("run pod: {e:?}\n{}", m.log()));
    Pod {
        m,
        id,
        image,
        logs,
        _reg: reg,
    }
}

/// Runs pod `name` on `m`, logging to `logs`, its config adjusted by `adjust`.
pub async fn run_pod(
    m: &Moatd,
    name: &str,
    logs: &std::path::Path,
    adjust: impl FnOnce(&mut cri::PodSandboxConfig),
) -> Result<String, tonic::Status> {
    let mut cfg = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("u-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    adjust(&mut cfg);
    let mut rt = m.runtime().await;
    Box::pin(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    }))
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

impl Pod {
    /// Creates container `name` running `cmd`, logging to `<name>/0.log`.
    pub async fn create(&self, name: &str, cmd: &[&str]) -> Result<String, tonic::Status> {
        Box::pin(self.create_with(name, cmd, |_| {})).await
    }

    /// Creates container `name` running `cmd`, its config adjusted by `adjust`.
    pub async fn create_with(
        &self,
        name: &str,
        cmd: &[&str],
        adjust: impl FnOnce(&mut cri::ContainerConfig),
    ) -> Result<String, tonic::Status> {
        self.create_in(&self.id, name, cmd, adjust).await
    }

    /// Creates container `name` running `cmd` in pod `sandbox_id` on the same moatd.
    pub async fn create_in(
        &self,
        sandbox_id: &str,
        name: &str,
        cmd: &[&str],
        adjust: impl FnOnce(&mut cri::ContainerConfig),
    ) -> Result<String, tonic::Status> {
        let mut cfg = self.container_config(name, cmd);
        adjust(&mut cfg);
        let mut rt = self.m.runtime().await;
        Box::pin(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(cfg),
            sandbox_config: None,
        }))
        .await
        .map(|r| r.into_inner().container_id)
    }

    /// The config of container `name` running `cmd` in the busybox image, logging to
    /// `<name>/0.log`, with nothing else filled in (as crictl sends it).
    pub fn container_config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            ..Default::default()
        }
    }

    /// The IP PodSandboxStatus reports for pod `sandbox_id` ("" without a network).
    pub async fn pod_ip(&self, sandbox_id: &str) -> String {
        self.m
            .runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.into(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// Starts a container.
    pub async fn start(&self, id: &str) {
        self.m
            .runtime()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("start: {e:?}\n{}", self.m.log()));
    }

    /// Its CRI status.
    pub async fn status(&self, id: &str) -> cri::ContainerStatus {
        self.m
            .runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status")
    }

    /// Waits (15 s at most) for a container to reach `state`.
    pub async fn wait_state(&self, id: &str, state: cri::ContainerState) -> cri::ContainerStatus {
        for _ in 0..300 {
            let s = self.status(id).await;
            if s.state == state as i32 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "container {id} never reached {state:?}: {:?}",
            self.status(id).await
        );
    }

    /// ExecSync with a 10 s timeout.
    pub async fn exec(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.exec_for(id, cmd, 10).await
    }

    /// ExecSync with a timeout of `secs`.
    pub async fn exec_for(&self, id: &str, cmd: &[&str], secs: i64) -> cri::ExecSyncResponse {
        self.m
            .runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: secs,
            })
            .await
            .unwrap_or_else(|e| panic!("exec {cmd:?}: {e:?}"))
            .into_inner()
    }

    /// A container printing `tick` five times a second, started and logging.
    pub async fn start_ticker(&self) -> String {
        let id = Box::pin(self.create(
            "ticker",
            &["/bin/sh", "-c", "while true; do echo tick; sleep 0.2; done"],
        ))
        .await
        .expect("create");
        self.start(&id).await;
        let ticking = crate::wait_until(Duration::from_secs(20), || {
            self.log("ticker").contains("stdout F tick")
        })
        .await;
        assert!(ticking, "log: {}", self.log("ticker"));
        id
    }

    /// The text of container `name`'s log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(name).join("0.log")).unwrap_or_default()
    }
}
