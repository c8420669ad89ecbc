//! Benchmark: pull and unpack a ~200 MiB, 5-layer image from a local docker-registry with
//! moatd (PullImage over the CRI socket) and with containerd (`ctr image pull --plain-http`,
//! which fetches and unpacks into the overlayfs snapshotter), alternating, in the same run.
//! Every run starts from an empty store. Prints each time, the medians and the ratio.
//!
//! Usage: bench-image-pull [--runs N]   (set MOATD_BIN to the release moatd)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::bench::median;
use moat_tests::moatd::Moatd;
use moat_tests::oci::{Compression, Flavor, Image, Layer, TarBuilder};
use moat_tests::registry::Registry;

const LAYERS: usize = 5;
const FILES_PER_LAYER: usize = 320;
const FILE_SIZE: usize = 128 * 1024;

/// Deterministic file contents that compress about as well as typical binaries and text:
/// half pseudo-random bytes, half repeated text.
fn file_data(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(FILE_SIZE);
    while v.len() < FILE_SIZE / 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    let text = format!("moat benchmark file {seed}: the quick brown fox jumps over the lazy dog\n");
    while v.len() < FILE_SIZE {
        v.extend_from_slice(text.as_bytes());
    }
    v.truncate(FILE_SIZE);
    v
}

fn build_image() -> Image {
    let layers = (0..LAYERS)
        .map(|l| {
            let mut t = TarBuilder::new().dir(&format!("layer{l}"), 0o755);
            for f in 0..FILES_PER_LAYER {
                t = t.file(
                    &format!("layer{l}/file{f:04}"),
                    &file_data((l * FILES_PER_LAYER + f) as u64),
                    0o644,
                );
            }
            Layer::new(&t.finish(), Compression::Gzip, Flavor::Oci)
        })
        .collect();
    Image::new(layers, Flavor::Oci, "amd64", "")
}

async fn moatd_pull(image: &str) -> Duration {
    let m = Moatd::start("").await;
    let mut client = m.images().await;
    let started = Instant::now();
    client
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("moatd pull");
    started.elapsed()
}

fn containerd_pull(image: &str) -> Duration {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sock = d.join("containerd.sock");
    let config = format!(
        "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
        d.join("root").display(),
        d.join("state").display(),
        sock.display(),
        d.join("containerd.sock.ttrpc").display()
    );
    std::fs::write(d.join("config.toml"), config).expect("config");
    let mut child = Command::new("containerd")
        .arg("--config")
        .arg(d.join("config.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("containerd missing: install Debian's containerd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&sock, &["version"]).0 {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let (ok, out) = ctr(
        &sock,
        &["-n", "bench", "images", "pull", "--plain-http", image],
    );
    let took = started.elapsed();
    assert!(ok, "ctr pull failed: {out}");
    let (ok, out) = ctr(&sock, &["-n", "bench", "snapshots", "ls"]);
    assert!(
        ok && out.lines().count() > LAYERS,
        "containerd did not unpack: {out}"
    );
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn ctr(sock: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(args)
        .output()
        .expect("ctr");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::main]
async fn main() {
    let runs = moat_tests::bench::runs_arg(5);
    let img = build_image();
    let compressed: u64 = img.layers.iter().map(|l| l.blob.len() as u64).sum();
    let raw = (LAYERS * FILES_PER_LAYER * FILE_SIZE) as u64;
    println!(
        "image: {LAYERS} gzip layers, {} files, {:.1} MiB unpacked, {:.1} MiB compressed",
        LAYERS * FILES_PER_LAYER,
        raw as f64 / 1048576.0,
        compressed as f64 / 1048576.0
    );
    let reg = Registry::start().await;
    reg.push_image("bench/big", "v1", &img).await;
    let image = format!("{}/bench/big:v1", reg.addr);
    let (mut moat, mut ctrd) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which goes first so neither always meets a warmer page cache.
        if i % 2 == 0 {
            moat.push(moatd_pull(&image).await);
            ctrd.push(containerd_pull(&image));
        } else {
            ctrd.push(containerd_pull(&image));
            moat.push(moatd_pull(&image).await);
        }
        println!(
            "run {i}: moatd {:>7.3} s   containerd {:>7.3} s",
            moat[i].as_secs_f64(),
            ctrd[i].as_secs_f64()
        );
    }
    let (m, c) = (median(&mut moat), median(&mut ctrd));
    println!(
        "median over {runs} runs: moatd {:.3} s, containerd {:.3} s",
        m.as_secs_f64(),
        c.as_secs_f64()
    );
    println!(
        "ratio moatd/containerd: {:.2} (below 1.00 means moatd is faster)",
        m.as_secs_f64() / c.as_secs_f64()
    );
}
