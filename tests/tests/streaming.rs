//! Exec, Attach and PortForward end to end: a pod VM under QEMU, URLs from the CRI socket,
//! and real clients on real sockets speaking SPDY/3.1 (as kubelet and crictl do) and
//! WebSocket (v4/v5.channel.k8s.io).

use std::time::Duration;

use k8s_cri::v1 as cri;
use moat_tests::pod::{Pod, pod_with_image};
use moat_tests::streams::{
    SpdyCommand, SpdyPortForward, StreamOpts, spdy_upgrade, ws_collect, ws_connect, ws_send,
};
use sha2::Digest as _;

const T: Duration = Duration::from_secs(60);

async fn exec_url(p: &Pod, id: &str, cmd: &[&str], o: StreamOpts) -> String {
    p.m.runtime()
        .await
        .exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        })
        .await
        .unwrap_or_else(|e| panic!("Exec: {e:?}"))
        .into_inner()
        .url
}

const OUT_ERR: StreamOpts = StreamOpts {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};
const IN_OUT: StreamOpts = StreamOpts {
    stdin: true,
    stdout: true,
    stderr: true,
    tty: false,
};

async fn spdy_exec(p: &Pod, id: &str, cmd: &[&str]) -> moat_tests::streams::CommandResult {
    let url = exec_url(p, id, cmd, OUT_ERR).await;
    SpdyCommand::connect(&url, OUT_ERR).await.finish(T).await
}

/// Processes in the pod whose command line contains `needle`, seen through ExecSync.
async fn processes(p: &Pod, id: &str, needle: &str) -> usize {
    let out = p.exec(id, &["ps", "-o", "args"]).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn sleeper(p: &Pod, name: &str) -> String {
    let id = p.create(name, &["sleep", "100000"]).await.expect("create");
    p.start(&id).await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_spdy_and_websocket() {
    let p = pod_with_image("exec").await;
    let id = sleeper(&p, "main").await;

    // Exit codes, stdout and stderr apart.
    let r = spdy_exec(&p, &id, &["sh", "-c", "echo out; echo err >&2"]).await;
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(
        r.exit_code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.error)
    );
    for (cmd, code) in [("exit 1", 1), ("kill -9 $$", 137), ("exit 3", 3)] {
        let r = spdy_exec(&p, &id, &["sh", "-c", cmd]).await;
        assert_eq!(
            r.exit_code(),
            Some(code),
            "{cmd}: {}",
            String::from_utf8_lossy(&r.error)
        );
    }

    // A URL is good once.
    let url = exec_url(&p, &id, &["true"], OUT_ERR).await;
    let first = SpdyCommand::connect(&url, OUT_ERR).await;
    assert_eq!(first.protocol, "v4.channel.k8s.io");
    assert_eq!(first.finish(T).await.exit_code(), Some(0));
    let (again, _) = spdy_upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(again.status, 404, "a used token is refused: {again:?}");
    // A protocol nobody speaks is refused.
    let url = exec_url(&p, &id, &["true"], OUT_ERR).await;
    let (refused, _) = spdy_upgrade(&url, &["v9.channel.k8s.io"]).await;
    assert_eq!(refused.status, 403, "{refused:?}");

    // stdin to cat and back; its EOF ends cat.
    let url = exec_url(&p, &id, &["cat"], IN_OUT).await;
    let mut c = SpdyCommand::connect(&url, IN_OUT).await;
    let stdin = c.stdin.take().expect("stdin");
    stdin.write(b"through the VM\n").await.expect("write");
    stdin.finish().await.expect("eof");
    let r = c.finish(T).await;
    assert_eq!(r.stdout, b"through the VM\n");
    assert_eq!(r.exit_code(), Some(0));

    // A terminal: the size the client sets is what stty sees.
    let tty = StreamOpts {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = exec_url(&p, &id, &["sh", "-c", "read x; stty size"], tty).await;
    let mut c = SpdyCommand::connect(&url, tty).await;
    c.resize(132, 43).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stdin = c.stdin.take().expect("stdin");
    stdin.write(b"\n").await.expect("write");
    let r = c.finish(T).await;
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("43 132"),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert_eq!(r.exit_code(), Some(0));

    // 100 MiB through cat, both ways, checked by hash.
    let url = exec_url(&p, &id, &["cat"], IN_OUT).await;
    let mut c = SpdyCommand::connect(&url, IN_OUT).await;
    let stdin = c.stdin.take().expect("stdin");
    let mut stdout = c.stdout.take().expect("stdout");
    const TOTAL: usize = 100 << 20;
    let writer = tokio::spawn(async move {
        let mut h = sha2::Sha256::new();
        let mut block = vec![0u8; 256 << 10];
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut sent = 0;
        while sent < TOTAL {
            for b in block.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            h.update(&block);
            stdin.write(&block).await.expect("write stdin");
            sent += block.len();
        }
        stdin.finish().await.expect("eof");
        h.finalize()
    });
    let mut h = sha2::Sha256::new();
    let mut got = 0usize;
    while let Some(b) = tokio::time::timeout(Duration::from_secs(120), stdout.read())
        .await
        .expect("cat keeps answering")
    {
        h.update(&b);
        got += b.len();
    }
    assert_eq!(got, TOTAL, "every byte came back");
    assert_eq!(
        h.finalize(),
        writer.await.expect("writer"),
        "the same bytes"
    );
    assert_eq!(c.finish(T).await.exit_code(), Some(0));

    // 20 concurrent execs.
    let mut all = Vec::new();
    for i in 0..20 {
        let url = exec_url(&p, &id, &["sh", "-c", &format!("echo {i}")], OUT_ERR).await;
        all.push(tokio::spawn(async move {
            SpdyCommand::connect(&url, OUT_ERR).await.finish(T).await
        }));
    }
    for (i, t) in all.into_iter().enumerate() {
        let r = t.await.expect("exec task");
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{i}\n"));
        assert_eq!(r.exit_code(), Some(0));
    }

    // WebSocket, v5 and v4: stdin with the close signal (v5), exit codes in the Status.
    let url = exec_url(&p, &id, &["sh", "-c", "cat; exit 4"], IN_OUT).await;
    let (mut ws, proto) = ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io")
        .await
        .expect("websocket");
    assert_eq!(proto, "v5.channel.k8s.io");
    ws_send(&mut ws, 0, b"over websocket\n").await;
    ws_send(&mut ws, 255, &[0]).await;
    let r = ws_collect(&mut ws, T).await;
    assert_eq!(r.stdout, b"over websocket\n");
    assert_eq!(
        r.exit_code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&r.error)
    );
    let url = exec_url(&p, &id, &["sh", "-c", "echo v4 >&2"], OUT_ERR).await;
    let (mut ws, proto) = ws_connect(&url, "v4.channel.k8s.io")
        .await
        .expect("websocket");
    assert_eq!(proto, "v4.channel.k8s.io");
    let r = ws_collect(&mut ws, T).await;
    assert_eq!(r.stderr, b"v4\n");
    assert_eq!(r.exit_code(), Some(0));

    // A client that goes away mid-stream takes its process with it, over either transport.
    let url = exec_url(&p, &id, &["sleep", "4242"], IN_OUT).await;
    let c = SpdyCommand::connect(&url, IN_OUT).await;
    assert!(
        moat_tests::wait_until_async(Duration::from_secs(20), || async {
            processes(&p, &id, "sleep 4242").await > 0
        })
        .await,
        "the exec'd process runs"
    );
    c.disconnect();
    let url = exec_url(&p, &id, &["sleep", "4343"], IN_OUT).await;
    let (ws, _) = ws_connect(&url, "v5.channel.k8s.io")
        .await
        .expect("websocket");
    assert!(
        moat_tests::wait_until_async(Duration::from_secs(20), || async {
            processes(&p, &id, "sleep 4343").await > 0
        })
        .await,
        "the exec'd process runs"
    );
    drop(ws);
    for marker in ["sleep 4242", "sleep 4343"] {
        let mut gone = false;
        for _ in 0..100 {
            if processes(&p, &id, marker).await == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            gone,
            "{marker} is left in the guest after its client went away"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_and_port_forward() {
    let p = pod_with_image("attach").await;
    // A container with stdin open: cat echoes what an attached client types.
    let cat = p
        .create_with("cat", &["cat"], |c| c.stdin = true)
        .await
        .expect("create");
    p.start(&cat).await;
    let attach = |stdin: bool| {
        let p = &p;
        let cat = cat.clone();
        async move {
            p.m.runtime()
                .await
                .attach(cri::AttachRequest {
                    container_id: cat,
                    stdin,
                    tty: false,
                    stdout: true,
                    stderr: true,
                })
                .await
                .expect("Attach")
                .into_inner()
                .url
        }
    };
    let mut c = SpdyCommand::connect(&attach(true).await, IN_OUT).await;
    let stdin = c.stdin.take().expect("stdin");
    let mut stdout = c.stdout.take().expect("stdout");
    stdin.write(b"attached\n").await.expect("write");
    let echoed = tokio::time::timeout(T, stdout.read())
        .await
        .expect("echo in time")
        .expect("data");
    assert_eq!(&echoed[..], b"attached\n");
    // Detaching leaves the container running.
    drop((c, stdin, stdout));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.status(&cat).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    // The same over WebSocket.
    let (mut ws, _) = ws_connect(&attach(true).await, "v5.channel.k8s.io")
        .await
        .expect("websocket");
    ws_send(&mut ws, 0, b"again\n").await;
    let got = loop {
        let m = tokio::time::timeout(T, futures::StreamExt::next(&mut ws))
            .await
            .expect("echo in time")
            .expect("message")
            .expect("ok");
        let d = m.into_data();
        if d.len() > 1 && d[0] == 1 {
            break d[1..].to_vec();
        }
    };
    assert_eq!(got, b"again\n");
    drop(ws);

    // ExecSync may take longer than the agent's call deadline (10 s) when its timeout says so.
    let late = p
        .exec_for(&cat, &["sh", "-c", "sleep 11; echo late"], 30)
        .await;
    assert_eq!(late.stdout, b"late\n", "{late:?}");

    // An HTTP server listening on localhost inside the pod, reached by port forwarding.
    let web = p
        .create(
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/www && echo hello-from-the-vm > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
            ],
        )
        .await
        .expect("create web");
    p.start(&web).await;
    let pf_url = || async {
        p.m.runtime()
            .await
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: p.id.clone(),
                port: vec![8080],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url
    };
    let mut pf = SpdyPortForward::connect(&pf_url().await).await;
    let mut body = String::new();
    for _ in 0..50 {
        let (data, err) = pf
            .forward(8080)
            .await
            .round_trip(b"GET /index.html HTTP/1.0\r\n\r\n", T)
            .await;
        body = format!("{}{err}", String::from_utf8_lossy(&data));
        if err.is_empty() && body.contains("hello-from-the-vm") {
            break;
        }
        // httpd may not listen yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(body.contains("hello-from-the-vm"), "{body}\n{}", p.m.log());
    // Several connections on one session at once.
    let mut all = Vec::new();
    for _ in 0..5 {
        let f = pf.forward(8080).await;
        all.push(tokio::spawn(
            f.round_trip(b"GET /index.html HTTP/1.0\r\n\r\n", T),
        ));
    }
    for t in all {
        let (data, err) = t.await.expect("forward");
        assert!(err.is_empty(), "{err}");
        assert!(String::from_utf8_lossy(&data).contains("hello-from-the-vm"));
    }
    // Nothing listens on 9: the error stream says so.
    let (_, err) = pf.forward(9).await.round_trip(b"", T).await;
    assert!(err.contains("port 9"), "{err}");
    pf.session.goaway().await;

    // Port forwarding over WebSocket: channel 0 data, 1 errors, each opened with the port.
    let (mut ws, _) = ws_connect(
        &format!("{}?ports=8080", pf_url().await),
        "v4.channel.k8s.io",
    )
    .await
    .expect("websocket");
    ws_send(&mut ws, 0, b"GET /index.html HTTP/1.0\r\n\r\n").await;
    let mut data = Vec::new();
    let mut opened = 0;
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(m)) = futures::StreamExt::next(&mut ws).await {
            let d = m.into_data();
            if d.len() == 3 && opened < 2 {
                assert_eq!(
                    u16::from_le_bytes([d[1], d[2]]),
                    8080,
                    "channel opened with its port"
                );
                opened += 1;
                continue;
            }
            if d.first() == Some(&0) {
                data.extend_from_slice(&d[1..]);
                if String::from_utf8_lossy(&data).contains("hello-from-the-vm") {
                    break;
                }
            }
        }
    })
    .await;
    assert_eq!(opened, 2);
    assert!(
        String::from_utf8_lossy(&data).contains("hello-from-the-vm"),
        "{}\n{}",
        String::from_utf8_lossy(&data),
        p.m.log()
    );
}
