//! Device back-ends that moatd serves to the micro-VMs.
//!
//! - `fs`: the vhost-user-fs (virtio-fs) device back-end sharing image layers.
//! - `vsock`: the vhost-user-vsock device back-end with a hybrid-vsock host side.

pub mod fs;
pub mod vsock;
