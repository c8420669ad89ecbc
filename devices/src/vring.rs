//! What the vhost-user device back-ends share: the guest memory and vring types, the
//! feature bits every one offers, and the EVENT_IDX queue-draining loop.

use std::io;

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory as the back-ends see it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;
/// A vring of that memory.
pub type Vring = VringRwLock<GuestMem>;

/// VERSION_1, EVENT_IDX, INDIRECT_DESC and vhost-user protocol features.
pub fn base_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// Serves `vring` if it is ready and enabled, with the notification dance EVENT_IDX needs
/// (disable, work, re-enable, and go again if the driver added buffers meanwhile and
/// `work` still has something to do), then signals the guest if needed. `work` returns
/// (used any chain, would use more chains).
pub fn drain(
    mem: &GuestMemoryMmap,
    vring: &Vring,
    mut work: impl FnMut(&mut Queue, &GuestMemoryMmap) -> (bool, bool),
) -> io::Result<()> {
    // The guest writes the rings: a round that used nothing cannot be followed by one that
    // does (an avail index the queue refuses, say), and a ring laid over another can make
    // work appear without end, so the rounds are bounded too. Past the bound the guest's
    // next kick brings the back-end here again.
    for _ in 0..MAX_ROUNDS {
        let (used, again) = {
            let mut state = vring.get_mut();
            if !state.is_enabled() || !state.get_queue().ready() {
                return Ok(());
            }
            let queue = state.get_queue_mut();
            queue.disable_notification(mem).map_err(io::Error::other)?;
            let (used, wants_more) = work(queue, mem);
            let more_avail = queue.enable_notification(mem).map_err(io::Error::other)?;
            (used, used && wants_more && more_avail)
        };
        if used && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        if !again {
            return Ok(());
        }
    }
    crate::warn_limited!(
        rounds = MAX_ROUNDS,
        "a queue kept the back-end busy; yielding"
    );
    Ok(())
}

/// Rounds of `drain` for one event.
const MAX_ROUNDS: usize = 64;

/// The most chains a queue handler serves in one call: the queue's size. A guest that lays
/// the used ring over the avail ring makes each returned chain look like a new one; past
/// this the handler returns and says it wants more.
pub fn chain_budget(queue: &Queue) -> usize {
    usize::from(queue.size()).max(1)
}
