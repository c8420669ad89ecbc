//! The hypervisor layer: /dev/kvm, the VM (memory slots, irqchip, PIT, irqfds, ioeventfds)
//! and its vCPUs' boot state. Small wrappers over `kvm-ioctls` whose errors name the step
//! that failed.

pub mod memory;
pub mod vcpu;
pub mod vm;

use kvm_ioctls::{Cap, Kvm};

pub use vm::Vm;

/// The KVM API version every modern kernel reports.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot work without, with the name the error reports.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Hlt, "KVM_CAP_HLT"),
];

/// A KVM failure, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm could not be opened.
    #[error(
        "opening /dev/kvm: {0} (is KVM enabled, the kvm module loaded, and may this user \
         open /dev/kvm?)"
    )]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("KVM API version {0}, expected {KVM_API_VERSION}: this kernel's KVM is not supported")]
    ApiVersion(i32),
    /// A capability the VMM needs is missing.
    #[error("this kernel's KVM lacks {0}, which the VMM needs; use a kernel whose KVM has it")]
    MissingCapability(&'static str),
    /// More vCPUs asked for than KVM allows.
    #[error("{asked} vCPUs asked for, but KVM allows at most {max}")]
    TooManyVcpus {
        /// Asked for.
        asked: usize,
        /// KVM's limit.
        max: usize,
    },
    /// An ioctl failed.
    #[error("KVM {what}: {source}")]
    Ioctl {
        /// The step (`KVM_CREATE_VM`, ...).
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("allocating {mib} MiB of guest memory: {source}")]
    Memory {
        /// The size asked for.
        mib: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Shorthand to wrap an ioctl error with its step.
pub(crate) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Opens /dev/kvm and checks the API version and the capabilities in `REQUIRED_CAPS`.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    check(&kvm)?;
    Ok(kvm)
}

/// Checks the API version and required capabilities of an open `kvm`.
pub fn check(kvm: &Kvm) -> Result<(), KvmError> {
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    missing_capability(|cap| kvm.check_extension(cap))
        .map_or(Ok(()), |name| Err(KvmError::MissingCapability(name)))
}

/// The first required capability `has` says is missing.
fn missing_capability(has: impl Fn(Cap) -> bool) -> Option<&'static str> {
    REQUIRED_CAPS
        .iter()
        .find(|(cap, _)| !has(*cap))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_missing_capability() {
        assert_eq!(missing_capability(|_| true), None);
        assert_eq!(
            missing_capability(|cap| cap != Cap::Irqfd),
            Some("KVM_CAP_IRQFD")
        );
        let e = KvmError::MissingCapability("KVM_CAP_IRQFD");
        assert!(e.to_string().contains("lacks KVM_CAP_IRQFD"));
    }

    #[test]
    fn opens_dev_kvm_when_present() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED: /dev/kvm is absent on this host");
            return;
        }
        let kvm = open().expect("open /dev/kvm");
        assert_eq!(kvm.get_api_version(), KVM_API_VERSION);
    }
}
