//! A running container's output: the copier task that writes it to the CRI log file and
//! fans it out to attached clients (ReopenContainerLog reaches it too), Attach, and Exec
//! with streamed stdio.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::error::ContainerError;
use super::log_writer::LogMsg;
use super::logs::Stream;
use super::manager::{ContainerManager, agent_err};
use super::record::ContainerRecord;
use super::state::ContainerState;
use crate::guest::{Guest, OutputStream};

/// Output chunks an attached client may fall behind by before it misses some.
const ATTACH_BUFFER: usize = 128;
/// The largest chunk handed to attached clients (the agent reads 32 KiB at a time; a
/// hostile agent's larger chunks are split), so what slow clients hold back is bounded:
/// ATTACH_BUFFER x ATTACH_CHUNK = 4 MiB per container.
const ATTACH_CHUNK: usize = 32 * 1024;

/// An output record as attached clients get it: in pieces of at most ATTACH_CHUNK bytes.
fn attach_pieces(
    c: &crate::guest::OutputRecord,
) -> impl Iterator<Item = crate::guest::OutputRecord> + '_ {
    c.data
        .chunks(ATTACH_CHUNK)
        .map(|piece| crate::guest::OutputRecord {
            stderr: c.stderr,
            data: piece.to_vec(),
            time: c.time,
        })
}

impl ContainerManager {
    pub(super) fn spawn_log_copier(&self, r: &ContainerRecord, mut output: OutputStream) {
        use futures::StreamExt as _;
        let (tx, mut rx) = mpsc::channel::<tokio::sync::oneshot::Sender<std::io::Result<()>>>(4);
        self.inner
            .reopen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.id.clone(), tx);
        let path = r.log_path.clone();
        let id = r.id.clone();
        let this = self.clone();
        let max_log = Some(self.inner.config.log_size_max).filter(|m| *m > 0);
        let (attach_tx, _) = tokio::sync::broadcast::channel(ATTACH_BUFFER);
        self.inner
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.id.clone(), attach_tx.clone());
        tokio::spawn(async move {
            let path = (!path.is_empty()).then(|| std::path::PathBuf::from(&path));
            let log = match super::log_writer::spawn(&id, path, max_log) {
                Ok(tx) => Some(tx),
                Err(e) => {
                    warn!(container = %id, error = %e, "cannot start the log writer");
                    None
                }
            };
            loop {
                tokio::select! {
                    chunk = output.next() => match chunk {
                        Some(Ok(c)) => {
                            if attach_tx.receiver_count() > 0 {
                                for piece in attach_pieces(&c) {
                                    let _ = attach_tx.send(piece);
                                }
                            }
                            let stream = if c.stderr { Stream::Stderr } else { Stream::Stdout };
                            if let Some(tx) = &log {
                                let msg = LogMsg::Output { stream, data: c.data, time: c.time };
                                let _ = tx.send(msg).await;
                            }
                        }
                        Some(Err(_)) | None => break,
                    },
                    Some(done) = rx.recv() => match &log {
                        Some(tx) => {
                            if let Err(e) = tx.send(LogMsg::Reopen(done)).await
                                && let LogMsg::Reopen(done) = e.0
                            {
                                let _ = done.send(Err(std::io::Error::other("the log writer ended")));
                            }
                        }
                        None => {
                            let _ = done.send(Ok(()));
                        }
                    }
                }
            }
            // Dropping the sender ends the log: the writer adds the unfinished lines.
            drop(log);
            this.inner
                .reopen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            // Attached clients see the end of the output.
            this.inner
                .attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let r = self.must_get(id)?;
        if r.state != ContainerState::Running {
            return Err(ContainerError::WrongState(format!(
                "container {} is not running",
                r.id
            )));
        }
        let tx = self
            .inner
            .reopen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.id)
            .cloned();
        let Some(tx) = tx else {
            return Err(ContainerError::WrongState(format!(
                "container {} has no log copier",
                r.id
            )));
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tx.send(done_tx)
            .await
            .map_err(|_| ContainerError::WrongState("the log copier has ended".into()))?;
        match tokio::time::timeout(Duration::from_secs(5), done_rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ContainerError::WrongState(format!(
                "reopen {}: {e}",
                r.log_path
            ))),
            _ => Err(ContainerError::TimedOut(
                "the log copier did not answer".into(),
            )),
        }
    }

    /// Attach: the container's output from now on, and the agent to feed its stdin and
    /// terminal through.
    pub async fn attach(
        &self,
        id: &str,
    ) -> Result<
        (
            ContainerRecord,
            tokio::sync::broadcast::Receiver<crate::guest::OutputRecord>,
            Arc<dyn Guest>,
        ),
        ContainerError,
    > {
        let r = self.must_run(id)?;
        let rx = self
            .inner
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.id)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| {
                ContainerError::WrongState(format!(
                    "container {} has no output to attach to (it is exiting)",
                    r.id
                ))
            })?;
        let agent = self.agent(&r.sandbox_id).await?;
        Ok((r, rx, agent))
    }

    /// Exec with streamed stdio (the streaming server's Exec).
    pub async fn exec_stream(
        &self,
        id: &str,
        spec: crate::guest::ExecSpec,
        input: mpsc::Receiver<crate::guest::StdinEvent>,
    ) -> Result<crate::guest::ExecEvents, ContainerError> {
        let r = self.must_run(id)?;
        let agent = self.agent(&r.sandbox_id).await?;
        let spec = crate::guest::ExecSpec {
            container_id: r.id.clone(),
            ..spec
        };
        agent
            .exec(spec, input)
            .await
            .map_err(|s| agent_err(&r.id, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_clients_get_bounded_pieces() {
        let big = crate::guest::OutputRecord {
            stderr: true,
            data: vec![7u8; 4 << 20],
            time: 5,
        };
        let pieces: Vec<_> = attach_pieces(&big).collect();
        assert_eq!(pieces.len(), (4 << 20) / ATTACH_CHUNK);
        assert!(
            pieces
                .iter()
                .all(|p| p.data.len() == ATTACH_CHUNK && p.stderr && p.time == 5)
        );
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.data.clone()).collect();
        assert_eq!(joined, big.data);
    }
}
