//! Bearer-token registry auth through a real moatd: Debian's docker-registry in token auth
//! mode (it trusts only JWTs signed by the test issuer's key), the token server from
//! `moat_tests::token_auth`, and CRI PullImage with username/password (the Docker token flow,
//! which oci-client runs) or with a ready `registry_token`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_cri::v1 as cri;
use moat_tests::moatd::Moatd;
use moat_tests::oci::{Compression, Flavor, Image, Layer, TarBuilder, busybox_layer_tar};
use moat_tests::registry::Registry;
use moat_tests::token_auth::{
    Access, KeyHint, TokenField, TokenIssuer, TokenRequest, TokenServer, TokenSpec,
};
use tonic::Code;

const SERVICE: &str = "moat-test-registry";
const ISSUER: &str = "moat-test-token-issuer";
const USER: &str = "moat";
const PASSWORD: &str = "s3cret";
const REPO: &str = "t/private";

/// A token server, a token-auth registry trusting it, and a two-layer image pushed to
/// `REPO:v1` (through a push token from that server).
struct Setup {
    tokens: TokenServer,
    reg: Registry,
    img: Image,
}

impl Setup {
    async fn start(field: TokenField) -> Self {
        let tokens = TokenServer::start_with(
            TokenIssuer::new(ISSUER, SERVICE),
            &[(USER, PASSWORD)],
            field,
        )
        .await;
        let reg = Registry::start_token_auth(&tokens, (USER, PASSWORD)).await;
        let img = busybox_image();
        reg.push_image(REPO, "v1", &img).await;
        Self { tokens, reg, img }
    }

    fn name(&self) -> String {
        format!("{}/{REPO}:v1", self.reg.addr)
    }

    /// The token requests made since `since` of them.
    fn requests_since(&self, since: usize) -> Vec<TokenRequest> {
        self.tokens.requests().split_off(since)
    }
}

fn busybox_image() -> Image {
    let base = Layer::new(&busybox_layer_tar(), Compression::Gzip, Flavor::Oci);
    let app = TarBuilder::new()
        .dir("app", 0o755)
        .file("app/hello.txt", b"hello from behind a token\n", 0o644)
        .finish();
    Image::new(
        vec![base, Layer::new(&app, Compression::Gzip, Flavor::Oci)],
        Flavor::Oci,
        "amd64",
        "",
    )
}

async fn pull(
    m: &Moatd,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    m.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
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
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("remove");
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

/// Asserts a refused pull left nothing behind.
async fn assert_nothing_stored(m: &Moatd, what: &str) {
    assert!(list(m).await.is_empty(), "{what}: an image was recorded");
    assert_eq!(store_counts(m), (0, 0, 0), "{what}: the store is not empty");
}

fn password(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    })
}

fn registry_token(token: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        registry_token: token.into(),
        ..Default::default()
    })
}

async fn assert_unauthenticated(m: &Moatd, name: &str, auth: Option<cri::AuthConfig>, what: &str) {
    let e = pull(m, name, auth)
        .await
        .expect_err(&format!("{what}: the pull should be refused"));
    assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
    assert_nothing_stored(m, what).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn username_and_password_go_through_the_token_flow() {
    let s = Setup::start(TokenField::Both).await;
    let m = Moatd::start("").await;
    let before = s.tokens.requests().len();

    let id = pull(&m, &s.name(), password(USER, PASSWORD))
        .await
        .expect("pull with the right password");
    assert_eq!(id, s.img.id(), "image_ref is the config digest");

    // moatd (oci-client) asked the token server as the user, for pull on the repository
    // the registry named, and got a token.
    let asked = s.requests_since(before);
    assert!(
        asked.contains(&TokenRequest {
            user: Some(USER.into()),
            scopes: vec![format!("repository:{REPO}:pull")],
            service: Some(SERVICE.into()),
            status: 200,
        }),
        "{asked:?}"
    );
    // The image really is there: both layers and the config.
    let images = list(&m).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, s.img.id());
    assert_eq!(images[0].repo_tags, vec![s.name()]);
    // Blobs: the manifest, the config and both layers; one snapshot per layer.
    assert_eq!(store_counts(&m), (4, 2, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_server_answering_access_token_works_too() {
    let s = Setup::start(TokenField::AccessToken).await;
    let m = Moatd::start("").await;
    assert_eq!(
        pull(&m, &s.name(), password(USER, PASSWORD))
            .await
            .expect("pull with an access_token answer"),
        s.img.id()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_unknown_user_and_anonymous_are_unauthenticated() {
    let s = Setup::start(TokenField::Both).await;
    let m = Moatd::start("").await;
    let name = s.name();

    let before = s.tokens.requests().len();
    assert_unauthenticated(&m, &name, password(USER, "wrong"), "wrong password").await;
    let asked = s.requests_since(before);
    assert!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|r| r.user.as_deref() == Some(USER) && r.status == 401),
        "the token server refused the wrong password: {asked:?}"
    );

    let before = s.tokens.requests().len();
    assert_unauthenticated(&m, &name, password("mallory", PASSWORD), "unknown user").await;
    let asked = s.requests_since(before);
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.status == 401),
        "{asked:?}"
    );

    // Anonymous: the token server hands out a token that grants nothing, and the registry
    // refuses it.
    let before = s.tokens.requests().len();
    assert_unauthenticated(&m, &name, None, "anonymous").await;
    let asked = s.requests_since(before);
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.user.is_none() && r.status == 200),
        "{asked:?}"
    );

    // The same moatd and registry do serve the image with the right credentials.
    assert_eq!(
        pull(&m, &name, password(USER, PASSWORD))
            .await
            .expect("right password after the refusals"),
        s.img.id()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_registry_token_is_sent_as_bearer() {
    let s = Setup::start(TokenField::Both).await;
    let m = Moatd::start("").await;
    let name = s.name();
    let before = s.tokens.requests().len();

    let token = s.tokens.mint(&TokenSpec::new(
        "kubelet",
        vec![Access::new(REPO, &["pull"])],
    ));
    assert_eq!(
        pull(&m, &name, registry_token(&token))
            .await
            .expect("pull with a registry_token (x5c)"),
        s.img.id()
    );
    // A token naming its key by libtrust key id instead of certificate chain.
    remove(&m, &name).await;
    assert_eq!(store_counts(&m).0, 0, "removed");
    let token = s.tokens.mint(&TokenSpec {
        key_hint: KeyHint::Kid,
        ..TokenSpec::new("kubelet", vec![Access::new(REPO, &["pull"])])
    });
    assert_eq!(
        pull(&m, &name, registry_token(&token))
            .await
            .expect("pull with a registry_token (kid)"),
        s.img.id()
    );
    // The tokens went straight to the registry; the token server was not asked.
    assert_eq!(s.requests_since(before), vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_registry_tokens_are_unauthenticated() {
    let s = Setup::start(TokenField::Both).await;
    let m = Moatd::start("").await;
    let name = s.name();
    let pull_access = || vec![Access::new(REPO, &["pull"])];
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();

    // Expired an hour ago (well past distribution's 60 s leeway).
    let expired = s.tokens.mint(&TokenSpec {
        issued_at: now - 2 * hour,
        expires: now - hour,
        ..TokenSpec::new("kubelet", pull_access())
    });
    assert_unauthenticated(&m, &name, registry_token(&expired), "expired token").await;

    // Not valid for another hour.
    let early = s.tokens.mint(&TokenSpec {
        issued_at: now + hour,
        expires: now + 2 * hour,
        ..TokenSpec::new("kubelet", pull_access())
    });
    assert_unauthenticated(&m, &name, registry_token(&early), "not-yet-valid token").await;

    for garbage in [
        "garbage",
        "not.a.jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ] {
        assert_unauthenticated(&m, &name, registry_token(garbage), garbage).await;
    }

    // Well formed but signed by a key the registry does not trust, by x5c and by kid.
    let stranger = TokenIssuer::new(ISSUER, SERVICE);
    for key_hint in [KeyHint::X5c, KeyHint::Kid] {
        let forged = stranger.mint(&TokenSpec {
            key_hint,
            ..TokenSpec::new("kubelet", pull_access())
        });
        assert_unauthenticated(
            &m,
            &name,
            registry_token(&forged),
            &format!("untrusted key ({key_hint:?})"),
        )
        .await;
    }

    // Signed by the trusted key, but for another audience, another issuer, or another
    // repository.
    let other_audience = s.tokens.mint(&TokenSpec {
        audience: Some("some-other-registry".into()),
        ..TokenSpec::new("kubelet", pull_access())
    });
    assert_unauthenticated(&m, &name, registry_token(&other_audience), "other audience").await;
    let other_issuer = s.tokens.mint(&TokenSpec {
        issuer: Some("someone-else".into()),
        ..TokenSpec::new("kubelet", pull_access())
    });
    assert_unauthenticated(&m, &name, registry_token(&other_issuer), "other issuer").await;
    let other_repo = s.tokens.mint(&TokenSpec::new(
        "kubelet",
        vec![Access::new("t/other", &["pull", "push"])],
    ));
    assert_unauthenticated(&m, &name, registry_token(&other_repo), "other repository").await;
    let no_pull = s.tokens.mint(&TokenSpec::new(
        "kubelet",
        vec![Access::new(REPO, &["push"])],
    ));
    assert_unauthenticated(&m, &name, registry_token(&no_pull), "push-only token").await;

    // The control: the same minted token, valid, gets the image.
    let good = s.tokens.mint(&TokenSpec::new("kubelet", pull_access()));
    assert_eq!(
        pull(&m, &name, registry_token(&good))
            .await
            .expect("a valid token after the bad ones"),
        s.img.id()
    );
}
