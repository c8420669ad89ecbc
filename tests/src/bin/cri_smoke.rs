//! `cri-smoke --socket PATH`: runs one pod on a moatd that is already serving, as an
//! operator would check a fresh install (scripts/test-deb.sh runs it against the installed
//! package): a local registry with a busybox image, Version and Status, PullImage,
//! RunPodSandbox with what crictl fills in, a container, ExecSync, then everything removed.
//! Prints each step with its time and `cri-smoke: ok`; exits 1 at the first failure,
//! after removing what it made.

// The CRI messages make each step's future large; this one-shot client awaits them one at
// a time on main's stack, where their size costs nothing.
#![allow(clippy::large_futures)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use moat_tests::registry::Registry;
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

/// Runs `f` as step `name` under `secs`, printing how long it took.
async fn step<T>(
    name: &str,
    secs: u64,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .map_err(|_| format!("no answer within {secs} s"))
        .and_then(|r| r);
    match &r {
        Ok(_) => println!("{name}: ok ({:.3} s)", t.elapsed().as_secs_f64()),
        Err(e) => println!("{name}: FAILED: {e}"),
    }
    r.map_err(|e| format!("{name}: {e}"))
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

struct Made {
    pod: Option<String>,
    container: Option<String>,
}

async fn run(
    rt: &mut Rt,
    images: &mut ImageServiceClient<Channel>,
    image: &str,
    made: &mut Made,
) -> Result<(), String> {
    step("Version", 10, async {
        let v = rt
            .version(cri::VersionRequest::default())
            .await
            .map_err(status)?
            .into_inner();
        println!("  {} {}", v.runtime_name, v.runtime_version);
        Ok(())
    })
    .await?;
    step("Status", 30, async {
        let s = rt
            .status(cri::StatusRequest { verbose: false })
            .await
            .map_err(status)?
            .into_inner();
        let ready = s
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.r#type == "RuntimeReady")
            .ok_or("no RuntimeReady condition")?;
        if !ready.status {
            return Err(format!(
                "RuntimeReady is false: {} {}",
                ready.reason, ready.message
            ));
        }
        Ok(())
    })
    .await?;
    step("PullImage", 120, async {
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(status)
    })
    .await?;
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "cri-smoke".into(),
            uid: format!("cri-smoke-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.path().display().to_string(),
        ..Default::default()
    };
    let pod = step("RunPodSandbox", 300, async {
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
        .map_err(status)
    })
    .await?;
    made.pod = Some(pod.clone());
    let container = step("CreateContainer", 60, async {
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "sleeper/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
        .map_err(status)
    })
    .await?;
    made.container = Some(container.clone());
    step("StartContainer", 60, async {
        rt.start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .map_err(status)
    })
    .await?;
    step("ExecSync", 60, async {
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["echo".into(), "ok".into()],
                timeout: 30,
            })
            .await
            .map_err(status)?
            .into_inner();
        if r.exit_code != 0 || r.stdout != b"ok\n" {
            return Err(format!(
                "exit {} stdout {:?} stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ));
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Removes what `run` made, whatever happened; Err when something is left.
async fn clean(
    rt: &mut Rt,
    images: &mut ImageServiceClient<Channel>,
    image: &str,
    made: &Made,
) -> Result<(), String> {
    if let Some(c) = &made.container {
        let _ = step("StopContainer", 60, async {
            rt.stop_container(cri::StopContainerRequest {
                container_id: c.clone(),
                timeout: 10,
            })
            .await
            .map_err(status)
        })
        .await;
        let _ = step("RemoveContainer", 60, async {
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: c.clone(),
            })
            .await
            .map_err(status)
        })
        .await;
    }
    if let Some(p) = &made.pod {
        let _ = step("StopPodSandbox", 120, async {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .map_err(status)
        })
        .await;
        let _ = step("RemovePodSandbox", 120, async {
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .map_err(status)
        })
        .await;
    }
    let _ = step("RemoveImage", 60, async {
        images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(status)
    })
    .await;
    step("nothing left", 30, async {
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map_err(status)?
            .into_inner()
            .items
            .len();
        let containers = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .map_err(status)?
            .into_inner()
            .containers
            .len();
        if pods + containers > 0 {
            return Err(format!("{pods} pods and {containers} containers are left"));
        }
        Ok(())
    })
    .await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(socket) = args
        .iter()
        .position(|a| a == "--socket")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
    else {
        eprintln!("usage: cri-smoke --socket PATH");
        return ExitCode::from(2);
    };
    let (_reg, image) = Registry::with_busybox("t/busybox").await;
    let channel = moat_tests::moatd::connect(&socket).await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    let mut made = Made {
        pod: None,
        container: None,
    };
    let ran = run(&mut rt, &mut images, &image, &mut made).await;
    let cleaned = clean(&mut rt, &mut images, &image, &made).await;
    match ran.and(cleaned) {
        Ok(()) => {
            println!("cri-smoke: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cri-smoke: {e}");
            ExitCode::FAILURE
        }
    }
}
