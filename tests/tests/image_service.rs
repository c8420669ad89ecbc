//! The CRI ImageService of a real moatd against a real registry (Debian's docker-registry),
//! with images these tests build and push themselves.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use moat_tests::moatd::Moatd;
use moat_tests::oci::{Compression, Flavor, Image, Layer, TarBuilder, busybox_layer_tar};
use moat_tests::proxy::{Fault, Proxy};
use moat_tests::registry::Registry;
use tonic::Code;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(m: &Moatd, image: &str) -> Result<String, tonic::Status> {
    pull_auth(m, image, None).await
}

async fn pull_auth(
    m: &Moatd,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    m.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(m: &Moatd, image: &str) -> Option<cri::Image> {
    m.images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("image status")
        .into_inner()
        .image
}

async fn list(m: &Moatd) -> Vec<cri::Image> {
    m.images()
        .await
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .images
}

async fn remove(m: &Moatd, image: &str) {
    m.images()
        .await
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .expect("remove");
}

fn snapshot_dir(m: &Moatd, diff_id: &str) -> PathBuf {
    m.root()
        .join("images/snapshots/sha256")
        .join(diff_id.trim_start_matches("sha256:"))
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

/// Blobs and snapshots in the store, and leftovers in its temporary dirs.
fn store_counts(m: &Moatd) -> (usize, usize, usize) {
    let r = m.root().join("images");
    (
        entries(&r.join("content/blobs/sha256")),
        entries(&r.join("snapshots/sha256")),
        entries(&r.join("content/ingest")) + entries(&r.join("snapshots/tmp")),
    )
}

/// A two-layer busybox image: base plus a layer with some files.
fn busybox_image(c: Compression, flavor: Flavor, user: &str) -> Image {
    let base = Layer::new(&busybox_layer_tar(), c, flavor);
    let app = TarBuilder::new()
        .dir("app", 0o755)
        .file_owned("app/hello.txt", b"hello from moat\n", 0o640, 1000, 1000)
        .finish();
    Image::new(
        vec![base, Layer::new(&app, c, flavor)],
        flavor,
        "amd64",
        user,
    )
}

fn auth(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_and_digest_then_list_status_and_remove() {
    let reg = Registry::start().await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "1000:1000");
    let mdigest = reg.push_image("test/busybox", "v1", &img).await;
    let m = Moatd::start("").await;

    let tag_ref = format!("{}/test/busybox:v1", reg.addr);
    let digest_ref = format!("{}/test/busybox@{mdigest}", reg.addr);
    let id = pull(&m, &tag_ref).await.expect("pull by tag");
    assert_eq!(id, img.id(), "image_ref is the config digest");

    let st = status(&m, &tag_ref).await.expect("status by tag");
    assert_eq!(st.id, img.id());
    assert_eq!(st.repo_tags, vec![tag_ref.clone()]);
    assert_eq!(st.repo_digests, vec![digest_ref.clone()]);
    assert_eq!(st.size, img.size());
    assert_eq!(st.uid.map(|u| u.value), Some(1000));
    // By id, bare id and digest reference too.
    assert_eq!(status(&m, &img.id()).await.expect("by id").id, img.id());
    assert_eq!(
        status(&m, img.id().trim_start_matches("sha256:"))
            .await
            .expect("by hex")
            .id,
        img.id()
    );
    assert_eq!(
        status(&m, &digest_ref).await.expect("by digest").id,
        img.id()
    );

    // Each layer unpacked once, with owners and modes.
    let hello = snapshot_dir(&m, &img.layers[1].diff_id).join("app/hello.txt");
    let meta = std::fs::metadata(&hello).expect("unpacked file");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (1000, 1000, 0o640)
    );
    assert!(
        snapshot_dir(&m, &img.layers[0].diff_id)
            .join("bin/busybox")
            .is_file()
    );

    // Pull by digest: the same image, no second copy.
    assert_eq!(
        pull(&m, &digest_ref).await.expect("pull by digest"),
        img.id()
    );
    assert_eq!(list(&m).await.len(), 1);

    // ListImages with a filter.
    let filtered = m
        .images()
        .await
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&tag_ref),
            }),
        })
        .await
        .expect("filtered list")
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = m
        .images()
        .await
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("nothing/here:1"),
            }),
        })
        .await
        .expect("filtered list")
        .into_inner()
        .images;
    assert!(none.is_empty());

    // ImageFsInfo counts real bytes and inodes.
    let fs = m
        .images()
        .await
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("fsinfo")
        .into_inner();
    let used = fs.image_filesystems[0].used_bytes.expect("bytes").value;
    let inodes = fs.image_filesystems[0].inodes_used.expect("inodes").value;
    assert!(used >= 1_900_000, "busybox alone is ~1.9 MB, got {used}");
    assert!(inodes > 20, "got {inodes}");

    // Remove by id: everything goes, blobs and snapshots too.
    remove(&m, &img.id()).await;
    assert!(status(&m, &tag_ref).await.is_none());
    assert!(list(&m).await.is_empty());
    assert_eq!(store_counts(&m), (0, 0, 0));
    let fs = m
        .images()
        .await
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("fsinfo")
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.expect("bytes").value < used / 10);
    // Removing again is fine.
    remove(&m, &img.id()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_tag_keeps_other_tags_and_shared_layers() {
    let reg = Registry::start().await;
    let a = busybox_image(Compression::Gzip, Flavor::Oci, "");
    let b = Image::new(
        vec![
            a.layers[0].clone(),
            Layer::new(
                &TarBuilder::new().file("b.txt", b"b", 0o644).finish(),
                Compression::Gzip,
                Flavor::Oci,
            ),
        ],
        Flavor::Oci,
        "amd64",
        "",
    );
    reg.push_image("t/a", "1", &a).await;
    reg.push_image("t/a", "2", &a).await;
    reg.push_image("t/b", "1", &b).await;
    let m = Moatd::start("").await;
    let (a1, a2, b1) = (
        format!("{}/t/a:1", reg.addr),
        format!("{}/t/a:2", reg.addr),
        format!("{}/t/b:1", reg.addr),
    );
    for r in [&a1, &a2, &b1] {
        pull(&m, r).await.expect("pull");
    }
    let st = status(&m, &a1).await.expect("a");
    assert_eq!(st.repo_tags.len(), 2);
    assert_eq!(store_counts(&m).1, 3, "busybox layer shared by a and b");

    remove(&m, &a1).await;
    let st = status(&m, &a2).await.expect("a still tagged 2");
    assert_eq!(st.repo_tags, vec![a2.clone()]);
    remove(&m, &a2).await;
    assert!(status(&m, &a.id()).await.is_none());
    // b still has the shared busybox layer; a's own layer is gone.
    assert!(snapshot_dir(&m, &a.layers[0].diff_id).is_dir());
    assert!(!snapshot_dir(&m, &a.layers[1].diff_id).exists());
    assert_eq!(store_counts(&m).1, 2);
    let digest_ref = status(&m, &b1).await.expect("b").repo_digests[0].clone();
    remove(&m, &digest_ref).await;
    assert!(list(&m).await.is_empty());
    assert_eq!(store_counts(&m), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn whiteouts_and_opaque_directories_are_kept_for_overlayfs() {
    let reg = Registry::start().await;
    let base = Layer::new(&busybox_layer_tar(), Compression::Gzip, Flavor::Docker);
    let l2 = TarBuilder::new()
        .dir("data", 0o755)
        .file("data/keep", b"k", 0o644)
        .file("data/gone", b"g", 0o644)
        .dir("cache", 0o755)
        .file("cache/old", b"o", 0o644)
        .file("data/original", b"same inode", 0o600)
        .hardlink("data/linked", "data/original")
        .symlink("data/rel", "keep")
        .finish();
    let l3 = TarBuilder::new()
        .whiteout("data/gone")
        .opaque("cache")
        .file("cache/new", b"n", 0o644)
        .finish();
    let l4 = TarBuilder::new().whiteout("etc/group").finish();
    let layers: Vec<Layer> = [busybox_layer_tar(), l2, l3, l4]
        .iter()
        .map(|t| Layer::new(t, Compression::Gzip, Flavor::Docker))
        .collect();
    assert_eq!(layers[0].diff_id, base.diff_id);
    let img = Image::new(layers, Flavor::Docker, "amd64", "moat");
    reg.push_image("t/layers", "latest", &img).await;
    let m = Moatd::start("").await;
    pull(&m, &format!("{}/t/layers", reg.addr))
        .await
        .expect("pull schema 2 image");
    let st = status(&m, &format!("{}/t/layers:latest", reg.addr))
        .await
        .expect("status");
    assert_eq!(st.username, "moat");
    assert_eq!(st.uid, None);

    let l2 = snapshot_dir(&m, &img.layers[1].diff_id);
    let a = std::fs::metadata(l2.join("data/original")).expect("original");
    let b = std::fs::metadata(l2.join("data/linked")).expect("linked");
    assert_eq!(a.ino(), b.ino(), "hard link kept");
    assert_eq!(
        std::fs::read_link(l2.join("data/rel")).expect("symlink"),
        PathBuf::from("keep")
    );

    let l3 = snapshot_dir(&m, &img.layers[2].diff_id);
    let wo = std::fs::symlink_metadata(l3.join("data/gone")).expect("whiteout");
    assert!(
        wo.file_type().is_char_device() && wo.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!l3.join("data/.wh.gone").exists());
    assert_eq!(
        xattr::get(l3.join("cache"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
    assert!(l3.join("cache/new").is_file());
    let l4 = snapshot_dir(&m, &img.layers[3].diff_id);
    assert!(
        std::fs::symlink_metadata(l4.join("etc/group"))
            .expect("wo")
            .file_type()
            .is_char_device()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn index_with_two_platforms_picks_linux_amd64() {
    let reg = Registry::start().await;
    let amd = busybox_image(Compression::Gzip, Flavor::Oci, "");
    let arm = Image::new(
        vec![Layer::new(
            &TarBuilder::new().file("arm", b"arm64 only", 0o644).finish(),
            Compression::Gzip,
            Flavor::Oci,
        )],
        Flavor::Oci,
        "arm64",
        "",
    );
    let idx = reg
        .push_index("t/multi", "v1", &[(&arm, "arm64"), (&amd, "amd64")])
        .await;
    let m = Moatd::start("").await;
    let id = pull(&m, &format!("{}/t/multi:v1", reg.addr))
        .await
        .expect("pull index");
    assert_eq!(id, amd.id());
    let st = status(&m, &id).await.expect("status");
    // The repo digest is the index's, as kubelet saw it.
    assert_eq!(st.repo_digests, vec![format!("{}/t/multi@{idx}", reg.addr)]);
    assert!(
        !snapshot_dir(&m, &arm.layers[0].diff_id).exists(),
        "the arm64 layer was not fetched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_zstd_and_uncompressed_layers_share_one_snapshot() {
    let reg = Registry::start().await;
    let m = Moatd::start("").await;
    let mut ids = Vec::new();
    for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None]
        .into_iter()
        .enumerate()
    {
        let img = busybox_image(c, Flavor::Oci, &format!("{}", 100 + i));
        reg.push_image("t/comp", &format!("c{i}"), &img).await;
        let id = pull(&m, &format!("{}/t/comp:c{i}", reg.addr))
            .await
            .expect("pull");
        assert_eq!(id, img.id());
        ids.push(id);
    }
    assert_eq!(list(&m).await.len(), 3);
    // Three images, two distinct DiffIDs: each unpacked once.
    assert_eq!(store_counts(&m).1, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_is_tried_first_and_images_keep_their_upstream_names() {
    let mirror = Registry::start().await;
    let upstream = Registry::start().await;
    let empty_mirror = Registry::start().await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "");
    // Only the mirror has `library/app`; the upstream host does not even exist.
    mirror.push_image("library/app", "v1", &img).await;
    let other = busybox_image(Compression::Zstd, Flavor::Oci, "7");
    upstream.push_image("t/fallback", "v1", &other).await;
    let cfg = format!(
        "[registries.\"registry.moat.invalid\"]\nmirrors = [\"http://{}\"]\n[registries.\"{}\"]\nmirrors = [\"http://{}\"]\n",
        mirror.addr, upstream.addr, empty_mirror.addr
    );
    let m = Moatd::start(&cfg).await;
    let name = "registry.moat.invalid/library/app:v1";
    assert_eq!(pull(&m, name).await.expect("pull through mirror"), img.id());
    let st = status(&m, name).await.expect("status");
    assert_eq!(st.repo_tags, vec![name.to_owned()]);
    assert!(st.repo_digests[0].starts_with("registry.moat.invalid/library/app@sha256:"));
    assert!(
        list(&m)
            .await
            .iter()
            .all(|i| i.repo_tags.iter().all(|t| !t.contains(&mirror.addr)))
    );

    // A mirror without the image: the upstream serves it.
    let up = format!("{}/t/fallback:v1", upstream.addr);
    assert_eq!(
        pull(&m, &up).await.expect("fallback to upstream"),
        other.id()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_needs_the_right_credentials() {
    let reg = Registry::start_with(Some(("moat", "s3cret"))).await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/private", "v1", &img).await;
    let m = Moatd::start("").await;
    let name = format!("{}/t/private:v1", reg.addr);

    let e = pull(&m, &name)
        .await
        .expect_err("anonymous pull of a private image");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = pull_auth(&m, &name, auth("moat", "wrong"))
        .await
        .expect_err("wrong password");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("username and password"),
        "{}",
        e.message()
    );
    assert_eq!(store_counts(&m), (0, 0, 0));

    assert_eq!(
        pull_auth(&m, &name, auth("moat", "s3cret"))
            .await
            .expect("right password"),
        img.id()
    );
    // The same, packed into `auth` the way kubelet passes docker config secrets.
    remove(&m, &name).await;
    use base64::Engine as _;
    let packed = cri::AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("moat:s3cret"),
        ..Default::default()
    };
    assert_eq!(
        pull_auth(&m, &name, Some(packed))
            .await
            .expect("auth field"),
        img.id()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blob_is_refused_and_leaves_no_trace() {
    let reg = Registry::start().await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/bad", "v1", &img).await;
    let proxy = Proxy::start(&reg.addr, Fault::Corrupt).await;
    let m = Moatd::start("").await;
    let e = pull(&m, &format!("{}/t/bad:v1", proxy.addr))
        .await
        .expect_err("corrupt blob");
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(
        e.message().contains(&img.layers[0].digest),
        "{}",
        e.message()
    );
    assert!(list(&m).await.is_empty());
    assert_eq!(store_counts(&m), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_longer_than_its_descriptor_is_cut_off_and_leaves_no_trace() {
    let reg = Registry::start().await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/endless", "v1", &img).await;
    // The layer's bytes, then zeros without end: read to the end, this never stops.
    let proxy = Proxy::start(&reg.addr, Fault::Endless).await;
    let m = Moatd::start("").await;
    let e = pull(&m, &format!("{}/t/endless:v1", proxy.addr))
        .await
        .expect_err("endless blob");
    assert!(e.message().contains("longer than"), "{e:?}");
    assert!(e.message().contains(&img.layers[0].digest), "{e:?}");
    assert!(list(&m).await.is_empty());
    assert_eq!(store_counts(&m), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_that_stops_answering_mid_pull_times_out_cleanly() {
    let reg = Registry::start().await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/stall", "v1", &img).await;
    let proxy = Proxy::start(&reg.addr, Fault::Stall).await;
    let m = Moatd::start("[images]\nread_timeout_secs = 2\n").await;
    let started = std::time::Instant::now();
    let e = pull(&m, &format!("{}/t/stall:v1", proxy.addr))
        .await
        .expect_err("stalled blob");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(list(&m).await.is_empty());
    assert_eq!(store_counts(&m), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_a_restart_and_a_crash() {
    let reg = Registry::start().await;
    let img = busybox_image(Compression::Zstd, Flavor::Oci, "");
    reg.push_image("t/persist", "v1", &img).await;
    let mut m = Moatd::start("").await;
    let name = format!("{}/t/persist:v1", reg.addr);
    pull(&m, &name).await.expect("pull");
    m.restart().await;
    let imgs = list(&m).await;
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].repo_tags, vec![name.clone()]);
    m.crash_and_restart().await;
    assert_eq!(status(&m, &name).await.expect("after crash").id, img.id());
    assert!(
        snapshot_dir(&m, &img.layers[0].diff_id)
            .join("bin/busybox")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_fetch_each_blob_once() {
    let reg = Registry::start().await;
    let a = busybox_image(Compression::Gzip, Flavor::Oci, "");
    let b = Image::new(
        vec![
            a.layers[0].clone(),
            Layer::new(
                &TarBuilder::new().file("b", &[9u8; 100_000], 0o644).finish(),
                Compression::Gzip,
                Flavor::Oci,
            ),
        ],
        Flavor::Oci,
        "amd64",
        "",
    );
    reg.push_image("t/a", "v1", &a).await;
    reg.push_image("t/b", "v1", &b).await;
    let proxy = Proxy::start(&reg.addr, Fault::None).await;
    let m = Moatd::start("").await;
    let names = [
        format!("{}/t/a:v1", proxy.addr),
        format!("{}/t/a:v1", proxy.addr),
        format!("{}/t/b:v1", proxy.addr),
        format!("{}/t/a:v1", proxy.addr),
        format!("{}/t/b:v1", proxy.addr),
    ];
    let pulls = names.iter().map(|n| pull(&m, n));
    for r in futures::future::join_all(pulls).await {
        r.expect("concurrent pull");
    }
    assert_eq!(list(&m).await.len(), 2);
    // The busybox layer is shared by both images and fetched by all five pulls' worth of
    // requests exactly once (the proxy counts repository-scoped blob URLs).
    let shared = &a.layers[0].digest;
    assert_eq!(proxy.blob_fetches(shared), 1, "shared layer fetched once");
    assert_eq!(proxy.blob_fetches(&b.layers[1].digest), 1);
    assert_eq!(proxy.blob_fetches(&a.layers[1].digest), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_are_refused_and_leave_the_store_as_it_was() {
    let reg = Registry::start().await;
    let good = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/good", "v1", &good).await;
    let hostile = [
        (
            "traversal",
            TarBuilder::new()
                .raw(
                    "../../../../tmp/moat-escape",
                    tar::EntryType::Regular,
                    b"x",
                    None,
                )
                .finish(),
        ),
        (
            "hardlink",
            TarBuilder::new()
                .raw(
                    "passwd",
                    tar::EntryType::Link,
                    b"",
                    Some("../../../../etc/passwd"),
                )
                .finish(),
        ),
        (
            "symlink",
            TarBuilder::new()
                .symlink("evil", "/tmp")
                .raw("evil/moat-escape", tar::EntryType::Regular, b"x", None)
                .finish(),
        ),
    ];
    let m = Moatd::start("").await;
    pull(&m, &format!("{}/t/good:v1", reg.addr))
        .await
        .expect("good image");
    let before = store_counts(&m);
    for (name, tar) in hostile {
        let img = Image::new(
            vec![
                good.layers[0].clone(),
                Layer::new(&tar, Compression::Gzip, Flavor::Oci),
            ],
            Flavor::Oci,
            "amd64",
            "",
        );
        reg.push_image(&format!("t/{name}"), "v1", &img).await;
        let e = pull(&m, &format!("{}/t/{name}:v1", reg.addr))
            .await
            .expect_err(name);
        assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {e:?}");
        assert!(e.message().contains("unusable"), "{name}: {}", e.message());
        assert_eq!(store_counts(&m), before, "{name} left something behind");
        assert_eq!(list(&m).await.len(), 1);
    }
    assert!(!Path::new("/tmp/moat-escape").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors() {
    let reg = Registry::start().await;
    let m = Moatd::start("[images]\nconnect_timeout_secs = 2\n").await;
    let e = pull(&m, "Not A/Valid::ref").await.expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = pull(&m, "").await.expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = pull(&m, &format!("{}/t/absent:v1", reg.addr))
        .await
        .expect_err("absent");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let closed = moat_tests::free_port();
    let e = pull(&m, &format!("127.0.0.1:{closed}/t/x:v1"))
        .await
        .expect_err("unreachable");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("unreachable"), "{}", e.message());
    // Absent local images: an empty status and a successful removal, as the CRI says.
    assert!(status(&m, "docker.io/library/nothing:1").await.is_none());
    remove(&m, "docker.io/library/nothing:1").await;
    let e = m
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: None,
            verbose: false,
        })
        .await
        .expect_err("no spec");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = m
        .images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: spec("UPPER"),
        })
        .await
        .expect_err("bad ref");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(store_counts(&m), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_the_middle_of_a_pull_leaves_a_consistent_store() {
    let reg = Registry::start().await;
    let good = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/good", "v1", &good).await;
    let proxy = Proxy::start(&reg.addr, Fault::Stall).await;
    let mut m = Moatd::start("").await;
    pull(&m, &format!("{}/t/good:v1", reg.addr))
        .await
        .expect("good image");
    let before = store_counts(&m);

    // A second image whose big layer stalls half-way, then moatd is killed.
    let other = busybox_image(Compression::Zstd, Flavor::Oci, "5");
    reg.push_image("t/stalls", "v1", &other).await;
    let channel = m.channel().await;
    let name = format!("{}/t/stalls:v1", proxy.addr);
    let pending = tokio::spawn(async move {
        cri::image_service_client::ImageServiceClient::new(channel)
            .pull_image(cri::PullImageRequest {
                image: spec(&name),
                ..Default::default()
            })
            .await
    });
    let ingest = m.root().join("images/content/ingest");
    let writing =
        moat_tests::wait_until(std::time::Duration::from_secs(20), || entries(&ingest) > 0).await;
    assert!(writing, "the stalled pull never started writing");
    m.crash_and_restart().await;
    assert!(
        pending.await.expect("join").is_err(),
        "the pull died with moatd"
    );

    assert_eq!(
        store_counts(&m),
        before,
        "leftovers of the interrupted pull"
    );
    let imgs = list(&m).await;
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].id, good.id());
}

#[tokio::test(flavor = "multi_thread")]
async fn verbose_image_status_carries_manifest_and_layers() {
    let reg = Registry::start().await;
    let img = busybox_image(Compression::Gzip, Flavor::Oci, "");
    reg.push_image("t/verbose", "v1", &img).await;
    let m = Moatd::start("").await;
    let name = format!("{}/t/verbose:v1", reg.addr);
    pull(&m, &name).await.expect("pull");
    let r = m
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).expect("json");
    assert_eq!(info["manifestDigest"], img.manifest_digest());
    assert_eq!(info["layers"].as_array().expect("layers").len(), 2);
    assert_eq!(info["layers"][1]["diff_id"], img.layers[1].diff_id);
}
