//! The KV ops of [`WgpuDevice`], its [`KvBackend`] implementation: checks, the `meta` arrays
//! of descriptors, and the launches of `append.wgsl`, `summarize.wgsl`, `estimate.wgsl`,
//! `topk.wgsl`, `attention.wgsl`, `finalize.wgsl` and `weights.wgsl`.
//!
//! A KV pool is bound as the window of slots an op touches (slot indices in `meta` are
//! relative to the window's first slot), so a pool larger than the adapter's binding limit
//! works as long as each op's slots fit in one binding.

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, Checked, DType, DigestKind, Error,
    EstimateJob, KvBackend, KvLayout, Result, ScoreAgg, SummarizeJob, TopkSegment,
};

use crate::BACKEND;
use crate::buffer::GpuBuffer;
use crate::context::Binding;
use crate::device::{WgpuDevice, slot_align};
use crate::kernels::Kernel;

/// Pages per workgroup in decode attention: longer rows are split into chunks of this many
/// pages whose partial softmax states are merged afterwards (flash-decoding), so that a small
/// batch over a long context still fills a GPU.
const DECODE_CHUNK_PAGES: u32 = 16;

/// Storage type code of the shaders (`DT_F32`, `DT_F16`, `DT_BF16`).
pub(crate) fn dt_code(dtype: DType) -> Result<u32> {
    match dtype {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        other => Err(Error::shape(format!(
            "expected a float storage type, got {other:?}"
        ))),
    }
}

/// The shaders' digest kind code.
fn kind_code(kind: DigestKind) -> u32 {
    match kind {
        DigestKind::CuboidMax => 0,
        DigestKind::CuboidCenter => 1,
        DigestKind::CuboidMean => 2,
        DigestKind::SphereMax => 3,
        DigestKind::SphereCenter => 4,
        DigestKind::SphereMean => 5,
        DigestKind::Centroid => 6,
    }
}

/// Converts a size to u32 for a shader, or fails.
fn u32_of(x: usize, what: &str) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::device(BACKEND, format!("{what}: {x} exceeds u32")))
}

/// A pool window: its binding and first slot.
pub(crate) struct PoolWindow<'a> {
    pub binding: Binding<'a>,
    pub first_slot: u32,
}

impl WgpuDevice {
    /// The pool buffer of a KV op.
    fn kv_pool<'a>(&self, pool: &'a Buffer, what: &str) -> Result<&'a GpuBuffer> {
        self.gpu_buf(pool, &format!("{what}: pool"))
    }

    /// The binding of the slots `slots` touch (validated indices).
    pub(crate) fn pool_window<'a>(
        &self,
        l: &KvLayout,
        pool: &'a GpuBuffer,
        slots: impl Iterator<Item = u32>,
        what: &str,
    ) -> Result<PoolWindow<'a>> {
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        for s in slots {
            lo = lo.min(s);
            hi = hi.max(s);
        }
        if lo == u32::MAX {
            lo = 0;
        }
        let align = slot_align(
            l,
            self.gpu.limits.min_storage_buffer_offset_alignment as u64,
        );
        let first = lo as usize / align * align;
        let sb = l.slot_bytes() as u64;
        let size = (hi as u64 + 1 - first as u64) * sb;
        let (buffer, offset) = pool.within(&self.gpu.device, first as u64 * sb, size, what)?;
        let binding = Binding {
            buffer,
            offset,
            size: size.div_ceil(4) * 4,
        };
        if binding.size > self.gpu.limits.max_storage_buffer_binding_size {
            return Err(Error::device(
                BACKEND,
                format!(
                    "{what}: the slots touched span {} bytes of the pool, more than the \
                     adapter's storage-binding limit of {} bytes",
                    binding.size, self.gpu.limits.max_storage_buffer_binding_size
                ),
            ));
        }
        Ok(PoolWindow {
            binding,
            first_slot: first as u32,
        })
    }

    /// The attention `meta` array: header, rows, pages (slots relative to the window).
    #[allow(clippy::too_many_arguments)]
    fn attn_meta(
        &self,
        l: &KvLayout,
        rows: &[AttnRow],
        pages: &[AttnPage],
        first_slot: u32,
        scale: f32,
        mode: u32,
        has_mask: bool,
        what: &str,
    ) -> Result<Vec<u32>> {
        let mut meta = vec![
            dt_code(l.kv_dtype.dtype())?,
            u32_of(l.heads_per_group, what)?,
            u32_of(l.gqa, what)?,
            u32_of(l.page_size, what)?,
            u32_of(l.head_dim, what)?,
            u32_of(l.slot_elems(), what)?,
            u32_of(l.q_heads(), what)?,
            scale.to_bits(),
            mode,
            has_mask as u32,
            u32_of(rows.len(), what)?,
            u32_of(pages.len(), what)?,
            first_slot,
        ];
        for r in rows {
            meta.extend([r.q_row, r.group, r.pos, r.page_start, r.page_count]);
        }
        for p in pages {
            meta.extend([p.slot - first_slot, p.base_pos, p.len]);
        }
        Ok(meta)
    }

    /// The storage of an attention op's pool, q and mask; the kernels' head-size limit.
    fn attn_inputs<'a>(
        &self,
        what: &str,
        l: &KvLayout,
        pool: &'a Buffer,
        q: &'a Buffer,
        mask: Option<&'a Buffer>,
    ) -> Result<(&'a GpuBuffer, &'a GpuBuffer, Option<&'a GpuBuffer>)> {
        if l.head_dim > 256 {
            return Err(Error::shape(format!(
                "{what}: head_dim {} above the wgpu attention kernels' 256",
                l.head_dim
            )));
        }
        let p = self.kv_pool(pool, what)?;
        let qb = self.gpu_buf(q, &format!("{what}: q"))?;
        let mb = mask
            .map(|m| self.gpu_buf(m, &format!("{what}: mask")))
            .transpose()?;
        Ok((p, qb, mb))
    }
}

impl KvBackend for WgpuDevice {
    fn raw_append_kv(
        &self,
        _: Checked,
        l: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()> {
        let p = self.kv_pool(pool, "append_kv")?;
        let kb = self.gpu_buf(k, "append_kv: k")?;
        let vb = self.gpu_buf(v, "append_kv: v")?;
        if dests.is_empty() {
            return Ok(());
        }
        let w = self.pool_window(l, p, dests.iter().map(|d| d.slot), "append_kv")?;
        let mut meta = vec![
            dt_code(l.kv_dtype.dtype())?,
            u32_of(l.heads_per_group, "append_kv")?,
            u32_of(l.page_size, "append_kv")?,
            u32_of(l.head_dim, "append_kv")?,
            u32_of(l.kv_heads(), "append_kv")?,
            u32_of(l.slot_elems(), "append_kv")?,
            u32_of(dests.len(), "append_kv")?,
        ];
        for d in dests {
            meta.extend([d.token, d.group, d.slot - w.first_slot, d.pos]);
        }
        let threads = dests.len() as u64 * l.heads_per_group as u64 * l.head_dim as u64 * 2;
        self.gpu.launch(
            Kernel::Append,
            &meta,
            &[
                w.binding,
                Binding::whole(kb.single("append_kv")?),
                Binding::whole(vb.single("append_kv")?),
            ],
            threads.div_ceil(256),
            "append_kv",
        )
    }

    fn raw_summarize(
        &self,
        _: Checked,
        l: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()> {
        let p = self.kv_pool(pool, "summarize")?;
        let dg = self.gpu_buf(digests, "summarize: digests")?;
        if jobs.is_empty() {
            return Ok(());
        }
        let w = self.pool_window(l, p, jobs.iter().map(|j| j.slot), "summarize")?;
        let mut meta = vec![
            dt_code(l.kv_dtype.dtype())?,
            u32_of(l.heads_per_group, "summarize")?,
            u32_of(l.page_size, "summarize")?,
            u32_of(l.head_dim, "summarize")?,
            kind_code(kind),
            u32_of(l.slot_elems(), "summarize")?,
            u32_of(jobs.len(), "summarize")?,
        ];
        for j in jobs {
            meta.extend([j.slot - w.first_slot, j.digest, j.len]);
        }
        let sphere = matches!(
            kind,
            DigestKind::SphereMax | DigestKind::SphereCenter | DigestKind::SphereMean
        );
        let (kernel, threads) = if sphere {
            (
                Kernel::SummarizeSphere,
                jobs.len() as u64 * l.heads_per_group as u64,
            )
        } else {
            (
                Kernel::SummarizePerDim,
                jobs.len() as u64 * l.heads_per_group as u64 * l.head_dim as u64,
            )
        };
        self.gpu.launch(
            kernel,
            &meta,
            &[w.binding, Binding::whole(dg.single("summarize")?)],
            threads.div_ceil(64),
            "summarize",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_estimate(
        &self,
        _: Checked,
        l: &KvLayout,
        kind: DigestKind,
        agg: ScoreAgg,
        digests: &Buffer,
        q: &Buffer,
        jobs: &[EstimateJob],
        scores: &Buffer,
    ) -> Result<()> {
        let dg = self.gpu_buf(digests, "estimate: digests")?;
        let qb = self.gpu_buf(q, "estimate: q")?;
        let sc = self.gpu_buf(scores, "estimate: scores")?;
        if jobs.is_empty() {
            return Ok(());
        }
        let mut meta = vec![
            u32_of(l.heads_per_group, "estimate")?,
            u32_of(l.gqa, "estimate")?,
            u32_of(l.head_dim, "estimate")?,
            kind_code(kind),
            match agg {
                ScoreAgg::Mean => 0,
                ScoreAgg::Max => 1,
            },
            u32_of(l.q_heads(), "estimate")?,
            u32_of(jobs.len(), "estimate")?,
        ];
        for j in jobs {
            meta.extend([j.q_row, j.group, j.digest]);
        }
        self.gpu.launch(
            Kernel::Estimate,
            &meta,
            &[
                Binding::whole(dg.single("estimate")?),
                Binding::whole(qb.single("estimate")?),
                Binding::whole(sc.single("estimate")?),
            ],
            (jobs.len() as u64).div_ceil(64),
            "estimate",
        )
    }

    fn raw_topk(
        &self,
        _: Checked,
        scores: &Buffer,
        segments: &[TopkSegment],
        out: &Buffer,
    ) -> Result<()> {
        let sc = self.gpu_buf(scores, "topk: scores")?;
        let ob = self.gpu_buf(out, "topk: out")?;
        let mut groups: Vec<[u32; 5]> = Vec::new();
        let mut at = 0u32;
        for s in segments {
            let mut first = 0;
            while first < s.len {
                groups.push([s.start, s.len, s.k, at, first]);
                first += 64;
            }
            at += s.k;
        }
        if groups.is_empty() {
            return Ok(());
        }
        let mut meta = vec![u32_of(groups.len(), "topk")?];
        meta.extend(groups.iter().flatten());
        self.gpu.launch(
            Kernel::Topk,
            &meta,
            &[
                Binding::whole(sc.single("topk")?),
                Binding::whole(ob.single("topk")?),
            ],
            groups.len() as u64,
            "topk",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_decode_attention(
        &self,
        _: Checked,
        l: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        out: &Buffer,
        page_lse: Option<&Buffer>,
    ) -> Result<()> {
        let what = "decode_attention";
        let ob = self.gpu_buf(out, "decode_attention: out")?;
        let lb = page_lse
            .map(|b| self.gpu_buf(b, "decode_attention: page_lse"))
            .transpose()?;
        let (p, qb, mb) = self.attn_inputs(what, l, pool, q, mask)?;
        if rows.is_empty() {
            return Ok(());
        }
        // Bit 4 of the mode: also write the pages' log-sum-exps into binding 5.
        let lse_bit = if lb.is_some() { 16 } else { 0 };
        let lse_b = match lb {
            Some(b) => Binding::whole(b.single(what)?),
            None => dummy_rw(self, 1),
        };
        let w = self.pool_window(l, p, pages.iter().map(|p| p.slot), what)?;
        let heads = l.heads_per_group as u64 * l.gqa as u64;
        let mask_b = match mb {
            Some(m) => Binding::whole(m.single(what)?),
            None => dummy_rw(self, 0),
        };
        let qw = Binding::whole(qb.single(what)?);
        let ow = Binding::whole(ob.single(what)?);
        if rows.iter().all(|r| r.page_count <= DECODE_CHUNK_PAGES) {
            let meta = self.attn_meta(
                l,
                rows,
                pages,
                w.first_slot,
                scale,
                lse_bit,
                mb.is_some(),
                what,
            )?;
            return self.gpu.launch(
                Kernel::Attention,
                &meta,
                &[w.binding, qw, mask_b, ow, lse_b, dummy_rw(self, 2)],
                rows.len() as u64 * heads,
                what,
            );
        }
        // Flash-decoding: long rows are split into chunks of pages, each chunk's partial
        // softmax state is computed by its own workgroups, and a combine pass merges them.
        let mut chunks = Vec::new();
        let mut combine = vec![
            u32_of(l.heads_per_group, what)?,
            u32_of(l.gqa, what)?,
            u32_of(l.head_dim, what)?,
            u32_of(l.q_heads(), what)?,
            u32_of(rows.len(), what)?,
        ];
        for r in rows {
            let first = u32_of(chunks.len(), what)?;
            let n = r.page_count.div_ceil(DECODE_CHUNK_PAGES).max(1);
            for c in 0..n {
                let start = c * DECODE_CHUNK_PAGES;
                chunks.push(AttnRow {
                    page_start: r.page_start + start,
                    page_count: (r.page_count - start).min(DECODE_CHUNK_PAGES),
                    ..*r
                });
            }
            combine.extend([r.q_row, r.group, first, n]);
        }
        let parts = self.gpu.buffer(
            chunks.len() as u64 * heads * (l.head_dim as u64 + 2) * 4,
            wgpu::BufferUsages::STORAGE,
            "arkvale attention partials",
        )?;
        let meta = self.attn_meta(
            l,
            &chunks,
            pages,
            w.first_slot,
            scale,
            3 | lse_bit,
            mb.is_some(),
            what,
        )?;
        let mut enc = self.gpu.encoder();
        self.gpu.encode(
            &mut enc,
            Kernel::Attention,
            &meta,
            &[
                w.binding,
                qw,
                mask_b,
                Binding::whole(&parts),
                lse_b,
                dummy_rw(self, 2),
            ],
            chunks.len() as u64 * heads,
            what,
        )?;
        self.gpu.encode(
            &mut enc,
            Kernel::Combine,
            &combine,
            &[Binding::whole(&parts), ow],
            (rows.len() as u64 * heads * l.head_dim as u64).div_ceil(256),
            what,
        )?;
        self.gpu.submit(enc, what)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_prefill_attention(
        &self,
        _: Checked,
        l: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        state: &AttnState,
    ) -> Result<()> {
        let what = "prefill_attention";
        let acc = self.gpu_buf(&state.acc, "prefill_attention: state.acc")?;
        let mx = self.gpu_buf(&state.max, "prefill_attention: state.max")?;
        let sm = self.gpu_buf(&state.sum, "prefill_attention: state.sum")?;
        let (p, qb, mb) = self.attn_inputs(what, l, pool, q, mask)?;
        if rows.is_empty() {
            return Ok(());
        }
        let w = self.pool_window(l, p, pages.iter().map(|p| p.slot), what)?;
        let meta = self.attn_meta(l, rows, pages, w.first_slot, scale, 1, mb.is_some(), what)?;
        let dummy = dummy_rw(self, 0);
        self.gpu.launch(
            Kernel::Attention,
            &meta,
            &[
                w.binding,
                Binding::whole(qb.single("prefill_attention")?),
                match mb {
                    Some(m) => Binding::whole(m.single(what)?),
                    None => dummy,
                },
                Binding::whole(acc.single("prefill_attention")?),
                Binding::whole(mx.single("prefill_attention")?),
                Binding::whole(sm.single("prefill_attention")?),
            ],
            rows.len() as u64 * l.heads_per_group as u64 * l.gqa as u64,
            what,
        )
    }

    fn raw_attention_finalize(
        &self,
        _: Checked,
        l: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()> {
        let acc = self.gpu_buf(&state.acc, "attention_finalize: state.acc")?;
        let sm = self.gpu_buf(&state.sum, "attention_finalize: state.sum")?;
        self.gpu_buf(&state.max, "attention_finalize: state.max")?;
        let ob = self.gpu_buf(out, "attention_finalize: out")?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut meta = vec![
            u32_of(l.heads_per_group, "attention_finalize")?,
            u32_of(l.gqa, "attention_finalize")?,
            u32_of(l.head_dim, "attention_finalize")?,
            u32_of(l.q_heads(), "attention_finalize")?,
            u32_of(rows.len(), "attention_finalize")?,
        ];
        for r in rows {
            meta.extend([r.q_row, r.group]);
        }
        let threads =
            rows.len() as u64 * l.heads_per_group as u64 * l.gqa as u64 * l.head_dim as u64;
        self.gpu.launch(
            Kernel::Finalize,
            &meta,
            &[
                Binding::whole(acc.single("attention_finalize")?),
                Binding::whole(sm.single("attention_finalize")?),
                Binding::whole(ob.single("attention_finalize")?),
            ],
            threads.div_ceil(256),
            "attention_finalize",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_attention_weights(
        &self,
        _: Checked,
        l: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        weights: &Buffer,
    ) -> Result<()> {
        let what = "attention_weights";
        let wb = self.gpu_buf(weights, "attention_weights: weights")?;
        let (p, qb, mb) = self.attn_inputs(what, l, pool, q, mask)?;
        let n = pages.len() * l.tokens_per_slot();
        if rows.is_empty() || pages.is_empty() {
            return Ok(());
        }
        let w = self.pool_window(l, p, pages.iter().map(|p| p.slot), what)?;
        let heads = l.heads_per_group as u64 * l.gqa as u64;
        // Pass 1: each (row, head)'s softmax max and sum.
        let stats = self.gpu.buffer(
            rows.len() as u64 * heads * 8,
            wgpu::BufferUsages::STORAGE,
            "arkvale attention stats",
        )?;
        let meta = self.attn_meta(l, rows, pages, w.first_slot, scale, 2, mb.is_some(), what)?;
        let dummy = dummy_rw(self, 0);
        let mask_b = match mb {
            Some(m) => Binding::whole(m.single(what)?),
            None => dummy,
        };
        let mut enc = self.gpu.encoder();
        self.gpu.encode(
            &mut enc,
            Kernel::Attention,
            &meta,
            &[
                w.binding,
                Binding::whole(qb.single("attention_weights")?),
                mask_b,
                Binding::whole(&stats),
                dummy_rw(self, 1),
                dummy_rw(self, 2),
            ],
            rows.len() as u64 * heads,
            what,
        )?;
        // Pass 2: every token weight adds its probabilities, row by row.
        self.gpu.encode(
            &mut enc,
            Kernel::Weights,
            &meta,
            &[
                w.binding,
                Binding::whole(qb.single("attention_weights")?),
                mask_b,
                Binding::whole(&stats),
                Binding::whole(wb.single("attention_weights")?),
            ],
            (n as u64).div_ceil(64),
            what,
        )?;
        self.gpu.submit(enc, what)?;
        Ok(())
    }
}

/// A scratch binding for a kernel's absent input or unused outputs (`i` 0: the mask, 1 and
/// 2: the state outputs; distinct buffers, so that no two bindings alias).
fn dummy_rw(dev: &WgpuDevice, i: usize) -> Binding<'_> {
    Binding::whole(&dev.gpu.dummies[i])
}
