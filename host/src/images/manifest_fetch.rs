//! Fetching one manifest or image index within `images.max_manifest_bytes`. oci-client reads
//! a manifest body whole, so moatd sends this GET itself, with the token oci-client gets for
//! the repository, and stops reading at the cap: before the body when its Content-Length
//! is over, and mid-stream when it has none or lies.

use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;

use super::error::{Cap, ImageError};
use super::manifest::ACCEPTED_MANIFEST_TYPES;
use super::reference::ImageRef;
use super::registry::{Endpoint, map_error, map_reqwest};

const WHAT: &str = "reading the manifest";
/// Bytes of an error answer kept for the message.
const MAX_ERROR_BODY: u64 = 16 << 10;

/// What one manifest GET goes through.
pub(super) struct Fetcher<'a> {
    /// The HTTP client for the GET itself.
    pub http: &'a reqwest::Client,
    /// The oci-client of the endpoint's protocol: it gets (and caches) the token.
    pub oci: &'a Client,
    /// The pull's credentials.
    pub auth: &'a RegistryAuth,
    /// The cap.
    pub max_bytes: u64,
}

impl Fetcher<'_> {
    /// GETs the manifest `r` names (on `ep`, a mirror when `r` has a mirror set) and returns
    /// its bytes, checked against the registry's Docker-Content-Digest when it gives one.
    pub async fn fetch(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        r: &Reference,
    ) -> Result<Vec<u8>, ImageError> {
        let token = self
            .oci
            .auth(r, self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| map_error(e, ep, image, WHAT))?;
        let url = manifest_url(ep, r);
        let send = |basic: bool| {
            let mut req = self
                .http
                .get(&url)
                .header(ACCEPT, ACCEPTED_MANIFEST_TYPES.join(", "));
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            } else if let (true, RegistryAuth::Basic(user, password)) = (basic, self.auth) {
                req = req.basic_auth(user, Some(password));
            }
            req.send()
        };
        let transport = |e: reqwest::Error| map_reqwest(&e, ep, WHAT);
        let mut res = send(false).await.map_err(transport)?;
        // Basic credentials go out only when the registry asks for them, as oci-client does.
        if res.status() == StatusCode::UNAUTHORIZED
            && token.is_none()
            && matches!(self.auth, RegistryAuth::Basic(..))
        {
            res = send(true).await.map_err(transport)?;
        }
        let status = res.status();
        if status != StatusCode::OK {
            let (body, _) = read_up_to(&mut res, MAX_ERROR_BODY)
                .await
                .map_err(transport)?;
            return Err(map_error(
                registry_error(status, &body, &url),
                ep,
                image,
                WHAT,
            ));
        }
        let too_large = || ImageError::TooLarge {
            what: format!("the manifest of {} from {ep}", image.canonical()),
            cap: Cap::ManifestBytes,
            limit: self.max_bytes,
        };
        if res.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_large());
        }
        let header_digest = res
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:"))
            .map(str::to_owned);
        let (body, cut) = read_up_to(&mut res, self.max_bytes)
            .await
            .map_err(transport)?;
        if cut {
            return Err(too_large());
        }
        if let Some(expected) = header_digest {
            super::digest::check_bytes(&ep.to_string(), &expected, &body)?;
        }
        Ok(body)
    }
}

/// The manifest URL oci-client would use (`?ns=` names the upstream registry on a mirror).
fn manifest_url(ep: &Endpoint, r: &Reference) -> String {
    let scheme = if ep.plain_http { "http" } else { "https" };
    let reference = r.digest().or(r.tag()).unwrap_or("latest");
    let ns = r
        .namespace()
        .map(|ns| format!("?ns={ns}"))
        .unwrap_or_default();
    format!(
        "{scheme}://{}/v2/{}/manifests/{reference}{ns}",
        r.resolve_registry(),
        r.repository()
    )
}

/// Reads at most `max` bytes of the body; `true` when the body had more (the rest is left
/// unread and the connection dropped with the response).
async fn read_up_to(
    res: &mut reqwest::Response,
    max: u64,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        crate::metrics::get().pulled_bytes(chunk.len() as u64);
        let room = max.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// A registry's refusal as oci-client reports it, so `map_error` treats it the same way.
fn registry_error(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let server_error = || OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_owned(),
        message: String::from_utf8_lossy(body).into_owned(),
    };
    if status == StatusCode::UNAUTHORIZED {
        OciDistributionError::UnauthorizedError {
            url: url.to_owned(),
        }
    } else if status.is_success() {
        OciDistributionError::SpecViolationError(format!("expected HTTP status 200, got {status}"))
    } else if status.is_client_error() {
        match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) => OciDistributionError::RegistryError {
                envelope,
                url: url.to_owned(),
            },
            Err(_) => server_error(),
        }
    } else {
        server_error()
    }
}
