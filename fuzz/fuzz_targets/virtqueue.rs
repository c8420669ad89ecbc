#![no_main]
//! Untrusted input: a split virtqueue in guest memory, all of it written by the guest: the
//! descriptor table (addresses, lengths, flags, next links, indirect tables), the available
//! ring and its index, and the ring addresses and size the driver programmed. The back-ends
//! walk it with `vring::drain` (the EVENT_IDX notification loop shared by both vhost-user
//! devices) around their queue handlers, whose descriptor-chain walking (virtio-queue's
//! `Reader`/`Writer`) this exercises: `fs::queue::process_queue` (requests copied out,
//! replies written back), `vsock::queue::process_tx` and `process_rx`.
//!
//! Input: a flags byte (bits 0-1: 0 or 3 the virtio-fs request queue, 1 the vsock TX
//! queue, 2 the vsock RX queue with a host CONNECT waiting; bit 2: EVENT_IDX), the queue
//! size (`1 << (b % 9)`), the descriptor table, avail ring and used ring addresses (u16 LE
//! each, aligned down), next_avail and next_used (u16 LE); the rest is the first bytes of
//! the 64 KiB of guest memory. The closures passed to `drain` are the back-ends' own (see
//! fs/backend.rs and vsock/backend.rs). Besides panics, the fuzzer reports a `drain` that
//! does not return (libFuzzer's -timeout). With MOAT_FUZZ_BOUNDED_DRAIN=1 in the
//! environment each handler says "no more" after 64 rounds, so that fuzzing can go on past
//! a known endless-loop finding to the chain walking itself.

use std::io::Write as _;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use moat_devices::fs::in_process_server;
use moat_devices::fs::queue::{Scratch, process_queue};
use moat_devices::vring::{Vring, drain};
use moat_devices::vsock::muxer::Muxer;
use moat_devices::vsock::queue::{process_rx, process_tx};
use moat_fuzz::Input;
use vhost_user_backend::VringT as _;
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

const MEM_SIZE: usize = 64 * 1024;
const MAX_QUEUE: u16 = 256;

/// `wants_more` as the back-end says it, unless MOAT_FUZZ_BOUNDED_DRAIN is set and this is
/// round 64 or later.
fn more(rounds: &mut u32, wants_more: bool) -> bool {
    static BOUNDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *rounds += 1;
    let bounded = *BOUNDED.get_or_init(|| std::env::var_os("MOAT_FUZZ_BOUNDED_DRAIN").is_some());
    wants_more && !(bounded && *rounds >= 64)
}

fuzz_target!(|data: &[u8]| {
    let mut rounds = 0u32;
    let mut input = Input::new(data);
    let flags = input.u8();
    let size = 1u16 << (input.u8() % 9);
    let desc = u64::from(input.u16() & !15);
    let avail = u64::from(input.u16() & !1);
    let used = u64::from(input.u16() & !3);
    let next_avail = input.u16();
    let next_used = input.u16();

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mem");
    let image = input.bytes(MEM_SIZE);
    mem.write_slice(image, GuestAddress(0)).expect("fill");

    let vring = Vring::new(GuestMemoryAtomic::new(mem.clone()), MAX_QUEUE).expect("vring");
    vring.set_queue_size(size);
    if vring.set_queue_info(desc, avail, used).is_err() {
        return;
    }
    vring.set_queue_next_avail(next_avail);
    vring.set_queue_next_used(next_used);
    vring.set_queue_event_idx(flags & 4 != 0);
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    match flags & 3 {
        1 | 2 => {
            moat_fuzz::ignore_sigpipe();
            let dir = tempfile::tempdir().expect("tempdir");
            let uds = dir.path().join("vsock.sock");
            let mut muxer = Muxer::new(&uds, 3).expect("muxer");
            let mut scratch = Vec::new();
            if flags & 3 == 1 {
                let _ = drain(&mem, &vring, |q, m| {
                    (
                        process_tx(q, m, &mut muxer, &mut scratch),
                        more(&mut rounds, true),
                    )
                });
            } else {
                let mut host = UnixStream::connect(&uds).expect("connect");
                host.write_all(b"CONNECT 1024\n").expect("CONNECT");
                muxer.process_host_events();
                let _ = drain(&mem, &vring, |q, m| {
                    let used = process_rx(q, m, &mut muxer);
                    (used, more(&mut rounds, muxer.has_rx_work()))
                });
            }
        }
        _ => {
            let share = tempfile::tempdir().expect("tempdir");
            std::fs::write(share.path().join("file"), b"hello\n").expect("file");
            let server = in_process_server(share.path(), true).expect("server");
            let mut scratch = Scratch::default();
            let _ = drain(&mem, &vring, |q, m| {
                (
                    process_queue(q, m, &server, &mut scratch),
                    more(&mut rounds, true),
                )
            });
        }
    }
});
