//! Moving FUSE requests and replies between a virtqueue (in guest memory) and the server.
//!
//! A virtio-fs request is one descriptor chain: the device-readable descriptors hold the
//! FUSE request (in header + arguments), the device-writable ones the room for the reply
//! (out header + data). Chains are read and written through virtio-queue's `Reader` and
//! `Writer`, so any layout works (Linux puts the header, the arguments and each page of READ
//! data in separate descriptors, or in an indirect table).
//!
//! Nothing here fails the caller: a bad chain is logged, returned to the guest with nothing
//! written, and skipped.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::server::FuseServer;

/// The most of a request we copy: a 1 MiB WRITE (fuse-backend-rs's largest) plus headers.
/// The server answers a longer request (its header says how long) with an error.
pub const MAX_REQUEST: usize = (1 << 20) + 8192;
/// The most reply room we use: a 1 MiB READ plus its header.
pub const MAX_REPLY: usize = (1 << 20) + 8192;

/// Per-queue buffers, reused from one request to the next.
#[derive(Default)]
pub struct Scratch {
    request: Vec<u8>,
    reply: Vec<u8>,
}

/// Serves every available chain of `queue`. Returns whether any chain was used (the guest
/// should be notified).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    server: &FuseServer,
    scratch: &mut Scratch,
) -> bool {
    let mut used = false;
    for _ in 0..crate::vring::chain_budget(queue) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = serve_chain(chain, mem, server, scratch);
        if let Err(e) = queue.add_used(mem, head, len) {
            crate::warn_limited!(error = %e, head, "virtio-fs: returning a chain failed");
        }
        used = true;
    }
    used
}

/// Serves one chain; returns the number of bytes written into its writable part.
fn serve_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    server: &FuseServer,
    scratch: &mut Scratch,
) -> u32 {
    let mut reader = match chain.clone().reader(mem) {
        Ok(r) => r,
        Err(e) => {
            crate::warn_limited!(error = %e, "virtio-fs: unreadable chain");
            return 0;
        }
    };
    let mut writer = match chain.writer(mem) {
        Ok(w) => w,
        Err(e) => {
            crate::warn_limited!(error = %e, "virtio-fs: unwritable chain");
            return 0;
        }
    };

    let req_len = reader.available_bytes().min(MAX_REQUEST);
    scratch.request.clear();
    scratch.request.resize(req_len, 0);
    if let Err(e) = reader.read_exact(&mut scratch.request) {
        crate::warn_limited!(error = %e, req_len, "virtio-fs: reading a request failed");
        return 0;
    }

    let room = writer.available_bytes().min(MAX_REPLY);
    if scratch.reply.len() < room {
        scratch.reply.resize(room, 0);
    }
    let reply = &mut scratch.reply[..room];
    let n = server.handle(&mut scratch.request, reply);
    if n == 0 {
        return 0;
    }
    match writer.write_all(&reply[..n]) {
        // n <= room <= MAX_REPLY, far below u32::MAX.
        Ok(()) => n as u32,
        Err(e) => {
            crate::warn_limited!(error = %e, len = n, "virtio-fs: writing a reply failed");
            0
        }
    }
}
