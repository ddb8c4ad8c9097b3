//! The asynchronous page copies of [`CudaDevice`] and the host memory they use: pinned host
//! buffers and host transfers, page backups (device to host) and recalls (host to device) on
//! the copy streams, and their completion events.

use std::any::Any;
use std::sync::Arc;

use arkvale_core::{Buffer, Device, DeviceEvent, Error, Event, HostBuffer, KvLayout, Result};

use crate::BACKEND;
use crate::device::CudaDevice;
use crate::driver::{Pinned, RawEvent};
use arkvale_core::validate;

/// Pinned host memory of this backend.
pub(crate) struct HostMem {
    pub(crate) mem: Pinned,
    pub(crate) device: u64,
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

/// Turns `(slot, host byte offset)` copies (checked by core's `Device` layer) into
/// `(pool byte, host byte, bytes)` runs, merging copies that are adjacent on both sides.
pub(crate) fn page_copy_plan(
    layout: &KvLayout,
    copies: &[(u32, u64)],
) -> Vec<(usize, usize, usize)> {
    let mut plan: Vec<(usize, usize, usize)> = Vec::with_capacity(copies.len());
    for (pool_byte, host, n) in validate::page_copy_plan(layout, copies) {
        match plan.last_mut() {
            Some(last) if last.0 + last.2 == pool_byte && last.1 + last.2 == host => last.2 += n,
            _ => plan.push((pool_byte, host, n)),
        }
    }
    plan
}

impl CudaDevice {
    pub(crate) fn host<'a>(&self, h: &'a HostBuffer, what: &str) -> Result<&'a HostMem> {
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
            self.h2d
                .copy_from_pinned(d.mem.ptr, h.mem.ptr, bytes, "cuMemcpyHtoDAsync")
        }?;
        self.h2d.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// [`Device::alloc_host`](arkvale_core::Device::alloc_host).
    pub(crate) fn alloc_pinned(&self, bytes: usize) -> Result<HostBuffer> {
        let mem = Pinned::alloc(&self.ctx, bytes)?;
        Ok(HostBuffer::new(
            Box::new(HostMem {
                mem,
                device: self.id,
            }),
            bytes,
        ))
    }

    /// [`Device::host_write`](arkvale_core::Device::host_write).
    pub(crate) fn pinned_write(&self, host: &HostBuffer, offset: usize, data: &[u8]) -> Result<()> {
        let h = self.host(host, "host_write")?;
        if !data.is_empty() {
            // SAFETY: the range lies inside the pinned allocation (core's `Device` layer checked
            // it before `raw_host_write`, the only caller); the caller does not run a
            // copy over these bytes meanwhile (the contract's event rules).
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), h.mem.ptr.add(offset), data.len())
            };
        }
        Ok(())
    }

    /// [`Device::host_read`](arkvale_core::Device::host_read).
    pub(crate) fn pinned_read(
        &self,
        host: &HostBuffer,
        offset: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let h = self.host(host, "host_read")?;
        if !out.is_empty() {
            // SAFETY: as in host_write.
            unsafe {
                std::ptr::copy_nonoverlapping(h.mem.ptr.add(offset), out.as_mut_ptr(), out.len())
            };
        }
        Ok(())
    }

    /// [`Device::backup_pages`](arkvale_core::Device::backup_pages): queues the copies on
    /// the backup stream after the compute issued so far.
    pub(crate) fn backup(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event> {
        self.ctx.bind()?;
        let p = self.kv_pool(pool, "backup_pages")?;
        let h = self.host(host, "backup_pages")?;
        let plan = page_copy_plan(layout, copies);
        let after_compute = self.compute.record()?;
        self.d2h.wait(&after_compute)?;
        for (pool_byte, host_byte, n) in plan {
            // SAFETY: both ranges were checked by core's `Device` layer (`raw_backup_pages` is
            // the only caller); the host memory is pinned and outlives the copy
            // (freeing it waits for the device).
            unsafe {
                self.d2h.copy_to_pinned(
                    h.mem.ptr.add(host_byte),
                    p.mem.ptr + pool_byte as u64,
                    n,
                    "backup_pages: cuMemcpyDtoHAsync",
                )
            }?;
        }
        Ok(Event(Arc::new(CudaEvent {
            ev: self.d2h.record()?,
            device: self.id,
        })))
    }

    /// [`Device::recall_pages`](arkvale_core::Device::recall_pages): queues the copies on
    /// the recall stream after the compute issued so far.
    pub(crate) fn recall(
        &self,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event> {
        self.ctx.bind()?;
        let p = self.kv_pool(pool, "recall_pages")?;
        let h = self.host(host, "recall_pages")?;
        let plan = page_copy_plan(layout, copies);
        let after_compute = self.compute.record()?;
        self.h2d.wait(&after_compute)?;
        for (pool_byte, host_byte, n) in plan {
            // SAFETY: as in backup_pages.
            unsafe {
                self.h2d.copy_from_pinned(
                    p.mem.ptr + pool_byte as u64,
                    h.mem.ptr.add(host_byte),
                    n,
                    "recall_pages: cuMemcpyHtoDAsync",
                )
            }?;
        }
        Ok(Event(Arc::new(CudaEvent {
            ev: self.h2d.record()?,
            device: self.id,
        })))
    }

    /// [`Device::wait_on_device`](arkvale_core::Device::wait_on_device): `cuStreamWaitEvent` on
    /// the compute stream: no host stall.
    pub(crate) fn wait_event(&self, event: &Event) -> Result<()> {
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
}
