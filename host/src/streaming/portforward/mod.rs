//! Kubernetes port forwarding into a pod: each forwarded connection reaches localhost:port
//! inside the pod's VM through its agent (not the host-side network namespace, where
//! nothing listens). Transports: `spdy` (`portforward.k8s.io`: a data and an error stream
//! per request id) and `websocket` (two channels per port named in the URL).

pub mod spdy;
pub mod websocket;

/// The SPDY subprotocol.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocols offered, in order of preference ("" when the client names
/// none).
pub const WEBSOCKET_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];

/// Parses a port from a header or query value: 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {s:?}: want 1 to 65535")),
        Ok(p) => Ok(p),
    }
}

/// The message for a failed forward, as kubelet words it.
pub fn forward_error(port: u16, sandbox_id: &str, e: &str) -> String {
    format!("error forwarding port {port} to pod {sandbox_id}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port(" 1 "), Ok(1));
        for bad in ["0", "65536", "-1", "http", ""] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
