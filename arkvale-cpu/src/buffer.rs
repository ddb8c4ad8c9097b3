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
//! handle frees the memory once the device no longer uses it. A device buffer also records
//! which of its slots asynchronous copies are moving, until the caller has seen them complete
//! ([`Storage::prepare_access`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arkvale_core::{Buffer, DType, Error, HostBuffer, Result, SharedBytes};
use half::{bf16, f16};
use parking_lot::{Mutex, RwLock};

use crate::BACKEND;
use crate::event::CpuEvent;

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
    /// `DType::Quant`: whole blocks, as stored in a GGUF file.
    Blocks(Vec<u8>),
    /// `DType::Quant` blocks read where they lie (an imported memory-mapped file); the first
    /// write copies them into [`Data::Blocks`].
    Mapped(SharedBytes),
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
            DType::Quant(q) => {
                let bytes = q.bytes_for(len).ok_or_else(|| {
                    Error::shape(format!("{len} values are not whole {q} blocks"))
                })?;
                Data::Blocks(zeroed_vec(bytes)?)
            }
        })
    }

    /// The elements as raw bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice(v),
            Data::F16(v) => bytemuck::cast_slice(v),
            Data::BF16(v) => bytemuck::cast_slice(v),
            Data::U32(v) => bytemuck::cast_slice(v),
            Data::U8(v) | Data::Blocks(v) => v,
            Data::Mapped(b) => b.as_slice(),
        }
    }

    /// The elements as mutable raw bytes (an imported buffer is copied first).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Data::F32(v) => bytemuck::cast_slice_mut(v),
            Data::F16(v) => bytemuck::cast_slice_mut(v),
            Data::BF16(v) => bytemuck::cast_slice_mut(v),
            Data::U32(v) => bytemuck::cast_slice_mut(v),
            Data::U8(v) | Data::Blocks(v) => v,
            Data::Mapped(b) => {
                *self = Data::Blocks(b.as_slice().to_vec());
                self.bytes_mut()
            }
        }
    }
}

/// Allocates `len` zeroed elements, reporting an impossible allocation as an error.
fn zeroed_vec<T: bytemuck::Zeroable + Clone>(len: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| Error::device(BACKEND, format!("cannot allocate {len} elements: {e}")))?;
    crate::huge_pages::advise(v.as_mut_ptr().cast(), len * std::mem::size_of::<T>());
    v.resize(len, T::zeroed());
    Ok(v)
}

/// A device buffer's storage.
#[derive(Debug)]
pub(crate) struct Storage {
    device: u64,
    pub(crate) data: RwLock<Data>,
    /// Asynchronous copies touching this buffer that the caller has not yet seen complete.
    in_flight: Mutex<InFlightMap>,
    _reservation: Reservation,
}

/// Which way an asynchronous copy moves a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyDir {
    /// Device → host: the slot is read by the copy and must not be written meanwhile.
    Backup,
    /// Host → device: the slot is written by the copy and must not be touched meanwhile.
    Recall,
}

/// One copied slot: its element range (keyed by start), direction and completion marker.
#[derive(Debug)]
struct InFlight {
    end: usize,
    slot: u32,
    dir: CopyDir,
    event: Arc<CpuEvent>,
    /// The device's synchronize count when the copy was issued.
    epoch: u64,
}

/// In-flight copies of one buffer, keyed by the first element of the range.
#[derive(Debug, Default)]
struct InFlightMap {
    by_start: BTreeMap<usize, InFlight>,
    /// Longest range recorded (bounds the look-back of an overlap query).
    max_len: usize,
}

impl Storage {
    /// Records that slot `slot` (elements `range`) is being copied by the job of `event`.
    pub(crate) fn start_copy(
        &self,
        slot: u32,
        range: Range<usize>,
        dir: CopyDir,
        event: &Arc<CpuEvent>,
        epoch: u64,
    ) {
        let mut map = self.in_flight.lock();
        map.max_len = map.max_len.max(range.len());
        let entry = InFlight {
            end: range.end,
            slot,
            dir,
            event: event.clone(),
            epoch,
        };
        map.by_start.insert(range.start, entry);
    }

    /// Makes an access to `ranges` safe with respect to this buffer's in-flight copies, where
    /// `epoch` is the device's current synchronize count. Copies the caller may rely on (its
    /// event was seen complete, or it was issued before the last `synchronize`) are forgotten.
    /// Of the others:
    /// * a **recall** overlapping any access is an error: the contract requires waiting on a
    ///   recall's event before its slot is used;
    /// * a **backup** overlapping a write is waited for first (the calling thread blocks until
    ///   the copy thread has read the slot), so that a backup always holds what the slot held
    ///   when it was issued, as the contract promises. Reads never conflict with backups.
    pub(crate) fn prepare_access(
        &self,
        ranges: impl IntoIterator<Item = Range<usize>>,
        write: bool,
        epoch: u64,
        what: &str,
    ) -> Result<()> {
        let mut wait_for: Vec<Arc<CpuEvent>> = Vec::new();
        {
            let mut map = self.in_flight.lock();
            if map.by_start.is_empty() {
                return Ok(());
            }
            for r in ranges {
                let from = r.start.saturating_sub(map.max_len.saturating_sub(1));
                let hits: Vec<usize> = map
                    .by_start
                    .range(from..r.end)
                    .filter(|(_, f)| f.end > r.start)
                    .map(|(&start, _)| start)
                    .collect();
                for start in hits {
                    let f = &map.by_start[&start];
                    if f.event.observed() || f.epoch < epoch {
                        map.by_start.remove(&start);
                    } else if f.dir == CopyDir::Recall {
                        return Err(Error::device(
                            BACKEND,
                            format!(
                                "{what}: slot {} is being written by an earlier recall_pages \
                                 whose event has not been waited on (wait_on_device, wait_host, \
                                 or is_done returning true) or the device synchronized",
                                f.slot
                            ),
                        ));
                    } else if write {
                        wait_for.push(f.event.clone());
                        map.by_start.remove(&start);
                    }
                }
            }
        }
        // Outside the lock: the copy thread needs no lock of ours to finish the backup.
        for event in wait_for {
            event.wait_until_finished();
        }
        Ok(())
    }
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
    let bytes = dtype.bytes_for(len).ok_or_else(|| {
        Error::shape(format!(
            "{len} x {dtype} overflows or is not a whole number of blocks"
        ))
    })?;
    Ok(device_buffer(
        device,
        arena,
        Data::zeroed(dtype, len)?,
        bytes,
        dtype,
        len,
    ))
}

/// A device buffer of `len` elements of `dtype` over `data` (`bytes` bytes, accounted in
/// `arena`), owned by `device`.
fn device_buffer(
    device: u64,
    arena: &Arc<Arena>,
    data: Data,
    bytes: usize,
    dtype: DType,
    len: usize,
) -> Buffer {
    let storage = Arc::new(Storage {
        device,
        data: RwLock::new(data),
        in_flight: Mutex::default(),
        _reservation: Reservation::new(arena, bytes),
    });
    Buffer::new(Box::new(storage), len, dtype)
}

/// A device buffer of `len` quantized values (`dtype`) that reads `bytes` (exactly their
/// size, checked by core) where they lie, accounted in `arena` like an allocation.
pub(crate) fn import(
    device: u64,
    arena: &Arc<Arena>,
    dtype: DType,
    len: usize,
    bytes: SharedBytes,
) -> Buffer {
    let size = bytes.len();
    device_buffer(device, arena, Data::Mapped(bytes), size, dtype, len)
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
