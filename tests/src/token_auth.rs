//! Docker registry token auth: a token issuer that mints the JWTs docker-registry (CNCF
//! distribution 2.8) accepts, and a small token server on 127.0.0.1 that checks HTTP basic
//! credentials and hands them out, the way Docker Hub's `auth.docker.io` does.
//!
//! The issuer makes a fresh P-256 key and a self-signed certificate for it at start; the
//! registry trusts that certificate (`auth.token.rootcertbundle`). Tokens are ES256 JWTs with
//! the claims distribution checks (`iss`, `aud` = the service, `exp`/`nbf` with 60 s leeway)
//! and its `access` claim; the header names the signing key either by its certificate chain
//! (`x5c`) or by its libtrust key id (`kid`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::PublicKeyData as _;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;
use sha2::Digest as _;

/// How a token's header tells the registry which key signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHint {
    /// `x5c`: the signing certificate (base64 DER), which the registry verifies against its
    /// root certificate bundle.
    X5c,
    /// `kid`: the libtrust key id of the signing key, looked up among the keys of the
    /// registry's root certificates.
    Kid,
}

/// Actions granted on one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The repository name, e.g. `t/private`.
    pub repository: String,
    /// `pull`, `push`, ...
    pub actions: Vec<String>,
}

impl Access {
    /// `actions` on `repository`.
    pub fn new(repository: &str, actions: &[&str]) -> Self {
        Self {
            repository: repository.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// What goes into one token. Start from [`TokenSpec::new`] and change fields to make bad
/// tokens (expired, for another audience, ...).
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// `sub`.
    pub subject: String,
    /// The `access` claim.
    pub access: Vec<Access>,
    /// `iss`; `None`: the issuer's own name.
    pub issuer: Option<String>,
    /// `aud`; `None`: the issuer's service.
    pub audience: Option<String>,
    /// `iat` and `nbf`.
    pub issued_at: SystemTime,
    /// `exp`.
    pub expires: SystemTime,
    /// How the header names the key.
    pub key_hint: KeyHint,
}

impl TokenSpec {
    /// A token for `subject` with `access`, valid from now for five minutes, naming its key by
    /// `x5c`.
    pub fn new(subject: &str, access: Vec<Access>) -> Self {
        let now = SystemTime::now();
        Self {
            subject: subject.into(),
            access,
            issuer: None,
            audience: None,
            issued_at: now,
            expires: now + Duration::from_secs(300),
            key_hint: KeyHint::X5c,
        }
    }
}

/// A token signing key with its self-signed certificate.
pub struct TokenIssuer {
    /// The `iss` of its tokens (the registry's `auth.token.issuer`).
    pub name: String,
    /// The `aud` of its tokens (the registry's `auth.token.service`).
    pub service: String,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    kid: String,
    rng: SystemRandom,
}

impl TokenIssuer {
    /// A new P-256 key and self-signed certificate, for tokens from `name` to `service`.
    pub fn new(name: &str, service: &str) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["moat-test-token-issuer".to_owned()])
            .expect("generate the token signing key and certificate");
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &ck.signing_key.serialize_der(),
            &rng,
        )
        .expect("load the token signing key");
        let kid = libtrust_key_id(&ck.signing_key.subject_public_key_info());
        Self {
            name: name.into(),
            service: service.into(),
            key,
            cert_der: ck.cert.der().to_vec(),
            cert_pem: ck.cert.pem(),
            kid,
            rng,
        }
    }

    /// The certificate, PEM: the registry's root certificate bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The libtrust key id of the signing key (the `kid` distribution accepts).
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Signs a token (compact JWS, ES256).
    pub fn mint(&self, spec: &TokenSpec) -> String {
        let header = match spec.key_hint {
            KeyHint::X5c => {
                json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]})
            }
            KeyHint::Kid => json!({"typ": "JWT", "alg": "ES256", "kid": self.kid}),
        };
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).expect("random jti");
        let iat = unix(spec.issued_at);
        let claims = json!({
            "iss": spec.issuer.as_deref().unwrap_or(&self.name),
            "sub": spec.subject,
            "aud": spec.audience.as_deref().unwrap_or(&self.service),
            "exp": unix(spec.expires),
            "nbf": iat,
            "iat": iat,
            "jti": hex::encode(jti),
            "access": spec.access.iter().map(|a| json!({
                "type": "repository",
                "name": a.repository,
                "actions": a.actions,
            })).collect::<Vec<_>>(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign the token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// libtrust's key id: the SHA-256 of the DER SubjectPublicKeyInfo, cut to 240 bits, base32,
/// in twelve groups of four joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = sha2::Sha256::digest(spki_der);
    let b32 = base32(&hash[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32 without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Which JSON field carries the token in the token server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenField {
    /// `token` and `access_token` both, as Docker Hub answers.
    Both,
    /// `token` only.
    Token,
    /// `access_token` only (the OAuth2 name).
    AccessToken,
}

/// One request the token server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user, if any credentials came.
    pub user: Option<String>,
    /// The `scope` parameters.
    pub scopes: Vec<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The HTTP status it answered.
    pub status: u16,
}

struct State {
    issuer: TokenIssuer,
    users: HashMap<String, String>,
    field: TokenField,
    log: Mutex<Vec<TokenRequest>>,
}

/// A token server on 127.0.0.1; stops when dropped.
///
/// Policy: a known user with the right password gets every `pull`/`push` it asks for on the
/// repositories it names; anyone without credentials gets a token that grants nothing (so the
/// registry, not the token server, refuses them, as with Docker Hub); a wrong password or an
/// unknown user gets 401; a `service` other than the issuer's gets 400.
pub struct TokenServer {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    /// Starts a server that signs with `issuer` and knows `users` (name, password).
    pub async fn start(issuer: TokenIssuer, users: &[(&str, &str)]) -> Self {
        Self::start_with(issuer, users, TokenField::Both).await
    }

    /// As [`TokenServer::start`], answering with the token in `field`.
    pub async fn start_with(
        issuer: TokenIssuer,
        users: &[(&str, &str)],
        field: TokenField,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the token server");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(State {
            issuer,
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
            field,
            log: Mutex::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The token endpoint (the registry's `auth.token.realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The issuer it signs with.
    pub fn issuer(&self) -> &TokenIssuer {
        &self.state.issuer
    }

    /// Mints a token directly, without a request (what a CRI `registry_token` carries).
    pub fn mint(&self, spec: &TokenSpec) -> String {
        self.state.issuer.mint(spec)
    }

    /// The requests answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.log.lock().expect("token log").clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer<B>(st: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    let mut scopes = Vec::new();
    let mut service = None;
    let url = reqwest::Url::parse(&format!(
        "http://token{}",
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    ));
    if let Ok(url) = &url {
        for (k, v) in url.query_pairs() {
            match &*k {
                // A scope parameter may hold several scopes separated by spaces.
                "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
                "service" => service = Some(v.into_owned()),
                _ => {}
            }
        }
    }
    let creds = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
        })
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));

    let (status, body) = if req.uri().path() != "/token" || req.method() != hyper::Method::GET {
        (StatusCode::NOT_FOUND, json!({"details": "not found"}))
    } else if service.as_deref().is_some_and(|s| s != st.issuer.service) {
        (
            StatusCode::BAD_REQUEST,
            json!({"details": format!("unknown service {service:?}")}),
        )
    } else {
        let subject = match &creds {
            None => Ok(None),
            Some((u, p)) if st.users.get(u) == Some(p) => Ok(Some(u.clone())),
            Some(_) => Err(()),
        };
        match subject {
            Err(()) => (
                StatusCode::UNAUTHORIZED,
                json!({"details": "incorrect username or password"}),
            ),
            Ok(subject) => {
                let access = match &subject {
                    Some(_) => scopes.iter().filter_map(|s| granted(s)).collect(),
                    None => Vec::new(),
                };
                let spec = TokenSpec::new(subject.as_deref().unwrap_or(""), access);
                let token = st.issuer.mint(&spec);
                let body = match st.field {
                    TokenField::Both => {
                        json!({"token": token, "access_token": token, "expires_in": 300})
                    }
                    TokenField::Token => json!({"token": token, "expires_in": 300}),
                    TokenField::AccessToken => json!({"access_token": token, "expires_in": 300}),
                };
                (StatusCode::OK, body)
            }
        }
    };
    st.log.lock().expect("token log").push(TokenRequest {
        user: creds.map(|(u, _)| u),
        scopes,
        service,
        status: status.as_u16(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"moat-test-token\""),
        );
    }
    resp
}

/// The access a known user gets for one `repository:<name>:<actions>` scope.
fn granted(scope: &str) -> Option<Access> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| matches!(*a, "pull" | "push"))
        .collect();
    (!name.is_empty() && !actions.is_empty()).then(|| Access::new(name, &actions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 section 10, without padding.
        for (input, want) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn key_id_has_twelve_groups_of_four() {
        let id = libtrust_key_id(b"anything");
        let groups: Vec<&str> = id.split(':').collect();
        assert_eq!(groups.len(), 12, "{id}");
        assert!(groups.iter().all(|g| g.len() == 4), "{id}");
    }

    #[test]
    fn scopes_grant_only_pull_and_push_on_repositories() {
        assert_eq!(
            granted("repository:t/private:pull,push"),
            Some(Access::new("t/private", &["pull", "push"]))
        );
        assert_eq!(
            granted("repository:t/private:pull,delete"),
            Some(Access::new("t/private", &["pull"]))
        );
        assert_eq!(granted("registry:catalog:*"), None);
        assert_eq!(granted("repository:t/private:delete"), None);
    }
}
