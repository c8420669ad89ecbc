//! The virtio-fs worker thread: serves the high-priority and the request queue, each on its
//! notification, with the FUSE server (one chain = one request and the room for its reply).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use moat_devices::fs::queue::{Scratch, process_queue};
use moat_devices::fs::server::FuseServer;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::{EventLoop, Worker, consume, serve_queue};
use super::super::{Activation, IrqTrigger};

struct Served {
    queue: Queue,
    evt: EventFd,
    scratch: Scratch,
}

struct State {
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    /// The high-priority queue, then the request queue; the token of each is its index.
    queues: Vec<Served>,
    server: Arc<FuseServer>,
}

/// Starts the worker on `activation`'s queues (the request queues past the first, if a
/// driver readied more than the config space announces, are left alone).
pub fn start(activation: Activation, server: Arc<FuseServer>) -> io::Result<Worker> {
    let Activation {
        mem,
        interrupt,
        queues,
    } = activation;
    let event_loop = EventLoop::new()?;
    let queues: Vec<Served> = queues
        .into_iter()
        .take(2)
        .map(|(queue, evt)| Served {
            queue,
            evt,
            scratch: Scratch::default(),
        })
        .collect();
    for (token, q) in (0u64..).zip(&queues) {
        event_loop.watch(q.evt.as_raw_fd(), token, EventSet::IN)?;
    }
    let mut state = State {
        mem,
        irq: interrupt,
        queues,
        server,
    };
    Worker::spawn("moat-virtiofs", event_loop, move |event_loop| {
        // Requests queued before DRIVER_OK, if any.
        state.serve(&[0, 1]);
        event_loop.run("fs", |tokens| state.serve(tokens));
    })
}

impl State {
    fn serve(&mut self, tokens: &[u64]) {
        for &token in tokens {
            let Some(q) = usize::try_from(token)
                .ok()
                .and_then(|i| self.queues.get_mut(i))
            else {
                tracing::warn!(token, "virtio-fs: unexpected event");
                continue;
            };
            consume(&q.evt);
            let (server, scratch) = (&*self.server, &mut q.scratch);
            serve_queue("fs", &mut q.queue, &self.mem, &self.irq, |queue, mem| {
                (process_queue(queue, mem, server, scratch), true)
            });
        }
    }
}
