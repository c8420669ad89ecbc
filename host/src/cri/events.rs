//! GetContainerEvents: the container manager's lifecycle events as CRI
//! ContainerEventResponses, each with the pod's status and its containers' statuses as
//! they are when the event is sent (what kubelet's evented PLEG reads). A subscriber that
//! fell too far behind gets ResourceExhausted and its stream ends.

use std::pin::Pin;

use k8s_cri::v1 as cri;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::Status;

use super::{container, pod_sandbox};
use crate::containers::ContainerManager;
use crate::containers::events::{EventKind, LifecycleEvent};
use crate::sandbox::SandboxManager;

/// The stream GetContainerEvents answers with.
pub type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

fn event_type(k: EventKind) -> cri::ContainerEventType {
    match k {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    }
}

fn response(
    ev: &LifecycleEvent,
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
) -> cri::ContainerEventResponse {
    let pod = sandboxes.get(&ev.sandbox_id).ok().flatten();
    let statuses = containers
        .list()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.sandbox_id == ev.sandbox_id)
        .map(container::status)
        .collect();
    cri::ContainerEventResponse {
        container_id: ev.container_id.clone(),
        container_event_type: event_type(ev.kind) as i32,
        created_at: ev.at,
        pod_sandbox_status: pod.as_ref().map(pod_sandbox::status),
        containers_statuses: statuses,
    }
}

/// The events `rx` receives from now on, as CRI responses.
pub fn stream(
    rx: broadcast::Receiver<LifecycleEvent>,
    sandboxes: SandboxManager,
    containers: ContainerManager,
) -> EventStream {
    Box::pin(futures::stream::unfold(Some(rx), move |rx| {
        let (sandboxes, containers) = (sandboxes.clone(), containers.clone());
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(response(&ev, &sandboxes, &containers)), Some(rx))),
                Err(RecvError::Lagged(n)) => Some((
                    Err(Status::resource_exhausted(format!(
                        "this GetContainerEvents subscriber fell {n} events behind and its \
                         stream was ended; list the containers again and subscribe anew"
                    ))),
                    None,
                )),
                Err(RecvError::Closed) => None,
            }
        }
    }))
}
