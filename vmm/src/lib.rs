//! Moat's own virtual machine monitor, on the rust-vmm crates: one process per pod VM
//! (`moatd vmm --config <file>`), KVM for the vCPUs, devices on virtio-mmio.
//!
//! Layout, one job per module:
//! - `config`: what moatd asks for (vCPUs, memory, kernel, devices), as JSON.
//! - `kvm`: the hypervisor layer (VM, memory slots, irqchip, vCPUs and their run loop).
//! - `arch`: x86_64 boot state (memory map, page tables, GDT, MP table, CPUID, registers).
//! - `boot`: loading the kernel (ELF vmlinux or bzImage), initramfs and command line.
//! - `devices`: the MMIO/PIO bus, legacy devices (serial, i8042 reset), and virtio
//!   (the virtio-mmio transport, then one folder per device: vsock, fs, net).
//! - `api`: the control socket (status, pause, resume, shutdown).
//! - `jail`: confinement (mount namespace, capabilities, seccomp filter).
//! - `vmm`: builds the VM from the config, runs it, and reports how it ended.
//! - `test_utils` (feature `test-utils`): the smoke payload, for tests and benchmarks.

pub mod api;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod jail;
pub mod kick;
pub mod kvm;
pub mod signals;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod vcpu_loop;
pub mod virtio_attach;
pub mod vmm;

pub use config::VmmConfig;
pub use vmm::{Exit, VmmError, run};
