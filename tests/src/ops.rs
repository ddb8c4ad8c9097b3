//! Op-level differential cases: every KV op of a backend against the scalar reference
//! ([`arkvale_core::reference`]) on random shapes and inputs.
//!
//! Each case draws its shapes with proptest's runner and a fresh seed (replay one with
//! `PROPTEST_RNG_SEED`); a failure reports the minimal failing shape, whose `seed` field
//! regenerates the data. Inputs are random and non-zero (magnitudes in [0.05, 1], both signs);
//! every output buffer is poisoned first (NaN for floats, `u32::MAX` for indices), so an
//! element a backend forgot to write, or wrote where it must not, is caught. Shapes cover GQA
//! ratios 1, 3, 4, 8, one to three head groups of one to three KV heads, pages of 8, 16 and 32
//! tokens, head dims 1..=40 plus 64 and 128, page lists from one page to forty, partial and
//! empty pages, and f32, f16 and bf16 storage.
//!
//! Tolerances (`|device - reference| <= tol * (1 + |reference|)` unless said otherwise):
//! * `append_kv`, `topk`, page copies and buffer ops: **exact** (storage rounding is
//!   round-to-nearest-even everywhere; selection and copies are not arithmetic).
//! * `summarize`: [`TOL_F32`] on every storage type — the digest is f32 arithmetic over the
//!   stored keys, which both sides read identically.
//! * `estimate`: [`TOL_F32`] relative to `1 + max |reference score|` (a score sums `d`
//!   products, so its error scales with the scores' magnitude, not with each score).
//! * attention (decode, prefill + finalize, token weights): [`TOL_F32`] for f32 storage and
//!   [`TOL_HALF`] for f16/bf16 storage, where a backend may compute in half precision.
//!
//! The generic cases never issue two rows that write the same output in one call (same query
//! row and group), nor two appends to the same place: the contract leaves their order to the
//! backend.

use std::sync::Arc;

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, Buffer, DType, Device, DeviceExt, DigestKind, EstimateJob,
    KvDtype, KvLayout, ScoreAgg, SummarizeJob, TopkSegment, digest, reference,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::Case;
use crate::datagen::{Gen, err, poisoned, upload};

/// Tolerance of f32 arithmetic against the reference (relative to `1 + |reference|`).
pub const TOL_F32: f32 = 1e-5;
/// Tolerance of attention over f16/bf16 storage, where a backend may compute in half
/// precision (relative to `1 + |reference|`).
pub const TOL_HALF: f32 = 1e-2;

/// Random shapes drawn per case (each case is a handful of device calls).
const CASES: u32 = 16;

/// The op-level cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ops::append_kv_f32",
            run: |d| append_kv(d, KvDtype::F32),
        },
        Case {
            name: "ops::append_kv_f16",
            run: |d| append_kv(d, KvDtype::F16),
        },
        Case {
            name: "ops::append_kv_bf16",
            run: |d| append_kv(d, KvDtype::BF16),
        },
        Case {
            name: "ops::summarize_cuboid_max",
            run: |d| summarize(d, DigestKind::CuboidMax),
        },
        Case {
            name: "ops::summarize_cuboid_center",
            run: |d| summarize(d, DigestKind::CuboidCenter),
        },
        Case {
            name: "ops::summarize_cuboid_mean",
            run: |d| summarize(d, DigestKind::CuboidMean),
        },
        Case {
            name: "ops::summarize_sphere_max",
            run: |d| summarize(d, DigestKind::SphereMax),
        },
        Case {
            name: "ops::summarize_sphere_center",
            run: |d| summarize(d, DigestKind::SphereCenter),
        },
        Case {
            name: "ops::summarize_sphere_mean",
            run: |d| summarize(d, DigestKind::SphereMean),
        },
        Case {
            name: "ops::summarize_centroid",
            run: |d| summarize(d, DigestKind::Centroid),
        },
        Case {
            name: "ops::estimate_mean",
            run: |d| estimate(d, ScoreAgg::Mean),
        },
        Case {
            name: "ops::estimate_max",
            run: |d| estimate(d, ScoreAgg::Max),
        },
        Case {
            name: "ops::topk_ties_and_nan",
            run: topk,
        },
        Case {
            name: "ops::decode_attention_f32",
            run: |d| decode(d, KvDtype::F32, false),
        },
        Case {
            name: "ops::decode_attention_f16",
            run: |d| decode(d, KvDtype::F16, false),
        },
        Case {
            name: "ops::decode_attention_bf16",
            run: |d| decode(d, KvDtype::BF16, false),
        },
        Case {
            name: "ops::decode_attention_masked_f32",
            run: |d| decode(d, KvDtype::F32, true),
        },
        Case {
            name: "ops::decode_attention_masked_f16",
            run: |d| decode(d, KvDtype::F16, true),
        },
        Case {
            name: "ops::decode_attention_masked_bf16",
            run: |d| decode(d, KvDtype::BF16, true),
        },
        Case {
            name: "ops::decode_attention_page_lse_f32",
            run: |d| decode_lse(d, KvDtype::F32),
        },
        Case {
            name: "ops::decode_attention_page_lse_f16",
            run: |d| decode_lse(d, KvDtype::F16),
        },
        Case {
            name: "ops::decode_attention_page_lse_bf16",
            run: |d| decode_lse(d, KvDtype::BF16),
        },
        Case {
            name: "ops::prefill_finalize_over_calls_f32",
            run: |d| prefill(d, KvDtype::F32),
        },
        Case {
            name: "ops::prefill_finalize_over_calls_f16",
            run: |d| prefill(d, KvDtype::F16),
        },
        Case {
            name: "ops::prefill_finalize_over_calls_bf16",
            run: |d| prefill(d, KvDtype::BF16),
        },
        Case {
            name: "ops::attention_weights_f32",
            run: |d| weights(d, KvDtype::F32),
        },
        Case {
            name: "ops::attention_weights_f16",
            run: |d| weights(d, KvDtype::F16),
        },
        Case {
            name: "ops::attention_weights_bf16",
            run: |d| weights(d, KvDtype::BF16),
        },
        Case {
            name: "ops::backup_recall_bytes_identical_f32",
            run: |d| backup_recall(d, KvDtype::F32),
        },
        Case {
            name: "ops::backup_recall_bytes_identical_f16",
            run: |d| backup_recall(d, KvDtype::F16),
        },
        Case {
            name: "ops::backup_recall_bytes_identical_bf16",
            run: |d| backup_recall(d, KvDtype::BF16),
        },
        Case {
            name: "ops::write_read_copy_fill",
            run: buffer_ops,
        },
        Case {
            name: "ops::bad_descriptors_are_errors",
            run: bad_descriptors,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Shapes, data and comparisons.

/// A random pool geometry, pool size and data seed.
#[derive(Debug, Clone)]
struct Shape {
    l: KvLayout,
    slots: usize,
    seed: u64,
}

/// Shapes with storage type `dtype` (`None`: any).
fn shape(dtype: Option<KvDtype>) -> impl Strategy<Value = Shape> {
    let dtype = match dtype {
        Some(t) => Just(t).boxed(),
        None => prop_oneof![Just(KvDtype::F32), Just(KvDtype::F16), Just(KvDtype::BF16)].boxed(),
    };
    (
        prop_oneof![Just(1usize), Just(3), Just(4), Just(8)],
        1usize..=3,
        1usize..=3,
        prop_oneof![Just(8usize), Just(16), Just(32)],
        prop_oneof![4 => 1usize..=40, 1 => Just(64usize), 1 => Just(128usize)],
        dtype,
        2usize..=12,
        any::<u64>(),
    )
        .prop_map(
            |(gqa, hg, groups, page_size, head_dim, kv_dtype, slots, seed)| Shape {
                l: KvLayout {
                    kv_dtype,
                    heads_per_group: hg,
                    gqa,
                    page_size,
                    head_dim,
                    groups,
                },
                slots,
                seed,
            },
        )
}

/// Runs `body` on `CASES` random shapes with a fresh seed (or `PROPTEST_RNG_SEED`).
fn check(
    strategy: impl Strategy<Value = Shape>,
    body: impl Fn(&Shape) -> Result<(), String>,
) -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    runner
        .run(&strategy, |s| body(&s).map_err(TestCaseError::fail))
        .map_err(|e| e.to_string())
}

/// A u8 buffer holding `bytes`.
fn upload_u8(dev: &Arc<dyn Device>, bytes: &[u8]) -> Result<Buffer, String> {
    let buf = dev.alloc(DType::U8, bytes.len()).map_err(err)?;
    dev.write(&buf, 0, bytes).map_err(err)?;
    Ok(buf)
}

/// A pool of random values: the device buffer and the reference's view (the stored values,
/// which must be the inputs rounded to the storage type).
fn random_pool(
    dev: &Arc<dyn Device>,
    s: &Shape,
    g: &mut Gen,
) -> Result<(Buffer, Vec<f32>), String> {
    let values = g.values(s.slots * s.l.slot_elems());
    let pool = dev.upload_f32(&values, s.l.kv_dtype.dtype()).map_err(err)?;
    let stored = dev.download_f32(&pool).map_err(err)?;
    for (i, (v, st)) in values.iter().zip(&stored).enumerate() {
        if s.l.kv_dtype.round(*v) != *st {
            return Err(format!("pool element {i}: wrote {v}, read back {st}"));
        }
    }
    Ok((pool, stored))
}

/// Bitwise equality, NaN matching NaN.
fn exact(got: &[f32], want: &[f32], what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            got[i].to_bits() != want[i].to_bits() && !(got[i].is_nan() && want[i].is_nan())
        })
        .collect();
    match bad.first() {
        None => Ok(()),
        Some(&i) => Err(format!(
            "{what}: {} of {} values differ; first at {i}: device {} vs reference {}",
            bad.len(),
            got.len(),
            got[i],
            want[i]
        )),
    }
}

/// `|got - want| <= tol * (scale + |want|)` elementwise, NaN matching NaN only.
fn close(got: &[f32], want: &[f32], tol: f32, scale: f32, what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let ok = |a: f32, b: f32| {
        (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * (scale + b.abs())
    };
    let bad: Vec<usize> = (0..got.len()).filter(|&i| !ok(got[i], want[i])).collect();
    match bad.first() {
        None => Ok(()),
        Some(&i) => Err(format!(
            "{what}: {} of {} values beyond tolerance {tol}; first at {i}: device {} vs \
             reference {}",
            bad.len(),
            got.len(),
            got[i],
            want[i]
        )),
    }
}

/// The attention tolerance of a storage type.
fn attn_tol(t: KvDtype) -> f32 {
    match t {
        KvDtype::F32 => TOL_F32,
        KvDtype::F16 | KvDtype::BF16 => TOL_HALF,
    }
}

/// A random attention problem.
#[derive(Debug)]
struct Attn {
    rows: Vec<AttnRow>,
    pages: Vec<AttnPage>,
    /// Query rows (`q` has `n_q * H * d` values).
    n_q: usize,
    scale: f32,
    /// A random keep-mask over every slot (three in four tokens kept).
    mask: Vec<u8>,
}

/// A page list (mostly full pages at consecutive positions, some partial or empty; slots may
/// repeat; usually short, sometimes up to forty pages), then rows over it: decode-like rows
/// (each (query row, group) at most once, random sub-ranges and positions) or prefill-like
/// rows (per group, consecutive query positions over one shared page range).
fn attn_problem(s: &Shape, g: &mut Gen, prefill_like: bool) -> Attn {
    let p = s.l.page_size;
    let n_pages = if g.below(10) < 7 {
        1 + g.below(8)
    } else {
        9 + g.below(32)
    };
    let mut base = g.below(2 * p) as u32;
    let pages: Vec<AttnPage> = (0..n_pages)
        .map(|_| {
            let len = match g.below(10) {
                0 => 0,
                1 => 1 + g.below(p - 1),
                _ => p,
            } as u32;
            let page = AttnPage {
                slot: g.below(s.slots) as u32,
                base_pos: base,
                len,
            };
            base += p as u32;
            page
        })
        .collect();
    let end = base as usize;
    let mut rows = Vec::new();
    let n_q;
    if prefill_like {
        n_q = 1 + g.below(24);
        for group in 0..s.l.groups as u32 {
            let start = g.below(n_pages);
            let count = 1 + g.below(n_pages - start);
            let first_pos = g.below(end + 1);
            for q_row in 0..n_q as u32 {
                let pos = (first_pos + q_row as usize) as u32;
                rows.push(AttnRow {
                    q_row,
                    group,
                    pos,
                    page_start: start as u32,
                    page_count: count as u32,
                });
            }
        }
    } else {
        n_q = 1 + g.below(4);
        for q_row in 0..n_q as u32 {
            for group in 0..s.l.groups as u32 {
                if g.below(3) == 0 && !(q_row == 0 && group == 0) {
                    continue;
                }
                let start = g.below(n_pages);
                let count = g.below(n_pages - start + 1);
                // Usually past every page (decode), sometimes cutting through them.
                let pos = if g.below(3) == 0 {
                    g.below(end + p)
                } else {
                    end + g.below(p)
                } as u32;
                rows.push(AttnRow {
                    q_row,
                    group,
                    pos,
                    page_start: start as u32,
                    page_count: count as u32,
                });
            }
        }
    }
    let mask = (0..s.slots * s.l.tokens_per_slot())
        .map(|_| (g.below(4) != 0) as u8)
        .collect();
    let scale = (0.5 + 1.5 * g.below(1000) as f32 / 1000.0) / (s.l.head_dim as f32).sqrt();
    Attn {
        rows,
        pages,
        n_q,
        scale,
        mask,
    }
}

// ---------------------------------------------------------------------------------------------
// The cases.

/// `append_kv`: random tokens to distinct (slot, position)s; the whole pool must equal the
/// reference exactly (untouched slots included).
fn append_kv(dev: &Arc<dyn Device>, dtype: KvDtype) -> Result<(), String> {
    check(shape(Some(dtype)), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, mut want) = random_pool(dev, s, &mut g)?;
        let tokens = 1 + g.below(6);
        let row = s.l.kv_heads() * s.l.head_dim;
        let (k, v) = (g.values(tokens * row), g.values(tokens * row));
        let mut places: Vec<(u32, u32)> = (0..s.slots as u32)
            .flat_map(|slot| (0..s.l.page_size as u32).map(move |pos| (slot, pos)))
            .collect();
        let n = 1 + g.below(places.len().min(40));
        let dests: Vec<AppendDest> = (0..n)
            .map(|_| {
                let (slot, pos) = places.swap_remove(g.below(places.len()));
                AppendDest {
                    token: g.below(tokens) as u32,
                    group: g.below(s.l.groups) as u32,
                    slot,
                    pos,
                }
            })
            .collect();
        let (kb, vb) = (upload(dev, &k)?, upload(dev, &v)?);
        dev.append_kv(&s.l, &pool, &kb, &vb, &dests).map_err(err)?;
        reference::append_kv(&s.l, &mut want, &k, &v, &dests);
        exact(
            &dev.download_f32(&pool).map_err(err)?,
            &want,
            "pool after append_kv",
        )
    })
}

/// `summarize` of one digest kind: jobs over random slots and lengths into distinct digest
/// indices of a poisoned store (untouched digests must stay NaN).
fn summarize(dev: &Arc<dyn Device>, kind: DigestKind) -> Result<(), String> {
    check(shape(None), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, stored) = random_pool(dev, s, &mut g)?;
        let n_dig = 1 + g.below(12);
        let mut free: Vec<u32> = (0..n_dig as u32).collect();
        let jobs: Vec<SummarizeJob> = (0..1 + g.below(n_dig))
            .map(|_| SummarizeJob {
                slot: g.below(s.slots) as u32,
                digest: free.swap_remove(g.below(free.len())),
                len: if g.below(2) == 0 {
                    s.l.page_size as u32
                } else {
                    1 + g.below(s.l.page_size) as u32
                },
            })
            .collect();
        let n = n_dig * s.l.heads_per_group * kind.len(s.l.head_dim);
        let digests = poisoned(dev, n)?;
        dev.summarize(&s.l, kind, &pool, &jobs, &digests)
            .map_err(err)?;
        let mut want = vec![f32::NAN; n];
        reference::summarize(&s.l, kind, &stored, &jobs, &mut want);
        let got = dev.download_f32(&digests).map_err(err)?;
        close(
            &got,
            &want,
            TOL_F32,
            1.0,
            &format!("{} digests", kind.name()),
        )
    })
}

/// `estimate` with one aggregation: realistic digests (of random keys, every kind), random
/// jobs; scores past the jobs must stay NaN.
fn estimate(dev: &Arc<dyn Device>, agg: ScoreAgg) -> Result<(), String> {
    check(shape(None), |s| {
        let mut g = Gen::new(s.seed);
        let kind = DigestKind::ALL[g.below(DigestKind::ALL.len())];
        let (d, hg) = (s.l.head_dim, s.l.heads_per_group);
        let n_dig = 1 + g.below(16);
        let mut dvals = vec![0f32; n_dig * hg * kind.len(d)];
        for dg in dvals.chunks_exact_mut(kind.len(d)) {
            let tokens = 1 + g.below(s.l.page_size);
            let keys = g.values(tokens * d);
            digest::summarize(kind, &keys, d, dg);
        }
        let rows = 1 + g.below(4);
        let q = g.values(rows * s.l.q_heads() * d);
        let jobs: Vec<EstimateJob> = (0..1 + g.below(24))
            .map(|_| EstimateJob {
                q_row: g.below(rows) as u32,
                group: g.below(s.l.groups) as u32,
                digest: g.below(n_dig) as u32,
            })
            .collect();
        let scores = poisoned(dev, jobs.len() + 3)?;
        let (db, qb) = (upload(dev, &dvals)?, upload(dev, &q)?);
        dev.estimate(&s.l, kind, agg, &db, &qb, &jobs, &scores)
            .map_err(err)?;
        let mut want = vec![f32::NAN; jobs.len() + 3];
        reference::estimate(&s.l, kind, agg, &dvals, &q, &jobs, &mut want);
        let scale = 1.0
            + want
                .iter()
                .filter(|x| !x.is_nan())
                .fold(0f32, |m, x| m.max(x.abs()));
        let got = dev.download_f32(&scores).map_err(err)?;
        close(
            &got,
            &want,
            TOL_F32,
            scale,
            &format!("{} {agg:?} scores", kind.name()),
        )
    })
}

/// `topk`: scores from a small set (ties everywhere) with some NaN, segments of every size up
/// to a few thousand, `k` from 0 to the whole segment; indices must match exactly, and output
/// past the segments must stay poisoned.
fn topk(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(shape(None), |s| {
        let mut g = Gen::new(s.seed);
        let n = 1 + if g.below(4) == 0 {
            g.below(4000)
        } else {
            g.below(100)
        };
        let scores: Vec<f32> = (0..n)
            .map(|_| {
                if g.below(16) == 0 {
                    f32::NAN
                } else {
                    (g.below(9) as f32 - 4.0) * 0.25
                }
            })
            .collect();
        let segments: Vec<TopkSegment> = (0..1 + g.below(6))
            .map(|_| {
                let start = g.below(n);
                let len = g.below(n - start + 1);
                let k = if g.below(4) == 0 {
                    len
                } else {
                    g.below(len + 1)
                };
                TopkSegment {
                    start: start as u32,
                    len: len as u32,
                    k: k as u32,
                }
            })
            .collect();
        let total: usize = segments.iter().map(|x| x.k as usize).sum();
        let poison = vec![u32::MAX; total + 2];
        let out = dev.alloc(DType::U32, total + 2).map_err(err)?;
        dev.write(&out, 0, &vec![0xFF; poison.len() * 4])
            .map_err(err)?; // u32::MAX each
        dev.topk(&upload(dev, &scores)?, &segments, &out)
            .map_err(err)?;
        let mut want = poison.clone();
        reference::topk(&scores, &segments, &mut want);
        let got = dev.download_u32(&out, 0, total + 2).map_err(err)?;
        match (0..got.len()).find(|&i| got[i] != want[i]) {
            None => Ok(()),
            Some(i) => Err(format!(
                "topk index {i}: device {} vs reference {}",
                got[i], want[i]
            )),
        }
    })
}

/// `decode_attention`: decode-like rows, with or without a keep-mask; heads of groups a query
/// row does not attend must stay NaN.
fn decode(dev: &Arc<dyn Device>, dtype: KvDtype, masked: bool) -> Result<(), String> {
    check(shape(Some(dtype)), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, stored) = random_pool(dev, s, &mut g)?;
        let a = attn_problem(s, &mut g, false);
        let qn = a.n_q * s.l.q_heads() * s.l.head_dim;
        let q = g.values(qn);
        let (qb, out, mb) = (
            upload(dev, &q)?,
            poisoned(dev, qn)?,
            upload_u8(dev, &a.mask)?,
        );
        let mask = masked.then_some(&mb);
        dev.decode_attention(
            &s.l, &pool, &qb, &a.rows, &a.pages, mask, a.scale, &out, None,
        )
        .map_err(err)?;
        let mut want = vec![f32::NAN; qn];
        let mask_ref = masked.then_some(&a.mask[..]);
        reference::attention(
            &s.l, &stored, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want,
        );
        let got = dev.download_f32(&out).map_err(err)?;
        close(&got, &want, attn_tol(dtype), 1.0, "decode attention output")
    })
}

/// `decode_attention` with page log-sum-exps: decode-like rows whose page ranges are made
/// disjoint (as the contract requires), keep-mask on or off at random. The output must match
/// reference attention and every entry of the rows' ranges the reference log-sum-exp
/// (`-inf` where no token takes part); entries outside every range must stay NaN.
fn decode_lse(dev: &Arc<dyn Device>, dtype: KvDtype) -> Result<(), String> {
    check(shape(Some(dtype)), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, stored) = random_pool(dev, s, &mut g)?;
        let mut a = attn_problem(s, &mut g, false);
        let mut cursor = 0usize;
        for r in &mut a.rows {
            let count = g.below(a.pages.len() - cursor + 1);
            r.page_start = cursor as u32;
            r.page_count = count as u32;
            cursor += count;
        }
        let masked = g.below(2) == 0;
        let qn = a.n_q * s.l.q_heads() * s.l.head_dim;
        let gh = s.l.heads_per_group * s.l.gqa;
        let q = g.values(qn);
        let (qb, out, lse, mb) = (
            upload(dev, &q)?,
            poisoned(dev, qn)?,
            poisoned(dev, a.pages.len() * gh)?,
            upload_u8(dev, &a.mask)?,
        );
        let mask = masked.then_some(&mb);
        dev.decode_attention(
            &s.l,
            &pool,
            &qb,
            &a.rows,
            &a.pages,
            mask,
            a.scale,
            &out,
            Some(&lse),
        )
        .map_err(err)?;
        let mask_ref = masked.then_some(&a.mask[..]);
        let mut want = vec![f32::NAN; qn];
        reference::attention(
            &s.l, &stored, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want,
        );
        let got = dev.download_f32(&out).map_err(err)?;
        close(&got, &want, attn_tol(dtype), 1.0, "decode attention output")?;
        let mut want_lse = vec![f32::NAN; a.pages.len() * gh];
        reference::page_lse(
            &s.l,
            &stored,
            &q,
            &a.rows,
            &a.pages,
            mask_ref,
            a.scale,
            &mut want_lse,
        );
        let got_lse = dev.download_f32(&lse).map_err(err)?;
        close(
            &got_lse,
            &want_lse,
            attn_tol(dtype),
            1.0,
            "page log-sum-exps",
        )
    })
}

/// `prefill_attention` over one to four calls (each row's page range cut into consecutive
/// pieces), then `attention_finalize`: must equal one-shot reference attention. Prefill-like
/// rows, mask on or off at random.
fn prefill(dev: &Arc<dyn Device>, dtype: KvDtype) -> Result<(), String> {
    check(shape(Some(dtype)), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, stored) = random_pool(dev, s, &mut g)?;
        let a = attn_problem(s, &mut g, true);
        let masked = g.below(2) == 0;
        let qn = a.n_q * s.l.q_heads() * s.l.head_dim;
        let q = g.values(qn);
        let (qb, mb) = (upload(dev, &q)?, upload_u8(dev, &a.mask)?);
        let mask = masked.then_some(&mb);
        let state = dev
            .alloc_attn_state(a.n_q, s.l.q_heads(), s.l.head_dim)
            .map_err(err)?;
        let calls = 1 + g.below(4) as u32;
        for call in 0..calls {
            let rows: Vec<AttnRow> = a
                .rows
                .iter()
                .map(|r| {
                    let (lo, hi) = (
                        r.page_count * call / calls,
                        r.page_count * (call + 1) / calls,
                    );
                    AttnRow {
                        page_start: r.page_start + lo,
                        page_count: hi - lo,
                        ..*r
                    }
                })
                .collect();
            dev.prefill_attention(&s.l, &pool, &qb, &rows, &a.pages, mask, a.scale, &state)
                .map_err(|e| format!("prefill call {call} of {calls}: {e}"))?;
        }
        let out = poisoned(dev, qn)?;
        dev.attention_finalize(&s.l, &state, &a.rows, &out)
            .map_err(err)?;
        let mut want = vec![f32::NAN; qn];
        let mask_ref = masked.then_some(&a.mask[..]);
        reference::attention(
            &s.l, &stored, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want,
        );
        let got = dev.download_f32(&out).map_err(err)?;
        close(
            &got,
            &want,
            attn_tol(dtype),
            1.0,
            &format!("prefill over {calls} call(s) + finalize"),
        )
    })
}

/// `attention_weights`: decode-like or prefill-like rows (rows share pages, so weights
/// accumulate), mask on or off; the weights start non-zero and must be added to.
fn weights(dev: &Arc<dyn Device>, dtype: KvDtype) -> Result<(), String> {
    check(shape(Some(dtype)), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, stored) = random_pool(dev, s, &mut g)?;
        let prefill_like = g.below(2) == 0;
        let a = attn_problem(s, &mut g, prefill_like);
        let masked = g.below(2) == 0;
        let q = g.values(a.n_q * s.l.q_heads() * s.l.head_dim);
        let w0: Vec<f32> = g
            .values(a.pages.len() * s.l.tokens_per_slot())
            .iter()
            .map(|x| x.abs())
            .collect();
        let (qb, wb, mb) = (
            upload(dev, &q)?,
            upload(dev, &w0)?,
            upload_u8(dev, &a.mask)?,
        );
        let mask = masked.then_some(&mb);
        dev.attention_weights(&s.l, &pool, &qb, &a.rows, &a.pages, mask, a.scale, &wb)
            .map_err(err)?;
        let mut want = w0.clone();
        let mask_ref = masked.then_some(&a.mask[..]);
        reference::attention_weights(
            &s.l, &stored, &q, &a.rows, &a.pages, mask_ref, a.scale, &mut want,
        );
        let got = dev.download_f32(&wb).map_err(err)?;
        close(&got, &want, attn_tol(dtype), 1.0, "token weights")
    })
}

/// Page copies: an append followed at once by a backup (the copy must observe it), backups
/// to scattered host offsets (bytes identical), then recalls into other slots after a wipe
/// (bytes identical after `wait_on_device`), with `synchronize` at the end.
fn backup_recall(dev: &Arc<dyn Device>, dtype: KvDtype) -> Result<(), String> {
    check(shape(Some(dtype)), |s| {
        let mut g = Gen::new(s.seed);
        let (pool, mut stored) = random_pool(dev, s, &mut g)?;
        let sb = s.l.slot_bytes();
        // Compute right before the copy: append one token into slot 0.
        let row = s.l.kv_heads() * s.l.head_dim;
        let (k, v) = (g.values(row), g.values(row));
        let dest = AppendDest {
            token: 0,
            group: 0,
            slot: 0,
            pos: g.below(s.l.page_size) as u32,
        };
        dev.append_kv(&s.l, &pool, &upload(dev, &k)?, &upload(dev, &v)?, &[dest])
            .map_err(err)?;
        reference::append_kv(&s.l, &mut stored, &k, &v, &[dest]);
        let before = arkvale_core::dtype::encode_f32(&stored, s.l.kv_dtype.dtype())
            .ok_or("KV dtypes are float types")?;
        // Slot i goes to host place perm[i], at an odd byte offset.
        let mut perm: Vec<usize> = (0..s.slots).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, g.below(i + 1));
        }
        let host = dev.alloc_host(s.slots * sb + 5).map_err(err)?;
        let backups: Vec<(u32, u64)> = (0..s.slots)
            .map(|i| (i as u32, (perm[i] * sb + 5) as u64))
            .collect();
        let ev = dev
            .backup_pages(&s.l, &pool, &backups, &host)
            .map_err(err)?;
        dev.wait_host(&ev).map_err(err)?;
        if !ev.is_done().map_err(err)? {
            return Err("backup event not done after wait_host".into());
        }
        for &(slot, off) in &backups {
            let mut got = vec![0u8; sb];
            dev.host_read(&host, off as usize, &mut got).map_err(err)?;
            if got[..] != before[slot as usize * sb..(slot as usize + 1) * sb] {
                return Err(format!("backup of slot {slot} differs from the pool"));
            }
        }
        // Wipe, then recall slot i's backup into slot (i + 1) % slots.
        dev.write(&pool, 0, &vec![0u8; pool.bytes()]).map_err(err)?;
        let recalls: Vec<(u32, u64)> = backups
            .iter()
            .map(|&(slot, off)| ((slot + 1) % s.slots as u32, off))
            .collect();
        let ev = dev
            .recall_pages(&s.l, &host, &recalls, &pool)
            .map_err(err)?;
        dev.wait_on_device(&ev).map_err(err)?;
        let mut after = vec![0u8; pool.bytes()];
        dev.read(&pool, 0, &mut after).map_err(err)?;
        for to in 0..s.slots {
            let from = (to + s.slots - 1) % s.slots;
            if after[to * sb..(to + 1) * sb] != before[from * sb..(from + 1) * sb] {
                return Err(format!(
                    "slot {to} after recall differs from the backup of slot {from}"
                ));
            }
        }
        dev.synchronize().map_err(err)
    })
}

/// `alloc` (zeroed), `write`/`read` at offsets, `copy` within and across buffers, `fill_f32`,
/// on every dtype; host `host_write`/`host_read`.
fn buffer_ops(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(shape(None), |s| {
        let mut g = Gen::new(s.seed);
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8] {
            let n = 1 + g.below(300);
            let size = dtype.size();
            let buf = dev.alloc(dtype, n).map_err(err)?;
            let mut bytes = vec![0xAAu8; n * size];
            dev.read(&buf, 0, &mut bytes).map_err(err)?;
            if bytes.iter().any(|&b| b != 0) {
                return Err(format!("alloc({dtype:?}, {n}) is not zeroed"));
            }
            // A shadow of the buffer's bytes, updated like the device.
            let mut shadow: Vec<u8> = (0..n * size).map(|_| g.below(256) as u8).collect();
            dev.write(&buf, 0, &shadow).map_err(err)?;
            let off = g.below(n);
            let len = g.below(n - off + 1);
            let patch: Vec<u8> = (0..len * size).map(|_| g.below(256) as u8).collect();
            dev.write(&buf, off, &patch).map_err(err)?;
            shadow[off * size..(off + len) * size].copy_from_slice(&patch);
            let other = dev.alloc(dtype, n).map_err(err)?;
            let (src, dst) = (g.below(n), g.below(n));
            let len = g.below(n - src.max(dst) + 1);
            dev.copy(&buf, src, &other, dst, len).map_err(err)?;
            let mut other_shadow = vec![0u8; n * size];
            other_shadow[dst * size..(dst + len) * size]
                .copy_from_slice(&shadow[src * size..(src + len) * size]);
            let mut got = vec![0u8; n * size];
            dev.read(&other, 0, &mut got).map_err(err)?;
            if got != other_shadow {
                return Err(format!(
                    "copy of {len} {dtype:?} from {src} to {dst} of another buffer"
                ));
            }
            let off = g.below(n);
            let len = g.below(n - off + 1);
            let mut part = vec![0u8; len * size];
            dev.read(&buf, off, &mut part).map_err(err)?;
            if part[..] != shadow[off * size..(off + len) * size] {
                return Err(format!("read of {len} {dtype:?} at {off} after writes"));
            }
        }
        // f32 fill and an overlapping copy within one buffer.
        let n = 2 + g.below(200);
        let vals = g.values(n);
        let buf = upload(dev, &vals)?;
        let mut shadow = vals.clone();
        let off = g.below(n);
        let len = g.below(n - off + 1);
        dev.fill_f32(&buf, off, len, -7.5).map_err(err)?;
        shadow[off..off + len].fill(-7.5);
        let (src, dst) = (g.below(n / 2), g.below(n / 2));
        let len = g.below(n - src.max(dst) + 1);
        dev.copy(&buf, src, &buf, dst, len).map_err(err)?;
        shadow.copy_within(src..src + len, dst);
        exact(
            &dev.download_f32(&buf).map_err(err)?,
            &shadow,
            "fill_f32 + copy within one buffer",
        )?;
        // Host memory.
        let hb = 1 + g.below(4096);
        let host = dev.alloc_host(hb).map_err(err)?;
        let off = g.below(hb);
        let len = g.below(hb - off + 1);
        let data: Vec<u8> = (0..len).map(|_| g.below(256) as u8).collect();
        dev.host_write(&host, off, &data).map_err(err)?;
        let mut got = vec![0u8; len];
        dev.host_read(&host, off, &mut got).map_err(err)?;
        if got != data {
            return Err("host_read after host_write".into());
        }
        Ok(())
    })
}

/// Out-of-range descriptors and mismatched buffers are errors, never a panic or a write.
fn bad_descriptors(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(shape(None), |s| {
        let l = s.l;
        let mut g = Gen::new(s.seed);
        let (pool, stored) = random_pool(dev, s, &mut g)?;
        let row = l.kv_heads() * l.head_dim;
        let k = upload(dev, &g.values(2 * row))?;
        let dest = AppendDest {
            token: 1,
            group: l.groups as u32 - 1,
            slot: s.slots as u32 - 1,
            pos: 0,
        };
        let q = upload(dev, &g.values(l.q_heads() * l.head_dim))?;
        let out = poisoned(dev, l.q_heads() * l.head_dim)?;
        let attn_row = AttnRow {
            q_row: 0,
            group: 0,
            pos: 1000,
            page_start: 0,
            page_count: 1,
        };
        let page = AttnPage {
            slot: 0,
            base_pos: 0,
            len: l.page_size as u32,
        };
        let gh = l.heads_per_group * l.gqa;
        let lse = poisoned(dev, 2 * gh)?;
        let small = poisoned(dev, gh)?;
        let host = dev.alloc_host(l.slot_bytes()).map_err(err)?;
        let wrong_dtype = dev
            .alloc(
                if l.kv_dtype == KvDtype::F32 {
                    DType::F16
                } else {
                    DType::F32
                },
                s.slots * l.slot_elems(),
            )
            .map_err(err)?;
        let attempts: Vec<(&str, arkvale_core::Result<()>)> = vec![
            (
                "append: slot past the pool",
                dev.append_kv(
                    &l,
                    &pool,
                    &k,
                    &k,
                    &[AppendDest {
                        slot: s.slots as u32,
                        ..dest
                    }],
                ),
            ),
            (
                "append: position past the page",
                dev.append_kv(
                    &l,
                    &pool,
                    &k,
                    &k,
                    &[AppendDest {
                        pos: l.page_size as u32,
                        ..dest
                    }],
                ),
            ),
            (
                "append: group past the groups",
                dev.append_kv(
                    &l,
                    &pool,
                    &k,
                    &k,
                    &[AppendDest {
                        group: l.groups as u32,
                        ..dest
                    }],
                ),
            ),
            (
                "append: token past the inputs",
                dev.append_kv(&l, &pool, &k, &k, &[AppendDest { token: 2, ..dest }]),
            ),
            (
                "append: pool of the wrong dtype",
                dev.append_kv(&l, &wrong_dtype, &k, &k, &[dest]),
            ),
            (
                "summarize: slot past the pool",
                dev.summarize(
                    &l,
                    DigestKind::CuboidMean,
                    &pool,
                    &[SummarizeJob {
                        slot: s.slots as u32,
                        digest: 0,
                        len: 1,
                    }],
                    &out,
                ),
            ),
            (
                "summarize: zero length",
                dev.summarize(
                    &l,
                    DigestKind::Centroid,
                    &pool,
                    &[SummarizeJob {
                        slot: 0,
                        digest: 0,
                        len: 0,
                    }],
                    &out,
                ),
            ),
            (
                "decode: page count past the list",
                dev.decode_attention(
                    &l,
                    &pool,
                    &q,
                    &[AttnRow {
                        page_count: 2,
                        ..attn_row
                    }],
                    &[page],
                    None,
                    1.0,
                    &out,
                    None,
                ),
            ),
            (
                "decode: query row past q",
                dev.decode_attention(
                    &l,
                    &pool,
                    &q,
                    &[AttnRow {
                        q_row: 1,
                        ..attn_row
                    }],
                    &[page],
                    None,
                    1.0,
                    &out,
                    None,
                ),
            ),
            (
                "decode: page slot past the pool",
                dev.decode_attention(
                    &l,
                    &pool,
                    &q,
                    &[attn_row],
                    &[AttnPage {
                        slot: s.slots as u32,
                        ..page
                    }],
                    None,
                    1.0,
                    &out,
                    None,
                ),
            ),
            (
                "decode: page longer than a page",
                dev.decode_attention(
                    &l,
                    &pool,
                    &q,
                    &[attn_row],
                    &[AttnPage {
                        len: l.page_size as u32 + 1,
                        ..page
                    }],
                    None,
                    1.0,
                    &out,
                    None,
                ),
            ),
            (
                "decode: page_lse too short",
                dev.decode_attention(
                    &l,
                    &pool,
                    &q,
                    &[AttnRow {
                        page_count: 2,
                        ..attn_row
                    }],
                    &[page, page],
                    None,
                    1.0,
                    &out,
                    Some(&small),
                ),
            ),
            (
                "decode: page_lse with overlapping rows",
                dev.decode_attention(
                    &l,
                    &pool,
                    &q,
                    &[
                        attn_row,
                        AttnRow {
                            group: l.groups as u32 - 1,
                            ..attn_row
                        },
                    ],
                    &[page],
                    None,
                    1.0,
                    &out,
                    Some(&lse),
                ),
            ),
            (
                "topk: k > len",
                dev.topk(
                    &out,
                    &[TopkSegment {
                        start: 0,
                        len: 1,
                        k: 2,
                    }],
                    &dev.alloc(DType::U32, 4).map_err(err)?,
                ),
            ),
            (
                "topk: segment past the scores",
                dev.topk(
                    &out,
                    &[TopkSegment {
                        start: 1,
                        len: out.len() as u32,
                        k: 0,
                    }],
                    &dev.alloc(DType::U32, 4).map_err(err)?,
                ),
            ),
            ("write past the end", dev.write(&out, out.len(), &[0u8; 4])),
            (
                "read past the end",
                dev.read(&out, 1, &mut vec![0u8; out.bytes()]),
            ),
            (
                "copy between dtypes",
                dev.copy(&pool, 0, &wrong_dtype, 0, 1),
            ),
            ("fill past the end", dev.fill_f32(&out, 1, out.len(), 0.0)),
            (
                "backup past the host buffer",
                dev.backup_pages(&l, &pool, &[(0, 1)], &host).map(|_| ()),
            ),
            (
                "recall into a slot past the pool",
                dev.recall_pages(&l, &host, &[(s.slots as u32, 0)], &pool)
                    .map(|_| ()),
            ),
        ];
        for (what, result) in attempts {
            if result.is_ok() {
                return Err(format!("{what}: accepted"));
            }
        }
        dev.synchronize().map_err(err)?;
        exact(
            &dev.download_f32(&pool).map_err(err)?,
            &stored,
            "pool after rejected calls",
        )?;
        exact(
            &dev.download_f32(&out).map_err(err)?,
            &vec![f32::NAN; out.len()],
            "output after rejected calls",
        )
    })
}
