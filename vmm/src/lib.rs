//! Moat's own virtual machine monitor, on the rust-vmm crates: one process per pod VM
//! (`moatd vmm --config <file>`), KVM for the vCPUs, devices on virtio-mmio.
//!
//! Layout, one job per module (in the order of a run):
//! - `config`: what moatd asks for (vCPUs, memory, kernel, devices, jail), as JSON.
//! - `vmm`: `run`: blocks the termination signals, builds the VM, locks it down (with a
//!   jail), runs it and reports how it ended (`Exit`).
//! - `builder`: builds a VM from the config (`build`) and runs it to its end
//!   (`Machine::run`).
//! - `kvm`: the hypervisor layer (/dev/kvm, the VM, memory slots, irqchip, PIT, irqfds,
//!   ioeventfds, the vCPUs' boot state).
//! - `arch`: x86_64 boot state (memory map, page tables, GDT, MP table, CPUID, registers).
//! - `boot`: loading the kernel (ELF vmlinux or bzImage), initramfs, command line and
//!   boot_params.
//! - `devices`: the MMIO/PIO bus, legacy devices (serial, i8042 reset), and virtio
//!   (the virtio-mmio transport, then one folder per device: vsock, fs, net).
//! - `virtio_attach`: puts the configured virtio devices on the MMIO bus (a 4 KiB window
//!   and an IRQ each, ioeventfds for notifications, irqfds for interrupts).
//! - `vcpu_loop`: one thread per vCPU, the KVM_RUN loop and its exits.
//! - `control`: the VM's run state (running, paused, stopping) shared by the vCPUs, the
//!   devices, the control API and the waiting thread; `kick`: getting a vCPU out of
//!   KVM_RUN when that state changes.
//! - `signals`: SIGTERM and SIGINT end the VM cleanly.
//! - `api`: the control socket (status, pause, resume, shutdown).
//! - `jail`: confinement (mount namespace, capabilities, seccomp filter, the SIGSYS
//!   report).
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
