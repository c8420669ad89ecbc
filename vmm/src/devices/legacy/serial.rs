//! COM1: vm-superio's 16550A model on the port bus, its output appended to the console log,
//! its interrupt raised through an eventfd (a KVM irqfd on IRQ 4).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// The ports COM1 occupies.
pub const SERIAL_PORT_LEN: u64 = 8;

/// When the guest wrote its first byte to the console, once it has.
pub type FirstByte = Arc<OnceLock<Instant>>;

/// The serial interrupt: an eventfd KVM injects IRQ 4 from.
pub struct IrqEventFd(pub EventFd);

impl Trigger for IrqEventFd {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console log: guest output appended to a file, a line at a time (vm-superio flushes
/// after every byte, which would cost a write per byte; lines are written whole instead, and
/// whatever is left when the device goes away).
pub struct ConsoleLog {
    file: File,
    pending: Vec<u8>,
    first_byte: FirstByte,
}

/// A line is written out at its newline, or when this much is pending.
const LINE_LIMIT: usize = 1024;

impl ConsoleLog {
    /// Opens (creating, appending to) `path`.
    pub fn open(path: &Path) -> io::Result<ConsoleLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(ConsoleLog {
            file,
            pending: Vec::with_capacity(LINE_LIMIT),
            first_byte: FirstByte::default(),
        })
    }

    /// When the first byte arrived.
    pub fn first_byte(&self) -> FirstByte {
        self.first_byte.clone()
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.first_byte.get_or_init(Instant::now);
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= LINE_LIMIT {
            self.write_pending()?;
        }
        Ok(buf.len())
    }

    /// Does nothing: lines are written whole (see the type's doc).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleLog {
    fn drop(&mut self) {
        if let Err(e) = self.write_pending() {
            tracing::warn!(error = %e, "writing the end of the console log");
        }
    }
}

/// COM1 on the port bus.
pub struct SerialDevice {
    serial: Serial<IrqEventFd, NoEvents, ConsoleLog>,
}

impl SerialDevice {
    /// A UART writing to `log`, interrupting through `irq`.
    pub fn new(log: ConsoleLog, irq: EventFd) -> SerialDevice {
        SerialDevice {
            serial: Serial::new(IrqEventFd(irq), log),
        }
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset))
            && let Err(e) = self.serial.write(offset, value)
        {
            tracing::warn!(error = ?e, "serial console write");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn bytes_land_in_the_log_a_line_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"earlier\n").expect("seed");
        let log = ConsoleLog::open(&path).expect("open");
        let first = log.first_byte();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(log, irq.try_clone().expect("clone"));
        assert!(first.get().is_none());

        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
        for b in b"hi" {
            dev.write(THR, &[*b]);
        }
        assert!(first.get().is_some(), "first byte time recorded");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "earlier\n", "partial line not written yet");
        dev.write(THR, b"\n");
        dev.write(THR, b"x");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "earlier\nhi\n");
        drop(dev);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "earlier\nhi\nx", "the rest written at the end");
    }

    #[test]
    fn thr_empty_interrupt_goes_through_the_eventfd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ConsoleLog::open(&dir.path().join("c.log")).expect("open");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(log, irq.try_clone().expect("clone"));
        dev.write(IER, &[0x02]);
        assert_eq!(irq.read().expect("interrupt raised"), 1);
        assert_eq!(dev.irq_evt().read().ok(), None, "drained");
    }
}
