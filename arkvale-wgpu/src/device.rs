//! [`WgpuDevice`] and its [`MemoryBackend`] implementation (core's checked [`Device`] layer
//! has validated every call's input before it gets here): buffers, host memory and the
//! asynchronous page copies. The [`KvBackend`](arkvale_core::KvBackend) part is in `kv`, the
//! [`DenseBackend`](arkvale_core::DenseBackend) part in `dense`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(doc)]
use arkvale_core::Device;
use arkvale_core::{
    Buffer, Checked, DType, Error, Event, HostBuffer, KvLayout, MemoryBackend, Result,
};
use parking_lot::Mutex;
use wgpu::util::DeviceExt as _;

use crate::BACKEND;
use crate::buffer::{self, GpuBuffer, HostMem};
use crate::context::{AdapterReport, Binding, Gpu};
use crate::event::WgpuEvent;
use crate::kernels::Kernel;
use crate::limits::{align_items, word_cover};
use arkvale_core::validate;

/// Ids of devices made so far, so that a handle can be traced to its device.
static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// The portable GPU backend: WGSL compute shaders on whatever adapter wgpu finds (Vulkan,
/// Metal, DX12; Mesa lavapipe on machines without a GPU).
///
/// # How the `Device` contract maps to wgpu
///
/// * **Stream order.** Every operation is encoded and submitted to the device's one queue
///   before the method returns; wgpu executes submissions in order, so a later operation
///   observes every earlier one. [`Device::read`] and [`Device::synchronize`] block.
/// * **Asynchronous copies.** wgpu exposes one queue, so page backups and recalls are
///   submitted to it too (copy commands between the pool and a mapped staging buffer) and
///   return a [`WgpuEvent`] at once. A backup's event completes when the staging buffer was
///   mapped and its bytes copied into host memory; a recall's when its submission finished.
///   Because the queue is in order, [`Device::wait_on_device`] has nothing to wait for (later
///   compute is already ordered after the recall): it only checks the event's origin.
/// * **Storage types.** KV pools, weights and embedding tables are f32, f16 or bf16 buffers;
///   half types are unpacked in the shaders with integer bit operations and written with
///   round-to-nearest-even, bit for bit the `half` crate's conversions. This needs no
///   `SHADER_F16`, so f16 storage is used on every adapter (whether the adapter has the
///   feature is reported in [`WgpuDevice::adapter`]). Arithmetic is f32.
/// * **Limits.** The device is opened with the adapter's own limits; every binding is checked
///   against `max_storage_buffer_binding_size`. Matmul splits its weight rows and activation
///   rows, argmax its rows, embedding copies rows with copy commands, and the KV ops bind the
///   window of pool slots they touch; an op whose working set cannot be split below the limit
///   is an [`Error::Device`]. Buffers above the adapter's buffer limit are made of segments
///   (see `buffer::GpuBuffer`). Known limit: the KV ops do not split one call over several
///   windows yet, so on an adapter with small bindings (lavapipe: 128 MiB) a call whose slots
///   lie further apart than one binding (a long context in a large pool) is that error; on
///   desktop GPUs (bindings of 2-4 GiB) a default 2 GiB pool is one binding.
/// * **Errors.** Core's [`Device`] layer checks every descriptor before anything is encoded
///   (the same rules for every backend); here only a handle's origin and the adapter's limits
///   are checked; wgpu validation errors are captured and returned as [`Error::Device`],
///   never a panic.
pub struct WgpuDevice {
    pub(crate) id: u64,
    pub(crate) gpu: Gpu,
    /// Largest buffer made in one piece (the adapter's buffer limit) and the segment size
    /// of larger ones (see [`segment_bytes`]); tests lower both to exercise segmentation.
    pub(crate) max_single: u64,
    pub(crate) max_piece: u64,
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("id", &self.id)
            .field("adapter", &self.gpu.report.name)
            .finish()
    }
}

impl WgpuDevice {
    /// Opens the first adapter wgpu finds and compiles every kernel. No adapter (no Vulkan,
    /// Metal or DX12 driver) is an [`Error::Device`] whose message says so.
    pub fn new() -> Result<Self> {
        let gpu = Gpu::open()?;
        gpu.compile_all()?;
        let max_piece = segment_bytes(&gpu.limits)?;
        Ok(WgpuDevice {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            max_single: gpu.limits.max_buffer_size,
            gpu,
            max_piece,
        })
    }

    /// What the device knows about its adapter (name, backend, f16 support, limits).
    pub fn adapter(&self) -> &AdapterReport {
        &self.gpu.report
    }

    /// Whether f16 (and bf16) storage is used for KV pools and weights: always, since the
    /// shaders unpack half types from 32-bit words themselves (see [`WgpuDevice`]).
    pub fn f16_storage(&self) -> bool {
        true
    }

    pub(crate) fn gpu_buf<'a>(&self, buf: &'a Buffer, what: &str) -> Result<&'a GpuBuffer> {
        buffer::gpu(self.id, buf, what)
    }

    /// The binding of bytes `[start, start + len)` of `buf`: the window starts at the
    /// adapter's offset alignment at or below `start`; returns it and its first byte.
    pub(crate) fn window<'a>(
        &self,
        buf: &'a wgpu::Buffer,
        start: u64,
        len: u64,
    ) -> (Binding<'a>, u64) {
        let align = self.gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let offset = start / align * align;
        let (_, cover) = word_cover(start - offset, len.max(1));
        let size = (start - offset + cover).div_ceil(4) * 4;
        let size = size.min(buf.size() - offset).max(4);
        (
            Binding {
                buffer: buf,
                offset,
                size,
            },
            offset,
        )
    }

    /// Copies `len` bytes from byte `sb` of `src` to byte `db` of `dst` (different buffers)
    /// with the byte-copy kernel (any alignment).
    fn byte_copy(
        &self,
        src: &wgpu::Buffer,
        sb: u64,
        dst: &wgpu::Buffer,
        db: u64,
        len: u64,
    ) -> Result<()> {
        let (sw, so) = self.window(src, sb, len);
        let (dw, doff) = self.window(dst, db, len);
        let (first, bytes) = word_cover(db - doff, len);
        let words = bytes / 4;
        let meta = [
            (sb - so) as u32,
            (db - doff) as u32,
            len as u32,
            (first / 4) as u32,
            words as u32,
        ];
        self.gpu.launch(
            Kernel::ByteCopy,
            &meta,
            &[sw, dw],
            words.div_ceil(256),
            "copy",
        )
    }

    /// A storage buffer with `bytes` placed at byte `phase` (0..4) of its first word.
    fn staged(&self, bytes: &[u8], phase: usize) -> wgpu::Buffer {
        let mut padded = vec![0u8; (phase + bytes.len()).div_ceil(4) * 4];
        padded[phase..phase + bytes.len()].copy_from_slice(bytes);
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("arkvale upload"),
                contents: &padded,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// Reads bytes `[start, start + len)` of `buf` to the host (blocking).
    pub(crate) fn read_bytes(&self, g: &GpuBuffer, start: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let (cs, cl) = word_cover(start, out.len() as u64);
        let staging = self.gpu.buffer(
            cl,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "arkvale read staging",
        )?;
        let mut enc = self.gpu.encoder();
        let mut to = 0;
        for (b, at, n) in g.pieces(&self.gpu.device, cs, cl) {
            enc.copy_buffer_to_buffer(b, at, &staging, to, n);
            to += n;
        }
        let idx = self.gpu.submit(enc, "read")?;
        let result: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>> =
            Arc::default();
        let r2 = result.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| *r2.lock() = Some(r));
        self.gpu.wait(Some(idx), "read")?;
        while result.lock().is_none() {
            self.gpu.wait(None, "read")?;
        }
        if let Some(Err(e)) = result.lock().take() {
            return Err(Error::device(BACKEND, format!("read: map failed: {e}")));
        }
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::device(BACKEND, format!("read: {e}")))?;
            let s = (start - cs) as usize;
            out.copy_from_slice(&view[s..s + out.len()]);
        }
        staging.unmap();
        Ok(())
    }

    /// An event that is already complete (for copies with nothing to copy).
    fn done_event(&self) -> Result<Event> {
        let idx = self.gpu.submit(self.gpu.encoder(), "event")?;
        Ok(Event(Arc::new(WgpuEvent {
            device_id: self.id,
            device: self.gpu.device.clone(),
            index: idx,
            done: Arc::new(AtomicBool::new(true)),
            error: Arc::default(),
        })))
    }
}

/// The segment size of buffers above the adapter's buffer limit: below both the buffer and the
/// binding limit, in whole MiB (so that every segment boundary meets any binding-offset
/// alignment).
pub(crate) fn segment_bytes(limits: &wgpu::Limits) -> Result<u64> {
    let seg = limits
        .max_buffer_size
        .min(limits.max_storage_buffer_binding_size)
        >> 20
        << 20;
    if seg == 0 {
        return Err(Error::device(BACKEND, "adapter limits below 1 MiB"));
    }
    Ok(seg)
}

impl MemoryBackend for WgpuDevice {
    fn raw_name(&self) -> String {
        BACKEND.to_string()
    }

    fn raw_alloc(&self, _: Checked, dtype: DType, len: usize) -> Result<Buffer> {
        // Core refused quantized types (no kernels here) and sizes that overflow.
        let bytes = len * dtype.size();
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let total = (bytes as u64).max(4).div_ceil(4) * 4;
        let seg_bytes = if total <= self.max_single {
            total
        } else {
            self.max_piece
        };
        let buffer = self.gpu.buffer(seg_bytes, usage, "arkvale buffer")?;
        let segments = total.div_ceil(seg_bytes) as usize;
        Ok(Buffer::new(
            Box::new(GpuBuffer {
                device: self.id,
                id: buffer::next_id(),
                buffer,
                seg_bytes,
                total,
                more: (1..segments).map(|_| Default::default()).collect(),
                usage,
            }),
            len,
            dtype,
        ))
    }

    fn raw_write(&self, _: Checked, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        let g = self.gpu_buf(buf, "write")?;
        let size = buf.dtype().size();
        if data.is_empty() {
            return Ok(());
        }
        let byte = (offset * size) as u64;
        let pieces = g.pieces(&self.gpu.device, byte, data.len() as u64);
        if byte % 4 == 0 && data.len() % 4 == 0 {
            let lock = self.gpu.submit_lock.lock();
            let mut from = 0;
            for (b, at, n) in pieces {
                self.gpu
                    .queue
                    .write_buffer(b, at, &data[from..from + n as usize]);
                from += n as usize;
            }
            drop(lock);
            return self.gpu.check_errors("write");
        }
        let phase = (byte % 4) as usize;
        let staged = self.staged(data, phase);
        let mut from = phase as u64;
        for (b, at, n) in pieces {
            self.byte_copy(&staged, from, b, at, n)?;
            from += n;
        }
        Ok(())
    }

    fn raw_read(&self, _: Checked, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let g = self.gpu_buf(buf, "read")?;
        let size = buf.dtype().size();
        self.read_bytes(g, (offset * size) as u64, out)
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
        let s = self.gpu_buf(src, "copy: src")?;
        let d = self.gpu_buf(dst, "copy: dst")?;
        if len == 0 {
            return Ok(());
        }
        let size = src.dtype().size() as u64;
        let (sb, db, n) = (
            src_off as u64 * size,
            dst_off as u64 * size,
            len as u64 * size,
        );
        let dev = &self.gpu.device;
        if s.id != d.id && sb % 4 == 0 && db % 4 == 0 && n % 4 == 0 {
            // Copy commands, split where either side changes segment.
            let mut enc = self.gpu.encoder();
            let mut done = 0;
            while done < n {
                let (sbuf, sat) = s.within(dev, sb + done, 4, "copy")?;
                let (dbuf, dat) = d.within(dev, db + done, 4, "copy")?;
                let step = (s.seg_bytes - sat).min(d.seg_bytes - dat).min(n - done);
                enc.copy_buffer_to_buffer(sbuf, sat, dbuf, dat, step);
                done += step;
            }
            self.gpu.submit(enc, "copy")?;
            return Ok(());
        }
        // Unaligned, or overlapping ranges of one buffer (memmove semantics): the source words
        // go to a temporary, then the byte-copy kernel writes the destination.
        let (cs, cl) = word_cover(sb, n);
        let tmp = self.gpu.buffer(
            cl,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            "arkvale copy temp",
        )?;
        let mut enc = self.gpu.encoder();
        let mut to = 0;
        for (b, at, m) in s.pieces(dev, cs, cl) {
            enc.copy_buffer_to_buffer(b, at, &tmp, to, m);
            to += m;
        }
        self.gpu.submit(enc, "copy")?;
        let mut from = sb - cs;
        for (b, at, m) in d.pieces(dev, db, n) {
            self.byte_copy(&tmp, from, b, at, m)?;
            from += m;
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
        let g = self.gpu_buf(buf, "fill_f32")?;
        if len == 0 {
            return Ok(());
        }
        for (b, at, n) in g.pieces(&self.gpu.device, offset as u64 * 4, len as u64 * 4) {
            let (w, wo) = self.window(b, at, n);
            let meta = [((at - wo) / 4) as u32, (n / 4) as u32, value.to_bits()];
            self.gpu
                .launch(Kernel::Fill, &meta, &[w], (n / 4).div_ceil(256), "fill_f32")?;
        }
        Ok(())
    }

    fn raw_synchronize(&self) -> Result<()> {
        self.gpu.wait(None, "synchronize")
    }

    fn raw_alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        let mut data = Vec::new();
        data.try_reserve_exact(bytes)
            .map_err(|e| Error::device(BACKEND, format!("alloc_host of {bytes} bytes: {e}")))?;
        data.resize(bytes, 0);
        Ok(HostBuffer::new(
            Box::new(HostMem {
                device: self.id,
                data: Arc::new(Mutex::new(data)),
            }),
            bytes,
        ))
    }

    fn raw_host_write(
        &self,
        _: Checked,
        host: &HostBuffer,
        offset: usize,
        data: &[u8],
    ) -> Result<()> {
        let h = buffer::host(self.id, host, "host_write")?;
        h.data.lock()[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn raw_host_read(
        &self,
        _: Checked,
        host: &HostBuffer,
        offset: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let h = buffer::host(self.id, host, "host_read")?;
        out.copy_from_slice(&h.data.lock()[offset..offset + out.len()]);
        Ok(())
    }

    /// Copies the slots into a mapped staging buffer on the queue; when it is mapped, the map
    /// callback copies the bytes into host memory and completes the event.
    fn raw_backup_pages(
        &self,
        _: Checked,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event> {
        let p = self.gpu_buf(pool, "backup_pages: pool")?;
        let h = buffer::host(self.id, host, "backup_pages")?;
        let plan = validate::page_copy_plan(layout, copies);
        if plan.is_empty() {
            return self.done_event();
        }
        let n = layout.slot_bytes() as u64;
        let staging = self.gpu.buffer(
            n * plan.len() as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "arkvale backup staging",
        )?;
        let mut enc = self.gpu.encoder();
        for (i, &(pool_byte, _, bytes)) in plan.iter().enumerate() {
            let mut to = i as u64 * n;
            for (b, at, m) in p.pieces(&self.gpu.device, pool_byte as u64, bytes as u64) {
                enc.copy_buffer_to_buffer(b, at, &staging, to, m);
                to += m;
            }
        }
        let idx = self.gpu.submit(enc, "backup_pages")?;
        let done = Arc::new(AtomicBool::new(false));
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let (d2, e2, data, st) = (done.clone(), error.clone(), h.data.clone(), staging.clone());
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            match r {
                Ok(()) => match st.get_mapped_range(..) {
                    Ok(view) => {
                        let mut host = data.lock();
                        for (i, &(_, hb, bytes)) in plan.iter().enumerate() {
                            let s = i * bytes;
                            host[hb..hb + bytes].copy_from_slice(&view[s..s + bytes]);
                        }
                        drop(view);
                        st.unmap();
                    }
                    Err(e) => *e2.lock() = Some(format!("backup_pages: {e}")),
                },
                Err(e) => *e2.lock() = Some(format!("backup_pages: map failed: {e}")),
            }
            d2.store(true, Ordering::Release);
        });
        Ok(Event(Arc::new(WgpuEvent {
            device_id: self.id,
            device: self.gpu.device.clone(),
            index: idx,
            done,
            error,
        })))
    }

    /// Fills a staging buffer mapped at creation from host memory, then copies it into the
    /// slots on the queue; the event completes with the submission.
    fn raw_recall_pages(
        &self,
        _: Checked,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event> {
        let p = self.gpu_buf(pool, "recall_pages: pool")?;
        let h = buffer::host(self.id, host, "recall_pages")?;
        let plan = validate::page_copy_plan(layout, copies);
        if plan.is_empty() {
            return self.done_event();
        }
        let n = layout.slot_bytes() as u64;
        let total = n * plan.len() as u64;
        if total > self.gpu.limits.max_buffer_size {
            return Err(Error::device(
                BACKEND,
                format!("recall_pages: {total} bytes exceed the adapter's buffer limit"),
            ));
        }
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("arkvale recall staging"),
            size: total,
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        {
            let mut view = staging
                .get_mapped_range_mut(..)
                .map_err(|e| Error::device(BACKEND, format!("recall_pages: {e}")))?;
            let host = h.data.lock();
            let mut packed = vec![0u8; total as usize];
            for (i, &(_, hb, bytes)) in plan.iter().enumerate() {
                packed[i * bytes..(i + 1) * bytes].copy_from_slice(&host[hb..hb + bytes]);
            }
            view.copy_from_slice(&packed);
        }
        staging.unmap();
        let mut enc = self.gpu.encoder();
        for (i, &(pool_byte, _, bytes)) in plan.iter().enumerate() {
            let mut from = i as u64 * n;
            for (b, at, m) in p.pieces(&self.gpu.device, pool_byte as u64, bytes as u64) {
                enc.copy_buffer_to_buffer(&staging, from, b, at, m);
                from += m;
            }
        }
        let idx = self.gpu.submit(enc, "recall_pages")?;
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        self.gpu
            .queue
            .on_submitted_work_done(move || d2.store(true, Ordering::Release));
        Ok(Event(Arc::new(WgpuEvent {
            device_id: self.id,
            device: self.gpu.device.clone(),
            index: idx,
            done,
            error: Arc::default(),
        })))
    }

    /// The queue is in order, so later compute already follows the copy: only checks that
    /// the event is this device's.
    fn raw_wait_on_device(&self, event: &Event) -> Result<()> {
        match event.0.as_any().downcast_ref::<WgpuEvent>() {
            Some(e) if e.device() == self.id => Ok(()),
            Some(_) => Err(Error::device(
                BACKEND,
                "wait_on_device: event of another WgpuDevice",
            )),
            None => Err(Error::device(
                BACKEND,
                "wait_on_device: event was not made by a WgpuDevice",
            )),
        }
    }
}

/// The smallest slot index step whose byte offset meets the binding alignment.
pub(crate) fn slot_align(layout: &KvLayout, align: u64) -> usize {
    align_items(layout.slot_bytes() as u64, align)
}
