//! The QEMU backend: Debian's qemu-system-x86_64 with `-M microvm`, KVM where the host has
//! hardware virtualization and TCG otherwise. Devices: the vsock backend over vhost-user,
//! the console on the 8250 serial port into a log file.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Accel, HostCaps, Hypervisor, HypervisorError, VmProcess, VmSpec};

/// QEMU settings from the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub binary: String,
    /// `kvm`, `tcg`, or absent for automatic (KVM with hardware virtualization, else TCG).
    pub accel: Option<Accel>,
    /// The TCG translation cache size in MiB (TCG only).
    pub tcg_tb_size_mib: u32,
    /// Whether a handler may run its guests in TCG (software emulation, no security
    /// boundary upstream); false refuses such pods with FailedPrecondition.
    pub allow_tcg: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: "qemu-system-x86_64".into(),
            accel: None,
            tcg_tb_size_mib: 64,
            allow_tcg: true,
        }
    }
}

/// Boots VMs with QEMU.
#[derive(Debug, Clone)]
pub struct Qemu {
    config: QemuConfig,
    caps: HostCaps,
}

impl Qemu {
    /// A backend for this host.
    pub fn new(config: QemuConfig, caps: HostCaps) -> Self {
        Self { config, caps }
    }

    /// The acceleration VMs get.
    pub fn accel(&self) -> Accel {
        self.config.accel.unwrap_or_else(|| self.caps.best_accel())
    }

    /// The full argument list for one VM, its console written to `spec.console_log`.
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        self.args_for(spec, None)
    }

    /// The full argument list for one VM; with `console_fd`, the console goes to that
    /// (inherited) descriptor instead of a file QEMU opens.
    fn args_for(&self, spec: &VmSpec, console_fd: Option<i32>) -> Vec<String> {
        let accel = self.accel();
        let mem = format!("{}M", spec.memory_mib);
        let mut cmdline = vec![
            "console=ttyS0".to_owned(),
            "quiet".into(),
            "panic=-1".into(),
            "reboot=t".into(),
            "rdinit=/init".into(),
            "cryptomgr.notests".into(),
            "8250.nr_uarts=1".into(),
        ];
        if accel == Accel::Tcg {
            // microvm has no PIT, HPET or PM timer: without this TCG guests hang calibrating.
            if let Some(khz) = self.caps.tsc_khz {
                cmdline.push(format!("tsc_early_khz={khz}"));
            }
        }
        cmdline.extend(spec.kernel_args.iter().cloned());
        let console_fdset = console_fd.map(|fd| format!("fd={fd},set={CONSOLE_FDSET}"));
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("moat-{}", spec.id),
            "-M".into(),
            format!("microvm,pit=off,pic=off,rtc=on,isa-serial=on"),
            "-accel".into(),
            match accel {
                Accel::Kvm => "kvm".into(),
                // The TCG translation cache: QEMU reserves 1 GiB by default and a guest that
                // boots and idles fills a fraction of it; a bound keeps idle pods small.
                Accel::Tcg => format!("tcg,tb-size={}", self.config.tcg_tb_size_mib),
            },
            "-cpu".into(),
            if accel == Accel::Kvm {
                "host".into()
            } else {
                "max".into()
            },
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            mem.clone(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-machine".into(),
            "memory-backend=mem".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-global".into(),
            "virtio-mmio.force-legacy=false".into(),
            "-serial".into(),
            match console_fd {
                // QEMU opens `/dev/fdset/N` as a dup of the descriptor `-add-fd` put there;
                // `append` because it would truncate the file otherwise, and a pipe cannot be.
                Some(_) => "chardev:console".into(),
                None => format!("file:{}", spec.console_log.display()),
            },
            "-chardev".into(),
            format!(
                "socket,id=vsock0,path={}",
                spec.vsock_vhost_socket.display()
            ),
            // The CID is no device property: the backend reports it in the config space.
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
        ];
        for (i, share) in spec.fs_shares.iter().enumerate() {
            a.push("-chardev".into());
            a.push(format!(
                "socket,id=fs{i},path={}",
                share.vhost_socket.display()
            ));
            a.push("-device".into());
            a.push(format!(
                "vhost-user-fs-device,chardev=fs{i},tag={}",
                share.tag
            ));
        }
        if let Some(net) = &spec.net {
            a.push("-netdev".into());
            a.push(format!("tap,id=net0,fd={}", super::VMM_TAP_FD));
            a.push("-device".into());
            a.push(format!("virtio-net-device,netdev=net0,mac={}", net.mac));
        }
        if let Some(fdset) = console_fdset {
            a.push("-add-fd".into());
            a.push(fdset);
            a.push("-chardev".into());
            a.push(format!(
                "file,id=console,path=/dev/fdset/{CONSOLE_FDSET},append=on"
            ));
        }
        a.extend([
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initramfs.display().to_string(),
            "-append".into(),
            cmdline.join(" "),
        ]);
        a.shrink_to_fit();
        a
    }

    /// Starts the VM.
    pub fn start(&self, spec: &VmSpec) -> Result<VmProcess, HypervisorError> {
        for (what, p) in [("kernel", &spec.kernel), ("initramfs", &spec.initramfs)] {
            if !p.is_file() {
                return Err(HypervisorError::MissingImage {
                    what,
                    path: p.display().to_string(),
                });
            }
        }
        // The console goes through a pipe into a capped log moatd writes (`console`).
        let (console_read, console_write) = super::console::console_pipe()?;
        let mut cmd = match &spec.jail {
            Some(jail) => self.confined(spec, jail)?,
            None => {
                let mut cmd = Command::new(&self.config.binary);
                cmd.args(self.args_for(spec, Some(CONSOLE_FD)));
                cmd
            }
        };
        if let Some(net) = &spec.net {
            super::process::pass_fd(&mut cmd, net.tap_fd, super::VMM_TAP_FD);
        }
        super::process::pass_fd(&mut cmd, console_write.as_raw_fd(), CONSOLE_FD);
        let caps = moat_devices::console_log::CapConfig::split(spec.console_log_max_bytes);
        super::console::spawn_console_pump(console_read, &spec.console_log, caps)?;
        let vm = VmProcess::spawn(cmd, &spec.vmm_log).map_err(|source| HypervisorError::Spawn {
            binary: self.config.binary.clone(),
            source,
            fix: "install it (Debian: qemu-system-x86) or set qemu.binary in the config",
        });
        // QEMU has its copy now: the pump sees the end of the file when QEMU exits.
        drop(console_write);
        vm
    }
}

/// The descriptor QEMU gets the console pipe's write end on (the tap is 3).
const CONSOLE_FD: i32 = 4;
/// The `-add-fd` set that holds it.
const CONSOLE_FDSET: u32 = 1;

/// QEMU's own seccomp filter, on top of the jail's: no obsolete syscalls, no privilege
/// changes, no new processes or programs, no scheduler or affinity changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// `binary` if it is a path, else where `$PATH` finds it.
fn resolve(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return std::fs::canonicalize(binary).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

impl Qemu {
    /// The command that runs QEMU confined as the pod's (see `confine::plan`): the images
    /// by their canonical paths (those are what the jail binds), and QEMU's `-sandbox`.
    fn confined(
        &self,
        spec: &VmSpec,
        jail: &crate::confine::PodJail,
    ) -> Result<Command, HypervisorError> {
        let binary = resolve(&self.config.binary).ok_or_else(|| HypervisorError::Spawn {
            binary: self.config.binary.clone(),
            source: std::io::ErrorKind::NotFound.into(),
            fix: "install it (Debian: qemu-system-x86) or set qemu.binary in the config",
        })?;
        let mut spec = spec.clone();
        spec.kernel = std::fs::canonicalize(&spec.kernel)?;
        spec.initramfs = std::fs::canonicalize(&spec.initramfs)?;
        let mut socket_dirs: Vec<PathBuf> = std::iter::once(&spec.vsock_vhost_socket)
            .chain(spec.fs_shares.iter().map(|s| &s.vhost_socket))
            .filter_map(|s| s.parent().map(Path::to_path_buf))
            .collect();
        socket_dirs.sort();
        socket_dirs.dedup();
        let needs = crate::confine::plan::QemuNeeds {
            binary: binary.clone(),
            images: vec![spec.kernel.clone(), spec.initramfs.clone()],
            socket_dirs,
            kvm: self.accel() == Accel::Kvm,
        };
        let jail_spec = jail
            .qemu(&needs, &spec.vmm_log)
            .map_err(HypervisorError::Confine)?;
        let mut args = self.args_for(&spec, Some(CONSOLE_FD));
        args.extend(["-sandbox".into(), SANDBOX.into()]);
        crate::confine::wrap(&jail_spec, binary, args.into_iter().map(Into::into))
            .map_err(HypervisorError::Confine)
    }
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }
    fn devices_in_process(&self) -> bool {
        false
    }
    fn boot(&self, spec: &VmSpec) -> Result<VmProcess, HypervisorError> {
        self.start(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::FsShare;

    fn spec() -> VmSpec {
        VmSpec {
            id: "abc".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: PathBuf::from("/k"),
            initramfs: PathBuf::from("/i"),
            kernel_args: vec!["moat.debug".into()],
            run_dir: PathBuf::from("/run"),
            vsock_uds: PathBuf::from("/run/vsock"),
            vsock_vhost_socket: PathBuf::from("/run/v.sock"),
            guest_cid: 3,
            fs_shares: vec![FsShare {
                tag: "layers".into(),
                shared_dir: PathBuf::from("/run/layers"),
                read_only: true,
                vhost_socket: PathBuf::from("/run/fs.sock"),
            }],
            console_log: PathBuf::from("/run/console.log"),
            vmm_log: PathBuf::from("/run/vmm.log"),
            net: None,
            jail: None,
            console_log_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_pod_network_is_a_virtio_net_device_on_the_passed_tap() {
        let q = Qemu::new(
            QemuConfig::default(),
            HostCaps {
                kvm_device: false,
                hardware_virt: false,
                tsc_khz: None,
            },
        );
        let mut s = spec();
        assert!(
            !q.args(&s).join(" ").contains("netdev"),
            "no network, no NIC"
        );
        s.net = Some(crate::hypervisor::NetDevice {
            tap_fd: 17,
            mac: "0a:58:0a:f4:00:05".into(),
        });
        let a = q.args(&s).join(" ");
        assert!(
            a.contains("-netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=0a:58:0a:f4:00:05"),
            "{a}"
        );
    }

    #[test]
    fn tcg_command_line_has_the_microvm_essentials() {
        let q = Qemu::new(
            QemuConfig::default(),
            HostCaps {
                kvm_device: true,
                hardware_virt: false,
                tsc_khz: Some(2_000_000),
            },
        );
        assert_eq!(q.accel(), Accel::Tcg);
        let a = q.args(&spec()).join(" ");
        assert!(a.contains("-accel tcg,tb-size=64"), "{a}");
        assert!(
            a.contains("memory-backend-memfd,id=mem,size=512M,share=on"),
            "{a}"
        );
        assert!(a.contains("virtio-mmio.force-legacy=false"), "{a}");
        assert!(a.contains("vhost-user-vsock-device,chardev=vsock0 "), "{a}");
        assert!(a.contains("tsc_early_khz=2000000"), "{a}");
        assert!(a.contains("moat.debug"), "{a}");
        assert!(a.contains("-smp 2"), "{a}");
        assert!(a.contains("socket,id=fs0,path=/run/fs.sock -device vhost-user-fs-device,chardev=fs0,tag=layers"), "{a}");
    }

    #[test]
    fn kvm_is_used_with_hardware_virtualization_and_can_be_forced_off() {
        let caps = HostCaps {
            kvm_device: true,
            hardware_virt: true,
            tsc_khz: Some(1),
        };
        let q = Qemu::new(QemuConfig::default(), caps.clone());
        assert_eq!(q.accel(), Accel::Kvm);
        assert!(!q.args(&spec()).join(" ").contains("tsc_early_khz"));
        let q = Qemu::new(
            QemuConfig {
                accel: Some(Accel::Tcg),
                ..Default::default()
            },
            caps,
        );
        assert_eq!(q.accel(), Accel::Tcg);
    }

    #[test]
    fn missing_images_are_reported() {
        let q = Qemu::new(
            QemuConfig::default(),
            HostCaps {
                kvm_device: false,
                hardware_virt: false,
                tsc_khz: None,
            },
        );
        assert!(matches!(
            q.start(&spec()),
            Err(HypervisorError::MissingImage { what: "kernel", .. })
        ));
    }
}
