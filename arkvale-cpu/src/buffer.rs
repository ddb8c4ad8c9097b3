//! Storage behind the CPU backend's [`Buffer`]s and [`HostBuffer`]s, and the two memory arenas.
//!
//! A device buffer is an `Arc<Storage>`: typed elements (`Vec<f32>`, `Vec<f16>`, ...) behind a
//! `RwLock`, so every view is correctly aligned for its type and raw byte views come from
//! `bytemuck`. A host buffer is an `Arc<HostStorage>` of plain bytes. Both remember the id of
//! the device that made them, so a handle passed to another device is an error, and both
//! account their bytes in their own [`Arena`] (the "device" and the "host" memory are separate
//! arenas, as on a GPU).
//!
//! The `Arc` lets the copy worker keep a buffer alive while a copy is in flight: dropping a
//! handle frees the memory once the device no longer uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arkvale_core::{Buffer, DType, Error, HostBuffer, Result};
use half::{bf16, f16};
use parking_lot::RwLock;

use crate::BACKEND;

/// Bytes currently allocated in one memory arena.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    in_use: AtomicUsize,
}

impl Arena {
    /// Bytes allocated and not yet freed.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// Releases an allocation's bytes from its arena when the storage is dropped.
#[derive(Debug)]
struct Reservation {
    arena: Arc<Arena>,
    bytes: usize,
}

impl Reservation {
    fn new(arena: &Arc<Arena>, bytes: usize) -> Self {
        arena.in_use.fetch_add(bytes, Ordering::Relaxed);
        Reservation {
            arena: arena.clone(),
            bytes,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.arena.in_use.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The typed elements of one device buffer.
#[derive(Debug)]
pub(crate) enum Data {
    /// `DType::F32`.
    F32(Vec<f32>),
    /// `DType::F16`.
    F16(Vec<f16>),
    /// `DType::BF16`.
    BF16(Vec<bf16>),
    /// `DType::U32`.
    U32(Vec<u32>),
    /// `DType::U8`.
    U8(Vec<u8>),
}

impl Data {
    /// `len` zeroed elements of `dtype`; an allocation failure is an error, not an abort.
    fn zeroed(dtype: DType, len: usize) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => Data::F32(zeroed_vec(len)?),
            DType::F16 => Data::F16(zeroed_vec(len)?),
            DType::BF16 => Data::BF16(zeroed_vec(len)?),
            DType::U32 => Data::U32(zeroed_vec(len)?),
            DType::U8 => Data::U8(zeroed_vec(len)?),
        })
    }

    /// The elements as raw bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice(v),
            Data::F16(v) => bytemuck::cast_slice(v),
            Data::BF16(v) => bytemuck::cast_slice(v),
            Data::U32(v) => bytemuck::cast_slice(v),
            Data::U8(v) => v,
        }
    }

    /// The elements as mutable raw bytes.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice_mut(v),
            Data::F16(v) => bytemuck::cast_slice_mut(v),
            Data::BF16(v) => bytemuck::cast_slice_mut(v),
            Data::U32(v) => bytemuck::cast_slice_mut(v),
            Data::U8(v) => v,
        }
    }
}

/// Allocates `len` zeroed elements, reporting an impossible allocation as an error.
fn zeroed_vec<T: bytemuck::Zeroable + Clone>(len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| Error::device(BACKEND, format!("cannot allocate {len} elements: {e}")))?;
    v.resize(len, T::zeroed());
    Ok(v)
}

/// A device buffer's storage.
#[derive(Debug)]
pub(crate) struct Storage {
    device: u64,
    pub(crate) data: RwLock<Data>,
    _reservation: Reservation,
}

/// A host buffer's storage: plain bytes.
#[derive(Debug)]
pub(crate) struct HostStorage {
    device: u64,
    pub(crate) data: RwLock<Vec<u8>>,
    _reservation: Reservation,
}

/// Allocates a zeroed device buffer owned by `device`, accounted in `arena`.
pub(crate) fn alloc(device: u64, arena: &Arc<Arena>, dtype: DType, len: usize) -> Result<Buffer> {
    let bytes = len
        .checked_mul(dtype.size())
        .ok_or_else(|| Error::device(BACKEND, format!("{len} x {dtype:?} overflows")))?;
    let storage = Arc::new(Storage {
        device,
        data: RwLock::new(Data::zeroed(dtype, len)?),
        _reservation: Reservation::new(arena, bytes),
    });
    Ok(Buffer::new(Box::new(storage), len, dtype))
}

/// Allocates `bytes` zeroed bytes of host memory owned by `device`, accounted in `arena`.
pub(crate) fn alloc_host(device: u64, arena: &Arc<Arena>, bytes: usize) -> Result<HostBuffer> {
    let storage = Arc::new(HostStorage {
        device,
        data: RwLock::new(zeroed_vec(bytes)?),
        _reservation: Reservation::new(arena, bytes),
    });
    Ok(HostBuffer::new(Box::new(storage), bytes))
}

/// The storage of `buf` if it was made by `device`, else [`Error::Device`].
pub(crate) fn storage<'a>(device: u64, buf: &'a Buffer, what: &str) -> Result<&'a Arc<Storage>> {
    match buf.inner::<Arc<Storage>>() {
        Some(s) if s.device == device => Ok(s),
        Some(_) => Err(Error::device(
            BACKEND,
            format!("{what}: buffer belongs to another CpuDevice"),
        )),
        None => Err(Error::device(
            BACKEND,
            format!("{what}: buffer was not made by a CpuDevice"),
        )),
    }
}

/// The storage of `buf` if made by `device` and of element type `dtype`.
pub(crate) fn typed<'a>(
    device: u64,
    buf: &'a Buffer,
    dtype: DType,
    what: &str,
) -> Result<&'a Arc<Storage>> {
    let s = storage(device, buf, what)?;
    if buf.dtype() != dtype {
        return Err(Error::shape(format!(
            "{what}: expected a {dtype:?} buffer, got {:?}",
            buf.dtype()
        )));
    }
    Ok(s)
}

/// The storage of `host` if it was made by `device`, else [`Error::Device`].
pub(crate) fn host_storage<'a>(
    device: u64,
    host: &'a HostBuffer,
    what: &str,
) -> Result<&'a Arc<HostStorage>> {
    match host.inner::<Arc<HostStorage>>() {
        Some(s) if s.device == device => Ok(s),
        Some(_) => Err(Error::device(
            BACKEND,
            format!("{what}: host buffer belongs to another CpuDevice"),
        )),
        None => Err(Error::device(
            BACKEND,
            format!("{what}: host buffer was not made by a CpuDevice"),
        )),
    }
}

/// Fails with [`Error::Shape`] if the output storage is also one of the inputs (an operation
/// cannot read and write one buffer at once).
pub(crate) fn not_aliased(out: &Arc<Storage>, inputs: &[&Arc<Storage>], what: &str) -> Result<()> {
    if inputs.iter().any(|i| Arc::ptr_eq(out, i)) {
        return Err(Error::shape(format!(
            "{what}: the output buffer must not also be an input"
        )));
    }
    Ok(())
}

/// Checks that elements `offset .. offset + len` lie inside a buffer of `size` elements.
pub(crate) fn check_range(offset: usize, len: usize, size: usize, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::shape(format!(
            "{what}: elements {offset}..{offset}+{len} outside a buffer of {size}"
        ))),
    }
}
