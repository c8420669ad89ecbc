//! Hypervisors: what boots a pod's micro-VM. A small surface (boot a VM from a spec, then
//! stop, kill or wait on it through the handle) so QEMU and Moat's own VMM are
//! interchangeable behind it.

pub mod process;
pub mod qemu;

use std::path::PathBuf;

pub use process::VmProcess;

/// A way to run VMs. Boot returns the VMM process; stopping, killing and waiting go through
/// that process (and the guest agent's Shutdown), so the surface stays this small.
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    /// The backend's name (`qemu`, `builtin`).
    fn name(&self) -> &'static str;
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
    /// The vhost-user socket of the sandbox's vsock backend.
    pub vsock_socket: PathBuf,
    /// The guest's vsock CID.
    pub guest_cid: u64,
    /// virtio-fs devices: (tag, vhost-user socket of its backend).
    pub fs_shares: Vec<(String, PathBuf)>,
    /// Where the guest console goes.
    pub console_log: PathBuf,
    /// Where the VMM's own stdout and stderr go.
    pub vmm_log: PathBuf,
    /// The pod's network device, if it has a network.
    pub net: Option<NetDevice>,
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
    #[error(
        "cannot start {binary}: {source}; install it (Debian: qemu-system-x86) or set its path in the config"
    )]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
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
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
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
