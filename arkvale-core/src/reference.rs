//! Scalar reference implementations of every KV op of the [`Device`](crate::Device) trait.
//!
//! These functions are the oracle of the differential tests: plain loops over host slices,
//! single-threaded, written to be obviously correct rather than fast. Each one mirrors the
//! trait method of the same name, with the layouts documented in [`crate::device`]:
//!
//! * the KV pool is given as `f32` **values** (already rounded to the pool's
//!   [`KvDtype`](crate::KvDtype), which is what a backend's loads yield), `K[hg][p][d]` then
//!   `V[hg][p][d]` per slot, see [`KvLayout`];
//! * queries are `[rows, H, d]`, new keys/values `[tokens, Hkv, d]`, digests
//!   `hg * kind.len(d)` values per digest index, keep-masks `[slots][hg][p]` bytes and token
//!   weights `[pages.len()][hg][p]`.
//!
//! The dense model ops have their references in [`dense`] (re-exported here).
//!
//! Digests and scores use [`crate::digest`] directly (f32, the order written there); attention
//! is computed exactly in f64 and rounded to f32 once at the end, so it is the reference for
//! both `decode_attention` and `prefill_attention` + `attention_finalize`.
//!
//! # Panics
//!
//! The reference trusts its inputs: a descriptor that points outside the given slices panics
//! (index out of bounds). Backends, unlike the reference, must validate every descriptor and
//! return an error.

use crate::device::{
    AppendDest, AttnPage, AttnRow, EstimateJob, KvLayout, SummarizeJob, TopkSegment,
};
use crate::{DigestKind, ScoreAgg, digest};

pub mod dense;
pub use dense::{add, add_bias, argmax, embedding, matmul, rmsnorm, rope, rope_pair, silu_mul};

/// Writes each destination's keys and values (`k`, `v`: f32 `[tokens, Hkv, d]`) into `pool`,
/// rounded with [`KvDtype::round`](crate::KvDtype::round). Destinations are applied in order,
/// so a later one wins where two write the same place.
pub fn append_kv(layout: &KvLayout, pool: &mut [f32], k: &[f32], v: &[f32], dests: &[AppendDest]) {
    let (d, hg) = (layout.head_dim, layout.heads_per_group);
    let kv_heads = layout.kv_heads();
    for dest in dests {
        let (slot, pos) = (dest.slot as usize, dest.pos as usize);
        for h in 0..hg {
            let head = dest.group as usize * hg + h;
            let src = (dest.token as usize * kv_heads + head) * d;
            let k_dst = layout.k_offset(slot, h, pos);
            let v_dst = layout.v_offset(slot, h, pos);
            for i in 0..d {
                pool[k_dst + i] = layout.kv_dtype.round(k[src + i]);
                pool[v_dst + i] = layout.kv_dtype.round(v[src + i]);
            }
        }
    }
}

/// Writes, for each job and each KV head `h` of the group, the digest of the first `len` keys
/// of `K[h]` in slot `job.slot` into `digests[(job.digest * hg + h) * kind.len(d)..]`, using
/// [`digest::summarize`].
pub fn summarize(
    layout: &KvLayout,
    kind: DigestKind,
    pool: &[f32],
    jobs: &[SummarizeJob],
    digests: &mut [f32],
) {
    let (d, hg) = (layout.head_dim, layout.heads_per_group);
    let dl = kind.len(d);
    for job in jobs {
        for h in 0..hg {
            let start = layout.k_offset(job.slot as usize, h, 0);
            let keys = &pool[start..start + job.len as usize * d];
            let at = (job.digest as usize * hg + h) * dl;
            digest::summarize(kind, keys, d, &mut digests[at..at + dl]);
        }
    }
}

/// Writes one score per job into `scores[0..jobs.len()]`: every query head of the job's group
/// (query row `q_row` of `q`, f32 `[rows, H, d]`) is scored with [`digest::score`] against the
/// digest of its own KV head, and the group's scores are combined by `agg` (mean or max).
pub fn estimate(
    layout: &KvLayout,
    kind: DigestKind,
    agg: ScoreAgg,
    digests: &[f32],
    q: &[f32],
    jobs: &[EstimateJob],
    scores: &mut [f32],
) {
    let (d, hg, gqa) = (layout.head_dim, layout.heads_per_group, layout.gqa);
    let dl = kind.len(d);
    let q_heads = layout.q_heads();
    for (job, out) in jobs.iter().zip(scores.iter_mut()) {
        let mut sum = 0f32;
        let mut max = f32::NEG_INFINITY;
        for j in 0..hg * gqa {
            let head = job.group as usize * hg * gqa + j;
            let qv = &q[(job.q_row as usize * q_heads + head) * d..][..d];
            let at = (job.digest as usize * hg + j / gqa) * dl;
            let s = digest::score(kind, qv, &digests[at..at + dl]);
            sum += s;
            max = max.max(s);
        }
        *out = match agg {
            ScoreAgg::Mean => sum / (hg * gqa) as f32,
            ScoreAgg::Max => max,
        };
    }
}

/// For each segment, writes the indices (relative to `start`) of its `k` best scores into
/// `out`, segments back to back, best first, by [`digest::topk_indices`] (ties: lower index;
/// NaN last).
pub fn topk(scores: &[f32], segments: &[TopkSegment], out: &mut [u32]) {
    let mut at = 0;
    for seg in segments {
        let s = &scores[seg.start as usize..(seg.start + seg.len) as usize];
        let best = digest::topk_indices(s, seg.k as usize);
        out[at..at + best.len()].copy_from_slice(&best);
        at += seg.k as usize;
    }
}

/// Whether token `i` of `page` takes part in `row`'s attention for the row's KV head `h`
/// (index inside the group): `i < len`, `base_pos + i <= pos`, and a non-zero keep-mask byte
/// `mask[(slot * hg + h) * p + i]` when a mask is given.
pub fn takes_part(
    layout: &KvLayout,
    row: &AttnRow,
    page: &AttnPage,
    h: usize,
    i: usize,
    mask: Option<&[u8]>,
) -> bool {
    let in_page = i < page.len as usize;
    let causal = page.base_pos as u64 + i as u64 <= row.pos as u64;
    let kept = mask.is_none_or(|m| {
        m[(page.slot as usize * layout.heads_per_group + h) * layout.page_size + i] != 0
    });
    in_page && causal && kept
}

/// The scaled logits of one (row, query head) over its participating tokens, in f64:
/// `(page index in the page list, token, scale * q . k)` per participant, in page order.
#[allow(clippy::too_many_arguments)]
fn row_logits(
    layout: &KvLayout,
    pool: &[f32],
    q: &[f32],
    row: &AttnRow,
    pages: &[AttnPage],
    mask: Option<&[u8]>,
    scale: f32,
    j: usize,
) -> Vec<(usize, usize, f64)> {
    let (d, hg, gqa) = (layout.head_dim, layout.heads_per_group, layout.gqa);
    let head = row.group as usize * hg * gqa + j;
    let qv = &q[(row.q_row as usize * layout.q_heads() + head) * d..][..d];
    let h = j / gqa;
    let mut logits = Vec::new();
    let first = row.page_start as usize;
    for (pi, page) in pages
        .iter()
        .enumerate()
        .skip(first)
        .take(row.page_count as usize)
    {
        for i in 0..layout.page_size {
            if takes_part(layout, row, page, h, i, mask) {
                let kv = &pool[layout.k_offset(page.slot as usize, h, i)..][..d];
                let dot: f64 = qv.iter().zip(kv).map(|(&a, &b)| a as f64 * b as f64).sum();
                logits.push((pi, i, scale as f64 * dot));
            }
        }
    }
    logits
}

/// The softmax of one (row, query head) over its participating tokens, in f64:
/// `(page index in the page list, token, probability)` per participant.
#[allow(clippy::too_many_arguments)]
fn softmax_row(
    layout: &KvLayout,
    pool: &[f32],
    q: &[f32],
    row: &AttnRow,
    pages: &[AttnPage],
    mask: Option<&[u8]>,
    scale: f32,
    j: usize,
) -> Vec<(usize, usize, f64)> {
    let logits = row_logits(layout, pool, q, row, pages, mask, scale, j);
    let max = logits.iter().map(|l| l.2).fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logits.iter().map(|l| (l.2 - max).exp()).sum();
    logits
        .into_iter()
        .map(|(pi, i, s)| (pi, i, (s - max).exp() / total))
        .collect()
}

/// Exact softmax attention, computed in f64: for each row and each query head `j` of its group,
/// `out[q_row][head] = sum_t softmax(scale * q . k_t) v_t` over the tokens `t` that take part
/// (see [`takes_part`]); zeros when none does. Only the row's group's heads are written.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    layout: &KvLayout,
    pool: &[f32],
    q: &[f32],
    rows: &[AttnRow],
    pages: &[AttnPage],
    mask: Option<&[u8]>,
    scale: f32,
    out: &mut [f32],
) {
    let (d, hg, gqa) = (layout.head_dim, layout.heads_per_group, layout.gqa);
    for row in rows {
        for j in 0..hg * gqa {
            let mut acc = vec![0f64; d];
            for (pi, i, prob) in softmax_row(layout, pool, q, row, pages, mask, scale, j) {
                let vv = &pool[layout.v_offset(pages[pi].slot as usize, j / gqa, i)..][..d];
                for (a, &x) in acc.iter_mut().zip(vv) {
                    *a += prob * x as f64;
                }
            }
            let head = row.group as usize * hg * gqa + j;
            let dst = &mut out[(row.q_row as usize * layout.q_heads() + head) * d..][..d];
            for (o, a) in dst.iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
    }
}

/// The log-sum-exp of each row's page entries, per query head of the row's group, in f64:
/// `lse[i * hg * gqa + j] = ln Σ exp(scale · q_j · k_t)` over the tokens `t` of page entry `i`
/// that take part (see [`takes_part`]), `-inf` when none does. Only the entries of the rows'
/// ranges are written (see [`crate::Device::decode_attention`]).
#[allow(clippy::too_many_arguments)]
pub fn page_lse(
    layout: &KvLayout,
    pool: &[f32],
    q: &[f32],
    rows: &[AttnRow],
    pages: &[AttnPage],
    mask: Option<&[u8]>,
    scale: f32,
    lse: &mut [f32],
) {
    let gh = layout.heads_per_group * layout.gqa;
    for row in rows {
        for j in 0..gh {
            let logits = row_logits(layout, pool, q, row, pages, mask, scale, j);
            let first = row.page_start as usize;
            for pi in first..first + row.page_count as usize {
                let page: Vec<f64> = logits.iter().filter(|l| l.0 == pi).map(|l| l.2).collect();
                let max = page.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                lse[pi * gh + j] = if max == f64::NEG_INFINITY {
                    f32::NEG_INFINITY
                } else {
                    (max + page.iter().map(|s| (s - max).exp()).sum::<f64>().ln()) as f32
                };
            }
        }
    }
}

/// Adds each row's softmax probabilities (as in [`attention`], f64), summed over the query
/// heads of the group that share a KV head, to `weights[page index in pages][h][i]` (f32,
/// `[pages.len()][hg][p]`). Each row's contributions are summed in f64 and added once.
#[allow(clippy::too_many_arguments)]
pub fn attention_weights(
    layout: &KvLayout,
    pool: &[f32],
    q: &[f32],
    rows: &[AttnRow],
    pages: &[AttnPage],
    mask: Option<&[u8]>,
    scale: f32,
    weights: &mut [f32],
) {
    let (hg, gqa, p) = (layout.heads_per_group, layout.gqa, layout.page_size);
    for row in rows {
        let mut add = vec![0f64; weights.len()];
        for j in 0..hg * gqa {
            for (pi, i, prob) in softmax_row(layout, pool, q, row, pages, mask, scale, j) {
                add[(pi * hg + j / gqa) * p + i] += prob;
            }
        }
        for (w, a) in weights.iter_mut().zip(&add) {
            if *a != 0.0 {
                *w += *a as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KvDtype;

    fn layout(gqa: usize, hg: usize, groups: usize) -> KvLayout {
        KvLayout {
            kv_dtype: KvDtype::F32,
            heads_per_group: hg,
            gqa,
            page_size: 4,
            head_dim: 3,
            groups,
        }
    }

    fn filled_pool(l: &KvLayout, slots: usize) -> Vec<f32> {
        (0..slots * l.slot_elems())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect()
    }

    #[test]
    fn attention_over_a_single_token_returns_its_value() {
        let l = layout(2, 2, 1);
        let pool = filled_pool(&l, 2);
        let q: Vec<f32> = (0..l.q_heads() * 3).map(|i| i as f32 * 0.1 - 0.2).collect();
        let rows = [AttnRow {
            q_row: 0,
            group: 0,
            pos: 10,
            page_start: 0,
            page_count: 1,
        }];
        let pages = [AttnPage {
            slot: 1,
            base_pos: 10,
            len: 3,
        }];
        let mut out = vec![f32::NAN; q.len()];
        attention(&l, &pool, &q, &rows, &pages, None, 0.5, &mut out);
        for j in 0..4 {
            let v = &pool[l.v_offset(1, j / 2, 0)..][..3];
            assert_eq!(&out[j * 3..j * 3 + 3], v, "head {j}");
        }
    }

    #[test]
    fn rows_without_participants_yield_zeros_and_other_groups_are_untouched() {
        let l = layout(1, 1, 2);
        let pool = filled_pool(&l, 1);
        let q = vec![1.0f32; 2 * 3];
        let rows = [AttnRow {
            q_row: 0,
            group: 1,
            pos: 3,
            page_start: 0,
            page_count: 1,
        }];
        let pages = [AttnPage {
            slot: 0,
            base_pos: 4,
            len: 4,
        }];
        let mut out = vec![7.0f32; 6];
        attention(&l, &pool, &q, &rows, &pages, None, 1.0, &mut out);
        assert_eq!(out, [7.0, 7.0, 7.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn weights_sum_to_the_query_heads_of_the_group_per_row() {
        let l = layout(3, 2, 2);
        let pool = filled_pool(&l, 3);
        let q: Vec<f32> = (0..2 * l.q_heads() * 3)
            .map(|i| (i % 7) as f32 * 0.3 - 1.0)
            .collect();
        let rows = [
            AttnRow {
                q_row: 0,
                group: 1,
                pos: 9,
                page_start: 0,
                page_count: 3,
            },
            AttnRow {
                q_row: 1,
                group: 0,
                pos: 5,
                page_start: 1,
                page_count: 2,
            },
        ];
        let pages = [
            AttnPage {
                slot: 2,
                base_pos: 0,
                len: 4,
            },
            AttnPage {
                slot: 0,
                base_pos: 4,
                len: 4,
            },
            AttnPage {
                slot: 1,
                base_pos: 8,
                len: 2,
            },
        ];
        let mask: Vec<u8> = (0..3 * l.tokens_per_slot())
            .map(|i| (i % 3 != 1) as u8)
            .collect();
        for (r, row) in rows.iter().enumerate() {
            let mut w = vec![0f32; pages.len() * l.tokens_per_slot()];
            attention_weights(
                &l,
                &pool,
                &q,
                &rows[r..=r],
                &pages,
                Some(&mask),
                0.4,
                &mut w,
            );
            let total: f32 = w.iter().sum();
            assert!((total - 6.0).abs() < 1e-5, "row {r}: {total}");
            // Nothing outside the row's pages, its causal range or its mask got weight.
            for (pi, page) in pages.iter().enumerate() {
                for h in 0..2 {
                    for i in 0..4 {
                        let x = w[(pi * 2 + h) * 4 + i];
                        let inside = (row.page_start as usize
                            ..(row.page_start + row.page_count) as usize)
                            .contains(&pi);
                        if !(inside && takes_part(&l, row, page, h, i, Some(&mask))) {
                            assert_eq!(x, 0.0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn append_rounds_and_summarize_uses_the_first_len_keys() {
        let l = KvLayout {
            kv_dtype: KvDtype::BF16,
            ..layout(1, 2, 2)
        };
        let mut pool = vec![0f32; 2 * l.slot_elems()];
        let k: Vec<f32> = (0..4 * 3).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        let dests = [
            AppendDest {
                token: 0,
                group: 1,
                slot: 1,
                pos: 0,
            },
            AppendDest {
                token: 0,
                group: 0,
                slot: 0,
                pos: 2,
            },
        ];
        append_kv(&l, &mut pool, &k, &v, &dests);
        assert_eq!(
            pool[l.k_offset(1, 1, 0) + 2],
            KvDtype::BF16.round(k[3 * 3 + 2])
        );
        assert_eq!(pool[l.v_offset(0, 0, 2)], KvDtype::BF16.round(v[0]));
        let kind = DigestKind::Centroid;
        let mut dg = vec![f32::NAN; 2 * 3];
        summarize(
            &l,
            kind,
            &pool,
            &[SummarizeJob {
                slot: 1,
                digest: 0,
                len: 1,
            }],
            &mut dg,
        );
        assert_eq!(&dg[3..6], &pool[l.k_offset(1, 1, 0)..][..3]);
    }

    #[test]
    fn estimate_aggregates_mean_and_max_over_the_group() {
        let l = layout(2, 1, 2);
        let kind = DigestKind::Centroid;
        let digests = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let q = vec![2.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0];
        let jobs = [EstimateJob {
            q_row: 0,
            group: 1,
            digest: 1,
        }];
        let mut s = [f32::NAN];
        estimate(&l, kind, ScoreAgg::Mean, &digests, &q, &jobs, &mut s);
        assert_eq!(s[0], 2.0);
        estimate(&l, kind, ScoreAgg::Max, &digests, &q, &jobs, &mut s);
        assert_eq!(s[0], 3.0);
    }

    #[test]
    fn topk_writes_segments_back_to_back() {
        let scores = [1.0, 2.0, 2.0, 0.5, 9.0, f32::NAN, 3.0];
        let segs = [
            TopkSegment {
                start: 0,
                len: 3,
                k: 2,
            },
            TopkSegment {
                start: 3,
                len: 4,
                k: 3,
            },
        ];
        let mut out = [u32::MAX; 5];
        topk(&scores, &segs, &mut out);
        assert_eq!(out, [1, 2, 1, 3, 0]);
    }
}
