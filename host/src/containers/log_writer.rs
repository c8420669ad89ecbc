//! The writer of one container's CRI log: a thread of its own, fed through a bounded
//! channel, so formatting and disk writes never run on the async runtime that serves the
//! CRI. A guest that floods its output is slowed down (the channel is full, the agent's
//! stream waits), not moatd.
//!
//! Each chunk is formatted in pieces of at most `PIECE` input bytes: a piece of newlines
//! becomes at most ~48 times its size in records, so the writer's memory stays a few MiB
//! whatever the guest sends.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::logs::{Formatter, LogFile, Stream};

/// Input bytes formatted at a time.
pub const PIECE: usize = 64 * 1024;

/// Chunks queued for the writer before the sender waits.
const QUEUE: usize = 8;

/// What the writer is asked to do.
#[derive(Debug)]
pub enum LogMsg {
    /// Output read at `time` (nanoseconds since the epoch).
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
        /// When.
        time: i64,
    },
    /// Open the path again (kubelet rotated the file); the result goes back.
    Reopen(oneshot::Sender<std::io::Result<()>>),
}

/// Starts the writer of container `id`'s log at `path` (`None`: output is dropped),
/// holding each file at `max_bytes` at most (see `LogFile`). The log ends (the unfinished
/// lines written) when every sender is dropped.
pub fn spawn(
    id: &str,
    path: Option<PathBuf>,
    max_bytes: Option<u64>,
) -> std::io::Result<mpsc::Sender<LogMsg>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let id = id.to_owned();
    std::thread::Builder::new()
        .name("container-log".into())
        .spawn(move || run(&id, path, max_bytes, rx))?;
    Ok(tx)
}

fn run(id: &str, path: Option<PathBuf>, max_bytes: Option<u64>, mut rx: mpsc::Receiver<LogMsg>) {
    let mut file = path.and_then(|p| {
        LogFile::open_capped(&p, max_bytes)
            .map_err(|e| warn!(container = %id, error = %e, "cannot open the log file"))
            .ok()
    });
    let mut fmt = Formatter::default();
    let mut failed = false;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            LogMsg::Output { stream, data, time } => {
                for piece in data.chunks(PIECE) {
                    let bytes = fmt.push(stream, piece, time);
                    if let Some(f) = file.as_mut()
                        && let Err(e) = f.write(&bytes)
                        && !failed
                    {
                        failed = true;
                        warn!(container = %id, error = %e, "writing the container log");
                    }
                }
            }
            LogMsg::Reopen(done) => {
                let r = file.as_mut().map(LogFile::reopen).unwrap_or(Ok(()));
                let _ = done.send(r);
            }
        }
    }
    if let Some(f) = file.as_mut() {
        let _ = f.write(&fmt.finish(crate::time::now_nanos()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_written_in_order_and_the_log_ends_when_senders_go() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("c/0.log");
        let tx = spawn("c", Some(p.clone()), None).expect("spawn");
        for (i, text) in ["one\ntw", "o\n", "three"].iter().enumerate() {
            tx.send(LogMsg::Output {
                stream: Stream::Stdout,
                data: text.as_bytes().to_vec(),
                time: i as i64,
            })
            .await
            .expect("send");
        }
        let (done, reopened) = oneshot::channel();
        tx.send(LogMsg::Reopen(done)).await.expect("send");
        reopened.await.expect("answer").expect("reopen");
        drop(tx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if text.lines().count() == 3 {
                let tags: Vec<&str> = text
                    .lines()
                    .map(|l| &l[l.find(' ').expect("ts") + 1..])
                    .collect();
                assert_eq!(tags, ["stdout F one", "stdout F two", "stdout F three"]);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_flood_of_newlines_stays_within_the_cap() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("0.log");
        let cap = 1 << 20;
        let tx = spawn("c", Some(p.clone()), Some(cap)).expect("spawn");
        for i in 0..8 {
            tx.send(LogMsg::Output {
                stream: Stream::Stdout,
                data: vec![b'\n'; 4 << 20],
                time: i,
            })
            .await
            .expect("send");
        }
        let (done, answer) = oneshot::channel();
        tx.send(LogMsg::Reopen(done)).await.expect("send");
        answer.await.expect("answer").expect("reopen");
        let len = std::fs::metadata(&p).expect("log").len();
        assert!(len > 0 && len <= cap, "{len}");
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(
            text.lines().all(|l| l.ends_with(" stdout F ")),
            "whole records only"
        );
    }
}
