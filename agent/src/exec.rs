//! Exec with streamed stdio: a new process in a container, its stdin, stdout, stderr and
//! terminal size relayed over one bidirectional gRPC stream, its exit status last.
//!
//! The host going away never leaks the process: when the input stream fails (the host's
//! connection reset or the call was cancelled) or the output can no longer be delivered,
//! the process is killed. A clean end of the input stream only closes stdin.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use moat_proto::agent::{ExecExit, ExecInput, ExecOutput, ExecStart, exec_input, exec_output};
use tokio::sync::mpsc;
use tonic::Status;

use crate::containers::{Containers, ExecStream};
use crate::executor::{ExecProcess, Stdio};

/// How long output may keep flowing after the process exited (a background child holding
/// the pipes), before the exit status is sent anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The end of the terminal's input, as a line discipline reads it: ^D.
const EOT: u8 = 0x04;

fn output(kind: exec_output::Kind) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { kind: Some(kind) })
}

/// Sets the window size of a terminal master.
pub(crate) fn set_window(fd: &OwnedFd, width: u32, height: u32) -> Result<(), Status> {
    let ws = libc::winsize {
        ws_row: height.min(u16::MAX.into()) as u16,
        ws_col: width.min(u16::MAX.into()) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; fd is an open pty master.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(Status::failed_precondition(format!(
            "resize: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Copies `fd` into the output stream as `wrap` messages until EOF; kills `proc` when the
/// host no longer takes output.
fn pump(
    fd: OwnedFd,
    wrap: fn(Vec<u8>) -> exec_output::Kind,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
    proc: Arc<ExecProcess>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // EIO ends a terminal's output: its last slave closed.
        crate::chunks::read_chunks(fd, |data| {
            if tx.blocking_send(output(wrap(data))).is_err() {
                let _ = proc.signal(libc::SIGKILL);
                return false;
            }
            true
        })
    })
}

/// Where input goes.
struct Input {
    /// The stdin pipe, or a duplicate of the terminal master.
    stdin: Option<std::fs::File>,
    /// The terminal master, for resizes and ^D.
    tty: Option<OwnedFd>,
}

/// The input side: writes stdin, applies resizes; returns whether the host went away
/// (an error, as opposed to a clean end of the stream).
async fn relay_input<S>(mut input: S, mut sink: Input) -> bool
where
    S: futures_core::Stream<Item = Result<ExecInput, Status>> + Unpin,
{
    use tokio_stream::StreamExt as _;
    // Writes go through one thread so a process not reading its stdin blocks only it.
    let (wtx, mut wrx) = mpsc::channel::<Option<Vec<u8>>>(8);
    let is_tty = sink.tty.is_some();
    let stdin = sink.stdin.take();
    let writer = std::thread::spawn(move || {
        let mut stdin = stdin;
        while let Some(msg) = wrx.blocking_recv() {
            match (msg, stdin.as_mut()) {
                (Some(data), Some(f)) => {
                    if f.write_all(&data).is_err() {
                        stdin = None;
                    }
                }
                (None, Some(f)) if is_tty => {
                    let _ = f.write_all(&[EOT]);
                }
                (None, _) => stdin = None,
                (Some(_), None) => {}
            }
        }
    });
    let gone = loop {
        match input.next().await {
            None => break false,
            Some(Err(_)) => break true,
            Some(Ok(ExecInput { kind: Some(k) })) => match k {
                exec_input::Kind::Stdin(data) => {
                    if wtx.send(Some(data)).await.is_err() {
                        break false;
                    }
                }
                exec_input::Kind::CloseStdin(_) => {
                    let _ = wtx.send(None).await;
                }
                exec_input::Kind::Resize(r) => {
                    if let Some(fd) = &sink.tty {
                        let _ = set_window(fd, r.width, r.height);
                    }
                }
                exec_input::Kind::Start(_) => {}
            },
            Some(Ok(ExecInput { kind: None })) => {}
        }
    };
    if !gone {
        let _ = wtx.send(None).await;
    }
    drop(wtx);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    gone
}

fn check_start(s: &ExecStart) -> Result<(), Status> {
    if s.cmd.is_empty() || s.cmd[0].is_empty() {
        return Err(Status::invalid_argument("exec needs a command"));
    }
    Ok(())
}

/// Exec: the first message must be `start`.
pub async fn exec<S>(containers: &Containers, mut input: S) -> Result<ExecStream, Status>
where
    S: futures_core::Stream<Item = Result<ExecInput, Status>> + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt as _;
    let start = match input.next().await {
        Some(Ok(ExecInput {
            kind: Some(exec_input::Kind::Start(s)),
        })) => s,
        Some(Err(e)) => return Err(e),
        _ => {
            return Err(Status::invalid_argument(
                "exec: the first message must be start",
            ));
        }
    };
    check_start(&start)?;
    let size = (start.tty && start.width > 0 && start.height > 0).then(|| {
        (
            start.height.min(u16::MAX.into()) as u16,
            start.width.min(u16::MAX.into()) as u16,
        )
    });
    let proc = containers
        .spawn(
            &start.container_id,
            start.cmd.clone(),
            start.tty,
            start.stdin,
            size,
        )
        .await?;
    let proc = Arc::new(proc);
    tracing::info!(container = %start.container_id, pid = proc.pid(), tty = start.tty, "exec started");
    let (tx, rx) = mpsc::channel(16);
    let mut readers = Vec::new();
    let sink = match proc.take_stdio() {
        Some(Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        }) => {
            readers.push(pump(
                stdout,
                exec_output::Kind::Stdout,
                tx.clone(),
                proc.clone(),
            ));
            readers.push(pump(
                stderr,
                exec_output::Kind::Stderr,
                tx.clone(),
                proc.clone(),
            ));
            Input {
                stdin: stdin.map(std::fs::File::from),
                tty: None,
            }
        }
        Some(Stdio::Pty { master }) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| Status::internal(format!("dup the terminal: {e}")))
            };
            let stdin = if start.stdin {
                Some(std::fs::File::from(dup(&master)?))
            } else {
                None
            };
            let tty = Some(dup(&master)?);
            readers.push(pump(
                master,
                exec_output::Kind::Stdout,
                tx.clone(),
                proc.clone(),
            ));
            Input { stdin, tty }
        }
        None => Input {
            stdin: None,
            tty: None,
        },
    };
    // Input: a host that goes away takes the process with it.
    {
        let proc = proc.clone();
        tokio::spawn(async move {
            if relay_input(input, sink).await {
                tracing::info!(
                    pid = proc.pid(),
                    "exec client went away: killing the process"
                );
                let _ = proc.signal(libc::SIGKILL);
            }
        });
    }
    // Exit: after the output drained (or a grace period), the status goes last.
    tokio::spawn(async move {
        let mut waiter = {
            let proc = proc.clone();
            tokio::task::spawn_blocking(move || proc.wait_blocking())
        };
        let waited = tokio::select! {
            w = &mut waiter => w,
            _ = tx.closed() => {
                tracing::info!(pid = proc.pid(), "exec output dropped by the host: killing the process");
                let _ = proc.signal(libc::SIGKILL);
                waiter.await
            }
        };
        let exit = match waited {
            Ok(Ok(s)) => ExecExit {
                exit_code: s.code,
                error: String::new(),
            },
            Ok(Err(e)) => ExecExit {
                exit_code: -1,
                error: e.to_string(),
            },
            Err(e) => ExecExit {
                exit_code: -1,
                error: e.to_string(),
            },
        };
        let drained = tokio::task::spawn_blocking(move || {
            for r in readers {
                let _ = r.join();
            }
        });
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drained).await;
        let _ = tx.send(output(exec_output::Kind::Exit(exit))).await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::tests::{busybox_layer, spec_json};
    use moat_proto::agent::{CreateContainerRequest, TerminalSize};
    use tokio_stream::StreamExt as _;

    /// A started container `id` running `sleep 1000`.
    async fn sleeper(c: &Containers, id: &str) {
        c.create(CreateContainerRequest {
            container_id: id.into(),
            spec_json: spec_json(&["sleep", "1000"], false),
            layers: vec!["aa".into()],
            ..Default::default()
        })
        .await
        .expect("create");
        c.start(id).await.expect("start");
    }

    fn start(id: &str, cmd: &[&str], tty: bool, stdin: bool) -> ExecInput {
        ExecInput {
            kind: Some(exec_input::Kind::Start(ExecStart {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                width: 0,
                height: 0,
            })),
        }
    }

    fn input(kind: exec_input::Kind) -> Result<ExecInput, Status> {
        Ok(ExecInput { kind: Some(kind) })
    }

    /// Collects stdout, stderr and the exit code.
    async fn collect(mut out: ExecStream) -> (Vec<u8>, Vec<u8>, ExecExit) {
        let (mut so, mut se) = (Vec::new(), Vec::new());
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), out.next())
                .await
                .expect("exec output in time")
                .expect("exit before the end")
                .expect("ok");
            match m.kind.expect("kind") {
                exec_output::Kind::Stdout(d) => so.extend(d),
                exec_output::Kind::Stderr(d) => se.extend(d),
                exec_output::Kind::Exit(e) => return (so, se, e),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn exec_streams_stdio_exit_codes_and_terminal_size() {
        let Some(layers) = busybox_layer("exec_streams_stdio_exit_codes_and_terminal_size") else {
            return;
        };
        let root = tempfile::tempdir().expect("root");
        let c = Containers::with_dirs(layers.path().into(), root.path().into());
        sleeper(&c, "e1").await;

        // stdin to cat and back, then EOF.
        let (tx, rx) = mpsc::channel(8);
        tx.send(Ok(start("e1", &["cat"], false, true)))
            .await
            .expect("send");
        let out = exec(&c, tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("exec cat");
        tx.send(input(exec_input::Kind::Stdin(b"through cat\n".to_vec())))
            .await
            .expect("send");
        tx.send(input(exec_input::Kind::CloseStdin(true)))
            .await
            .expect("send");
        let (so, _, e) = collect(out).await;
        assert_eq!(so, b"through cat\n");
        assert_eq!(e.exit_code, 0);

        // Exit codes and stderr.
        for (cmd, code) in [
            ("exit 0", 0),
            ("echo oops >&2; exit 1", 1),
            ("kill -9 $$", 137),
        ] {
            let out = exec(
                &c,
                tokio_stream::iter(vec![Ok(start("e1", &["sh", "-c", cmd], false, false))]),
            )
            .await
            .expect("exec sh");
            let (_, se, e) = collect(out).await;
            assert_eq!(e.exit_code, code, "{cmd}");
            if code == 1 {
                assert_eq!(se, b"oops\n");
            }
        }

        // A terminal: the first size is there from the start; a resize is seen.
        let (tx, rx) = mpsc::channel(8);
        let mut s = start(
            "e1",
            &["sh", "-c", "stty size; read x; stty size"],
            true,
            true,
        );
        if let Some(exec_input::Kind::Start(st)) = s.kind.as_mut() {
            st.width = 80;
            st.height = 24;
        }
        tx.send(Ok(s)).await.expect("send");
        let out = exec(&c, tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("exec tty");
        let mut out = out;
        let mut text = String::new();
        while !text.contains("24 80") {
            match out.next().await.expect("output").expect("ok").kind {
                Some(exec_output::Kind::Stdout(d)) => text.push_str(&String::from_utf8_lossy(&d)),
                other => panic!("unexpected {other:?}"),
            }
        }
        tx.send(input(exec_input::Kind::Resize(TerminalSize {
            width: 132,
            height: 50,
        })))
        .await
        .expect("send");
        tx.send(input(exec_input::Kind::Stdin(b"\n".to_vec())))
            .await
            .expect("send");
        let (so, _, e) = collect(out).await;
        assert!(String::from_utf8_lossy(&so).contains("50 132"), "{so:?}");
        assert_eq!(e.exit_code, 0);

        // Bad requests.
        let e = exec(
            &c,
            tokio_stream::iter(vec![Ok(start("e1", &[], false, false))]),
        )
        .await
        .err()
        .expect("no command");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = exec(
            &c,
            tokio_stream::iter(vec![Ok(start("nope", &["true"], false, false))]),
        )
        .await
        .err()
        .expect("unknown");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = exec(
            &c,
            tokio_stream::iter(Vec::<Result<ExecInput, Status>>::new()),
        )
        .await
        .err()
        .expect("no start");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        c.remove("e1").await.expect("remove");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_host_that_goes_away_takes_the_process_with_it() {
        let Some(layers) = busybox_layer("a_host_that_goes_away_takes_the_process_with_it") else {
            return;
        };
        let root = tempfile::tempdir().expect("root");
        let c = Containers::with_dirs(layers.path().into(), root.path().into());
        sleeper(&c, "e2").await;
        let mut held = Vec::new();
        for how in ["input fails", "output dropped"] {
            let (tx, rx) = mpsc::channel(8);
            tx.send(Ok(start(
                "e2",
                &["sh", "-c", "echo $$; exec sleep 1000"],
                false,
                true,
            )))
            .await
            .expect("send");
            let mut out = exec(&c, tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("exec");
            let pid: i32 = match out.next().await.expect("pid").expect("ok").kind {
                Some(exec_output::Kind::Stdout(d)) => String::from_utf8_lossy(&d)
                    .trim()
                    .parse()
                    .expect("pid number"),
                other => panic!("unexpected {other:?}"),
            };
            // The pid is in the container's PID namespace: find the process by its cmdline.
            let alive = || {
                std::fs::read_dir("/proc")
                    .expect("proc")
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .any(|e| {
                        let status =
                            std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                        cmd == b"sleep\x001000\x00"
                            && status.lines().any(|l| {
                                l.starts_with("NSpid:")
                                    && l.split_whitespace().last() == Some(&pid.to_string())
                            })
                            && !status.contains("State:\tZ")
                    })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !alive() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the exec'd sleep runs"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match how {
                "input fails" => {
                    tx.send(Err(Status::cancelled("gone"))).await.expect("send");
                    drop(out);
                }
                _ => {
                    drop(out);
                    // The input stays open: dropping the output alone must be enough.
                    held.push(tx);
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while alive() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{how}: the process is still there"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        c.remove("e2").await.expect("remove");
    }
}
