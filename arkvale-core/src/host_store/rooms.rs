//! Room management of the host store: taking a room for a page (reuse, fresh, new chunk,
//! wait, spill), choosing and moving spill victims, and reading spilled pages back.

use super::{Backup, BackupId, FreeRoom, HostStore, Place};
use crate::spill::SpillSlot;
use crate::{Device, Error, Event, Result};

impl HostStore {
    /// A room for a new or restored page: a free room whose copies are done, a fresh room,
    /// a newly allocated chunk, a free room after waiting for its copies, or the room of a
    /// page moved to disk — in that order.
    pub(super) fn take_room(&mut self, dev: &dyn Device) -> Result<usize> {
        let mut ready = None;
        for (i, free) in self.free_rooms.iter().enumerate() {
            if all_done(&free.pending)? {
                ready = Some(i);
                break;
            }
        }
        if let Some(free) = ready.and_then(|i| self.free_rooms.remove(i)) {
            return Ok(free.room);
        }
        if self.next_room < self.allocated_rooms() {
            self.next_room += 1;
            return Ok(self.next_room - 1);
        }
        if self.allocated_rooms() < self.capacity_pages {
            self.alloc_chunk(dev)?;
            self.next_room += 1;
            return Ok(self.next_room - 1);
        }
        if let Some(free) = self.free_rooms.pop_front() {
            self.stats.room_waits += 1;
            if let Err(e) = wait_all(&free.pending) {
                self.free_rooms.push_front(free);
                return Err(e);
            }
            return Ok(free.room);
        }
        if self.spill.is_some() {
            if let Some(index) = self.pick_victim()? {
                return self.spill_page(dev, index);
            }
        }
        Err(Error::HostTierExhausted {
            capacity_bytes: self.host_bytes,
            capacity_pages: self.capacity_pages,
        })
    }

    fn allocated_rooms(&self) -> usize {
        (self.chunks.len() * self.chunk_pages).min(self.capacity_pages)
    }

    fn alloc_chunk(&mut self, dev: &dyn Device) -> Result<()> {
        let pages = self
            .chunk_pages
            .min(self.capacity_pages - self.allocated_rooms());
        let bytes = pages * self.page_bytes;
        self.chunks.push(dev.alloc_host(bytes)?);
        self.stats.host_allocated_bytes += bytes;
        Ok(())
    }

    pub(super) fn room_location(&self, room: usize) -> (usize, u64) {
        let chunk = room / self.chunk_pages;
        let offset = (room % self.chunk_pages) * self.page_bytes;
        (chunk, offset as u64)
    }

    /// The least recently used page that may move to disk now; failing that, the least
    /// recently used one whose copies can be waited for (after waiting for them).
    fn pick_victim(&mut self) -> Result<Option<u32>> {
        let order: Vec<u32> = self.lru.values().copied().collect();
        for &index in &order {
            let entry = self.ids[index as usize]
                .entry
                .as_mut()
                .expect("lru holds live ids");
            if entry.pinned {
                continue;
            }
            if let Backup::InFlight(event) = &entry.backup {
                if !event.is_done()? {
                    continue;
                }
                entry.backup = Backup::Complete;
            }
            if !matches!(entry.backup, Backup::Complete) {
                continue;
            }
            prune_done(&mut entry.recalls)?;
            if entry.recalls.is_empty() {
                return Ok(Some(index));
            }
        }
        for &index in &order {
            let entry = self.ids[index as usize]
                .entry
                .as_mut()
                .expect("lru holds live ids");
            if entry.pinned || matches!(entry.backup, Backup::Pending) {
                continue;
            }
            self.stats.room_waits += 1;
            if let Backup::InFlight(event) = &entry.backup {
                event.0.wait()?;
            }
            entry.backup = Backup::Complete;
            wait_all(&entry.recalls)?;
            entry.recalls.clear();
            return Ok(Some(index));
        }
        Ok(None)
    }

    /// Moves page `index` (complete, no copy touching its room) to disk; returns its room.
    fn spill_page(&mut self, dev: &dyn Device, index: u32) -> Result<usize> {
        let entry = self.ids[index as usize]
            .entry
            .as_ref()
            .expect("victim is live");
        let (Place::Host(room), tick) = (entry.place, entry.tick) else {
            unreachable!("victims are in host memory");
        };
        let (chunk, offset) = self.room_location(room);
        self.scratch.resize(self.page_bytes, 0);
        dev.host_read(&self.chunks[chunk], offset as usize, &mut self.scratch)?;
        let spill = self.spill.as_mut().expect("spilling needs a spill tier");
        let slot = spill.write_page(&self.scratch)?;
        self.ids[index as usize]
            .entry
            .as_mut()
            .expect("victim is live")
            .place = Place::Disk(slot);
        self.lru.remove(&tick);
        self.stats.spilled_pages += 1;
        self.stats.spilled_bytes += self.page_bytes as u64;
        Ok(room)
    }

    /// Reads a spilled page back into a host room.
    pub(super) fn restore(
        &mut self,
        dev: &dyn Device,
        id: BackupId,
        slot: SpillSlot,
    ) -> Result<()> {
        let room = self.take_room(dev)?;
        let (chunk, offset) = self.room_location(room);
        let spill = self
            .spill
            .as_mut()
            .expect("pages reach disk only through the spill tier");
        self.scratch.resize(self.page_bytes, 0);
        let copied = spill
            .read_page(slot, &mut self.scratch)
            .and_then(|()| dev.host_write(&self.chunks[chunk], offset as usize, &self.scratch));
        if let Err(e) = copied {
            self.free_rooms.push_front(FreeRoom {
                room,
                pending: Vec::new(),
            });
            return Err(e);
        }
        spill.free(slot);
        let tick = self.next_tick();
        let entry = self.entry_mut(id)?;
        entry.place = Place::Host(room);
        entry.tick = tick;
        self.lru.insert(tick, id.index);
        self.stats.restored_pages += 1;
        self.stats.restored_bytes += self.page_bytes as u64;
        Ok(())
    }
}

/// Drops the events that completed.
pub(super) fn prune_done(events: &mut Vec<Event>) -> Result<()> {
    let mut err = None;
    events.retain(|e| match e.is_done() {
        Ok(done) => !done,
        Err(e) => {
            err.get_or_insert(e);
            true
        }
    });
    err.map_or(Ok(()), Err)
}

fn all_done(events: &[Event]) -> Result<bool> {
    for event in events {
        if !event.is_done()? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn wait_all(events: &[Event]) -> Result<()> {
    events.iter().try_for_each(|e| e.0.wait())
}
