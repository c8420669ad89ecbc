//! Test harness for Moat's integration tests and benchmarks: real processes only.
//!
//! - `oci`: builds OCI and Docker images (layers, configs, manifests, indexes) in memory.
//! - `registry`: runs Debian's `docker-registry` on a free loopback port and pushes to it.
//! - `token_auth`: a registry token server and JWT issuer for token-auth registries.
//! - `proxy`: an HTTP proxy in front of a registry that counts, corrupts or stalls blobs.
//! - `bench`: what the benchmark binaries share.
//! - `moatd`: runs the moatd binary in temporary directories and connects CRI clients.
//! - `pod`: a running pod VM with a busybox image, for end-to-end tests.
//! - `streams`: SPDY and WebSocket clients for Exec, Attach and PortForward URLs.

pub mod bench;
pub mod moatd;
pub mod oci;
pub mod pod;
pub mod proxy;
pub mod registry;
pub mod streams;
pub mod token_auth;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    f()
}

/// Polls the async `f` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until_async<F, Fut>(timeout: std::time::Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    f().await
}

/// The pids of the processes whose command line contains every one of `needles`.
pub fn pids_with(needles: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

/// The VMM's command-line mark for the e2e backend in use (MOAT_E2E_BACKEND).
pub fn vmm_mark() -> &'static str {
    if std::env::var("MOAT_E2E_BACKEND").is_ok_and(|b| b == "builtin") {
        " vmm "
    } else {
        "qemu-system"
    }
}
