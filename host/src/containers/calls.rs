//! Calls on a running container that do not change its state: ExecSync, its resource
//! usage, and UpdateContainerResources.

use std::time::Duration;

use tracing::info;

use super::error::ContainerError;
use super::manager::{ContainerManager, ExecResult, agent_err};
use super::record::ContainerRecord;
use super::state::ContainerState;
use crate::guest::Usage;

impl ContainerManager {
    /// ExecSync: runs `cmd` in the container, with a timeout (0 = an hour).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, ContainerError> {
        if cmd.is_empty() {
            return Err(ContainerError::BadRequest(
                "ExecSync needs a command".into(),
            ));
        }
        let r = self.must_get(id)?;
        if r.state != ContainerState::Running {
            return Err(ContainerError::WrongState(format!(
                "container {} is not running",
                r.id
            )));
        }
        let agent = self.agent(&r.sandbox_id).await?;
        let t = if timeout.is_zero() {
            Duration::from_secs(3600)
        } else {
            timeout
        };
        let out = agent
            .exec_sync(&r.id, cmd, t)
            .await
            .map_err(|s| agent_err(&r.id, s))?;
        if out.timed_out {
            return Err(ContainerError::TimedOut(format!(
                "command timed out after {} s",
                t.as_secs_f64()
            )));
        }
        Ok(ExecResult {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        })
    }

    /// Usage of a running container from its cgroup in the guest.
    pub async fn stats(
        &self,
        id: &str,
    ) -> Result<(ContainerRecord, Option<Usage>), ContainerError> {
        let r = self.must_get(id)?;
        if r.state != ContainerState::Running {
            return Ok((r, None));
        }
        let agent = self.agent(&r.sandbox_id).await?;
        let u = agent.stats(&r.id).await.map_err(|s| agent_err(&r.id, s))?;
        Ok((r, Some(u)))
    }

    /// UpdateContainerResources: new CPU and memory limits for a running container.
    pub async fn update_resources(
        &self,
        id: &str,
        cpu: Option<(i64, i64)>,
        memory: Option<i64>,
    ) -> Result<(), ContainerError> {
        let r = self.must_get(id)?;
        if r.state != ContainerState::Running && r.state != ContainerState::Created {
            return Err(ContainerError::WrongState(format!(
                "container {} has exited",
                r.id
            )));
        }
        let agent = self.agent(&r.sandbox_id).await?;
        agent
            .update_resources(&r.id, cpu, memory)
            .await
            .map_err(|s| agent_err(&r.id, s))?;
        info!(container = %r.id, ?cpu, ?memory, "container resources updated");
        Ok(())
    }
}
