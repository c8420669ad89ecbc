//! Moat's virtio device models, one folder per device.
//!
//! - `vsock`: virtio-vsock with a hybrid-vsock host side (the connection state machine,
//!   credit flow control, the muxer of host Unix sockets, queue handling).
//! - `fs`: virtio-fs, a FUSE server over a passthrough filesystem sharing image layers.
//! - `console_log`: the guest's serial console log, capped to a head and a rotating tail.
//! - `ratelimit`: `warn_limited!`, for warnings a guest can trigger at will.
//! - `vring`: what the vhost-user back-ends share (memory and vring types, feature bits,
//!   queue draining).
//!
//! Each device's queue handling works on `virtio_queue::Queue` and guest memory alone, so the
//! same code serves QEMU over vhost-user (`moatd vsock-backend`, `moatd fs-backend`) and Moat's
//! own VMM in-process over virtio-mmio (crate `moat-vmm`).

pub mod console_log;
pub mod fs;
pub mod ratelimit;
pub mod vring;
pub mod vsock;
