//! Talking to registries: endpoint selection (mirrors first, then the registry itself),
//! plain HTTP for insecure and local registries, credentials, timeouts, and the mapping of
//! transport failures to `ImageError`. The wire protocol is oci-client's.

use std::collections::BTreeMap;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::error::ImageError;
use super::manifest_fetch::Fetcher;
use super::reference::{ImageRef, is_local_registry};
use crate::config::{ImagesConfig, RegistryHostConfig};

/// One place an image can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Reach it over plain HTTP.
    pub plain_http: bool,
    /// A mirror rather than the registry named by the reference.
    pub mirror: bool,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}",
            if self.plain_http { "http" } else { "https" },
            self.host
        )
    }
}

/// Credentials for one pull, from the CRI request's AuthConfig.
#[derive(Clone, Default)]
pub struct Credentials {
    /// How to authenticate.
    pub auth: Option<RegistryAuth>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.auth {
            None | Some(RegistryAuth::Anonymous) => f.write_str("anonymous"),
            Some(RegistryAuth::Basic(u, _)) => write!(f, "basic({u})"),
            Some(RegistryAuth::Bearer(_)) => f.write_str("bearer"),
        }
    }
}

/// The registry settings of moatd: timeouts and per-host mirrors.
#[derive(Debug, Clone)]
pub struct Registries {
    hosts: BTreeMap<String, RegistryHostConfig>,
    images: ImagesConfig,
}

/// A registry session for one pull: its own HTTP clients and token cache, so credentials
/// and tokens of one pull are never reused by another.
pub struct Session {
    http: Client,
    https: Client,
    /// For manifests, which moatd reads itself to bound them (see `manifest_fetch`).
    raw: reqwest::Client,
    auth: RegistryAuth,
    max_manifest_bytes: u64,
}

impl Registries {
    /// From the config.
    pub fn new(hosts: BTreeMap<String, RegistryHostConfig>, images: ImagesConfig) -> Self {
        Self { hosts, images }
    }

    /// Endpoints for a registry host, in the order they are tried.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let cfg = self.hosts.get(registry);
        let mut out: Vec<Endpoint> = cfg
            .map(|c| {
                c.mirrors
                    .iter()
                    .map(|m| {
                        let plain_http = m.starts_with("http://");
                        let host = m
                            .trim_start_matches("http://")
                            .trim_start_matches("https://");
                        Endpoint {
                            host: host.trim_end_matches('/').to_owned(),
                            plain_http,
                            mirror: true,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let insecure = cfg.is_some_and(|c| c.insecure) || is_local_registry(registry);
        out.push(Endpoint {
            host: registry.to_owned(),
            plain_http: insecure,
            mirror: false,
        });
        out
    }

    /// Starts a session for one pull.
    pub fn session(&self, credentials: Credentials) -> Result<Session, ImageError> {
        let make = |protocol| {
            Client::new(ClientConfig {
                protocol,
                read_timeout: Some(self.images.read_timeout()),
                connect_timeout: Some(self.images.connect_timeout()),
                max_concurrent_download: self.images.max_concurrent_downloads,
                ..Default::default()
            })
        };
        let raw = reqwest::Client::builder()
            .read_timeout(self.images.read_timeout())
            .connect_timeout(self.images.connect_timeout())
            .user_agent(concat!("moatd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ImageError::io("create the registry HTTP client", std::io::Error::other(e))
            })?;
        Ok(Session {
            http: make(ClientProtocol::Http),
            https: make(ClientProtocol::Https),
            raw,
            auth: credentials.auth.unwrap_or(RegistryAuth::Anonymous),
            max_manifest_bytes: self.images.max_manifest_bytes,
        })
    }
}

impl Session {
    fn client(&self, ep: &Endpoint) -> &Client {
        if ep.plain_http {
            &self.http
        } else {
            &self.https
        }
    }

    fn reference(image: &ImageRef, ep: &Endpoint, digest: Option<&str>) -> Reference {
        let r = match digest {
            Some(d) => {
                Reference::with_digest(image.registry().into(), image.repository().into(), d.into())
            }
            None => image.to_oci(None),
        };
        let mut r = r;
        if ep.mirror {
            r.set_mirror_registry(ep.host.clone());
        }
        r
    }

    /// Fetches a manifest or index by the image's tag or digest, or by `digest` when given;
    /// one over `images.max_manifest_bytes` is `ImageError::TooLarge`.
    pub async fn manifest(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        digest: Option<&str>,
    ) -> Result<Vec<u8>, ImageError> {
        let r = Self::reference(image, ep, digest);
        Fetcher {
            http: &self.raw,
            oci: self.client(ep),
            auth: &self.auth,
            max_bytes: self.max_manifest_bytes,
        }
        .fetch(ep, image, &r)
        .await
    }

    /// Opens a blob stream. The stream checks the digest itself at its end.
    pub async fn blob(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        digest: &str,
    ) -> Result<SizedStream, ImageError> {
        let r = Self::reference(image, ep, None);
        // Make sure a token is in the cache (a blob request alone does not authenticate).
        self.client(ep)
            .store_auth_if_needed(r.resolve_registry(), &self.auth)
            .await;
        self.client(ep)
            .pull_blob_stream(&r, digest)
            .await
            .map_err(|e| map_error(e, ep, image, "opening a blob"))
    }
}

/// Reads a blob stream to its end, feeding every chunk to `sink`; transport errors are mapped.
pub async fn drain_stream(
    mut stream: SizedStream,
    ep: &Endpoint,
    what: &str,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), StreamError> {
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StreamError::Transport(map_io(e, ep, what)))?;
        crate::metrics::get().pulled_bytes(chunk.len() as u64);
        sink(&chunk).map_err(StreamError::Local)?;
    }
    Ok(())
}

/// Why reading a blob stream stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The registry side failed (timeout, reset, digest check of the stream).
    Transport(ImageError),
    /// Writing it locally failed.
    Local(std::io::Error),
}

fn map_io(e: std::io::Error, ep: &Endpoint, what: &str) -> ImageError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(s) = src {
        if let Some(re) = s.downcast_ref::<reqwest::Error>() {
            return map_reqwest(re, ep, what);
        }
        if let Some(de) = s.downcast_ref::<oci_client::errors::DigestError>() {
            return digest_error(de, ep);
        }
        src = s.source();
    }
    ImageError::BadResponse {
        registry: ep.to_string(),
        detail: format!("{what}: {e}"),
    }
}

fn digest_error(e: &oci_client::errors::DigestError, ep: &Endpoint) -> ImageError {
    match e {
        oci_client::errors::DigestError::VerificationError { expected, actual } => {
            ImageError::DigestMismatch {
                registry: ep.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            }
        }
        other => ImageError::BadResponse {
            registry: ep.to_string(),
            detail: other.to_string(),
        },
    }
}

pub(super) fn map_reqwest(e: &reqwest::Error, ep: &Endpoint, what: &str) -> ImageError {
    let detail = full_chain(e);
    if e.is_timeout() {
        ImageError::Timeout {
            registry: ep.to_string(),
            what: what.into(),
            detail,
        }
    } else if e.is_connect() {
        ImageError::Unreachable {
            registry: ep.to_string(),
            detail,
        }
    } else {
        ImageError::BadResponse {
            registry: ep.to_string(),
            detail: format!("{what}: {detail}"),
        }
    }
}

fn full_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(super) fn map_error(
    e: OciDistributionError,
    ep: &Endpoint,
    image: &ImageRef,
    what: &str,
) -> ImageError {
    let reference = image.canonical();
    let registry = ep.to_string();
    match e {
        OciDistributionError::RequestError(re) => map_reqwest(&re, ep, what),
        OciDistributionError::IoError(io) => map_io(io, ep, what),
        OciDistributionError::DigestError(de) => digest_error(&de, ep),
        OciDistributionError::AuthenticationFailure(detail) => ImageError::Unauthorized {
            reference,
            registry,
            detail,
        },
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            reference,
            registry,
            detail: format!("401 from {url}"),
        },
        OciDistributionError::ImageManifestNotFoundError(detail) => ImageError::RemoteNotFound {
            reference,
            registry,
            detail,
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code))
                .collect();
            let detail = format!(
                "{url}: {}",
                envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if codes
                .iter()
                .any(|c| c.contains("Unknown") || c == "NotFound")
            {
                ImageError::RemoteNotFound {
                    reference,
                    registry,
                    detail,
                }
            } else if codes.iter().any(|c| c == "Unauthorized" || c == "Denied") {
                ImageError::Unauthorized {
                    reference,
                    registry,
                    detail,
                }
            } else {
                ImageError::BadResponse { registry, detail }
            }
        }
        OciDistributionError::ServerError { code, url, message } => match code {
            404 => ImageError::RemoteNotFound {
                reference,
                registry,
                detail: format!("{url}: {message}"),
            },
            401 | 403 => ImageError::Unauthorized {
                reference,
                registry,
                detail: format!("{code} from {url}"),
            },
            _ => ImageError::BadResponse {
                registry,
                detail: format!("HTTP {code} from {url}: {message}"),
            },
        },
        other => ImageError::BadResponse {
            registry,
            detail: format!("{what}: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_and_local_registries_are_plain_http() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "docker.io".to_owned(),
            RegistryHostConfig {
                mirrors: vec!["http://127.0.0.1:5001/".into(), "https://m.example".into()],
                insecure: false,
            },
        );
        let r = Registries::new(hosts, ImagesConfig::default());
        let eps = r.endpoints("docker.io");
        assert_eq!(eps.len(), 3);
        assert_eq!(
            eps[0],
            Endpoint {
                host: "127.0.0.1:5001".into(),
                plain_http: true,
                mirror: true
            }
        );
        assert_eq!(
            eps[1],
            Endpoint {
                host: "m.example".into(),
                plain_http: false,
                mirror: true
            }
        );
        assert_eq!(
            eps[2],
            Endpoint {
                host: "docker.io".into(),
                plain_http: false,
                mirror: false
            }
        );
        let local = r.endpoints("localhost:5000");
        assert_eq!(
            local,
            vec![Endpoint {
                host: "localhost:5000".into(),
                plain_http: true,
                mirror: false
            }]
        );
    }
}
