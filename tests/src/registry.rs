//! Debian's `docker-registry` (CNCF distribution) on a free loopback port, and a small
//! push client for the images `oci` builds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::oci::{Image, digest};

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: tempfile::TempDir,
    auth: Option<(String, String)>,
    http: reqwest::Client,
}

impl Registry {
    /// Starts an open registry.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a registry; with `auth`, it requires that user and password (htpasswd).
    pub async fn start_with(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let port = crate::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth_yaml = String::new();
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect(
                    "htpasswd missing: install Debian's apache2-utils (scripts/setup-test.sh does)",
                );
            assert!(out.status.success(), "htpasswd failed");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, out.stdout).expect("write htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: moat-test\n    path: {}\n",
                path.display()
            );
        }
        let storage: PathBuf = dir.path().join("storage");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
            storage.display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).expect("write registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry missing: install Debian's docker-registry (scripts/setup-test.sh does)");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let reg = Self {
            child,
            addr,
            _dir: dir,
            auth: auth.map(|(u, p)| (u.into(), p.into())),
            http,
        };
        let url = format!("http://{}/v2/", reg.addr);
        for _ in 0..250 {
            if reg.http.get(&url).send().await.is_ok() {
                return reg;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("docker-registry did not start on {}", reg.addr);
    }

    fn req(&self, m: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads one blob (monolithic upload).
    pub async fn push_blob(&self, repo: &str, blob: &[u8]) -> String {
        let d = digest(blob);
        let head = self
            .req(
                reqwest::Method::HEAD,
                &format!("http://{}/v2/{repo}/blobs/{d}", self.addr),
            )
            .send()
            .await;
        if head.is_ok_and(|r| r.status().is_success()) {
            return d;
        }
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(r.status().as_u16(), 202, "start upload: {}", r.status());
        let loc = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .expect("upload");
        assert_eq!(
            r.status().as_u16(),
            201,
            "upload blob: {}",
            r.text().await.unwrap_or_default()
        );
        d
    }

    /// Uploads a manifest (or index) under `reference` (a tag or digest).
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("http://{}/v2/{repo}/manifests/{reference}", self.addr),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("push manifest");
        assert_eq!(
            r.status().as_u16(),
            201,
            "push manifest: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Pushes an image's blobs and manifest, tagged `tag`. Returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, img: &Image) -> String {
        for l in &img.layers {
            self.push_blob(repo, &l.blob).await;
        }
        self.push_blob(repo, &img.config).await;
        self.push_manifest(repo, tag, &img.manifest_type, &img.manifest)
            .await;
        img.manifest_digest()
    }

    /// Pushes several platform images and an index over them, tagged `tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, images: &[(&Image, &str)]) -> String {
        for (img, _) in images {
            let d = img.manifest_digest();
            for l in &img.layers {
                self.push_blob(repo, &l.blob).await;
            }
            self.push_blob(repo, &img.config).await;
            self.push_manifest(repo, &d, &img.manifest_type, &img.manifest)
                .await;
        }
        let idx = crate::oci::index(images);
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &idx)
            .await;
        digest(&idx)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
