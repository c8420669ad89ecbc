//! Ports Linux probes at boot where this VM has nothing: reads return a fixed value, writes
//! are dropped, nothing is logged.

use crate::devices::bus::BusDevice;

/// A range of ports answering every read with `fill`.
pub struct Ignored {
    fill: u8,
}

impl Ignored {
    /// Reads return `fill` in every byte.
    pub fn new(fill: u8) -> Ignored {
        Ignored { fill }
    }
}

impl BusDevice for Ignored {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.fill);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// (first port, count, read value, what) of the ports answered with "nothing here" when the
/// in-kernel irqchip and PIT are present.
pub const IGNORED_PORTS: &[(u16, u16, u8, &str)] = &[
    // CMOS/RTC: zero, so "update in progress" never reads as set (Linux would wait on it).
    (0x70, 2, 0x00, "cmos"),
    // POST code / I/O delay ports.
    (0x80, 1, 0x00, "post"),
    (0xed, 1, 0x00, "io-delay"),
    // COM2..COM4: all-ones, so the 8250 driver finds no UART there.
    (0x2e8, 8, 0xff, "com4"),
    (0x2f8, 8, 0xff, "com2"),
    (0x3e8, 8, 0xff, "com3"),
    // PCI configuration mechanism #1: all-ones, so Linux finds no PCI bus.
    (0xcf8, 8, 0xff, "pci"),
];

/// The ports the in-kernel PIC and PIT would answer, ignored when KVM has no irqchip. (The
/// PIT's speaker port, 0x61, lies in the i8042's range, which reads it as zero.)
pub const IRQCHIP_PORTS: &[(u16, u16, u8, &str)] = &[
    (0x20, 2, 0x00, "pic1"),
    (0x40, 4, 0x00, "pit"),
    (0xa0, 2, 0x00, "pic2"),
    (0x4d0, 2, 0x00, "elcr"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fill_and_ranges_do_not_overlap() {
        let mut d = Ignored::new(0xff);
        let mut data = [0u8; 4];
        d.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
        d.write(0, &[1]);

        let mut all: Vec<_> = IGNORED_PORTS.iter().chain(IRQCHIP_PORTS).collect();
        all.sort_by_key(|r| r.0);
        for w in all.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{} overlaps {}", w[0].3, w[1].3);
        }
        // None of them overlaps COM1 or the i8042.
        for (base, len, _, what) in &all {
            let range = *base..base + len;
            for port in (0x3f8..0x400).chain(0x60..0x65) {
                assert!(!range.contains(&port), "{what} covers {port:#x}");
            }
        }
    }
}
