//! The one residency mechanism every policy shares: opening pages, sealing full pages
//! (digest + backup), evicting, recalling.

use std::time::Instant;

use super::Resources;
use super::table::{GroupTable, LayerPlan, PageEntry};
use crate::host_store::BackupId;
use crate::{Error, PageBudget, Result, SummarizeJob};

/// What sealing one full page produced.
pub(crate) struct Sealed {
    pub digest: Option<u32>,
    pub backup: Option<BackupId>,
}

impl Resources {
    /// Appends a page to `table` and gives it a slot. With `displace` and `B` pages resident
    /// in a budgeted layer, the page leaving the window gives up its slot (it is full and
    /// backed up); otherwise a free slot is taken.
    pub fn open_page(
        &mut self,
        plan: &LayerPlan,
        budget: &PageBudget,
        table: &mut GroupTable,
        displace: bool,
    ) -> Result<u32> {
        let new_index = table.pages.len();
        let slot = if displace && plan.budgeted() && table.resident >= budget.pages {
            let leaving = new_index
                .checked_sub(plan.window)
                .filter(|&i| i >= budget.sinks);
            let victim = leaving
                .filter(|&i| table.pages[i].slot.is_some())
                .or_else(|| {
                    // The page leaving the window was already evicted: take the oldest
                    // resident candidate instead (cannot happen while window >= 2 pages stay
                    // resident, kept as a defensive, deterministic fallback).
                    plan.candidates(budget, new_index)
                        .find(|&i| table.pages[i].slot.is_some())
                })
                .ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "no page can give up its slot: {} resident of budget {}",
                        table.resident, budget.pages
                    ))
                })?;
            self.evict(table, victim)?
        } else {
            self.slots.alloc()?
        };
        table.pages.push(PageEntry {
            slot: Some(slot),
            backup: None,
            digest: None,
            mass: 0.0,
        });
        table.resident += 1;
        self.reset_mask(slot)?;
        Ok(slot)
    }

    /// The slot a token at in-page offset `off` of page `page` goes to: the page's slot, or,
    /// for the first token of a page, the slot of a freshly opened page (see
    /// [`Resources::open_page`]).
    pub fn slot_for_token(
        &mut self,
        plan: &LayerPlan,
        budget: &PageBudget,
        table: &mut GroupTable,
        (page, off): (usize, usize),
        displace: bool,
    ) -> Result<u32> {
        if off == 0 {
            return self.open_page(plan, budget, table, displace);
        }
        table.pages[page]
            .slot
            .ok_or_else(|| Error::InvalidRequest(format!("last page {page} is not resident")))
    }

    /// Takes page `index` off the device and returns its slot (not given back to the pool).
    /// The page's backup must exist; the host waits for it if it is still in flight.
    pub fn evict(&mut self, table: &mut GroupTable, index: usize) -> Result<u32> {
        let page = &mut table.pages[index];
        let backup = page.backup.ok_or_else(|| {
            Error::InvalidRequest(format!("page {index} cannot be evicted: it has no backup"))
        })?;
        let slot = page.slot.take().ok_or_else(|| {
            Error::InvalidRequest(format!("page {index} cannot be evicted: not resident"))
        })?;
        self.host.wait_complete(backup)?;
        table.resident -= 1;
        self.stats.evictions += 1;
        Ok(slot)
    }

    /// Frees every resource of a page (sequence removal). A resident page's slot goes back to
    /// the pool only after its backup copy finished reading it, so no later write can race
    /// with the copy.
    pub fn release_page(&mut self, page: PageEntry) -> Result<()> {
        if let Some(slot) = page.slot {
            if let Some(b) = page.backup {
                self.host.wait_complete(b)?;
            }
            self.slots.free(slot);
        }
        if let (Some(d), Some(store)) = (page.digest, self.digests.as_mut()) {
            store.free(d);
        }
        if let Some(b) = page.backup {
            self.host.free(b);
        }
        Ok(())
    }

    /// Writes the digests of the given full pages (slots) and starts their backups, batched:
    /// one summarize launch and one backup copy per host chunk.
    pub fn seal(&mut self, plan: &LayerPlan, slots: &[u32]) -> Result<Vec<Sealed>> {
        let mut out: Vec<Sealed> = Vec::with_capacity(slots.len());
        let p = self.layout.page_size as u32;
        let mut jobs = Vec::new();
        for &slot in slots {
            let digest = match (plan.digest, self.digests.as_mut()) {
                (Some(_), Some(store)) => {
                    let d = store.alloc(self.dev.as_ref())?;
                    jobs.push(SummarizeJob {
                        slot,
                        digest: d,
                        len: p,
                    });
                    Some(d)
                }
                _ => None,
            };
            out.push(Sealed {
                digest,
                backup: None,
            });
        }
        if let (Some(kind), Some(store), false) =
            (plan.digest, self.digests.as_ref(), jobs.is_empty())
        {
            self.dev
                .summarize(&self.layout, kind, &self.pool, &jobs, store.buffer())?;
        }
        if plan.budgeted() {
            // Reserve and issue in batches no larger than the host tier, so that a full tier
            // can spill earlier (issued) backups to make room for later ones.
            let batch = self.host.capacity_pages().max(1);
            for (first, chunk) in slots.chunks(batch).enumerate() {
                let mut pairs = Vec::with_capacity(chunk.len());
                for (i, &slot) in chunk.iter().enumerate() {
                    match self.host.reserve(self.dev.as_ref()) {
                        Ok(id) => {
                            out[first * batch + i].backup = Some(id);
                            pairs.push((slot, id));
                        }
                        Err(e) => {
                            for (_, id) in pairs {
                                self.host.free(id);
                            }
                            return Err(e);
                        }
                    }
                }
                for group in self.host.by_chunk(&pairs)? {
                    let host = self.host.chunk(group.chunk).ok_or_else(missing_chunk)?;
                    let event =
                        self.dev
                            .backup_pages(&self.layout, &self.pool, &group.copies, host)?;
                    for id in group.ids {
                        self.host.set_backup_event(id, event.clone())?;
                    }
                    self.stats.bytes_d2h += (group.copies.len() * self.layout.slot_bytes()) as u64;
                }
            }
        }
        Ok(out)
    }

    /// Copies host backups into device slots — `(slot, backup)` pairs — and makes the compute
    /// queue wait for them (the host does not wait, except to read spilled pages from disk).
    pub fn recall(&mut self, copies: &[(u32, BackupId)]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // Batches no larger than the host tier: a spilled page must come back into a host room
        // before its recall, and rooms of issued recalls can be reused once those complete.
        for batch in copies.chunks(self.host.capacity_pages().max(1)) {
            for (i, &(_, id)) in batch.iter().enumerate() {
                if let Err(e) = self.host.prepare_recall(self.dev.as_ref(), id) {
                    for &(_, prepared) in &batch[..i] {
                        self.host.unpin(prepared);
                    }
                    return Err(e);
                }
            }
            for group in self.host.by_chunk(batch)? {
                let host = self.host.chunk(group.chunk).ok_or_else(missing_chunk)?;
                let event = self
                    .dev
                    .recall_pages(&self.layout, host, &group.copies, &self.pool)?;
                for id in group.ids {
                    self.host.set_recall_event(id, event.clone())?;
                }
                self.dev.wait_on_device(&event)?;
            }
        }
        self.stats.bytes_h2d += (copies.len() * self.layout.slot_bytes()) as u64;
        self.stats.time.recall += started.elapsed();
        Ok(())
    }

    /// Makes exactly the pages in `keep` resident in `table` (a prefill's final selection):
    /// evicts the others, then recalls the missing ones into the freed slots.
    pub fn make_resident_set(&mut self, table: &mut GroupTable, keep: &[bool]) -> Result<()> {
        let mut freed = Vec::new();
        for (i, &kept) in keep.iter().enumerate() {
            if !kept && table.pages[i].slot.is_some() {
                freed.push(self.evict(table, i)?);
            }
        }
        let mut copies = Vec::new();
        for (i, &kept) in keep.iter().enumerate() {
            if kept && table.pages[i].slot.is_none() {
                let slot = match freed.pop() {
                    Some(s) => s,
                    None => self.slots.alloc()?,
                };
                let backup = table.pages[i].backup.ok_or_else(|| {
                    Error::InvalidRequest(format!("evicted page {i} has no backup"))
                })?;
                table.pages[i].slot = Some(slot);
                table.resident += 1;
                copies.push((slot, backup));
            }
        }
        for slot in freed {
            self.slots.free(slot);
        }
        self.recall(&copies)
    }

    /// Marks every token of a freshly taken slot as kept (token-level policies only).
    pub fn reset_mask(&mut self, slot: u32) -> Result<()> {
        if let Some(mask) = &self.masks {
            let n = self.layout.tokens_per_slot();
            self.dev.write(mask, slot as usize * n, &vec![1u8; n])?;
        }
        Ok(())
    }
}

fn missing_chunk() -> Error {
    Error::InvalidRequest("host store returned a chunk it does not have".into())
}
