//! CRI v1 ImageService: each handler checks its request, calls the image manager, and
//! converts between CRI messages and the manager's own types.

use std::collections::HashMap;

use base64::Engine as _;
use k8s_cri::v1 as cri;
use oci_client::secrets::RegistryAuth;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::images::{Credentials, ImageError, ImageManager, ImageRecord};

/// The gRPC service.
pub struct CriImageService {
    images: ImageManager,
}

impl CriImageService {
    /// Wraps the image manager.
    pub fn new(images: ImageManager) -> Self {
        Self { images }
    }
}

/// The image name a request carries, or InvalidArgument.
fn image_name(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Status::invalid_argument(
            "image spec is missing or has an empty image name",
        )),
    }
}

/// Credentials from the CRI AuthConfig.
pub fn credentials(auth: Option<&cri::AuthConfig>) -> Result<Credentials, ImageError> {
    let Some(a) = auth else {
        return Ok(Credentials::default());
    };
    if !a.registry_token.is_empty() {
        return Ok(Credentials {
            auth: Some(RegistryAuth::Bearer(a.registry_token.clone())),
        });
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Credentials {
            auth: Some(RegistryAuth::Basic(a.username.clone(), a.password.clone())),
        });
    }
    if !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| {
                ImageError::InvalidRequest(format!("auth is not base64 of user:password: {e}"))
            })?;
        let s = String::from_utf8(raw).map_err(|_| {
            ImageError::InvalidRequest("auth is not base64 of UTF-8 user:password".into())
        })?;
        let (u, p) = s.split_once(':').ok_or_else(|| {
            ImageError::InvalidRequest("auth must be base64 of user:password".into())
        })?;
        return Ok(Credentials {
            auth: Some(RegistryAuth::Basic(u.into(), p.into())),
        });
    }
    if !a.identity_token.is_empty() {
        return Err(ImageError::InvalidRequest(
            "identity_token (OAuth2 refresh tokens) is not supported; pass username and password, or registry_token".into(),
        ));
    }
    Ok(Credentials::default())
}

/// The CRI view of an image record.
pub fn to_cri_image(r: &ImageRecord) -> cri::Image {
    let (uid, username) = user_of(&r.user);
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size(),
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// Splits an image config `User` (`uid`, `name`, `uid:gid`, `name:group`) the way kubelet
/// reads it: a numeric user becomes `uid`, anything else `username`.
fn user_of(user: &str) -> (Option<i64>, String) {
    let u = user.split(':').next().unwrap_or_default();
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(n) => (Some(n), String::new()),
        Err(_) => (None, u.to_owned()),
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for CriImageService {
    #[instrument(skip_all, fields(filter))]
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let req = request.into_inner();
        let wanted = req
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.trim().is_empty());
        let images = match wanted {
            Some(name) => {
                tracing::Span::current().record("filter", name.as_str());
                self.images.status(&name)?.into_iter().collect()
            }
            None => self.images.list()?,
        };
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri_image).collect(),
        }))
    }

    #[instrument(skip_all, fields(image))]
    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref())?;
        tracing::Span::current().record("image", name);
        // CRI: an absent image is an empty answer, not an error.
        let Some(record) = self.images.status(name)? else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "id": record.id,
                "manifestDigest": record.manifest_digest,
                "indexDigest": record.index_digest,
                "layers": record.layers,
                "pulledAt": record.pulled_at,
                "user": record.user,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri_image(&record)),
            info,
        }))
    }

    #[instrument(skip_all, fields(image))]
    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref())?;
        tracing::Span::current().record("image", name);
        let creds = credentials(req.auth.as_ref())?;
        let record = self.images.pull(name, creds).await?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    #[instrument(skip_all, fields(image))]
    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref())?;
        tracing::Span::current().record("image", name);
        self.images.remove(name).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    #[instrument(skip_all)]
    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.images.fs_usage().await?;
        let fs = cri::FilesystemUsage {
            timestamp: crate::time::now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.images.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_forms() {
        assert!(credentials(None).expect("none").auth.is_none());
        let basic = cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(
            matches!(credentials(Some(&basic)).expect("b").auth, Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p")
        );
        let packed = cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("a:b:c"),
            ..Default::default()
        };
        assert!(
            matches!(credentials(Some(&packed)).expect("a").auth, Some(RegistryAuth::Basic(u, p)) if u == "a" && p == "b:c")
        );
        let token = cri::AuthConfig {
            registry_token: "t".into(),
            ..Default::default()
        };
        assert!(
            matches!(credentials(Some(&token)).expect("t").auth, Some(RegistryAuth::Bearer(t)) if t == "t")
        );
        let bad = cri::AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        };
        assert!(matches!(
            credentials(Some(&bad)),
            Err(ImageError::InvalidRequest(_))
        ));
        let idt = cri::AuthConfig {
            identity_token: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            credentials(Some(&idt)),
            Err(ImageError::InvalidRequest(_))
        ));
    }

    #[test]
    fn users_split_like_kubelet_expects() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1000"), (Some(1000), String::new()));
        assert_eq!(user_of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_of("nobody:nogroup"), (None, "nobody".into()));
    }
}
