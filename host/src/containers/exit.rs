//! A started container's exit: the task that waits for it in the guest, and how an exit
//! (or the loss of the pod's VM) is recorded with its reason.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::state::{ContainerEvent, ContainerState};
use crate::guest::{ExitInfo, Guest};
use crate::time::now_nanos;

impl ContainerManager {
    pub(super) fn spawn_waiter(&self, r: &ContainerRecord, agent: Arc<dyn Guest>) {
        let this = self.clone();
        let id = r.id.clone();
        let sandbox = r.sandbox_id.clone();
        tokio::spawn(async move {
            loop {
                match agent.wait_container(&id, Duration::from_secs(10)).await {
                    Ok(Some(exit)) => {
                        this.record_exit(&id, exit).await;
                        return;
                    }
                    Ok(None) => {}
                    Err(s) => {
                        // The container was removed, or its VM is gone: stop waiting.
                        if this
                            .get(&id)
                            .ok()
                            .flatten()
                            .is_none_or(|r| r.state != ContainerState::Running)
                        {
                            return;
                        }
                        warn!(container = %id, error = %s, "waiting for the container failed");
                        if this.inner.sandboxes.agent(&sandbox).await.is_err() {
                            this.vm_gone(&id, "the pod's VM died: its agent is gone")
                                .await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    pub(super) async fn record_exit(&self, id: &str, w: ExitInfo) {
        let (reason, msg) = if !w.start_error.is_empty() {
            ("StartError", w.start_error.clone())
        } else if w.oom_killed {
            ("OOMKilled", String::new())
        } else if w.code == 0 {
            ("Completed", String::new())
        } else {
            ("Error", String::new())
        };
        let code = if w.start_error.is_empty() {
            w.code
        } else {
            128
        };
        self.mark_exited(id, code, reason, &msg).await;
        if w.finished_at > 0
            && let Ok(Some(mut r)) = self.get(id)
        {
            r.finished_at = w.finished_at;
            let _ = self.inner.records.put(&r);
        }
    }

    pub(super) async fn mark_exited(&self, id: &str, code: i32, reason: &str, message: &str) {
        let _g = self.inner.locks.lock(id).await;
        let Ok(Some(mut r)) = self.get(id) else {
            return;
        };
        if r.state == ContainerState::Exited {
            return;
        }
        r.exit_code = code;
        r.reason = reason.into();
        r.message = message.into();
        r.finished_at = now_nanos();
        if let Err(e) = self.transition(&mut r, ContainerEvent::Exited) {
            warn!(container = %id, error = %e, "could not record the exit");
        }
        info!(container = %id, code, reason, "container exited");
    }
}
