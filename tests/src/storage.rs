//! Storage cases: the host backup tier ([`HostStore`]) and its disk spill driven through a
//! backend's asynchronous page copies. DESIGN.md §2: a recall restores bytes identical to
//! what was stored, and a page is never lost, whichever tier holds it; DESIGN.md §4: a full
//! host tier spills to disk or is a clear error.

use std::sync::Arc;

use arkvale_core::host_store::{BackupId, HostStore};
use arkvale_core::{Buffer, Device, Error, KvDtype, KvLayout};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::Case;

/// The storage cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "storage::backup_recall_round_trip",
            run: round_trip,
        },
        Case {
            name: "storage::host_overflow_spills_to_disk",
            run: overflow_spills,
        },
        Case {
            name: "storage::host_exhausted_without_spill_is_an_error",
            run: exhausted_without_spill,
        },
    ]
}

/// A random pool geometry and tier sizes.
#[derive(Debug, Clone)]
struct Params {
    layout: KvLayout,
    /// Slots in the device pool.
    slots: usize,
    /// Pages backed up in total.
    pages: usize,
    /// Pages the host tier holds.
    host_pages: usize,
    /// Pages per host chunk.
    chunk_pages: usize,
    /// Seed of the page contents.
    seed: u64,
}

fn params(
    pages: std::ops::Range<usize>,
    host_pages: std::ops::Range<usize>,
) -> impl Strategy<Value = Params> {
    (
        prop_oneof![Just(KvDtype::F32), Just(KvDtype::F16), Just(KvDtype::BF16)],
        1usize..3,
        prop_oneof![Just(8usize), Just(16)],
        prop_oneof![Just(4usize), Just(8), Just(16)],
        2usize..8,
        pages,
        host_pages,
        1usize..4,
        any::<u64>(),
    )
        .prop_map(
            |(kv_dtype, hg, page_size, head_dim, slots, pages, host_pages, chunk_pages, seed)| {
                Params {
                    layout: KvLayout {
                        kv_dtype,
                        heads_per_group: hg,
                        gqa: 1,
                        page_size,
                        head_dim,
                        groups: 1,
                    },
                    slots,
                    pages,
                    host_pages,
                    chunk_pages,
                    seed,
                }
            },
        )
}

/// Runs `body` on `cases` random parameter sets with a fresh seed (or `PROPTEST_RNG_SEED`).
fn check(
    cases: u32,
    strategy: impl Strategy<Value = Params>,
    body: impl Fn(&Params) -> Result<(), String>,
) -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |p| body(&p).map_err(TestCaseError::fail))
        .map_err(|e| e.to_string())
}

fn err(e: Error) -> String {
    e.to_string()
}

/// A device KV pool and a generator of page contents.
struct Rig<'a> {
    dev: &'a dyn Device,
    layout: KvLayout,
    pool: Buffer,
    slots: usize,
    rng: TestRng,
}

impl<'a> Rig<'a> {
    fn new(dev: &'a dyn Device, p: &Params) -> Result<Self, String> {
        let pool = dev
            .alloc(p.layout.kv_dtype.dtype(), p.slots * p.layout.slot_elems())
            .map_err(err)?;
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = (p.seed >> (8 * (i % 8))) as u8 ^ i as u8;
        }
        Ok(Rig {
            dev,
            layout: p.layout,
            pool,
            slots: p.slots,
            rng: TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        })
    }

    fn page_bytes(&self) -> usize {
        self.layout.slot_bytes()
    }

    /// A page of random non-zero values in [-4, 4], in the pool's storage type.
    fn random_page(&mut self) -> Vec<u8> {
        let values: Vec<f32> = (0..self.layout.slot_elems())
            .map(|_| {
                let v = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0;
                if v.abs() < 1e-2 { v + 0.5 } else { v }
            })
            .collect();
        arkvale_core::dtype::encode_f32(&values, self.layout.kv_dtype.dtype())
            .expect("KV dtypes are float types")
    }

    fn write_slot(&self, slot: u32, bytes: &[u8]) -> Result<(), String> {
        let offset = slot as usize * self.layout.slot_elems();
        self.dev.write(&self.pool, offset, bytes).map_err(err)
    }

    fn read_slot(&self, slot: u32) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; self.page_bytes()];
        let offset = slot as usize * self.layout.slot_elems();
        self.dev.read(&self.pool, offset, &mut out).map_err(err)?;
        Ok(out)
    }

    /// Overwrites every slot with fresh random values.
    fn poison(&mut self) -> Result<(), String> {
        for slot in 0..self.slots as u32 {
            let garbage = self.random_page();
            self.write_slot(slot, &garbage)?;
        }
        Ok(())
    }

    /// Reserves a backup per slot and starts one `backup_pages` copy per host chunk.
    fn backup(&self, store: &mut HostStore, slots: &[u32]) -> Result<Vec<BackupId>, String> {
        let mut pairs = Vec::with_capacity(slots.len());
        for &slot in slots {
            pairs.push((slot, store.reserve(self.dev).map_err(err)?));
        }
        for group in store.by_chunk(&pairs).map_err(err)? {
            let host = store.chunk(group.chunk).ok_or("missing host chunk")?;
            let event = self
                .dev
                .backup_pages(&self.layout, &self.pool, &group.copies, host)
                .map_err(err)?;
            for id in group.ids {
                store.set_backup_event(id, event.clone()).map_err(err)?;
            }
        }
        Ok(pairs.into_iter().map(|(_, id)| id).collect())
    }

    /// Recalls `(slot, backup)` pairs, one `recall_pages` copy per host chunk, and makes the
    /// compute queue wait for them.
    fn recall(&self, store: &mut HostStore, pairs: &[(u32, BackupId)]) -> Result<(), String> {
        for &(_, id) in pairs {
            store.prepare_recall(self.dev, id).map_err(err)?;
        }
        for group in store.by_chunk(pairs).map_err(err)? {
            let host = store.chunk(group.chunk).ok_or("missing host chunk")?;
            let event = self
                .dev
                .recall_pages(&self.layout, host, &group.copies, &self.pool)
                .map_err(err)?;
            for id in group.ids {
                store.set_recall_event(id, event.clone()).map_err(err)?;
            }
            self.dev.wait_on_device(&event).map_err(err)?;
        }
        Ok(())
    }

    /// Fills `slots` with random pages, backs them up and waits for the copies.
    fn store_pages(
        &mut self,
        store: &mut HostStore,
        slots: &[u32],
    ) -> Result<Vec<(BackupId, Vec<u8>)>, String> {
        let mut pages = Vec::with_capacity(slots.len());
        for &slot in slots {
            let bytes = self.random_page();
            self.write_slot(slot, &bytes)?;
            pages.push(bytes);
        }
        let ids = self.backup(store, slots)?;
        for &id in &ids {
            store.wait_complete(id).map_err(err)?;
        }
        Ok(ids.into_iter().zip(pages).collect())
    }
}

fn check_slot(rig: &Rig, slot: u32, expect: &[u8], what: &str) -> Result<(), String> {
    let got = rig.read_slot(slot)?;
    if got != expect {
        let first = got
            .iter()
            .zip(expect)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "{what}: slot {slot} differs from the stored page at byte {first} of {} ({:?})",
            expect.len(),
            rig.layout
        ));
    }
    Ok(())
}

fn check_backup(
    rig: &Rig,
    store: &mut HostStore,
    id: BackupId,
    expect: &[u8],
    what: &str,
) -> Result<(), String> {
    let mut got = vec![0u8; expect.len()];
    store.read_page(rig.dev, id, &mut got).map_err(err)?;
    if got != expect {
        return Err(format!(
            "{what}: backup {id:?} differs from the page it backed up"
        ));
    }
    Ok(())
}

/// Pages backed up into several host chunks, the pool poisoned, every page recalled into
/// another slot: the bytes are identical.
fn round_trip(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(12, params(1..2, 1..2), |p| {
        let mut rig = Rig::new(dev.as_ref(), p)?;
        let page_bytes = rig.page_bytes();
        let mut store = HostStore::with_chunk_bytes(
            page_bytes,
            4 * p.slots * page_bytes,
            p.chunk_pages * page_bytes,
            None,
        )
        .map_err(err)?;
        let slots: Vec<u32> = (0..p.slots as u32).collect();
        let pages = rig.store_pages(&mut store, &slots)?;
        for (id, bytes) in &pages {
            check_backup(&rig, &mut store, *id, bytes, "after backup")?;
        }
        rig.poison()?;
        // Page i goes to slot (i + shift) mod slots.
        let shift = (p.seed % p.slots as u64) as usize;
        let pairs: Vec<(u32, BackupId)> = pages
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (((i + shift) % p.slots) as u32, *id))
            .collect();
        rig.recall(&mut store, &pairs)?;
        for ((slot, _), (_, bytes)) in pairs.iter().zip(&pages) {
            check_slot(&rig, *slot, bytes, "after recall")?;
        }
        if store.stats().host_allocated_bytes > 4 * p.slots * page_bytes {
            return Err("host tier allocated beyond its budget".into());
        }
        Ok(())
    })
}

/// A host tier of a few pages and many more pages backed up: pages spill to disk, and every
/// page recalled (read back from disk where needed) is identical.
fn overflow_spills(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(8, params(10..28, 2..5), |p| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut rig = Rig::new(dev.as_ref(), p)?;
        let page_bytes = rig.page_bytes();
        let mut store = HostStore::with_chunk_bytes(
            page_bytes,
            p.host_pages * page_bytes,
            p.chunk_pages * page_bytes,
            Some(dir.path()),
        )
        .map_err(err)?;
        // Pending backups cannot move to disk, so a batch fits the host tier.
        let batch = p.slots.min(p.host_pages);
        let mut pages = Vec::new();
        while pages.len() < p.pages {
            let n = batch.min(p.pages - pages.len()) as u32;
            let slots: Vec<u32> = (0..n).collect();
            pages.extend(rig.store_pages(&mut store, &slots)?);
        }
        let stats = store.stats();
        if stats.spilled_pages == 0 || stats.pages_on_disk == 0 {
            return Err(format!(
                "{} pages in a {}-page host tier did not spill: {stats:?}",
                p.pages, p.host_pages
            ));
        }
        if stats.host_allocated_bytes > p.host_pages * page_bytes
            || stats.pages_in_host > p.host_pages
        {
            return Err(format!("host tier beyond its budget: {stats:?}"));
        }
        if stats.pages_in_host + stats.pages_on_disk != p.pages {
            return Err(format!("pages lost: {stats:?}"));
        }
        rig.poison()?;
        // Recall in reverse order (oldest pages were spilled first), in batches that fit.
        let order: Vec<usize> = (0..pages.len()).rev().collect();
        for chunk in order.chunks(batch) {
            let pairs: Vec<(u32, BackupId)> = chunk
                .iter()
                .enumerate()
                .map(|(slot, &i)| (slot as u32, pages[i].0))
                .collect();
            rig.recall(&mut store, &pairs)?;
            for (slot, &i) in chunk.iter().enumerate() {
                check_slot(
                    &rig,
                    slot as u32,
                    &pages[i].1,
                    &format!("recall of page {i}"),
                )?;
            }
        }
        if store.stats().restored_pages == 0 {
            return Err(format!(
                "no page was read back from disk: {:?}",
                store.stats()
            ));
        }
        for (i, (id, bytes)) in pages.iter().enumerate() {
            check_backup(&rig, &mut store, *id, bytes, &format!("backup of page {i}"))?;
        }
        for (id, _) in &pages {
            if !store.free(*id) {
                return Err(format!("backup {id:?} was not live"));
            }
        }
        let stats = store.stats();
        if stats.pages_in_host + stats.pages_on_disk != 0 {
            return Err(format!("pages left after freeing all: {stats:?}"));
        }
        Ok(())
    })
}

/// A full host tier without a spill directory is `Error::HostTierExhausted`, and the tier
/// keeps working once a page is freed.
fn exhausted_without_spill(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(4, params(1..2, 2..4), |p| {
        let mut rig = Rig::new(dev.as_ref(), p)?;
        let page_bytes = rig.page_bytes();
        let mut store =
            HostStore::new(page_bytes, p.host_pages * page_bytes + page_bytes / 2, None)
                .map_err(err)?;
        let slots: Vec<u32> = (0..p.host_pages.min(p.slots) as u32).collect();
        let mut pages = rig.store_pages(&mut store, &slots)?;
        while pages.len() < p.host_pages {
            pages.extend(rig.store_pages(&mut store, &[0])?);
        }
        match store.reserve(dev.as_ref()) {
            Err(Error::HostTierExhausted {
                capacity_pages,
                capacity_bytes,
            }) => {
                if capacity_pages != p.host_pages || capacity_bytes < p.host_pages * page_bytes {
                    return Err(format!(
                        "HostTierExhausted reports {capacity_pages} pages / {capacity_bytes} bytes, \
                         expected {} pages",
                        p.host_pages
                    ));
                }
            }
            Ok(id) => return Err(format!("reserve past the host budget gave {id:?}")),
            Err(e) => return Err(format!("expected HostTierExhausted, got {e}")),
        }
        let (freed, _) = pages.remove(0);
        store.free(freed);
        let more = rig.store_pages(&mut store, &[0])?;
        rig.poison()?;
        // The pool has at least two slots.
        rig.recall(&mut store, &[(0, more[0].0), (1, pages[0].0)])?;
        check_slot(&rig, 0, &more[0].1, "recall after reuse")?;
        check_slot(&rig, 1, &pages[0].1, "recall of an older page")?;
        Ok(())
    })
}
