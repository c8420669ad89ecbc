//! What moatd asks the VMM for: one JSON document per VM (`moatd vmm --config <file>`).

use std::path::{Path, PathBuf};

use moat_devices::console_log::CapConfig;
use serde::{Deserialize, Serialize};

/// The console log's default cap, head and tail together (2 MiB).
pub const DEFAULT_CONSOLE_LOG_MAX_BYTES: u64 = moat_devices::console_log::DEFAULT_MAX_BYTES;

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// The sandbox id (logs, thread names).
    pub id: String,
    /// Virtual CPUs (1..=32).
    pub vcpus: u8,
    /// Guest memory in MiB (at least 64).
    pub memory_mib: u64,
    /// The guest kernel: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// The kernel command line, without the virtio-mmio device words the VMM adds.
    pub cmdline: String,
    /// Where the guest's serial console output goes: emptied at start, then capped to a
    /// head and a rotating tail in `<console_log>.1` and `.2` (`console_log_caps`;
    /// `moat_devices::console_log`).
    pub console_log: PathBuf,
    /// Bytes of console output kept on disk: the first half of the output and a rotating
    /// tail of the newest (`DEFAULT_CONSOLE_LOG_MAX_BYTES` when absent).
    #[serde(default = "default_console_log_max_bytes")]
    pub console_log_max_bytes: u64,
    /// The control socket (status, pause, resume, shutdown).
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// The virtio-vsock device, if any.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// The virtio-net device, if any.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Confinement; none when absent (tests run unconfined).
    #[serde(default)]
    pub jail: Option<JailConfig>,
}

/// virtio-vsock with a hybrid-vsock host side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest CID (3 or more).
    pub guest_cid: u64,
    /// The hybrid-vsock Unix socket (host connects and writes `CONNECT <port>\n`).
    pub uds_path: PathBuf,
}

/// One virtio-fs share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag the guest uses.
    pub tag: String,
    /// The host directory shared.
    pub shared_dir: PathBuf,
    /// Refuse every change (EROFS).
    #[serde(default)]
    pub read_only: bool,
}

/// virtio-net on an open tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap's descriptor number in the VMM process (inherited, opened with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
    pub tap_fd: i32,
    /// The guest NIC's MAC (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
}

/// How the VMM process confines itself once the VM is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The directory that becomes the process's root (in its own mount namespace). Every
    /// path the VMM still needs after confinement (sockets it creates later) must be under
    /// it.
    pub root: PathBuf,
    /// Install the seccomp filter.
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Make its own mount namespace and root on `root`. False when the VMM already runs
    /// confined in a minimal root of its own (`moatd jail`): it then only drops
    /// capabilities, sets no_new_privs and installs the filter.
    #[serde(default = "yes")]
    pub mount_namespace: bool,
}

fn yes() -> bool {
    true
}

fn default_console_log_max_bytes() -> u64 {
    DEFAULT_CONSOLE_LOG_MAX_BYTES
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("reading VMM config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid JSON for a `VmmConfig`.
    #[error("VMM config {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A value out of range.
    #[error("VMM config: {0}")]
    Invalid(String),
}

impl VmmConfig {
    /// What the console log keeps: `console_log_max_bytes`, half head and half tail.
    pub fn console_log_caps(&self) -> CapConfig {
        CapConfig::split(self.console_log_max_bytes)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<VmmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: VmmConfig =
            serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values a VM cannot be built from.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=32).contains(&self.vcpus) {
            return bad(format!("vcpus {} is not in 1..=32", self.vcpus));
        }
        if self.memory_mib < 64 || self.memory_mib > 1 << 20 {
            return bad(format!(
                "memory_mib {} is not in 64..=1048576",
                self.memory_mib
            ));
        }
        if let Some(v) = &self.vsock
            && !(3..u64::from(u32::MAX)).contains(&v.guest_cid)
        {
            return bad(format!("vsock guest_cid {} is reserved", v.guest_cid));
        }
        for fs in &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > 36 {
                return bad(format!("virtio-fs tag {:?} must be 1 to 36 bytes", fs.tag));
            }
        }
        if let Some(n) = &self.net
            && parse_mac(&n.mac).is_none()
        {
            return bad(format!("net mac {:?} is not aa:bb:cc:dd:ee:ff", n.mac));
        }
        Ok(())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        // Two hex digits exactly (from_str_radix alone would take a sign: "+0").
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> VmmConfig {
        VmmConfig {
            id: "p1".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel: "/k".into(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
            console_log: "/tmp/console.log".into(),
            console_log_max_bytes: 4096,
            api_socket: None,
            vsock: None,
            fs: vec![],
            net: None,
            jail: None,
        }
    }

    #[test]
    fn round_trips_and_checks_ranges() {
        let c = minimal();
        let json = serde_json::to_string(&c).expect("json");
        let back: VmmConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, c);
        back.validate().expect("valid");

        let mut c = minimal();
        c.vcpus = 0;
        assert!(c.validate().is_err());
        let mut c = minimal();
        c.memory_mib = 16;
        assert!(c.validate().is_err());
        let mut c = minimal();
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/x".into(),
        });
        assert!(
            c.validate()
                .expect_err("cid 2 is reserved")
                .to_string()
                .contains("guest_cid 2")
        );
        let mut c = minimal();
        c.net = Some(NetConfig {
            tap_fd: 3,
            mac: "aa:bb".into(),
        });
        assert!(c.validate().is_err());
        assert!(serde_json::from_str::<VmmConfig>(r#"{"id":"x","bogus":1}"#).is_err());
    }

    #[test]
    fn console_log_cap_defaults_when_absent() {
        let mut json = serde_json::to_value(minimal()).expect("json");
        json.as_object_mut()
            .expect("object")
            .remove("console_log_max_bytes");
        let c: VmmConfig = serde_json::from_value(json).expect("a config without the cap");
        assert_eq!(c.console_log_max_bytes, DEFAULT_CONSOLE_LOG_MAX_BYTES);
        assert_eq!(
            minimal().console_log_caps(),
            CapConfig {
                head_bytes: 2048,
                tail_bytes: 2048
            }
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
        assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
        // The fuzzer's find: a sign is not a hex digit.
        assert_eq!(parse_mac("02:00:00:02:00:+0"), None);
    }
}
