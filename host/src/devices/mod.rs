//! Device back-ends that moatd serves to the micro-VMs.
//!
//! - `fs`: the vhost-user-fs (virtio-fs) device back-end sharing image layers.
//! - `vsock`: the vhost-user-vsock device back-end with a hybrid-vsock host side.
//! - `vring`: what they share (memory and vring types, feature bits, queue draining).

pub mod fs;
pub mod vring;
pub mod vsock;
