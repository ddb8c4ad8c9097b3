//! A host-memory-only [`Device`] and hand-completed events, to test the host store's
//! bookkeeping without a backend: only `alloc_host`, `host_read` and `host_write` work.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::{
    AttnPage, AttnRow, AttnState, Buffer, DType, Device, DeviceEvent, DigestKind, Error,
    EstimateJob, Event, HostBuffer, KvLayout, Result, ScoreAgg, SummarizeJob, TopkSegment,
};

/// The storage behind a mock [`HostBuffer`].
pub type HostMem = Arc<Mutex<Vec<u8>>>;

/// The memory of a mock host buffer.
pub fn mem(host: &HostBuffer) -> HostMem {
    host.inner::<HostMem>().expect("a mock host buffer").clone()
}

/// Host memory only; counts the bytes it allocated.
#[derive(Default)]
pub struct MockDevice {
    pub allocated: AtomicUsize,
}

type Action = Box<dyn FnOnce() + Send>;

/// An event that completes when the test says so (or when someone waits for it), running
/// the copy it stands for at that moment.
pub struct ManualEvent {
    done: AtomicBool,
    action: Mutex<Option<Action>>,
    waited: AtomicBool,
}

impl ManualEvent {
    /// An incomplete event that runs `action` when it completes.
    pub fn new(action: impl FnOnce() + Send + 'static) -> Arc<Self> {
        Arc::new(ManualEvent {
            done: AtomicBool::new(false),
            action: Mutex::new(Some(Box::new(action))),
            waited: AtomicBool::new(false),
        })
    }

    /// Completes the event (runs its copy once).
    pub fn complete(&self) {
        if let Some(action) = self.action.lock().take() {
            action();
        }
        self.done.store(true, Ordering::SeqCst);
    }

    /// Whether someone blocked on the event before it completed.
    pub fn was_waited(&self) -> bool {
        self.waited.load(Ordering::SeqCst)
    }

    /// The event handle for the store.
    pub fn event(self: &Arc<Self>) -> Event {
        Event(self.clone())
    }
}

impl DeviceEvent for ManualEvent {
    fn is_done(&self) -> Result<bool> {
        Ok(self.done.load(Ordering::SeqCst))
    }
    fn wait(&self) -> Result<()> {
        if !self.done.load(Ordering::SeqCst) {
            self.waited.store(true, Ordering::SeqCst);
            self.complete();
        }
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn unsupported<T>() -> Result<T> {
    Err(Error::device("mock", "not supported by the host-only mock"))
}

fn range(host: &HostBuffer, offset: usize, len: usize) -> Result<std::ops::Range<usize>> {
    if offset + len > host.bytes() {
        return Err(Error::device("mock", "host access out of range"));
    }
    Ok(offset..offset + len)
}

impl Device for MockDevice {
    fn name(&self) -> String {
        "mock".into()
    }
    fn alloc(&self, _: DType, _: usize) -> Result<Buffer> {
        unsupported()
    }
    fn write(&self, _: &Buffer, _: usize, _: &[u8]) -> Result<()> {
        unsupported()
    }
    fn read(&self, _: &Buffer, _: usize, _: &mut [u8]) -> Result<()> {
        unsupported()
    }
    fn copy(&self, _: &Buffer, _: usize, _: &Buffer, _: usize, _: usize) -> Result<()> {
        unsupported()
    }
    fn fill_f32(&self, _: &Buffer, _: usize, _: usize, _: f32) -> Result<()> {
        unsupported()
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        self.allocated.fetch_add(bytes, Ordering::SeqCst);
        let mem: HostMem = Arc::new(Mutex::new(vec![0; bytes]));
        Ok(HostBuffer::new(Box::new(mem), bytes))
    }
    fn host_write(&self, host: &HostBuffer, offset: usize, data: &[u8]) -> Result<()> {
        let r = range(host, offset, data.len())?;
        mem(host).lock()[r].copy_from_slice(data);
        Ok(())
    }
    fn host_read(&self, host: &HostBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let r = range(host, offset, out.len())?;
        out.copy_from_slice(&mem(host).lock()[r]);
        Ok(())
    }
    fn backup_pages(
        &self,
        _: &KvLayout,
        _: &Buffer,
        _: &[(u32, u64)],
        _: &HostBuffer,
    ) -> Result<Event> {
        unsupported()
    }
    fn recall_pages(
        &self,
        _: &KvLayout,
        _: &HostBuffer,
        _: &[(u32, u64)],
        _: &Buffer,
    ) -> Result<Event> {
        unsupported()
    }
    fn wait_on_device(&self, _: &Event) -> Result<()> {
        unsupported()
    }
    fn append_kv(
        &self,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &Buffer,
        _: &[crate::AppendDest],
    ) -> Result<()> {
        unsupported()
    }
    fn summarize(
        &self,
        _: &KvLayout,
        _: DigestKind,
        _: &Buffer,
        _: &[SummarizeJob],
        _: &Buffer,
    ) -> Result<()> {
        unsupported()
    }
    fn estimate(
        &self,
        _: &KvLayout,
        _: DigestKind,
        _: ScoreAgg,
        _: &Buffer,
        _: &Buffer,
        _: &[EstimateJob],
        _: &Buffer,
    ) -> Result<()> {
        unsupported()
    }
    fn topk(&self, _: &Buffer, _: &[TopkSegment], _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn decode_attention(
        &self,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &[AttnRow],
        _: &[AttnPage],
        _: Option<&Buffer>,
        _: f32,
        _: &Buffer,
        _: Option<&Buffer>,
    ) -> Result<()> {
        unsupported()
    }
    fn prefill_attention(
        &self,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &[AttnRow],
        _: &[AttnPage],
        _: Option<&Buffer>,
        _: f32,
        _: &AttnState,
    ) -> Result<()> {
        unsupported()
    }
    fn attention_finalize(
        &self,
        _: &KvLayout,
        _: &AttnState,
        _: &[AttnRow],
        _: &Buffer,
    ) -> Result<()> {
        unsupported()
    }
    fn attention_weights(
        &self,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &[AttnRow],
        _: &[AttnPage],
        _: Option<&Buffer>,
        _: f32,
        _: &Buffer,
    ) -> Result<()> {
        unsupported()
    }
    fn matmul(&self, _: &crate::MatmulDims, _: &Buffer, _: &Buffer, _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn rmsnorm(
        &self,
        _: usize,
        _: usize,
        _: f32,
        _: &Buffer,
        _: &Buffer,
        _: &Buffer,
    ) -> Result<()> {
        unsupported()
    }
    fn rope(&self, _: &crate::Rope<'_>, _: &[u32], _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn silu_mul(&self, _: usize, _: &Buffer, _: &Buffer, _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn add(&self, _: usize, _: &Buffer, _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn add_bias(&self, _: usize, _: usize, _: &Buffer, _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn embedding(&self, _: usize, _: &Buffer, _: &[u32], _: &Buffer) -> Result<()> {
        unsupported()
    }
    fn argmax(&self, _: usize, _: usize, _: &Buffer, _: &Buffer) -> Result<()> {
        unsupported()
    }
}
