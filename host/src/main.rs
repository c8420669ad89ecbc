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
    /// CRI socket: a path or a unix:// URL (overrides `listen` in the config).
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
    /// Directory of the guest image (overrides `sandbox.guest_dir`).
    #[arg(long)]
    guest_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Serve one VM's vhost-user-vsock device (moatd starts this per sandbox).
    VsockBackend {
        /// The vhost-user socket the VMM connects to.
        #[arg(long)]
        socket: PathBuf,
        /// The hybrid-vsock Unix socket.
        #[arg(long)]
        uds_path: PathBuf,
        /// The guest CID.
        #[arg(long, default_value_t = 3)]
        guest_cid: u64,
    },
    /// Serve one VM's vhost-user-fs (virtio-fs) device (moatd starts this per sandbox).
    FsBackend {
        /// The vhost-user socket the VMM connects to.
        #[arg(long)]
        socket: PathBuf,
        /// The directory shared with the guest.
        #[arg(long)]
        shared_dir: PathBuf,
        /// Refuse every change to the share.
        #[arg(long)]
        read_only: bool,
        /// Report owners shifted by these uid mappings (`inside:outside:length,...`: a
        /// pod's user namespace; read-only shares only).
        #[arg(long)]
        uid_map: Option<String>,
        /// The same for gids.
        #[arg(long)]
        gid_map: Option<String>,
    },
    /// Run a program confined (moatd starts QEMU and the back-ends this way).
    Jail {
        /// The confinement (JSON, written by moatd).
        #[arg(long)]
        spec: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
    /// Run one VM with Moat's built-in VMM (moatd starts this per sandbox).
    Vmm {
        /// The VM's configuration (JSON, written by moatd).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print what this host supports (KVM, devices, CNI, guest image, QEMU, each runtime
    /// handler's VMM) and why; exit 0 when the configured handlers can run pods here.
    Check {
        /// Configuration file (TOML); same as moatd's own `--config`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn vmm(config: PathBuf) -> ExitCode {
    moat_host::logging::init(&moat_host::config::LogConfig::default());
    let cfg = match moat_vmm::VmmConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moatd vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    match moat_vmm::run(&cfg) {
        Ok(exit) => {
            tracing::info!(vm = %cfg.id, ?exit, "the VM ended");
            ExitCode::from(exit.code())
        }
        Err(e) => {
            eprintln!("moatd vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &Config) -> ExitCode {
    let report = moat_host::check::run(config);
    for f in &report.findings {
        println!("{f}");
    }
    println!("{}", report.verdict());
    if report.pods_can_run() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn jail(spec: &str, argv: &[std::ffi::OsString]) -> ExitCode {
    match serde_json::from_str::<moat_host::confine::JailSpec>(spec) {
        Ok(spec) => moat_host::confine::launch::run(&spec, argv),
        Err(e) => {
            eprintln!("moatd jail: bad --spec: {e}");
            ExitCode::from(moat_host::confine::launch::EXIT_NOT_CONFINED)
        }
    }
}

/// A back-end never executes a program once started: the exec that started it was the
/// last one (before any thread, so every thread inherits the filter).
fn forbid_exec(what: &str) -> Result<(), ExitCode> {
    let applied = moat_host::confine::seccomp::no_exec_filter()
        .and_then(|f| moat_host::confine::seccomp::apply(&f));
    applied.map_err(|e| {
        eprintln!("moatd {what}: {e}");
        ExitCode::FAILURE
    })
}

fn fs_backend(
    socket: PathBuf,
    shared_dir: PathBuf,
    read_only: bool,
    uid_map: Option<String>,
    gid_map: Option<String>,
) -> ExitCode {
    use moat_host::devices::fs::owners::{Owners, parse_ranges};
    if let Err(code) = forbid_exec("fs-backend") {
        return code;
    }
    moat_host::logging::init(&moat_host::config::LogConfig::default());
    let parse = |m: Option<String>| m.as_deref().map(parse_ranges).transpose();
    let owners = match (parse(uid_map), parse(gid_map)) {
        (Ok(None), Ok(None)) => None,
        (Ok(uids), Ok(gids)) => Some(Owners {
            uids: uids.unwrap_or_default(),
            gids: gids.unwrap_or_default(),
        }),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("moatd fs-backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = moat_host::devices::fs::FsBackendConfig {
        socket,
        shared_dir,
        read_only,
        owners,
    };
    match moat_host::devices::fs::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moatd fs-backend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn vsock_backend(socket: PathBuf, uds_path: PathBuf, guest_cid: u64) -> ExitCode {
    if let Err(code) = forbid_exec("vsock-backend") {
        return code;
    }
    let log = moat_host::config::LogConfig::default();
    moat_host::logging::init(&log);
    let cfg = moat_host::devices::vsock::VsockBackendConfig {
        socket,
        uds_path,
        guest_cid,
    };
    match moat_host::devices::vsock::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moatd vsock-backend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Sub::VsockBackend {
            socket,
            uds_path,
            guest_cid,
        }) => {
            return vsock_backend(socket, uds_path, guest_cid);
        }
        Some(Sub::FsBackend {
            socket,
            shared_dir,
            read_only,
            uid_map,
            gid_map,
        }) => {
            return fs_backend(socket, shared_dir, read_only, uid_map, gid_map);
        }
        Some(Sub::Vmm { config }) => return vmm(config),
        Some(Sub::Jail { spec, argv }) => return jail(&spec, &argv),
        Some(Sub::Check { .. }) | None => {}
    }
    let config_arg = match &args.command {
        Some(Sub::Check { config: Some(c) }) => Some(c),
        _ => args.config.as_ref(),
    };
    let (path, explicit) = match config_arg {
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
    if let Some(g) = args.guest_dir {
        config.sandbox.guest_dir = g;
    }
    if let Some(f) = args.log_format {
        config.log.format = if f == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    if let Err(e) = config.validate() {
        eprintln!("moatd: {e}");
        return ExitCode::from(2);
    }
    if matches!(args.command, Some(Sub::Check { .. })) {
        return check(&config);
    }
    moat_host::logging::init(&config.log);
    // glibc gives each thread that allocates its own heap arena, up to 8 per core, and
    // never returns them: moatd's short-lived blocking threads (forks, store commits)
    // would grow its RSS to that plateau over a day of pod churn. Two arenas serve two
    // async workers and the blocking pool without measurable contention.
    // SAFETY: mallopt only sets an allocator parameter; no allocation is in flight yet
    // on another thread (the runtime is not started).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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
