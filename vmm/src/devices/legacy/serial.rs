//! COM1: vm-superio's 16550A model on the port bus, its output written to the console log
//! (capped: a head and a rotating tail, `moat_devices::console_log`), its interrupt raised
//! through an eventfd (a KVM irqfd on IRQ 4).

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use moat_devices::console_log::{CapConfig, CappedLog};
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

/// The console log: guest output written to a capped log (the first bytes and a rotating
/// tail of the newest; see `moat_devices::console_log` for the files), a line at a time
/// (vm-superio flushes after every byte, which would cost a write per byte; lines are
/// written whole instead, and whatever is left when the device goes away). Once open it
/// needs only write(2) and ftruncate(2) on the descriptors it holds.
pub struct ConsoleLog {
    log: CappedLog,
    pending: Vec<u8>,
    first_byte: FirstByte,
}

/// A line is written out at its newline, or when this much is pending.
const LINE_LIMIT: usize = 1024;

impl ConsoleLog {
    /// Creates (or empties) the log at `path` and its tail segments, keeping what `caps`
    /// says.
    pub fn open(path: &Path, caps: CapConfig) -> io::Result<ConsoleLog> {
        Ok(ConsoleLog {
            log: CappedLog::create(path, caps)?,
            pending: Vec::with_capacity(LINE_LIMIT),
            first_byte: FirstByte::default(),
        })
    }

    /// When the first byte arrived.
    pub fn first_byte(&self) -> FirstByte {
        self.first_byte.clone()
    }

    /// Writes out what is pending; what could not be written is dropped all the same, so
    /// the buffer stays bounded.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.log.write_all(&self.pending);
        self.pending.clear();
        written
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
            // The guest writes a byte at a time: a failing log must not flood the VMM's.
            moat_devices::warn_limited!(error = ?e, "serial console write");
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
    fn console_bytes_land_in_the_log_a_line_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"earlier\n").expect("seed");
        let log = ConsoleLog::open(&path, CapConfig::default()).expect("open");
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
        assert_eq!(
            text, "",
            "an earlier log is emptied; partial line not written yet"
        );
        dev.write(THR, b"\n");
        dev.write(THR, b"x");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "hi\n");
        drop(dev);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "hi\nx", "the rest written at the end");
    }

    #[test]
    fn console_flood_from_the_guest_stays_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let caps = CapConfig {
            head_bytes: 300,
            tail_bytes: 2000,
        };
        let log = ConsoleLog::open(&path, caps).expect("open");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(log, irq);
        // 256 KiB a byte at a time, lines of 50 and, past 100 KiB, no newlines at all.
        let byte = |i: usize| match i {
            _ if i < 100 << 10 && i % 50 == 49 => b'\n',
            _ => b'a' + (i % 26) as u8,
        };
        let total = 256 << 10;
        for i in 0..total {
            dev.write(THR, &[byte(i)]);
        }
        drop(dev);
        let [a, b] = moat_devices::console_log::segment_paths(&path).expect("segments");
        let disk: u64 = [&path, &a, &b]
            .iter()
            .map(|p| std::fs::metadata(p).expect("file").len())
            .sum();
        assert!(
            disk <= 300 + 2000 + moat_devices::console_log::MARKER_MAX,
            "{disk}"
        );
        let all = moat_devices::console_log::read_tail(&path, u64::MAX).expect("read");
        let expected_head: Vec<u8> = (0..300).map(byte).collect();
        assert_eq!(all[..300], expected_head[..], "the head kept");
        let text = String::from_utf8_lossy(&all[300..]);
        assert!(
            text.starts_with("[moat: ") && text.contains(" bytes of console output dropped; "),
            "{text:?}"
        );
        let newest: Vec<u8> = (total - 1000..total).map(byte).collect();
        assert!(all.ends_with(&newest), "the newest output kept");
    }

    #[test]
    fn thr_empty_interrupt_goes_through_the_eventfd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ConsoleLog::open(&dir.path().join("c.log"), CapConfig::default()).expect("open");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(log, irq.try_clone().expect("clone"));
        dev.write(IER, &[0x02]);
        assert_eq!(irq.read().expect("interrupt raised"), 1);
        assert_eq!(dev.irq_evt().read().ok(), None, "drained");
    }
}
