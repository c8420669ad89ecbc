//! Typed errors of the image service. They are mapped to gRPC codes in `cri::status`.

/// Everything that can go wrong while resolving, pulling, storing or removing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the caller sent.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The request itself is malformed (bad auth config and the like).
    #[error("{0}")]
    InvalidRequest(String),
    /// No local image matches.
    #[error("image {0:?} not found; pull it first")]
    NotFound(String),
    /// The registry has no such repository, tag or digest.
    #[error("image {reference} not found in registry {registry}: {detail}")]
    RemoteNotFound {
        /// The reference.
        reference: String,
        /// The endpoint asked last.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry refused the credentials (or asked for some).
    #[error(
        "registry {registry} refused access to {reference}: {detail}; check the pull secret (username and password, or registry token)"
    )]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The endpoint.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry could not be reached.
    #[error(
        "registry {registry} is unreachable: {detail}; check the address, or configure it as insecure (plain HTTP) or a mirror in moatd's config"
    )]
    Unreachable {
        /// The endpoint.
        registry: String,
        /// Why.
        detail: String,
    },
    /// The registry stopped answering within the configured read timeout.
    #[error("registry {registry} stopped answering while {what}: {detail}")]
    Timeout {
        /// The endpoint.
        registry: String,
        /// What was being read.
        what: String,
        /// Why.
        detail: String,
    },
    /// Content did not match its digest.
    #[error(
        "content from {registry} does not match its digest: expected {expected}, got {actual}; the registry or a proxy served corrupted data"
    )]
    DigestMismatch {
        /// The endpoint.
        registry: String,
        /// The digest the manifest promised.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The registry answered, but with something unusable.
    #[error("registry {registry} answered badly: {detail}")]
    BadResponse {
        /// The endpoint.
        registry: String,
        /// What was wrong.
        detail: String,
    },
    /// The manifest or config is well-formed JSON we cannot use.
    #[error("unsupported image {reference}: {detail}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// Why.
        detail: String,
    },
    /// A layer tarball tried something unsafe or is corrupt.
    #[error("layer {layer} is unusable: {detail}")]
    BadLayer {
        /// The layer digest.
        layer: String,
        /// What was wrong.
        detail: String,
    },
    /// Registry content passed one of moatd's caps on what an image may hold.
    #[error(
        "{what} exceeds {limit} {unit} ({key}); refused as a possibly hostile image; if the image is genuine, raise {key} in moatd's config",
        unit = .cap.unit(),
        key = .cap.key()
    )]
    TooLarge {
        /// What passed the cap (names the manifest or layer).
        what: String,
        /// Which cap.
        cap: Cap,
        /// The cap's value.
        limit: u64,
    },
    /// Local storage failed.
    #[error("image store: {0}")]
    Storage(String),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The caps on registry content, each set by a key of moatd's `[images]` config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Bytes of one manifest or image index.
    ManifestBytes,
    /// Bytes of one layer's decompressed tar stream.
    LayerUnpackedBytes,
    /// Entries of one layer.
    LayerEntries,
}

impl Cap {
    /// The config key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Self::ManifestBytes => "images.max_manifest_bytes",
            Self::LayerUnpackedBytes => "images.max_layer_unpacked_bytes",
            Self::LayerEntries => "images.max_layer_entries",
        }
    }

    /// What it counts.
    pub fn unit(self) -> &'static str {
        match self {
            Self::ManifestBytes | Self::LayerUnpackedBytes => "bytes",
            Self::LayerEntries => "entries",
        }
    }
}

impl ImageError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<redb::Error> for ImageError {
    fn from(e: redb::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

macro_rules! redb_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ImageError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
redb_error_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);
