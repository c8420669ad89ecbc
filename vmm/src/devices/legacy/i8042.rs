//! A minimal i8042 keyboard controller: its only job is the reset line. Writing 0xFE to the
//! command port (Linux's `reboot=k`, and the usual last resort of a reboot) ends the VM.
//!
//! There is no keyboard. The status register always reports a byte waiting (OBF) and an
//! empty input buffer, so Linux's i8042 driver concludes within 16 reads that no controller
//! is there (no probe timeouts on the boot path), while the reset path, which only waits for
//! the input buffer to drain, goes ahead at once.

use crate::devices::bus::BusDevice;

/// Offset of the data port (0x60) in the device's range.
pub const DATA_OFFSET: u64 = 0;
/// Offset of the command/status port (0x64) in the device's range.
pub const COMMAND_OFFSET: u64 = 4;
/// The range the device covers (0x60..0x65).
pub const I8042_LEN: u64 = 5;
/// The reset command (pulse the CPU reset line).
pub const CMD_RESET_CPU: u8 = 0xfe;
/// Status: output buffer full.
const STATUS_OBF: u8 = 0x01;

/// The controller; `on_reset` runs when the guest pulses the reset line.
pub struct I8042 {
    on_reset: Box<dyn FnMut() + Send>,
    resets: u32,
}

impl I8042 {
    /// A controller that calls `on_reset` on a CPU reset command.
    pub fn new(on_reset: Box<dyn FnMut() + Send>) -> I8042 {
        I8042 {
            on_reset,
            resets: 0,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = if offset == COMMAND_OFFSET {
                STATUS_OBF
            } else {
                0
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.resets += 1;
            // Linux pulses the line up to ten times; once is enough.
            if self.resets == 1 {
                tracing::info!("guest reset through the i8042");
                (self.on_reset)();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn reset_command_fires_once_and_status_reads_as_absent() {
        let fired = Arc::new(AtomicU32::new(0));
        let f = fired.clone();
        let mut dev = I8042::new(Box::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }));
        let mut status = [0u8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer empty: reset may proceed");
        assert_ne!(
            status[0] & STATUS_OBF,
            0,
            "a byte always waiting: no controller"
        );
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0x20]);
        assert_eq!(
            fired.load(Ordering::SeqCst),
            0,
            "only 0xFE to port 0x64 resets"
        );
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }
}
