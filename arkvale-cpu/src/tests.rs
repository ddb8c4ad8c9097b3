//! `CpuDevice` against the scalar reference (`arkvale_core::reference`) where the CPU promises
//! more than the cross-backend suite (`arkvale-tests`) checks, and the behaviour only the CPU
//! backend has.
//!
//! The suite's op-level and dense cases run here too, on both execution paths of `crate::par`
//! (inline on the calling thread, and fanned out over a 3-thread pool;
//! `suite_cases_pass_inline_and_on_the_pool`); the suite itself runs them on the default
//! device. What the suite covers is not repeated here: estimate, top-k and backup/recall have
//! no tests of their own in this file.
//!
//! What stays, and why:
//! * append with **colliding destinations** (the later one must win) and decode attention and
//!   token weights with **several rows writing one output** — the contract leaves their order to
//!   the backend, so the suite never issues them; the CPU's order is the reference's;
//! * summarize **bit for bit** (the suite allows `1e-5`), and attention over f16/bf16 storage
//!   within `ATTN_TOL = 1e-5` (the suite allows `1e-2` there because GPU backends may compute
//!   in half precision; the CPU computes in f32 over the same stored values);
//! * bad input, recall hazards, copy-worker ordering and arena accounting.
//!
//! Inputs are random and non-zero (magnitudes in [0.05, 1], both signs), drawn from a fresh
//! seed per case; every output is poisoned with NaN first, so an element the device forgot to
//! write (or wrote where it must not) shows up. Shapes cover GQA ratios 1, 3, 4, 8, one to
//! three groups of one to three KV heads, pages of 8, 16 and 32 tokens, head dims 1..=40 and
//! every storage type. Attention must agree within `|a - b| <= 1e-5 * (1 + |b|)` (f32 on the
//! CPU, f64 in the reference; values are at most 1 in magnitude).

use std::sync::Arc;

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, Buffer, DType, Device, DeviceExt, DigestKind, Error,
    EstimateJob, KvDtype, KvLayout, ScoreAgg, SummarizeJob, TopkSegment, reference,
};
use proptest::prelude::*;

use arkvale_testkit::XorShift as Rng;

use crate::CpuDevice;

/// Attention tolerance, relative to `1 + |reference|` (see the module doc).
const ATTN_TOL: f32 = 1e-5;

/// A random pool geometry, pool size and data seed.
#[derive(Debug, Clone)]
struct Case {
    l: KvLayout,
    slots: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let gqa = prop::sample::select(vec![1usize, 3, 4, 8]);
    let page = prop::sample::select(vec![8usize, 16, 32]);
    let dtype = prop::sample::select(vec![KvDtype::F32, KvDtype::F16, KvDtype::BF16]);
    (
        gqa,
        1usize..=3,
        1usize..=3,
        page,
        1usize..=40,
        dtype,
        2usize..=6,
        any::<u64>(),
    )
        .prop_map(
            |(gqa, hg, groups, page_size, head_dim, kv_dtype, slots, seed)| Case {
                l: KvLayout {
                    kv_dtype,
                    heads_per_group: hg,
                    gqa,
                    page_size,
                    head_dim,
                    groups,
                },
                slots,
                seed: seed | 1,
            },
        )
}

/// A three-thread device; half the cases force every op onto the rayon pool, the other half
/// run every op inline on the calling thread (the two execution paths of `crate::par`).
fn dev_for(c: &Case) -> Arc<dyn Device> {
    let mut dev = CpuDevice::new(Some(3)).expect("cpu device");
    dev.set_inline_work(if c.seed & 2 == 0 { 0 } else { usize::MAX });
    Arc::new(dev)
}

fn dev() -> Arc<dyn Device> {
    let mut dev = CpuDevice::new(Some(3)).expect("cpu device");
    dev.set_inline_work(0);
    Arc::new(dev)
}

/// A pool filled with random values: the device buffer and the reference's rounded values.
fn random_pool(dev: &Arc<dyn Device>, c: &Case, rng: &mut Rng) -> (Buffer, Vec<f32>) {
    let vals = rng.values(c.slots * c.l.slot_elems());
    let buf = dev.upload_f32(&vals, c.l.kv_dtype.dtype()).unwrap();
    let rounded = dev.download_f32(&buf).unwrap();
    assert!(
        vals.iter()
            .zip(&rounded)
            .all(|(a, b)| c.l.kv_dtype.round(*a) == *b)
    );
    (buf, rounded)
}

/// Bitwise equality, NaN matching NaN.
fn same(a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            "at {}: {} vs {}",
            i,
            x,
            y
        );
    }
    Ok(())
}

/// Equality within `tol * (1 + |b|)`, NaN matching NaN (an unwritten poisoned element).
fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * (1.0 + y.abs());
        prop_assert!(ok, "at {}: device {} vs reference {}", i, x, y);
    }
    Ok(())
}

/// A random attention problem over the pool: pages (some partial or empty, slots may repeat),
/// rows over sub-ranges of the page list with random positions (some before a page starts),
/// distinct query rows unless `dup_rows`.
struct AttnCase {
    rows: Vec<AttnRow>,
    pages: Vec<AttnPage>,
    n_q: usize,
    scale: f32,
    mask: Vec<u8>,
}

fn attn_case(c: &Case, rng: &mut Rng, dup_rows: bool) -> AttnCase {
    let p = c.l.page_size;
    let n_pages = 1 + rng.below(8);
    let mut base = rng.below(3 * p) as u32;
    let pages: Vec<AttnPage> = (0..n_pages)
        .map(|_| {
            let len = match rng.below(5) {
                0 => rng.below(p + 1),
                _ => p,
            } as u32;
            let page = AttnPage {
                slot: rng.below(c.slots) as u32,
                base_pos: base,
                len,
            };
            base += p as u32;
            page
        })
        .collect();
    let n_rows = 1 + rng.below(6);
    let n_q = if dup_rows {
        1 + rng.below(n_rows)
    } else {
        n_rows
    };
    let rows = (0..n_rows)
        .map(|r| {
            let start = rng.below(n_pages);
            let count = rng.below(n_pages - start + 1);
            AttnRow {
                q_row: if dup_rows {
                    rng.below(n_q) as u32
                } else {
                    r as u32
                },
                group: rng.below(c.l.groups) as u32,
                pos: rng.below(base as usize + p) as u32,
                page_start: start as u32,
                page_count: count as u32,
            }
        })
        .collect();
    let mask = (0..c.slots * c.l.tokens_per_slot())
        .map(|_| (rng.below(4) != 0) as u8)
        .collect();
    let scale = (0.5 + rng.below(100) as f32 / 66.0) / (c.l.head_dim as f32).sqrt();
    AttnCase {
        rows,
        pages,
        n_q,
        scale,
        mask,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn append_kv_matches_reference_bitwise(c in case()) {
        let (dev, mut rng) = (dev_for(&c), Rng(c.seed));
        let (pool, mut want) = random_pool(&dev, &c, &mut rng);
        let tokens = 1 + rng.below(5);
        let row = c.l.kv_heads() * c.l.head_dim;
        let (k, v) = (rng.values(tokens * row), rng.values(tokens * row));
        // Random destinations; collisions happen and the later one must win.
        let dests: Vec<AppendDest> = (0..1 + rng.below(12))
            .map(|_| AppendDest {
                token: rng.below(tokens) as u32,
                group: rng.below(c.l.groups) as u32,
                slot: rng.below(c.slots) as u32,
                pos: rng.below(c.l.page_size) as u32,
            })
            .collect();
        let (kb, vb) = (dev.upload_f32(&k, DType::F32).unwrap(), dev.upload_f32(&v, DType::F32).unwrap());
        dev.append_kv(&c.l, &pool, &kb, &vb, &dests).unwrap();
        reference::append_kv(&c.l, &mut want, &k, &v, &dests);
        same(&dev.download_f32(&pool).unwrap(), &want)?;
    }

    #[test]
    fn summarize_matches_reference_bitwise_for_every_kind(c in case()) {
        let (dev, mut rng) = (dev_for(&c), Rng(c.seed));
        let (pool, vals) = random_pool(&dev, &c, &mut rng);
        let n_dig = 1 + rng.below(6);
        let jobs: Vec<SummarizeJob> = (0..1 + rng.below(6))
            .map(|_| SummarizeJob {
                slot: rng.below(c.slots) as u32,
                digest: rng.below(n_dig) as u32,
                len: 1 + rng.below(c.l.page_size) as u32,
            })
            .collect();
        for kind in DigestKind::ALL {
            let n = n_dig * c.l.heads_per_group * kind.len(c.l.head_dim);
            let digests = dev.upload_f32(&vec![f32::NAN; n], DType::F32).unwrap();
            dev.summarize(&c.l, kind, &pool, &jobs, &digests).unwrap();
            let mut want = vec![f32::NAN; n];
            reference::summarize(&c.l, kind, &vals, &jobs, &mut want);
            same(&dev.download_f32(&digests).unwrap(), &want)?;
        }
    }

    #[test]
    fn decode_attention_matches_reference(c in case(), masked in any::<bool>()) {
        let (dev, mut rng) = (dev_for(&c), Rng(c.seed));
        let (pool, vals) = random_pool(&dev, &c, &mut rng);
        let a = attn_case(&c, &mut rng, true);
        let qn = a.n_q * c.l.q_heads() * c.l.head_dim;
        let q = rng.values(qn);
        let qb = dev.upload_f32(&q, DType::F32).unwrap();
        let mb = dev.alloc(DType::U8, a.mask.len()).unwrap();
        dev.write(&mb, 0, &a.mask).unwrap();
        let out = dev.upload_f32(&vec![f32::NAN; qn], DType::F32).unwrap();
        let mask = masked.then_some(&mb);
        dev.decode_attention(&c.l, &pool, &qb, &a.rows, &a.pages, mask, a.scale, &out, None).unwrap();
        let mut want = vec![f32::NAN; qn];
        let mask_ref = masked.then_some(&a.mask[..]);
        reference::attention(&c.l, &vals, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want);
        close(&dev.download_f32(&out).unwrap(), &want, ATTN_TOL)?;
    }

    #[test]
    fn prefill_over_several_calls_then_finalize_matches_reference(c in case(), masked in any::<bool>()) {
        let (dev, mut rng) = (dev_for(&c), Rng(c.seed));
        let (pool, vals) = random_pool(&dev, &c, &mut rng);
        let a = attn_case(&c, &mut rng, false);
        let qn = a.n_q * c.l.q_heads() * c.l.head_dim;
        let q = rng.values(qn);
        let qb = dev.upload_f32(&q, DType::F32).unwrap();
        let mb = dev.alloc(DType::U8, a.mask.len()).unwrap();
        dev.write(&mb, 0, &a.mask).unwrap();
        let mask = masked.then_some(&mb);
        let state = dev.alloc_attn_state(a.n_q, c.l.q_heads(), c.l.head_dim).unwrap();
        // Stream each row's pages through in pieces: call i takes the i-th piece of each row.
        let calls = 1 + rng.below(3);
        for i in 0..calls {
            let rows: Vec<AttnRow> = a.rows.iter().map(|r| {
                let lo = r.page_count * i as u32 / calls as u32;
                let hi = r.page_count * (i as u32 + 1) / calls as u32;
                AttnRow { page_start: r.page_start + lo, page_count: hi - lo, ..*r }
            }).collect();
            dev.prefill_attention(&c.l, &pool, &qb, &rows, &a.pages, mask, a.scale, &state).unwrap();
        }
        let out = dev.upload_f32(&vec![f32::NAN; qn], DType::F32).unwrap();
        dev.attention_finalize(&c.l, &state, &a.rows, &out).unwrap();
        let mut want = vec![f32::NAN; qn];
        let mask_ref = masked.then_some(&a.mask[..]);
        reference::attention(&c.l, &vals, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want);
        close(&dev.download_f32(&out).unwrap(), &want, ATTN_TOL)?;
    }

    #[test]
    fn attention_weights_match_reference(c in case(), masked in any::<bool>()) {
        let (dev, mut rng) = (dev_for(&c), Rng(c.seed));
        let (pool, vals) = random_pool(&dev, &c, &mut rng);
        let a = attn_case(&c, &mut rng, true);
        let q = rng.values(a.n_q * c.l.q_heads() * c.l.head_dim);
        let qb = dev.upload_f32(&q, DType::F32).unwrap();
        let mb = dev.alloc(DType::U8, a.mask.len()).unwrap();
        dev.write(&mb, 0, &a.mask).unwrap();
        // Weights start non-zero: the op adds to them.
        let w0: Vec<f32> = rng.values(a.pages.len() * c.l.tokens_per_slot()).iter().map(|x| x.abs()).collect();
        let wb = dev.upload_f32(&w0, DType::F32).unwrap();
        let mask = masked.then_some(&mb);
        dev.attention_weights(&c.l, &pool, &qb, &a.rows, &a.pages, mask, a.scale, &wb).unwrap();
        let mut want = w0.clone();
        let mask_ref = masked.then_some(&a.mask[..]);
        reference::attention_weights(&c.l, &vals, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want);
        close(&dev.download_f32(&wb).unwrap(), &want, ATTN_TOL)?;
    }

}

/// A u32 that is usually small (often valid) and sometimes huge.
fn index() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..12, 1 => any::<u32>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary descriptors: every op returns `Ok` or `Err`, never panics.
    #[test]
    fn garbage_descriptors_never_panic(
        c in case(),
        a in prop::array::uniform5(index()),
        b in prop::array::uniform5(index()),
    ) {
        let dev = dev();
        let l = c.l;
        let pool = dev.alloc(l.kv_dtype.dtype(), c.slots * l.slot_elems()).unwrap();
        let f = dev.alloc(DType::F32, 4 * l.q_heads() * l.head_dim).unwrap();
        let g = dev.alloc(DType::F32, 4 * l.q_heads() * l.head_dim).unwrap();
        let u = dev.alloc(DType::U32, 16).unwrap();
        let m = dev.alloc(DType::U8, c.slots * l.tokens_per_slot()).unwrap();
        let host = dev.alloc_host(2 * l.slot_bytes()).unwrap();
        let dest = AppendDest { token: a[0], group: a[1], slot: a[2], pos: a[3] };
        let _ = dev.append_kv(&l, &pool, &f, &g, &[dest]);
        let job = SummarizeJob { slot: a[0], digest: a[1], len: a[2] };
        let _ = dev.summarize(&l, DigestKind::SphereMean, &pool, &[job], &f);
        let est = EstimateJob { q_row: a[0], group: a[1], digest: a[2] };
        let _ = dev.estimate(&l, DigestKind::CuboidMax, ScoreAgg::Max, &f, &g, &[est], &u);
        let _ = dev.estimate(&l, DigestKind::CuboidMax, ScoreAgg::Max, &f, &g, &[est], &f);
        let seg = TopkSegment { start: a[0], len: a[1], k: a[2] };
        let _ = dev.topk(&f, &[seg], &u);
        let row = AttnRow { q_row: a[0], group: a[1], pos: a[2], page_start: a[3], page_count: a[4] };
        let page = AttnPage { slot: b[0], base_pos: b[1], len: b[2] };
        let pages = [page, AttnPage { slot: b[3], base_pos: b[4], len: b[0] }];
        let _ = dev.decode_attention(&l, &pool, &f, &[row], &pages, Some(&m), 1.0, &g, None);
        let state = dev.alloc_attn_state(1 + b[3] as usize % 4, l.q_heads(), l.head_dim).unwrap();
        let _ = dev.prefill_attention(&l, &pool, &f, &[row], &pages, None, 1.0, &state);
        let _ = dev.attention_finalize(&l, &state, &[row], &g);
        let _ = dev.attention_weights(&l, &pool, &f, &[row], &pages, Some(&m), 1.0, &g);
        let _ = dev.backup_pages(&l, &pool, &[(a[0], b[0] as u64)], &host).map(|e| dev.wait_host(&e));
        let _ = dev.recall_pages(&l, &host, &[(a[1], b[1] as u64)], &pool).map(|e| dev.wait_on_device(&e));
        let _ = dev.copy(&f, a[0] as usize, &g, a[1] as usize, b[0] as usize);
        let _ = dev.fill_f32(&f, a[0] as usize, b[0] as usize, 1.0);
        dev.synchronize().unwrap();
    }
}

#[test]
fn write_read_copy_fill_round_trip() {
    let dev = dev();
    let b = dev
        .upload_f32(&[1.0, 2.0, 3.0, 4.0, 5.0], DType::F32)
        .unwrap();
    dev.copy(&b, 0, &b, 2, 3).unwrap(); // overlapping, within one buffer
    assert_eq!(dev.download_f32(&b).unwrap(), [1.0, 2.0, 1.0, 2.0, 3.0]);
    let c = dev.alloc(DType::F32, 4).unwrap();
    dev.copy(&b, 1, &c, 0, 4).unwrap();
    dev.fill_f32(&c, 1, 2, -0.5).unwrap();
    assert_eq!(dev.download_f32(&c).unwrap(), [2.0, -0.5, -0.5, 3.0]);
    let h = dev.upload_f32(&[1.5, -2.0], DType::BF16).unwrap();
    let mut raw = [0u8; 4];
    dev.read(&h, 0, &mut raw).unwrap();
    assert_eq!(raw, [0xc0, 0x3f, 0x00, 0xc0]);
    let host = dev.alloc_host(6).unwrap();
    dev.host_write(&host, 2, &raw).unwrap();
    let mut back = [0u8; 6];
    dev.host_read(&host, 0, &mut back).unwrap();
    assert_eq!(back, [0, 0, 0xc0, 0x3f, 0x00, 0xc0]);
}

#[test]
fn bad_handles_and_descriptors_are_errors_not_panics() {
    // Bad descriptors, dtypes, ranges and aliasing are rejected by core's checked `Device`
    // layer before the backend runs (tested once in `arkvale-core`'s `backend` tests); what
    // is left to the backend is the origin of its handles and events.
    let (a, b) = (
        CpuDevice::new(Some(1)).unwrap(),
        CpuDevice::new(Some(1)).unwrap(),
    );
    let l = KvLayout {
        kv_dtype: KvDtype::F16,
        heads_per_group: 1,
        gqa: 2,
        page_size: 8,
        head_dim: 4,
        groups: 1,
    };
    let pool = a.alloc(DType::F16, 2 * l.slot_elems()).unwrap();
    let foreign = b.alloc(DType::F32, 16).unwrap();
    let is_device = |r: arkvale_core::Result<()>| matches!(r, Err(Error::Device { .. }));
    assert!(is_device(a.fill_f32(&foreign, 0, 1, 0.0)));
    assert!(is_device(a.read(&foreign, 0, &mut [0u8; 4])));
    let k = a.alloc(DType::F32, 8).unwrap();
    let dest = AppendDest {
        token: 0,
        group: 0,
        slot: 1,
        pos: 7,
    };
    assert!(a.append_kv(&l, &pool, &k, &k, &[dest]).is_ok());
    assert!(is_device(a.append_kv(&l, &pool, &foreign, &k, &[dest])));
    let q = a.alloc(DType::F32, 8).unwrap();
    let out = a.alloc(DType::F32, 8).unwrap();
    let row = AttnRow {
        q_row: 0,
        group: 0,
        pos: 9,
        page_start: 0,
        page_count: 1,
    };
    let page = AttnPage {
        slot: 1,
        base_pos: 0,
        len: 8,
    };
    assert!(
        a.decode_attention(&l, &pool, &q, &[row], &[page], None, 1.0, &out, None)
            .is_ok()
    );
    assert!(is_device(a.decode_attention(
        &l,
        &pool,
        &q,
        &[row],
        &[page],
        None,
        1.0,
        &foreign,
        None
    )));
    let foreign_host = b.alloc_host(l.slot_bytes()).unwrap();
    assert!(a.backup_pages(&l, &pool, &[(0, 0)], &foreign_host).is_err());
    let ev = b
        .backup_pages(
            &l,
            &b.alloc(DType::F16, l.slot_elems()).unwrap(),
            &[(0, 0)],
            &foreign_host,
        )
        .unwrap();
    assert!(is_device(a.wait_on_device(&ev)));
    assert!(CpuDevice::new(Some(0)).is_err());
}

#[test]
fn a_backup_holds_its_slot_as_issued_even_if_the_slot_is_overwritten_at_once() {
    let dev = CpuDevice::new(Some(2)).unwrap();
    let l = KvLayout {
        kv_dtype: KvDtype::F32,
        heads_per_group: 8,
        gqa: 1,
        page_size: 32,
        head_dim: 128,
        groups: 1,
    };
    let slots = 64;
    let vals: Vec<f32> = (0..slots * l.slot_elems())
        .map(|i| (i % 1000) as f32)
        .collect();
    let pool = dev.upload_f32(&vals, DType::F32).unwrap();
    let host = dev.alloc_host((slots + 1) * l.slot_bytes()).unwrap();
    // Keep the copy thread busy so that the last backup is still queued when we write.
    let all: Vec<(u32, u64)> = (0..slots as u32)
        .map(|s| (s, s as u64 * l.slot_bytes() as u64))
        .collect();
    for _ in 0..4 {
        dev.backup_pages(&l, &pool, &all, &host).unwrap();
    }
    let last = (slots * l.slot_bytes()) as u64;
    let ev = dev.backup_pages(&l, &pool, &[(5, last)], &host).unwrap();
    let k = dev
        .upload_f32(&vec![-1.0; l.kv_heads() * l.head_dim], DType::F32)
        .unwrap();
    dev.append_kv(
        &l,
        &pool,
        &k,
        &k,
        &[AppendDest {
            token: 0,
            group: 0,
            slot: 5,
            pos: 0,
        }],
    )
    .unwrap();
    dev.fill_f32(&pool, 5 * l.slot_elems() + 7, 3, -2.0)
        .unwrap();
    dev.wait_host(&ev).unwrap();
    let mut got = vec![0u8; l.slot_bytes()];
    dev.host_read(&host, last as usize, &mut got).unwrap();
    let want = &vals[5 * l.slot_elems()..6 * l.slot_elems()];
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&got), want);
}

#[test]
fn using_a_recalled_slot_before_waiting_is_an_error() {
    let dev = CpuDevice::new(Some(2)).unwrap();
    let l = KvLayout {
        kv_dtype: KvDtype::F16,
        heads_per_group: 1,
        gqa: 1,
        page_size: 8,
        head_dim: 4,
        groups: 1,
    };
    let pool = dev.alloc(DType::F16, 3 * l.slot_elems()).unwrap();
    let host = dev.alloc_host(3 * l.slot_bytes()).unwrap();
    let k = dev.alloc(DType::F32, 4).unwrap();
    let out = dev.alloc(DType::F32, 4).unwrap();
    let into = |slot| {
        [AppendDest {
            token: 0,
            group: 0,
            slot,
            pos: 0,
        }]
    };
    let row = AttnRow {
        q_row: 0,
        group: 0,
        pos: 9,
        page_start: 0,
        page_count: 1,
    };
    let page = |slot| {
        [AttnPage {
            slot,
            base_pos: 0,
            len: 8,
        }]
    };
    let is_device = |r: arkvale_core::Result<()>| matches!(r, Err(Error::Device { .. }));
    let ev = dev.recall_pages(&l, &host, &[(2, 0)], &pool).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5)); // done, but nobody looked
    assert!(is_device(dev.decode_attention(
        &l,
        &pool,
        &k,
        &[row],
        &page(2),
        None,
        1.0,
        &out,
        None
    )));
    assert!(is_device(dev.append_kv(&l, &pool, &k, &k, &into(2))));
    assert!(is_device(dev.read(
        &pool,
        2 * l.slot_elems(),
        &mut [0u8; 2]
    )));
    assert!(is_device(
        dev.backup_pages(&l, &pool, &[(2, 0)], &host).map(|_| ())
    ));
    // Other slots are free to use.
    assert!(
        dev.decode_attention(&l, &pool, &k, &[row], &page(1), None, 1.0, &out, None)
            .is_ok()
    );
    // is_done == true counts as seeing it complete.
    while !ev.is_done().unwrap() {}
    assert!(
        dev.decode_attention(&l, &pool, &k, &[row], &page(2), None, 1.0, &out, None)
            .is_ok()
    );
    // So do wait_on_device and synchronize.
    let ev = dev.recall_pages(&l, &host, &[(1, 0)], &pool).unwrap();
    dev.wait_on_device(&ev).unwrap();
    assert!(dev.append_kv(&l, &pool, &k, &k, &into(1)).is_ok());
    dev.recall_pages(&l, &host, &[(0, 0)], &pool).unwrap();
    dev.synchronize().unwrap();
    assert!(dev.append_kv(&l, &pool, &k, &k, &into(0)).is_ok());
}

#[test]
fn arenas_account_and_free_their_bytes() {
    let dev = CpuDevice::new(Some(2)).unwrap();
    let b = dev.alloc(DType::F16, 100).unwrap();
    let h = dev.alloc_host(64).unwrap();
    assert_eq!(
        (dev.device_bytes_in_use(), dev.host_bytes_in_use()),
        (200, 64)
    );
    drop(b);
    drop(h);
    assert_eq!((dev.device_bytes_in_use(), dev.host_bytes_in_use()), (0, 0));
    assert!(dev.alloc(DType::F32, usize::MAX / 2).is_err());
}

#[test]
fn copies_run_asynchronously_and_synchronize_waits_for_them() {
    let dev = CpuDevice::new(Some(2)).unwrap();
    let l = KvLayout {
        kv_dtype: KvDtype::F32,
        heads_per_group: 4,
        gqa: 1,
        page_size: 32,
        head_dim: 128,
        groups: 1,
    };
    let slots = 64;
    let vals: Vec<f32> = (0..slots * l.slot_elems()).map(|i| i as f32).collect();
    let pool = dev.upload_f32(&vals, DType::F32).unwrap();
    let host = dev.alloc_host(slots * l.slot_bytes()).unwrap();
    let copies: Vec<(u32, u64)> = (0..slots as u32)
        .map(|s| (s, s as u64 * l.slot_bytes() as u64))
        .collect();
    let events: Vec<_> = (0..8)
        .map(|_| dev.backup_pages(&l, &pool, &copies, &host).unwrap())
        .collect();
    dev.synchronize().unwrap();
    for e in &events {
        assert!(e.is_done().unwrap());
    }
    let mut got = vec![0u8; 4];
    dev.host_read(&host, (slots - 1) * l.slot_bytes(), &mut got)
        .unwrap();
    assert_eq!(
        f32::from_le_bytes(got.try_into().unwrap()),
        ((slots - 1) * l.slot_elems()) as f32
    );
}

/// Imported quantized blocks are read where they lie (the matmul equals that of a written
/// copy), a write copies them first (the owner is unchanged), other dtypes are copied, and a
/// wrong byte count is an error.
#[test]
fn imported_blocks_are_used_in_place_and_copied_on_write() {
    use arkvale_core::{MatmulDims, QuantType, SharedBytes};
    let dev = CpuDevice::new(Some(1)).expect("cpu device");
    let ty = DType::Quant(QuantType::Q8_0);
    let (n, k) = (3usize, 64usize);
    let mut rng = Rng(0xA11CE ^ std::process::id() as u64);
    let mut bytes: Vec<u8> = (0..ty.bytes_for(n * k).unwrap())
        .map(|_| rng.next_u64() as u8)
        .collect();
    for block in bytes.chunks_exact_mut(34) {
        block[..2].copy_from_slice(&half::f16::from_f32(0.02).to_le_bytes());
    }
    let owner: Arc<Vec<u8>> = Arc::new(bytes.clone());
    let shared = SharedBytes::new(owner.clone(), 0..bytes.len()).expect("inside");
    assert!(dev.imports_in_place(ty) && !dev.imports_in_place(DType::F32));
    let imported = dev.import(ty, n * k, shared.clone()).expect("import");
    let copied = dev.alloc(ty, n * k).expect("alloc");
    dev.write(&copied, 0, &bytes).expect("write");
    let x: Vec<f32> = (0..k)
        .map(|_| rng.next_u64() as u8 as f32 / 255.0 - 0.5)
        .collect();
    let x = dev.upload_f32(&x, DType::F32).expect("x");
    let dims = MatmulDims { m: 1, n, k };
    let product = |w: &Buffer| {
        let out = dev.alloc(DType::F32, n).expect("out");
        dev.matmul(&dims, &x, w, &out).expect("matmul");
        dev.download_f32(&out).expect("download")
    };
    assert_eq!(product(&imported), product(&copied));
    dev.write(&imported, 0, &[0u8; 34])
        .expect("write to an import");
    let mut back = vec![0u8; bytes.len()];
    dev.read(&imported, 0, &mut back).expect("read");
    assert_eq!(&back[..34], &[0u8; 34]);
    assert_eq!(&back[34..], &bytes[34..]);
    assert_eq!(
        owner.as_slice(),
        bytes.as_slice(),
        "the owner is never written"
    );
    let floats = SharedBytes::from_vec(bytemuck::cast_slice(&[1.5f32, -2.0]).to_vec());
    let f = dev
        .import(DType::F32, 2, floats)
        .expect("f32 import copies");
    assert_eq!(dev.download_f32(&f).expect("download"), vec![1.5, -2.0]);
    let short = SharedBytes::new(owner, 0..bytes.len() - 1).expect("inside");
    assert!(matches!(dev.import(ty, n * k, short), Err(Error::Shape(_))));
}
