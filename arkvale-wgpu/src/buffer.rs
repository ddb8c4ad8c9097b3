//! Device and host storage behind the opaque [`Buffer`] / [`HostBuffer`] handles, and the
//! checks that a handle belongs to this device and has the expected dtype and size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arkvale_core::{Buffer, Error, HostBuffer, Result};
use parking_lot::Mutex;

use crate::BACKEND;

/// Ids of buffers made so far (copies and the in-place ops compare them to spot one buffer).
static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// A device buffer: storage of whole words (16-bit and byte elements packed). A buffer larger
/// than the adapter's largest buffer (or binding) is split into segments of `seg_bytes`; the
/// first is `buffer`, the others are created on first use (the cache manager sizes its pool
/// from a byte budget, 2 GiB by default, and usually touches only its first slots). Ops whose
/// range lies in one segment bind that segment; copies split at segment boundaries.
pub(crate) struct GpuBuffer {
    /// The device that made it.
    pub device: u64,
    /// Unique id.
    pub id: u64,
    /// The first (often only) segment (size a multiple of 4).
    pub buffer: wgpu::Buffer,
    /// Bytes per segment (all but the last); the whole size when there is one segment.
    pub seg_bytes: u64,
    /// Total bytes (a multiple of 4).
    pub total: u64,
    /// Segments 1.., created on first use.
    pub more: Vec<OnceLock<wgpu::Buffer>>,
    /// Their usage flags.
    pub usage: wgpu::BufferUsages,
}

impl GpuBuffer {
    /// Segment `i` (created, zeroed, on first use).
    pub fn seg(&self, device: &wgpu::Device, i: usize) -> &wgpu::Buffer {
        if i == 0 {
            return &self.buffer;
        }
        self.more[i - 1].get_or_init(|| {
            let size = (self.total - i as u64 * self.seg_bytes).min(self.seg_bytes);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("arkvale buffer segment"),
                size,
                usage: self.usage,
                mapped_at_creation: false,
            })
        })
    }

    /// Whether the buffer has more than one segment.
    pub fn segmented(&self) -> bool {
        !self.more.is_empty()
    }

    /// The byte range `[start, start + len)` split at segment boundaries:
    /// `(segment buffer, offset in it, bytes)` per piece.
    pub fn pieces<'a>(
        &'a self,
        device: &wgpu::Device,
        start: u64,
        len: u64,
    ) -> Vec<(&'a wgpu::Buffer, u64, u64)> {
        let mut out = Vec::new();
        let (mut at, end) = (start, start + len);
        while at < end {
            let i = (at / self.seg_bytes) as usize;
            let local = at - i as u64 * self.seg_bytes;
            let n = (self.seg_bytes - local).min(end - at);
            out.push((self.seg(device, i), local, n));
            at += n;
        }
        out
    }

    /// The segment holding all of `[start, start + len)` and the offset of `start` in it, or
    /// an error naming `what` if the range crosses a segment boundary.
    pub fn within<'a>(
        &'a self,
        device: &wgpu::Device,
        start: u64,
        len: u64,
        what: &str,
    ) -> Result<(&'a wgpu::Buffer, u64)> {
        let i = start / self.seg_bytes;
        if (start + len.max(1) - 1) / self.seg_bytes != i {
            return Err(Error::device(
                BACKEND,
                format!(
                    "{what}: bytes {start}..{} cross a {}-byte segment of a buffer larger than \
                     the adapter allows in one piece",
                    start + len,
                    self.seg_bytes
                ),
            ));
        }
        Ok((self.seg(device, i as usize), start - i * self.seg_bytes))
    }

    /// The whole buffer when it is one segment (ops that bind a whole buffer), else an error.
    pub fn single(&self, what: &str) -> Result<&wgpu::Buffer> {
        if self.segmented() {
            return Err(Error::device(
                BACKEND,
                format!(
                    "{what}: a {}-byte buffer is larger than one binding on this adapter",
                    self.total
                ),
            ));
        }
        Ok(&self.buffer)
    }
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
