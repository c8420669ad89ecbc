//! Manifests, image indexes and their media types: what a registry sends for a reference,
//! and how the platform manifest is picked out of an index.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::error::ImageError;

/// The manifest media types moatd asks registries for.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A parsed top-level document: either an index or a single-platform manifest.
#[derive(Debug)]
pub enum Fetched {
    /// An OCI image index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// An OCI or Docker schema 2 image manifest.
    Manifest(Box<ImageManifest>),
}

/// Parses a manifest or index. The kind is read from the document itself (schema 2
/// documents carry a `mediaType`; OCI ones may not, so the shape decides).
pub fn parse(reference: &str, bytes: &[u8]) -> Result<Fetched, ImageError> {
    let unsupported = |detail: String| ImageError::Unsupported {
        reference: reference.into(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| unsupported(format!("manifest is not JSON: {e}")))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(unsupported(
            "Docker schema 1 manifests are not supported; push the image again with a current client".into(),
        ));
    }
    let media_type = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let is_index = media_type.contains("index")
        || media_type.contains("manifest.list")
        || value.get("manifests").is_some();
    if is_index {
        serde_json::from_value(value)
            .map(|i| Fetched::Index(Box::new(i)))
            .map_err(|e| unsupported(format!("malformed image index: {e}")))
    } else if value.get("layers").is_some() && value.get("config").is_some() {
        serde_json::from_value(value)
            .map(|m| Fetched::Manifest(Box::new(m)))
            .map_err(|e| unsupported(format!("malformed image manifest: {e}")))
    } else {
        Err(unsupported(format!("unknown manifest type {media_type:?}")))
    }
}

/// Picks the manifest for `os/arch` from an index; a descriptor without platform is skipped.
pub fn select_platform<'a>(index: &'a ImageIndex, platform: &str) -> Option<&'a Descriptor> {
    let (os, arch) = platform.split_once('/')?;
    index.manifests().iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
    })
}

/// How a layer blob is compressed, from its first bytes (media types lie too often:
/// Docker's `tar.gzip` type is used for uncompressed layers in the wild).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Sniffs the magic number.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Checks that a layer media type is one we can unpack.
pub fn check_layer_media_type(media_type: &str) -> Result<(), String> {
    const OK: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    if OK.contains(&media_type) {
        Ok(())
    } else {
        Err(format!(
            "layer media type {media_type:?} is not a container filesystem layer"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn docker_list_and_platform_selection() {
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": D.replace('0', "1"), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": D.replace('0', "2"), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        });
        let Fetched::Index(idx) = parse("x", doc.to_string().as_bytes()).expect("parse") else {
            panic!("expected an index")
        };
        let d = select_platform(&idx, "linux/amd64").expect("amd64");
        assert_eq!(d.digest().to_string(), D.replace('0', "2"));
        assert!(select_platform(&idx, "linux/s390x").is_none());
    }

    #[test]
    fn schema2_manifest_parses_and_schema1_is_refused() {
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D, "size": 2},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D, "size": 3}]
        });
        let Fetched::Manifest(m) = parse("x", doc.to_string().as_bytes()).expect("parse") else {
            panic!("expected a manifest")
        };
        assert_eq!(m.layers().len(), 1);
        let v1 = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        assert!(matches!(
            parse("x", v1),
            Err(ImageError::Unsupported { .. })
        ));
        assert!(matches!(
            parse("x", b"not json"),
            Err(ImageError::Unsupported { .. })
        ));
    }

    #[test]
    fn compression_is_sniffed() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/passwd"), Compression::None);
    }

    #[test]
    fn layer_media_types() {
        assert!(check_layer_media_type("application/vnd.oci.image.layer.v1.tar+zstd").is_ok());
        assert!(
            check_layer_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip").is_ok()
        );
        assert!(check_layer_media_type("application/wasm").is_err());
    }
}
