//! The [`Backend`] traits — what a backend implements: [`MemoryBackend`], [`KvBackend`],
//! [`DenseBackend`] — and the checked [`Device`] that core builds on top of them, once for
//! every backend.
//!
//! A backend implements [`Backend`]; the blanket `impl<B: Backend> Device for B` below is the
//! only [`Device`] implementation. Each of its methods first runs every check that does not
//! depend on the backend — buffer dtypes and lengths, aliasing of outputs and inputs (by
//! [`Buffer::id`]), the KV layout, every descriptor, page-copy plans, element and byte ranges
//! (all in [`crate::validate`]) — and only then calls the backend's `raw_*` method. So bad
//! input is rejected with the same [`Error`] (variant and wording) on every backend, before
//! any backend code runs, and the checks are tested once, here.
//!
//! A `raw_*` method that receives a [`Checked`] token may assume that its input passed those
//! checks (the token can only be made in this module, so the methods cannot be reached with
//! unchecked input from outside core). A backend still checks what only it can know: that a
//! [`Buffer`], [`HostBuffer`] or [`Event`] belongs to it (the downcast of its storage,
//! [`Error::Device`] otherwise), its own limits (binding sizes, launch dimensions), and its
//! own hazards (the CPU backend's in-flight recalls). It must still never panic.

use crate::dense::{MatmulDims, Rope};
use crate::validate::{self, at_least, product};
use crate::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, DType, Device, DigestKind, Error,
    EstimateJob, Event, HostBuffer, KvLayout, Result, ScoreAgg, SharedBytes, SummarizeJob,
    TopkSegment,
};

/// Proof that the [`Device`] layer checked a call's input: made only by core, handed to the
/// backend's `raw_*` method, which may then assume valid input (see the module docs).
#[derive(Debug)]
pub struct Checked {
    _private: (),
}

impl Checked {
    fn new() -> Self {
        Checked { _private: () }
    }
}

/// What a backend implements: the [`Device`] operations without their input checks, which
/// core's `impl<B: Backend> Device for B` runs before calling them (see the module docs).
/// The operations come in three traits, one per kind — [`MemoryBackend`] (buffers, copies,
/// host memory, page backup and recall), [`KvBackend`] (the KV-cache kernels) and
/// [`DenseBackend`] (the model's dense ops) — so that a backend implements each next to the
/// code it runs; every type that implements all three is a `Backend`.
/// Each method's semantics are those of the [`Device`] method of the same name without the
/// `raw_` prefix; that documentation also says which input is valid.
pub trait Backend: MemoryBackend + KvBackend + DenseBackend {}

impl<T: MemoryBackend + KvBackend + DenseBackend> Backend for T {}

/// [`Device::import`] by copying: allocates the buffer, then writes `bytes` (for the dtypes a
/// backend does not keep in place, and [`MemoryBackend::raw_import`]'s default).
fn import_by_copy<B: MemoryBackend + ?Sized>(
    dev: &B,
    ok: Checked,
    dtype: DType,
    len: usize,
    bytes: &SharedBytes,
) -> Result<Buffer> {
    let buf = dev.raw_alloc(ok, dtype, len)?;
    dev.raw_write(Checked::new(), &buf, 0, bytes.as_slice())?;
    Ok(buf)
}

/// The memory part of a [`Backend`]: its name, device buffers, copies, host buffers and the
/// asynchronous page backup/recall with their events.
pub trait MemoryBackend: Send + Sync {
    /// See [`Device::name`].
    fn raw_name(&self) -> String;

    /// See [`Device::alloc`]: `len` is a whole number of blocks whose bytes do not overflow,
    /// and a quantized `dtype` is one the backend supports.
    fn raw_alloc(&self, ok: Checked, dtype: DType, len: usize) -> Result<Buffer>;
    /// See [`Device::import`]: as for `raw_alloc`, and `bytes` is exactly `len` elements.
    /// Called only for the dtypes [`MemoryBackend::raw_imports_in_place`] accepts (core copies
    /// the others); a backend that reads host memory in place overrides both. The default
    /// copies (allocates, then writes).
    fn raw_import(
        &self,
        ok: Checked,
        dtype: DType,
        len: usize,
        bytes: SharedBytes,
    ) -> Result<Buffer> {
        import_by_copy(self, ok, dtype, len, &bytes)
    }
    /// See [`Device::imports_in_place`].
    fn raw_imports_in_place(&self, _dtype: DType) -> bool {
        false
    }
    /// See [`Device::write`]: `data` is whole elements (whole blocks at a block boundary) of
    /// the buffer's dtype and lies inside it.
    fn raw_write(&self, ok: Checked, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()>;
    /// See [`Device::read`]: `out` is whole elements inside the buffer.
    fn raw_read(&self, ok: Checked, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()>;
    /// See [`Device::copy`]: same dtype, both ranges inside their buffers (whole blocks for
    /// quantized types); `src` and `dst` may be one buffer (overlapping ranges: memmove).
    fn raw_copy(
        &self,
        ok: Checked,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()>;
    /// See [`Device::fill_f32`]: an f32 buffer, the range inside it.
    fn raw_fill_f32(
        &self,
        ok: Checked,
        buf: &Buffer,
        offset: usize,
        len: usize,
        value: f32,
    ) -> Result<()>;
    /// See [`Device::synchronize`].
    fn raw_synchronize(&self) -> Result<()>;

    /// See [`Device::alloc_host`].
    fn raw_alloc_host(&self, bytes: usize) -> Result<HostBuffer>;
    /// See [`Device::host_write`]: the byte range lies inside `host`.
    fn raw_host_write(
        &self,
        ok: Checked,
        host: &HostBuffer,
        offset: usize,
        data: &[u8],
    ) -> Result<()>;
    /// See [`Device::host_read`]: the byte range lies inside `host`.
    fn raw_host_read(
        &self,
        ok: Checked,
        host: &HostBuffer,
        offset: usize,
        out: &mut [u8],
    ) -> Result<()>;

    /// See [`Device::backup_pages`]: a valid layout, a pool of its `kv_dtype`, every slot in
    /// the pool and every host range (`layout.slot_bytes()` bytes) inside `host`; the plan is
    /// [`validate::page_copy_plan`].
    fn raw_backup_pages(
        &self,
        ok: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event>;
    /// See [`Device::recall_pages`]: checked as for [`Backend::raw_backup_pages`].
    fn raw_recall_pages(
        &self,
        ok: Checked,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event>;
    /// See [`Device::wait_on_device`] (the event's origin is the backend's to check).
    fn raw_wait_on_device(&self, event: &Event) -> Result<()>;
}

/// The KV-cache part of a [`Backend`]: append, summarize, estimate, top-k and the paged
/// attention kernels.
pub trait KvBackend: Send + Sync {
    /// See [`Device::append_kv`]: a valid layout, a pool of its `kv_dtype`, f32 `k`/`v`
    /// other than the pool, destinations as [`validate::append`] checks.
    fn raw_append_kv(
        &self,
        ok: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()>;
    /// See [`Device::summarize`]: f32 digests other than the pool, jobs as
    /// [`validate::summarize`] checks.
    fn raw_summarize(
        &self,
        ok: Checked,
        layout: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()>;
    /// See [`Device::estimate`]: f32 buffers, `scores` none of the inputs, jobs as
    /// [`validate::estimate`] checks.
    #[allow(clippy::too_many_arguments)]
    fn raw_estimate(
        &self,
        ok: Checked,
        layout: &KvLayout,
        kind: DigestKind,
        agg: ScoreAgg,
        digests: &Buffer,
        q: &Buffer,
        jobs: &[EstimateJob],
        scores: &Buffer,
    ) -> Result<()>;
    /// See [`Device::topk`]: f32 scores, u32 out, segments as [`validate::topk`] checks.
    fn raw_topk(
        &self,
        ok: Checked,
        scores: &Buffer,
        segments: &[TopkSegment],
        out: &Buffer,
    ) -> Result<()>;
    /// See [`Device::decode_attention`]: f32 q/out/page_lse, u8 mask, the outputs distinct
    /// and none of the inputs, rows and pages as [`validate::attention`] and
    /// [`validate::page_lse`] check.
    #[allow(clippy::too_many_arguments)]
    fn raw_decode_attention(
        &self,
        ok: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        out: &Buffer,
        page_lse: Option<&Buffer>,
    ) -> Result<()>;
    /// See [`Device::prefill_attention`]: as for decode, the state's three f32 buffers
    /// distinct, none of the inputs, and large enough ([`validate::state`]).
    #[allow(clippy::too_many_arguments)]
    fn raw_prefill_attention(
        &self,
        ok: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        state: &AttnState,
    ) -> Result<()>;
    /// See [`Device::attention_finalize`]: f32 buffers, `out` not `acc` or `sum`, every row
    /// inside the state and `out`.
    fn raw_attention_finalize(
        &self,
        ok: Checked,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()>;
    /// See [`Device::attention_weights`]: as for decode, `weights` f32, none of the inputs,
    /// holding `pages.len() * hg * p` values.
    #[allow(clippy::too_many_arguments)]
    fn raw_attention_weights(
        &self,
        ok: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        weights: &Buffer,
    ) -> Result<()>;
}

/// The dense part of a [`Backend`]: the model's matmul, norms, RoPE, activations, embedding
/// and argmax, and which weight types it has kernels for.
pub trait DenseBackend: Send + Sync {
    /// Whether the backend has kernels for weights of `dtype` (see
    /// [`Device::supports_weight_dtype`]; the default takes the float types).
    fn raw_supports_weight_dtype(&self, dtype: DType) -> bool {
        dtype.is_float()
    }

    /// See [`Device::matmul`]: f32 `x`/`out`, weights of a supported type whose rows are whole
    /// blocks, `out` none of the inputs, every buffer large enough (the sizes do not overflow).
    fn raw_matmul(
        &self,
        ok: Checked,
        dims: &MatmulDims,
        x: &Buffer,
        w: &Buffer,
        out: &Buffer,
    ) -> Result<()>;
    /// See [`Device::rmsnorm`]: as [`validate::rmsnorm`] checks, f32, `out` none of the inputs.
    #[allow(clippy::too_many_arguments)]
    fn raw_rmsnorm(
        &self,
        ok: Checked,
        rows: usize,
        dim: usize,
        eps: f32,
        x: &Buffer,
        weight: &Buffer,
        out: &Buffer,
    ) -> Result<()>;
    /// See [`Device::rope`]: as [`validate::rope`] checks, f32.
    fn raw_rope(&self, ok: Checked, rope: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()>;
    /// See [`Device::silu_mul`]: f32, `len` elements in each, `out` none of the inputs.
    fn raw_silu_mul(
        &self,
        ok: Checked,
        len: usize,
        gate: &Buffer,
        up: &Buffer,
        out: &Buffer,
    ) -> Result<()>;
    /// See [`Device::add`]: f32, `len` elements in each, `x` and `y` different buffers.
    fn raw_add(&self, ok: Checked, len: usize, x: &Buffer, y: &Buffer) -> Result<()>;
    /// See [`Device::add_bias`]: f32, different buffers, `cols > 0` when `rows > 0`,
    /// `rows * cols` does not overflow and fits `x`, `cols` fits `bias`.
    fn raw_add_bias(
        &self,
        ok: Checked,
        rows: usize,
        cols: usize,
        x: &Buffer,
        bias: &Buffer,
    ) -> Result<()>;
    /// See [`Device::embedding`]: `dim > 0`, a supported weight table whose rows are whole
    /// blocks, every id inside the vocabulary, f32 `out` (not the table) large enough.
    fn raw_embedding(
        &self,
        ok: Checked,
        dim: usize,
        table: &Buffer,
        ids: &[u32],
        out: &Buffer,
    ) -> Result<()>;
    /// See [`Device::argmax`]: `cols > 0`, f32 logits of `rows * cols` (no overflow), u32 out
    /// of `rows`.
    fn raw_argmax(
        &self,
        ok: Checked,
        rows: usize,
        cols: usize,
        logits: &Buffer,
        out: &Buffer,
    ) -> Result<()>;
}

/// The checks every attention op shares: the layout, the dtypes of pool, q and mask, and that
/// no output is an input or another output.
fn attn_inputs(
    what: &str,
    layout: &KvLayout,
    pool: &Buffer,
    q: &Buffer,
    mask: Option<&Buffer>,
    outputs: &[(&Buffer, &str)],
) -> Result<()> {
    validate::layout(layout)?;
    validate::dtype(pool, layout.kv_dtype.dtype(), &format!("{what}: pool"))?;
    validate::dtype(q, DType::F32, &format!("{what}: q"))?;
    if let Some(m) = mask {
        validate::dtype(m, DType::U8, &format!("{what}: mask"))?;
    }
    for (o, name) in outputs {
        validate::dtype(o, DType::F32, &format!("{what}: {name}"))?;
    }
    let mut inputs = vec![pool, q];
    inputs.extend(mask);
    let outs: Vec<&Buffer> = outputs.iter().map(|(o, _)| *o).collect();
    for o in &outs {
        validate::not_aliased(o, &inputs, what)?;
    }
    validate::distinct_outputs(&outs, what)
}

/// The weight checks of matmul and embedding: a weight type the backend supports, with rows
/// of `row_len` values that are whole blocks.
fn weights<B: Backend + ?Sized>(dev: &B, w: &Buffer, row_len: usize, what: &str) -> Result<()> {
    let dtype = w.dtype();
    if !dtype.is_weight() {
        return Err(Error::shape(format!(
            "{what}: expected an f32, f16, bf16 or quantized buffer, got {dtype}"
        )));
    }
    if !dev.raw_supports_weight_dtype(dtype) {
        return Err(Error::UnsupportedWeight {
            backend: dev.raw_name(),
            dtype,
        });
    }
    if row_len % dtype.block_len() != 0 {
        return Err(Error::shape(format!(
            "{what}: rows of {row_len} values are not whole {dtype} blocks of {}",
            dtype.block_len()
        )));
    }
    Ok(())
}

/// The checks of [`Device::alloc`] (and [`Device::import`]): a quantized `dtype` must be one
/// the backend has kernels for, and `len` elements must be whole blocks whose bytes fit.
fn alloc_checks<B: Backend + ?Sized>(dev: &B, dtype: DType, len: usize) -> Result<()> {
    if dtype.quant().is_some() && !dev.raw_supports_weight_dtype(dtype) {
        return Err(Error::UnsupportedWeight {
            backend: dev.raw_name(),
            dtype,
        });
    }
    if dtype.bytes_for(len).is_none() {
        return Err(Error::shape(format!(
            "alloc: {len} x {dtype} overflows or is not a whole number of blocks"
        )));
    }
    Ok(())
}

/// The checked [`Device`] of every backend: each method runs its checks from
/// [`crate::validate`], then the backend's `raw_*` method (see the module docs).
impl<B: Backend> Device for B {
    fn name(&self) -> String {
        self.raw_name()
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer> {
        alloc_checks(self, dtype, len)?;
        self.raw_alloc(Checked::new(), dtype, len)
    }

    fn import(&self, dtype: DType, len: usize, bytes: SharedBytes) -> Result<Buffer> {
        alloc_checks(self, dtype, len)?;
        validate::import(dtype, len, bytes.len())?;
        if self.raw_imports_in_place(dtype) {
            self.raw_import(Checked::new(), dtype, len, bytes)
        } else {
            import_by_copy(self, Checked::new(), dtype, len, &bytes)
        }
    }

    fn imports_in_place(&self, dtype: DType) -> bool {
        self.raw_imports_in_place(dtype)
    }

    fn write(&self, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        let len = validate::byte_span(buf.dtype(), offset, data.len(), "write")?;
        validate::range(offset, len, buf.len(), "write")?;
        self.raw_write(Checked::new(), buf, offset, data)
    }

    fn read(&self, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let len = validate::byte_span(buf.dtype(), offset, out.len(), "read")?;
        validate::range(offset, len, buf.len(), "read")?;
        self.raw_read(Checked::new(), buf, offset, out)
    }

    fn copy(
        &self,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        validate::copy(src, src_off, dst, dst_off, len)?;
        self.raw_copy(Checked::new(), src, src_off, dst, dst_off, len)
    }

    fn fill_f32(&self, buf: &Buffer, offset: usize, len: usize, value: f32) -> Result<()> {
        validate::dtype(buf, DType::F32, "fill_f32")?;
        validate::range(offset, len, buf.len(), "fill_f32")?;
        self.raw_fill_f32(Checked::new(), buf, offset, len, value)
    }

    fn synchronize(&self) -> Result<()> {
        self.raw_synchronize()
    }

    fn alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        self.raw_alloc_host(bytes)
    }

    fn host_write(&self, host: &HostBuffer, offset: usize, data: &[u8]) -> Result<()> {
        validate::range(offset, data.len(), host.bytes(), "host_write (bytes)")?;
        self.raw_host_write(Checked::new(), host, offset, data)
    }

    fn host_read(&self, host: &HostBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        validate::range(offset, out.len(), host.bytes(), "host_read (bytes)")?;
        self.raw_host_read(Checked::new(), host, offset, out)
    }

    fn backup_pages(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event> {
        validate::page_copies(layout, pool, copies, host, "backup_pages")?;
        self.raw_backup_pages(Checked::new(), layout, pool, copies, host)
    }

    fn recall_pages(
        &self,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event> {
        validate::page_copies(layout, pool, copies, host, "recall_pages")?;
        self.raw_recall_pages(Checked::new(), layout, host, copies, pool)
    }

    fn wait_on_device(&self, event: &Event) -> Result<()> {
        self.raw_wait_on_device(event)
    }

    fn append_kv(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()> {
        validate::layout(layout)?;
        validate::dtype(pool, layout.kv_dtype.dtype(), "append_kv: pool")?;
        validate::dtype(k, DType::F32, "append_kv: k")?;
        validate::dtype(v, DType::F32, "append_kv: v")?;
        validate::not_aliased(pool, &[k, v], "append_kv")?;
        validate::append(layout, pool.len(), k.len(), v.len(), dests)?;
        self.raw_append_kv(Checked::new(), layout, pool, k, v, dests)
    }

    fn summarize(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()> {
        validate::layout(layout)?;
        validate::dtype(pool, layout.kv_dtype.dtype(), "summarize: pool")?;
        validate::dtype(digests, DType::F32, "summarize: digests")?;
        validate::not_aliased(digests, &[pool], "summarize")?;
        validate::summarize(layout, kind, pool.len(), jobs, digests.len())?;
        self.raw_summarize(Checked::new(), layout, kind, pool, jobs, digests)
    }

    fn estimate(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        agg: ScoreAgg,
        digests: &Buffer,
        q: &Buffer,
        jobs: &[EstimateJob],
        scores: &Buffer,
    ) -> Result<()> {
        validate::layout(layout)?;
        validate::dtype(digests, DType::F32, "estimate: digests")?;
        validate::dtype(q, DType::F32, "estimate: q")?;
        validate::dtype(scores, DType::F32, "estimate: scores")?;
        validate::not_aliased(scores, &[digests, q], "estimate")?;
        validate::estimate(layout, kind, digests.len(), q.len(), jobs, scores.len())?;
        self.raw_estimate(Checked::new(), layout, kind, agg, digests, q, jobs, scores)
    }

    fn topk(&self, scores: &Buffer, segments: &[TopkSegment], out: &Buffer) -> Result<()> {
        validate::dtype(scores, DType::F32, "topk: scores")?;
        validate::dtype(out, DType::U32, "topk: out")?;
        validate::topk(scores.len(), segments, out.len())?;
        self.raw_topk(Checked::new(), scores, segments, out)
    }

    fn decode_attention(
        &self,
        layout: &KvLayout,
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
        let mut outputs = vec![(out, "out")];
        outputs.extend(page_lse.map(|b| (b, "page_lse")));
        attn_inputs(what, layout, pool, q, mask, &outputs)?;
        let mask_len = mask.map(Buffer::len);
        validate::attention(
            layout,
            pool.len(),
            q.len(),
            out.len(),
            rows,
            pages,
            mask_len,
        )?;
        if let Some(b) = page_lse {
            validate::page_lse(layout, rows, pages.len(), b.len())?;
        }
        self.raw_decode_attention(
            Checked::new(),
            layout,
            pool,
            q,
            rows,
            pages,
            mask,
            scale,
            out,
            page_lse,
        )
    }

    fn prefill_attention(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        state: &AttnState,
    ) -> Result<()> {
        let what = "prefill_attention";
        let outputs = [
            (&state.acc, "state.acc"),
            (&state.max, "state.max"),
            (&state.sum, "state.sum"),
        ];
        attn_inputs(what, layout, pool, q, mask, &outputs)?;
        let mask_len = mask.map(Buffer::len);
        validate::attention(layout, pool.len(), q.len(), q.len(), rows, pages, mask_len)?;
        let (acc, max, sum) = (state.acc.len(), state.max.len(), state.sum.len());
        validate::state(layout, rows, acc, max, sum)?;
        self.raw_prefill_attention(
            Checked::new(),
            layout,
            pool,
            q,
            rows,
            pages,
            mask,
            scale,
            state,
        )
    }

    fn attention_finalize(
        &self,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()> {
        validate::layout(layout)?;
        validate::dtype(&state.acc, DType::F32, "attention_finalize: state.acc")?;
        validate::dtype(&state.sum, DType::F32, "attention_finalize: state.sum")?;
        validate::dtype(&state.max, DType::F32, "attention_finalize: state.max")?;
        validate::dtype(out, DType::F32, "attention_finalize: out")?;
        validate::not_aliased(out, &[&state.acc, &state.sum], "attention_finalize")?;
        let (acc, max, sum) = (state.acc.len(), state.max.len(), state.sum.len());
        validate::state(layout, rows, acc, max, sum)?;
        validate::state(layout, rows, out.len(), usize::MAX, usize::MAX)?;
        self.raw_attention_finalize(Checked::new(), layout, state, rows, out)
    }

    fn attention_weights(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        weights: &Buffer,
    ) -> Result<()> {
        let what = "attention_weights";
        attn_inputs(what, layout, pool, q, mask, &[(weights, "weights")])?;
        let mask_len = mask.map(Buffer::len);
        validate::attention(layout, pool.len(), q.len(), q.len(), rows, pages, mask_len)?;
        validate::range(
            0,
            pages.len().saturating_mul(layout.tokens_per_slot()),
            weights.len(),
            "attention_weights: weights",
        )?;
        self.raw_attention_weights(
            Checked::new(),
            layout,
            pool,
            q,
            rows,
            pages,
            mask,
            scale,
            weights,
        )
    }

    fn supports_weight_dtype(&self, dtype: DType) -> bool {
        self.raw_supports_weight_dtype(dtype)
    }

    fn matmul(&self, dims: &MatmulDims, x: &Buffer, w: &Buffer, out: &Buffer) -> Result<()> {
        let MatmulDims { m, n, k } = *dims;
        validate::dtype(x, DType::F32, "matmul: x")?;
        weights(self, w, k, "matmul: weights")?;
        validate::dtype(out, DType::F32, "matmul: out")?;
        validate::not_aliased(out, &[x, w], "matmul")?;
        at_least(x, product(m, k, "matmul: x")?, "matmul: x [m, k]")?;
        let w_len = product(n, k, "matmul: weights")?;
        at_least(w, w_len, "matmul: weights [n, k]")?;
        at_least(out, product(m, n, "matmul: out")?, "matmul: out [m, n]")?;
        self.raw_matmul(Checked::new(), dims, x, w, out)
    }

    fn rmsnorm(
        &self,
        rows: usize,
        dim: usize,
        eps: f32,
        x: &Buffer,
        weight: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        validate::dtype(x, DType::F32, "rmsnorm: x")?;
        validate::dtype(weight, DType::F32, "rmsnorm: weight")?;
        validate::dtype(out, DType::F32, "rmsnorm: out")?;
        validate::not_aliased(out, &[x, weight], "rmsnorm")?;
        validate::rmsnorm(rows, dim, eps, x, weight, out)?;
        self.raw_rmsnorm(Checked::new(), rows, dim, eps, x, weight, out)
    }

    fn rope(&self, rope: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()> {
        validate::dtype(x, DType::F32, "rope: x")?;
        validate::rope(rope, positions.len(), x)?;
        self.raw_rope(Checked::new(), rope, positions, x)
    }

    fn silu_mul(&self, len: usize, gate: &Buffer, up: &Buffer, out: &Buffer) -> Result<()> {
        validate::dtype(gate, DType::F32, "silu_mul: gate")?;
        validate::dtype(up, DType::F32, "silu_mul: up")?;
        validate::dtype(out, DType::F32, "silu_mul: out")?;
        validate::not_aliased(out, &[gate, up], "silu_mul")?;
        at_least(gate, len, "silu_mul: gate")?;
        at_least(up, len, "silu_mul: up")?;
        at_least(out, len, "silu_mul: out")?;
        self.raw_silu_mul(Checked::new(), len, gate, up, out)
    }

    fn add(&self, len: usize, x: &Buffer, y: &Buffer) -> Result<()> {
        validate::dtype(x, DType::F32, "add: x")?;
        validate::dtype(y, DType::F32, "add: y")?;
        if x.id() == y.id() {
            return Err(Error::shape("add: x and y must be different buffers"));
        }
        at_least(x, len, "add: x")?;
        at_least(y, len, "add: y")?;
        self.raw_add(Checked::new(), len, x, y)
    }

    fn add_bias(&self, rows: usize, cols: usize, x: &Buffer, bias: &Buffer) -> Result<()> {
        validate::dtype(x, DType::F32, "add_bias: x")?;
        validate::dtype(bias, DType::F32, "add_bias: bias")?;
        if x.id() == bias.id() {
            return Err(Error::shape(
                "add_bias: x and bias must be different buffers",
            ));
        }
        if cols == 0 && rows > 0 {
            return Err(Error::shape("add_bias: rows of 0 values"));
        }
        let len = product(rows, cols, "add_bias")?;
        at_least(x, len, "add_bias: x [rows, cols]")?;
        if rows > 0 {
            at_least(bias, cols, "add_bias: bias [cols]")?;
        }
        self.raw_add_bias(Checked::new(), rows, cols, x, bias)
    }

    fn embedding(&self, dim: usize, table: &Buffer, ids: &[u32], out: &Buffer) -> Result<()> {
        if dim == 0 {
            return Err(Error::shape("embedding: rows of 0 values"));
        }
        weights(self, table, dim, "embedding: table")?;
        validate::dtype(out, DType::F32, "embedding: out")?;
        validate::not_aliased(out, &[table], "embedding")?;
        let vocab = table.len() / dim;
        if let Some((t, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= vocab)
        {
            return Err(Error::shape(format!(
                "embedding: token id {id} (position {t}) outside a vocabulary of {vocab}"
            )));
        }
        let len = product(ids.len(), dim, "embedding")?;
        at_least(out, len, "embedding: out [ids, dim]")?;
        self.raw_embedding(Checked::new(), dim, table, ids, out)
    }

    fn argmax(&self, rows: usize, cols: usize, logits: &Buffer, out: &Buffer) -> Result<()> {
        validate::dtype(logits, DType::F32, "argmax: logits")?;
        validate::dtype(out, DType::U32, "argmax: out")?;
        if cols == 0 {
            return Err(Error::shape("argmax: rows of 0 columns have no maximum"));
        }
        let len = product(rows, cols, "argmax")?;
        at_least(logits, len, "argmax: logits [rows, cols]")?;
        at_least(out, rows, "argmax: out [rows]")?;
        self.raw_argmax(Checked::new(), rows, cols, logits, out)
    }
}

#[cfg(test)]
mod tests;
