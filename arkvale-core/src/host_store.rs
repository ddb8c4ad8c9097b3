//! The host backup tier: where full pages are backed up, and where recalls read them from.
//!
//! A [`HostStore`] holds page backups of a fixed size (`page_bytes`, the KV pool's
//! [`crate::KvLayout::slot_bytes`]) in host memory obtained from the device
//! ([`Device::alloc_host`]: pinned memory on CUDA) and, when that is full and a spill
//! directory is configured, in a [`DiskSpill`] file below it.
//!
//! # Host memory
//!
//! Host memory is a budget (`host_bytes`), allocated lazily in **chunks** of at most
//! [`DEFAULT_CHUNK_BYTES`] (a whole number of pages each), so a large budget costs nothing
//! until backups need it. A page's place in host memory is a **room**: a chunk index and a
//! byte offset in it. One `backup_pages` / `recall_pages` call targets one [`HostBuffer`], so
//! the cache manager groups the copies of one step per chunk ([`HostStore::by_chunk`]).
//!
//! # Life of a backup
//!
//! 1. [`HostStore::reserve`] gives a [`BackupId`] with a room (state *pending*: no bytes yet).
//! 2. The manager issues `backup_pages` into that room and hands the copy's event to
//!    [`HostStore::set_backup_event`] (state *in flight*), or fills the room synchronously
//!    with [`HostStore::write_page`] (state *complete*).
//! 3. Once the event completes the backup is *complete* ([`HostStore::is_complete`] polls,
//!    [`HostStore::wait_complete`] blocks).
//! 4. To recall it, [`HostStore::prepare_recall`] brings the page into host memory if it was
//!    spilled (reading it back from disk) and returns its room; the manager issues
//!    `recall_pages` from there and hands the event to [`HostStore::set_recall_event`].
//! 5. [`HostStore::free`] releases it.
//!
//! # Spilling
//!
//! When every room is taken, [`HostStore::reserve`] (and a `prepare_recall` that reads a
//! page back from disk) makes room by moving the **least recently used** page to disk
//! (recency: reserved or prepared for a recall). Only a page whose backup completed, that no
//! in-flight recall is reading and that is not prepared for a recall not yet issued may move;
//! if the only candidates have copies in flight, the oldest is waited for. Without a spill
//! directory a full host tier is [`Error::HostTierExhausted`].
//!
//! # Invariants
//!
//! * **A page is never lost:** once its backup completed, a page's bytes are in its host
//!   room or in a disk record, until it is freed. A move to disk writes the record before
//!   the room is given up, and a read-back writes the room before the record is freed; a
//!   failed move leaves the page where it was.
//! * **A page whose backup is incomplete is never spilled**, and nothing reads its room
//!   before the copy's event completed ([`HostStore::prepare_recall`] and
//!   [`HostStore::read_page`] wait for it).
//! * **A room is never reused while a copy may still touch it:** a room freed while a backup
//!   was writing it or a recall was reading it is handed out again only after those events
//!   completed (a room whose events are done is preferred; otherwise the host waits).
//! * Rooms handed out by `prepare_recall` stay put until `set_recall_event` (or
//!   [`HostStore::unpin`]), so several recalls can be prepared before they are issued.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use crate::spill::{DiskSpill, SpillSlot};
use crate::{Device, Error, Event, HostBuffer, Result};

mod rooms;
#[cfg(test)]
mod tests;

use rooms::prune_done;

/// The most bytes of host memory obtained from the device in one allocation.
pub const DEFAULT_CHUNK_BYTES: usize = 64 << 20;

/// Names one page backup in a [`HostStore`]. Ids of freed backups are never confused with
/// later ones (a generation counter tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackupId {
    index: u32,
    generation: u32,
}

/// The copies of one batched call that target one host chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCopies {
    /// The chunk ([`HostStore::chunk`]) every copy of this group targets.
    pub chunk: usize,
    /// `(slot, byte offset in the chunk)` pairs, as `backup_pages` / `recall_pages` take them.
    pub copies: Vec<(u32, u64)>,
    /// The backup of each copy, aligned with `copies`.
    pub ids: Vec<BackupId>,
}

/// Counters of a [`HostStore`]; page counts are current, the rest cumulative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostStoreStats {
    /// Pages whose bytes are in host memory (or are being backed up into it).
    pub pages_in_host: usize,
    /// Pages on disk.
    pub pages_on_disk: usize,
    /// Pages the host budget holds.
    pub capacity_pages: usize,
    /// Host memory obtained from the device so far.
    pub host_allocated_bytes: usize,
    /// Pages moved from host memory to disk.
    pub spilled_pages: u64,
    /// Bytes moved from host memory to disk.
    pub spilled_bytes: u64,
    /// Pages read back from disk into host memory for a recall.
    pub restored_pages: u64,
    /// Bytes read back from disk into host memory for a recall.
    pub restored_bytes: u64,
    /// Times the host blocked on a copy's event before it could reuse or spill a room.
    pub room_waits: u64,
}

/// Where a page's bytes are.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Host room (index over all chunks).
    Host(usize),
    /// Disk record.
    Disk(SpillSlot),
}

/// How far a page's backup got.
#[derive(Debug, Clone)]
enum Backup {
    /// Reserved; no copy issued yet.
    Pending,
    /// A copy is writing the room; complete when the event is.
    InFlight(Event),
    /// The bytes are in place.
    Complete,
}

#[derive(Debug)]
struct Entry {
    place: Place,
    backup: Backup,
    /// Recalls issued from the room that may not have finished reading it.
    recalls: Vec<Event>,
    /// Prepared for a recall that is not issued yet: the room must stay put.
    pinned: bool,
    /// Recency key in the LRU map (meaningful while in host memory).
    tick: u64,
}

#[derive(Debug, Default)]
struct IdSlot {
    generation: u32,
    entry: Option<Entry>,
}

/// A free room and the copies that may still touch it.
#[derive(Debug)]
struct FreeRoom {
    room: usize,
    pending: Vec<Event>,
}

/// The host backup tier with its optional disk spill (see the module documentation).
#[derive(Debug)]
pub struct HostStore {
    page_bytes: usize,
    host_bytes: usize,
    capacity_pages: usize,
    chunk_pages: usize,
    chunks: Vec<HostBuffer>,
    /// Rooms handed out at least once (`0..next_room`); the rest of the chunks is fresh.
    next_room: usize,
    free_rooms: VecDeque<FreeRoom>,
    ids: Vec<IdSlot>,
    free_ids: Vec<u32>,
    /// Pages in host memory, least recently used first: tick -> id index.
    lru: BTreeMap<u64, u32>,
    clock: u64,
    spill: Option<DiskSpill>,
    scratch: Vec<u8>,
    stats: HostStoreStats,
}

impl HostStore {
    /// A store for pages of `page_bytes` within `host_bytes` of host memory (allocated
    /// lazily, in chunks of at most [`DEFAULT_CHUNK_BYTES`]). With `spill_dir`, a spill file
    /// is created in that directory now (so a bad directory is reported here) and used when
    /// host memory is full; without it a full host tier is an error.
    pub fn new(page_bytes: usize, host_bytes: usize, spill_dir: Option<&Path>) -> Result<Self> {
        Self::with_chunk_bytes(page_bytes, host_bytes, DEFAULT_CHUNK_BYTES, spill_dir)
    }

    /// Like [`HostStore::new`] with chunks of at most `chunk_bytes` (at least one page each).
    pub fn with_chunk_bytes(
        page_bytes: usize,
        host_bytes: usize,
        chunk_bytes: usize,
        spill_dir: Option<&Path>,
    ) -> Result<Self> {
        if page_bytes == 0 {
            return Err(Error::config("host backup pages must have a positive size"));
        }
        let capacity_pages = host_bytes / page_bytes;
        if capacity_pages == 0 {
            return Err(Error::config(format!(
                "host_bytes ({host_bytes}) cannot hold a single page of {page_bytes} bytes"
            )));
        }
        let chunk_pages = (chunk_bytes / page_bytes).clamp(1, capacity_pages);
        let spill = match spill_dir {
            Some(dir) => Some(DiskSpill::new(dir, page_bytes)?),
            None => None,
        };
        Ok(HostStore {
            page_bytes,
            host_bytes,
            capacity_pages,
            chunk_pages,
            chunks: Vec::new(),
            next_room: 0,
            free_rooms: VecDeque::new(),
            ids: Vec::new(),
            free_ids: Vec::new(),
            lru: BTreeMap::new(),
            clock: 0,
            spill,
            scratch: Vec::new(),
            stats: HostStoreStats {
                capacity_pages,
                ..Default::default()
            },
        })
    }

    /// Bytes per page.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Pages the host budget holds.
    pub fn capacity_pages(&self) -> usize {
        self.capacity_pages
    }

    /// Whether full host memory spills to disk.
    pub fn has_spill(&self) -> bool {
        self.spill.is_some()
    }

    /// The spill file, if a spill directory was configured.
    pub fn spill_path(&self) -> Option<&Path> {
        self.spill.as_ref().map(|s| s.path())
    }

    /// Counters.
    pub fn stats(&self) -> HostStoreStats {
        let mut stats = self.stats;
        stats.pages_in_host = self.lru.len();
        stats.pages_on_disk = self.spill.as_ref().map_or(0, |s| s.stats().live_pages);
        stats
    }

    /// Reserves room in host memory for one page backup and returns its id (state
    /// *pending*; it counts as most recently used). When host memory is full, the least
    /// recently used spillable page moves to disk; without a spill tier, or when no page can
    /// move (all pending or prepared for recall), this is [`Error::HostTierExhausted`].
    pub fn reserve(&mut self, dev: &dyn Device) -> Result<BackupId> {
        if self.free_ids.is_empty() && self.ids.len() > u32::MAX as usize {
            return Err(Error::InvalidRequest(
                "more than 2^32 live host backups".into(),
            ));
        }
        let room = self.take_room(dev)?;
        let tick = self.next_tick();
        let index = self.free_ids.pop().unwrap_or_else(|| {
            self.ids.push(IdSlot::default());
            (self.ids.len() - 1) as u32
        });
        let slot = &mut self.ids[index as usize];
        slot.entry = Some(Entry {
            place: Place::Host(room),
            backup: Backup::Pending,
            recalls: Vec::new(),
            pinned: false,
            tick,
        });
        self.lru.insert(tick, index);
        Ok(BackupId {
            index,
            generation: slot.generation,
        })
    }

    /// The chunk and byte offset of a page that is in host memory (`None` if it is on disk
    /// or the id is unknown).
    pub fn chunk_of(&self, id: BackupId) -> Option<(usize, u64)> {
        match self.entry(id).ok()?.place {
            Place::Host(room) => Some(self.room_location(room)),
            Place::Disk(_) => None,
        }
    }

    /// Host chunk `index` (chunks are numbered in allocation order).
    pub fn chunk(&self, index: usize) -> Option<&HostBuffer> {
        self.chunks.get(index)
    }

    /// Chunks allocated so far.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// The host buffer and byte offset of a page that is in host memory.
    pub fn location(&self, id: BackupId) -> Option<(&HostBuffer, u64)> {
        let (chunk, offset) = self.chunk_of(id)?;
        Some((&self.chunks[chunk], offset))
    }

    /// Groups `(slot, backup)` pairs per host chunk, in chunk order (pairs keep their order
    /// within a chunk), ready for one `backup_pages` or `recall_pages` call per group. Every
    /// backup must be in host memory (after [`HostStore::reserve`] or
    /// [`HostStore::prepare_recall`]).
    pub fn by_chunk(&self, pairs: &[(u32, BackupId)]) -> Result<Vec<ChunkCopies>> {
        let mut groups: BTreeMap<usize, ChunkCopies> = BTreeMap::new();
        for &(slot, id) in pairs {
            let (chunk, offset) = self.chunk_of(id).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "host backup {id:?} is not in host memory (prepare_recall it first)"
                ))
            })?;
            let group = groups.entry(chunk).or_insert_with(|| ChunkCopies {
                chunk,
                copies: Vec::new(),
                ids: Vec::new(),
            });
            group.copies.push((slot, offset));
            group.ids.push(id);
        }
        Ok(groups.into_values().collect())
    }

    /// Records the event of the copy that backs up a pending page (state *in flight*).
    pub fn set_backup_event(&mut self, id: BackupId, event: Event) -> Result<()> {
        let entry = self.entry_mut(id)?;
        match entry.backup {
            Backup::Pending => {
                entry.backup = Backup::InFlight(event);
                Ok(())
            }
            _ => Err(Error::InvalidRequest(format!(
                "host backup {id:?} already has a backup copy"
            ))),
        }
    }

    /// Fills a pending page's room from host data, synchronously (state *complete*).
    pub fn write_page(&mut self, dev: &dyn Device, id: BackupId, bytes: &[u8]) -> Result<()> {
        self.check_len("write_page", bytes.len())?;
        let entry = self.entry(id)?;
        let (Backup::Pending, Place::Host(room)) = (&entry.backup, entry.place) else {
            return Err(Error::InvalidRequest(format!(
                "host backup {id:?} is not pending; write_page fills reserved rooms only"
            )));
        };
        let (chunk, offset) = self.room_location(room);
        dev.host_write(&self.chunks[chunk], offset as usize, bytes)?;
        self.entry_mut(id)?.backup = Backup::Complete;
        Ok(())
    }

    /// Whether the page's backup completed (polls its event; never blocks).
    pub fn is_complete(&self, id: BackupId) -> Result<bool> {
        match &self.entry(id)?.backup {
            Backup::Pending => Ok(false),
            Backup::InFlight(event) => event.is_done(),
            Backup::Complete => Ok(true),
        }
    }

    /// Blocks until the page's backup completed. A pending page (no copy issued) is an error.
    pub fn wait_complete(&mut self, id: BackupId) -> Result<()> {
        let entry = self.entry_mut(id)?;
        match &entry.backup {
            Backup::Pending => Err(Error::InvalidRequest(format!(
                "host backup {id:?} has no backup copy to wait for"
            ))),
            Backup::InFlight(event) => {
                event.0.wait()?;
                entry.backup = Backup::Complete;
                Ok(())
            }
            Backup::Complete => Ok(()),
        }
    }

    /// Makes sure a backed-up page is in host memory and returns its chunk and byte offset
    /// for a `recall_pages` call. A spilled page is read back from disk (which may spill
    /// another page); a backup still in flight is waited for. The page becomes the most
    /// recently used and its room stays put until [`HostStore::set_recall_event`] or
    /// [`HostStore::unpin`].
    pub fn prepare_recall(&mut self, dev: &dyn Device, id: BackupId) -> Result<(usize, u64)> {
        self.wait_complete(id)?;
        if let Place::Disk(slot) = self.entry(id)?.place {
            self.restore(dev, id, slot)?;
        }
        let tick = self.next_tick();
        let entry = self.entry_mut(id)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        entry.pinned = true;
        let Place::Host(room) = entry.place else {
            return Err(Error::InvalidRequest(format!(
                "host backup {id:?} could not be brought back into host memory"
            )));
        };
        self.lru.remove(&old);
        self.lru.insert(tick, id.index);
        Ok(self.room_location(room))
    }

    /// Records the event of a recall issued from the page's room: the room is not reused or
    /// spilled before it completes. Unpins the page.
    pub fn set_recall_event(&mut self, id: BackupId, event: Event) -> Result<()> {
        let entry = self.entry_mut(id)?;
        if !matches!(entry.place, Place::Host(_)) {
            return Err(Error::InvalidRequest(format!(
                "host backup {id:?} is on disk; prepare_recall it before recalling"
            )));
        }
        prune_done(&mut entry.recalls)?;
        entry.recalls.push(event);
        entry.pinned = false;
        Ok(())
    }

    /// Lets a page prepared for a recall that will not be issued move again. Returns whether
    /// the id was known.
    pub fn unpin(&mut self, id: BackupId) -> bool {
        match self.entry_mut(id) {
            Ok(entry) => {
                entry.pinned = false;
                true
            }
            Err(_) => false,
        }
    }

    /// Releases a page: its disk record at once, its room once the copies that may touch it
    /// (a backup in flight, recalls reading it) completed. Returns `false` (and does nothing)
    /// for an unknown or already freed id. A page whose backup copy was issued must have its
    /// event recorded ([`HostStore::set_backup_event`]) before it is freed.
    pub fn free(&mut self, id: BackupId) -> bool {
        let Some(slot) = self.ids.get_mut(id.index as usize) else {
            return false;
        };
        if slot.generation != id.generation {
            return false;
        }
        let Some(entry) = slot.entry.take() else {
            return false;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free_ids.push(id.index);
        match entry.place {
            Place::Host(room) => {
                self.lru.remove(&entry.tick);
                let mut pending = entry.recalls;
                if let Backup::InFlight(event) = entry.backup {
                    pending.push(event);
                }
                self.free_rooms.push_back(FreeRoom { room, pending });
            }
            Place::Disk(slot) => {
                if let Some(spill) = &mut self.spill {
                    spill.free(slot);
                }
            }
        }
        true
    }

    /// Copies a page's bytes (`page_bytes`) into `out`, wherever they live, waiting for its
    /// backup if it is in flight. For tests and debugging; it does not move the page.
    pub fn read_page(&mut self, dev: &dyn Device, id: BackupId, out: &mut [u8]) -> Result<()> {
        self.check_len("read_page", out.len())?;
        self.wait_complete(id)?;
        match self.entry(id)?.place {
            Place::Host(room) => {
                let (chunk, offset) = self.room_location(room);
                dev.host_read(&self.chunks[chunk], offset as usize, out)
            }
            Place::Disk(slot) => match &mut self.spill {
                Some(spill) => spill.read_page(slot, out),
                None => Err(Error::InvalidRequest(format!(
                    "host backup {id:?} is on disk but no spill tier exists"
                ))),
            },
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn entry(&self, id: BackupId) -> Result<&Entry> {
        self.ids
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.entry.as_ref())
            .ok_or_else(|| unknown(id))
    }

    fn entry_mut(&mut self, id: BackupId) -> Result<&mut Entry> {
        self.ids
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.entry.as_mut())
            .ok_or_else(|| unknown(id))
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.page_bytes {
            return Err(Error::shape(format!(
                "host store {what}: {len} bytes given, pages are {} bytes",
                self.page_bytes
            )));
        }
        Ok(())
    }
}

fn unknown(id: BackupId) -> Error {
    Error::InvalidRequest(format!("unknown or freed host backup {id:?}"))
}
