//! Host store bookkeeping against a host-only mock device with hand-completed events: the
//! events run the copies they stand for when they complete, so a room reused or spilled too
//! early shows up as wrong bytes.

use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;

use super::*;
use crate::mock::{ManualEvent, MockDevice, mem};

const PAGE: usize = 48;

fn page(seed: u64) -> Vec<u8> {
    (0..PAGE as u64)
        .map(|i| (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 57)) as u8 ^ i as u8)
        .collect()
}

/// Reserves a page and backs it up asynchronously: the returned event writes the bytes
/// into the room when it completes.
fn backup_async(
    store: &mut HostStore,
    dev: &MockDevice,
    bytes: &[u8],
) -> (BackupId, Arc<ManualEvent>) {
    let id = store.reserve(dev).unwrap();
    let (host, offset) = store.location(id).unwrap();
    let (host, offset, bytes) = (mem(host), offset as usize, bytes.to_vec());
    let ev = ManualEvent::new(move || host.lock()[offset..offset + PAGE].copy_from_slice(&bytes));
    store.set_backup_event(id, ev.event()).unwrap();
    (id, ev)
}

/// Prepares and "issues" a recall: the event checks, when it completes, that the room still
/// holds `expect`, and records a failure otherwise.
fn recall_async(
    store: &mut HostStore,
    dev: &MockDevice,
    id: BackupId,
    expect: &[u8],
    failures: &Arc<Mutex<Vec<String>>>,
) -> Arc<ManualEvent> {
    let (chunk, offset) = store.prepare_recall(dev, id).unwrap();
    let host = mem(store.chunk(chunk).unwrap());
    let (offset, expect, failures) = (offset as usize, expect.to_vec(), failures.clone());
    let ev = ManualEvent::new(move || {
        if host.lock()[offset..offset + PAGE] != expect[..] {
            failures
                .lock()
                .push(format!("recall of {id:?} read a reused room"));
        }
    });
    store.set_recall_event(id, ev.event()).unwrap();
    ev
}

fn read(store: &mut HostStore, dev: &MockDevice, id: BackupId) -> Vec<u8> {
    let mut out = vec![0xEE; PAGE];
    store.read_page(dev, id, &mut out).unwrap();
    out
}

#[test]
fn host_memory_is_allocated_lazily_in_whole_page_chunks() {
    let dev = MockDevice::default();
    let mut store = HostStore::with_chunk_bytes(PAGE, 1 << 40, 10 * PAGE + 7, None).unwrap();
    assert_eq!(store.stats().host_allocated_bytes, 0);
    assert_eq!(dev.allocated.load(std::sync::atomic::Ordering::SeqCst), 0);
    let ids: Vec<_> = (0..11).map(|_| store.reserve(&dev).unwrap()).collect();
    assert_eq!(store.num_chunks(), 2);
    assert_eq!(store.stats().host_allocated_bytes, 20 * PAGE);
    assert_eq!(store.chunk_of(ids[9]), Some((0, 9 * PAGE as u64)));
    assert_eq!(store.chunk_of(ids[10]), Some((1, 0)));
    // The last chunk is cut to the budget.
    let mut store = HostStore::with_chunk_bytes(PAGE, 3 * PAGE + 5, 2 * PAGE, None).unwrap();
    for _ in 0..3 {
        store.reserve(&dev).unwrap();
    }
    assert_eq!(store.chunk(1).unwrap().bytes(), PAGE);
    assert_eq!(store.stats().host_allocated_bytes, 3 * PAGE);
}

#[test]
fn zero_capacity_and_missing_spill_dir_are_errors() {
    assert!(matches!(
        HostStore::new(PAGE, PAGE - 1, None),
        Err(Error::Config(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(
        HostStore::new(PAGE, 4 * PAGE, Some(&missing)),
        Err(Error::Spill { .. })
    ));
}

#[test]
fn full_host_tier_without_spill_is_host_tier_exhausted() {
    let dev = MockDevice::default();
    let mut store = HostStore::new(PAGE, 3 * PAGE, None).unwrap();
    let ids: Vec<_> = (0..3).map(|_| store.reserve(&dev).unwrap()).collect();
    match store.reserve(&dev) {
        Err(Error::HostTierExhausted {
            capacity_pages: 3,
            capacity_bytes,
        }) => {
            assert_eq!(capacity_bytes, 3 * PAGE)
        }
        other => panic!("expected HostTierExhausted, got {other:?}"),
    }
    assert!(store.free(ids[1]));
    store.reserve(&dev).unwrap();
}

#[test]
fn a_room_with_a_backup_in_flight_is_reused_only_after_it_completes() {
    let dev = MockDevice::default();
    let mut store = HostStore::new(PAGE, PAGE, None).unwrap();
    let (a, ev) = backup_async(&mut store, &dev, &page(1));
    assert!(!store.is_complete(a).unwrap());
    assert!(store.free(a));
    assert!(!store.free(a), "double free accepted");
    let b = store.reserve(&dev).unwrap();
    assert!(
        ev.was_waited(),
        "room reused without waiting for its backup"
    );
    assert_eq!(store.stats().room_waits, 1);
    store.write_page(&dev, b, &page(2)).unwrap();
    assert_eq!(read(&mut store, &dev, b), page(2));
    assert!(store.is_complete(a).is_err(), "a stale id is still known");
}

#[test]
fn lifecycle_errors_are_values() {
    let dev = MockDevice::default();
    let mut store = HostStore::new(PAGE, 4 * PAGE, None).unwrap();
    let id = store.reserve(&dev).unwrap();
    assert!(!store.is_complete(id).unwrap());
    assert!(matches!(
        store.wait_complete(id),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        store.prepare_recall(&dev, id),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        store.write_page(&dev, id, &[0; 3]),
        Err(Error::Shape(_))
    ));
    store.write_page(&dev, id, &page(3)).unwrap();
    assert!(store.is_complete(id).unwrap());
    let ev = ManualEvent::new(|| {});
    assert!(matches!(
        store.set_backup_event(id, ev.event()),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        store.write_page(&dev, id, &page(3)),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        store.read_page(&dev, id, &mut [0; 1]),
        Err(Error::Shape(_))
    ));
}

#[test]
fn spilling_skips_pages_in_flight_and_pinned_and_waits_for_recalls() {
    let dev = MockDevice::default();
    let dir = tempfile::tempdir().unwrap();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut store = HostStore::new(PAGE, 2 * PAGE, Some(dir.path())).unwrap();
    let spill_path = store.spill_path().unwrap().to_path_buf();
    assert!(spill_path.starts_with(dir.path()));

    // a: complete; b: backup in flight. c must spill a (the only complete page).
    let a = store.reserve(&dev).unwrap();
    store.write_page(&dev, a, &page(10)).unwrap();
    let (b, b_ev) = backup_async(&mut store, &dev, &page(11));
    let c = store.reserve(&dev).unwrap();
    assert!(!b_ev.was_waited());
    assert_eq!(store.chunk_of(a), None, "a should be on disk");
    assert_eq!(store.stats().spilled_pages, 1);
    store.write_page(&dev, c, &page(12)).unwrap();

    // Recall a: it comes back from disk and takes b's room once b completed (c is newer).
    b_ev.complete();
    let a_ev = recall_async(&mut store, &dev, a, &page(10), &failures);
    assert_eq!(
        store.chunk_of(b),
        None,
        "b (least recently used) should be on disk"
    );
    assert_eq!(store.stats().restored_pages, 1);

    // Pin c by preparing a recall without issuing it; a is being recalled. Reading b back
    // from disk has to wait for a's recall, never touch c's pinned room.
    store.prepare_recall(&dev, c).unwrap();
    let b_ev2 = recall_async(&mut store, &dev, b, &page(11), &failures);
    assert!(
        a_ev.was_waited(),
        "a's room reused while its recall was reading it"
    );
    assert!(store.chunk_of(c).is_some(), "a pinned page was spilled");
    assert_eq!(store.chunk_of(a), None);

    // Once the copies are done every page reads back identical, wherever it is.
    b_ev2.complete();
    assert!(store.unpin(c));
    for (id, seed) in [(a, 10), (b, 11), (c, 12)] {
        assert_eq!(read(&mut store, &dev, id), page(seed));
    }
    assert!(failures.lock().is_empty(), "{:?}", failures.lock());
    let stats = store.stats();
    assert_eq!((stats.pages_in_host, stats.pages_on_disk), (2, 1));
    drop(store);
    assert!(!spill_path.exists(), "spill file left behind");
}

#[test]
fn all_rooms_pinned_is_host_tier_exhausted_even_with_spill() {
    let dev = MockDevice::default();
    let dir = tempfile::tempdir().unwrap();
    let mut store = HostStore::new(PAGE, PAGE, Some(dir.path())).unwrap();
    let a = store.reserve(&dev).unwrap();
    assert!(matches!(
        store.reserve(&dev),
        Err(Error::HostTierExhausted { .. })
    ));
    store.write_page(&dev, a, &page(1)).unwrap();
    store.prepare_recall(&dev, a).unwrap();
    assert!(matches!(
        store.reserve(&dev),
        Err(Error::HostTierExhausted { .. })
    ));
    store.unpin(a);
    let b = store.reserve(&dev).unwrap();
    store.write_page(&dev, b, &page(2)).unwrap();
    assert_eq!(read(&mut store, &dev, a), page(1));
    assert_eq!(read(&mut store, &dev, b), page(2));
}

/// One step of the random workload; indices pick among live pages / outstanding events.
#[derive(Debug, Clone)]
enum Op {
    Backup { seed: u64, sync: bool },
    Complete(usize),
    Recall { n: usize, issue: bool },
    Free(usize),
    Read(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u64>(), any::<bool>()).prop_map(|(seed, sync)| Op::Backup { seed, sync }),
        3 => any::<usize>().prop_map(Op::Complete),
        3 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(n, issue)| Op::Recall { n, issue }),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn pages_are_never_lost_or_overwritten(
        capacity in 1usize..6,
        chunk_pages in 1usize..4,
        spill in any::<bool>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let dev = MockDevice::default();
        let dir = tempfile::tempdir().unwrap();
        let mut store = HostStore::with_chunk_bytes(
            PAGE,
            capacity * PAGE,
            chunk_pages * PAGE,
            spill.then(|| dir.path()),
        )
        .unwrap();
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut live: Vec<(BackupId, Vec<u8>)> = Vec::new();
        let mut events: Vec<Arc<ManualEvent>> = Vec::new();
        for op in ops {
            match op {
                Op::Backup { seed, sync } => {
                    let bytes = page(seed);
                    let in_host = live.iter().filter(|(id, _)| store.chunk_of(*id).is_some()).count();
                    if !spill && in_host == capacity {
                        let err = store.reserve(&dev);
                        prop_assert!(matches!(err, Err(Error::HostTierExhausted { .. })), "{err:?}");
                        continue;
                    }
                    if sync {
                        let id = store.reserve(&dev).unwrap();
                        store.write_page(&dev, id, &bytes).unwrap();
                        live.push((id, bytes));
                    } else {
                        let (id, ev) = backup_async(&mut store, &dev, &bytes);
                        events.push(ev);
                        live.push((id, bytes));
                    }
                }
                Op::Complete(n) if !events.is_empty() => {
                    events.swap_remove(n % events.len()).complete();
                }
                Op::Recall { n, issue } if !live.is_empty() => {
                    let (id, bytes) = live[n % live.len()].clone();
                    if issue {
                        events.push(recall_async(&mut store, &dev, id, &bytes, &failures));
                    } else {
                        store.prepare_recall(&dev, id).unwrap();
                        store.unpin(id);
                    }
                }
                Op::Free(n) if !live.is_empty() => {
                    let (id, _) = live.swap_remove(n % live.len());
                    prop_assert!(store.free(id));
                }
                Op::Read(n) if !live.is_empty() => {
                    let (id, bytes) = live[n % live.len()].clone();
                    prop_assert_eq!(read(&mut store, &dev, id), bytes);
                }
                _ => {}
            }
            let stats = store.stats();
            prop_assert_eq!(stats.pages_in_host + stats.pages_on_disk, live.len());
            prop_assert!(stats.pages_in_host <= capacity);
            prop_assert!(stats.host_allocated_bytes <= capacity * PAGE);
            prop_assert!(failures.lock().is_empty(), "{:?}", failures.lock());
        }
        for ev in events {
            ev.complete();
        }
        prop_assert!(failures.lock().is_empty(), "{:?}", failures.lock());
        for (id, bytes) in &live {
            prop_assert_eq!(&read(&mut store, &dev, *id), bytes);
        }
    }
}
