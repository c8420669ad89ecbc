//! The virtio-net worker thread: TX chains are written to the tap (one frame each); frames
//! read from the tap fill RX chains (one frame per chain). While the driver has given no RX
//! chain the tap is not watched (its frames wait in the tap's queue) until the driver
//! notifies the RX queue.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::super::worker::{EventLoop, Worker, consume, serve_queue};
use super::super::{Activation, IrqTrigger};
use super::VNET_HDR_LEN;

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const TAP_TOKEN: u64 = 2;
/// The largest frame with its header: 64 KiB of IP packet, Ethernet and VLAN headers.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

/// The header towards the guest: no flags, no GSO, `num_buffers = 1`.
const RX_HDR: [u8; VNET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

struct State {
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    rx: Queue,
    rx_evt: EventFd,
    tx: Queue,
    tx_evt: EventFd,
    tap: Arc<File>,
    /// The tap is in the epoll set for IN.
    tap_watched: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

/// Starts the worker on `activation`'s RX and TX queues.
pub fn start(activation: Activation, tap: Arc<File>) -> io::Result<Worker> {
    let Activation {
        mem,
        interrupt,
        queues,
    } = activation;
    let mut queues = queues.into_iter();
    let (Some((rx, rx_evt)), Some((tx, tx_evt))) = (queues.next(), queues.next()) else {
        return Err(io::Error::other("the RX and TX queues are needed"));
    };
    let event_loop = EventLoop::new()?;
    event_loop.watch(rx_evt.as_raw_fd(), RX_TOKEN, EventSet::IN)?;
    event_loop.watch(tx_evt.as_raw_fd(), TX_TOKEN, EventSet::IN)?;
    event_loop.watch(tap.as_raw_fd(), TAP_TOKEN, EventSet::IN)?;
    let mut state = State {
        mem,
        irq: interrupt,
        rx,
        rx_evt,
        tx,
        tx_evt,
        tap,
        tap_watched: true,
        rx_buf: vec![0; MAX_FRAME],
        tx_buf: Vec::with_capacity(MAX_FRAME),
    };
    Worker::spawn("moat-net", event_loop, move |event_loop| {
        state.on_events(&[TX_TOKEN, RX_TOKEN], &event_loop);
        event_loop.run("net", |tokens| state.on_events(tokens, &event_loop));
    })
}

impl State {
    fn on_events(&mut self, tokens: &[u64], event_loop: &EventLoop) {
        let mut rx = false;
        for &token in tokens {
            match token {
                RX_TOKEN => {
                    consume(&self.rx_evt);
                    rx = true;
                }
                TX_TOKEN => {
                    consume(&self.tx_evt);
                    let (tap, buf) = (&*self.tap, &mut self.tx_buf);
                    serve_queue("net", &mut self.tx, &self.mem, &self.irq, |q, m| {
                        (transmit(q, m, tap, buf), true)
                    });
                }
                TAP_TOKEN => rx = true,
                other => tracing::warn!(token = other, "virtio-net: unexpected event"),
            }
        }
        if !rx {
            return;
        }
        let (tap, buf) = (&*self.tap, &mut self.rx_buf);
        let starved = serve_queue("net", &mut self.rx, &self.mem, &self.irq, |q, m| {
            receive(q, m, tap, buf)
        });
        // Out of RX chains: leave the frames in the tap until the driver adds some.
        let watch = !starved;
        if watch != self.tap_watched {
            let events = if watch {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            match event_loop.rewatch(self.tap.as_raw_fd(), TAP_TOKEN, events) {
                Ok(()) => self.tap_watched = watch,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-net: cannot change the tap's epoll interest")
                }
            }
        }
    }
}

/// Writes every available TX chain's frame to the tap. Returns whether any chain was used.
fn transmit(queue: &mut Queue, mem: &GuestMemoryMmap, mut tap: &File, buf: &mut Vec<u8>) -> bool {
    let mut used = false;
    // At most a queue's worth per call: a guest that lays the used ring over the avail
    // ring makes each returned chain look like a new one.
    for _ in 0..usize::from(queue.size()).max(1) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        match read_frame(chain.reader(mem), buf) {
            Ok(()) => {
                // No offloads were negotiated: the header says nothing, whatever the guest
                // put there.
                buf[..VNET_HDR_LEN].fill(0);
                if let Err(e) = tap.write(buf) {
                    tracing::debug!(error = %e, "virtio-net: writing a frame to the tap failed; dropped");
                }
            }
            Err(why) => tracing::warn!(why, "virtio-net: bad TX chain; dropped"),
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            tracing::warn!(error = %e, "virtio-net: returning a TX chain failed");
        }
        used = true;
    }
    used
}

fn read_frame(
    reader: Result<virtio_queue::Reader<'_>, virtio_queue::Error>,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut reader = reader.map_err(|e| e.to_string())?;
    let len = reader.available_bytes();
    if !(VNET_HDR_LEN..=MAX_FRAME).contains(&len) {
        return Err(format!("{len} bytes"));
    }
    buf.resize(len, 0);
    reader.read_exact(buf).map_err(|e| e.to_string())
}

/// Fills RX chains with frames from the tap, one frame per chain. Returns (used any chain,
/// ran out of chains with the tap maybe still holding frames).
fn receive(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut tap: &File,
    buf: &mut [u8],
) -> (bool, bool) {
    let mut used = false;
    loop {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return (used, true);
        };
        let head = chain.head_index();
        let n = match tap.read(buf) {
            Ok(n) if n >= VNET_HDR_LEN => n,
            Ok(n) => {
                queue.go_to_previous_position();
                if n == 0 {
                    return (used, false);
                }
                tracing::debug!(len = n, "virtio-net: runt read from the tap; dropped");
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                queue.go_to_previous_position();
                continue;
            }
            Err(e) => {
                queue.go_to_previous_position();
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::warn!(error = %e, "virtio-net: reading the tap failed");
                }
                return (used, false);
            }
        };
        buf[..VNET_HDR_LEN].copy_from_slice(&RX_HDR);
        let len = match chain.writer(mem) {
            Ok(mut w) if w.available_bytes() >= n => match w.write_all(&buf[..n]) {
                Ok(()) => n as u32,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-net: writing an RX chain failed");
                    0
                }
            },
            Ok(w) => {
                tracing::warn!(
                    room = w.available_bytes(),
                    frame = n,
                    "virtio-net: RX chain too small for a frame; frame dropped"
                );
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, "virtio-net: unwritable RX chain");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            tracing::warn!(error = %e, "virtio-net: returning an RX chain failed");
        }
        used = true;
    }
}
