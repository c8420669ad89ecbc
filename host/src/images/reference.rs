//! Image references: parsing and normalising the names users give, the way containerd's CRI
//! does (`busybox` is `docker.io/library/busybox:latest`).

use oci_client::Reference;

use super::error::ImageError;

/// A normalised, fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses a user-supplied reference. A reference with a digest keeps only the digest;
    /// one with neither gets `:latest`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(ImageError::InvalidReference {
                reference: s.into(),
                reason: "it is empty".into(),
            });
        }
        let r = Reference::try_from(trimmed).map_err(|e| ImageError::InvalidReference {
            reference: s.into(),
            reason: e.to_string(),
        })?;
        if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageError::InvalidReference {
                reference: s.into(),
                reason: "repository name must be lowercase".into(),
            });
        }
        let digest = r.digest().map(str::to_owned);
        let tag = if digest.is_some() {
            None
        } else {
            r.tag().map(str::to_owned)
        };
        if digest.as_ref().is_some_and(|d| !d.starts_with("sha256:")) {
            return Err(ImageError::InvalidReference {
                reference: s.into(),
                reason: "only sha256 digests are supported".into(),
            });
        }
        Ok(Self {
            registry: r.registry().to_owned(),
            repository: r.repository().to_owned(),
            tag,
            digest,
        })
    }

    /// The registry host as the user named it (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }
    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }
    /// The tag, unless the reference is by digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    /// The digest, when the reference is by digest.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
    /// The canonical string: `name:tag` or `name@digest`.
    pub fn canonical(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.name()),
            (None, Some(t)) => format!("{}:{t}", self.name()),
            (None, None) => self.name(),
        }
    }
    /// `name@digest` for a given digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
    /// The reference in oci-client's form, optionally through a mirror host.
    pub fn to_oci(&self, mirror_host: Option<&str>) -> Reference {
        let mut r = match (&self.digest, &self.tag) {
            (Some(d), _) => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.clone())
            }
            (None, t) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        if let Some(m) = mirror_host {
            r.set_mirror_registry(m.to_owned());
        }
        r
    }
}

/// How a caller named a local image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRef {
    /// By image id (`sha256:<hex>` or the bare hex).
    Id(String),
    /// By tag or digest reference, normalised.
    Named(String),
}

/// Classifies a name given to ImageStatus, RemoveImage, CreateContainer and friends.
pub fn parse_local(s: &str) -> Result<LocalRef, ImageError> {
    let t = s.trim();
    let hex = t.strip_prefix("sha256:").unwrap_or(t);
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Ok(LocalRef::Id(format!("sha256:{hex}")));
    }
    Ok(LocalRef::Named(ImageRef::parse(t)?.canonical()))
}

/// True for registries reached over plain HTTP without configuration, as Docker does.
pub fn is_local_registry(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost" || h == "127.0.0.1" || h == "[::1]" || h.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_normalised_like_containerd() {
        let r = ImageRef::parse("busybox").expect("parse");
        assert_eq!(r.canonical(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("user/app:v1").expect("parse");
        assert_eq!(r.canonical(), "docker.io/user/app:v1");
        let r = ImageRef::parse("127.0.0.1:5000/x/y").expect("parse");
        assert_eq!(r.canonical(), "127.0.0.1:5000/x/y:latest");
        assert_eq!(r.registry(), "127.0.0.1:5000");
    }

    #[test]
    fn digest_wins_over_tag() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("quay.io/a/b:v1@{d}")).expect("parse");
        assert_eq!(r.canonical(), format!("quay.io/a/b@{d}"));
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "  ",
            "UPPER/case",
            "a/b:@",
            "a@sha256:123",
            "a b",
            "a/b@md5:0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                matches!(
                    ImageRef::parse(bad),
                    Err(ImageError::InvalidReference { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn local_refs_classify_ids_and_names() {
        let hex = "0".repeat(64);
        assert_eq!(
            parse_local(&hex).expect("id"),
            LocalRef::Id(format!("sha256:{hex}"))
        );
        assert_eq!(
            parse_local(&format!("sha256:{hex}")).expect("id"),
            LocalRef::Id(format!("sha256:{hex}"))
        );
        assert_eq!(
            parse_local("busybox").expect("n"),
            LocalRef::Named("docker.io/library/busybox:latest".into())
        );
    }

    #[test]
    fn local_registries_are_recognised() {
        assert!(is_local_registry("localhost:5000"));
        assert!(is_local_registry("127.0.0.1:43121"));
        assert!(is_local_registry("localhost"));
        assert!(!is_local_registry("docker.io"));
        assert!(!is_local_registry("registry.local:5000"));
    }
}
