//! The CRI Unix socket: a stale socket file is replaced, a socket that another live moatd
//! answers on is refused, and the socket is made group-accessible (0660).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process serves on it.
    #[error("another moatd is already serving on {0}; stop it or pass a different --listen")]
    InUse(String),
    /// The path is something else.
    #[error("{0} exists and is not a socket; remove it or pass a different --listen")]
    NotASocket(String),
    /// I/O.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the socket at `path`.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let io = |source| SocketError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(SocketError::NotASocket(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_and_live_ones_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("run/moat.sock");
        let l = bind(&p).expect("bind");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&p), Err(SocketError::InUse(_))));
        drop(l);
        // The file is left behind, nobody answers: replaced.
        assert!(p.exists());
        let _l = bind(&p).expect("rebind");
        let f = d.path().join("file");
        std::fs::write(&f, "x").expect("w");
        assert!(matches!(bind(&f), Err(SocketError::NotASocket(_))));
    }
}
