//! [`CudaDevice`]: the [`Device`] implementation. Each method binds the context, checks its
//! handles and descriptors on the host exactly as the CPU backend does (same rules, same
//! error kinds), uploads the descriptors, and launches kernels on the compute stream.
//!
//! See the crate documentation for how the [`Device`] contract maps to CUDA.

use std::any::Any;
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, DType, Device, DeviceEvent, DigestKind,
    Error, EstimateJob, Event, HostBuffer, KvLayout, MatmulDims, Result, Rope, RopeStyle, ScoreAgg,
    SummarizeJob, TopkSegment,
};
use cudarc::driver::{CudaContext, result, sys};
use parking_lot::Mutex;

use crate::BACKEND;
use crate::driver::{Ctx, Cublas, DevMem, Kernels, Pinned, RawEvent, Stream, drv, kargs, launch};
use crate::validate::{at_least, product};
use crate::{kernels, validate};

/// Ids of devices made so far, so that a handle can be traced to its device.
static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// Query heads handled together by one attention work item (`MAX_G` in the kernels).
const MAX_G: usize = 8;
/// Rows per block of the small-`m` matmul kernel (`MM_ROWS`).
const MM_ROWS: usize = 8;
/// Up to this many rows, matmul uses the weight-streaming kernel; above, cuBLAS SGEMM.
const GEMV_MAX_ROWS: usize = 8;
/// Bytes of f32 weights widened per cuBLAS call for half-precision weights.
const WIDEN_CHUNK_BYTES: usize = 64 << 20;
/// Dynamic shared memory a kernel may use without opting in.
const SMEM_LIMIT: usize = 48 << 10;

/// A device buffer of this backend.
struct CudaBuf {
    mem: DevMem,
    device: u64,
}

/// Pinned host memory of this backend.
struct HostMem {
    mem: Pinned,
    device: u64,
}

/// A completion marker: a CUDA event recorded on a copy stream.
pub struct CudaEvent {
    ev: RawEvent,
    device: u64,
}

impl std::fmt::Debug for CudaEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaEvent(device {})", self.device)
    }
}

impl DeviceEvent for CudaEvent {
    fn is_done(&self) -> Result<bool> {
        self.ev.is_done()
    }
    fn wait(&self) -> Result<()> {
        self.ev.wait()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Mutable per-device state: the descriptor upload buffer, the scratch buffer and cuBLAS.
#[derive(Default)]
struct State {
    /// Device copy of the current op's descriptors (grows; reused in stream order).
    args: Option<DevMem>,
    /// Scratch for attention partials, widened weights and overlapping copies.
    scratch: Option<DevMem>,
    /// The cuBLAS handle: `None` until first needed, `Some(None)` when libcublas is absent.
    cublas: Option<Option<Cublas>>,
}

/// The geometry of the attention kernels (`AttnGeom` in `decode_attention.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AttnGeom {
    hg: u32,
    p: u32,
    d: u32,
    q_heads: u32,
    n_splits: u32,
    pages_per_split: u32,
    n_items: u32,
    /// Query heads per group (`hg * gqa`): the row stride of the page log-sum-exps.
    lse_heads: u32,
}

/// Words of one attention work item (`ITEM_WORDS` in `decode_attention.cu`).
const ITEM_WORDS: usize = 4 + 3 * MAX_G;

/// The attention work items of `rows` (see `decode_attention.cu`): for every run of
/// consecutive rows with the same group and page range, and every KV head `h` of the group,
/// the (query row, query head, position) pairs that read `h` — each row's `gqa` heads, row
/// after row — in items of up to [`MAX_G`] pairs. Decode rows have their own page ranges, so
/// an item holds one row's heads; a prefill chunk's rows share theirs and are tiled.
fn attn_items(layout: &KvLayout, rows: &[AttnRow]) -> Vec<u32> {
    let (hg, gqa) = (layout.heads_per_group, layout.gqa);
    let mut words = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let r0 = rows[start];
        let mut end = start + 1;
        while end < rows.len()
            && rows[end].group == r0.group
            && rows[end].page_start == r0.page_start
            && rows[end].page_count == r0.page_count
        {
            end += 1;
        }
        for h in 0..hg {
            let pairs: Vec<[u32; 3]> = rows[start..end]
                .iter()
                .flat_map(|r| {
                    (0..gqa).map(move |g| {
                        let head = (r.group as usize * hg + h) * gqa + g;
                        [r.q_row, head as u32, r.pos]
                    })
                })
                .collect();
            for chunk in pairs.chunks(MAX_G) {
                let mut item = [0u32; ITEM_WORDS];
                item[..4].copy_from_slice(&[
                    h as u32,
                    r0.page_start,
                    r0.page_count,
                    chunk.len() as u32,
                ]);
                for (j, pair) in chunk.iter().enumerate() {
                    item[4 + 3 * j..7 + 3 * j].copy_from_slice(pair);
                }
                words.extend_from_slice(&item);
            }
        }
        start = end;
    }
    words
}

/// The NVIDIA backend: NVRTC-compiled kernels on one compute stream, page backups and recalls
/// on two copy streams, pinned host memory, cuBLAS for the large matmuls. See the crate
/// documentation for the contract mapping, the synchronization points and what is verified.
pub struct CudaDevice {
    // Field order is drop order: state (scratch, cuBLAS) and kernels go before the streams.
    state: Mutex<State>,
    kernels: Kernels,
    compute: Stream,
    d2h: Stream,
    h2d: Stream,
    ctx: Arc<Ctx>,
    id: u64,
    name: String,
    arch: u32,
    sms: u32,
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

/// Why no CUDA device can be opened here, or the number of devices. Never panics: it checks
/// that `libcuda` can be loaded before the first driver call (cudarc panics otherwise).
pub fn probe() -> std::result::Result<usize, String> {
    // SAFETY: only tries to dlopen the driver library by its candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver: libcuda.so not found on the loader path".into());
    }
    result::init().map_err(|e| format!("no usable CUDA driver: cuInit failed: {e}"))?;
    let n = result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
    if n <= 0 {
        return Err("no CUDA device: the driver reports 0 devices".into());
    }
    Ok(n as usize)
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

    /// Copies `bytes` from the start of `host` to the start of `dst` with one plain
    /// host-to-device copy on the recall stream and returns the seconds it took (the baseline
    /// of the recall benchmark).
    pub fn time_pinned_upload(&self, host: &HostBuffer, dst: &Buffer, bytes: usize) -> Result<f64> {
        self.ctx.bind()?;
        let h = self.host(host, "time_pinned_upload")?;
        let d = self.buf(dst, "time_pinned_upload")?;
        if bytes > h.mem.bytes || bytes > d.mem.bytes {
            return Err(Error::shape(
                "time_pinned_upload: more bytes than the buffers hold",
            ));
        }
        self.synchronize()?;
        let start = std::time::Instant::now();
        // SAFETY: both ranges were checked above; the host memory is pinned.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(d.mem.ptr, h.mem.ptr as *const c_void, bytes, self.h2d.raw)
        }
        .result()
        .map_err(drv("cuMemcpyHtoDAsync"))?;
        self.h2d.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    // --- handles ---------------------------------------------------------------------------

    fn buf<'a>(&self, b: &'a Buffer, what: &str) -> Result<&'a CudaBuf> {
        match b.inner::<CudaBuf>() {
            Some(c) if c.device == self.id => Ok(c),
            Some(_) => Err(Error::device(
                BACKEND,
                format!("{what}: buffer of another CudaDevice"),
            )),
            None => Err(Error::device(
                BACKEND,
                format!("{what}: buffer was not made by a CudaDevice"),
            )),
        }
    }

    fn typed<'a>(&self, b: &'a Buffer, dtype: DType, what: &str) -> Result<&'a CudaBuf> {
        let c = self.buf(b, what)?;
        if b.dtype() != dtype {
            return Err(Error::shape(format!(
                "{what}: expected a {dtype:?} buffer, got {:?}",
                b.dtype()
            )));
        }
        Ok(c)
    }

    fn host<'a>(&self, h: &'a HostBuffer, what: &str) -> Result<&'a HostMem> {
        match h.inner::<HostMem>() {
            Some(m) if m.device == self.id => Ok(m),
            Some(_) => Err(Error::device(
                BACKEND,
                format!("{what}: host buffer of another CudaDevice"),
            )),
            None => Err(Error::device(
                BACKEND,
                format!("{what}: host buffer was not made by a CudaDevice"),
            )),
        }
    }

    fn float_table<'a>(&self, b: &'a Buffer, what: &str) -> Result<&'a CudaBuf> {
        let c = self.buf(b, what)?;
        if b.dtype().quant().is_some() {
            return Err(Error::UnsupportedWeight {
                backend: BACKEND.to_string(),
                dtype: b.dtype(),
            });
        }
        if !b.dtype().is_float() {
            return Err(Error::shape(format!(
                "{what}: expected an f32, f16 or bf16 buffer, got {:?}",
                b.dtype()
            )));
        }
        Ok(c)
    }

    fn kv_pool<'a>(&self, l: &KvLayout, pool: &'a Buffer, what: &str) -> Result<&'a CudaBuf> {
        validate::layout(l)?;
        self.typed(pool, l.kv_dtype.dtype(), &format!("{what}: pool"))
    }

    // --- launches and uploads --------------------------------------------------------------

    fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
        args: &[(*mut c_void, usize)],
    ) -> Result<()> {
        if smem > SMEM_LIMIT {
            return Err(Error::shape(format!(
                "{name}: needs {smem} bytes of shared memory, the limit is {SMEM_LIMIT}"
            )));
        }
        let k = self.kernels.get(name)?;
        launch(
            &k,
            grid,
            (block, 1, 1),
            smem as u32,
            &self.compute,
            args,
            name,
        )
    }

    /// Uploads descriptor arrays (each 16-byte aligned) into the args buffer on the compute
    /// stream and returns their device addresses. The host bytes are staged by the driver
    /// before this returns; a later upload overwrites the buffer only after the kernels issued
    /// before it ran (same stream).
    fn upload(&self, st: &mut State, parts: &[&[u8]]) -> Result<Vec<u64>> {
        let mut bytes = Vec::new();
        let mut offs = Vec::with_capacity(parts.len());
        for p in parts {
            while bytes.len() % 16 != 0 {
                bytes.push(0);
            }
            offs.push(bytes.len());
            bytes.extend_from_slice(p);
        }
        if bytes.is_empty() {
            return Ok(vec![0; parts.len()]);
        }
        let need = bytes.len();
        if st.args.as_ref().is_none_or(|a| a.bytes < need) {
            st.args = None;
            st.args = Some(DevMem::alloc(
                &self.ctx,
                need.next_power_of_two().max(64 << 10),
            )?);
        }
        let base = st.args.as_ref().map_or(0, |a| a.ptr);
        // SAFETY: the args buffer holds `need` bytes; pageable source bytes are staged by the
        // driver before the call returns.
        unsafe { result::memcpy_htod_async(base, &bytes, self.compute.raw) }
            .map_err(drv("uploading descriptors"))?;
        Ok(offs.into_iter().map(|o| base + o as u64).collect())
    }

    /// A scratch region of at least `bytes` (contents undefined), valid until the next call.
    fn scratch(&self, st: &mut State, bytes: usize) -> Result<u64> {
        if st.scratch.as_ref().is_none_or(|s| s.bytes < bytes) {
            st.scratch = None;
            st.scratch = Some(DevMem::alloc(
                &self.ctx,
                bytes.next_power_of_two().max(1 << 20),
            )?);
        }
        Ok(st.scratch.as_ref().map_or(0, |s| s.ptr))
    }

    fn fill(&self, ptr: u64, len: usize, value: f32) -> Result<()> {
        let n = len as u64;
        self.launch(
            "fill_f32",
            (grid1d(n), 1, 1),
            256,
            0,
            &kargs![ptr, n, value],
        )
    }
}

/// Blocks of 256 threads for `n` elements (grid-stride loops cover the rest).
fn grid1d(n: u64) -> u32 {
    n.div_ceil(256).clamp(1, 1 << 20) as u32
}

/// The kernel-name suffix of a storage type.
fn suffix(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The digest-kind code of the kernels.
fn kind_code(k: DigestKind) -> u32 {
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

fn same(a: &CudaBuf, b: &CudaBuf) -> bool {
    std::ptr::eq(a, b)
}

fn u32_bytes(v: &[u32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Turns `(slot, host byte offset)` copies into checked `(pool byte, host byte, bytes)` runs,
/// merging copies that are adjacent on both sides.
fn page_copy_plan(
    layout: &KvLayout,
    pool_len: usize,
    host_bytes: usize,
    copies: &[(u32, u64)],
    what: &str,
) -> Result<Vec<(usize, usize, usize)>> {
    let n = layout.slot_bytes();
    let mut plan: Vec<(usize, usize, usize)> = Vec::with_capacity(copies.len());
    for &(slot, host) in copies {
        validate::slot(layout, pool_len, slot, what)?;
        let host = usize::try_from(host)
            .map_err(|_| Error::shape(format!("{what}: host offset {host}")))?;
        validate::range(
            host,
            n,
            host_bytes,
            &format!("{what}: slot {slot} at host byte"),
        )?;
        let pool_byte = slot as usize * n;
        match plan.last_mut() {
            Some(last) if last.0 + last.2 == pool_byte && last.1 + last.2 == host => last.2 += n,
            _ => plan.push((pool_byte, host, n)),
        }
    }
    Ok(plan)
}

impl CudaDevice {
    /// The partial pass of paged attention for `rows` (see `decode_attention.cu`); returns the
    /// geometry, the work items' device address, the partials' addresses and the item count.
    #[allow(clippy::too_many_arguments)]
    fn attn_partials(
        &self,
        st: &mut State,
        layout: &KvLayout,
        pool: &CudaBuf,
        q: &CudaBuf,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&CudaBuf>,
        scale: f32,
        page_lse: u64,
    ) -> Result<(AttnGeom, u64, u64, u64, u32)> {
        let d = layout.head_dim;
        let e = match d.div_ceil(32) {
            1 => 1,
            2 => 2,
            3 | 4 => 4,
            5..=8 => 8,
            _ => {
                return Err(Error::shape(format!(
                    "attention: head_dim {d} above the CUDA backend's limit of 256"
                )));
            }
        };
        let item_words = attn_items(layout, rows);
        let items = item_words.len() / ITEM_WORDS;
        let max_pages = rows
            .iter()
            .map(|r| r.page_count as usize)
            .max()
            .unwrap_or(0)
            .max(1);
        let target = 4 * self.sms as usize;
        let want = target.div_ceil(items.max(1)).clamp(1, max_pages);
        let pps = max_pages.div_ceil(want).max(1);
        let n_splits = max_pages.div_ceil(pps).max(1);
        if n_splits > 65535 || items > i32::MAX as usize {
            return Err(Error::shape(
                "attention: too many rows or pages for one launch",
            ));
        }
        let geom = AttnGeom {
            hg: layout.heads_per_group as u32,
            p: layout.page_size as u32,
            d: d as u32,
            q_heads: layout.q_heads() as u32,
            n_splits: n_splits as u32,
            pages_per_split: pps as u32,
            n_items: items as u32,
            lse_heads: (layout.heads_per_group * layout.gqa) as u32,
        };
        let page_words: Vec<u32> = pages
            .iter()
            .flat_map(|p| [p.slot, p.base_pos, p.len])
            .collect();
        let addrs = self.upload(st, &[u32_bytes(&item_words), u32_bytes(&page_words)])?;
        let (rows_ptr, pages_ptr) = (addrs[0], addrs[1]);
        let n_part = items * n_splits * MAX_G;
        let ml_bytes = n_part * 2 * 4;
        let acc_bytes = n_part * d * 4;
        let base = self.scratch(st, ml_bytes.next_multiple_of(256) + acc_bytes)?;
        let part_ml = base;
        let part_acc = base + ml_bytes.next_multiple_of(256) as u64;
        let pool_ptr = pool.mem.ptr;
        let q_ptr = q.mem.ptr;
        let mask_ptr = mask.map_or(0u64, |m| m.mem.ptr);
        let name = format!("attn_partial_{}_e{e}", suffix(layout.kv_dtype.dtype()));
        self.launch(
            &name,
            (items as u32, n_splits as u32, 1),
            32 * 4,
            0,
            &kargs![
                pool_ptr, q_ptr, rows_ptr, pages_ptr, mask_ptr, scale, geom, part_ml, part_acc,
                page_lse
            ],
        )?;
        Ok((geom, rows_ptr, part_ml, part_acc, items as u32))
    }

    /// Common checks of the attention ops; returns the pool, q and mask handles.
    #[allow(clippy::too_many_arguments)]
    fn attn_checks<'a>(
        &self,
        what: &str,
        layout: &KvLayout,
        pool: &'a Buffer,
        q: &'a Buffer,
        mask: Option<&'a Buffer>,
        outputs: &[&Buffer],
        out_len: usize,
        rows: &[AttnRow],
        pages: &[AttnPage],
    ) -> Result<(&'a CudaBuf, &'a CudaBuf, Option<&'a CudaBuf>)> {
        let pool_s = self.kv_pool(layout, pool, what)?;
        let q_s = self.typed(q, DType::F32, &format!("{what}: q"))?;
        let mask_s = mask
            .map(|m| self.typed(m, DType::U8, &format!("{what}: mask")))
            .transpose()?;
        let mut inputs = vec![pool, q];
        inputs.extend(mask);
        for (n, o) in outputs.iter().enumerate() {
            validate::not_aliased(o, &inputs, what)?;
            validate::distinct_outputs(&outputs[..=n], what)?;
        }
        validate::attention(
            layout,
            pool.len(),
            q.len(),
            out_len,
            rows,
            pages,
            mask.map(|m| m.len()),
        )?;
        Ok((pool_s, q_s, mask_s))
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        BACKEND.to_string()
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer> {
        if dtype.quant().is_some() {
            // No kernels for block-quantized weights here (`supports_weight_dtype` says so).
            return Err(Error::UnsupportedWeight {
                backend: BACKEND.to_string(),
                dtype,
            });
        }
        let bytes = len
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::device(BACKEND, format!("{len} x {dtype:?} overflows")))?;
        let mem = DevMem::alloc(&self.ctx, bytes)?;
        if bytes > 0 {
            // SAFETY: `mem` holds `bytes` bytes; zeroed in stream order before any use.
            unsafe { result::memset_d8_async(mem.ptr, 0, bytes, self.compute.raw) }
                .map_err(drv("cuMemsetD8Async"))?;
        }
        Ok(Buffer::new(
            Box::new(CudaBuf {
                mem,
                device: self.id,
            }),
            len,
            dtype,
        ))
    }

    fn write(&self, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        self.ctx.bind()?;
        let b = self.buf(buf, "write")?;
        let size = buf.dtype().size();
        if data.len() % size != 0 {
            return Err(Error::shape(format!(
                "write: {} bytes is not a whole number of {:?}",
                data.len(),
                buf.dtype()
            )));
        }
        validate::range(offset, data.len() / size, buf.len(), "write")?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies inside the buffer; pageable bytes are staged before return.
        unsafe {
            result::memcpy_htod_async(b.mem.ptr + (offset * size) as u64, data, self.compute.raw)
        }
        .map_err(drv("write: cuMemcpyHtoDAsync"))
    }

    fn read(&self, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        self.ctx.bind()?;
        let b = self.buf(buf, "read")?;
        let size = buf.dtype().size();
        if out.len() % size != 0 {
            return Err(Error::shape(format!(
                "read: {} bytes is not a whole number of {:?}",
                out.len(),
                buf.dtype()
            )));
        }
        validate::range(offset, out.len() / size, buf.len(), "read")?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies inside the buffer; the stream is synchronized before `out`
        // is released.
        unsafe {
            result::memcpy_dtoh_async(out, b.mem.ptr + (offset * size) as u64, self.compute.raw)
        }
        .map_err(drv("read: cuMemcpyDtoHAsync"))?;
        self.compute.synchronize()
    }

    fn copy(
        &self,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        self.ctx.bind()?;
        let (s, d) = (self.buf(src, "copy: src")?, self.buf(dst, "copy: dst")?);
        if src.dtype() != dst.dtype() {
            return Err(Error::shape(format!(
                "copy: {:?} into {:?}",
                src.dtype(),
                dst.dtype()
            )));
        }
        validate::range(src_off, len, src.len(), "copy: src")?;
        validate::range(dst_off, len, dst.len(), "copy: dst")?;
        if len == 0 {
            return Ok(());
        }
        let size = src.dtype().size();
        let (from, to, n) = (
            s.mem.ptr + (src_off * size) as u64,
            d.mem.ptr + (dst_off * size) as u64,
            len * size,
        );
        let overlap = same(s, d) && from < to + n as u64 && to < from + n as u64;
        // SAFETY: both ranges were checked; an overlapping copy goes through scratch memory.
        unsafe {
            if overlap {
                let mut st = self.state.lock();
                let tmp = self.scratch(&mut st, n)?;
                result::memcpy_dtod_async(tmp, from, n, self.compute.raw)
                    .map_err(drv("copy: cuMemcpyDtoDAsync"))?;
                result::memcpy_dtod_async(to, tmp, n, self.compute.raw)
                    .map_err(drv("copy: cuMemcpyDtoDAsync"))
            } else {
                result::memcpy_dtod_async(to, from, n, self.compute.raw)
                    .map_err(drv("copy: cuMemcpyDtoDAsync"))
            }
        }
    }

    fn fill_f32(&self, buf: &Buffer, offset: usize, len: usize, value: f32) -> Result<()> {
        self.ctx.bind()?;
        let b = self.typed(buf, DType::F32, "fill_f32")?;
        validate::range(offset, len, buf.len(), "fill_f32")?;
        if len == 0 {
            return Ok(());
        }
        self.fill(b.mem.ptr + (offset * 4) as u64, len, value)
    }

    fn synchronize(&self) -> Result<()> {
        self.compute.synchronize()?;
        self.d2h.synchronize()?;
        self.h2d.synchronize()
    }

    fn alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        let mem = Pinned::alloc(&self.ctx, bytes)?;
        Ok(HostBuffer::new(
            Box::new(HostMem {
                mem,
                device: self.id,
            }),
            bytes,
        ))
    }

    fn host_write(&self, host: &HostBuffer, offset: usize, data: &[u8]) -> Result<()> {
        let h = self.host(host, "host_write")?;
        validate::range(offset, data.len(), host.bytes(), "host_write (bytes)")?;
        if !data.is_empty() {
            // SAFETY: the range lies inside the pinned allocation; the caller does not run a
            // copy over these bytes meanwhile (the contract's event rules).
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), h.mem.ptr.add(offset), data.len())
            };
        }
        Ok(())
    }

    fn host_read(&self, host: &HostBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let h = self.host(host, "host_read")?;
        validate::range(offset, out.len(), host.bytes(), "host_read (bytes)")?;
        if !out.is_empty() {
            // SAFETY: as in host_write.
            unsafe {
                std::ptr::copy_nonoverlapping(h.mem.ptr.add(offset), out.as_mut_ptr(), out.len())
            };
        }
        Ok(())
    }

    /// Queues the copies on the backup stream after the compute issued so far.
    fn backup_pages(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event> {
        self.ctx.bind()?;
        let p = self.kv_pool(layout, pool, "backup_pages")?;
        let h = self.host(host, "backup_pages")?;
        let plan = page_copy_plan(layout, pool.len(), host.bytes(), copies, "backup_pages")?;
        let after_compute = self.compute.record()?;
        self.d2h.wait(&after_compute)?;
        for (pool_byte, host_byte, n) in plan {
            // SAFETY: both ranges were checked; the host memory is pinned and outlives the copy
            // (freeing it waits for the device).
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    h.mem.ptr.add(host_byte) as *mut c_void,
                    p.mem.ptr + pool_byte as u64,
                    n,
                    self.d2h.raw,
                )
            }
            .result()
            .map_err(drv("backup_pages: cuMemcpyDtoHAsync"))?;
        }
        Ok(Event(Arc::new(CudaEvent {
            ev: self.d2h.record()?,
            device: self.id,
        })))
    }

    /// Queues the copies on the recall stream after the compute issued so far.
    fn recall_pages(
        &self,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event> {
        self.ctx.bind()?;
        let p = self.kv_pool(layout, pool, "recall_pages")?;
        let h = self.host(host, "recall_pages")?;
        let plan = page_copy_plan(layout, pool.len(), host.bytes(), copies, "recall_pages")?;
        let after_compute = self.compute.record()?;
        self.h2d.wait(&after_compute)?;
        for (pool_byte, host_byte, n) in plan {
            // SAFETY: as in backup_pages.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    p.mem.ptr + pool_byte as u64,
                    h.mem.ptr.add(host_byte) as *const c_void,
                    n,
                    self.h2d.raw,
                )
            }
            .result()
            .map_err(drv("recall_pages: cuMemcpyHtoDAsync"))?;
        }
        Ok(Event(Arc::new(CudaEvent {
            ev: self.h2d.record()?,
            device: self.id,
        })))
    }

    /// `cuStreamWaitEvent` on the compute stream: no host stall.
    fn wait_on_device(&self, event: &Event) -> Result<()> {
        self.ctx.bind()?;
        match event.0.as_any().downcast_ref::<CudaEvent>() {
            Some(e) if e.device == self.id => self.compute.wait(&e.ev),
            Some(_) => Err(Error::device(
                BACKEND,
                "wait_on_device: event of another CudaDevice",
            )),
            None => Err(Error::device(
                BACKEND,
                "wait_on_device: event was not made by a CudaDevice",
            )),
        }
    }

    fn append_kv(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()> {
        self.ctx.bind()?;
        let p = self.kv_pool(layout, pool, "append_kv")?;
        let ks = self.typed(k, DType::F32, "append_kv: k")?;
        let vs = self.typed(v, DType::F32, "append_kv: v")?;
        validate::not_aliased(pool, &[k, v], "append_kv")?;
        validate::append(layout, pool.len(), k.len(), v.len(), dests)?;
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

    fn summarize(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let p = self.kv_pool(layout, pool, "summarize")?;
        let dg = self.typed(digests, DType::F32, "summarize: digests")?;
        validate::not_aliased(digests, &[pool], "summarize")?;
        validate::summarize(layout, kind, pool.len(), jobs, digests.len())?;
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
        self.ctx.bind()?;
        validate::layout(layout)?;
        let dg = self.typed(digests, DType::F32, "estimate: digests")?;
        let qs = self.typed(q, DType::F32, "estimate: q")?;
        let sc = self.typed(scores, DType::F32, "estimate: scores")?;
        validate::not_aliased(scores, &[digests, q], "estimate")?;
        validate::estimate(layout, kind, digests.len(), q.len(), jobs, scores.len())?;
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

    fn topk(&self, scores: &Buffer, segments: &[TopkSegment], out: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let sc = self.typed(scores, DType::F32, "topk: scores")?;
        let o = self.typed(out, DType::U32, "topk: out")?;
        validate::topk(scores.len(), segments, out.len())?;
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
        self.ctx.bind()?;
        let what = "decode_attention";
        let o = self.typed(out, DType::F32, "decode_attention: out")?;
        let lse = page_lse
            .map(|b| self.typed(b, DType::F32, "decode_attention: page_lse"))
            .transpose()?;
        let mut outputs = vec![out];
        outputs.extend(page_lse);
        let (p, qs, m) = self.attn_checks(
            what,
            layout,
            pool,
            q,
            mask,
            &outputs,
            out.len(),
            rows,
            pages,
        )?;
        if let Some(b) = page_lse {
            validate::page_lse(layout, rows, pages.len(), b.len())?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let lse_ptr = lse.map_or(0u64, |b| b.mem.ptr);
        let mut st = self.state.lock();
        let (geom, rows_ptr, part_ml, part_acc, items) =
            self.attn_partials(&mut st, layout, p, qs, rows, pages, m, scale, lse_ptr)?;
        let (fold, out_ptr, zero) = (0u32, o.mem.ptr, 0u64);
        self.launch(
            "attn_combine",
            (items, 1, 1),
            128,
            0,
            &kargs![
                rows_ptr, geom, part_ml, part_acc, fold, out_ptr, zero, zero, zero
            ],
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
        self.ctx.bind()?;
        let what = "prefill_attention";
        let acc = self.typed(&state.acc, DType::F32, "prefill_attention: state.acc")?;
        let max = self.typed(&state.max, DType::F32, "prefill_attention: state.max")?;
        let sum = self.typed(&state.sum, DType::F32, "prefill_attention: state.sum")?;
        let (p, qs, m) = self.attn_checks(
            what,
            layout,
            pool,
            q,
            mask,
            &[&state.acc, &state.max, &state.sum],
            q.len(),
            rows,
            pages,
        )?;
        validate::state(
            layout,
            rows,
            state.acc.len(),
            state.max.len(),
            state.sum.len(),
        )?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock();
        let (geom, rows_ptr, part_ml, part_acc, items) =
            self.attn_partials(&mut st, layout, p, qs, rows, pages, m, scale, 0)?;
        let (fold, zero) = (1u32, 0u64);
        let (ap, mp, sp) = (acc.mem.ptr, max.mem.ptr, sum.mem.ptr);
        self.launch(
            "attn_combine",
            (items, 1, 1),
            128,
            0,
            &kargs![rows_ptr, geom, part_ml, part_acc, fold, zero, ap, mp, sp],
        )
    }

    fn attention_finalize(
        &self,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        validate::layout(layout)?;
        let acc = self.typed(&state.acc, DType::F32, "attention_finalize: state.acc")?;
        let sum = self.typed(&state.sum, DType::F32, "attention_finalize: state.sum")?;
        self.typed(&state.max, DType::F32, "attention_finalize: state.max")?;
        let o = self.typed(out, DType::F32, "attention_finalize: out")?;
        validate::not_aliased(out, &[&state.acc, &state.sum], "attention_finalize")?;
        validate::state(
            layout,
            rows,
            state.acc.len(),
            state.max.len(),
            state.sum.len(),
        )?;
        validate::state(layout, rows, out.len(), usize::MAX, usize::MAX)?;
        if rows.is_empty() {
            return Ok(());
        }
        let words: Vec<u32> = rows
            .iter()
            .flat_map(|r| [r.q_row, r.group, r.pos, r.page_start, r.page_count])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&words)])?;
        let (rp, n, gh, d, qh) = (
            a[0],
            rows.len() as u32,
            (layout.heads_per_group * layout.gqa) as u32,
            layout.head_dim as u32,
            layout.q_heads() as u32,
        );
        let (ap, sp, op) = (acc.mem.ptr, sum.mem.ptr, o.mem.ptr);
        self.launch(
            "attn_finalize",
            (rows.len() as u32, 1, 1),
            128,
            0,
            &kargs![rp, n, gh, d, qh, ap, sp, op],
        )
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
        self.ctx.bind()?;
        let what = "attention_weights";
        let w = self.typed(weights, DType::F32, "attention_weights: weights")?;
        let (p, qs, m) = self.attn_checks(
            what,
            layout,
            pool,
            q,
            mask,
            &[weights],
            q.len(),
            rows,
            pages,
        )?;
        validate::range(
            0,
            pages.len().saturating_mul(layout.tokens_per_slot()),
            weights.len(),
            "attention_weights: weights",
        )?;
        if rows.is_empty() {
            return Ok(());
        }
        let row_words: Vec<u32> = rows
            .iter()
            .flat_map(|r| [r.q_row, r.group, r.pos, r.page_start, r.page_count])
            .collect();
        let page_words: Vec<u32> = pages
            .iter()
            .flat_map(|p| [p.slot, p.base_pos, p.len])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&row_words), u32_bytes(&page_words)])?;
        let (pp, qp, rp, gp, mp, wp) = (
            p.mem.ptr,
            qs.mem.ptr,
            a[0],
            a[1],
            m.map_or(0u64, |m| m.mem.ptr),
            w.mem.ptr,
        );
        let (hg, gqa, ps, d, qh) = (
            layout.heads_per_group as u32,
            layout.gqa as u32,
            layout.page_size as u32,
            layout.head_dim as u32,
            layout.q_heads() as u32,
        );
        let blocks = product(rows.len(), layout.heads_per_group, what)?;
        self.launch(
            &format!("attn_weights_{}", suffix(layout.kv_dtype.dtype())),
            (blocks as u32, 1, 1),
            128,
            2 * layout.gqa * 4,
            &kargs![pp, qp, rp, gp, mp, scale, hg, gqa, ps, d, qh, wp],
        )
    }

    fn matmul(&self, dims: &MatmulDims, x: &Buffer, w: &Buffer, out: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let MatmulDims { m, n, k } = *dims;
        let xs = self.typed(x, DType::F32, "matmul: x")?;
        let ws = self.float_table(w, "matmul: weights")?;
        let os = self.typed(out, DType::F32, "matmul: out")?;
        validate::not_aliased(out, &[x, w], "matmul")?;
        at_least(x, product(m, k, "matmul: x")?, "matmul: x [m, k]")?;
        at_least(
            w,
            product(n, k, "matmul: weights")?,
            "matmul: weights [n, k]",
        )?;
        at_least(out, product(m, n, "matmul: out")?, "matmul: out [m, n]")?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if [m, n, k].iter().any(|&v| v > i32::MAX as usize) {
            return Err(Error::shape("matmul: a dimension beyond 2^31 - 1"));
        }
        let mut st = self.state.lock();
        let use_blas = m > GEMV_MAX_ROWS && k > 0 && {
            if st.cublas.is_none() {
                st.cublas = Some(Cublas::new(&self.ctx, &self.compute)?);
            }
            matches!(st.cublas, Some(Some(_)))
        };
        let (xp, wp, op) = (xs.mem.ptr, ws.mem.ptr, os.mem.ptr);
        if !use_blas {
            let (mm, nn, kk) = (m as u32, n as u32, k as u32);
            let gy = m.div_ceil(MM_ROWS);
            if gy > 65535 {
                return Err(Error::shape("matmul: too many rows for one launch"));
            }
            return self.launch(
                &format!("matmul_rows_{}", suffix(w.dtype())),
                (n.div_ceil(8) as u32, gy as u32, 1),
                256,
                0,
                &kargs![xp, wp, op, mm, nn, kk],
            );
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let sgemm = |st: &State, a: u64, rows: usize, c: u64| -> Result<()> {
            let Some(Some(blas)) = &st.cublas else {
                return Err(Error::device(BACKEND, "cuBLAS handle missing"));
            };
            // out^T [n, m] (column-major, ld n) = W [rows, k]^T-as-column-major · x^T.
            // SAFETY: every pointer is a live allocation of the checked size; dims fit i32.
            unsafe {
                cudarc::cublas::sys::cublasSgemm_v2(
                    blas.handle,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                    rows as i32,
                    m as i32,
                    k as i32,
                    &alpha,
                    a as *const f32,
                    k as i32,
                    xp as *const f32,
                    k as i32,
                    &beta,
                    c as *mut f32,
                    n as i32,
                )
            }
            .result()
            .map_err(|e| Error::device(BACKEND, format!("cublasSgemm: {e:?}")))
        };
        if w.dtype() == DType::F32 {
            return sgemm(&st, wp, n, op);
        }
        let chunk = (WIDEN_CHUNK_BYTES / 4 / k).clamp(1, n);
        let tmp = self.scratch(&mut st, chunk * k * 4)?;
        let mut n0 = 0;
        while n0 < n {
            let rows = chunk.min(n - n0);
            let cnt = (rows * k) as u64;
            let src = wp + (n0 * k * w.dtype().size()) as u64;
            self.launch(
                &format!("widen_{}", suffix(w.dtype())),
                (grid1d(cnt), 1, 1),
                256,
                0,
                &kargs![src, tmp, cnt],
            )?;
            sgemm(&st, tmp, rows, op + (n0 * 4) as u64)?;
            n0 += rows;
        }
        Ok(())
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
        self.ctx.bind()?;
        let xs = self.typed(x, DType::F32, "rmsnorm: x")?;
        let ws = self.typed(weight, DType::F32, "rmsnorm: weight")?;
        let os = self.typed(out, DType::F32, "rmsnorm: out")?;
        validate::not_aliased(out, &[x, weight], "rmsnorm")?;
        let len = validate::rmsnorm(rows, dim, eps, x, weight, out)?;
        if len == 0 {
            return Ok(());
        }
        if rows > i32::MAX as usize || dim > u32::MAX as usize {
            return Err(Error::shape("rmsnorm: too many rows"));
        }
        let (xp, wp, op, r, dm) = (xs.mem.ptr, ws.mem.ptr, os.mem.ptr, rows as u32, dim as u32);
        self.launch(
            "rmsnorm",
            (rows as u32, 1, 1),
            256,
            0,
            &kargs![xp, wp, op, r, dm, eps],
        )
    }

    fn rope(&self, rope: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let xs = self.typed(x, DType::F32, "rope: x")?;
        let len = validate::rope(rope, positions.len(), x)?;
        if len == 0 {
            return Ok(());
        }
        let mut st = self.state.lock();
        let a = self.upload(
            &mut st,
            &[u32_bytes(positions), bytemuck::cast_slice(rope.inv_freq)],
        )?;
        let (xp, pp, fp) = (xs.mem.ptr, a[0], a[1]);
        let (t, h, d, style, scale) = (
            positions.len() as u32,
            rope.heads as u32,
            rope.head_dim as u32,
            match rope.style {
                RopeStyle::Neox => 0u32,
                RopeStyle::Interleaved => 1u32,
            },
            rope.position_scale,
        );
        let pairs = (len / 2) as u64;
        self.launch(
            "rope",
            (grid1d(pairs), 1, 1),
            256,
            0,
            &kargs![xp, pp, fp, t, h, d, style, scale],
        )
    }

    fn silu_mul(&self, len: usize, gate: &Buffer, up: &Buffer, out: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let gs = self.typed(gate, DType::F32, "silu_mul: gate")?;
        let us = self.typed(up, DType::F32, "silu_mul: up")?;
        let os = self.typed(out, DType::F32, "silu_mul: out")?;
        validate::not_aliased(out, &[gate, up], "silu_mul")?;
        at_least(gate, len, "silu_mul: gate")?;
        at_least(up, len, "silu_mul: up")?;
        at_least(out, len, "silu_mul: out")?;
        if len == 0 {
            return Ok(());
        }
        let (gp, up_, op, n) = (gs.mem.ptr, us.mem.ptr, os.mem.ptr, len as u64);
        self.launch(
            "silu_mul",
            (grid1d(n), 1, 1),
            256,
            0,
            &kargs![gp, up_, op, n],
        )
    }

    fn add(&self, len: usize, x: &Buffer, y: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let xs = self.typed(x, DType::F32, "add: x")?;
        let ys = self.typed(y, DType::F32, "add: y")?;
        if same(xs, ys) {
            return Err(Error::shape("add: x and y must be different buffers"));
        }
        at_least(x, len, "add: x")?;
        at_least(y, len, "add: y")?;
        if len == 0 {
            return Ok(());
        }
        let (xp, yp, n) = (xs.mem.ptr, ys.mem.ptr, len as u64);
        self.launch("add_inplace", (grid1d(n), 1, 1), 256, 0, &kargs![xp, yp, n])
    }

    fn add_bias(&self, rows: usize, cols: usize, x: &Buffer, bias: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let xs = self.typed(x, DType::F32, "add_bias: x")?;
        let bs = self.typed(bias, DType::F32, "add_bias: bias")?;
        if same(xs, bs) {
            return Err(Error::shape(
                "add_bias: x and bias must be different buffers",
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        if cols == 0 {
            return Err(Error::shape("add_bias: cols must be non-zero"));
        }
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::shape("add_bias: rows * cols overflows"))?;
        at_least(x, len, "add_bias: x")?;
        at_least(bias, cols, "add_bias: bias")?;
        if cols > u32::MAX as usize {
            return Err(Error::shape("add_bias: cols beyond 2^32 - 1"));
        }
        let (xp, bp, r, c) = (xs.mem.ptr, bs.mem.ptr, rows as u64, cols as u32);
        self.launch(
            "add_bias",
            (grid1d(len as u64), 1, 1),
            256,
            0,
            &kargs![xp, bp, r, c],
        )
    }

    fn embedding(&self, dim: usize, table: &Buffer, ids: &[u32], out: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let ts = self.float_table(table, "embedding: table")?;
        let os = self.typed(out, DType::F32, "embedding: out")?;
        validate::not_aliased(out, &[table], "embedding")?;
        if dim == 0 {
            return Err(Error::shape("embedding: rows of 0 values"));
        }
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
        if len == 0 {
            return Ok(());
        }
        if dim > u32::MAX as usize {
            return Err(Error::shape("embedding: dim beyond 2^32 - 1"));
        }
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(ids)])?;
        let (tp, ip, n, dm, op) = (ts.mem.ptr, a[0], ids.len() as u32, dim as u32, os.mem.ptr);
        self.launch(
            &format!("embedding_{}", suffix(table.dtype())),
            (grid1d(len as u64), 1, 1),
            256,
            0,
            &kargs![tp, ip, n, dm, op],
        )
    }

    fn argmax(&self, rows: usize, cols: usize, logits: &Buffer, out: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let ls = self.typed(logits, DType::F32, "argmax: logits")?;
        let os = self.typed(out, DType::U32, "argmax: out")?;
        if cols == 0 {
            return Err(Error::shape("argmax: rows of 0 columns have no maximum"));
        }
        let len = product(rows, cols, "argmax")?;
        at_least(logits, len, "argmax: logits [rows, cols]")?;
        at_least(out, rows, "argmax: out [rows]")?;
        if rows == 0 {
            return Ok(());
        }
        if rows > i32::MAX as usize || cols > u32::MAX as usize {
            return Err(Error::shape("argmax: too many rows or columns"));
        }
        let (lp, op, r, c) = (ls.mem.ptr, os.mem.ptr, rows as u32, cols as u32);
        self.launch("argmax", (rows as u32, 1, 1), 256, 0, &kargs![lp, op, r, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> KvLayout {
        KvLayout {
            kv_dtype: arkvale_core::KvDtype::F16,
            heads_per_group: 2,
            gqa: 2,
            page_size: 4,
            head_dim: 8,
            groups: 1,
        }
    }

    #[test]
    fn page_copies_merge_only_when_adjacent_on_both_sides() {
        let l = l();
        let n = l.slot_bytes();
        let pool_len = 8 * l.slot_elems();
        let copies = [(2, 0), (3, n as u64), (4, 5 * n as u64), (1, 6 * n as u64)];
        let plan = page_copy_plan(&l, pool_len, 8 * n, &copies, "t").unwrap();
        assert_eq!(
            plan,
            vec![(2 * n, 0, 2 * n), (4 * n, 5 * n, n), (n, 6 * n, n)]
        );
        assert!(page_copy_plan(&l, pool_len, 8 * n, &[(8, 0)], "t").is_err());
        assert!(page_copy_plan(&l, pool_len, 8 * n, &[(0, 7 * n as u64 + 1)], "t").is_err());
    }

    #[test]
    fn attention_items_tile_rows_that_share_pages() {
        let l = KvLayout {
            gqa: 3,
            groups: 2,
            ..l()
        };
        let row = |q_row, group, pos, page_start| AttnRow {
            q_row,
            group,
            pos,
            page_start,
            page_count: 2,
        };
        // Three rows of group 1 share a page range (a prefill chunk); one decode-like row of
        // group 0 has its own.
        let rows = [
            row(0, 1, 5, 0),
            row(1, 1, 6, 0),
            row(2, 1, 7, 0),
            row(0, 0, 9, 2),
        ];
        let w = attn_items(&l, &rows);
        let items: Vec<&[u32]> = w.chunks(ITEM_WORDS).collect();
        // Group 1: 3 rows x 3 heads = 9 pairs per KV head -> 8 + 1, for 2 KV heads; group 0:
        // 3 pairs per KV head.
        assert_eq!(items.len(), 2 * 2 + 2);
        assert_eq!(&items[0][..4], &[0, 0, 2, 8]);
        // Pair j of item 0: rows 0, 0, 0, 1, 1, 1, 2, 2 with heads (1*2 + 0)*3 + g.
        let pairs: Vec<[u32; 3]> = (0..8)
            .map(|j| {
                [
                    items[0][4 + 3 * j],
                    items[0][5 + 3 * j],
                    items[0][6 + 3 * j],
                ]
            })
            .collect();
        assert_eq!(pairs[0], [0, 6, 5]);
        assert_eq!(pairs[3], [1, 6, 6]);
        assert_eq!(pairs[7], [2, 7, 7]);
        assert_eq!(&items[1][..7], &[0, 0, 2, 1, 2, 8, 7]);
        assert_eq!(&items[2][..7], &[1, 0, 2, 8, 0, 9, 5]);
        assert_eq!(&items[4][..7], &[0, 2, 2, 3, 0, 0, 9]);
        assert_eq!(&items[5][..7], &[1, 2, 2, 3, 0, 3, 9]);
    }

    #[test]
    fn kernel_codes_and_suffixes() {
        assert_eq!(suffix(DType::F16), "f16");
        assert_eq!(suffix(DType::BF16), "bf16");
        assert_eq!(suffix(DType::F32), "f32");
        let codes: Vec<u32> = DigestKind::ALL.iter().map(|&k| kind_code(k)).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(grid1d(0), 1);
        assert_eq!(grid1d(257), 2);
    }
}
