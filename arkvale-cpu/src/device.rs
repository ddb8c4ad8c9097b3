//! [`CpuDevice`]: its [`MemoryBackend`] and [`KvBackend`] implementations, which glue
//! buffers, the copy worker and the KV kernels together (the
//! [`DenseBackend`](arkvale_core::DenseBackend) part is in `dense_ops`). Core's checked
//! [`Device`] layer has validated every call's input (dtypes, lengths, aliasing, descriptors,
//! ranges) before it gets here; each method looks up its handles' storage (rejecting another
//! device's), guards in-flight copies, takes the buffers' locks, and runs a kernel on this
//! device's own rayon pool.
//!
//! See [`CpuDevice`] for how the [`Device`] contract maps to the CPU.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, Checked, DType, DigestKind, Error,
    EstimateJob, Event, HostBuffer, KvBackend, KvLayout, MemoryBackend, Result, ScoreAgg,
    SharedBytes, SummarizeJob, TopkSegment,
};
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::BACKEND;
use crate::attention::{self, StateMut};
use crate::buffer::{self, Arena, CopyDir, Data, Storage};
use crate::copy_worker::CopyWorker;
use crate::digest_ops;
use crate::dispatch::{
    AppendKernel, AttnInputs, AttnKernel, AttnOp, SummarizeKernel, f32s, f32s_mut, with_pool,
};
use crate::event::CpuEvent;
use crate::par::{INLINE_WORK, Par};
#[cfg(doc)]
use arkvale_core::Device;
use arkvale_core::validate;

/// Ids of devices made so far, so that a handle can be traced to its device.
static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// The multithreaded CPU backend: f32 arithmetic, f32/f16/bf16 KV storage, a persistent
/// rayon pool for compute (small ops run inline on the calling thread instead) and one copy
/// thread for asynchronous page copies between its "device" arena and its host arena.
///
/// # How the `Device` contract maps to the CPU
///
/// * **Stream order.** Compute methods run to completion before they return (fanned out over
///   the device's rayon pool, or inline on the calling thread when the op is smaller than about
///   64k element operations), so a later operation trivially observes every earlier one, and
///   every copy observes the compute issued before it.
/// * **Asynchronous copies.** [`Device::backup_pages`] / [`Device::recall_pages`] validate their
///   descriptors, queue a job on the copy thread and return its [`CpuEvent`] at once; the
///   caller computes meanwhile. (A recall, which the cache waits for right away, runs at once
///   on the calling thread instead when no earlier copy is still queued: same order, no
///   thread hand-off; its event is returned complete.) Because compute has no queue of its own here,
///   [`Device::wait_on_device`] ("later compute waits for the event") **blocks the calling
///   thread** until the event completed. [`Device::synchronize`] waits for every queued copy.
///   Each pool remembers its slots that in-flight copies move, until the caller has seen the
///   copy's event complete (`wait_on_device`, `wait_host`, `is_done` returning true) or
///   synchronized:
///   * a backup holds exactly what its slots held when it was issued: an op that would
///     overwrite such a slot first waits (blocking the caller) for the copy thread to have read
///     it. (A backup whose slot is reused right away, e.g. of a removed sequence, is legal.)
///   * a recall's slots may not be read or written before its event was seen complete, as the
///     contract says: such an op fails with [`Error::Device`], deterministically, whether or
///     not the copy thread happens to have finished — a race that timing could hide on a GPU
///     is a clear error here.
/// * **Buffers** lock as a whole: reads share, writes are exclusive, so a copy and a compute op
///   that touch the same buffer serialize (correct, never torn). An op's output buffer must not
///   also be one of its inputs ([`Error::Shape`]).
/// * **Errors.** Core's [`Device`] layer checks every descriptor before any work starts (an
///   index out of range, a buffer too small or of the wrong dtype is [`Error::Shape`]); here a
///   handle or event of another device is [`Error::Device`]; nothing panics.
pub struct CpuDevice {
    id: u64,
    threads: usize,
    /// Ops with less work than this run inline (see [`crate::par`]).
    inline_work: usize,
    pool: ThreadPool,
    copies: CopyWorker,
    device_mem: Arc<Arena>,
    host_mem: Arc<Arena>,
    /// How many times `synchronize` completed: copies issued before the last one are done.
    epoch: AtomicU64,
}

impl std::fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuDevice")
            .field("id", &self.id)
            .field("threads", &self.threads)
            .finish()
    }
}

impl CpuDevice {
    /// Makes a device with its own pool of `threads` compute threads (`None`: the machine's
    /// available parallelism) and its copy thread. `Some(0)` is a configuration error.
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let threads = match threads {
            Some(0) => return Err(Error::config("CpuDevice needs at least one thread")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let id = NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed);
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("arkvale-cpu{id}-{i}"))
            .build()
            .map_err(|e| Error::device(BACKEND, format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuDevice {
            id,
            threads,
            inline_work: INLINE_WORK,
            pool,
            copies: CopyWorker::start(id)?,
            device_mem: Arc::default(),
            host_mem: Arc::default(),
            epoch: AtomicU64::new(0),
        })
    }

    /// Sets the work (element operations) below which an op runs inline on the calling thread
    /// instead of on the pool (default 65,536). `0` sends every op to the pool and
    /// `usize::MAX` runs every op inline; the differential suite runs both to check both
    /// paths of each kernel.
    pub fn set_inline_work(&mut self, work: usize) {
        self.inline_work = work;
    }

    /// Compute threads of this device.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes currently allocated in the device arena (live [`Buffer`]s, including those only
    /// an in-flight copy still holds).
    pub fn device_bytes_in_use(&self) -> usize {
        self.device_mem.in_use()
    }

    /// Bytes currently allocated in the host arena (live [`HostBuffer`]s).
    pub fn host_bytes_in_use(&self) -> usize {
        self.host_mem.in_use()
    }

    /// The storage of `buf` if this device made it.
    pub(crate) fn storage<'a>(&self, buf: &'a Buffer, what: &str) -> Result<&'a Arc<Storage>> {
        buffer::storage(self.id, buf, what)
    }

    /// Runs `f` inline on the calling thread if `work` (element operations) is small or the
    /// device has one thread, else inside this device's rayon pool.
    pub(crate) fn run<R: Send>(&self, work: usize, f: impl FnOnce(Par) -> R + Send) -> R {
        if work < self.inline_work || self.threads == 1 {
            f(Par::INLINE)
        } else {
            let threads = self.threads;
            self.pool.install(|| f(Par::pool(threads)))
        }
    }

    /// Makes an access to element ranges of `s` safe against its in-flight copies (see
    /// [`Storage::prepare_access`]): may wait for a backup, fails on an unwaited recall.
    fn access(
        &self,
        s: &Storage,
        ranges: impl IntoIterator<Item = Range<usize>>,
        write: bool,
        what: &str,
    ) -> Result<()> {
        s.prepare_access(ranges, write, self.epoch.load(Ordering::Acquire), what)
    }

    /// Prepares reading (`write == false`) or writing the given slots of `pool`.
    fn slots_access(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        slots: impl Iterator<Item = u32>,
        write: bool,
        what: &str,
    ) -> Result<()> {
        let s = self.storage(pool, what)?;
        self.access(s, slot_ranges(layout, slots), write, what)
    }

    /// Records the slots of a submitted copy as in flight.
    fn track(
        &self,
        pool: &Storage,
        copies: &[(u32, u64)],
        slots: Vec<Range<usize>>,
        dir: CopyDir,
        event: &Arc<CpuEvent>,
    ) {
        let epoch = self.epoch.load(Ordering::Acquire);
        for (&(slot, _), range) in copies.iter().zip(slots) {
            pool.start_copy(slot, range, dir, event, epoch);
        }
    }

    fn kv_pool<'a>(&self, pool: &'a Buffer, what: &str) -> Result<&'a Arc<Storage>> {
        self.storage(pool, &format!("{what}: pool"))
    }
}

impl CpuDevice {
    /// Read-locks the inputs of an attention op.
    fn attn_inputs<'a>(
        &self,
        what: &str,
        pool: &'a Buffer,
        q: &'a Buffer,
        mask: Option<&'a Buffer>,
    ) -> Result<AttnInputs<'a>> {
        let pool_s = self.kv_pool(pool, what)?;
        let q_s = self.storage(q, &format!("{what}: q"))?;
        let mask_s = mask
            .map(|m| self.storage(m, &format!("{what}: mask")))
            .transpose()?;
        Ok(AttnInputs {
            pool: pool_s.data.read_recursive(),
            q: q_s.data.read_recursive(),
            mask: mask_s.map(|m| m.data.read_recursive()),
        })
    }
}

impl MemoryBackend for CpuDevice {
    fn raw_name(&self) -> String {
        BACKEND.to_string()
    }

    fn raw_alloc(&self, _: Checked, dtype: DType, len: usize) -> Result<Buffer> {
        buffer::alloc(self.id, &self.device_mem, dtype, len)
    }

    /// Quantized blocks stay where they lie ([`buffer::import`]).
    fn raw_import(
        &self,
        _: Checked,
        dtype: DType,
        len: usize,
        bytes: SharedBytes,
    ) -> Result<Buffer> {
        Ok(buffer::import(self.id, &self.device_mem, dtype, len, bytes))
    }

    /// Quantized blocks only: other dtypes are copied into typed (aligned) storage.
    fn raw_imports_in_place(&self, dtype: DType) -> bool {
        dtype.quant().is_some()
    }

    fn raw_write(&self, _: Checked, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        let s = self.storage(buf, "write")?;
        let (start, len) = byte_span(buf.dtype(), offset, data.len());
        self.access(s, std::iter::once(offset..offset + len), true, "write")?;
        let mut g = s.data.write();
        g.bytes_mut()[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn raw_read(&self, _: Checked, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let s = self.storage(buf, "read")?;
        let (start, len) = byte_span(buf.dtype(), offset, out.len());
        self.access(s, std::iter::once(offset..offset + len), false, "read")?;
        let g = s.data.read_recursive();
        out.copy_from_slice(&g.bytes()[start..start + out.len()]);
        Ok(())
    }

    fn raw_copy(
        &self,
        _: Checked,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        let (s, d) = (
            self.storage(src, "copy: src")?,
            self.storage(dst, "copy: dst")?,
        );
        self.access(
            s,
            std::iter::once(src_off..src_off + len),
            false,
            "copy: src",
        )?;
        self.access(
            d,
            std::iter::once(dst_off..dst_off + len),
            true,
            "copy: dst",
        )?;
        let (from, n) = byte_span_of(src.dtype(), src_off, len);
        let (to, _) = byte_span_of(src.dtype(), dst_off, len);
        if Arc::ptr_eq(s, d) {
            s.data.write().bytes_mut().copy_within(from..from + n, to);
        } else {
            let sg = s.data.read_recursive();
            let mut dg = d.data.write();
            dg.bytes_mut()[to..to + n].copy_from_slice(&sg.bytes()[from..from + n]);
        }
        Ok(())
    }

    fn raw_fill_f32(
        &self,
        _: Checked,
        buf: &Buffer,
        offset: usize,
        len: usize,
        value: f32,
    ) -> Result<()> {
        let s = self.storage(buf, "fill_f32")?;
        self.access(s, std::iter::once(offset..offset + len), true, "fill_f32")?;
        let mut g = s.data.write();
        f32s_mut(&mut g)?[offset..offset + len].fill(value);
        Ok(())
    }

    /// Waits for every queued copy (compute is always finished when a method returns).
    fn raw_synchronize(&self) -> Result<()> {
        self.copies.drain()?;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn raw_alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        buffer::alloc_host(self.id, &self.host_mem, bytes)
    }

    fn raw_host_write(
        &self,
        _: Checked,
        host: &HostBuffer,
        offset: usize,
        data: &[u8],
    ) -> Result<()> {
        let s = buffer::host_storage(self.id, host, "host_write")?;
        s.data.write()[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn raw_host_read(
        &self,
        _: Checked,
        host: &HostBuffer,
        offset: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let s = buffer::host_storage(self.id, host, "host_read")?;
        out.copy_from_slice(&s.data.read_recursive()[offset..offset + out.len()]);
        Ok(())
    }

    /// Queues the copies on the copy thread (see the module doc).
    fn raw_backup_pages(
        &self,
        _: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event> {
        let pool_s = self.kv_pool(pool, "backup_pages")?.clone();
        let host_s = buffer::host_storage(self.id, host, "backup_pages")?.clone();
        let plan = validate::page_copy_plan(layout, copies);
        let slots = slot_ranges(layout, copies.iter().map(|c| c.0));
        self.access(&pool_s, slots.clone(), false, "backup_pages")?;
        let storage = pool_s.clone();
        let event = self.copies.submit(Box::new(move || {
            let src = storage.data.read_recursive();
            let mut dst = host_s.data.write();
            for &(pool_byte, host_byte, n) in &plan {
                dst[host_byte..host_byte + n]
                    .copy_from_slice(&src.bytes()[pool_byte..pool_byte + n]);
            }
            Ok(())
        }))?;
        self.track(&pool_s, copies, slots, CopyDir::Backup, &event);
        Ok(Event(event))
    }

    /// Runs the copies at once on the calling thread when the copy queue
    /// is idle (the cache waits for a recall right away, so a hand-off would only add
    /// latency), else queues them behind the earlier copies (see the module doc).
    fn raw_recall_pages(
        &self,
        _: Checked,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event> {
        let pool_s = self.kv_pool(pool, "recall_pages")?.clone();
        let host_s = buffer::host_storage(self.id, host, "recall_pages")?.clone();
        let plan = validate::page_copy_plan(layout, copies);
        let slots = slot_ranges(layout, copies.iter().map(|c| c.0));
        self.access(&pool_s, slots.clone(), true, "recall_pages")?;
        let storage = pool_s.clone();
        let event = self.copies.run_or_submit(Box::new(move || {
            let src = host_s.data.read_recursive();
            let mut dst = storage.data.write();
            for &(pool_byte, host_byte, n) in &plan {
                dst.bytes_mut()[pool_byte..pool_byte + n]
                    .copy_from_slice(&src[host_byte..host_byte + n]);
            }
            Ok(())
        }))?;
        self.track(&pool_s, copies, slots, CopyDir::Recall, &event);
        Ok(Event(event))
    }

    /// Blocks the calling thread until `event` completed: CPU compute runs on the caller's
    /// thread, so this is how "later compute waits for the event" is honoured. Returns the
    /// copy's error if it failed.
    fn raw_wait_on_device(&self, event: &Event) -> Result<()> {
        match event.0.as_any().downcast_ref::<CpuEvent>() {
            Some(e) if e.device() == self.id => event.0.wait(),
            Some(_) => Err(Error::device(
                BACKEND,
                "wait_on_device: event of another CpuDevice",
            )),
            None => Err(Error::device(
                BACKEND,
                "wait_on_device: event was not made by a CpuDevice",
            )),
        }
    }
}

impl KvBackend for CpuDevice {
    fn raw_append_kv(
        &self,
        _: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()> {
        let pool_s = self.kv_pool(pool, "append_kv")?;
        let k_s = self.storage(k, "append_kv: k")?;
        let v_s = self.storage(v, "append_kv: v")?;
        self.slots_access(
            layout,
            pool,
            dests.iter().map(|d| d.slot),
            true,
            "append_kv",
        )?;
        let (kg, vg) = (k_s.data.read_recursive(), v_s.data.read_recursive());
        let mut pg = pool_s.data.write();
        let pool_data: &mut Data = &mut pg;
        let kernel = AppendKernel {
            l: layout,
            k: f32s(&kg)?,
            v: f32s(&vg)?,
            dests,
        };
        let work = dests.len() * layout.heads_per_group * layout.head_dim * 2;
        self.run(work, |par| kernel.run_mut(par, pool_data))
    }

    fn raw_summarize(
        &self,
        _: Checked,
        layout: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()> {
        let pool_s = self.kv_pool(pool, "summarize")?;
        let dg_s = self.storage(digests, "summarize: digests")?;
        self.slots_access(
            layout,
            pool,
            jobs.iter().map(|j| j.slot),
            false,
            "summarize",
        )?;
        let pg = pool_s.data.read_recursive();
        let mut dg = dg_s.data.write();
        let kernel = SummarizeKernel {
            l: layout,
            kind,
            jobs,
            digests: f32s_mut(&mut dg)?,
        };
        let work = jobs.len() * layout.heads_per_group * layout.page_size * layout.head_dim * 4;
        self.run(work, |par| with_pool(par, &pg, kernel))
    }

    fn raw_estimate(
        &self,
        _: Checked,
        layout: &KvLayout,
        kind: DigestKind,
        agg: ScoreAgg,
        digests: &Buffer,
        q: &Buffer,
        jobs: &[EstimateJob],
        scores: &Buffer,
    ) -> Result<()> {
        let dg_s = self.storage(digests, "estimate: digests")?;
        let q_s = self.storage(q, "estimate: q")?;
        let sc_s = self.storage(scores, "estimate: scores")?;
        let (dg, qg) = (dg_s.data.read_recursive(), q_s.data.read_recursive());
        let mut sg = sc_s.data.write();
        let (dg, qg, sg) = (f32s(&dg)?, f32s(&qg)?, f32s_mut(&mut sg)?);
        let work = jobs.len() * layout.heads_per_group * layout.gqa * kind.len(layout.head_dim);
        self.run(work, |par| {
            digest_ops::estimate(par, layout, kind, agg, dg, qg, jobs, sg)
        });
        Ok(())
    }

    fn raw_topk(
        &self,
        _: Checked,
        scores: &Buffer,
        segments: &[TopkSegment],
        out: &Buffer,
    ) -> Result<()> {
        let sc_s = self.storage(scores, "topk: scores")?;
        let out_s = self.storage(out, "topk: out")?;
        let sg = sc_s.data.read_recursive();
        let mut og = out_s.data.write();
        let Data::U32(o) = &mut *og else {
            return Err(Error::shape("topk: out must be u32"));
        };
        let s = f32s(&sg)?;
        let work = segments.iter().map(|g| g.len as usize * 8).sum();
        self.run(work, |par| digest_ops::topk(par, s, segments, o));
        Ok(())
    }

    fn raw_decode_attention(
        &self,
        _: Checked,
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
        let out_s = self.storage(out, "decode_attention: out")?;
        let lse_s = page_lse
            .map(|b| self.storage(b, "decode_attention: page_lse"))
            .transpose()?;
        let inp = self.attn_inputs(what, pool, q, mask)?;
        let mask_v = inp.mask()?;
        self.slots_access(layout, pool, pages.iter().map(|p| p.slot), false, what)?;
        let mut og = out_s.data.write();
        let mut lg = lse_s.map(|s| s.data.write());
        let lse = match lg.as_mut() {
            Some(g) => Some(f32s_mut(g)?),
            None => None,
        };
        let op = AttnOp::Decode(f32s_mut(&mut og)?, lse);
        let kernel = AttnKernel {
            l: layout,
            q: f32s(&inp.q)?,
            rows,
            pages,
            mask: mask_v,
            scale,
            op,
        };
        self.run(attention_work(layout, rows), |par| {
            with_pool(par, &inp.pool, kernel)
        })
    }

    fn raw_prefill_attention(
        &self,
        _: Checked,
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
        let acc_s = self.storage(&state.acc, "prefill_attention: state.acc")?;
        let max_s = self.storage(&state.max, "prefill_attention: state.max")?;
        let sum_s = self.storage(&state.sum, "prefill_attention: state.sum")?;
        let inp = self.attn_inputs(what, pool, q, mask)?;
        let mask_v = inp.mask()?;
        self.slots_access(layout, pool, pages.iter().map(|p| p.slot), false, what)?;
        let (mut ag, mut mg, mut sg) = (acc_s.data.write(), max_s.data.write(), sum_s.data.write());
        let op = AttnOp::Prefill(StateMut {
            acc: f32s_mut(&mut ag)?,
            max: f32s_mut(&mut mg)?,
            sum: f32s_mut(&mut sg)?,
        });
        let kernel = AttnKernel {
            l: layout,
            q: f32s(&inp.q)?,
            rows,
            pages,
            mask: mask_v,
            scale,
            op,
        };
        self.run(attention_work(layout, rows), |par| {
            with_pool(par, &inp.pool, kernel)
        })
    }

    fn raw_attention_finalize(
        &self,
        _: Checked,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()> {
        let acc_s = self.storage(&state.acc, "attention_finalize: state.acc")?;
        let sum_s = self.storage(&state.sum, "attention_finalize: state.sum")?;
        self.storage(&state.max, "attention_finalize: state.max")?;
        let out_s = self.storage(out, "attention_finalize: out")?;
        let (ag, sg) = (acc_s.data.read_recursive(), sum_s.data.read_recursive());
        let mut og = out_s.data.write();
        let (a, s, o) = (f32s(&ag)?, f32s(&sg)?, f32s_mut(&mut og)?);
        let work = rows.len() * layout.heads_per_group * layout.gqa * layout.head_dim;
        self.run(work, |par| attention::finalize(par, layout, a, s, rows, o));
        Ok(())
    }

    fn raw_attention_weights(
        &self,
        _: Checked,
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
        let w_s = self.storage(weights, "attention_weights: weights")?;
        let inp = self.attn_inputs(what, pool, q, mask)?;
        let mask_v = inp.mask()?;
        self.slots_access(layout, pool, pages.iter().map(|p| p.slot), false, what)?;
        let mut wg = w_s.data.write();
        let op = AttnOp::Weights(f32s_mut(&mut wg)?);
        let kernel = AttnKernel {
            l: layout,
            q: f32s(&inp.q)?,
            rows,
            pages,
            mask: mask_v,
            scale,
            op,
        };
        self.run(attention_work(layout, rows), |par| {
            with_pool(par, &inp.pool, kernel)
        })
    }
}

/// `(first byte, elements)` of `bytes` bytes of `dtype` at element `offset` (core checked
/// that they are whole elements, whole blocks at a block boundary for quantized types).
fn byte_span(dtype: DType, offset: usize, bytes: usize) -> (usize, usize) {
    let start = offset / dtype.block_len() * dtype.size();
    (start, bytes / dtype.size() * dtype.block_len())
}

/// `(first byte, bytes)` of `len` elements of `dtype` from element `offset` (whole blocks at a
/// block boundary for quantized types, as core checked).
fn byte_span_of(dtype: DType, offset: usize, len: usize) -> (usize, usize) {
    let per = |n: usize| n / dtype.block_len() * dtype.size();
    (per(offset), per(len))
}

/// Element operations of an attention op: every row's tokens × its query heads × `2d`.
fn attention_work(l: &KvLayout, rows: &[AttnRow]) -> usize {
    let per_page = l.page_size * l.heads_per_group * l.gqa * l.head_dim * 2;
    rows.iter()
        .map(|r| (r.page_count as usize).saturating_mul(per_page))
        .fold(0, usize::saturating_add)
}

/// The element ranges of slots (validated).
fn slot_ranges(l: &KvLayout, slots: impl Iterator<Item = u32>) -> Vec<Range<usize>> {
    let n = l.slot_elems();
    slots
        .map(|s| s as usize * n..(s as usize + 1) * n)
        .collect()
}
