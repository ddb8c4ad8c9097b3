//! Fixed-size index allocators: device KV slots and digest entries.

use crate::{Buffer, DType, Device, Error, Result};

/// The device slot pool: `capacity` page slots of one KV pool buffer, handed out lowest
/// index first so runs are deterministic.
#[derive(Debug)]
pub struct SlotPool {
    capacity: usize,
    slot_bytes: usize,
    free: std::collections::BTreeSet<u32>,
}

impl SlotPool {
    /// A pool of `capacity` free slots of `slot_bytes` each.
    pub fn new(capacity: usize, slot_bytes: usize) -> Self {
        SlotPool {
            capacity,
            slot_bytes,
            free: (0..capacity as u32).collect(),
        }
    }

    /// Takes the lowest free slot, or reports the pool exhausted.
    pub fn alloc(&mut self) -> Result<u32> {
        self.free.pop_first().ok_or(Error::DevicePoolExhausted {
            needed: 1,
            capacity: self.capacity,
            slot_bytes: self.slot_bytes,
        })
    }

    /// Takes `n` slots at once, or none of them.
    pub fn alloc_many(&mut self, n: usize) -> Result<Vec<u32>> {
        if self.free.len() < n {
            return Err(Error::DevicePoolExhausted {
                needed: n - self.free.len(),
                capacity: self.capacity,
                slot_bytes: self.slot_bytes,
            });
        }
        Ok((0..n).filter_map(|_| self.free.pop_first()).collect())
    }

    /// Returns a slot to the pool.
    pub fn free(&mut self, slot: u32) {
        debug_assert!((slot as usize) < self.capacity);
        let fresh = self.free.insert(slot);
        debug_assert!(fresh, "slot {slot} freed twice");
    }

    /// Slots in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.capacity - self.free.len()
    }
}

/// Digests of filled pages, kept on the device in one f32 buffer that grows by doubling.
#[derive(Debug)]
pub struct DigestStore {
    buf: Buffer,
    entry_len: usize,
    capacity: usize,
    next: u32,
    free: Vec<u32>,
}

impl DigestStore {
    /// An empty store of digests of `entry_len` f32 values each.
    pub fn new(dev: &dyn Device, entry_len: usize) -> Result<Self> {
        let capacity = 256;
        Ok(DigestStore {
            buf: dev.alloc(DType::F32, capacity * entry_len)?,
            entry_len,
            capacity,
            next: 0,
            free: Vec::new(),
        })
    }

    /// The device buffer holding every digest (`entry_len` values per index).
    pub fn buffer(&self) -> &Buffer {
        &self.buf
    }

    /// A fresh digest index, growing the buffer when full.
    pub fn alloc(&mut self, dev: &dyn Device) -> Result<u32> {
        if let Some(i) = self.free.pop() {
            return Ok(i);
        }
        if self.next as usize == self.capacity {
            let capacity = self.capacity * 2;
            let grown = dev.alloc(DType::F32, capacity * self.entry_len)?;
            dev.copy(&self.buf, 0, &grown, 0, self.capacity * self.entry_len)?;
            self.buf = grown;
            self.capacity = capacity;
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Releases a digest index.
    pub fn free(&mut self, index: u32) {
        self.free.push(index);
    }

    /// Digests in use.
    pub fn used(&self) -> usize {
        self.next as usize - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_lowest_first_and_exhaustion_is_an_error() {
        let mut p = SlotPool::new(3, 64);
        assert_eq!(p.alloc_many(2).unwrap(), vec![0, 1]);
        p.free(0);
        assert_eq!(p.alloc().unwrap(), 0);
        assert_eq!(p.alloc().unwrap(), 2);
        let err = p.alloc().unwrap_err();
        assert!(
            matches!(err, Error::DevicePoolExhausted { capacity: 3, .. }),
            "{err}"
        );
        assert!(p.alloc_many(1).is_err());
        assert_eq!(p.used(), 3);
    }
}
