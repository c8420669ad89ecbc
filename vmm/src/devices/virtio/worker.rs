//! What every device's worker thread shares: an epoll loop with a stop event, the thread
//! itself (stopped and joined on reset or drop), and serving one queue with the EVENT_IDX
//! notification dance before raising the interrupt.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActivateError, Activation, IrqTrigger, VIRTIO_MMIO_INT_VRING};

/// The epoll token of the stop event (device tokens are small numbers).
const STOP_TOKEN: u64 = u64::MAX;

/// Most disable/work/enable rounds `serve_queue` runs for one event. A guest that keeps
/// adding chains as fast as we use them gets served in later events; one whose chains can
/// never be used (an RX buffer too small for any packet) cannot spin the thread forever.
const MAX_ROUNDS: usize = 256;

/// An epoll set that always watches the worker's stop event.
pub struct EventLoop {
    epoll: Epoll,
    stop: EventFd,
}

impl EventLoop {
    /// A new loop with a fresh stop event.
    pub fn new() -> io::Result<EventLoop> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(EventLoop { epoll, stop })
    }

    /// Watches `fd` for `events` (level-triggered); its events are reported as `token`.
    pub fn watch(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Changes what `fd` (watched with `token`) is watched for.
    pub fn rewatch(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Waits for events and hands the tokens of each batch to `handle`, until the stop
    /// event fires. A panic in `handle` is logged and the loop carries on: guest input must
    /// never end the device.
    pub fn run(&self, device: &'static str, mut handle: impl FnMut(&[u64])) {
        let mut events = [EpollEvent::default(); 16];
        let mut tokens = Vec::with_capacity(events.len());
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(device, error = %e, "virtio worker: epoll failed; stopping");
                    return;
                }
            };
            tokens.clear();
            for ev in &events[..n] {
                if ev.data() == STOP_TOKEN {
                    return;
                }
                tokens.push(ev.data());
            }
            if catch_unwind(AssertUnwindSafe(|| handle(&tokens))).is_err() {
                tracing::error!(device, "virtio worker: event handler panicked; carrying on");
            }
        }
    }
}

/// A device's worker thread. Dropping it stops and joins the thread.
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Runs `body` on a thread named `name`, with `event_loop` (already watching whatever
    /// the device registered, plus the stop event).
    pub fn spawn(
        name: &str,
        event_loop: EventLoop,
        body: impl FnOnce(EventLoop) + Send + 'static,
    ) -> io::Result<Worker> {
        let stop = event_loop.stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(event_loop))?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it. Returns false when it had panicked (outside the
    /// per-event guard) or could not be told to stop.
    pub fn stop(mut self) -> bool {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> bool {
        let Some(handle) = self.handle.take() else {
            return true;
        };
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "virtio worker: cannot signal the stop event");
            // Joining would wait forever; leave the thread be.
            return false;
        }
        handle.join().is_ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What each device keeps between the driver's FEATURES_OK and its reset: the features it
/// accepted and the worker thread serving the queues. The checks and logs around starting
/// and stopping the worker are the same for every device, so they live here.
#[derive(Default)]
pub struct DeviceRun {
    acked_features: u64,
    worker: Option<Worker>,
}

impl DeviceRun {
    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records the features the driver accepted.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    /// DRIVER_OK: checks that `activation` has at least `queues` ready queues (`needed`
    /// says which, for the error), stops any worker left over (a DRIVER_OK without a reset
    /// in between cannot come through the transport; this is the safe side), and starts a
    /// new one with `start`.
    pub fn activate(
        &mut self,
        device: &'static str,
        activation: Activation,
        queues: usize,
        needed: &str,
        start: impl FnOnce(Activation) -> io::Result<Worker>,
    ) -> Result<(), ActivateError> {
        if activation.queues.len() < queues {
            return Err(ActivateError::BadQueues {
                device,
                why: format!("{} queues ready; {needed} needed", activation.queues.len()),
            });
        }
        self.stop_worker();
        let worker = start(activation).map_err(|source| ActivateError::Io { device, source })?;
        self.worker = Some(worker);
        Ok(())
    }

    /// The driver's reset: stops the worker and forgets the features. Returns false (and
    /// logs it) when the worker had died.
    pub fn reset(&mut self, device: &'static str) -> bool {
        let clean = self.stop_worker();
        if !clean {
            tracing::error!(device, "virtio device: the worker thread had died");
        }
        self.acked_features = 0;
        clean
    }

    fn stop_worker(&mut self) -> bool {
        self.worker.take().is_none_or(Worker::stop)
    }
}

/// Clears a queue notification eventfd (non-blocking; nothing to clear is fine).
pub fn consume(evt: &EventFd) {
    let _ = evt.read();
}

/// Serves `queue` with the notification dance EVENT_IDX needs (disable notifications, work,
/// re-enable, and go again if the driver added chains meanwhile and `work` still has
/// something to do), then raises the interrupt if chains were used and the driver wants to
/// hear about it. `work` returns (used any chain, would use more chains).
///
/// Returns whether `work` was left wanting chains the driver has not given (the device
/// should wait for the driver's next notification before trying again).
pub fn serve_queue(
    device: &'static str,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    irq: &IrqTrigger,
    mut work: impl FnMut(&mut Queue, &GuestMemoryMmap) -> (bool, bool),
) -> bool {
    let mut used_any = false;
    let mut starved = false;
    for round in 0.. {
        if round == MAX_ROUNDS {
            tracing::warn!(
                device,
                "virtio queue: still busy after many rounds; yielding"
            );
            break;
        }
        if let Err(e) = queue.disable_notification(mem) {
            tracing::warn!(device, error = %e, "virtio queue: cannot disable notifications");
            break;
        }
        let (used, wants_more) = work(queue, mem);
        used_any |= used;
        let more_avail = match queue.enable_notification(mem) {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(device, error = %e, "virtio queue: cannot enable notifications");
                false
            }
        };
        starved = wants_more && !more_avail;
        if !(wants_more && more_avail) {
            break;
        }
    }
    if used_any {
        match queue.needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = irq.trigger(VIRTIO_MMIO_INT_VRING) {
                    tracing::warn!(device, error = %e, "virtio queue: cannot raise the interrupt");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(device, error = %e, "virtio queue: reading used_event"),
        }
    }
    starved
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn loop_reports_tokens_survives_panics_and_stops() {
        let lp = EventLoop::new().expect("loop");
        let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        lp.watch(kick.as_raw_fd(), 7, EventSet::IN).expect("watch");
        let kick2 = kick.try_clone().expect("clone");
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        let worker = Worker::spawn("test-worker", lp, move |lp| {
            lp.run("test", |tokens| {
                assert_eq!(tokens, [7]);
                consume(&kick2);
                if seen2.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first event panics");
                }
            })
        })
        .expect("spawn");
        for expected in 1..=2 {
            kick.write(1).expect("kick");
            let deadline = Instant::now() + Duration::from_secs(5);
            while seen.load(Ordering::SeqCst) < expected {
                assert!(Instant::now() < deadline, "event {expected} not handled");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(
            worker.stop(),
            "the thread ends cleanly after a handled panic"
        );
    }
}
