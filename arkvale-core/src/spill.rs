//! The disk tier under the host backup store: fixed-size page records in one arena file.
//!
//! A [`DiskSpill`] owns one file, created with a unique name inside a directory the user
//! chose (`CacheConfig::spill_dir`) and removed when the spill is dropped. The file is an
//! array of records of `page_bytes` bytes each; a record is addressed by a [`SpillSlot`].
//! Freed records go to a free list and are reused before the file grows, so the file's size
//! is the high-water mark of pages spilled at once.
//!
//! I/O is positional (`pread`/`pwrite` through [`std::os::unix::fs::FileExt`] on unix; on
//! other platforms a seek followed by a read or write, which is equivalent here because every
//! method takes `&mut self`). Every I/O failure becomes [`Error::Spill`] naming the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The address of one page record in a [`DiskSpill`] file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpillSlot(u64);

impl SpillSlot {
    /// The record index (the record starts at byte `index * page_bytes` of the file).
    pub fn index(self) -> u64 {
        self.0
    }
}

/// Counters of a [`DiskSpill`] since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpillStats {
    /// Records holding a page now.
    pub live_pages: usize,
    /// Records in the file (live or free): the file's size in pages.
    pub file_pages: u64,
    /// Pages written.
    pub pages_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Pages read.
    pub pages_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

/// A disk arena of fixed-size page records (see the module documentation).
#[derive(Debug)]
pub struct DiskSpill {
    /// The file; deleted when dropped.
    file: tempfile::NamedTempFile,
    /// The file's path, for error messages.
    path: PathBuf,
    /// Bytes per record.
    page_bytes: usize,
    /// Whether each record holds a page.
    live: Vec<bool>,
    /// Records that are free for reuse.
    free: Vec<u64>,
    /// Counters.
    stats: SpillStats,
}

impl DiskSpill {
    /// Creates an empty spill file with a unique name inside `dir` for pages of `page_bytes`.
    ///
    /// Fails with [`Error::Spill`] if `dir` does not exist or is not writable, and with
    /// [`Error::Config`] if `page_bytes` is zero.
    pub fn new(dir: &Path, page_bytes: usize) -> Result<Self> {
        if page_bytes == 0 {
            return Err(Error::config("disk spill page size must be positive"));
        }
        let file = tempfile::Builder::new()
            .prefix("arkvale-spill-")
            .suffix(".pages")
            .tempfile_in(dir)
            .map_err(|source| Error::Spill {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = file.path().to_path_buf();
        Ok(DiskSpill {
            file,
            path,
            page_bytes,
            live: Vec::new(),
            free: Vec::new(),
            stats: SpillStats::default(),
        })
    }

    /// The path of the spill file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes per page record.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Counters since creation.
    pub fn stats(&self) -> SpillStats {
        self.stats
    }

    /// Writes one page (exactly `page_bytes` bytes) to a free record and returns its slot.
    ///
    /// On an I/O error the record stays free and nothing is lost but this write.
    pub fn write_page(&mut self, bytes: &[u8]) -> Result<SpillSlot> {
        self.check_len("write_page", bytes.len())?;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.live.push(false);
                self.stats.file_pages += 1;
                self.live.len() as u64 - 1
            }
        };
        if let Err(source) = write_at(self.file.as_file(), bytes, self.offset(index)) {
            self.free.push(index);
            return Err(self.io_error(source));
        }
        self.live[index as usize] = true;
        self.stats.live_pages += 1;
        self.stats.pages_written += 1;
        self.stats.bytes_written += bytes.len() as u64;
        Ok(SpillSlot(index))
    }

    /// Reads the page in `slot` into `out` (exactly `page_bytes` bytes).
    ///
    /// Fails with [`Error::InvalidRequest`] if `slot` holds no page.
    pub fn read_page(&mut self, slot: SpillSlot, out: &mut [u8]) -> Result<()> {
        self.check_len("read_page", out.len())?;
        if !self.is_live(slot) {
            return Err(Error::InvalidRequest(format!(
                "disk spill record {} holds no page",
                slot.0
            )));
        }
        read_at(self.file.as_file(), out, self.offset(slot.0)).map_err(|e| self.io_error(e))?;
        self.stats.pages_read += 1;
        self.stats.bytes_read += out.len() as u64;
        Ok(())
    }

    /// Releases the record in `slot` for reuse. Returns `false` (and does nothing) if the
    /// slot held no page.
    pub fn free(&mut self, slot: SpillSlot) -> bool {
        if !self.is_live(slot) {
            return false;
        }
        self.live[slot.0 as usize] = false;
        self.free.push(slot.0);
        self.stats.live_pages -= 1;
        true
    }

    /// Whether `slot` holds a page.
    pub fn is_live(&self, slot: SpillSlot) -> bool {
        usize::try_from(slot.0)
            .ok()
            .and_then(|i| self.live.get(i))
            .copied()
            .unwrap_or(false)
    }

    fn offset(&self, index: u64) -> u64 {
        index * self.page_bytes as u64
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.page_bytes {
            return Err(Error::shape(format!(
                "disk spill {what}: {len} bytes given, pages are {} bytes",
                self.page_bytes
            )));
        }
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> Error {
        Error::Spill {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(buf)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn missing_directory_is_a_spill_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("does-not-exist");
        match DiskSpill::new(&missing, 64) {
            Err(Error::Spill { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Error::Spill, got {other:?}"),
        }
    }

    #[test]
    fn file_lives_in_the_directory_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let spill = DiskSpill::new(dir.path(), 16).unwrap();
        let path = spill.path().to_path_buf();
        assert_eq!(path.parent(), Some(dir.path()));
        assert!(path.exists());
        let other = DiskSpill::new(dir.path(), 16).unwrap();
        assert_ne!(other.path(), path, "two spills share a file");
        drop(spill);
        assert!(!path.exists());
    }

    #[test]
    fn wrong_lengths_and_dead_slots_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = DiskSpill::new(dir.path(), 8).unwrap();
        assert!(matches!(spill.write_page(&[0; 7]), Err(Error::Shape(_))));
        let slot = spill.write_page(&[1; 8]).unwrap();
        assert!(matches!(
            spill.read_page(slot, &mut [0; 9]),
            Err(Error::Shape(_))
        ));
        assert!(spill.free(slot));
        assert!(!spill.free(slot), "double free accepted");
        assert!(matches!(
            spill.read_page(slot, &mut [0; 8]),
            Err(Error::InvalidRequest(_))
        ));
        assert!(!spill.free(SpillSlot(1000)));
    }

    /// One step of the random workload: write a page of `u8` seed, free the n-th live page,
    /// or read the n-th live page back.
    #[derive(Debug, Clone)]
    enum Op {
        Write(u8),
        Free(usize),
        Read(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u8>().prop_map(Op::Write),
            2 => any::<usize>().prop_map(Op::Free),
            2 => any::<usize>().prop_map(Op::Read),
        ]
    }

    fn page(seed: u8, serial: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| seed ^ (i as u8).wrapping_mul(31) ^ (serial as u8).wrapping_mul(7))
            .collect()
    }

    proptest! {
        #[test]
        fn pages_read_back_identical(page_bytes in 1usize..200, ops in prop::collection::vec(op(), 1..200)) {
            let dir = tempfile::tempdir().unwrap();
            let mut spill = DiskSpill::new(dir.path(), page_bytes).unwrap();
            let mut model: HashMap<SpillSlot, Vec<u8>> = HashMap::new();
            let mut order: Vec<SpillSlot> = Vec::new();
            let mut high_water = 0usize;
            for (serial, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write(seed) => {
                        let bytes = page(seed, serial, page_bytes);
                        let slot = spill.write_page(&bytes).unwrap();
                        prop_assert!(model.insert(slot, bytes).is_none(), "slot {slot:?} reused while live");
                        order.push(slot);
                    }
                    Op::Free(n) if !order.is_empty() => {
                        let slot = order.swap_remove(n % order.len());
                        prop_assert!(spill.free(slot));
                        model.remove(&slot);
                    }
                    Op::Read(n) if !order.is_empty() => {
                        let slot = order[n % order.len()];
                        let mut out = vec![0xAA; page_bytes];
                        spill.read_page(slot, &mut out).unwrap();
                        prop_assert_eq!(&out, &model[&slot]);
                    }
                    _ => {}
                }
                high_water = high_water.max(model.len());
                prop_assert_eq!(spill.stats().live_pages, model.len());
                prop_assert_eq!(spill.stats().file_pages as usize, high_water, "free records not reused");
            }
            for (slot, bytes) in &model {
                let mut out = vec![0; page_bytes];
                spill.read_page(*slot, &mut out).unwrap();
                prop_assert_eq!(&out, bytes);
            }
        }
    }
}
