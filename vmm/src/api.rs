//! The control socket: a Unix socket, one JSON request per line, one JSON reply per line.
//!
//! ```text
//! {"op":"status"}   -> {"ok":true,"state":"running","vcpus":2,"memory_mib":256,"uptime_ms":1234}
//! {"op":"pause"}    -> {"ok":true,"state":"paused",...}   (every vCPU parked when it returns)
//! {"op":"resume"}   -> {"ok":true,"state":"running",...}
//! {"op":"shutdown"} -> {"ok":true,"state":"stopping",...} (the VMM ends with ApiShutdown)
//! anything else     -> {"ok":false,"error":"..."}
//! ```
//!
//! The transport (`ApiServer`: socket, lines, JSON) is kept apart from what a request does
//! (`Action`, handled by one `Controller`).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{Phase, VmControl};
use crate::vmm::Exit;

/// What a client can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Report the state.
    Status,
    /// Park every vCPU.
    Pause,
    /// Let them run again.
    Resume,
    /// End the VM (`Exit::ApiShutdown`).
    Shutdown,
}

/// A request as it arrives on the wire.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: Op,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Status,
    Pause,
    Resume,
    Shutdown,
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<Action, String> {
    let request: Request = serde_json::from_str(line.trim()).map_err(|e| {
        format!("bad request (want {{\"op\":\"status|pause|resume|shutdown\"}}): {e}")
    })?;
    Ok(match request.op {
        Op::Status => Action::Status,
        Op::Pause => Action::Pause,
        Op::Resume => Action::Resume,
        Op::Shutdown => Action::Shutdown,
    })
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the action was done.
    pub ok: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `running`, `paused` or `stopping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Milliseconds since the VM was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
}

impl Reply {
    /// A refusal.
    pub fn error(why: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(why.into()),
            state: None,
            vcpus: None,
            memory_mib: None,
            uptime_ms: None,
        }
    }
}

/// The fixed facts a status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmInfo {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
}

/// Carries out actions on the VM.
pub struct Controller {
    control: Arc<VmControl>,
    info: VmInfo,
}

impl Controller {
    /// A controller for the VM run by `control`.
    pub fn new(control: Arc<VmControl>, info: VmInfo) -> Controller {
        Controller { control, info }
    }

    fn state(&self) -> Reply {
        let state = match self.control.phase() {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Stopping(_) => "stopping",
        };
        Reply {
            ok: true,
            error: None,
            state: Some(state.to_owned()),
            vcpus: Some(self.info.vcpus),
            memory_mib: Some(self.info.memory_mib),
            uptime_ms: Some(self.control.uptime().as_millis() as u64),
        }
    }

    /// Does `action`; the reply says what the VM's state is after it.
    pub fn handle(&self, action: Action) -> Reply {
        let done = match action {
            Action::Status => true,
            Action::Pause => self.control.pause(),
            Action::Resume => self.control.resume(),
            Action::Shutdown => {
                self.control.request_exit(Exit::ApiShutdown);
                true
            }
        };
        if done {
            self.state()
        } else {
            Reply::error("the VM is stopping")
        }
    }

    /// Parses and handles one request line; the reply as a JSON line (newline included).
    pub fn handle_line(&self, line: &str) -> String {
        let reply = match parse_request(line) {
            Ok(action) => self.handle(action),
            Err(e) => Reply::error(e),
        };
        let mut text = serde_json::to_string(&reply)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"reply encoding"}"#.to_owned());
        text.push('\n');
        text
    }
}

/// The longest request line accepted.
const MAX_LINE: usize = 4096;
/// How often connection threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The control socket's server threads; stopped (and the socket removed) when dropped.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    stop_evt: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket) and serves `controller` on it.
    pub fn start(path: &Path, controller: Controller) -> std::io::Result<ApiServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let thread = {
            let stop = stop.clone();
            let wake = stop_evt.try_clone()?;
            std::thread::Builder::new()
                .name("vmm-api".into())
                .spawn(move || accept_loop(listener, Arc::new(controller), stop, wake))?
        };
        Ok(ApiServer {
            path: path.to_owned(),
            stop,
            stop_evt,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stop_evt.write(1);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the control socket thread panicked");
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    controller: Arc<Controller>,
    stop: Arc<AtomicBool>,
    wake: EventFd,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "control socket poll failed; the control API is off");
            break;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let (c, s) = (controller.clone(), stop.clone());
                match std::thread::Builder::new()
                    .name("vmm-api-conn".into())
                    .spawn(move || serve(stream, &c, &s))
                {
                    Ok(h) => connections.push(h),
                    Err(e) => tracing::warn!(error = %e, "control socket: no thread for a client"),
                }
                connections.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => tracing::warn!(error = %e, "control socket accept"),
        }
    }
    for h in connections {
        let _ = h.join();
    }
}

/// Serves one client until it hangs up, sends an over-long line, or the server stops.
fn serve(stream: UnixStream, controller: &Controller, stop: &AtomicBool) {
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL_INTERVAL)))
    {
        tracing::warn!(error = %e, "control socket client setup");
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match (&mut reader).take(room).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let complete = line.last() == Some(&b'\n');
                if line.len() > MAX_LINE {
                    let reply = Reply::error(format!("request longer than {MAX_LINE} bytes"));
                    let mut text = serde_json::to_string(&reply).unwrap_or_default();
                    text.push('\n');
                    let _ = writer.write_all(text.as_bytes());
                    return;
                }
                let text = String::from_utf8_lossy(&line);
                if !text.trim().is_empty()
                    && writer
                        .write_all(controller.handle_line(&text).as_bytes())
                        .is_err()
                {
                    return;
                }
                if !complete {
                    // The client hung up in the middle of a line (now answered).
                    return;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kick::VcpuKick;

    #[test]
    fn parses_the_four_ops_and_refuses_the_rest() {
        assert_eq!(parse_request(r#"{"op":"status"}"#), Ok(Action::Status));
        assert_eq!(parse_request(" {\"op\":\"pause\"}\n"), Ok(Action::Pause));
        assert_eq!(parse_request(r#"{"op":"resume"}"#), Ok(Action::Resume));
        assert_eq!(parse_request(r#"{"op":"shutdown"}"#), Ok(Action::Shutdown));
        assert!(parse_request(r#"{"op":"reboot"}"#).is_err());
        assert!(parse_request(r#"{"op":"status","x":1}"#).is_err());
        assert!(parse_request("status").is_err());
        assert!(parse_request("").is_err());
    }

    fn controller() -> (Controller, Arc<VmControl>) {
        let control = VmControl::new();
        let info = VmInfo {
            vcpus: 2,
            memory_mib: 256,
        };
        (Controller::new(control.clone(), info), control)
    }

    #[test]
    fn controller_pauses_resumes_and_shuts_down() {
        let (c, control) = controller();
        let s = c.handle(Action::Status);
        assert!(s.ok);
        assert_eq!(s.state.as_deref(), Some("running"));
        assert_eq!((s.vcpus, s.memory_mib), (Some(2), Some(256)));
        // No vCPU threads: pause returns at once.
        assert_eq!(c.handle(Action::Pause).state.as_deref(), Some("paused"));
        assert_eq!(control.phase(), Phase::Paused);
        assert_eq!(c.handle(Action::Resume).state.as_deref(), Some("running"));
        assert_eq!(
            c.handle(Action::Shutdown).state.as_deref(),
            Some("stopping")
        );
        assert_eq!(control.wait_for_exit(), Exit::ApiShutdown);
        let r = c.handle(Action::Pause);
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("the VM is stopping"));
        assert!(c.handle_line("nonsense").contains(r#""ok":false"#));
    }

    #[test]
    fn socket_answers_one_line_per_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        std::fs::write(&path, b"stale").expect("stale file");
        let (c, control) = controller();
        // A parked vCPU stand-in, so that pause has someone to wait for.
        control.add_vcpu(Arc::new(VcpuKick::new()));
        let vcpu = {
            let control = control.clone();
            std::thread::spawn(move || {
                while control.checkpoint() == crate::control::Next::Run {
                    std::thread::sleep(Duration::from_millis(1));
                }
                control.vcpu_ended();
            })
        };
        let server = ApiServer::start(&path, c).expect("start");
        let stream = UnixStream::connect(&path).expect("connect");
        let mut w = stream.try_clone().expect("clone");
        let mut r = BufReader::new(stream);
        let mut ask = |req: &str| -> Reply {
            w.write_all(req.as_bytes()).expect("send");
            let mut line = String::new();
            r.read_line(&mut line).expect("reply");
            serde_json::from_str(&line).expect("json reply")
        };
        assert_eq!(
            ask("{\"op\":\"status\"}\n").state.as_deref(),
            Some("running")
        );
        assert_eq!(ask("{\"op\":\"pause\"}\n").state.as_deref(), Some("paused"));
        assert_eq!(
            ask("{\"op\":\"status\"}\n").state.as_deref(),
            Some("paused")
        );
        assert!(!ask("{\"op\":\"jump\"}\n").ok);
        assert_eq!(
            ask("{\"op\":\"resume\"}\n").state.as_deref(),
            Some("running")
        );
        assert_eq!(
            ask("{\"op\":\"shutdown\"}\n").state.as_deref(),
            Some("stopping")
        );
        assert_eq!(control.wait_for_exit(), Exit::ApiShutdown);
        vcpu.join().expect("vcpu stand-in");
        drop(server);
        assert!(!path.exists(), "socket removed");
    }
}
