//! Containers in pod VMs, end to end: an image built from busybox-static and pushed to a
//! real docker-registry, pulled by moatd, a pod VM booted under QEMU, containers created,
//! started, logged, exec'd into, stopped and removed through the CRI socket.

use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_tests::pod::pod_with_image;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runs_logs_execs_and_stops() {
    let p = pod_with_image("web").await;
    let id = p
        .create(
            "web",
            &[
                "/bin/sh",
                "-c",
                "echo hello from moat; echo oops >&2; exec sleep 300",
            ],
        )
        .await
        .expect("create");
    assert_eq!(
        p.status(&id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    p.start(&id).await;
    let st = p
        .wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    assert!(st.started_at > 0);
    assert_eq!(
        st.image_ref.split('@').next(),
        Some(p.image.trim_end_matches(":v1"))
    );

    let found = moat_tests::wait_until(Duration::from_secs(20), || {
        p.log("web").contains("stderr F oops")
    })
    .await;
    assert!(found, "log so far: {:?}", p.log("web"));
    let log = p.log("web");
    let line = log
        .lines()
        .find(|l| l.contains("hello from moat"))
        .expect("stdout line");
    let mut parts = line.splitn(4, ' ');
    let ts = parts.next().expect("ts");
    assert!(
        ts.ends_with('Z') && ts.contains('T'),
        "RFC 3339 timestamp: {ts}"
    );
    assert_eq!(
        (parts.next(), parts.next(), parts.next()),
        (Some("stdout"), Some("F"), Some("hello from moat"))
    );

    let r = p.exec(&id, &["cat", "/etc/hostname"]).await;
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
        (0, "web-host")
    );
    let r = p.exec(&id, &["sh", "-c", "echo err >&2; exit 3"]).await;
    assert_eq!(r.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&r.stderr).trim(), "err");
    let r = p
        .exec(&id, &["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"])
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");

    // In the pod's PID namespace (the CRI default) sleep is not PID 1: SIGTERM ends it.
    p.m.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .expect("stop");
    let st = p
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(st.exit_code, 143);
    assert!(st.finished_at >= st.started_at);
    // Stopping again is fine; ExecSync into a stopped container is not.
    p.m.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .expect("stop again");
    let e =
        p.m.runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await
            .expect_err("exec into an exited container");
    assert_eq!(e.code(), Code::FailedPrecondition);
    p.m.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove");
    p.m.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove again");
    let e =
        p.m.runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .expect_err("gone");
    assert_eq!(e.code(), Code::NotFound);
    p.m.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("remove pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_that_exit_or_cannot_start_say_why() {
    let p = pod_with_image("jobs").await;
    let done = p
        .create("done", &["/bin/sh", "-c", "echo finished; exit 7"])
        .await
        .expect("create");
    p.start(&done).await;
    let st = p
        .wait_state(&done, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!((st.exit_code, st.reason.as_str()), (7, "Error"));
    assert!(
        moat_tests::wait_until(Duration::from_secs(5), || p
            .log("done")
            .contains("stdout F finished"))
        .await
    );

    let ok = p.create("ok", &["true"]).await.expect("create");
    p.start(&ok).await;
    let st = p
        .wait_state(&ok, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));

    let bad = p.create("bad", &["/bin/nope"]).await.expect("create");
    let start =
        p.m.runtime()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: bad.clone(),
            })
            .await;
    let st = p
        .wait_state(&bad, cri::ContainerState::ContainerExited)
        .await;
    assert!(
        start.is_err() || st.reason == "StartError",
        "{start:?} {st:?}"
    );
    assert!(
        st.message.contains("/bin/nope"),
        "the reason names the missing binary: {st:?}"
    );

    // The same name again in the same pod is refused while the first exists.
    let e = p.create("done", &["true"]).await.expect_err("duplicate");
    assert_eq!(e.code(), Code::AlreadyExists);
    // Unknown pod, unknown image, bad log path.
    let e =
        p.m.runtime()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: "0".repeat(64),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "x".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: p.image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await
            .expect_err("unknown pod");
    assert_eq!(e.code(), Code::NotFound);

    let list =
        p.m.runtime()
            .await
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: p.id.clone(),
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerExited as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .expect("list")
            .into_inner()
            .containers;
    assert_eq!(list.len(), 3);
    // Removing the pod removes its containers.
    p.m.runtime()
        .await
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("stop pod");
    p.m.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("remove pod");
    let all =
        p.m.runtime()
            .await
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .expect("list")
            .into_inner()
            .containers;
    assert!(all.is_empty());
}

/// Mount points strictly below `dir` (the volumes share's root is a tmpfs of its own).
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn host_paths_are_mounted_read_only_or_read_write() {
    let p = pod_with_image("vols").await;
    let ro = tempfile::tempdir().expect("ro");
    std::fs::write(ro.path().join("in.txt"), "from the host\n").expect("write");
    let rw = tempfile::tempdir().expect("rw");
    let mount = |host: &std::path::Path, path: &str, readonly: bool| cri::Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    };
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "vols".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: p.image.clone(), ..Default::default() }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /ro/in.txt; echo written > /rw/out.txt; (echo x > /ro/nope 2>/dev/null && echo ro-writable) || echo ro-refused; exec sleep 300".into(),
        ],
        mounts: vec![mount(ro.path(), "/ro", true), mount(rw.path(), "/rw", false)],
        log_path: "vols/0.log".into(),
        ..Default::default()
    };
    let id =
        p.m.runtime()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: p.id.clone(),
                config: Some(cfg),
                sandbox_config: None,
            })
            .await
            .expect("create with mounts")
            .into_inner()
            .container_id;
    p.start(&id).await;
    let done =
        moat_tests::wait_until(Duration::from_secs(20), || p.log("vols").contains("ro-")).await;
    assert!(done, "log: {}", p.log("vols"));
    let log = p.log("vols");
    assert!(log.contains("stdout F from the host"), "{log}");
    assert!(log.contains("stdout F ro-refused"), "{log}");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out.txt")).expect("written through"),
        "written\n"
    );
    assert!(!ro.path().join("nope").exists());
    let st = p.status(&id).await;
    assert_eq!(st.mounts.len(), 2);
    assert!(
        st.mounts
            .iter()
            .any(|m| m.container_path == "/ro" && m.readonly)
    );

    let run_dir = p.m.root().with_file_name("run");
    let volumes = run_dir.join("vm").join(&p.id[..12]).join("volumes");
    assert_eq!(
        mounts_under(&volumes).len(),
        3,
        "two host binds, and the container's folder (a tmpfs of its own), while the \
         container exists"
    );
    p.m.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .expect("remove");
    assert!(
        mounts_under(&volumes).is_empty(),
        "binds released: {:?}",
        mounts_under(&volumes)
    );
    assert_eq!(
        std::fs::read_to_string(ro.path().join("in.txt")).expect("host data kept"),
        "from the host\n"
    );

    // A relative container path is refused.
    let bad = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "bad".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: p.image.clone(),
            ..Default::default()
        }),
        command: vec!["true".into()],
        mounts: vec![mount(ro.path(), "relative/path", true)],
        ..Default::default()
    };
    let e =
        p.m.runtime()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: p.id.clone(),
                config: Some(bad),
                sandbox_config: None,
            })
            .await
            .expect_err("relative container path");
    assert_eq!(e.code(), Code::InvalidArgument);
    p.m.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("remove pod");
    assert!(mounts_under(&run_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_resource_updates_and_log_reopen() {
    let p = pod_with_image("ticker").await;
    let id = p.start_ticker().await;

    let s =
        p.m.runtime()
            .await
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .expect("stats")
            .into_inner()
            .stats
            .expect("stats");
    assert!(
        s.cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .expect("cpu")
            .value
            > 0
    );
    assert!(
        s.memory
            .and_then(|m| m.working_set_bytes)
            .expect("memory")
            .value
            > 0
    );
    let all =
        p.m.runtime()
            .await
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .expect("list stats")
            .into_inner()
            .stats;
    assert_eq!(all.len(), 1);

    let res = cri::LinuxContainerResources {
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    p.m.runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(res),
            ..Default::default()
        })
        .await
        .expect("update");
    let r = p
        .exec(
            &id,
            &[
                "sh",
                "-c",
                &format!(
                    "cat /sys/fs/cgroup/moat/*/{id}/memory.max /sys/fs/cgroup/moat/*/{id}/cpu.max"
                ),
            ],
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "67108864\n50000 100000\n",
        "{r:?}"
    );

    // kubelet rotates the log: rename, then ReopenContainerLog.
    let log = p.logs.path().join("ticker/0.log");
    std::fs::rename(&log, p.logs.path().join("ticker/0.log.1")).expect("rotate");
    p.m.runtime()
        .await
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("reopen");
    assert!(
        moat_tests::wait_until(Duration::from_secs(10), || p
            .log("ticker")
            .contains("stdout F tick"))
        .await,
        "new log file"
    );

    // Removing the pod removes everything: processes, mounts, files.
    p.m.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("remove pod");
    let run_dir = p.m.root().with_file_name("run");
    assert!(mounts_under(&run_dir).is_empty());
    let vm_dir = run_dir.join("vm");
    assert_eq!(
        std::fs::read_dir(&vm_dir).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing left in {}",
        vm_dir.display()
    );
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&p.id[..12]))
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_keep_running_and_logging_across_a_moatd_restart() {
    let mut p = pod_with_image("survivor").await;
    let id = p.start_ticker().await;
    p.m.restart().await;
    let before = p.log("ticker").lines().count();
    let more = moat_tests::wait_until(Duration::from_secs(10), || {
        p.log("ticker").lines().count() > before + 3
    })
    .await;
    assert!(
        more,
        "the log goes on after the restart: {before} lines, then {}",
        p.log("ticker").lines().count()
    );
    assert_eq!(
        p.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let r = p.exec(&id, &["echo", "still here"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still here\n");
    p.m.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .expect("stop");
    let st = p
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(
        st.exit_code, 143,
        "SIGTERM ends the shell: not PID 1 of the pod's namespace"
    );
    p.m.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("remove pod");
}
