//! The built-in backend: Moat's own VMM (crate `moat-vmm`), one `moatd vmm --config <file>`
//! process per VM. Its devices (vsock on the hybrid-vsock socket, virtio-fs, virtio-net)
//! run inside that process, so no vhost-user backends are started for it. KVM only.

use std::path::{Path, PathBuf};
use std::process::Command;

use moat_vmm::VmmConfig;
use moat_vmm::config::{FsConfig, JailConfig, NetConfig, VsockConfig};

use super::{Hypervisor, HypervisorError, VmProcess, VmSpec};

/// The kernel command line the built-in VMM's guests start with, before the spec's own
/// words. The VMM adds its virtio-mmio device words itself. `reboot=k`: a guest reboot
/// goes through the i8042 reset line, which the VMM takes as the end of the VM; no PCI,
/// one UART, no mouse or keyboard probing; the TSC is the clocksource (KVM keeps it stable).
pub const BASE_CMDLINE: &[&str] = &[
    "console=ttyS0",
    "quiet",
    "reboot=k",
    "panic=-1",
    "rdinit=/init",
    "cryptomgr.notests",
    "8250.nr_uarts=1",
    "pci=off",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.dumbkbd",
    "tsc=reliable",
];

/// The name of the VMM config file in the sandbox's run directory.
pub const CONFIG_FILE: &str = "vmm.json";

/// The VMM's control socket (status, pause, resume, shutdown), under the run directory,
/// in a folder of its own (a confined VMM gets that folder, not the run directory).
pub const API_SOCKET: &str = "api/api.sock";

/// The empty directory an unconfined VMM makes its root once the VM is built (its own
/// mount namespace holding only its sockets' folders and the shares; see
/// `moat_vmm::jail`). A confined VMM's jail is `confine::PodJail`'s.
pub const JAIL_DIR: &str = "jail";

/// Boots VMs with `moatd vmm`.
#[derive(Debug, Clone, Default)]
pub struct Builtin {
    /// The moatd binary to run; the running one when `None`.
    binary: Option<PathBuf>,
}

impl Builtin {
    /// A backend that runs this moatd binary's `vmm` subcommand.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that runs `binary vmm --config <file>` (tests, benchmarks).
    pub fn with_binary(binary: PathBuf) -> Self {
        Self {
            binary: Some(binary),
        }
    }

    /// The kernel command line for one VM.
    pub fn cmdline(spec: &VmSpec) -> String {
        BASE_CMDLINE
            .iter()
            .map(|w| (*w).to_owned())
            .chain(spec.kernel_args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The VMM's config for one VM, checked as the VMM will check it.
    pub fn vmm_config(spec: &VmSpec) -> Result<VmmConfig, HypervisorError> {
        let invalid = |reason: String| HypervisorError::InvalidSpec {
            backend: "builtin",
            reason,
        };
        let vcpus = u8::try_from(spec.vcpus)
            .map_err(|_| invalid(format!("{} vCPUs is more than it supports", spec.vcpus)))?;
        let config = VmmConfig {
            id: spec.id.clone(),
            vcpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.clone(),
            initramfs: Some(spec.initramfs.clone()),
            cmdline: Self::cmdline(spec),
            console_log: spec.console_log.clone(),
            console_log_max_bytes: spec.console_log_max_bytes,
            api_socket: Some(spec.run_dir.join(API_SOCKET)),
            vsock: Some(VsockConfig {
                guest_cid: spec.guest_cid,
                uds_path: spec.vsock_uds.clone(),
            }),
            fs: spec
                .fs_shares
                .iter()
                .map(|s| FsConfig {
                    tag: s.tag.clone(),
                    shared_dir: s.shared_dir.clone(),
                    read_only: s.read_only,
                })
                .collect(),
            net: spec.net.as_ref().map(|n| NetConfig {
                tap_fd: super::VMM_TAP_FD,
                mac: n.mac.clone(),
            }),
            // Always confined: its own mount namespace, only the capabilities the shares
            // need, and the seccomp allowlist before the guest runs.
            jail: Some(JailConfig {
                root: spec.run_dir.join(JAIL_DIR),
                seccomp: true,
                mount_namespace: true,
            }),
        };
        config.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }

    /// Where the VMM config of `spec`'s VM is written.
    pub fn config_path(spec: &VmSpec) -> PathBuf {
        spec.run_dir.join(CONFIG_FILE)
    }

    /// Writes the config file and starts the VMM process: confined by `moatd jail` when
    /// the spec has a jail (it then keeps to its jail's root and confines itself no
    /// further than capabilities and its seccomp filter), otherwise in a mount namespace of
    /// its own that it makes itself.
    pub fn start(&self, spec: &VmSpec) -> Result<VmProcess, HypervisorError> {
        for (what, p) in [("kernel", &spec.kernel), ("initramfs", &spec.initramfs)] {
            if !p.is_file() {
                return Err(HypervisorError::MissingImage {
                    what,
                    path: p.display().to_string(),
                });
            }
        }
        let mut config = Self::vmm_config(spec)?;
        if let Some(dir) = config.api_socket.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(dir)?;
        }
        let path = Self::config_path(spec);
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => crate::confine::plan::moatd_binary()?,
        };
        let mut cmd = match &spec.jail {
            Some(jail) => {
                let jail_spec = confined(&mut config, spec, jail, &path, &binary)?;
                write_config(&path, &config)?;
                let args = ["vmm".into(), "--config".into(), path.clone().into()];
                crate::confine::wrap_as(&binary, &jail_spec, &binary, args)
                    .map_err(HypervisorError::Confine)?
            }
            None => {
                if let Some(jail) = &config.jail {
                    std::fs::create_dir_all(&jail.root)?;
                }
                write_config(&path, &config)?;
                let mut cmd = Command::new(&binary);
                cmd.arg("vmm").arg("--config").arg(&path);
                cmd
            }
        };
        if let Some(net) = &spec.net {
            super::process::pass_fd(&mut cmd, net.tap_fd, super::VMM_TAP_FD);
        }
        VmProcess::spawn(cmd, &spec.vmm_log).map_err(|source| HypervisorError::Spawn {
            binary: binary.display().to_string(),
            source,
            fix: "the built-in VMM runs as `moatd vmm`: reinstall moatd",
        })
    }
}

/// `path` with its folder's symlinks resolved (the jail binds canonical paths).
fn canonical_in_dir(path: &Path) -> std::io::Result<PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok(std::fs::canonicalize(dir)?.join(name)),
        _ => Err(std::io::Error::other(format!(
            "{}: not a file in a folder",
            path.display()
        ))),
    }
}

/// Turns `config` into the config of a VMM run by `moatd jail` (canonical paths, which
/// is what the jail binds; no mount namespace of its own) and returns its jail: what
/// `VmmNeeds` lists, the config file `config_path` included.
fn confined(
    config: &mut VmmConfig,
    spec: &VmSpec,
    jail: &crate::confine::PodJail,
    config_path: &Path,
    moatd: &Path,
) -> Result<crate::confine::JailSpec, HypervisorError> {
    config.kernel = std::fs::canonicalize(&config.kernel)?;
    config.initramfs = config
        .initramfs
        .as_deref()
        .map(std::fs::canonicalize)
        .transpose()?;
    // The console log and its tail segments exist before the jail binds them.
    let [older, newer] = moat_devices::console_log::segment_paths(&config.console_log)?;
    let mut files = Vec::new();
    for f in [&config.console_log, &older, &newer] {
        std::fs::File::create(f)?;
        files.push(std::fs::canonicalize(f)?);
    }
    config.console_log = files[0].clone();
    let mut socket_dirs = Vec::new();
    if let Some(v) = config.vsock.as_mut() {
        v.uds_path = canonical_in_dir(&v.uds_path)?;
        socket_dirs.extend(v.uds_path.parent().map(Path::to_path_buf));
    }
    if let Some(api) = config.api_socket.as_mut() {
        *api = canonical_in_dir(api)?;
        socket_dirs.extend(api.parent().map(Path::to_path_buf));
    }
    socket_dirs.sort();
    socket_dirs.dedup();
    let mut shares = Vec::new();
    for fs in &mut config.fs {
        fs.shared_dir = std::fs::canonicalize(&fs.shared_dir)?;
        shares.push((fs.shared_dir.clone(), fs.read_only));
    }
    // The config file is written by the caller once this returns: it must exist to be
    // bound.
    std::fs::File::create(config_path)?;
    let mut images = vec![config.kernel.clone(), std::fs::canonicalize(config_path)?];
    images.extend(config.initramfs.clone());
    let needs = crate::confine::plan::VmmNeeds {
        program: std::fs::canonicalize(moatd)?,
        images,
        files,
        socket_dirs,
        shares,
    };
    let jail_spec = jail
        .vmm(&needs, &spec.vmm_log)
        .map_err(HypervisorError::Confine)?;
    config.jail = Some(JailConfig {
        root: jail_spec.root.clone(),
        seccomp: true,
        mount_namespace: false,
    });
    Ok(jail_spec)
}

fn write_config(path: &Path, config: &VmmConfig) -> Result<(), HypervisorError> {
    let json = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    std::fs::write(path, json)?;
    Ok(())
}

impl Hypervisor for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }
    fn devices_in_process(&self) -> bool {
        true
    }
    fn boot(&self, spec: &VmSpec) -> Result<VmProcess, HypervisorError> {
        self.start(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{FsShare, NetDevice};
    use std::time::Duration;

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            id: "abc".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
            kernel_args: vec!["moat.debug".into()],
            run_dir: dir.to_owned(),
            vsock_uds: dir.join("vsock"),
            vsock_vhost_socket: dir.join("v.sock"),
            guest_cid: 3,
            fs_shares: vec![
                FsShare {
                    tag: "layers".into(),
                    shared_dir: dir.join("layers"),
                    read_only: true,
                    vhost_socket: dir.join("fs.sock"),
                },
                FsShare {
                    tag: "volumes".into(),
                    shared_dir: dir.join("volumes"),
                    read_only: false,
                    vhost_socket: dir.join("fsv.sock"),
                },
            ],
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            net: None,
            jail: None,
            console_log_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_vmm_config_carries_the_in_process_devices() {
        let dir = Path::new("/run/moat/vm/abc");
        let mut s = spec(dir);
        s.net = Some(NetDevice {
            tap_fd: 17,
            mac: "0a:58:0a:f4:00:05".into(),
        });
        let c = Builtin::vmm_config(&s).expect("valid");
        assert_eq!(c.vcpus, 2);
        assert_eq!(
            c.initramfs.as_deref(),
            Some(dir.join("initramfs.cpio").as_path())
        );
        let vsock = c.vsock.expect("vsock");
        assert_eq!((vsock.guest_cid, vsock.uds_path), (3, dir.join("vsock")));
        let fs: Vec<_> =
            c.fs.iter()
                .map(|f| (f.tag.as_str(), f.shared_dir.clone(), f.read_only))
                .collect();
        assert_eq!(
            fs,
            vec![
                ("layers", dir.join("layers"), true),
                ("volumes", dir.join("volumes"), false)
            ]
        );
        let net = c.net.expect("net");
        assert_eq!(
            net.tap_fd,
            crate::hypervisor::VMM_TAP_FD,
            "the fd it has in the VMM"
        );
        assert_eq!(net.mac, "0a:58:0a:f4:00:05");
        assert!(
            c.cmdline
                .starts_with("console=ttyS0 quiet reboot=k panic=-1 rdinit=/init"),
            "{}",
            c.cmdline
        );
        assert!(c.cmdline.contains(" pci=off "), "{}", c.cmdline);
        assert!(
            c.cmdline.ends_with("tsc=reliable moat.debug"),
            "{}",
            c.cmdline
        );
        assert_eq!(Builtin::config_path(&s), dir.join("vmm.json"));
        assert_eq!(c.api_socket, Some(dir.join("api/api.sock")));
        let jail = c.jail.expect("always confined");
        assert_eq!(jail.root, dir.join("jail"));
        assert!(jail.seccomp, "the seccomp allowlist is on");
    }

    #[test]
    fn shapes_the_vmm_refuses_are_refused_before_it_starts() {
        let mut s = spec(Path::new("/x"));
        s.vcpus = 300;
        assert!(matches!(
            Builtin::vmm_config(&s),
            Err(HypervisorError::InvalidSpec { .. })
        ));
        let mut s = spec(Path::new("/x"));
        s.memory_mib = 16;
        let e = Builtin::vmm_config(&s).expect_err("too little memory");
        assert!(e.to_string().contains("memory_mib"), "{e}");
    }

    #[tokio::test]
    async fn boot_writes_the_config_and_runs_moatd_vmm() {
        let d = tempfile::tempdir().expect("tmp");
        let s = spec(d.path());
        let b = Builtin::with_binary(PathBuf::from("/bin/echo"));
        assert!(matches!(
            b.boot(&s),
            Err(HypervisorError::MissingImage { what: "kernel", .. })
        ));
        std::fs::write(&s.kernel, b"k").expect("kernel");
        std::fs::write(&s.initramfs, b"i").expect("initramfs");
        let p = b.boot(&s).expect("boot");
        assert!(p.wait_timeout(Duration::from_secs(10)).await, "echo exits");
        assert!(
            d.path().join(JAIL_DIR).is_dir(),
            "the jail root exists before the VMM starts"
        );
        let written = VmmConfig::load(&d.path().join(CONFIG_FILE)).expect("config file");
        assert_eq!(written, Builtin::vmm_config(&s).expect("config"));
        let log = std::fs::read_to_string(&s.vmm_log).expect("vmm log");
        assert_eq!(
            log.trim(),
            format!("vmm --config {}", d.path().join(CONFIG_FILE).display())
        );
        assert!(b.devices_in_process());
        assert_eq!(b.name(), "builtin");
    }
}
