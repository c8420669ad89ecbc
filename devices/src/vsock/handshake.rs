//! The host side of the hybrid-vsock handshake: the `CONNECT <port>\n` line a host process
//! writes on the backend's Unix socket, and the `OK <local port>\n` answer.

use thiserror::Error;

/// The longest CONNECT line accepted, newline included (`CONNECT 4294967295\n` is 19 bytes).
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a CONNECT line was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConnectLineError {
    #[error("CONNECT line is longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("CONNECT line is not UTF-8")]
    NotUtf8,
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
    #[error("bad port {0:?}")]
    BadPort(String),
}

/// Parses one CONNECT line (without or with its trailing `\n`; a `\r` before it is
/// tolerated) into the guest port to connect to.
pub fn parse_connect(line: &[u8]) -> Result<u32, ConnectLineError> {
    if line.len() > MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| ConnectLineError::NotUtf8)?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConnectLineError::BadPort(port.to_owned()));
            }
            port.parse::<u32>()
                .map_err(|_| ConnectLineError::BadPort(port.to_owned()))
        }
        _ => Err(ConnectLineError::Malformed(text.to_owned())),
    }
}

/// The answer written to the host stream once the guest accepted the connection.
pub fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 0\n"), Ok(0));
        assert_eq!(parse_connect(b"CONNECT 4294967295\n"), Ok(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 52\r\n"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
    }

    #[test]
    fn refuses_bad_input() {
        use ConnectLineError::*;
        assert!(matches!(parse_connect(b"\n"), Err(Malformed(_))));
        assert!(matches!(
            parse_connect(b"connect 1024\n"),
            Err(Malformed(_))
        ));
        assert!(matches!(parse_connect(b"CONNECT\n"), Err(Malformed(_))));
        assert!(matches!(parse_connect(b"CONNECT 1 2\n"), Err(Malformed(_))));
        assert!(matches!(
            parse_connect(b"CONNECT  1024\n"),
            Err(Malformed(_))
        ));
        assert!(matches!(
            parse_connect(b"GET / HTTP/1.1\n"),
            Err(Malformed(_))
        ));
        assert!(matches!(parse_connect(b"CONNECT -1\n"), Err(BadPort(_))));
        assert!(matches!(parse_connect(b"CONNECT +1\n"), Err(BadPort(_))));
        assert!(matches!(parse_connect(b"CONNECT 0x10\n"), Err(BadPort(_))));
        assert!(matches!(
            parse_connect(b"CONNECT 4294967296\n"),
            Err(BadPort(_))
        ));
        assert!(matches!(parse_connect(b"CONNECT \n"), Err(BadPort(_))));
        assert_eq!(parse_connect(b"CONNECT \xff\n"), Err(NotUtf8));
        assert_eq!(
            parse_connect(b"CONNECT 000000000000000000000000001\n"),
            Err(TooLong)
        );
    }

    #[test]
    fn ok_line_format() {
        assert_eq!(ok_line(1073741824), "OK 1073741824\n");
    }
}
