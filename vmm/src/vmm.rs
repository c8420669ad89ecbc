//! Builds the VM from a `VmmConfig`, runs it, and reports how it ended.

use std::path::PathBuf;

use crate::arch::x86_64::mptable::MpTableError;
use crate::boot::BootError;
use crate::config::{ConfigError, VmmConfig};
use crate::devices::bus::BusError;
use crate::kvm::KvmError;

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered off or reset (agent shutdown: `reboot=k` i8042 reset, or a triple
    /// fault with `reboot=t`).
    GuestShutdown,
    /// The control API asked for a shutdown.
    ApiShutdown,
    /// SIGTERM or SIGINT (moatd stopping a VMM that did not end on its own).
    Signalled,
    /// The guest crashed (a KVM internal error or an unhandled exit); see the VMM log.
    Crashed,
}

impl Exit {
    /// The process exit status for this end: 0 for the clean ends, 1 for a crash.
    pub fn code(self) -> u8 {
        match self {
            Exit::GuestShutdown | Exit::ApiShutdown | Exit::Signalled => 0,
            Exit::Crashed => 1,
        }
    }
}

/// Why the VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM refused something.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The kernel, initramfs or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// Boot structures could not be written to guest memory.
    #[error("writing {what} to guest memory: {source}")]
    GuestMemory {
        /// What.
        what: &'static str,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// Several vCPUs without an in-kernel irqchip (nothing could start them).
    #[error(
        "KVM refused the in-kernel irqchip, so only one vCPU can run; ask for vcpus = 1 \
         or use a kernel whose KVM supports KVM_CREATE_IRQCHIP"
    )]
    NoIrqchipSmp,
    /// The console log could not be opened.
    #[error("opening the console log {}: {source}", path.display())]
    ConsoleLog {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("creating an eventfd for {what}: {source}")]
    EventFd {
        /// For what.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Two devices claim the same addresses (a VMM bug).
    #[error("placing device {what}: {source}")]
    Bus {
        /// Which device.
        what: String,
        /// Why.
        source: BusError,
    },
    /// A virtio device could not be created or attached.
    #[error("virtio device {what}: {why}")]
    Virtio {
        /// Which device.
        what: String,
        /// Why.
        why: String,
    },
    /// More virtio devices than free IRQs.
    #[error("too many virtio devices: at most {0} fit on the IOAPIC")]
    TooManyDevices(u32),
    /// The kick signal handler could not be installed.
    #[error("setting up signal handling (vCPU kicks, SIGTERM): {0}")]
    Signal(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("starting thread {what}: {source}")]
    Thread {
        /// Which.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM could not confine itself (`config.jail`).
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    /// The control socket could not be set up.
    #[error("control socket {}: {source}", path.display())]
    Api {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Builds and runs the VM until it ends.
pub fn run(config: &VmmConfig) -> Result<Exit, VmmError> {
    crate::signals::block_termination().map_err(VmmError::Signal)?;
    let machine = crate::builder::build(config)?;
    let _watcher = crate::signals::watch_termination(machine.control()).map_err(|source| {
        VmmError::Thread {
            what: "vmm-signals".into(),
            source,
        }
    })?;
    // Confinement, second half (`jail::lock_down`: the seccomp filter, on every thread):
    // every file, socket and device the VM needs is open by now, and no vCPU runs yet. (The
    // first half ran in `build`, before the VMM's first thread.)
    if let Some(jail) = &config.jail {
        crate::jail::lock_down(jail, config)?;
    }
    let report = machine.run()?;
    Ok(report.exit)
}
