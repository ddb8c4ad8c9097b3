//! The thin launch layer: RAII wrappers over the CUDA driver objects the backend uses (device
//! memory, pinned host memory, streams, events, modules, the cuBLAS handle) and a checked
//! kernel launch. Every driver call returns a [`Result`]; nothing here decides anything.
//! Every raw (unsafe) driver and cuBLAS call of the crate is made here (NVRTC compilation is
//! in `kernels`). Above it, `device` implements [`arkvale_core::Device`]; nothing above the
//! crate sees any of these types.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::Arc;

use arkvale_core::{Error, Result};
use cudarc::driver::{CudaContext, result, sys};
use parking_lot::Mutex;

use crate::BACKEND;

/// A driver error as an [`Error::Device`], naming the call.
pub(crate) fn drv(what: &str) -> impl FnOnce(result::DriverError) -> Error + '_ {
    move |e| Error::device(BACKEND, format!("{what}: {e}"))
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

/// The context shared by every object of one device (kept alive by each of them).
pub(crate) struct Ctx {
    pub(crate) ctx: Arc<CudaContext>,
}

impl Ctx {
    /// Makes the context current on the calling thread (every entry point calls this).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }
}

/// Device memory from `cuMemAlloc`; `ptr == 0` for an empty allocation.
pub(crate) struct DevMem {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) bytes: usize,
    ctx: Arc<Ctx>,
}

impl DevMem {
    /// Allocates `bytes` (uninitialized).
    pub(crate) fn alloc(ctx: &Arc<Ctx>, bytes: usize) -> Result<Self> {
        ctx.bind()?;
        let ptr = if bytes == 0 {
            0
        } else {
            // SAFETY: a plain allocation in the bound context.
            unsafe { result::malloc_sync(bytes) }
                .map_err(|e| Error::device(BACKEND, format!("cuMemAlloc of {bytes} bytes: {e}")))?
        };
        Ok(DevMem {
            ptr,
            bytes,
            ctx: ctx.clone(),
        })
    }
}

impl Drop for DevMem {
    /// Waits until the device is idle (no stream may still use the memory), then frees it.
    fn drop(&mut self) {
        if self.ptr != 0 && self.ctx.bind().is_ok() {
            let _ = self.ctx.ctx.synchronize();
            // SAFETY: allocated by `cuMemAlloc` in this context; no work uses it any more.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory from `cuMemHostAlloc` with flags 0 (cached, not write-combined:
/// the host reads backups back, and write-combined memory is slow to read).
pub(crate) struct Pinned {
    pub(crate) ptr: *mut u8,
    pub(crate) bytes: usize,
    ctx: Arc<Ctx>,
}

// SAFETY: the pointer is owned memory, valid from any thread; the device serializes its own
// copies by events, and host_read/host_write copy through the raw pointer.
unsafe impl Send for Pinned {}
// SAFETY: as above.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// Allocates `bytes` of zeroed pinned memory.
    pub(crate) fn alloc(ctx: &Arc<Ctx>, bytes: usize) -> Result<Self> {
        ctx.bind()?;
        let ptr = if bytes == 0 {
            std::ptr::null_mut()
        } else {
            // SAFETY: a plain allocation in the bound context; flags 0.
            let p = unsafe { result::malloc_host(bytes, 0) }.map_err(|e| {
                Error::device(BACKEND, format!("cuMemHostAlloc of {bytes} bytes: {e}"))
            })? as *mut u8;
            // SAFETY: `p` points to `bytes` writable bytes.
            unsafe { std::ptr::write_bytes(p, 0, bytes) };
            p
        };
        Ok(Pinned {
            ptr,
            bytes,
            ctx: ctx.clone(),
        })
    }
}

impl Drop for Pinned {
    /// Waits until the device is idle (a copy may still use it), then frees it.
    fn drop(&mut self) {
        if !self.ptr.is_null() && self.ctx.bind().is_ok() {
            let _ = self.ctx.ctx.synchronize();
            // SAFETY: allocated by `cuMemHostAlloc`; no copy uses it any more.
            let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
        }
    }
}

/// A non-blocking stream.
pub(crate) struct Stream {
    pub(crate) raw: sys::CUstream,
    ctx: Arc<Ctx>,
}

// SAFETY: CUDA streams may be used from any thread of the process.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a stream that does not synchronize with the legacy default stream.
    pub(crate) fn new(ctx: &Arc<Ctx>) -> Result<Self> {
        ctx.bind()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(drv("cuStreamCreate"))?;
        Ok(Stream {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// Blocks until the stream's work finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: a live stream.
        unsafe { result::stream::synchronize(self.raw) }.map_err(drv("cuStreamSynchronize"))
    }

    /// Makes later work of this stream wait for `event` (no host stall).
    pub(crate) fn wait(&self, event: &RawEvent) -> Result<()> {
        // SAFETY: a live stream and event.
        unsafe {
            result::stream::wait_event(
                self.raw,
                event.raw,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(drv("cuStreamWaitEvent"))
    }

    /// Records a new event after the work issued so far.
    pub(crate) fn record(&self) -> Result<RawEvent> {
        let ev = RawEvent::new(&self.ctx)?;
        // SAFETY: a live event and stream.
        unsafe { result::event::record(ev.raw, self.raw) }.map_err(drv("cuEventRecord"))?;
        Ok(ev)
    }

    /// Queues a copy of the host bytes `src` to device address `dst` (`cuMemcpyHtoDAsync`);
    /// pageable bytes are staged by the driver before this returns.
    ///
    /// # Safety
    /// `dst` must be a live allocation of at least `src.len()` bytes.
    pub(crate) unsafe fn upload(
        &self,
        dst: sys::CUdeviceptr,
        src: &[u8],
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller guarantees the destination range.
        unsafe { result::memcpy_htod_async(dst, src, self.raw) }.map_err(drv(what))
    }

    /// Queues a copy of `out.len()` bytes from device address `src` into `out`
    /// (`cuMemcpyDtoHAsync`).
    ///
    /// # Safety
    /// `src` must be a live allocation of at least `out.len()` bytes, and `out` must not be
    /// released before the stream is synchronized.
    pub(crate) unsafe fn download(
        &self,
        out: &mut [u8],
        src: sys::CUdeviceptr,
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller guarantees both ranges and the synchronization.
        unsafe { result::memcpy_dtoh_async(out, src, self.raw) }.map_err(drv(what))
    }

    /// Queues a device-to-device copy of `bytes` bytes (`cuMemcpyDtoDAsync`).
    ///
    /// # Safety
    /// Both ranges must lie in live allocations and must not overlap.
    pub(crate) unsafe fn copy_dtod(
        &self,
        dst: sys::CUdeviceptr,
        src: sys::CUdeviceptr,
        bytes: usize,
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller guarantees both ranges.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.raw) }.map_err(drv(what))
    }

    /// Queues zeroing `bytes` bytes at `dst` (`cuMemsetD8Async`).
    ///
    /// # Safety
    /// `dst` must be a live allocation of at least `bytes` bytes.
    pub(crate) unsafe fn zero(
        &self,
        dst: sys::CUdeviceptr,
        bytes: usize,
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller guarantees the range.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.raw) }.map_err(drv(what))
    }

    /// Queues a copy of `bytes` bytes from device address `src` to pinned host memory at `dst`
    /// (`cuMemcpyDtoHAsync`).
    ///
    /// # Safety
    /// Both ranges must lie in live allocations; the host memory must be pinned and outlive
    /// the copy.
    pub(crate) unsafe fn copy_to_pinned(
        &self,
        dst: *mut u8,
        src: sys::CUdeviceptr,
        bytes: usize,
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller guarantees both ranges and the host memory's lifetime.
        unsafe { sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, self.raw) }
            .result()
            .map_err(drv(what))
    }

    /// Queues a copy of `bytes` bytes from pinned host memory at `src` to device address `dst`
    /// (`cuMemcpyHtoDAsync`).
    ///
    /// # Safety
    /// As for [`Stream::copy_to_pinned`].
    pub(crate) unsafe fn copy_from_pinned(
        &self,
        dst: sys::CUdeviceptr,
        src: *const u8,
        bytes: usize,
        what: &str,
    ) -> Result<()> {
        // SAFETY: the caller guarantees both ranges and the host memory's lifetime.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, self.raw) }
            .result()
            .map_err(drv(what))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: a live stream, destroyed once (pending work still completes).
            let _ = unsafe { result::stream::destroy(self.raw) };
        }
    }
}

/// An event without timing (cheap to record and to wait on).
pub(crate) struct RawEvent {
    pub(crate) raw: sys::CUevent,
    ctx: Arc<Ctx>,
}

// SAFETY: CUDA events may be used from any thread of the process.
unsafe impl Send for RawEvent {}
// SAFETY: as above.
unsafe impl Sync for RawEvent {}

impl RawEvent {
    fn new(ctx: &Arc<Ctx>) -> Result<Self> {
        ctx.bind()?;
        let raw = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(drv("cuEventCreate"))?;
        Ok(RawEvent {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// Whether the work before the event finished (never blocks).
    pub(crate) fn is_done(&self) -> Result<bool> {
        self.ctx.bind()?;
        // SAFETY: a live event.
        match unsafe { result::event::query(self.raw) } {
            Ok(()) => Ok(true),
            Err(result::DriverError(sys::cudaError_enum::CUDA_ERROR_NOT_READY)) => Ok(false),
            Err(e) => Err(drv("cuEventQuery")(e)),
        }
    }

    /// Blocks until the work before the event finished.
    pub(crate) fn wait(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: a live event.
        unsafe { result::event::synchronize(self.raw) }.map_err(drv("cuEventSynchronize"))
    }
}

impl Drop for RawEvent {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: a live event, destroyed once.
            let _ = unsafe { result::event::destroy(self.raw) };
        }
    }
}

/// The loaded kernel modules (one per source file) and a cache of their functions.
pub(crate) struct Kernels {
    modules: Vec<(&'static str, sys::CUmodule)>,
    funcs: Mutex<HashMap<String, Kernel>>,
    ctx: Arc<Ctx>,
}

// SAFETY: modules and functions are process-wide handles, usable from any thread.
unsafe impl Send for Kernels {}
// SAFETY: as above; the cache is behind a mutex.
unsafe impl Sync for Kernels {}

impl Kernels {
    /// Loads compiled cubins (`(source name, cubin)`).
    pub(crate) fn load(ctx: &Arc<Ctx>, cubins: &[(&'static str, Vec<u8>)]) -> Result<Self> {
        ctx.bind()?;
        let mut modules = Vec::new();
        let mut out = Kernels {
            modules: Vec::new(),
            funcs: Mutex::new(HashMap::new()),
            ctx: ctx.clone(),
        };
        for (name, cubin) in cubins {
            // SAFETY: `cubin` is a complete cubin image that outlives the call.
            let m = unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
                .map_err(|e| Error::device(BACKEND, format!("cuModuleLoadData({name}): {e}")));
            match m {
                Ok(m) => modules.push((*name, m)),
                Err(e) => {
                    out.modules = modules;
                    return Err(e);
                }
            }
        }
        out.modules = modules;
        Ok(out)
    }

    /// The kernel `name` (looked up in every module once, then cached).
    pub(crate) fn get(&self, name: &str) -> Result<Kernel> {
        let mut funcs = self.funcs.lock();
        if let Some(f) = funcs.get(name) {
            return Ok(f.clone());
        }
        let cname = CString::new(name).map_err(|_| Error::device(BACKEND, "kernel name"))?;
        for (_, m) in &self.modules {
            // SAFETY: a live module; a missing name is an error, not UB.
            if let Ok(f) = unsafe { result::module::get_function(*m, cname.clone()) } {
                let k = Kernel {
                    func: f,
                    params: param_sizes(f),
                };
                funcs.insert(name.to_string(), k.clone());
                return Ok(k);
            }
        }
        Err(Error::device(BACKEND, format!("kernel {name} not found")))
    }
}

/// A kernel and the byte sizes of its parameters (when the driver can say: CUDA 12.4+).
#[derive(Clone)]
pub(crate) struct Kernel {
    pub(crate) func: sys::CUfunction,
    pub(crate) params: Option<Vec<usize>>,
}

/// The byte size of each parameter of `f`, from `cuFuncGetParamInfo` (driver API 12.4+,
/// asked only of such a driver); `None` if the driver cannot tell.
fn param_sizes(f: sys::CUfunction) -> Option<Vec<usize>> {
    let mut version = 0;
    // SAFETY: `version` is valid for writes.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .ok()?;
    if version < 12040 {
        return None;
    }
    let mut sizes = Vec::new();
    for i in 0..1024 {
        let (mut off, mut size) = (0usize, 0usize);
        // SAFETY: `f` is a live kernel; an index past the last parameter is an error value.
        match unsafe { sys::cuFuncGetParamInfo(f, i, &mut off, &mut size) }.result() {
            Ok(()) => sizes.push(size),
            Err(result::DriverError(sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE)) => {
                return Some(sizes);
            }
            Err(_) => return None,
        }
    }
    None
}

impl Drop for Kernels {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            for (_, m) in self.modules.drain(..) {
                // SAFETY: a live module, unloaded once after the device went idle.
                let _ = unsafe { result::module::unload(m) };
            }
        }
    }
}

/// Launches kernel `k` on `stream`; `args` are the addresses and byte sizes of the kernel's
/// parameters in order (the driver copies them before returning). When the driver reports the
/// kernel's parameter sizes, a mismatch in count or size is an error instead of a launch.
pub(crate) fn launch(
    k: &Kernel,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared_bytes: u32,
    stream: &Stream,
    args: &[(*mut c_void, usize)],
    what: &str,
) -> Result<()> {
    if let Some(params) = &k.params {
        let host: Vec<usize> = args.iter().map(|a| a.1).collect();
        if *params != host {
            return Err(Error::device(
                BACKEND,
                format!(
                    "{what}: the kernel takes parameters of {params:?} bytes, the host passes {host:?}"
                ),
            ));
        }
    }
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    if grid.1 > 65535 || grid.2 > 65535 {
        return Err(Error::shape(format!(
            "{what}: launch grid {grid:?} beyond the device's limits"
        )));
    }
    let mut ptrs: Vec<*mut c_void> = args.iter().map(|a| a.0).collect();
    // SAFETY: `k` is a live kernel whose parameter list matches `args` (checked above where
    // the driver can tell; each call site passes exactly the kernel's parameters, by address);
    // buffers were validated by the caller.
    unsafe { result::launch_kernel(k.func, grid, block, shared_bytes, stream.raw, &mut ptrs) }
        .map_err(|e| Error::device(BACKEND, format!("launching {what}: {e}")))
}

/// The parameters of a launch: the address and byte size of each given place.
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {
        [$((&$a as *const _ as *mut ::std::ffi::c_void, ::std::mem::size_of_val(&$a))),*]
    };
}
pub(crate) use kargs;

/// A cuBLAS handle bound to a stream.
pub(crate) struct Cublas {
    pub(crate) handle: cudarc::cublas::sys::cublasHandle_t,
    ctx: Arc<Ctx>,
}

// SAFETY: the handle is used under the device's state mutex only.
unsafe impl Send for Cublas {}
// SAFETY: as above.
unsafe impl Sync for Cublas {}

impl Cublas {
    /// Creates a handle on `stream`, or `None` when libcublas cannot be loaded.
    pub(crate) fn new(ctx: &Arc<Ctx>, stream: &Stream) -> Result<Option<Self>> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Ok(None);
        }
        ctx.bind()?;
        let handle = cudarc::cublas::result::create_handle()
            .map_err(|e| Error::device(BACKEND, format!("cublasCreate: {e:?}")))?;
        let out = Cublas {
            handle,
            ctx: ctx.clone(),
        };
        // SAFETY: live handle and stream.
        unsafe { cudarc::cublas::result::set_stream(handle, stream.raw as _) }
            .map_err(|e| Error::device(BACKEND, format!("cublasSetStream: {e:?}")))?;
        Ok(Some(out))
    }
}

impl Cublas {
    /// `C = Aᵀ · B` in f32 (`cublasSgemm` with `A` transposed, `alpha = 1`, `beta = 0`), all
    /// matrices column-major: `A` is `[k, m]` (ld `lda`), `B` is `[k, n]` (ld `ldb`), `C` is
    /// `[m, n]` (ld `ldc`), queued on the handle's stream.
    ///
    /// # Safety
    /// Every pointer must be a live allocation of the size its dims and leading dimension
    /// imply.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm_tn(
        &self,
        m: i32,
        n: i32,
        k: i32,
        a: sys::CUdeviceptr,
        lda: i32,
        b: sys::CUdeviceptr,
        ldb: i32,
        c: sys::CUdeviceptr,
        ldc: i32,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the caller guarantees the pointers; the handle is live.
        unsafe {
            cudarc::cublas::sys::cublasSgemm_v2(
                self.handle,
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                &alpha,
                a as *const f32,
                lda,
                b as *const f32,
                ldb,
                &beta,
                c as *mut f32,
                ldc,
            )
        }
        .result()
        .map_err(|e| Error::device(BACKEND, format!("cublasSgemm: {e:?}")))
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: a live handle, destroyed once.
            let _ = unsafe { cudarc::cublas::result::destroy_handle(self.handle) };
        }
    }
}
