//! The KV ops of [`CudaDevice`] other than attention: checks, descriptor words and the
//! launches of `append.cu`, `summarize.cu`, `estimate.cu` and `topk.cu`.

use arkvale_core::{
    AppendDest, Buffer, DigestKind, EstimateJob, KvLayout, Result, ScoreAgg, SummarizeJob,
    TopkSegment,
};

use crate::buffer::CudaBuf;
use crate::device::CudaDevice;
use crate::driver::kargs;
use crate::launch::{SMEM_LIMIT, suffix, u32_bytes};
use arkvale_core::validate::product;

/// The digest-kind code of the kernels.
pub(crate) fn kind_code(k: DigestKind) -> u32 {
    match k {
        DigestKind::CuboidMax => 0,
        DigestKind::CuboidCenter => 1,
        DigestKind::CuboidMean => 2,
        DigestKind::SphereMax => 3,
        DigestKind::SphereCenter => 4,
        DigestKind::SphereMean => 5,
        DigestKind::Centroid => 6,
    }
}

impl CudaDevice {
    pub(crate) fn kv_pool<'a>(&self, pool: &'a Buffer, what: &str) -> Result<&'a CudaBuf> {
        self.buf(pool, &format!("{what}: pool"))
    }

    /// [`Device::append_kv`](arkvale_core::Device::append_kv).
    pub(crate) fn kv_append(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()> {
        self.ctx.bind()?;
        let p = self.kv_pool(pool, "append_kv")?;
        let ks = self.buf(k, "append_kv: k")?;
        let vs = self.buf(v, "append_kv: v")?;
        if dests.is_empty() {
            return Ok(());
        }
        let words: Vec<u32> = dests
            .iter()
            .flat_map(|d| [d.token, d.group, d.slot, d.pos])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&words)])?;
        let (pp, kp, vp, dp) = (p.mem.ptr, ks.mem.ptr, vs.mem.ptr, a[0]);
        let n = dests.len() as u32;
        let (hg, ps, d, kvh) = (
            layout.heads_per_group as u32,
            layout.page_size as u32,
            layout.head_dim as u32,
            layout.kv_heads() as u32,
        );
        let blocks = product(dests.len(), layout.heads_per_group, "append_kv")?;
        let threads = (layout.head_dim.next_multiple_of(32)).min(256) as u32;
        self.launch(
            &format!("append_kv_{}", suffix(layout.kv_dtype.dtype())),
            (blocks as u32, 1, 1),
            threads,
            0,
            &kargs![pp, kp, vp, dp, n, hg, ps, d, kvh],
        )
    }

    /// [`Device::summarize`](arkvale_core::Device::summarize).
    pub(crate) fn kv_summarize(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let p = self.kv_pool(pool, "summarize")?;
        let dg = self.buf(digests, "summarize: digests")?;
        if jobs.is_empty() {
            return Ok(());
        }
        let words: Vec<u32> = jobs
            .iter()
            .flat_map(|j| [j.slot, j.digest, j.len])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&words)])?;
        let (pp, jp, dp) = (p.mem.ptr, a[0], dg.mem.ptr);
        let (n, kc, hg, ps, d) = (
            jobs.len() as u32,
            kind_code(kind),
            layout.heads_per_group as u32,
            layout.page_size as u32,
            layout.head_dim as u32,
        );
        let blocks = product(jobs.len(), layout.heads_per_group, "summarize")?;
        self.launch(
            &format!("summarize_{}", suffix(layout.kv_dtype.dtype())),
            (blocks as u32, 1, 1),
            128,
            (layout.head_dim + layout.page_size) * 4,
            &kargs![pp, jp, n, kc, hg, ps, d, dp],
        )
    }

    /// [`Device::estimate`](arkvale_core::Device::estimate).
    pub(crate) fn kv_estimate(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        agg: ScoreAgg,
        digests: &Buffer,
        q: &Buffer,
        jobs: &[EstimateJob],
        scores: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let dg = self.buf(digests, "estimate: digests")?;
        let qs = self.buf(q, "estimate: q")?;
        let sc = self.buf(scores, "estimate: scores")?;
        if jobs.is_empty() {
            return Ok(());
        }
        let words: Vec<u32> = jobs
            .iter()
            .flat_map(|j| [j.q_row, j.group, j.digest])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&words)])?;
        let g = layout.heads_per_group * layout.gqa;
        let warps = if 4 * g * 4 <= SMEM_LIMIT { 4 } else { 1 };
        let (dp, qp, jp, sp) = (dg.mem.ptr, qs.mem.ptr, a[0], sc.mem.ptr);
        let (n, kc, ag, hg, gqa, d, qh) = (
            jobs.len() as u32,
            kind_code(kind),
            match agg {
                ScoreAgg::Mean => 0u32,
                ScoreAgg::Max => 1u32,
            },
            layout.heads_per_group as u32,
            layout.gqa as u32,
            layout.head_dim as u32,
            layout.q_heads() as u32,
        );
        self.launch(
            "estimate",
            (jobs.len().div_ceil(warps) as u32, 1, 1),
            32 * warps as u32,
            warps * g * 4,
            &kargs![dp, qp, jp, n, kc, ag, hg, gqa, d, qh, sp],
        )
    }

    /// [`Device::topk`](arkvale_core::Device::topk).
    pub(crate) fn kv_topk(
        &self,
        scores: &Buffer,
        segments: &[TopkSegment],
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let sc = self.buf(scores, "topk: scores")?;
        let o = self.buf(out, "topk: out")?;
        if segments.is_empty() {
            return Ok(());
        }
        let mut words = Vec::with_capacity(segments.len() * 4);
        let mut off = 0u32;
        for s in segments {
            words.extend([s.start, s.len, s.k, off]);
            off += s.k;
        }
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&words)])?;
        let (sp, gp, n, op) = (sc.mem.ptr, a[0], segments.len() as u32, o.mem.ptr);
        self.launch(
            "topk",
            (segments.len() as u32, 1, 1),
            256,
            0,
            &kargs![sp, gp, n, op],
        )
    }
}
