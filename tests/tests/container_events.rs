//! GetContainerEvents, end to end, as kubelet's evented PLEG uses it: several subscribers
//! see every container's CREATED, STARTED, STOPPED and DELETED events in order, with the
//! pod's status and its containers' statuses; containers that exit on their own and
//! containers of a VM that dies are reported too.

use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_tests::pod::{Pod, pod_with_image};
use tonic::Streaming;

type Kind = cri::ContainerEventType;

async fn subscribe(p: &Pod) -> Streaming<cri::ContainerEventResponse> {
    p.m.runtime()
        .await
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner()
}

/// Reads events until `until` matches one; panics after 60 s.
async fn events_until(
    s: &mut Streaming<cri::ContainerEventResponse>,
    until: impl Fn(&cri::ContainerEventResponse) -> bool,
) -> Vec<cri::ContainerEventResponse> {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.message())
            .await
            .unwrap_or_else(|_| panic!("no event in 60 s; so far: {out:#?}"))
            .expect("stream")
            .expect("the stream ended");
        let done = until(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn kinds_of(events: &[cri::ContainerEventResponse], id: &str) -> Vec<Kind> {
    events
        .iter()
        .filter(|e| e.container_id == id)
        .map(|e| Kind::try_from(e.container_event_type).expect("known type"))
        .collect()
}

fn is(e: &cri::ContainerEventResponse, id: &str, kind: Kind) -> bool {
    e.container_id == id && e.container_event_type == kind as i32
}

#[tokio::test(flavor = "multi_thread")]
async fn every_lifecycle_change_reaches_every_subscriber() {
    let p = pod_with_image("events").await;
    let mut a = subscribe(&p).await;
    let mut b = subscribe(&p).await;

    // Exits on its own.
    let quick = p
        .create("quick", &["sh", "-c", "exit 3"])
        .await
        .expect("create");
    p.start(&quick).await;
    // Stopped and removed through the CRI.
    let sleeper = p
        .create("sleeper", &["sleep", "300"])
        .await
        .expect("create");
    p.start(&sleeper).await;
    p.wait_state(&quick, cri::ContainerState::ContainerExited)
        .await;
    let mut rt = p.m.runtime().await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: sleeper.clone(),
        timeout: 60,
    })
    .await
    .expect("stop");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: sleeper.clone(),
    })
    .await
    .expect("remove");

    for s in [&mut a, &mut b] {
        let evs = events_until(s, |e| is(e, &sleeper, Kind::ContainerDeletedEvent)).await;
        assert_eq!(
            kinds_of(&evs, &quick),
            [
                Kind::ContainerCreatedEvent,
                Kind::ContainerStartedEvent,
                Kind::ContainerStoppedEvent
            ],
            "{evs:#?}"
        );
        assert_eq!(
            kinds_of(&evs, &sleeper),
            [
                Kind::ContainerCreatedEvent,
                Kind::ContainerStartedEvent,
                Kind::ContainerStoppedEvent,
                Kind::ContainerDeletedEvent
            ],
            "{evs:#?}"
        );
        for e in &evs {
            let pod = e.pod_sandbox_status.as_ref().expect("the pod's status");
            assert_eq!(pod.id, p.id);
            assert!(e.created_at > 0);
        }
        // The statuses are the containers' as the event is sent.
        let stopped = evs
            .iter()
            .find(|e| is(e, &quick, Kind::ContainerStoppedEvent))
            .expect("quick stopped");
        let st = stopped
            .containers_statuses
            .iter()
            .find(|c| c.id == quick)
            .expect("quick's status");
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, 3);
        let deleted = evs.last().expect("deleted");
        assert!(
            deleted.containers_statuses.iter().all(|c| c.id != sleeper),
            "a deleted container has no status"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_containers_of_a_vm_that_dies_are_reported_stopped() {
    let p = pod_with_image("doomed").await;
    let id = p.create("victim", &["sleep", "300"]).await.expect("create");
    p.start(&id).await;
    p.wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    let mut s = subscribe(&p).await;
    let vmm = moat_tests::vmm_mark();
    let pids = moat_tests::pids_with(&[&p.id, vmm]);
    assert!(!pids.is_empty(), "no VMM found for {}", p.id);
    for pid in pids {
        // SAFETY: kill(2) on a pid read from /proc.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let evs = events_until(&mut s, |e| is(e, &id, Kind::ContainerStoppedEvent)).await;
    let last = evs.last().expect("stopped");
    let st = last
        .containers_statuses
        .iter()
        .find(|c| c.id == id)
        .expect("its status");
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert!(
        st.message.contains("VM") || st.reason == "Unknown",
        "the status says the VM is gone: {st:?}"
    );
}
