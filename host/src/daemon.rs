//! Starting moatd: directories, the store, the image manager, the CRI server, signals.

use std::path::PathBuf;

use anyhow::Context as _;
use tracing::info;

use crate::config::Config;
use crate::images::ImageManager;
use crate::store::Store;

/// Runs moatd until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for d in [&config.root_dir, &config.run_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    // The image store holds unpacked layers as the images have them (setuid binaries,
    // device nodes): no one but root goes below root_dir.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.root_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("make {} private (0700)", config.root_dir.display()))?;
    }
    // The binary the pods' processes run, pinned before anything can replace it.
    crate::confine::plan::moatd_binary().context("find moatd's own binary")?;
    let store = Store::open(&config.root_dir.join("moat.redb"))?;
    let images = ImageManager::open(&config, store.clone())?;
    let sandboxes = crate::sandbox::SandboxManager::open(&config, store.clone()).await?;
    let containers = crate::containers::ContainerManager::open(
        config.containers.clone(),
        store.clone(),
        sandboxes.clone(),
        images.clone(),
    )?;
    containers.recover().await?;
    containers.follow_vm_deaths();
    let _metrics = if config.metrics.enabled {
        let addr = config.metrics.address;
        let pods = crate::pods::Pods::new(sandboxes.clone(), containers.clone());
        let server = crate::metrics::server::MetricsServer::start(addr, std::sync::Arc::new(pods))
            .await
            .with_context(|| {
                format!("serve /metrics on {addr}: choose another metrics.address, or set metrics.enabled = false")
            })?;
        Some(server)
    } else {
        info!("metrics endpoint off (metrics.enabled = false)");
        None
    };
    let socket: PathBuf = config.socket_path();
    info!(version = env!("CARGO_PKG_VERSION"), root = %config.root_dir.display(), "moatd starting");
    crate::cri::serve(
        config,
        store,
        images,
        sandboxes,
        containers,
        &socket,
        shutdown_signal(),
    )
    .await?;
    info!("moatd stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers moatd still stops when killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
