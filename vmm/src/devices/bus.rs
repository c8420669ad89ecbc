//! The address buses (port I/O and MMIO) a vCPU exit is dispatched on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A device reached through port I/O or MMIO. `offset` is relative to the start of the
/// range the device was inserted at; `data` is the access (1, 2, 4 or 8 bytes).
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset`; fill `data` (it starts zeroed).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty.
    #[error("empty bus range at {0:#x}")]
    Empty(u64),
    /// The range overlaps one already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// Non-overlapping ranges, each with its device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` at `base..base+len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let before = self.ranges.range(..end).next_back();
        if let Some((&b, &(l, _))) = before
            && b + l > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in its range.
    fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((dev, addr - base))
    }

    /// Dispatches a read; returns false (and leaves `data` as is) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((dev, offset)) = self.resolve(addr) else {
            return false;
        };
        dev.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
        true
    }

    /// Dispatches a write; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((dev, offset)) = self.resolve(addr) else {
            return false;
        };
        dev.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlaps() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x100, 0x10).expect("insert");
        assert_eq!(
            bus.insert(a.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(a.clone(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert_eq!(bus.insert(a.clone(), 0x200, 0), Err(BusError::Empty(0x200)));
        bus.insert(a.clone(), 0x110, 0x10)
            .expect("adjacent is fine");

        let mut data = [0u8; 2];
        assert!(bus.read(0x104, &mut data));
        assert_eq!(data, [4, 4]);
        assert!(bus.write(0x10f, &[9]));
        assert!(!bus.write(0x120, &[1]));
        assert!(!bus.read(0xff, &mut data));
        let rec = a.lock().expect("lock");
        assert_eq!(rec.writes, vec![(0xf, vec![9])]);
    }
}
