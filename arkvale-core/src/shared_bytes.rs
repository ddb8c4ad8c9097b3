//! [`SharedBytes`]: read-only bytes owned elsewhere (a memory-mapped model file) that a
//! device buffer may use where they lie instead of copying them ([`crate::Device::import`]).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// A range of read-only bytes kept alive by a shared owner (for example a memory map).
/// Cloning shares the owner; the bytes are never written through this handle.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl SharedBytes {
    /// Bytes `range` of `owner`, or `None` when the range does not lie inside it.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Self> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(SharedBytes { owner, range })
    }

    /// All of `bytes`, moved behind a new owner.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        SharedBytes {
            owner: Arc::new(bytes),
            range,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    /// Their number.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_views_its_part_of_the_owner() {
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![1u8, 2, 3, 4, 5]);
        let part = SharedBytes::new(owner.clone(), 1..4).expect("inside");
        assert_eq!(part.as_slice(), &[2, 3, 4]);
        assert_eq!(part.len(), 3);
        assert!(SharedBytes::new(owner.clone(), 3..6).is_none());
        assert!(SharedBytes::new(owner, 5..5).expect("empty end").is_empty());
        assert_eq!(SharedBytes::from_vec(vec![9, 8]).as_slice(), &[9, 8]);
    }
}
