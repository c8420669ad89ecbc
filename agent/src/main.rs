//! `moat-agent`: the guest agent. In a pod VM it runs as PID 1: it mounts the standard
//! filesystems, loads the image's kernel modules, serves moatd over vsock (port 1024) and
//! announces itself by connecting to the host's port 1025. On a plain host it serves on a
//! Unix socket instead, which is how its tests run.

use std::path::PathBuf;

use clap::Parser;

mod chunks;
mod containers;
mod exec;
mod executor;
mod init;
mod modprobe;
mod netconf;
mod pid_ns;
mod port_forward;
mod server;
mod system;
mod vsock;

/// The Moat guest agent.
#[derive(Debug, Parser)]
#[command(name = "moat-agent", version)]
struct Args {
    /// Serve on this Unix socket instead of vsock (for running on a plain host).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// The vsock port to serve on.
    #[arg(long, default_value_t = vsock::AGENT_PORT)]
    vsock_port: u32,
}

fn main() {
    // Re-executed as a pod's init (executor::PodInit): nothing but reaping.
    let arg0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if arg0 == executor::PAUSE_ARG0 {
        executor::pause_main();
    }
    // The kernel's module helper: /sbin/modprobe is a link to the agent.
    if std::path::Path::new(&arg0).file_name() == Some(std::ffi::OsStr::new("modprobe")) {
        let args = std::env::args_os().skip(1);
        std::process::exit(modprobe::main(
            args.map(|a| a.to_string_lossy().into_owned()),
        ));
    }
    let pid1 = std::process::id() == 1;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Kernel command-line words that are not parameters reach PID 1 as arguments; ignore them.
    let args = if pid1 {
        Args {
            listen: None,
            vsock_port: vsock::AGENT_PORT,
        }
    } else {
        Args::parse()
    };
    if let Err(e) = run(args, pid1) {
        eprintln!("moat-agent: {e}");
        if pid1 {
            // PID 1 must not exit: that panics the kernel. End the VM instead.
            system::end_vm();
        }
        std::process::exit(1);
    }
}

fn run(args: Args, pid1: bool) -> Result<(), Box<dyn std::error::Error>> {
    if pid1 {
        init::switch_off_initramfs()?;
        init::mount_all()?;
        tracing::info!(root = %init::root_fs_type(), "root filesystem");
        let n = init::load_modules(
            std::path::Path::new(init::MODULES_DIR),
            std::path::Path::new(init::MODULES_ORDER),
        )?;
        if let Err(e) = init::loopback_up() {
            tracing::warn!(error = %e, "cannot bring up the loopback interface");
        }
        tracing::info!(modules = n, "guest initialised");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let system: std::sync::Arc<dyn system::System> =
        std::sync::Arc::new(system::Linux { guest: pid1 });
    rt.block_on(async move {
        if pid1 {
            tokio::spawn(init::reap_orphans());
        }
        match args.listen {
            Some(path) => {
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path)?;
                tracing::info!(socket = %path.display(), "moat-agent serving");
                server::serve_unix(listener, system).await?;
            }
            None => vsock::serve(args.vsock_port, system).await?,
        }
        Ok(())
    })
}
