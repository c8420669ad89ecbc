//! Hypervisors: what boots a pod's micro-VM. A small surface (boot a VM from a spec, then
//! stop, kill or wait on it through the handle) so QEMU and Moat's own VMM are
//! interchangeable behind it.

pub mod builtin;
pub mod console;
pub mod process;
pub mod qemu;
pub mod select;
pub mod usage;

use std::path::PathBuf;

pub use process::VmProcess;

/// A way to run VMs. Boot returns the VMM process; stopping, killing and waiting go through
/// that process (and the guest agent's Shutdown), so the surface stays this small.
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    /// The backend's name (`qemu`, `builtin`).
    fn name(&self) -> &'static str;
    /// Whether the VMM serves the vsock and virtio-fs devices itself. When false, the caller
    /// starts a vhost-user backend process per device before `boot` (listening on the
    /// spec's `vsock_vhost_socket` and each share's `vhost_socket`).
    fn devices_in_process(&self) -> bool;
    /// Starts the VM described by `spec`.
    fn boot(&self, spec: &VmSpec) -> Result<VmProcess, HypervisorError>;
}

/// Everything a backend needs to boot one sandbox VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The sandbox id (names the VM in process lists and logs).
    pub id: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initramfs: PathBuf,
    /// Extra kernel command-line words.
    pub kernel_args: Vec<String>,
    /// The sandbox's run directory (sockets, logs, a VMM config file).
    pub run_dir: PathBuf,
    /// The hybrid-vsock Unix socket: the host connects and writes `CONNECT <port>\n`;
    /// guest connections to host port P arrive at `<vsock_uds>_P`.
    pub vsock_uds: PathBuf,
    /// The vhost-user socket of the vsock backend process (devices out of process only).
    pub vsock_vhost_socket: PathBuf,
    /// The guest's vsock CID.
    pub guest_cid: u64,
    /// virtio-fs devices.
    pub fs_shares: Vec<FsShare>,
    /// Where the guest console goes.
    pub console_log: PathBuf,
    /// Where the VMM's own stdout and stderr go.
    pub vmm_log: PathBuf,
    /// The pod's network device, if it has a network.
    pub net: Option<NetDevice>,
    /// Confine the VMM as this pod's (`confine`): QEMU only; the built-in VMM confines
    /// itself.
    pub jail: Option<crate::confine::PodJail>,
    /// The most the console log keeps on disk (half its head, half a rotating tail).
    pub console_log_max_bytes: u64,
}

/// One virtio-fs device: a host directory the guest mounts by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// The mount tag.
    pub tag: String,
    /// The host directory shared.
    pub shared_dir: PathBuf,
    /// Refuse every change to the share.
    pub read_only: bool,
    /// The vhost-user socket of its backend process (devices out of process only).
    pub vhost_socket: PathBuf,
}

/// A virtio-net device on a tap the pod's network namespace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The open tap (`/dev/net/tun`) descriptor; the caller keeps it open until `boot`
    /// returns, and the VMM gets its own copy.
    pub tap_fd: std::os::fd::RawFd,
    /// The guest NIC's MAC: the CNI interface's, so the pod IP's neighbours need not relearn.
    pub mac: String,
}

/// The descriptor number the tap has in the VMM process.
pub const VMM_TAP_FD: std::os::fd::RawFd = 3;

/// Why a VM could not be booted or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The VMM binary is missing or not runnable.
    #[error("cannot start {binary}: {source}; {fix}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
        /// What to do about it.
        fix: &'static str,
    },
    /// The backend cannot run a VM of this shape.
    #[error("the {backend} backend cannot run this VM: {reason}")]
    InvalidSpec {
        /// The backend's name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The guest image is missing.
    #[error("guest {what} {path} is missing; build it with guest-image/build.sh")]
    MissingImage {
        /// kernel or initramfs.
        what: &'static str,
        /// The path.
        path: String,
    },
    /// Process control failed.
    #[error("VMM process: {0}")]
    Process(#[from] std::io::Error),
    /// The VMM's confinement could not be planned.
    #[error("cannot confine the VMM: {0}; see docs/security.md (confinement.enabled)")]
    Confine(std::io::Error),
}

/// How to accelerate the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// What this host offers for running VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// /dev/kvm exists and can be opened.
    pub kvm_device: bool,
    /// The CPU advertises VT-x or AMD-V (so /dev/kvm runs ordinary guests at speed).
    pub hardware_virt: bool,
    /// The host TSC frequency in kHz, when known.
    pub tsc_khz: Option<u64>,
}

impl HostCaps {
    /// Reads /dev/kvm and /proc/cpuinfo.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kvm_device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        Self {
            kvm_device,
            hardware_virt: cpu_has_hw_virt(&cpuinfo),
            tsc_khz: tsc_khz(&cpuinfo),
        }
    }

    /// KVM when it can run an ordinary Linux guest, TCG otherwise.
    pub fn best_accel(&self) -> Accel {
        if self.kvm_device && self.hardware_virt {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// Whether cpuinfo flags include vmx or svm.
pub fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    hw_virt_flag(cpuinfo).is_some()
}

/// The hardware virtualization flag cpuinfo shows: `vmx` (Intel VT-x) or `svm` (AMD-V).
pub fn hw_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find_map(|f| match f {
            "vmx" => Some("vmx"),
            "svm" => Some("svm"),
            _ => None,
        })
}

/// The TSC frequency: the kernel's `tsc_freq_khz` where exposed, else cpuinfo's "cpu MHz".
pub fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let sysfs = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz").ok();
    if let Some(v) = sysfs.and_then(|s| s.trim().parse().ok()) {
        return Some(v);
    }
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_virt_and_tsc_from_cpuinfo() {
        let intel = "processor: 0\nflags\t\t: fpu vme vmx sse\ncpu MHz\t\t: 2445.432\n";
        let pvm = "processor: 0\nflags\t\t: fpu vme sse hypervisor\n";
        assert!(cpu_has_hw_virt(intel));
        assert!(!cpu_has_hw_virt(pvm));
        assert_eq!(hw_virt_flag(intel), Some("vmx"));
        assert_eq!(hw_virt_flag("flags\t: fpu svm\n"), Some("svm"));
        assert_eq!(hw_virt_flag(pvm), None);
        let caps = HostCaps {
            kvm_device: true,
            hardware_virt: false,
            tsc_khz: None,
        };
        assert_eq!(caps.best_accel(), Accel::Tcg);
        let caps = HostCaps {
            kvm_device: true,
            hardware_virt: true,
            tsc_khz: None,
        };
        assert_eq!(caps.best_accel(), Accel::Kvm);
        if !std::path::Path::new("/sys/devices/system/cpu/cpu0/tsc_freq_khz").exists() {
            assert_eq!(tsc_khz(intel), Some(2_445_432));
        }
    }
}
