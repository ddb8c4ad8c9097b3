//! `summarize`, `estimate` and `topk`: digests of pages, their scores, and the selection.
//!
//! The arithmetic is core's scalar digest code ([`arkvale_core::digest`]), run in parallel
//! over jobs, so the CPU backend agrees with the reference bit for bit on these ops.

use std::cmp::Ordering;

use arkvale_core::digest::{rank_cmp, score, summarize as digest_of};
use arkvale_core::{DigestKind, EstimateJob, KvLayout, ScoreAgg, SummarizeJob, TopkSegment};
use rayon::prelude::*;

use crate::elem::{KvElem, load};
use crate::scatter::{chunks_mut, group_by_target};

/// Writes the digest of each job's page (jobs validated), in parallel over jobs and KV heads.
pub(crate) fn summarize<T: KvElem>(
    l: &KvLayout,
    kind: DigestKind,
    pool: &[T],
    jobs: &[SummarizeJob],
    digests: &mut [f32],
) {
    let (d, hg) = (l.head_dim, l.heads_per_group);
    let dl = kind.len(d);
    // One digest of `dl` values per (job, head), computed in parallel.
    let computed: Vec<f32> = (0..jobs.len() * hg)
        .into_par_iter()
        .flat_map_iter(|t| {
            let (job, h) = (&jobs[t / hg], t % hg);
            let start = l.k_offset(job.slot as usize, h, 0);
            let n = job.len as usize * d;
            let mut keys = vec![0f32; n];
            load(&pool[start..start + n], &mut keys);
            let mut out = vec![0f32; dl];
            digest_of(kind, &keys, d, &mut out);
            out
        })
        .collect();
    // Scatter: each digest index is written by one task, its jobs in order.
    let targets: Vec<usize> = jobs.iter().map(|j| j.digest as usize).collect();
    let groups = group_by_target(&targets);
    let dst = chunks_mut(digests, hg * dl, groups.iter().map(|g| g.0));
    dst.into_par_iter()
        .zip(groups.par_iter())
        .for_each(|(dst, (_, items))| {
            for &n in items {
                dst.copy_from_slice(&computed[n * hg * dl..(n + 1) * hg * dl]);
            }
        });
}

/// Writes one score per job (validated): each query head of the group against its own KV
/// head's digest, combined by `agg`. Same order of operations as the reference.
pub(crate) fn estimate(
    l: &KvLayout,
    kind: DigestKind,
    agg: ScoreAgg,
    digests: &[f32],
    q: &[f32],
    jobs: &[EstimateJob],
    scores: &mut [f32],
) {
    let (d, hg, gqa) = (l.head_dim, l.heads_per_group, l.gqa);
    let dl = kind.len(d);
    let q_heads = l.q_heads();
    scores[..jobs.len()]
        .par_iter_mut()
        .zip(jobs.par_iter())
        .for_each(|(out, job)| {
            let mut sum = 0f32;
            let mut max = f32::NEG_INFINITY;
            for j in 0..hg * gqa {
                let head = job.group as usize * hg * gqa + j;
                let qv = &q[(job.q_row as usize * q_heads + head) * d..][..d];
                let at = (job.digest as usize * hg + j / gqa) * dl;
                let s = score(kind, qv, &digests[at..at + dl]);
                sum += s;
                max = max.max(s);
            }
            *out = match agg {
                ScoreAgg::Mean => sum / (hg * gqa) as f32,
                ScoreAgg::Max => max,
            };
        });
}

/// Writes each segment's best `k` indices into `out`, segments back to back (validated), in parallel
/// over segments. Selection by [`rank_cmp`], a total order, so a partial selection followed
/// by a sort gives exactly the reference's answer.
pub(crate) fn topk(scores: &[f32], segments: &[TopkSegment], out: &mut [u32]) {
    // Consecutive output ranges, one per segment.
    let total: usize = segments.iter().map(|s| s.k as usize).sum();
    let mut parts = Vec::with_capacity(segments.len());
    let mut rest = &mut out[..total];
    for s in segments {
        let (this, tail) = std::mem::take(&mut rest).split_at_mut(s.k as usize);
        parts.push(this);
        rest = tail;
    }
    parts
        .into_par_iter()
        .zip(segments.par_iter())
        .for_each(|(dst, seg)| {
            let k = seg.k as usize;
            if k == 0 {
                return;
            }
            let s = &scores[seg.start as usize..(seg.start + seg.len) as usize];
            let cmp =
                |a: &u32, b: &u32| -> Ordering { rank_cmp(s[*a as usize], *a, s[*b as usize], *b) };
            let mut idx: Vec<u32> = (0..seg.len).collect();
            if k < idx.len() {
                idx.select_nth_unstable_by(k - 1, cmp);
                idx.truncate(k);
            }
            idx.sort_unstable_by(cmp);
            dst.copy_from_slice(&idx);
        });
}
