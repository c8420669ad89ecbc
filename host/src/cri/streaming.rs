//! The CRI side of streaming: Exec, Attach and PortForward requests are checked and stored
//! behind a single-use token on the streaming server. The sessions that come back with
//! those tokens run in `containers::sessions`.

use k8s_cri::v1 as cri;
use tonic::Status;

use crate::streaming::{AttachRequest, ExecRequest, PortForwardRequest, Request, StreamingServer};

/// The checks Exec and Attach share, as containerd makes them.
fn check_streams(
    call: &str,
    container_id: &str,
    (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{call} needs a container_id"
        )));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true: a terminal merges stderr into stdout",
        ));
    }
    Ok(())
}

/// Checks an ExecRequest the way containerd does.
pub fn exec_request(r: cri::ExecRequest) -> Result<ExecRequest, Status> {
    check_streams(
        "Exec",
        &r.container_id,
        (r.stdin, r.stdout, r.stderr, r.tty),
    )?;
    if r.cmd.is_empty() || r.cmd[0].is_empty() {
        return Err(Status::invalid_argument("Exec needs a command (cmd)"));
    }
    Ok(ExecRequest {
        container_id: r.container_id,
        cmd: r.cmd,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    })
}

/// Checks an AttachRequest.
pub fn attach_request(r: cri::AttachRequest) -> Result<AttachRequest, Status> {
    check_streams(
        "Attach",
        &r.container_id,
        (r.stdin, r.stdout, r.stderr, r.tty),
    )?;
    Ok(AttachRequest {
        container_id: r.container_id,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    })
}

/// Checks a PortForwardRequest.
pub fn port_forward_request(r: cri::PortForwardRequest) -> Result<PortForwardRequest, Status> {
    if r.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument(
            "PortForward needs a pod_sandbox_id",
        ));
    }
    let mut ports = Vec::new();
    for p in r.port {
        match u16::try_from(p) {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "invalid port {p}: want 1 to 65535"
                )));
            }
        }
    }
    Ok(PortForwardRequest {
        sandbox_id: r.pod_sandbox_id,
        ports,
    })
}

/// Stores a checked request and returns its URL.
pub fn url(server: &StreamingServer, req: Request) -> Result<String, Status> {
    server
        .url_for(req)
        .map_err(|e| Status::resource_exhausted(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> cri::ExecRequest {
        cri::ExecRequest {
            container_id: "c".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout,
            stderr,
        }
    }

    #[test]
    fn exec_requests_are_checked() {
        assert!(exec_request(exec(&["sh"], true, true, false, true)).is_ok());
        for bad in [
            exec(&[], false, true, false, false),
            exec(&[""], false, true, false, false),
            exec(&["sh"], false, false, false, false),
            exec(&["sh"], false, true, true, true),
        ] {
            let e = exec_request(bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        let mut no_id = exec(&["sh"], false, true, false, false);
        no_id.container_id.clear();
        assert!(exec_request(no_id).is_err());
    }

    #[test]
    fn port_forward_ports_are_checked() {
        let r = |ports: Vec<i32>| cri::PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: ports,
        };
        assert_eq!(
            port_forward_request(r(vec![80, 8080])).expect("ok").ports,
            vec![80, 8080]
        );
        for bad in [vec![0], vec![-1], vec![65536]] {
            assert_eq!(
                port_forward_request(r(bad)).expect_err("refused").code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
