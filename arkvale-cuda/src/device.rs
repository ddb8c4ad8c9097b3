//! [`CudaDevice`]: the device itself (context, kernels, streams, per-device state) and the
//! [`MemoryBackend`] and [`KvBackend`] implementations, which forward each method to the
//! module that does that job: `buffer` (device memory), `copies` (host memory, page backups
//! and recalls, events), `kv` (append, summarize, estimate, top-k) and `attention`; the
//! [`DenseBackend`](arkvale_core::DenseBackend) part is implemented in `dense` itself. Core's
//! checked [`Device`] layer has validated every call's input before it gets here (the
//! `pub(crate)` methods below are reached only through the `raw_*` methods, which get core's
//! [`Checked`] token); each op binds the context, checks that its handles are this device's
//! and its launch limits, uploads the descriptors, and launches kernels on the compute stream
//! (`launch`).
//!
//! See the crate documentation for how the [`Device`] contract maps to CUDA.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(doc)]
use arkvale_core::Device;
use arkvale_core::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, Checked, DType, DigestKind, Error,
    EstimateJob, Event, HostBuffer, KvBackend, KvLayout, MemoryBackend, Result, ScoreAgg,
    SummarizeJob, TopkSegment,
};
use cudarc::driver::{CudaContext, sys};
use parking_lot::Mutex;

use crate::driver::{Ctx, Cublas, DevMem, Kernels, Stream, drv, probe};
use crate::{BACKEND, kernels};

/// Ids of devices made so far, so that a handle can be traced to its device.
static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// Mutable per-device state: the descriptor upload buffer, the scratch buffer and cuBLAS.
#[derive(Default)]
pub(crate) struct State {
    /// Device copy of the current op's descriptors (grows; reused in stream order).
    pub(crate) args: Option<DevMem>,
    /// Scratch for attention partials, widened weights and overlapping copies.
    pub(crate) scratch: Option<DevMem>,
    /// The cuBLAS handle: `None` until first needed, `Some(None)` when libcublas is absent.
    pub(crate) cublas: Option<Option<Cublas>>,
}

/// The NVIDIA backend: NVRTC-compiled kernels on one compute stream, page backups and recalls
/// on two copy streams, pinned host memory, cuBLAS for the large matmuls. See the crate
/// documentation for the contract mapping, the synchronization points and what is verified.
pub struct CudaDevice {
    // Field order is drop order: state (scratch, cuBLAS) and kernels go before the streams.
    pub(crate) state: Mutex<State>,
    pub(crate) kernels: Kernels,
    pub(crate) compute: Stream,
    pub(crate) d2h: Stream,
    pub(crate) h2d: Stream,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) arch: u32,
    pub(crate) sms: u32,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            let _ = self.ctx.ctx.synchronize();
        }
    }
}

impl CudaDevice {
    /// Opens device `ordinal`: checks for the driver, a device and NVRTC, compiles every kernel
    /// for the device's architecture (once per process), loads them and creates the streams.
    /// Any missing piece is an [`Error::Device`] saying what is missing, never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = probe().map_err(|e| Error::device(BACKEND, e))?;
        if ordinal >= count {
            return Err(Error::device(
                BACKEND,
                format!("device {ordinal} requested, {count} present"),
            ));
        }
        if !kernels::nvrtc_present() {
            return Err(Error::device(
                BACKEND,
                "NVRTC not found: libnvrtc.so.13 must be on the loader path (LD_LIBRARY_PATH)",
            ));
        }
        let cuda = CudaContext::new(ordinal).map_err(drv("opening the CUDA context"))?;
        let (major, minor) = cuda
            .compute_capability()
            .map_err(drv("reading the compute capability"))?;
        if major < 7 {
            return Err(Error::device(
                BACKEND,
                format!("compute capability {major}.{minor} is older than the supported 7.0"),
            ));
        }
        let name = cuda.name().map_err(drv("cuDeviceGetName"))?;
        let sms = cuda
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("reading the multiprocessor count"))?
            .max(1) as u32;
        let arch = (major * 10 + minor) as u32;
        let ctx = Arc::new(Ctx { ctx: cuda });
        let cubins = kernels::compiled_for(arch).map_err(|e| Error::device(BACKEND, e))?;
        let kernels = Kernels::load(&ctx, &cubins)?;
        Ok(CudaDevice {
            state: Mutex::new(State::default()),
            kernels,
            compute: Stream::new(&ctx)?,
            d2h: Stream::new(&ctx)?,
            h2d: Stream::new(&ctx)?,
            ctx,
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            name,
            arch,
            sms,
        })
    }

    /// The device's name as the driver reports it (e.g. `NVIDIA H100 80GB HBM3`).
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// The architecture the kernels were compiled for (`90` for sm_90).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// Multiprocessors of the device.
    pub fn multiprocessors(&self) -> u32 {
        self.sms
    }
}

impl MemoryBackend for CudaDevice {
    fn raw_name(&self) -> String {
        BACKEND.to_string()
    }

    fn raw_alloc(&self, _: Checked, dtype: DType, len: usize) -> Result<Buffer> {
        self.alloc_buffer(dtype, len)
    }

    fn raw_write(&self, _: Checked, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        self.write_buffer(buf, offset, data)
    }

    fn raw_read(&self, _: Checked, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        self.read_buffer(buf, offset, out)
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
        self.copy_buffer(src, src_off, dst, dst_off, len)
    }

    fn raw_fill_f32(
        &self,
        _: Checked,
        buf: &Buffer,
        offset: usize,
        len: usize,
        value: f32,
    ) -> Result<()> {
        self.fill_buffer(buf, offset, len, value)
    }

    fn raw_synchronize(&self) -> Result<()> {
        self.compute.synchronize()?;
        self.d2h.synchronize()?;
        self.h2d.synchronize()
    }

    fn raw_alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        self.alloc_pinned(bytes)
    }

    fn raw_host_write(
        &self,
        _: Checked,
        host: &HostBuffer,
        offset: usize,
        data: &[u8],
    ) -> Result<()> {
        self.pinned_write(host, offset, data)
    }

    fn raw_host_read(
        &self,
        _: Checked,
        host: &HostBuffer,
        offset: usize,
        out: &mut [u8],
    ) -> Result<()> {
        self.pinned_read(host, offset, out)
    }

    /// Queues the copies on the backup stream after the compute issued so far.
    fn raw_backup_pages(
        &self,
        _: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event> {
        self.backup(layout, pool, copies, host)
    }

    /// Queues the copies on the recall stream after the compute issued so far.
    fn raw_recall_pages(
        &self,
        _: Checked,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event> {
        self.recall(layout, host, copies, pool)
    }

    /// `cuStreamWaitEvent` on the compute stream: no host stall.
    fn raw_wait_on_device(&self, event: &Event) -> Result<()> {
        self.wait_event(event)
    }
}

impl KvBackend for CudaDevice {
    fn raw_append_kv(
        &self,
        _: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()> {
        self.kv_append(layout, pool, k, v, dests)
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
        self.kv_summarize(layout, kind, pool, jobs, digests)
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
        self.kv_estimate(layout, kind, agg, digests, q, jobs, scores)
    }

    fn raw_topk(
        &self,
        _: Checked,
        scores: &Buffer,
        segments: &[TopkSegment],
        out: &Buffer,
    ) -> Result<()> {
        self.kv_topk(scores, segments, out)
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
        self.attn_decode(layout, pool, q, rows, pages, mask, scale, out, page_lse)
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
        self.attn_prefill(layout, pool, q, rows, pages, mask, scale, state)
    }

    fn raw_attention_finalize(
        &self,
        _: Checked,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()> {
        self.attn_finalize(layout, state, rows, out)
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
        self.attn_weights(layout, pool, q, rows, pages, mask, scale, weights)
    }
}
