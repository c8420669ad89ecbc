//! `moatd`: serves the Kubernetes CRI v1 API on a Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use moat_host::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};

/// Moat host daemon: VM-isolated pods for Kubernetes, over CRI v1.
#[derive(Debug, Parser)]
#[command(name = "moatd", version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// CRI socket path (overrides `listen` in the config).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// State directory (overrides `root_dir`).
    #[arg(long)]
    root_dir: Option<PathBuf>,
    /// Runtime directory (overrides `run_dir`).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Log format (overrides `log.format`).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut config = match Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moatd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = args.listen {
        config.listen = Some(l);
    }
    if let Some(r) = args.root_dir {
        config.root_dir = r;
    }
    if let Some(r) = args.run_dir {
        config.run_dir = r;
    }
    if let Some(f) = args.log_format {
        config.log.format = if f == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    moat_host::logging::init(&config.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("moatd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(moat_host::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("moatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
