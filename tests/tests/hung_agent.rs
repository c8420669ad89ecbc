//! A pod whose guest stops answering (its VMM SIGSTOPped: the agent hangs with the rest of
//! the VM). Calls into that pod end within their deadline with DeadlineExceeded; calls
//! that need no agent, and List calls, stay fast; StopPodSandbox still succeeds, killing
//! the VMM after the stop timeout, and nothing of the pod is left running.

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::pod::pod_with;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_guest_costs_its_own_calls_their_deadline_and_nothing_else() {
    const AGENT_TIMEOUT: u64 = 3;
    let p = pod_with(
        "hung",
        &format!("agent_timeout_secs = {AGENT_TIMEOUT}\nstop_timeout_secs = 2\n"),
        |_| {},
    )
    .await;
    let a = p.create("a", &["sleep", "300"]).await.expect("create a");
    p.start(&a).await;
    let b = p.create("b", &["sleep", "300"]).await.expect("create b");
    p.start(&b).await;
    for id in [&a, &b] {
        p.wait_state(id, cri::ContainerState::ContainerRunning)
            .await;
    }
    let vmm = moat_tests::vmm_mark();
    let vmms = moat_tests::pids_with(&[&p.id, vmm]);
    assert!(!vmms.is_empty(), "no VMM for {}", p.id);
    for &pid in &vmms {
        // SAFETY: kill(2) on a pid read from /proc.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }

    // A call into the guest ends at its deadline (the agent's timeout plus the command's).
    let mut rt = p.m.runtime().await;
    let exec = {
        let mut rt = rt.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: a,
                    cmd: vec!["true".into()],
                    timeout: 1,
                })
                .await;
            (r, t.elapsed())
        })
    };
    // Meanwhile, calls that need no agent answer at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let t = Instant::now();
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list pods");
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .expect("list containers");
        rt.container_status(cri::ContainerStatusRequest {
            container_id: b.clone(),
            verbose: false,
        })
        .await
        .expect("status");
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "List and status calls wait on the hung guest: {:?}",
            t.elapsed()
        );
    }
    // Calls that ask every container answer within one agent deadline, not one per
    // container, leaving out what the hung guest did not report.
    let t = Instant::now();
    let cs = rt
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .expect("container stats");
    let ps = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("pod stats");
    assert!(
        t.elapsed() < Duration::from_secs(2 * AGENT_TIMEOUT + 2),
        "the stats lists took {:?}",
        t.elapsed()
    );
    assert!(
        cs.into_inner().stats.is_empty(),
        "no figures from a hung guest"
    );
    assert_eq!(ps.into_inner().stats.len(), 1, "the pod is still listed");
    let (r, took) = exec.await.expect("join");
    let e = r.expect_err("the guest does not answer");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        took < Duration::from_secs(AGENT_TIMEOUT + 1 + 3),
        "ExecSync took {took:?}"
    );

    // StopPodSandbox: the containers' stops give up at the agent's timeout (at once, not
    // one after the other), the shutdown call too, then the VMM is killed.
    let t = Instant::now();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("stop: {e:?}\n{}", p.m.log()));
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3 * AGENT_TIMEOUT + 2 + 5),
        "StopPodSandbox took {took:?}"
    );
    let st = p.status(&a).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert!(
        moat_tests::pids_with(&[&p.id, vmm]).is_empty(),
        "the VMM still runs after StopPodSandbox"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("remove");
}
