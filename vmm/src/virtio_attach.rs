//! Putting the configured virtio devices on the MMIO bus: each behind a virtio-mmio
//! transport in its own 4 KiB window with its own IRQ, its queue notifications as KVM
//! ioeventfds and its interrupt as a KVM irqfd.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use libc::EFD_NONBLOCK;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    VIRTIO_IRQ_END, VIRTIO_IRQ_START, VIRTIO_MMIO_SIZE, virtio_mmio_slot,
};
use crate::config::{VmmConfig, parse_mac};
use crate::devices::bus::Bus;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::kvm::Vm;
use crate::vmm::VmmError;

/// A device placed on the bus: its window and IRQ (for the kernel command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The window's base address.
    pub addr: u64,
    /// The IRQ (IOAPIC pin).
    pub irq: u32,
}

fn device_error(what: &str, why: impl std::fmt::Display) -> VmmError {
    VmmError::Virtio {
        what: what.to_owned(),
        why: why.to_string(),
    }
}

/// Takes ownership of the tap descriptor moatd passed down.
fn tap_file(fd: i32) -> Result<File, VmmError> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is acceptable.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(device_error(
            "net",
            format!(
                "tap_fd {fd} is not an open descriptor in the VMM process; moatd must pass the \
                 tap down open (without close-on-exec)"
            ),
        ));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process for the
    // net device alone: nothing else here owns or closes it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The virtio devices `config` asks for, in a fixed order: vsock, the fs shares, net.
fn devices_for(config: &VmmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, VmmError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(v) = &config.vsock {
        let dev = Vsock::new(v.guest_cid, &v.uds_path).map_err(|e| device_error("vsock", e))?;
        devices.push(Box::new(dev));
    }
    for share in &config.fs {
        let dev = Fs::new(&share.tag, &share.shared_dir, share.read_only)
            .map_err(|e| device_error(&format!("fs {}", share.tag), e))?;
        devices.push(Box::new(dev));
    }
    if let Some(n) = &config.net {
        let mac = parse_mac(&n.mac).ok_or_else(|| {
            device_error("net", format!("mac {:?} is not aa:bb:cc:dd:ee:ff", n.mac))
        })?;
        let dev = Net::new(tap_file(n.tap_fd)?, mac).map_err(|e| device_error("net", e))?;
        devices.push(Box::new(dev));
    }
    Ok(devices)
}

/// Attaches `device` as virtio-mmio device number `index`.
pub fn attach(
    vm: &Vm,
    mmio: &mut Bus,
    index: u32,
    device: Box<dyn VirtioDevice>,
) -> Result<Placed, VmmError> {
    let name = device.name();
    let err = |why: String| VmmError::Virtio {
        what: name.to_owned(),
        why,
    };
    let (addr, irq) = virtio_mmio_slot(index).ok_or(VmmError::TooManyDevices(
        VIRTIO_IRQ_END - VIRTIO_IRQ_START + 1,
    ))?;
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
        what: "a virtio interrupt",
        source,
    })?;
    let interrupt = Arc::new(IrqTrigger::new(evt));
    let transport = MmioTransport::try_new(device, vm.memory().clone(), interrupt.clone())
        .map_err(|e| err(format!("creating its queue eventfds: {e}")))?;
    for (queue, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_mmio_ioevent(evt, addr + NOTIFY_REG_OFFSET, queue as u32)?;
    }
    vm.register_irqfd(interrupt.eventfd(), irq)?;
    mmio.insert(Arc::new(Mutex::new(transport)), addr, VIRTIO_MMIO_SIZE)
        .map_err(|source| VmmError::Bus {
            what: format!("virtio-{name}"),
            source,
        })?;
    tracing::debug!(
        device = name,
        addr = format_args!("{addr:#x}"),
        irq,
        "virtio-mmio device attached"
    );
    Ok(Placed { addr, irq })
}

/// Attaches every device `config` asks for; returns where each went.
pub fn attach_all(config: &VmmConfig, vm: &Vm, mmio: &mut Bus) -> Result<Vec<Placed>, VmmError> {
    devices_for(config)?
        .into_iter()
        .enumerate()
        .map(|(i, d)| attach(vm, mmio, i as u32, d))
        .collect()
}
