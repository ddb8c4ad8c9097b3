//! Device and host storage behind the opaque [`Buffer`] / [`HostBuffer`] handles, and the
//! checks that a handle belongs to this device and has the expected dtype and size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arkvale_core::{Buffer, DType, Error, HostBuffer, Result};
use parking_lot::Mutex;

use crate::BACKEND;

/// Ids of buffers made so far (aliasing checks compare them).
static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// A device buffer: a storage buffer of whole words (16-bit and byte elements packed).
pub(crate) struct GpuBuffer {
    /// The device that made it.
    pub device: u64,
    /// Unique id.
    pub id: u64,
    /// The wgpu buffer (size a multiple of 4).
    pub buffer: wgpu::Buffer,
}

/// Host memory for page backups: plain memory; copies go through mapped staging buffers.
pub(crate) struct HostMem {
    /// The device that made it.
    pub device: u64,
    /// The bytes.
    pub data: Arc<Mutex<Vec<u8>>>,
}

/// A new buffer id.
pub(crate) fn next_id() -> u64 {
    NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed)
}

/// The storage of `buf` if device `dev` made it.
pub(crate) fn gpu<'a>(dev: u64, buf: &'a Buffer, what: &str) -> Result<&'a GpuBuffer> {
    match buf.inner::<GpuBuffer>() {
        Some(g) if g.device == dev => Ok(g),
        Some(_) => Err(Error::device(
            BACKEND,
            format!("{what}: buffer of another WgpuDevice"),
        )),
        None => Err(Error::device(
            BACKEND,
            format!("{what}: buffer was not made by a WgpuDevice"),
        )),
    }
}

/// The storage of `buf` if device `dev` made it and it holds `dtype`.
pub(crate) fn typed<'a>(
    dev: u64,
    buf: &'a Buffer,
    dtype: DType,
    what: &str,
) -> Result<&'a GpuBuffer> {
    let g = gpu(dev, buf, what)?;
    if buf.dtype() != dtype {
        return Err(Error::shape(format!(
            "{what}: expected a {dtype:?} buffer, got {:?}",
            buf.dtype()
        )));
    }
    Ok(g)
}

/// The storage of a float buffer (f32, f16 or bf16).
pub(crate) fn float<'a>(dev: u64, buf: &'a Buffer, what: &str) -> Result<&'a GpuBuffer> {
    let g = gpu(dev, buf, what)?;
    if !buf.dtype().is_float() {
        return Err(Error::shape(format!(
            "{what}: expected an f32, f16 or bf16 buffer, got {:?}",
            buf.dtype()
        )));
    }
    Ok(g)
}

/// The host memory of `host` if device `dev` made it.
pub(crate) fn host<'a>(dev: u64, host: &'a HostBuffer, what: &str) -> Result<&'a HostMem> {
    match host.inner::<HostMem>() {
        Some(h) if h.device == dev => Ok(h),
        Some(_) => Err(Error::device(
            BACKEND,
            format!("{what}: host buffer of another WgpuDevice"),
        )),
        None => Err(Error::device(
            BACKEND,
            format!("{what}: host buffer was not made by a WgpuDevice"),
        )),
    }
}

/// Fails if `out` is one of `inputs`.
pub(crate) fn not_aliased(out: &GpuBuffer, inputs: &[&GpuBuffer], what: &str) -> Result<()> {
    if inputs.iter().any(|i| i.id == out.id) {
        return Err(Error::shape(format!(
            "{what}: the output buffer is also an input"
        )));
    }
    Ok(())
}

/// Fails unless `offset + len <= have` (no overflow).
pub(crate) fn check_range(offset: usize, len: usize, have: usize, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= have => Ok(()),
        _ => Err(Error::shape(format!(
            "{what}: range {offset}+{len} outside {have} elements"
        ))),
    }
}

/// Fails unless `buf` holds at least `need` elements.
pub(crate) fn at_least(buf: &Buffer, need: usize, what: &str) -> Result<()> {
    if buf.len() < need {
        return Err(Error::shape(format!(
            "{what}: needs {need} elements, the buffer has {}",
            buf.len()
        )));
    }
    Ok(())
}
