//! Building container images in memory: tar layers (with whiteouts, links, owners),
//! compressed as gzip, zstd or not at all, with OCI or Docker schema 2 media types, and
//! multi-platform indexes.

use std::io::Write;

use sha2::{Digest as _, Sha256};

/// sha256 of bytes as `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// OCI image-spec media types.
    Oci,
    /// Docker schema 2 media types.
    Docker,
}

/// A tar layer being written.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0, mode, 0, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("dir");
        self
    }

    /// A regular file.
    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// A regular file with an owner.
    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, data.len() as u64, mode, uid, gid);
        self.b.append_data(&mut h, path, data).expect("file");
        self
    }

    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0, 0o777, 0, 0);
        self.b.append_link(&mut h, path, target).expect("symlink");
        self
    }

    /// A hard link to an earlier entry.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0, 0o644, 0, 0);
        self.b.append_link(&mut h, path, target).expect("hardlink");
        self
    }

    /// A whiteout hiding `path` of a lower layer.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&p, b"", 0o644)
    }

    /// Marks directory `dir` opaque.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// A raw entry whose name is written byte for byte (for hostile archives).
    pub fn raw(
        mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
    ) -> Self {
        let mut h = Self::header(kind, data.len() as u64, 0o644, 0, 0);
        let n = &mut h.as_old_mut().name;
        n[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            let ln = &mut h.as_old_mut().linkname;
            ln[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.b.append(&h, data).expect("raw");
        self
    }

    /// The tar bytes.
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("tar")
    }
}

/// A layer ready to push.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The blob as pushed.
    pub blob: Vec<u8>,
    /// Its digest.
    pub digest: String,
    /// The uncompressed tar's digest.
    pub diff_id: String,
    /// Its media type.
    pub media_type: String,
}

impl Layer {
    /// Compresses a tar.
    pub fn new(tar: &[u8], c: Compression, flavor: Flavor) -> Self {
        let blob = match c {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).expect("gzip");
                e.finish().expect("gzip")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
        };
        let media_type = match (flavor, c) {
            (Flavor::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Flavor::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Flavor::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Flavor::Docker, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        };
        Self {
            digest: digest(&blob),
            diff_id: digest(tar),
            blob,
            media_type: media_type.into(),
        }
    }
}

/// A single-platform image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// The manifest media type.
    pub manifest_type: String,
}

impl Image {
    /// Assembles an image from layers; `user` goes into the config.
    pub fn new(layers: Vec<Layer>, flavor: Flavor, arch: &str, user: &str) -> Self {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "User": user,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).expect("config");
        let (mt, ct) = match flavor {
            Flavor::Oci => (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            ),
            Flavor::Docker => (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            ),
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": ct, "digest": digest(&config), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()
            })).collect::<Vec<_>>(),
        });
        Self {
            layers,
            manifest: serde_json::to_vec(&manifest).expect("manifest"),
            config,
            manifest_type: mt.into(),
        }
    }

    /// The image id moatd must report: the config digest.
    pub fn id(&self) -> String {
        digest(&self.config)
    }

    /// The manifest digest.
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Bytes of config and layer blobs (what ImageStatus reports as size).
    pub fn size(&self) -> u64 {
        self.config.len() as u64 + self.layers.iter().map(|l| l.blob.len() as u64).sum::<u64>()
    }
}

/// An OCI index over several platform images.
pub fn index(images: &[(&Image, &str)]) -> Vec<u8> {
    let v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": images.iter().map(|(img, arch)| serde_json::json!({
            "mediaType": img.manifest_type, "digest": img.manifest_digest(), "size": img.manifest.len(),
            "platform": {"os": "linux", "architecture": arch}
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&v).expect("index")
}

/// The busybox-static base layer: `/bin/busybox`, a few applet links, `/etc/passwd` and
/// `/etc/group` with an unprivileged user.
pub fn busybox_layer_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect(
        "/bin/busybox missing: install Debian's busybox-static (scripts/setup-test.sh does)",
    );
    let mut t = TarBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .file("bin/busybox", &busybox, 0o755);
    for applet in [
        "sh",
        "ls",
        "cat",
        "echo",
        "sleep",
        "id",
        "true",
        "false",
        "env",
        "stat",
        "httpd",
        "nc",
        "stty",
        "head",
        "dd",
        "wc",
        "ps",
        "kill",
        "sha256sum",
        "tr",
        "pidof",
        "wget",
        "ip",
        "top",
        "hostname",
        "touch",
        "grep",
        "brctl",
        "mount",
    ] {
        t = t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nmoat:x:1000:1000:moat:/home/moat:/bin/sh\n",
        0o644,
    )
    .file(
        "etc/group",
        b"root:x:0:\nmoat:x:1000:\nextra:x:2000:moat\n",
        0o644,
    )
    .finish()
}
