//! A fake [`crate::Backend`] and hand-completed events, for core's tests: host memory works
//! (the host store's tests use it), device buffers are bare handles without memory, and every
//! other `raw_*` op only records that it was called — the checked [`crate::Device`] layer's
//! tests use that record to show that bad input never reaches a backend.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, Checked, DType, DenseBackend, DeviceEvent,
    DigestKind, EstimateJob, Event, HostBuffer, KvBackend, KvLayout, MatmulDims, MemoryBackend,
    Result, Rope, ScoreAgg, SummarizeJob, TopkSegment,
};

/// The storage behind a mock [`HostBuffer`].
pub type HostMem = Arc<Mutex<Vec<u8>>>;

/// The memory of a mock host buffer.
pub fn mem(host: &HostBuffer) -> HostMem {
    host.inner::<HostMem>().expect("a mock host buffer").clone()
}

/// Host memory and bare buffer handles; counts the host bytes it allocated and records the
/// name of every `raw_*` op called after `alloc`/`alloc_host`.
#[derive(Default)]
pub struct MockDevice {
    pub allocated: AtomicUsize,
    /// Whether the backend lacks quantized-weight kernels.
    pub float_only: bool,
    pub calls: Mutex<Vec<&'static str>>,
}

impl MockDevice {
    /// The ops called so far (and forgets them).
    pub fn take_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.lock())
    }

    fn called(&self, op: &'static str) -> Result<()> {
        self.calls.lock().push(op);
        Ok(())
    }

    /// A completed event, recording `op`.
    fn copy_event(&self, op: &'static str) -> Result<Event> {
        self.called(op)?;
        let e = ManualEvent::new(|| {});
        e.complete();
        Ok(e.event())
    }
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

impl MemoryBackend for MockDevice {
    fn raw_name(&self) -> String {
        "mock".into()
    }
    fn raw_alloc(&self, _: Checked, dtype: DType, len: usize) -> Result<Buffer> {
        Ok(Buffer::new(Box::new(()), len, dtype))
    }
    fn raw_write(&self, _: Checked, _: &Buffer, _: usize, _: &[u8]) -> Result<()> {
        self.called("write")
    }
    fn raw_read(&self, _: Checked, _: &Buffer, _: usize, _: &mut [u8]) -> Result<()> {
        self.called("read")
    }
    fn raw_copy(
        &self,
        _: Checked,
        _: &Buffer,
        _: usize,
        _: &Buffer,
        _: usize,
        _: usize,
    ) -> Result<()> {
        self.called("copy")
    }
    fn raw_fill_f32(&self, _: Checked, _: &Buffer, _: usize, _: usize, _: f32) -> Result<()> {
        self.called("fill_f32")
    }
    fn raw_synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn raw_alloc_host(&self, bytes: usize) -> Result<HostBuffer> {
        self.allocated.fetch_add(bytes, Ordering::SeqCst);
        let mem: HostMem = Arc::new(Mutex::new(vec![0; bytes]));
        Ok(HostBuffer::new(Box::new(mem), bytes))
    }
    fn raw_host_write(&self, _: Checked, host: &HostBuffer, at: usize, data: &[u8]) -> Result<()> {
        mem(host).lock()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn raw_host_read(
        &self,
        _: Checked,
        host: &HostBuffer,
        at: usize,
        out: &mut [u8],
    ) -> Result<()> {
        out.copy_from_slice(&mem(host).lock()[at..at + out.len()]);
        Ok(())
    }
    fn raw_backup_pages(
        &self,
        _: Checked,
        _: &KvLayout,
        _: &Buffer,
        _: &[(u32, u64)],
        _: &HostBuffer,
    ) -> Result<Event> {
        self.copy_event("backup_pages")
    }
    fn raw_recall_pages(
        &self,
        _: Checked,
        _: &KvLayout,
        _: &HostBuffer,
        _: &[(u32, u64)],
        _: &Buffer,
    ) -> Result<Event> {
        self.copy_event("recall_pages")
    }
    fn raw_wait_on_device(&self, _: &Event) -> Result<()> {
        self.called("wait_on_device")
    }
}

impl KvBackend for MockDevice {
    fn raw_append_kv(
        &self,
        _: Checked,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &Buffer,
        _: &[AppendDest],
    ) -> Result<()> {
        self.called("append_kv")
    }
    fn raw_summarize(
        &self,
        _: Checked,
        _: &KvLayout,
        _: DigestKind,
        _: &Buffer,
        _: &[SummarizeJob],
        _: &Buffer,
    ) -> Result<()> {
        self.called("summarize")
    }
    fn raw_estimate(
        &self,
        _: Checked,
        _: &KvLayout,
        _: DigestKind,
        _: ScoreAgg,
        _: &Buffer,
        _: &Buffer,
        _: &[EstimateJob],
        _: &Buffer,
    ) -> Result<()> {
        self.called("estimate")
    }
    fn raw_topk(&self, _: Checked, _: &Buffer, _: &[TopkSegment], _: &Buffer) -> Result<()> {
        self.called("topk")
    }
    fn raw_decode_attention(
        &self,
        _: Checked,
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
        self.called("decode_attention")
    }
    fn raw_prefill_attention(
        &self,
        _: Checked,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &[AttnRow],
        _: &[AttnPage],
        _: Option<&Buffer>,
        _: f32,
        _: &AttnState,
    ) -> Result<()> {
        self.called("prefill_attention")
    }
    fn raw_attention_finalize(
        &self,
        _: Checked,
        _: &KvLayout,
        _: &AttnState,
        _: &[AttnRow],
        _: &Buffer,
    ) -> Result<()> {
        self.called("attention_finalize")
    }
    fn raw_attention_weights(
        &self,
        _: Checked,
        _: &KvLayout,
        _: &Buffer,
        _: &Buffer,
        _: &[AttnRow],
        _: &[AttnPage],
        _: Option<&Buffer>,
        _: f32,
        _: &Buffer,
    ) -> Result<()> {
        self.called("attention_weights")
    }
}

impl DenseBackend for MockDevice {
    fn raw_supports_weight_dtype(&self, dtype: DType) -> bool {
        dtype.is_float() || (!self.float_only && dtype.is_weight())
    }
    fn raw_matmul(
        &self,
        _: Checked,
        _: &MatmulDims,
        _: &Buffer,
        _: &Buffer,
        _: &Buffer,
    ) -> Result<()> {
        self.called("matmul")
    }
    fn raw_rmsnorm(
        &self,
        _: Checked,
        _: usize,
        _: usize,
        _: f32,
        _: &Buffer,
        _: &Buffer,
        _: &Buffer,
    ) -> Result<()> {
        self.called("rmsnorm")
    }
    fn raw_rope(&self, _: Checked, _: &Rope<'_>, _: &[u32], _: &Buffer) -> Result<()> {
        self.called("rope")
    }
    fn raw_silu_mul(&self, _: Checked, _: usize, _: &Buffer, _: &Buffer, _: &Buffer) -> Result<()> {
        self.called("silu_mul")
    }
    fn raw_add(&self, _: Checked, _: usize, _: &Buffer, _: &Buffer) -> Result<()> {
        self.called("add")
    }
    fn raw_add_bias(&self, _: Checked, _: usize, _: usize, _: &Buffer, _: &Buffer) -> Result<()> {
        self.called("add_bias")
    }
    fn raw_embedding(&self, _: Checked, _: usize, _: &Buffer, _: &[u32], _: &Buffer) -> Result<()> {
        self.called("embedding")
    }
    fn raw_argmax(&self, _: Checked, _: usize, _: usize, _: &Buffer, _: &Buffer) -> Result<()> {
        self.called("argmax")
    }
}
