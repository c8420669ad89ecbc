//! The vsock worker thread: waits on the RX and TX queue notifications, the muxer's epoll
//! fd (host sockets) and its stop event. A TX notification hands the guest's packets to the
//! muxer; host events let the muxer accept, read and write host streams; after every batch
//! of events the RX queue is filled with whatever the muxer has for the guest. The
//! interrupt is raised when chains were used (and the driver wants to hear of it).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use moat_devices::vsock::muxer::Muxer;
use moat_devices::vsock::queue::{process_rx, process_tx};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::{EventLoop, Worker, consume, serve_queue};
use super::super::{Activation, IrqTrigger};

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const EVENT_TOKEN: u64 = 2;
const HOST_TOKEN: u64 = 3;

struct State {
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    rx: Queue,
    rx_evt: EventFd,
    tx: Queue,
    tx_evt: EventFd,
    /// The event queue's notifications (consumed; we never send events).
    event_evt: Option<EventFd>,
    muxer: Arc<Mutex<Muxer>>,
    tx_scratch: Vec<u8>,
}

/// Starts the worker on `activation`'s queues (RX, TX, and the event queue if ready).
pub fn start(activation: Activation, muxer: Arc<Mutex<Muxer>>) -> io::Result<Worker> {
    let Activation {
        mem,
        interrupt,
        queues,
    } = activation;
    let mut queues = queues.into_iter();
    let (Some((rx, rx_evt)), Some((tx, tx_evt))) = (queues.next(), queues.next()) else {
        return Err(io::Error::other("the RX and TX queues are needed"));
    };
    let event_evt = queues.next().map(|(_, evt)| evt);

    let event_loop = EventLoop::new()?;
    event_loop.watch(rx_evt.as_raw_fd(), RX_TOKEN, EventSet::IN)?;
    event_loop.watch(tx_evt.as_raw_fd(), TX_TOKEN, EventSet::IN)?;
    if let Some(evt) = &event_evt {
        event_loop.watch(evt.as_raw_fd(), EVENT_TOKEN, EventSet::IN)?;
    }
    let host_fd = muxer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .epoll_fd();
    event_loop.watch(host_fd, HOST_TOKEN, EventSet::IN)?;

    let mut state = State {
        mem,
        irq: interrupt,
        rx,
        rx_evt,
        tx,
        tx_evt,
        event_evt,
        muxer,
        tx_scratch: Vec::new(),
    };
    Worker::spawn("moat-vsock", event_loop, move |event_loop| {
        // CONNECTs that waited for this driver go out first.
        state.on_events(&[]);
        event_loop.run("vsock", |tokens| state.on_events(tokens));
    })
}

impl State {
    fn on_events(&mut self, tokens: &[u64]) {
        let mut muxer = self.muxer.lock().unwrap_or_else(PoisonError::into_inner);
        for &token in tokens {
            match token {
                RX_TOKEN => consume(&self.rx_evt),
                TX_TOKEN => {
                    consume(&self.tx_evt);
                    let scratch = &mut self.tx_scratch;
                    serve_queue("vsock", &mut self.tx, &self.mem, &self.irq, |q, m| {
                        (process_tx(q, m, &mut muxer, scratch), true)
                    });
                }
                EVENT_TOKEN => {
                    if let Some(evt) = &self.event_evt {
                        consume(evt);
                    }
                }
                HOST_TOKEN => muxer.process_host_events(),
                other => tracing::warn!(token = other, "vsock: unexpected event"),
            }
        }
        // Guest packets and host events both may have left packets for the guest.
        serve_queue("vsock", &mut self.rx, &self.mem, &self.irq, |q, m| {
            let used = process_rx(q, m, &mut muxer);
            (used, muxer.has_rx_work())
        });
    }
}
