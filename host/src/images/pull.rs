//! One image pull: resolve the reference to a platform manifest, fetch the config and the
//! layers (each blob once across concurrent pulls), unpack each layer once, then record the
//! image in one transaction. Nothing is visible before that commit.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, ImageConfiguration};
use tracing::{debug, info, warn};

use super::digest;
use super::error::ImageError;
use super::manifest::{self, Fetched, check_layer_media_type};
use super::metadata::{ImageRecord, LayerRecord};
use super::reference::ImageRef;
use super::registry::{Credentials, Endpoint, Session, StreamError, drain_stream};
use super::service::Inner;
use crate::time::now_nanos;

/// Tries `f` against each endpoint, starting at `start`, and returns the first success with
/// the index of the endpoint that gave it, or the last error.
async fn first_ok<'a, T>(
    eps: &[Endpoint],
    start: usize,
    mut f: impl FnMut(Endpoint) -> BoxFuture<'a, Result<T, ImageError>>,
) -> Result<(T, usize), ImageError> {
    let mut last = None;
    for i in (start..eps.len()).chain(0..start) {
        match f(eps[i].clone()).await {
            Ok(v) => return Ok((v, i)),
            Err(e) => {
                if i + 1 < eps.len() || i < start {
                    warn!(endpoint = %eps[i], error = %e, "registry endpoint failed, trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| ImageError::Storage("no registry endpoints".into())))
}

fn digest_of(d: &Descriptor) -> String {
    d.digest().to_string()
}

/// Pulls `image`; see the module doc.
pub async fn pull(
    inner: Arc<Inner>,
    image: &str,
    credentials: Credentials,
) -> Result<ImageRecord, ImageError> {
    let r = ImageRef::parse(image)?;
    let eps = inner.registries.endpoints(r.registry());
    let session = inner.registries.session(credentials)?;
    let mut lease = inner.leases.acquire(Vec::new());

    // 1. The top-level document, by tag or digest.
    let (top, ep_i) = first_ok(&eps, 0, |ep| {
        let session = &session;
        let r = &r;
        async move {
            let bytes = session.manifest(&ep, r, None).await?;
            if let Some(want) = r.digest() {
                digest::check_bytes(&ep.to_string(), want, &bytes)?;
            }
            Ok(bytes)
        }
        .boxed()
    })
    .await?;
    let top_digest = digest::of(&top);
    lease.extend([top_digest.clone()]);

    // 2. The platform manifest.
    let (manifest_bytes, manifest_digest, index_digest, ep_i) =
        match manifest::parse(&r.canonical(), &top)? {
            Fetched::Manifest(_) => (top.clone(), top_digest.clone(), None, ep_i),
            Fetched::Index(index) => {
                let desc = manifest::select_platform(&index, &inner.platform).ok_or_else(|| {
                    ImageError::RemoteNotFound {
                        reference: r.canonical(),
                        registry: eps[ep_i].to_string(),
                        detail: format!("the image index has no {} manifest", inner.platform),
                    }
                })?;
                let want = digest_of(desc);
                digest::validate(&want)?;
                lease.extend([want.clone()]);
                let (bytes, i) = first_ok(&eps, ep_i, |ep| {
                    let (session, r, want) = (&session, &r, &want);
                    async move {
                        let bytes = session.manifest(&ep, r, Some(want)).await?;
                        digest::check_bytes(&ep.to_string(), want, &bytes)?;
                        Ok(bytes)
                    }
                    .boxed()
                })
                .await?;
                (bytes, want, Some(top_digest.clone()), i)
            }
        };
    let Fetched::Manifest(m) = manifest::parse(&r.canonical(), &manifest_bytes)? else {
        return Err(ImageError::Unsupported {
            reference: r.canonical(),
            detail: "an index points to another index".into(),
        });
    };
    let config_digest = digest_of(m.config());
    digest::validate(&config_digest)?;
    for l in m.layers() {
        digest::validate(&digest_of(l))?;
        check_layer_media_type(l.media_type().as_ref()).map_err(|detail| {
            ImageError::Unsupported {
                reference: r.canonical(),
                detail,
            }
        })?;
    }
    lease.extend(std::iter::once(config_digest.clone()).chain(m.layers().iter().map(digest_of)));

    // 3. The config.
    let config_bytes = fetch_small_blob(
        &inner,
        &session,
        &eps,
        ep_i,
        &r,
        &config_digest,
        m.config().size(),
    )
    .await?;
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Unsupported {
            reference: r.canonical(),
            detail: format!("image config is malformed: {e}"),
        })?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != m.layers().len() {
        return Err(ImageError::Unsupported {
            reference: r.canonical(),
            detail: format!(
                "manifest has {} layers but the config lists {} diff ids",
                m.layers().len(),
                diff_ids.len()
            ),
        });
    }
    for d in &diff_ids {
        digest::validate(d)?;
    }
    lease.extend(diff_ids.iter().cloned());

    // 4. Layers: fetch and unpack, a few at once.
    let layers: Vec<LayerRecord> = m
        .layers()
        .iter()
        .zip(diff_ids.iter())
        .map(|(l, diff_id)| LayerRecord {
            digest: digest_of(l),
            media_type: l.media_type().to_string(),
            size: l.size(),
            diff_id: diff_id.clone(),
        })
        .collect();
    // Every unpack task holds a sender: once all are dropped, no unpack is running.
    let (unpacking, mut unpacks_done) = tokio::sync::mpsc::channel::<()>(1);
    let jobs: Vec<BoxFuture<'_, Result<(), ImageError>>> = layers
        .iter()
        .map(|l| ensure_layer(&inner, &session, &eps, ep_i, &r, l, unpacking.clone()).boxed())
        .collect();
    drop(unpacking);
    let fetched = futures::stream::iter(jobs)
        .buffer_unordered(inner.max_concurrent_downloads)
        .try_collect::<Vec<()>>()
        .await;
    if let Err(e) = fetched {
        // The other layers' jobs are dropped, but a blocking unpack runs on to its end (and
        // may publish its snapshot): wait for it, so the clean-up after this failure sees
        // everything the pull left.
        let _ = unpacks_done.recv().await;
        return Err(e);
    }

    // 5. Keep the manifests, then publish the image.
    inner
        .content
        .put(&manifest_digest, &manifest_bytes, &eps[ep_i].to_string())?;
    if let Some(idx) = &index_digest {
        inner.content.put(idx, &top, &eps[ep_i].to_string())?;
    }
    let user = config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let mut names = Vec::new();
    if let Some(tag) = r.tag() {
        names.push(format!("{}:{tag}", r.name()));
    }
    names.push(r.with_digest(&top_digest));
    let record = ImageRecord {
        id: config_digest,
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        manifest_digest,
        index_digest,
        config_size: config_bytes.len() as u64,
        layers,
        user,
        pulled_at: now_nanos(),
    };
    let index = inner.index.clone();
    let names2 = names.clone();
    let record = tokio::task::spawn_blocking(move || index.commit_pull(record, &names2))
        .await
        .map_err(|e| ImageError::Storage(e.to_string()))??;
    drop(lease);
    info!(image = %r.canonical(), id = %record.id, size = record.size(), "image pulled");
    Ok(record)
}

async fn fetch_small_blob(
    inner: &Inner,
    session: &Session,
    eps: &[Endpoint],
    ep_i: usize,
    r: &ImageRef,
    digest: &str,
    size: u64,
) -> Result<Vec<u8>, ImageError> {
    const MAX: u64 = 16 << 20;
    if inner.content.has(digest) {
        return inner.content.read(digest);
    }
    if size > MAX {
        return Err(ImageError::Unsupported {
            reference: r.canonical(),
            detail: format!("config blob of {size} bytes is too large"),
        });
    }
    let (bytes, _) = first_ok(eps, ep_i, |ep| {
        async move {
            let stream = session.blob(&ep, r, digest).await?;
            let mut buf = Vec::new();
            drain_stream(stream, &ep, "reading the image config", |c| {
                if buf.len() as u64 + c.len() as u64 > MAX {
                    return Err(std::io::Error::other("config blob too large"));
                }
                buf.extend_from_slice(c);
                Ok(())
            })
            .await
            .map_err(|e| match e {
                StreamError::Transport(e) => e,
                StreamError::Local(e) => ImageError::BadResponse {
                    registry: ep.to_string(),
                    detail: e.to_string(),
                },
            })?;
            digest::check_bytes(&ep.to_string(), digest, &buf)?;
            Ok(buf)
        }
        .boxed()
    })
    .await?;
    inner.content.put(digest, &bytes, "registry")?;
    Ok(bytes)
}

async fn ensure_layer(
    inner: &Arc<Inner>,
    session: &Session,
    eps: &[Endpoint],
    ep_i: usize,
    r: &ImageRef,
    layer: &LayerRecord,
    unpacking: tokio::sync::mpsc::Sender<()>,
) -> Result<(), ImageError> {
    let blob = ensure_blob(inner, session, eps, ep_i, r, layer).await?;
    let _g = inner.snapshot_locks.lock(&layer.diff_id).await;
    if inner.snapshots.has(&layer.diff_id) {
        return Ok(());
    }
    let (snapshots, digest, diff_id) = (
        inner.snapshots.clone(),
        layer.digest.clone(),
        layer.diff_id.clone(),
    );
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        let _running = unpacking;
        snapshots.unpack(&blob, &digest, &diff_id)
    })
    .await
    .map_err(|e| ImageError::Storage(format!("unpack task: {e}")))??;
    debug!(layer = %layer.digest, ms = started.elapsed().as_millis() as u64, "layer unpacked");
    Ok(())
}

async fn ensure_blob(
    inner: &Arc<Inner>,
    session: &Session,
    eps: &[Endpoint],
    ep_i: usize,
    r: &ImageRef,
    layer: &LayerRecord,
) -> Result<PathBuf, ImageError> {
    let _g = inner.blob_locks.lock(&layer.digest).await;
    if inner.content.has(&layer.digest) {
        return inner.content.path(&layer.digest);
    }
    let started = std::time::Instant::now();
    let (path, _) = first_ok(eps, ep_i, |ep| {
        async move {
            let stream = session.blob(&ep, r, &layer.digest).await?;
            let mut ingest = inner.content.begin()?;
            // Stop at the manifest's size: a registry sending more is wrong, and without
            // this bound one could fill the disk before the digest check at the end.
            let mut received = 0u64;
            drain_stream(stream, &ep, "reading a layer", |c| {
                received += c.len() as u64;
                if received > layer.size {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "layer {} is longer than the {} bytes its manifest gives it",
                            layer.digest, layer.size
                        ),
                    ));
                }
                ingest.write(c)
            })
            .await
            .map_err(|e| match e {
                StreamError::Transport(e) => e,
                StreamError::Local(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    ImageError::BadResponse {
                        registry: ep.to_string(),
                        detail: e.to_string(),
                    }
                }
                StreamError::Local(e) => ImageError::io("write layer blob", e),
            })?;
            inner
                .content
                .commit(ingest, &layer.digest, Some(layer.size), &ep.to_string())
        }
        .boxed()
    })
    .await?;
    debug!(layer = %layer.digest, ms = started.elapsed().as_millis() as u64, "layer fetched");
    Ok(path)
}

#[cfg(test)]
mod tests {
    //! Pulls from a loopback registry into a real image store, with the caps of
    //! `[images]` set small; each refusal must leave the store as empty as it was.

    use std::path::{Path, PathBuf};

    use super::super::digest;
    use super::super::error::{Cap, ImageError};
    use super::super::test_registry::{Reply, TestRegistry, tar_of};
    use super::super::{Credentials, ImageManager};
    use crate::config::Config;
    use crate::store::Store;

    const CAPS: &str =
        "max_manifest_bytes = 65536\nmax_layer_unpacked_bytes = 1048576\nmax_layer_entries = 10\n";

    fn manager(root: &Path) -> ImageManager {
        let text = format!("root_dir = \"{}\"\n[images]\n{CAPS}", root.display());
        let config = Config::parse(&text).expect("config");
        let store = Store::open(&root.join("moat.redb")).expect("store");
        ImageManager::open(&config, store).expect("image manager")
    }

    /// Whatever the image store holds: blobs, ingest files, snapshots, unpack dirs.
    fn leftovers(m: &ImageManager) -> Vec<PathBuf> {
        [
            "content/blobs/sha256",
            "content/ingest",
            "snapshots/sha256",
            "snapshots/tmp",
        ]
        .iter()
        .flat_map(|d| std::fs::read_dir(m.root().join(d)).expect("store dir"))
        .map(|e| e.expect("entry").path())
        .collect()
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// Pulls `image`, expects a refusal, and checks that the store is empty.
    async fn refused(m: &ImageManager, image: &str) -> ImageError {
        let e = m
            .pull(image, Credentials::default())
            .await
            .expect_err("the pull should be refused");
        assert!(m.list().expect("list").is_empty(), "{image}: an image");
        assert_eq!(leftovers(m), Vec::<PathBuf>::new(), "{image}: {e}");
        e
    }

    fn assert_cap(e: &ImageError, want: Cap) {
        match e {
            ImageError::TooLarge { cap, .. } if *cap == want => {
                assert!(e.to_string().contains(want.key()), "{e}");
            }
            other => panic!("expected the {} cap, got {other:?}", want.key()),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_image_within_the_caps_is_pulled() {
        let reg = TestRegistry::start().await;
        reg.image(
            "t/ok",
            "v1",
            &[tar_of(&names("a", 10), 100), tar_of(&names("b", 3), 0)],
        );
        let root = tempfile::tempdir().expect("tmp");
        let m = manager(root.path());
        let rec = m
            .pull(&format!("{}/t/ok:v1", reg.addr), Credentials::default())
            .await
            .expect("pull");
        assert_eq!(rec.layers.len(), 2);
        // The manifest, the config and two layers; two snapshots.
        assert_eq!(leftovers(&m).len(), 6, "{:?}", leftovers(&m));
        let e = m
            .pull(&format!("{}/t/absent:v1", reg.addr), Credentials::default())
            .await
            .expect_err("absent");
        assert!(matches!(e, ImageError::RemoteNotFound { .. }), "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn basic_credentials_go_to_a_registry_that_asks_for_them() {
        use oci_client::secrets::RegistryAuth;
        let reg = TestRegistry::start_basic("moat", "s3cret").await;
        reg.image("t/auth", "v1", &[tar_of(&names("f", 1), 0)]);
        let root = tempfile::tempdir().expect("tmp");
        let m = manager(root.path());
        let image = format!("{}/t/auth:v1", reg.addr);
        let basic = |password: &str| Credentials {
            auth: Some(RegistryAuth::Basic("moat".into(), password.into())),
        };
        let e = refused(&m, &image).await;
        assert!(matches!(e, ImageError::Unauthorized { .. }), "{e:?}");
        let e = m
            .pull(&image, basic("wrong"))
            .await
            .expect_err("wrong password");
        assert!(matches!(e, ImageError::Unauthorized { .. }), "{e:?}");
        m.pull(&image, basic("s3cret"))
            .await
            .expect("right password");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_oversized_manifest_is_refused_and_leaves_nothing() {
        let reg = TestRegistry::start().await;
        let root = tempfile::tempdir().expect("tmp");
        let m = manager(root.path());
        let json = "application/vnd.oci.image.manifest.v1+json";

        // A Content-Length over the cap: refused before the body.
        reg.route(
            "/v2/t/declared/manifests/v1",
            Reply::Declared {
                content_type: json.into(),
                declared: 1 << 40,
                body: b"{\"schemaVersion\":2".to_vec(),
            },
        );
        let e = refused(&m, &format!("{}/t/declared:v1", reg.addr)).await;
        assert_cap(&e, Cap::ManifestBytes);

        // No length, and a body without end: cut at the cap.
        reg.route(
            "/v2/t/endless/manifests/v1",
            Reply::Endless {
                content_type: json.into(),
                prefix: b"{\"schemaVersion\":2,\"layers\":[".to_vec(),
            },
        );
        let e = refused(&m, &format!("{}/t/endless:v1", reg.addr)).await;
        assert_cap(&e, Cap::ManifestBytes);
        assert!(e.to_string().contains("t/endless:v1"), "{e}");

        // A small index whose platform manifest is too large.
        let mut manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#.to_vec();
        manifest.resize(65537, b' ');
        let digest = digest::of(&manifest);
        reg.route(
            &format!("/v2/t/index/manifests/{digest}"),
            Reply::Body {
                content_type: json.into(),
                body: manifest.clone(),
            },
        );
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": json, "digest": digest, "size": manifest.len(),
                           "platform": {"os": "linux", "architecture": "amd64"}}]
        });
        reg.route(
            "/v2/t/index/manifests/v1",
            Reply::Body {
                content_type: "application/vnd.oci.image.index.v1+json".into(),
                body: index.to_string().into_bytes(),
            },
        );
        let e = refused(&m, &format!("{}/t/index:v1", reg.addr)).await;
        assert_cap(&e, Cap::ManifestBytes);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_blob_longer_than_its_descriptor_is_cut_and_leaves_nothing() {
        let reg = TestRegistry::start().await;
        let layers = reg.image("t/long", "v1", &[tar_of(&names("f", 2), 10)]);
        let (digest, blob) = &layers[0];
        // The layer's bytes, then more without end.
        reg.route(
            &format!("/v2/t/long/blobs/{digest}"),
            Reply::Endless {
                content_type: "application/octet-stream".into(),
                prefix: blob.clone(),
            },
        );
        let root = tempfile::tempdir().expect("tmp");
        let m = manager(root.path());
        let e = refused(&m, &format!("{}/t/long:v1", reg.addr)).await;
        assert!(
            matches!(e, ImageError::BadResponse { .. }) && e.to_string().contains("longer than"),
            "{e:?}"
        );
        assert!(e.to_string().contains(digest.as_str()), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_decompression_bomb_is_stopped_and_leaves_nothing() {
        let reg = TestRegistry::start().await;
        // 4 MiB of zeros behind a few KiB of gzip, after a good layer.
        let layers = reg.image(
            "t/bomb",
            "v1",
            &[
                tar_of(&names("ok", 3), 10),
                tar_of(&names("zeros", 1), 4 << 20),
            ],
        );
        assert!(layers[1].1.len() < 16 << 10, "{} bytes", layers[1].1.len());
        let root = tempfile::tempdir().expect("tmp");
        let m = manager(root.path());
        let e = refused(&m, &format!("{}/t/bomb:v1", reg.addr)).await;
        assert_cap(&e, Cap::LayerUnpackedBytes);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_layer_with_too_many_entries_is_stopped_and_leaves_nothing() {
        let reg = TestRegistry::start().await;
        reg.image("t/many", "v1", &[tar_of(&names("f", 50), 0)]);
        let root = tempfile::tempdir().expect("tmp");
        let m = manager(root.path());
        let e = refused(&m, &format!("{}/t/many:v1", reg.addr)).await;
        assert_cap(&e, Cap::LayerEntries);
    }
}
