//! moatd's configuration file (TOML). Every key is documented in docs/configuration.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::hypervisor::select::Backend;
pub use crate::network::config::CniConfig;

/// Where moatd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/moat/config.toml";

/// Errors from reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration of moatd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent state: the image store, the metadata database.
    pub root_dir: PathBuf,
    /// Runtime state that does not survive a reboot: sockets, per-VM run dirs.
    pub run_dir: PathBuf,
    /// The CRI socket. Defaults to `<run_dir>/moat.sock`.
    pub listen: Option<PathBuf>,
    /// Logging.
    pub log: LogConfig,
    /// Runtime-wide settings reported through the CRI.
    pub runtime: RuntimeConfig,
    /// Where the CNI configuration and plugins live.
    pub cni: CniConfig,
    /// Image pulls.
    pub images: ImagesConfig,
    /// Per-registry settings, keyed by registry host (`docker.io`, `registry.local:5000`).
    pub registries: BTreeMap<String, RegistryHostConfig>,
    /// Pod sandboxes (VMs).
    pub sandbox: SandboxConfig,
    /// The QEMU backend.
    pub qemu: crate::hypervisor::qemu::QemuConfig,
    /// The streaming server (Exec, Attach, PortForward URLs).
    pub streaming: StreamingConfig,
    /// Container defaults the CRI leaves to the runtime.
    pub containers: crate::containers::config::ContainersConfig,
    /// Confinement of the host processes that serve a pod (QEMU, the vhost-user back-ends).
    pub confinement: crate::confine::ConfinementConfig,
    /// moatd's Prometheus endpoint.
    pub metrics: MetricsConfig,
}

/// moatd's Prometheus endpoint (`GET /metrics`, plain HTTP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve it; on unless the operator turns it off.
    pub enabled: bool,
    /// Address to bind (port 0 picks a free one, logged at start). Loopback by default:
    /// a Prometheus agent on the node scrapes it; expose it wider on purpose only.
    pub address: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 9380)),
        }
    }
}

/// The socket path of a CRI endpoint as operators write it: a plain path, or a
/// `unix://` URL as kubelet and crictl take (`unix:///run/moat/moat.sock`).
pub fn endpoint_path(endpoint: &Path) -> Result<PathBuf, ConfigError> {
    let text = endpoint
        .to_str()
        .ok_or_else(|| ConfigError::Invalid(format!("listen {endpoint:?} is not valid UTF-8")))?;
    let path = match text.split_once("://") {
        Some(("unix", rest)) => rest,
        Some((scheme, _)) => {
            return Err(ConfigError::Invalid(format!(
                "listen {text:?}: moatd serves the CRI on a Unix socket only; write a path or unix:///path (not {scheme}://)"
            )));
        }
        None if text.starts_with("unix:") => {
            return Err(ConfigError::Invalid(format!(
                "listen {text:?}: write unix:///absolute/path or a plain path"
            )));
        }
        None => text,
    };
    if path.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "listen {text:?} names no socket path"
        )));
    }
    if text.contains("://") && !path.starts_with('/') {
        return Err(ConfigError::Invalid(format!(
            "listen {text:?}: a unix:// URL takes an absolute path (unix:///run/moat/moat.sock)"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Where the streaming server listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Address to bind; kubelet on the same node reaches it there.
    pub address: std::net::IpAddr,
    /// TCP port; 0 picks a free one at each start.
    pub port: u16,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 0,
        }
    }
}

/// Pod sandbox (VM) settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Directory holding the guest image: `vmlinux` or `vmlinuz`, and `initramfs.cpio` (or `.cpio.gz`).
    pub guest_dir: PathBuf,
    /// Seconds from VMM start to a healthy agent before RunPodSandbox fails with
    /// DeadlineExceeded and the VM is torn down.
    pub boot_timeout_secs: u64,
    /// Seconds each call into the agent may take.
    pub agent_timeout_secs: u64,
    /// vCPUs of a pod without a CPU limit.
    pub default_vcpus: u32,
    /// Guest memory of a pod without a memory limit, MiB.
    pub default_memory_mib: u64,
    /// MiB added to a pod's memory limit for the guest kernel and agent.
    pub memory_overhead_mib: u64,
    /// Seconds StopPodSandbox waits for the guest to power off before killing the VMM.
    pub stop_timeout_secs: u64,
    /// Extra guest kernel command-line words.
    pub kernel_args: Vec<String>,
    /// The kernel the built-in VMM boots (relative paths are under `guest_dir`); when
    /// absent, `<guest_dir>/vmlinux-moat` if it exists, else the kernel QEMU boots.
    pub builtin_kernel: Option<PathBuf>,
    /// Bytes of a VM's serial console kept on disk: the first half of the output and a
    /// rotating tail of the newest (`moat_devices::console_log`); the rest is dropped and
    /// counted in a marker line.
    pub console_log_max_bytes: u64,
}

/// The on-demand kernel modules in the guest dir, and their name in the `layers` share.
pub const MODULES_DIR: &str = "modules";

/// The minimal kernel for the built-in VMM in the guest dir (guest-image/build-kernel.sh).
pub const BUILTIN_KERNEL_FILE: &str = "vmlinux-moat";

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            guest_dir: PathBuf::from("/usr/share/moat/guest"),
            boot_timeout_secs: 60,
            agent_timeout_secs: 10,
            default_vcpus: 1,
            default_memory_mib: 256,
            memory_overhead_mib: 64,
            stop_timeout_secs: 10,
            kernel_args: Vec::new(),
            builtin_kernel: None,
            console_log_max_bytes: moat_devices::console_log::DEFAULT_MAX_BYTES,
        }
    }
}

impl SandboxConfig {
    /// The guest kernel: the ELF `vmlinux` (PVH entry, boots about 0.3 s faster) if present,
    /// else the bzImage.
    pub fn kernel(&self) -> PathBuf {
        let elf = self.guest_dir.join("vmlinux");
        if elf.exists() {
            elf
        } else {
            self.guest_dir.join("vmlinuz")
        }
    }
    /// The kernel the built-in VMM boots: `builtin_kernel` if set, else the minimal
    /// `vmlinux-moat` when the guest dir has it, else the same kernel as QEMU.
    pub fn builtin_kernel(&self) -> PathBuf {
        if let Some(k) = &self.builtin_kernel {
            return self.guest_dir.join(k);
        }
        let minimal = self.guest_dir.join(BUILTIN_KERNEL_FILE);
        if minimal.exists() {
            minimal
        } else {
            self.kernel()
        }
    }
    /// The guest initramfs: the compressed one if present, else the plain cpio.
    /// The kernel modules loaded on demand (`<guest_dir>/modules`: the `.ko` files and their
    /// index), which reach the guest on its read-only `layers` share.
    pub fn modules(&self) -> PathBuf {
        self.guest_dir.join(MODULES_DIR)
    }

    /// The initramfs.
    pub fn initramfs(&self) -> PathBuf {
        let gz = self.guest_dir.join("initramfs.cpio.gz");
        if gz.exists() {
            gz
        } else {
            self.guest_dir.join("initramfs.cpio")
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root_dir: PathBuf::from("/var/lib/moat"),
            run_dir: PathBuf::from("/run/moat"),
            listen: None,
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
            cni: CniConfig::default(),
            images: ImagesConfig::default(),
            registries: BTreeMap::new(),
            sandbox: SandboxConfig::default(),
            qemu: Default::default(),
            streaming: StreamingConfig::default(),
            containers: Default::default(),
            confinement: Default::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `moat_host=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runtime-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The cgroup driver reported to kubelet by RuntimeConfig: `systemd` or `cgroupfs`.
    pub cgroup_driver: CgroupDriver,
    /// Runtime handlers (RuntimeClass handler names) and the VM backend each uses. The empty
    /// handler kubelet sends for the default runtime means `default_handler`.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// The handler used when a request names none.
    pub default_handler: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cgroup_driver: CgroupDriver::Systemd,
            handlers: BTreeMap::from([("moat".to_owned(), HandlerConfig::default())]),
            default_handler: "moat".into(),
        }
    }
}

/// One runtime handler.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerConfig {
    /// `auto` (the built-in VMM where hardware KVM exists, QEMU otherwise), `qemu` or `builtin`.
    pub backend: Backend,
    /// QEMU acceleration for this handler's pods (`kvm` or `tcg`), overriding `qemu.accel`.
    pub accel: Option<crate::hypervisor::Accel>,
}

/// The cgroup driver kubelet must use with this runtime.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// systemd manages the pod cgroups.
    Systemd,
    /// The cgroup filesystem is written directly.
    Cgroupfs,
}

/// Image pull settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Seconds to wait for a TCP connection to a registry.
    pub connect_timeout_secs: u64,
    /// Seconds a registry may stay silent while a manifest or blob is being read
    /// before the pull fails with DeadlineExceeded.
    pub read_timeout_secs: u64,
    /// Layers fetched at once within one pull.
    pub max_concurrent_downloads: usize,
    /// The platform picked from image indexes, as `os/architecture`.
    pub platform: String,
    /// Bytes a manifest or image index may have (containerd's limit: 4 MiB). A registry
    /// sending more is cut off, whether or not it gave a Content-Length.
    pub max_manifest_bytes: u64,
    /// Bytes one layer's decompressed tar stream may have (headers and padding included),
    /// so a small compressed layer cannot inflate without end.
    pub max_layer_unpacked_bytes: u64,
    /// Entries (files, directories, links, whiteouts...) one layer may have.
    pub max_layer_entries: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            read_timeout_secs: 30,
            max_concurrent_downloads: 3,
            platform: "linux/amd64".into(),
            max_manifest_bytes: 4 << 20,
            max_layer_unpacked_bytes: 16 << 30,
            max_layer_entries: 1_000_000,
        }
    }
}

impl ImagesConfig {
    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    /// The read timeout.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }
}

/// Settings for one registry host, in the spirit of containerd's hosts.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHostConfig {
    /// Mirror endpoints (`http://host:port` or `https://host`), tried in order before the
    /// registry itself.
    pub mirrors: Vec<String>,
    /// Reach the registry itself over plain HTTP. Registries on localhost and 127.0.0.1
    /// are always reached over plain HTTP.
    pub insecure: bool,
}

impl Config {
    /// Reads the file at `path`. A missing file at the default path gives the defaults;
    /// a missing file that was named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values (also after command-line flags changed them).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(l) = &self.listen {
            endpoint_path(l)?;
        }
        if self.images.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "images.max_concurrent_downloads must be at least 1".into(),
            ));
        }
        if self.images.read_timeout_secs == 0 || self.images.connect_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "images timeouts must be at least 1 second".into(),
            ));
        }
        if !self
            .runtime
            .handlers
            .contains_key(&self.runtime.default_handler)
        {
            return Err(ConfigError::Invalid(format!(
                "runtime.default_handler {:?} is not one of runtime.handlers",
                self.runtime.default_handler
            )));
        }
        if self.sandbox.boot_timeout_secs == 0 || self.sandbox.agent_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "sandbox timeouts must be at least 1 second".into(),
            ));
        }
        if self.images.platform.split('/').count() != 2 {
            return Err(ConfigError::Invalid(format!(
                "images.platform {:?} must look like \"linux/amd64\"",
                self.images.platform
            )));
        }
        for (host, reg) in &self.registries {
            for m in &reg.mirrors {
                if !(m.starts_with("http://") || m.starts_with("https://")) {
                    return Err(ConfigError::Invalid(format!(
                        "registries.\"{host}\".mirrors: {m:?} must start with http:// or https://"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The CRI socket path.
    pub fn socket_path(&self) -> PathBuf {
        match &self.listen {
            // `validate` refused what is not an endpoint.
            Some(l) => endpoint_path(l).unwrap_or_else(|_| l.clone()),
            None => self.run_dir.join("moat.sock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_paths_or_unix_urls() {
        let ok = |s: &str| endpoint_path(Path::new(s)).map_err(|e| e.to_string());
        assert_eq!(ok("/run/x.sock"), Ok(PathBuf::from("/run/x.sock")));
        assert_eq!(ok("run/x.sock"), Ok(PathBuf::from("run/x.sock")));
        assert_eq!(ok("unix:///run/x.sock"), Ok(PathBuf::from("/run/x.sock")));
        for bad in [
            "tcp://127.0.0.1:1",
            "unix://run/x.sock",
            "unix:/x.sock",
            "unix://",
            "",
        ] {
            let e = ok(bad).expect_err(bad);
            assert!(e.contains("listen"), "{bad}: {e}");
        }
        let c = Config::parse("listen = \"unix:///tmp/m.sock\"").expect("parse");
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/m.sock"));
        assert!(Config::parse("listen = \"http://x\"").is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").expect("parse");
        assert_eq!(c, Config::default());
        assert_eq!(c.socket_path(), PathBuf::from("/run/moat/moat.sock"));
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
            root_dir = "/tmp/r"
            run_dir = "/tmp/x"
            [log]
            format = "json"
            [runtime]
            cgroup_driver = "cgroupfs"
            [images]
            read_timeout_secs = 3
            [registries."docker.io"]
            mirrors = ["http://127.0.0.1:5001"]
            "#,
        )
        .expect("parse");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.runtime.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(
            c.registries["docker.io"].mirrors,
            vec!["http://127.0.0.1:5001"]
        );
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/x/moat.sock"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(matches!(
            Config::parse("rootdir = \"/x\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::parse("[registries.\"a\"]\nmirrors=[\"ftp://x\"]"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::parse("[images]\nmax_concurrent_downloads = 0"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn the_builtin_kernel_is_the_configured_then_the_minimal_then_the_common_one() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = SandboxConfig {
            guest_dir: d.path().to_owned(),
            ..Default::default()
        };
        assert_eq!(s.builtin_kernel(), s.kernel());
        std::fs::write(d.path().join("vmlinux-moat"), b"k").expect("write");
        assert_eq!(s.builtin_kernel(), d.path().join("vmlinux-moat"));
        s.builtin_kernel = Some("small/vmlinux".into());
        assert_eq!(s.builtin_kernel(), d.path().join("small/vmlinux"));
        s.builtin_kernel = Some("/opt/k".into());
        assert_eq!(s.builtin_kernel(), PathBuf::from("/opt/k"));
        let c = Config::parse("[sandbox]\nbuiltin_kernel = \"/opt/k\"").expect("parse");
        assert_eq!(c.sandbox.builtin_kernel, Some(PathBuf::from("/opt/k")));
    }

    #[test]
    fn console_log_cap_defaults_to_2_mib_and_can_be_set() {
        let c = Config::parse("[sandbox]\nboot_timeout_secs = 5").expect("parse");
        assert_eq!(c.sandbox.console_log_max_bytes, 2 << 20);
        let c = Config::parse("[sandbox]\nconsole_log_max_bytes = 65536").expect("parse");
        assert_eq!(c.sandbox.console_log_max_bytes, 65536);
        assert!(Config::parse("[sandbox]\nconsole_log_max_bytes = -1").is_err());
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_not() {
        let p = Path::new("/nonexistent/moat/config.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(matches!(
            Config::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
