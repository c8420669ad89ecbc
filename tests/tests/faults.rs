//! Faults a node runtime lives through, with real VMs: a VM (or one of its back-ends)
//! killed under a running container, and a full disk under root_dir.

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::moatd::Moatd;
use moat_tests::oci::{Compression, Flavor, Image, Layer, TarBuilder};
use moat_tests::pod::pod_with_image;
use moat_tests::registry::Registry;
use tonic::Code;

/// Kills every process of pod `p` whose command line holds `what`, then checks that within
/// a second the pod is NOTREADY and its container EXITED as killed with its VM, and that
/// stopping and removing the pod leaves nothing behind.
async fn a_pod_survives_losing(what: &str, name: &str) {
    let p = pod_with_image(name).await;
    let id = p.create("victim", &["sleep", "300"]).await.expect("create");
    p.start(&id).await;
    p.wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    let short = &p.id[..12];
    let victims = moat_tests::pids_with(&[short, what]);
    assert!(!victims.is_empty(), "no {what} process for {short}");
    let mut rt = p.m.runtime().await;
    let killed = Instant::now();
    for pid in victims {
        // SAFETY: kill(2) on a pid read from /proc.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (mut notready, mut exited) = (None, None);
    while killed.elapsed() < Duration::from_secs(10) && (notready.is_none() || exited.is_none()) {
        let st = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .expect("pod status")
            .into_inner()
            .status
            .expect("status");
        if notready.is_none() && st.state == cri::PodSandboxState::SandboxNotready as i32 {
            notready = Some(killed.elapsed());
        }
        let c = p.status(&id).await;
        if exited.is_none() && c.state == cri::ContainerState::ContainerExited as i32 {
            exited = Some((killed.elapsed(), c));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notready = notready.expect("the pod goes NOTREADY");
    let (exited_after, c) = exited.expect("the container exits");
    println!(
        "{what} killed: pod NOTREADY after {} ms, container EXITED after {} ms",
        notready.as_millis(),
        exited_after.as_millis()
    );
    assert!(
        notready <= Duration::from_secs(1),
        "NOTREADY after {notready:?}"
    );
    assert!(
        exited_after <= Duration::from_secs(1),
        "EXITED after {exited_after:?}"
    );
    assert_eq!(c.exit_code, 137, "{c:?}");
    assert_eq!(c.reason, "VMDied", "{c:?}");
    assert!(c.message.contains("VM died"), "{c:?}");
    assert!(
        moat_tests::pids_with(&[short]).is_empty(),
        "every process of the dead VM is gone"
    );
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("stop");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("remove");
    let vm_dir = p.m.run_dir().join("vm").join(short);
    assert!(!vm_dir.exists(), "{} is left", vm_dir.display());
    assert!(
        rt.list_containers(cri::ListContainersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .containers
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_killed_under_a_running_container() {
    a_pod_survives_losing(moat_tests::vmm_mark(), "vmm-killed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vsock_back_end_killed_under_a_running_container() {
    if moat_tests::moatd::on_builtin() {
        println!(
            "SKIPPED a_vsock_back_end_killed_under_a_running_container: the built-in VMM serves vsock itself"
        );
        return;
    }
    a_pod_survives_losing("vsock-backend", "vsock-killed").await;
}

/// A tmpfs of `mib` MiB mounted on `dir` until dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).expect("dir");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }

    /// Fills it: a file that takes every free block.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn image_with(file: &str, bytes: usize) -> Image {
    let tar = TarBuilder::new()
        .file(file, &vec![7u8; bytes], 0o644)
        .finish();
    Image::new(
        vec![Layer::new(&tar, Compression::Gzip, Flavor::Oci)],
        Flavor::Oci,
        "amd64",
        "",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_under_root_dir_is_resource_exhausted_until_space_is_freed() {
    let reg = Registry::start().await;
    reg.push_image("t/small", "v1", &image_with("small", 1 << 10))
        .await;
    // Incompressible enough not to matter: the unpacked layer needs 4 MiB of the disk.
    reg.push_image("t/big", "v1", &image_with("big", 4 << 20))
        .await;
    let mut m = Moatd::start("").await;
    m.stop();
    let disk = SmallDisk::mount(&m.root(), 32);
    m.restart().await;
    let pull = |image: String| {
        let m = &m;
        async move {
            m.images()
                .await
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        }
    };
    let small = format!("{}/t/small:v1", reg.addr);
    let big = format!("{}/t/big:v1", reg.addr);
    pull(small.clone()).await.expect("pull with room");
    let filler = disk.fill();
    let e = pull(big.clone()).await.expect_err("no room");
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("free space"), "{}", e.message());
    // The store is still readable, and holds what it held.
    let listed = m
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list images on a full disk")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].repo_tags.contains(&small));
    std::fs::remove_file(filler).expect("free the space");
    pull(big.clone()).await.expect("pull once space is freed");
    let listed = m
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 2);
    // And after a restart.
    m.restart().await;
    let st = m
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: big,
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(st.image.is_some());
    m.stop();
    drop(disk);
}

/// The containers the pod's guest holds (PodSandboxStatus's verbose info), sorted.
async fn guest_containers(p: &moat_tests::pod::Pod) -> Vec<String> {
    let st =
        p.m.runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("json");
    let mut ids: Vec<String> = info["guestContainers"]
        .as_array()
        .expect("the guest's list")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The containers moatd records for the pod, sorted.
async fn recorded(p: &moat_tests::pod::Pod) -> Vec<cri::Container> {
    let mut all =
        p.m.runtime()
            .await
            .list_containers(cri::ListContainersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .containers;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

/// moatd killed while CreateContainer, then StartContainer, are in flight, at several
/// points of each call: after the restart the guest holds exactly what moatd records,
/// what exists works, and a retry of what is missing succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn moatd_killed_during_create_and_start_leaves_no_half_made_container() {
    let mut p = pod_with_image("crash-mid-call").await;
    for (i, delay) in [0u64, 100, 250, 400].into_iter().enumerate() {
        let name = format!("c{i}");
        // CreateContainer in flight, then moatd dies.
        let pending = {
            let channel = p.m.channel().await;
            let cfg = p.container_config(&name, &["sleep", "300"]);
            let sandbox = p.id.clone();
            tokio::spawn(async move {
                cri::runtime_service_client::RuntimeServiceClient::new(channel)
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: sandbox,
                        config: Some(cfg),
                        sandbox_config: None,
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        p.m.crash_and_restart().await;
        let answered = pending.await.expect("task");
        let records = recorded(&p).await;
        let ids: Vec<String> = records.iter().map(|c| c.id.clone()).collect();
        assert_eq!(
            guest_containers(&p).await,
            ids,
            "create killed after {delay} ms (answer {answered:?}): the guest holds what moatd records"
        );
        let id = match records
            .iter()
            .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        {
            Some(c) => c.id.clone(),
            None => p
                .create(&name, &["sleep", "300"])
                .await
                .expect("a retried create"),
        };
        // StartContainer in flight, then moatd dies.
        let pending = {
            let channel = p.m.channel().await;
            let id = id.clone();
            tokio::spawn(async move {
                cri::runtime_service_client::RuntimeServiceClient::new(channel)
                    .start_container(cri::StartContainerRequest { container_id: id })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(delay / 4)).await;
        p.m.crash_and_restart().await;
        let answered = pending.await.expect("task");
        let st = p.status(&id).await;
        println!(
            "kill after {delay} ms: create then start answered {answered:?}; the container is {:?}",
            cri::ContainerState::try_from(st.state)
        );
        if st.state == cri::ContainerState::ContainerCreated as i32 {
            p.start(&id).await;
        }
        let st = p
            .wait_state(&id, cri::ContainerState::ContainerRunning)
            .await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        let r = p.exec(&id, &["echo", "ok"]).await;
        assert_eq!(
            (r.exit_code, r.stdout.as_slice()),
            (0, &b"ok\n"[..]),
            "{r:?}"
        );
        let ids: Vec<String> = recorded(&p).await.iter().map(|c| c.id.clone()).collect();
        assert_eq!(guest_containers(&p).await, ids);
    }
}

/// moatd killed while RemovePodSandbox is in flight: after the restart the pod is either
/// whole or gone, a retried remove succeeds, and nothing of the VM is left.
#[tokio::test(flavor = "multi_thread")]
async fn moatd_killed_during_remove_pod_sandbox_then_a_retry_cleans_up() {
    let mut p = pod_with_image("crash-mid-remove").await;
    let id = p.create("c", &["sleep", "300"]).await.expect("create");
    p.start(&id).await;
    let pending = {
        let channel = p.m.channel().await;
        let sandbox = p.id.clone();
        tokio::spawn(async move {
            cri::runtime_service_client::RuntimeServiceClient::new(channel)
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox,
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.m.crash_and_restart().await;
    println!(
        "RemovePodSandbox answered {:?}",
        pending.await.expect("task")
    );
    let mut rt = p.m.runtime().await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("a retried remove");
    assert!(
        rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .expect("list")
            .into_inner()
            .items
            .is_empty()
    );
    assert!(recorded(&p).await.is_empty());
    let short = &p.id[..12];
    assert!(
        moat_tests::wait_until(Duration::from_secs(10), || moat_tests::pids_with(&[short])
            .is_empty())
        .await,
        "no process of the removed pod is left"
    );
    assert!(!p.m.run_dir().join("vm").join(short).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_directory_refuses_new_containers_until_space_is_freed() {
    let p = pod_with_image("full-logs").await;
    let disk = SmallDisk::mount(p.logs.path(), 8);
    let filler = disk.fill();
    let e = p
        .create("talker", &["sh", "-c", "echo hello; sleep 300"])
        .await
        .expect_err("no room for its log");
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("log directory") && e.message().contains("free space"),
        "{}",
        e.message()
    );
    std::fs::remove_file(filler).expect("free the space");
    let id = p
        .create("talker", &["sh", "-c", "echo hello; sleep 300"])
        .await
        .expect("create once space is freed");
    p.start(&id).await;
    assert!(
        moat_tests::wait_until(Duration::from_secs(20), || p
            .log("talker")
            .contains("hello"))
        .await,
        "the container's log is written"
    );
    p.m.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .expect("remove");
    drop(disk);
}
