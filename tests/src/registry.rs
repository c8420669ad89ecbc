//! Debian's `docker-registry` (CNCF distribution) on a free loopback port, and a small
//! push client for the images `oci` builds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::oci::{Image, digest};
use crate::token_auth::TokenServer;

/// How the push client authenticates.
enum PushAuth {
    None,
    Basic(String, String),
    /// Bearer tokens from the token server, obtained with basic credentials; cached per
    /// repository.
    Token {
        realm: String,
        service: String,
        user: String,
        password: String,
        tokens: Mutex<HashMap<String, String>>,
    },
}

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: tempfile::TempDir,
    auth: PushAuth,
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
        let push = match auth {
            Some((u, p)) => PushAuth::Basic(u.into(), p.into()),
            None => PushAuth::None,
        };
        Self::start_config(dir, &auth_yaml, push).await
    }

    /// Starts a registry in token auth mode: it accepts only bearer tokens signed by
    /// `tokens`' issuer (trusting its certificate), and sends clients to `tokens` for them.
    /// The push client gets its tokens from `tokens` as `pusher` (user, password).
    pub async fn start_token_auth(tokens: &TokenServer, pusher: (&str, &str)) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let bundle = dir.path().join("token-root.pem");
        std::fs::write(&bundle, tokens.issuer().cert_pem()).expect("write the root cert bundle");
        let issuer = tokens.issuer();
        let auth_yaml = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm(),
            issuer.service,
            issuer.name,
            bundle.display()
        );
        let push = PushAuth::Token {
            realm: tokens.realm(),
            service: issuer.service.clone(),
            user: pusher.0.into(),
            password: pusher.1.into(),
            tokens: Mutex::default(),
        };
        Self::start_config(dir, &auth_yaml, push).await
    }

    async fn start_config(dir: tempfile::TempDir, auth_yaml: &str, auth: PushAuth) -> Self {
        let port = crate::free_port();
        let addr = format!("127.0.0.1:{port}");
        let storage: PathBuf = dir.path().join("storage");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
            storage.display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry missing: install Debian's docker-registry (scripts/setup-test.sh does)");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let url = format!("http://{addr}/v2/");
        for _ in 0..250 {
            if http.get(&url).send().await.is_ok() {
                return Self {
                    child,
                    addr,
                    _dir: dir,
                    auth,
                    http,
                };
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "docker-registry exited ({st}): {}",
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("docker-registry did not start on {addr}");
    }

    /// A push token for `repo` (pull and push) from the token server.
    async fn push_token(&self, repo: &str) -> Option<String> {
        let PushAuth::Token {
            realm,
            service,
            user,
            password,
            tokens,
        } = &self.auth
        else {
            return None;
        };
        if let Some(t) = tokens.lock().expect("tokens").get(repo) {
            return Some(t.clone());
        }
        let mut url = reqwest::Url::parse(realm).expect("token realm URL");
        url.query_pairs_mut()
            .append_pair("service", service)
            .append_pair("scope", &format!("repository:{repo}:pull,push"));
        let r = self
            .http
            .get(url)
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("ask the token server for a push token");
        assert_eq!(r.status().as_u16(), 200, "push token: {}", r.status());
        let body: serde_json::Value = r.json().await.expect("token server answer");
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .expect("a token in the token server's answer")
            .to_owned();
        tokens
            .lock()
            .expect("tokens")
            .insert(repo.to_owned(), token.clone());
        Some(token)
    }

    async fn req(&self, m: reqwest::Method, url: &str, repo: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, url);
        match &self.auth {
            PushAuth::None => r,
            PushAuth::Basic(u, p) => r.basic_auth(u, Some(p)),
            PushAuth::Token { .. } => {
                let t = self.push_token(repo).await.expect("token mode");
                r.bearer_auth(t)
            }
        }
    }

    /// Uploads one blob (monolithic upload).
    pub async fn push_blob(&self, repo: &str, blob: &[u8]) -> String {
        let d = digest(blob);
        let head = self
            .req(
                reqwest::Method::HEAD,
                &format!("http://{}/v2/{repo}/blobs/{d}", self.addr),
                repo,
            )
            .await
            .send()
            .await;
        if head.is_ok_and(|r| r.status().is_success()) {
            return d;
        }
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr),
                repo,
            )
            .await
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
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={d}"), repo)
            .await
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
                repo,
            )
            .await
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
    /// A registry holding the busybox image (busybox-static in one gzip OCI layer, amd64)
    /// as `repo:v1`, and that image's reference.
    pub async fn with_busybox(repo: &str) -> (Self, String) {
        let reg = Self::start().await;
        let img = Image::new(
            vec![crate::oci::Layer::new(
                &crate::oci::busybox_layer_tar(),
                crate::oci::Compression::Gzip,
                crate::oci::Flavor::Oci,
            )],
            crate::oci::Flavor::Oci,
            "amd64",
            "",
        );
        reg.push_image(repo, "v1", &img).await;
        let image = format!("{}/{repo}:v1", reg.addr);
        (reg, image)
    }

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
