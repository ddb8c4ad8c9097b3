//! The device buffers of [`CudaDevice`]: the buffer type, checking a [`Buffer`] handle
//! (device, dtype), and allocating, writing, reading, copying and filling device memory on the
//! compute stream.

use arkvale_core::{Buffer, DType, Error, Result};

use crate::BACKEND;
use crate::device::CudaDevice;
use crate::driver::DevMem;

/// A device buffer of this backend.
pub(crate) struct CudaBuf {
    pub(crate) mem: DevMem,
    pub(crate) device: u64,
}

impl CudaDevice {
    pub(crate) fn buf<'a>(&self, b: &'a Buffer, what: &str) -> Result<&'a CudaBuf> {
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

    /// [`Device::alloc`](arkvale_core::Device::alloc).
    pub(crate) fn alloc_buffer(&self, dtype: DType, len: usize) -> Result<Buffer> {
        // Core refused quantized types (no kernels here) and sizes that overflow.
        let bytes = len * dtype.size();
        let mem = DevMem::alloc(&self.ctx, bytes)?;
        if bytes > 0 {
            // SAFETY: `mem` holds `bytes` bytes; zeroed in stream order before any use.
            unsafe { self.compute.zero(mem.ptr, bytes, "cuMemsetD8Async") }?;
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

    /// [`Device::write`](arkvale_core::Device::write).
    pub(crate) fn write_buffer(&self, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        self.ctx.bind()?;
        let b = self.buf(buf, "write")?;
        let size = buf.dtype().size();
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies inside the buffer (core's `Device` layer checked it before
        // `raw_write`, the only caller); pageable bytes are staged before return.
        unsafe {
            self.compute.upload(
                b.mem.ptr + (offset * size) as u64,
                data,
                "write: cuMemcpyHtoDAsync",
            )
        }
    }

    /// [`Device::read`](arkvale_core::Device::read).
    pub(crate) fn read_buffer(&self, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        self.ctx.bind()?;
        let b = self.buf(buf, "read")?;
        let size = buf.dtype().size();
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies inside the buffer (checked by core's `Device` layer before
        // `raw_read`, the only caller); the stream is synchronized before `out`
        // is released.
        unsafe {
            self.compute.download(
                out,
                b.mem.ptr + (offset * size) as u64,
                "read: cuMemcpyDtoHAsync",
            )
        }?;
        self.compute.synchronize()
    }

    /// [`Device::copy`](arkvale_core::Device::copy).
    pub(crate) fn copy_buffer(
        &self,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        self.ctx.bind()?;
        let (s, d) = (self.buf(src, "copy: src")?, self.buf(dst, "copy: dst")?);
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
        // SAFETY: both ranges were checked (core's `Device` layer, before `raw_copy`); an
        // overlapping copy goes through scratch memory.
        unsafe {
            if overlap {
                let mut st = self.state.lock();
                let tmp = self.scratch(&mut st, n)?;
                self.compute
                    .copy_dtod(tmp, from, n, "copy: cuMemcpyDtoDAsync")?;
                self.compute
                    .copy_dtod(to, tmp, n, "copy: cuMemcpyDtoDAsync")
            } else {
                self.compute
                    .copy_dtod(to, from, n, "copy: cuMemcpyDtoDAsync")
            }
        }
    }

    /// [`Device::fill_f32`](arkvale_core::Device::fill_f32).
    pub(crate) fn fill_buffer(
        &self,
        buf: &Buffer,
        offset: usize,
        len: usize,
        value: f32,
    ) -> Result<()> {
        self.ctx.bind()?;
        let b = self.buf(buf, "fill_f32")?;
        if len == 0 {
            return Ok(());
        }
        self.fill(b.mem.ptr + (offset * 4) as u64, len, value)
    }
}

pub(crate) fn same(a: &CudaBuf, b: &CudaBuf) -> bool {
    std::ptr::eq(a, b)
}
