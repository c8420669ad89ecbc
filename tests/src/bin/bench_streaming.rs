//! Benchmark: Exec and PortForward into a pod VM, against the floor measured in the same
//! run: the raw vsock round trip to the agent (a hybrid-vsock CONNECT answered by the guest)
//! and the agent's gRPC round trip (Health). Figures: ExecSync of `true`, a whole Exec of
//! `true` over SPDY (upgrade, streams, exit status), exec stream throughput (stdout of a
//! process writing zeros, and stdin to a process discarding it), PortForward throughput
//! (a server in the pod sending zeros) and a PortForward connection's round trip.
//!
//! Usage: bench-streaming [--runs N]   (set MOATD_BIN to the release moatd; needs guest-image/out)

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_host::guest::{GuestClient, hybrid_connect};
use moat_host::sandbox::vm::VmPaths;
use moat_tests::bench::median;
use moat_tests::pod::pod_with_image;
use moat_tests::streams::{SpdyCommand, SpdyPortForward, StreamOpts};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

const OUT: StreamOpts = StreamOpts {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};
const IN: StreamOpts = StreamOpts {
    stdin: true,
    stdout: true,
    stderr: true,
    tty: false,
};
const MIB: usize = 1 << 20;

#[tokio::main]
async fn main() {
    let runs = moat_tests::bench::runs_arg(100);
    let p = pod_with_image("bench-stream").await;
    let cid = p
        .create("main", &["sleep", "100000"])
        .await
        .expect("create");
    p.start(&cid).await;
    let web = p
        .create(
            "zeros",
            &[
                "sh",
                "-c",
                "while true; do dd if=/dev/zero bs=65536 count=1600 2>/dev/null | nc -l -p 9000; done",
            ],
        )
        .await
        .expect("create");
    p.start(&web).await;
    let echo = p
        .create("echo", &["nc", "-ll", "-p", "9001", "-e", "cat"])
        .await
        .expect("create");
    p.start(&echo).await;
    let paths = VmPaths::new(&p.m.root().with_file_name("run"), &p.id);
    let mut rt = p.m.runtime().await;

    // Floor 1: raw vsock round trip (CONNECT to the agent's port, answered from the guest).
    let mut raw = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let s = hybrid_connect(&paths.vsock(), 1024)
            .await
            .expect("vsock connect");
        raw.push(t.elapsed());
        drop(s);
    }
    // Floor 2: the agent's gRPC round trip on an open connection.
    let agent = GuestClient::connect(&paths.vsock(), Duration::from_secs(10))
        .await
        .expect("agent");
    let mut health = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        agent.health().await.expect("health");
        health.push(t.elapsed());
    }
    // ExecSync of `true`.
    let mut sync = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: cid.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .expect("exec sync");
        assert_eq!(r.into_inner().exit_code, 0);
        sync.push(t.elapsed());
    }
    // Exec of `true` over SPDY: the CRI call for the URL, the upgrade, the streams, the exit.
    let mut spdy = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let url = rt
            .exec(cri::ExecRequest {
                container_id: cid.clone(),
                cmd: vec!["true".into()],
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .await
            .expect("exec")
            .into_inner()
            .url;
        let r = SpdyCommand::connect(&url, OUT)
            .await
            .finish(Duration::from_secs(30))
            .await;
        assert_eq!(r.exit_code(), Some(0));
        spdy.push(t.elapsed());
    }
    // Exec stream throughput, guest to host: 200 MiB of zeros on stdout.
    let exec_url = |cmd: &[&str], o: StreamOpts| {
        let mut rt = rt.clone();
        let req = cri::ExecRequest {
            container_id: cid.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        };
        async move { rt.exec(req).await.expect("exec").into_inner().url }
    };
    let out_mib = 200;
    let url = exec_url(
        &[
            "dd",
            "if=/dev/zero",
            "bs=65536",
            &format!("count={}", out_mib * 16),
        ],
        OUT,
    )
    .await;
    let mut c = SpdyCommand::connect(&url, OUT).await;
    let mut stdout = c.stdout.take().expect("stdout");
    let t = Instant::now();
    let mut got = 0usize;
    while let Some(b) = stdout.read().await {
        got += b.len();
    }
    let out_secs = t.elapsed().as_secs_f64();
    assert_eq!(got, out_mib * MIB);
    c.finish(Duration::from_secs(30)).await;
    // Host to guest: 200 MiB on stdin to a process that counts it.
    let url = exec_url(&["sh", "-c", "dd of=/dev/null bs=65536 2>&1"], IN).await;
    let mut c = SpdyCommand::connect(&url, IN).await;
    let stdin = c.stdin.take().expect("stdin");
    let block = vec![0u8; 256 << 10];
    let t = Instant::now();
    for _ in 0..(out_mib * MIB / block.len()) {
        stdin.write(&block).await.expect("write");
    }
    stdin.finish().await.expect("eof");
    let r = c.finish(Duration::from_secs(120)).await;
    let in_secs = t.elapsed().as_secs_f64();
    assert_eq!(r.exit_code(), Some(0));

    // PortForward: throughput from a server in the pod, and a connection's round trip.
    let pf_url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: p.id.clone(),
            port: vec![9000, 9001],
        })
        .await
        .expect("port forward")
        .into_inner()
        .url;
    let mut pf = SpdyPortForward::connect(&pf_url).await;
    let mut pf_bytes = 0;
    let mut pf_secs = 0.0;
    for _ in 0..50 {
        // The server sends, then waits for our EOF: read everything before half-closing.
        let mut f = pf.forward(9000).await;
        let t = Instant::now();
        let mut n = 0;
        while n < 100 * MIB {
            match tokio::time::timeout(Duration::from_secs(60), f.data_in.read()).await {
                Ok(Some(b)) => n += b.len(),
                _ => break,
            }
        }
        let _ = f.data_out.finish().await;
        if n == 100 * MIB {
            pf_bytes = n;
            pf_secs = t.elapsed().as_secs_f64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pf_bytes, 100 * MIB, "the zero server answered");
    let mut pf_rtt = Vec::new();
    let mut f = pf.forward(9001).await;
    for _ in 0..runs {
        let t = Instant::now();
        f.data_out.write(b"x").await.expect("write");
        f.data_in.read().await.expect("echo");
        pf_rtt.push(t.elapsed());
    }
    pf.session.goaway().await;

    let (raw, health) = (median(&mut raw), median(&mut health));
    let (sync, spdy, pf_rtt) = (median(&mut sync), median(&mut spdy), median(&mut pf_rtt));
    println!("medians over {runs} round trips:");
    println!(
        "  floor: raw vsock CONNECT round trip to the agent  {:>8.2} ms",
        ms(raw)
    );
    println!(
        "  floor: agent gRPC round trip (Health)            {:>8.2} ms",
        ms(health)
    );
    println!(
        "  ExecSync of `true`                                {:>8.2} ms  ({:.1}x the gRPC floor, {:.1}x the vsock floor)",
        ms(sync),
        sync.as_secs_f64() / health.as_secs_f64(),
        sync.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "  Exec of `true` over SPDY (URL, upgrade, streams)  {:>8.2} ms  ({:.2}x ExecSync)",
        ms(spdy),
        spdy.as_secs_f64() / sync.as_secs_f64()
    );
    println!(
        "  PortForward round trip (1 byte, echo in the pod)  {:>8.2} ms  ({:.1}x the gRPC floor)",
        ms(pf_rtt),
        pf_rtt.as_secs_f64() / health.as_secs_f64()
    );
    let (o, i) = (out_mib as f64 / out_secs, out_mib as f64 / in_secs);
    let pfm = pf_bytes as f64 / MIB as f64 / pf_secs;
    println!("throughput:");
    println!("  exec stdout, guest to host ({out_mib} MiB over SPDY)   {o:>8.1} MiB/s");
    println!("  exec stdin, host to guest ({out_mib} MiB over SPDY)    {i:>8.1} MiB/s");
    println!(
        "  PortForward, pod to host (100 MiB over SPDY)     {pfm:>8.1} MiB/s  ({:.2}x exec stdout)",
        pfm / o
    );
}
