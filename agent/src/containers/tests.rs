//! Tests of the registry: containers created, fed, resized, exec'd into and removed
//! through `Containers`, and the helpers other modules' tests use (`busybox_layer`,
//! `spec_json`).

use super::*;

/// A layer directory with busybox, when running as root with busybox-static installed.
pub(crate) fn busybox_layer(test: &str) -> Option<tempfile::TempDir> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("SKIPPED {test}: needs root and /bin/busybox (busybox-static)");
        return None;
    }
    let d = tempfile::tempdir().expect("tmp");
    let l = d.path().join("aa");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(l.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", l.join("bin/busybox")).expect("copy");
    for a in [
        "sh", "cat", "stty", "sleep", "nc", "head", "wc", "echo", "ps",
    ] {
        std::os::unix::fs::symlink("busybox", l.join("bin").join(a)).expect("link");
    }
    Some(d)
}

pub(crate) fn spec_json(args: &[&str], terminal: bool) -> Vec<u8> {
    let mut spec = Spec::default();
    let mut linux = spec.linux().clone().expect("linux");
    linux.set_namespaces(None);
    linux.set_resources(None);
    spec.set_linux(Some(linux));
    let p = spec.process_mut().as_mut().expect("process");
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p.set_terminal(Some(terminal));
    serde_json::to_vec(&spec).expect("json")
}

async fn read_output(c: &Containers, id: &str) -> String {
    use tokio_stream::StreamExt as _;
    let mut out = c.output(id).await.expect("output");
    let mut text = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(10), out.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").data));
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_reaches_the_container_and_the_terminal_can_be_resized() {
    let Some(layers) = busybox_layer("stdin_reaches_the_container_and_the_terminal_can_be_resized")
    else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let c = Containers::with_dirs(layers.path().into(), root.path().into());

    let req = |id: &str, args: &[&str], tty: bool, stdin: bool| CreateContainerRequest {
        container_id: id.into(),
        spec_json: spec_json(args, tty),
        layers: vec!["aa".into()],
        stdin,
        ..Default::default()
    };
    c.create(req("c1", &["cat"], false, true))
        .await
        .expect("create cat");
    let reader = {
        let out = c.output("c1").await.expect("output");
        tokio::spawn(async move {
            use tokio_stream::StreamExt as _;
            let mut out = out;
            let mut text = String::new();
            while let Some(Ok(chunk)) = out.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.data));
            }
            text
        })
    };
    c.start("c1").await.expect("start");
    let chunks = vec![
        Ok(moat_proto::agent::InputChunk {
            container_id: "c1".into(),
            data: b"hello ".to_vec(),
            close: false,
        }),
        Ok(moat_proto::agent::InputChunk {
            container_id: String::new(),
            data: b"moat\n".to_vec(),
            close: true,
        }),
    ];
    c.input(tokio_stream::iter(chunks)).await.expect("input");
    let w = c
        .wait(WaitContainerRequest {
            container_id: "c1".into(),
            timeout_ms: 10_000,
        })
        .await
        .expect("wait");
    assert!(w.exited && w.exit_code == 0, "cat ends at EOF: {w:?}");
    assert_eq!(reader.await.expect("reader"), "hello moat\n");

    c.create(req("c2", &["sh", "-c", "sleep 1; stty size"], true, false))
        .await
        .expect("create tty");
    c.start("c2").await.expect("start");
    c.resize(moat_proto::agent::ResizeRequest {
        container_id: "c2".into(),
        width: 100,
        height: 40,
    })
    .await
    .expect("resize");
    assert!(read_output(&c, "c2").await.contains("40 100"));
    let e = c
        .resize(moat_proto::agent::ResizeRequest {
            container_id: "c1".into(),
            width: 1,
            height: 1,
        })
        .await;
    assert_eq!(
        e.expect_err("no terminal").code(),
        tonic::Code::FailedPrecondition
    );
    c.remove("c1").await.expect("remove");
    c.remove("c2").await.expect("remove");
    assert_eq!(
        std::fs::read_dir(root.path()).expect("root").count(),
        0,
        "container dirs removed"
    );
}

/// `spec_json(args)` asking for a user namespace with the mappings container 0.. to
/// `host`..., and its own PID, mount, IPC and UTS namespaces.
fn userns_spec_json(args: &[&str], host: u32) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&spec_json(args, false)).expect("json");
    v["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}
    ]);
    let m = serde_json::json!([{"containerID": 0, "hostID": host, "size": 65536}]);
    v["linux"]["uidMappings"] = m.clone();
    v["linux"]["gidMappings"] = m;
    v["root"]["readonly"] = serde_json::json!(false);
    serde_json::to_vec(&v).expect("json")
}

/// Makes everything under `p` owned by `id`:`id`, as moatd shifts a layer's owners.
fn shift(p: &std::path::Path, id: u32) {
    let meta = std::fs::symlink_metadata(p).expect("stat");
    std::os::unix::fs::lchown(p, Some(id), Some(id)).expect("chown");
    if meta.is_dir() {
        for e in std::fs::read_dir(p).expect("readdir") {
            shift(&e.expect("entry").path(), id);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_a_pod_with_a_user_namespace_join_it_and_own_their_root() {
    use std::os::unix::fs::MetadataExt;
    let test = "containers_of_a_pod_with_a_user_namespace_join_it_and_own_their_root";
    let Some(layers) = busybox_layer(test) else {
        return;
    };
    for a in ["id", "stat", "touch", "readlink"] {
        std::os::unix::fs::symlink("busybox", layers.path().join("aa/bin").join(a)).expect("link");
    }
    shift(&layers.path().join("aa"), 100_000);
    let root = tempfile::tempdir().expect("root");
    let c = Containers::with_dirs(layers.path().into(), root.path().into());
    let req = |id: &str, args: &[&str], host: u32, pid_mode: PidMode| CreateContainerRequest {
        container_id: id.into(),
        spec_json: userns_spec_json(args, host),
        layers: vec!["aa".into()],
        pid_mode: pid_mode as i32,
        ..Default::default()
    };
    use moat_proto::agent::PidMode;
    // No user namespace in the pod: a spec asking for one is refused.
    let e = c
        .create(req("a1", &["true"], 100_000, PidMode::PidContainer))
        .await
        .expect_err("no pod userns");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    c.set_userns(crate::executor::userns::tests::pod(100_000))
        .expect("userns");
    let e = c
        .create(req("a2", &["true"], 200_000, PidMode::PidContainer))
        .await
        .expect_err("other mappings");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(std::fs::read_dir(root.path()).expect("root").count(), 0);

    let script = "cat /proc/self/uid_map; id -u; stat -c %u:%g /; touch /new && stat -c %u /new; \
                  readlink /proc/self/ns/user";
    c.create(req(
        "b1",
        &["sh", "-c", script],
        100_000,
        PidMode::PidContainer,
    ))
    .await
    .expect("create");
    let upper = root.path().join("b1/upper");
    let meta = std::fs::metadata(&upper).expect("upper");
    assert_eq!((meta.uid(), meta.gid()), (100_000, 100_000));
    let reader = {
        let mut out = c.output("b1").await.expect("output");
        tokio::spawn(async move {
            use tokio_stream::StreamExt as _;
            let mut text = String::new();
            while let Some(Ok(chunk)) = out.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.data));
            }
            text
        })
    };
    c.start("b1").await.expect("start");
    let w = c
        .wait(WaitContainerRequest {
            container_id: "b1".into(),
            timeout_ms: 10_000,
        })
        .await
        .expect("wait");
    let out = reader.await.expect("reader");
    assert!(w.exited && w.exit_code == 0, "{w:?} {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "{out}"
    );
    assert_eq!(&lines[1..4], ["0", "0:0", "0"], "{out}");
    assert_eq!(
        std::fs::metadata(upper.join("new")).expect("new").uid(),
        100_000,
        "written in the upper layer as the mapped root"
    );
    let pod_user = c
        .pod_pid
        .user_path()
        .expect("path")
        .expect("the pod's user namespace");
    let pod_user = std::fs::read_link(pod_user).expect("readlink");
    assert_eq!(std::path::Path::new(lines[4]), pod_user, "{out}");

    // In the pod's PID namespace, and exec'd into: the same user namespace.
    c.create(req("b2", &["sleep", "100"], 100_000, PidMode::PidPod))
        .await
        .expect("create");
    c.start("b2").await.expect("start");
    let r = c
        .exec_sync(ExecSyncRequest {
            container_id: "b2".into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "readlink /proc/self/ns/user; id -u".into(),
            ],
            timeout_ms: 10_000,
        })
        .await
        .expect("exec");
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.exit_code,
        0,
        "{out} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(std::path::Path::new(lines[0]), pod_user, "{out}");
    assert_eq!(lines[1], "0");
    c.remove("b1").await.expect("remove");
    c.remove("b2").await.expect("remove");
}

#[test]
fn ids_are_checked() {
    assert!(valid_id(&"a".repeat(64)));
    assert!(!valid_id("../x"));
    assert!(!valid_id(""));
    assert!(!valid_id(&"a".repeat(65)));
}

#[tokio::test]
async fn unknown_containers_and_bad_requests() {
    let c = Containers::with_dirs(PathBuf::from("/nonexistent"), PathBuf::from("/nonexistent"));
    assert_eq!(
        c.start("ab").await.expect_err("unknown").code(),
        tonic::Code::NotFound
    );
    assert!(
        c.remove("ab").await.is_ok(),
        "removing an unknown container is fine"
    );
    let bad = CreateContainerRequest {
        container_id: "../../x".into(),
        ..Default::default()
    };
    assert_eq!(
        c.create(bad).await.expect_err("bad id").code(),
        tonic::Code::InvalidArgument
    );
    let r = CreateContainerRequest {
        container_id: "ab".into(),
        spec_json: b"{}".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        c.create(r).await.expect_err("bad spec").code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_says_how_far_each_container_got_and_a_second_start_is_harmless() {
    let Some(layers) =
        busybox_layer("the_list_says_how_far_each_container_got_and_a_second_start_is_harmless")
    else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let c = Containers::with_dirs(layers.path().into(), root.path().into());
    let req = |id: &str, args: &[&str]| CreateContainerRequest {
        container_id: id.into(),
        spec_json: spec_json(args, false),
        layers: vec!["aa".into()],
        ..Default::default()
    };
    // a1 is made only, b2 runs, c3 has ended.
    c.create(req("a1", &["sleep", "30"])).await.expect("create");
    c.create(req("b2", &["sleep", "30"])).await.expect("create");
    c.create(req("c3", &["sh", "-c", "exit 0"]))
        .await
        .expect("create");
    c.start("b2").await.expect("start");
    c.start("c3").await.expect("start");
    let w = c
        .wait(WaitContainerRequest {
            container_id: "c3".into(),
            timeout_ms: 10_000,
        })
        .await
        .expect("wait");
    assert!(w.exited);
    let got: Vec<(String, bool, bool)> = c
        .list()
        .await
        .into_iter()
        .map(|e| (e.container_id, e.started, e.exited))
        .collect();
    assert_eq!(
        got,
        [
            ("a1".to_owned(), false, false),
            ("b2".to_owned(), true, false),
            ("c3".to_owned(), true, true),
        ]
    );
    // A host that lost the first answer asks again: same answer, one process.
    c.start("b2").await.expect("a second start");
    c.start("c3")
        .await
        .expect("a second start of an exited one");
    for id in ["a1", "b2", "c3"] {
        c.remove(id).await.expect("remove");
    }
    assert!(c.list().await.is_empty());
}
