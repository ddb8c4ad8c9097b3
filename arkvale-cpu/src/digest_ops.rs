//! `summarize`, `estimate` and `topk`: digests of pages, their scores, and the selection.
//!
//! Digests use core's scalar digest code ([`arkvale_core::digest::summarize`]) in parallel over
//! (job, KV head), so they agree with the reference bit for bit (a digest is made once per
//! filled page; it is not on the per-step path). Scores are on the per-step path (every
//! filled page, every decode step), so they use [`score`], the same formulas as
//! [`arkvale_core::digest::score`] summed over eight lanes: equal to the reference within f32
//! rounding. Top-k follows the reference's total order exactly.

use arkvale_core::digest::{rank_key, summarize as digest_of};
use arkvale_core::{DigestKind, EstimateJob, KvLayout, ScoreAgg, SummarizeJob, TopkSegment};

use crate::elem::{KvElem, dot, load, prefetch};
use crate::par::Par;
use crate::scatter::{chunks_mut, group_by_target};

/// Writes the digest of each job's page (jobs validated), in parallel over (job, KV head).
pub(crate) fn summarize<T: KvElem>(
    par: Par,
    l: &KvLayout,
    kind: DigestKind,
    pool: &[T],
    jobs: &[SummarizeJob],
    digests: &mut [f32],
) {
    let (d, hg) = (l.head_dim, l.heads_per_group);
    let dl = kind.len(d);
    // One digest of `dl` values per (job, head), computed in parallel.
    let items: Vec<usize> = (0..jobs.len() * hg).collect();
    let computed: Vec<Vec<f32>> = par.map(&items, |&t| {
        let (job, h) = (&jobs[t / hg], t % hg);
        let start = l.k_offset(job.slot as usize, h, 0);
        let n = job.len as usize * d;
        let mut keys = vec![0f32; n];
        load(&pool[start..start + n], &mut keys);
        let mut out = vec![0f32; dl];
        digest_of(kind, &keys, d, &mut out);
        out
    });
    // Scatter: each digest index is written by one task, its jobs in order.
    let targets: Vec<usize> = jobs.iter().map(|j| j.digest as usize).collect();
    let groups = group_by_target(&targets);
    let dst = chunks_mut(digests, hg * dl, groups.iter().map(|g| g.0));
    par.for_each(
        dst.into_iter().zip(&groups).collect(),
        |(dst, (_, items))| {
            for &n in items {
                for (h, part) in dst.chunks_exact_mut(dl).enumerate() {
                    part.copy_from_slice(&computed[n * hg + h]);
                }
            }
        },
    );
}

/// The estimated importance of a page for query `q` given its digest: the formulas of
/// [`arkvale_core::digest::score`], with the sums over the head dimension in eight lanes.
#[inline(always)]
pub(crate) fn score(kind: DigestKind, q: &[f32], digest: &[f32]) -> f32 {
    const LANES: usize = 8;
    let d = q.len();
    match kind {
        DigestKind::CuboidMax | DigestKind::CuboidCenter | DigestKind::CuboidMean => {
            let (hi, lo) = digest.split_at(d);
            let full = d / LANES * LANES;
            let mut acc = [0f32; LANES];
            for c in (0..full).step_by(LANES) {
                let x: &[f32; LANES] = q[c..c + LANES].try_into().unwrap();
                let h: &[f32; LANES] = hi[c..c + LANES].try_into().unwrap();
                let o: &[f32; LANES] = lo[c..c + LANES].try_into().unwrap();
                for i in 0..LANES {
                    acc[i] += (x[i] * h[i]).max(x[i] * o[i]);
                }
            }
            let tail: f32 = (full..d).map(|i| (q[i] * hi[i]).max(q[i] * lo[i])).sum();
            acc.iter().sum::<f32>() + tail
        }
        DigestKind::SphereMax | DigestKind::SphereCenter | DigestKind::SphereMean => {
            dot(q, &digest[..d]) + digest[d] * dot(q, q).sqrt()
        }
        DigestKind::Centroid => dot(q, digest),
    }
}

/// Writes one score per job (validated): each query head of the group against its own KV
/// head's digest, combined by `agg` (in the reference's order over heads).
pub(crate) fn estimate(
    par: Par,
    l: &KvLayout,
    kind: DigestKind,
    agg: ScoreAgg,
    digests: &[f32],
    q: &[f32],
    jobs: &[EstimateJob],
    scores: &mut [f32],
) {
    let est = Estimate {
        l,
        kind,
        agg,
        digests,
        q,
    };
    let items: Vec<_> = scores[..jobs.len()]
        .chunks_mut(ESTIMATE_CHUNK)
        .zip(jobs.chunks(ESTIMATE_CHUNK))
        .collect();
    par.for_each(items, |(out, jobs)| est.jobs(jobs, out));
}

/// Jobs per parallel task of [`estimate`].
const ESTIMATE_CHUNK: usize = 64;

/// How many jobs ahead [`estimate`] prefetches a digest: a layer's digests are spread over
/// the store (pages are sealed layer by layer, group by group), so the hardware prefetchers
/// cannot guess the next one, and each score would otherwise wait on memory.
const PREFETCH_AHEAD: usize = 2;

/// The inputs every score of one [`estimate`] call shares.
struct Estimate<'a> {
    l: &'a KvLayout,
    kind: DigestKind,
    agg: ScoreAgg,
    digests: &'a [f32],
    q: &'a [f32],
}

impl Estimate<'_> {
    /// Scores `jobs` into `out`, compiled for AVX2 + FMA where the CPU has them (the same
    /// code: the lane loops of [`score`] become vector instructions).
    fn jobs(&self, jobs: &[EstimateJob], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::elem::has_avx2_fma_f16c() {
            // SAFETY: the CPU has the features `jobs_avx2` is compiled for.
            return unsafe { self.jobs_avx2(jobs, out) };
        }
        self.jobs_body(jobs, out)
    }

    /// [`Estimate::jobs_body`] compiled with AVX2 and FMA enabled.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn jobs_avx2(&self, jobs: &[EstimateJob], out: &mut [f32]) {
        self.jobs_body(jobs, out)
    }

    #[inline(always)]
    fn jobs_body(&self, jobs: &[EstimateJob], out: &mut [f32]) {
        for (i, (o, job)) in out.iter_mut().zip(jobs).enumerate() {
            if let Some(next) = jobs.get(i + PREFETCH_AHEAD) {
                prefetch(self.digests_of(next));
            }
            *o = self.job_body(job);
        }
    }

    /// The digests (one per KV head of the group) a job reads.
    #[inline(always)]
    fn digests_of(&self, job: &EstimateJob) -> &[f32] {
        let per_slot = self.l.heads_per_group * self.kind.len(self.l.head_dim);
        &self.digests[job.digest as usize * per_slot..][..per_slot]
    }

    #[inline(always)]
    fn job_body(&self, job: &EstimateJob) -> f32 {
        let l = self.l;
        let (d, hg, gqa) = (l.head_dim, l.heads_per_group, l.gqa);
        let dl = self.kind.len(d);
        let mut sum = 0f32;
        let mut max = f32::NEG_INFINITY;
        for j in 0..hg * gqa {
            let head = job.group as usize * hg * gqa + j;
            let qv = &self.q[(job.q_row as usize * l.q_heads() + head) * d..][..d];
            let at = (job.digest as usize * hg + j / gqa) * dl;
            let s = score(self.kind, qv, &self.digests[at..at + dl]);
            sum += s;
            max = max.max(s);
        }
        match self.agg {
            ScoreAgg::Mean => sum / (hg * gqa) as f32,
            ScoreAgg::Max => max,
        }
    }
}

/// Writes each segment's best `k` indices into `out`, segments back to back (validated), in
/// parallel over segments. Selection by [`rank_key`], the reference's total order as integers,
/// so a partial selection followed by a sort gives exactly the reference's answer.
pub(crate) fn topk(par: Par, scores: &[f32], segments: &[TopkSegment], out: &mut [u32]) {
    // Consecutive output ranges, one per segment.
    let total: usize = segments.iter().map(|s| s.k as usize).sum();
    let mut parts = Vec::with_capacity(segments.len());
    let mut rest = &mut out[..total];
    for s in segments {
        let (this, tail) = std::mem::take(&mut rest).split_at_mut(s.k as usize);
        parts.push(this);
        rest = tail;
    }
    par.for_each(parts.into_iter().zip(segments).collect(), |(dst, seg)| {
        let k = seg.k as usize;
        if k == 0 {
            return;
        }
        let s = &scores[seg.start as usize..seg.start as usize + seg.len as usize];
        let mut keys: Vec<u64> = (0..seg.len).map(|i| rank_key(s[i as usize], i)).collect();
        if k < keys.len() {
            keys.select_nth_unstable(k - 1);
            keys.truncate(k);
        }
        keys.sort_unstable();
        for (o, key) in dst.iter_mut().zip(&keys) {
            *o = *key as u32; // the low half: the index
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_scores_equal_core_scores_within_f32_rounding() {
        for d in 1..40 {
            let q: Vec<f32> = (0..d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
            let keys: Vec<f32> = (0..5 * d)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
                .collect();
            for kind in DigestKind::ALL {
                let mut dg = vec![0f32; kind.len(d)];
                digest_of(kind, &keys, d, &mut dg);
                let (got, want) = (
                    score(kind, &q, &dg),
                    arkvale_core::digest::score(kind, &q, &dg),
                );
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{kind:?} d={d}: {got} vs {want}"
                );
            }
        }
    }
}
