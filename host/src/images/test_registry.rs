//! A registry for unit tests: a loopback HTTP/1.1 server answering GETs from a table of
//! paths, including the hostile answers a pull must survive (a body that never ends, a
//! Content-Length that lies), and helpers that build OCI images for it.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the registry answers one path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with the body and its length.
    Body {
        /// Content-Type.
        content_type: String,
        /// The body.
        body: Vec<u8>,
    },
    /// 200, chunked (no length): `prefix`, then spaces until the client hangs up.
    Endless {
        /// Content-Type.
        content_type: String,
        /// What comes first.
        prefix: Vec<u8>,
    },
    /// 200 with a Content-Length of `declared`, then `body` (shorter) and a hang-up.
    Declared {
        /// Content-Type.
        content_type: String,
        /// The length the header gives.
        declared: u64,
        /// What is sent.
        body: Vec<u8>,
    },
}

/// A running registry; stops when dropped.
pub struct TestRegistry {
    /// `127.0.0.1:<port>` (a loopback registry: moatd reaches it over plain HTTP).
    pub addr: String,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    task: tokio::task::JoinHandle<()>,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

impl TestRegistry {
    /// Starts an open one on a free port.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts one that answers only requests with these basic credentials (and asks for
    /// them with a `WWW-Authenticate: Basic` challenge).
    pub async fn start_basic(user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::start_with(Some(token)).await
    }

    async fn start_with(auth: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let r = routes.clone();
        let auth = Arc::new(auth);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, r.clone(), auth.clone()));
            }
        });
        Self { addr, routes, task }
    }

    /// Answers `path` with `reply`.
    pub fn route(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), reply);
    }

    /// Serves `bytes` as a blob of `repo` and returns its digest.
    pub fn blob(&self, repo: &str, content_type: &str, bytes: &[u8]) -> String {
        let digest = super::digest::of(bytes);
        self.route(
            &format!("/v2/{repo}/blobs/{digest}"),
            Reply::Body {
                content_type: content_type.into(),
                body: bytes.to_vec(),
            },
        );
        digest
    }

    /// Pushes an image of gzipped `layers` (tar streams) as `repo:tag`; returns the layer
    /// blobs (digest and bytes), in order.
    pub fn image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        let mut blobs = Vec::new();
        for tar in layers {
            let blob = gzip(tar);
            let digest = self.blob(repo, OCI_LAYER_GZIP, &blob);
            descriptors.push(serde_json::json!({
                "mediaType": OCI_LAYER_GZIP, "digest": digest, "size": blob.len()
            }));
            diff_ids.push(super::digest::of(tar));
            blobs.push((digest, blob));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        })
        .to_string();
        let config_digest = self.blob(repo, OCI_CONFIG, config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": descriptors
        })
        .to_string();
        self.route(
            &format!("/v2/{repo}/manifests/{tag}"),
            Reply::Body {
                content_type: OCI_MANIFEST.into(),
                body: manifest.into_bytes(),
            },
        );
        blobs
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// gzip, as registries serve layers.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// A tar stream of empty regular files (or, with `size`, files of that many zeros).
pub fn tar_of(names: &[String], size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = vec![0u8; size];
    for name in names {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_path(name).expect("path");
        h.set_cksum();
        b.append(&h, &data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

/// Answers one request, then hangs up (`Connection: close`).
async fn serve(
    mut conn: TcpStream,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    auth: Arc<Option<String>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 << 10 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    if let Some(want) = auth.as_ref() {
        let given = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let (scheme, token) = value.trim().split_once(' ')?;
            (name.eq_ignore_ascii_case("authorization") && scheme.eq_ignore_ascii_case("basic"))
                .then(|| token.trim().to_owned())
        });
        if given.as_deref() != Some(want.as_str()) {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
    }
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target);
    let reply = if path == "/v2/" {
        Some(Reply::Body {
            content_type: "application/json".into(),
            body: b"{}".to_vec(),
        })
    } else {
        routes.lock().expect("routes").get(path).cloned()
    };
    let _ = answer(&mut conn, reply).await;
}

async fn answer(conn: &mut TcpStream, reply: Option<Reply>) -> std::io::Result<()> {
    match reply {
        None => {
            let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#;
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body).await
        }
        Some(Reply::Body { content_type, body }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                body.len(),
                super::digest::of(&body)
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body).await
        }
        Some(Reply::Declared {
            content_type,
            declared,
            body,
        }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body).await
        }
        Some(Reply::Endless {
            content_type,
            prefix,
        }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await?;
            // An empty chunk would end the body.
            if !prefix.is_empty() {
                conn.write_all(format!("{:x}\r\n", prefix.len()).as_bytes())
                    .await?;
                conn.write_all(&prefix).await?;
                conn.write_all(b"\r\n").await?;
            }
            let chunk = vec![b' '; 64 << 10];
            // Ends when the client hangs up (the write fails).
            loop {
                conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                conn.write_all(&chunk).await?;
                conn.write_all(b"\r\n").await?;
            }
        }
    }
}
