//! The VMM's devices: the bus the vCPUs' exits are dispatched on, legacy devices, and virtio
//! devices on the virtio-mmio transport.

pub mod bus;
pub mod legacy;
pub mod virtio;
