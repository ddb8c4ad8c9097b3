//! The `Device` trait: what a backend must provide for the cache manager to drive it.
//!
//! # Contract (every implementation must honour it)
//!
//! * **Stream order.** Operations are issued by one host thread per device and execute in
//!   issue order on the device's compute queue. Methods that take `&Buffer` outputs may return
//!   before the device finished; a later operation observes all earlier ones. Only the methods
//!   that return data to the host ([`Device::read`], [`Device::host_read`]) and
//!   [`Device::synchronize`] / [`Device::wait_host`] block the calling thread.
//! * **Asynchronous page copies.** [`Device::backup_pages`] (device → host) and
//!   [`Device::recall_pages`] (host → device) run on a separate copy queue and return an
//!   [`Event`]. A copy observes every compute operation issued before it (a backup copies what
//!   the preceding appends wrote). Compute operations do **not** wait for copies unless told:
//!   call [`Device::wait_on_device`] to make the compute queue wait for an event (no host
//!   stall), or [`Device::wait_host`] to block the host. A backup's host bytes may be read
//!   only after its event completed; a recall's destination slot may be read only after
//!   `wait_on_device` on its event. The cache manager never writes a slot while a backup of
//!   it may still be reading it (it waits for the backup's event before a slot changes
//!   hands), so backends need not order compute after copies on their own.
//! * **Ownership.** A [`Buffer`] / [`HostBuffer`] is an owned handle; dropping it frees the
//!   memory once the device no longer uses it. Handles are not `Clone`: copying device memory
//!   can fail, so it is an explicit operation ([`Device::copy`]). A handle must only be passed
//!   to the device that created it (others return [`crate::Error::Device`]).
//! * **Errors.** Every method returns a [`Result`]; bad descriptors (an index out of range, a
//!   buffer too small, a dtype mismatch, an output that is also an input) are errors, never a
//!   panic or an out-of-bounds write.
//! * **Who checks what.** Backends do not implement this trait: they implement
//!   [`crate::Backend`] (its three parts [`crate::MemoryBackend`], [`crate::KvBackend`],
//!   [`crate::DenseBackend`]), and core's one `impl<B: Backend> Device for B`
//!   ([`crate::backend`]) checks every call's input — dtypes, lengths, aliasing, the layout,
//!   descriptors, copy plans, ranges ([`crate::validate`]) — before it calls the backend, so
//!   every backend reports the same [`crate::Error::Shape`] for the same bad input, and a
//!   backend may assume valid input. A backend checks only what only it can know: that a
//!   handle or event is its own ([`crate::Error::Device`] otherwise), its own limits, and its
//!   own hazards.
//!
//! # Layouts
//!
//! * Queries `q`: f32 `[rows, H, d]`. New keys/values: f32 `[tokens, Hkv, d]`, keys already
//!   rotated (post-RoPE). Attention outputs: f32 `[rows, H, d]`.
//! * KV pool: `kv_dtype` elements, `slots` consecutive slots; one slot holds a page unit:
//!   `K[hg][p][d]` followed by `V[hg][p][d]` where `hg` is KV heads per group. Group `g` covers
//!   KV heads `g*hg .. (g+1)*hg` and query heads `g*hg*gqa .. (g+1)*hg*gqa`.
//! * Digest store: f32, `hg * digest.len(d)` values per digest index; see [`crate::digest`].
//! * Keep-mask (token-level policies): u8 `[slots][hg][p]`, non-zero = the token takes part.
//! * Token weights (for H2O/TOVA): f32 `[pages.len()][hg][p]`, aligned with a page list.
//! * Dense model ops ([`crate::dense`]): activations f32 row-major (`x [m, k]`, hidden states
//!   `[tokens, dim]`, q/k `[tokens, heads, head_dim]`, logits `[rows, vocab]`); weights
//!   `W [n, k]` and embedding tables `[vocab, dim]` in f32, f16 or bf16; token ids and argmax
//!   results u32. An op reads and writes the leading elements its sizes name; a larger buffer
//!   is fine, a smaller one is an error, and an output may not be one of the op's inputs
//!   (except where the op is documented as in place).

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dense::{MatmulDims, Rope};
use crate::{DType, DigestKind, KvDtype, Result, ScoreAgg, SharedBytes};

/// Ids of the buffers made so far in this process (see [`Buffer::id`]).
static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// An owned handle to a device buffer of `len` elements of `dtype`.
pub struct Buffer {
    inner: Box<dyn Any + Send + Sync>,
    len: usize,
    dtype: DType,
    id: u64,
}

impl Buffer {
    /// Wraps a backend's storage. Only backends call this, each time with storage of its own:
    /// a handle owns its storage, so no two handles may wrap the same memory (the handle's
    /// [`Buffer::id`] is then the identity of that memory).
    pub fn new(inner: Box<dyn Any + Send + Sync>, len: usize, dtype: DType) -> Self {
        Buffer {
            inner,
            len,
            dtype,
            id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
    /// The identity of the buffer's storage: unique among the buffers made in this process
    /// (on any device), so two handles with one id are the same buffer. The aliasing check
    /// [`crate::validate::not_aliased`] compares it.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Bytes in the buffer (for quantized types, `len` is a whole number of blocks, which
    /// backends check when they allocate).
    pub fn bytes(&self) -> usize {
        self.len / self.dtype.block_len() * self.dtype.size()
    }
    /// The backend's storage, for the backend that created it.
    pub fn inner<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} x {:?})", self.len, self.dtype)
    }
}

/// An owned handle to host memory a device can copy pages to and from asynchronously
/// (pinned memory on CUDA, mapped staging memory on wgpu, plain memory on the CPU).
pub struct HostBuffer {
    inner: Box<dyn Any + Send + Sync>,
    bytes: usize,
}

impl HostBuffer {
    /// Wraps a backend's host storage. Only backends call this.
    pub fn new(inner: Box<dyn Any + Send + Sync>, bytes: usize) -> Self {
        HostBuffer { inner, bytes }
    }
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The backend's storage, for the backend that created it.
    pub fn inner<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBuffer({} bytes)", self.bytes)
    }
}

/// What a backend's completion marker can do.
pub trait DeviceEvent: Send + Sync {
    /// Whether the work before the event has finished (never blocks).
    fn is_done(&self) -> Result<bool>;
    /// Blocks the calling thread until the work before the event has finished.
    fn wait(&self) -> Result<()>;
    /// Lets a backend downcast to its own event type (e.g. to make a stream wait on it).
    fn as_any(&self) -> &dyn Any;
}

/// A completion marker for asynchronous work. Cheap to clone; completion is monotonic.
#[derive(Clone)]
pub struct Event(pub Arc<dyn DeviceEvent>);

impl Event {
    /// Whether the work has finished.
    pub fn is_done(&self) -> Result<bool> {
        self.0.is_done()
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

/// The geometry of the KV pool: enough to find any element of any slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Storage type of keys and values.
    pub kv_dtype: KvDtype,
    /// KV heads per head group (`hg`).
    pub heads_per_group: usize,
    /// Query heads per KV head (GQA ratio).
    pub gqa: usize,
    /// Tokens per page (`p`).
    pub page_size: usize,
    /// Head dimension (`d`).
    pub head_dim: usize,
    /// Head groups per layer.
    pub groups: usize,
}

impl KvLayout {
    /// KV heads in the model.
    pub fn kv_heads(&self) -> usize {
        self.heads_per_group * self.groups
    }
    /// Query heads in the model.
    pub fn q_heads(&self) -> usize {
        self.kv_heads() * self.gqa
    }
    /// Elements of one slot (K and V).
    pub fn slot_elems(&self) -> usize {
        2 * self.heads_per_group * self.page_size * self.head_dim
    }
    /// Bytes of one slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_elems() * self.kv_dtype.size()
    }
    /// Element offset of `K[head][pos][0]` inside slot `slot`.
    pub fn k_offset(&self, slot: usize, head: usize, pos: usize) -> usize {
        slot * self.slot_elems() + (head * self.page_size + pos) * self.head_dim
    }
    /// Element offset of `V[head][pos][0]` inside slot `slot`.
    pub fn v_offset(&self, slot: usize, head: usize, pos: usize) -> usize {
        self.k_offset(slot, head, pos) + self.heads_per_group * self.page_size * self.head_dim
    }
    /// Elements of one keep-mask / token-weight page (`hg * p`).
    pub fn tokens_per_slot(&self) -> usize {
        self.heads_per_group * self.page_size
    }
}

/// Where one new token's keys and values go: token row `token` of the inputs, head group
/// `group`, into slot `slot` at in-page position `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendDest {
    /// Row of the `[tokens, Hkv, d]` inputs.
    pub token: u32,
    /// Head group (selects `hg` KV heads of the row).
    pub group: u32,
    /// Destination slot.
    pub slot: u32,
    /// Position inside the page.
    pub pos: u32,
}

/// Summarize the (full) page in `slot` into digest index `digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SummarizeJob {
    /// Source slot.
    pub slot: u32,
    /// Destination digest index.
    pub digest: u32,
    /// Valid tokens in the page (`p` for a full page).
    pub len: u32,
}

/// Score digest `digest` of head group `group` against query row `q_row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EstimateJob {
    /// Row of the `[rows, H, d]` queries.
    pub q_row: u32,
    /// Head group.
    pub group: u32,
    /// Digest index.
    pub digest: u32,
}

/// A contiguous run of scores and how many of them to select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopkSegment {
    /// First score of the segment.
    pub start: u32,
    /// Scores in the segment.
    pub len: u32,
    /// How many to select (`k <= len`).
    pub k: u32,
}

/// One page an attention row reads: slot, absolute position of its first token, valid tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttnPage {
    /// Pool slot.
    pub slot: u32,
    /// Absolute position of the page's first token.
    pub base_pos: u32,
    /// Valid tokens (the partial page has fewer than `p`).
    pub len: u32,
}

/// One attention problem: query row `q_row`, head group `group`, over the pages
/// `pages[page_start .. page_start + page_count]`. Token `i` of a page takes part iff
/// `i < len`, `base_pos + i <= pos` (causality) and, when a keep-mask is given, its mask byte
/// is non-zero. A row with no token taking part yields zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttnRow {
    /// Row of the `[rows, H, d]` queries and outputs.
    pub q_row: u32,
    /// Head group.
    pub group: u32,
    /// Absolute position of the query token.
    pub pos: u32,
    /// First page of this row in the page list.
    pub page_start: u32,
    /// Pages of this row.
    pub page_count: u32,
}

/// Running flash-attention state for rows processed over several calls: f32 buffers
/// `acc [rows, H, d]`, `max [rows, H]`, `sum [rows, H]`, in the natural-log domain.
#[derive(Debug)]
pub struct AttnState {
    /// Unnormalized output accumulator.
    pub acc: Buffer,
    /// Running maximum of the scaled scores.
    pub max: Buffer,
    /// Running sum of `exp(score - max)`.
    pub sum: Buffer,
}

/// What a device does: buffers and copies, the KV ops (append, summarize, estimate,
/// top-k, paged attention, asynchronous page backup/recall) and the dense model ops
/// ([`Device::matmul`], [`Device::rmsnorm`], [`Device::rope`], [`Device::silu_mul`],
/// [`Device::add`], [`Device::embedding`], [`Device::argmax`]).
/// See the module documentation for the contract. Implemented once, by core, for every
/// [`crate::Backend`]: each method checks its input, then calls the backend.
pub trait Device: Send + Sync {
    /// A short backend name for messages and test summaries (`cpu`, `cuda`, `wgpu`).
    fn name(&self) -> String;

    /// Allocates `len` zeroed elements of `dtype`.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer>;
    /// A buffer of `len` elements of `dtype` holding `bytes` (exactly the size of `len`
    /// elements; a quantized `dtype` must be one the device supports, as for
    /// [`Device::alloc`]). Where [`Device::imports_in_place`] says so (the CPU, for quantized
    /// blocks) the buffer reads the bytes where they lie: a memory-mapped model file is not
    /// copied, the buffer keeps the owner alive and copies the bytes only if it is written
    /// to. Otherwise this is [`Device::alloc`] then [`Device::write`].
    fn import(&self, dtype: DType, len: usize, bytes: SharedBytes) -> Result<Buffer>;
    /// Whether [`Device::import`] keeps bytes of `dtype` in place (no copy).
    fn imports_in_place(&self, dtype: DType) -> bool;
    /// Copies `data` (raw bytes of the buffer's dtype) into `buf` at element `offset`.
    fn write(&self, buf: &Buffer, offset: usize, data: &[u8]) -> Result<()>;
    /// Copies elements of `buf` from element `offset` into `out` (raw bytes); blocks until the
    /// data is on the host.
    fn read(&self, buf: &Buffer, offset: usize, out: &mut [u8]) -> Result<()>;
    /// Copies `len` elements from `src[src_off..]` to `dst[dst_off..]` (same dtype).
    fn copy(
        &self,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()>;
    /// Sets `len` elements of the f32 buffer `buf` from `offset` to `value`.
    fn fill_f32(&self, buf: &Buffer, offset: usize, len: usize, value: f32) -> Result<()>;
    /// Blocks until every issued operation (compute and copies) has finished.
    fn synchronize(&self) -> Result<()>;

    /// Allocates `bytes` of host memory usable by asynchronous page copies.
    fn alloc_host(&self, bytes: usize) -> Result<HostBuffer>;
    /// Writes `data` into host memory at byte `offset` (used by the disk spill tier).
    fn host_write(&self, host: &HostBuffer, offset: usize, data: &[u8]) -> Result<()>;
    /// Reads host memory at byte `offset` into `out` (used by the disk spill tier).
    fn host_read(&self, host: &HostBuffer, offset: usize, out: &mut [u8]) -> Result<()>;

    /// Starts copying whole slots of `pool` to host memory: slot `slot` goes to byte offset
    /// `host_offset` of `host`, `layout.slot_bytes()` bytes each.
    fn backup_pages(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        copies: &[(u32, u64)],
        host: &HostBuffer,
    ) -> Result<Event>;
    /// Starts copying host memory back into slots: byte offset `host_offset` of `host` goes to
    /// slot `slot`, for each `(slot, host_offset)`.
    fn recall_pages(
        &self,
        layout: &KvLayout,
        host: &HostBuffer,
        copies: &[(u32, u64)],
        pool: &Buffer,
    ) -> Result<Event>;
    /// Makes later compute operations wait for `event` without blocking the host.
    fn wait_on_device(&self, event: &Event) -> Result<()>;
    /// Blocks the host until `event` completed.
    fn wait_host(&self, event: &Event) -> Result<()> {
        event.0.wait()
    }

    /// Writes new keys and values (f32 `[tokens, Hkv, d]`) into the pool, rounding to the
    /// pool's storage type.
    fn append_kv(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        k: &Buffer,
        v: &Buffer,
        dests: &[AppendDest],
    ) -> Result<()>;
    /// Writes the digest of each job's page (keys as stored, i.e. after rounding).
    fn summarize(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        pool: &Buffer,
        jobs: &[SummarizeJob],
        digests: &Buffer,
    ) -> Result<()>;
    /// Writes one score per job into `scores[0..jobs.len()]`.
    fn estimate(
        &self,
        layout: &KvLayout,
        kind: DigestKind,
        agg: ScoreAgg,
        digests: &Buffer,
        q: &Buffer,
        jobs: &[EstimateJob],
        scores: &Buffer,
    ) -> Result<()>;
    /// For each segment, writes the indices (relative to the segment start) of its `k` largest
    /// scores into `out` (u32), segments back to back, best first; ties go to the lower index.
    /// NaN scores rank below every number.
    fn topk(&self, scores: &Buffer, segments: &[TopkSegment], out: &Buffer) -> Result<()>;
    /// Exact softmax attention of each row over its pages (one shot), written to `out`
    /// (only the row's group's query heads are written).
    ///
    /// With `page_lse` (f32, at least `pages.len() * hg * gqa` values) the same pass over the
    /// keys also writes, for each row, each page entry `i` of its range and each query head
    /// `j` of its group (`0 <= j < hg * gqa`), the page's **log-sum-exp**
    /// `page_lse[i * hg * gqa + j] = ln Σ exp(scale · q·k_t)` over the page's participating
    /// tokens `t` (`-inf` when none takes part); see [`crate::reference::page_lse`]. The
    /// softmax mass of page `i` for head `j` is `exp(page_lse[i, j] - logsumexp over the row's
    /// pages)` ([`crate::mass::page_mass`]), which the attention-feedback rules of the
    /// `arkvale` policy use. The rows' page ranges must not overlap when `page_lse` is given
    /// (each entry has one writer); entries outside every row's range are left as they were.
    #[allow(clippy::too_many_arguments)]
    fn decode_attention(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        out: &Buffer,
        page_lse: Option<&Buffer>,
    ) -> Result<()>;
    /// Folds the rows' attention over the given pages into `state` (online softmax), so that
    /// a long prefix can be streamed through in several calls. Reset the state with
    /// [`Device::fill_f32`] (`max = -inf`, `acc = sum = 0`) before the first call.
    #[allow(clippy::too_many_arguments)]
    fn prefill_attention(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        state: &AttnState,
    ) -> Result<()>;
    /// Writes `acc / sum` of each row's group heads into `out` (zeros where `sum == 0`).
    fn attention_finalize(
        &self,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()>;
    /// Adds each row's softmax weights, summed over the group's query heads, to the token
    /// weights `weights[page index in `pages`][hg][p]` (f32). Used by H2O and TOVA only.
    #[allow(clippy::too_many_arguments)]
    fn attention_weights(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        weights: &Buffer,
    ) -> Result<()>;

    /// Whether [`Device::matmul`] and [`Device::embedding`] take weights of `dtype`. Every
    /// backend takes f32, f16 and bf16 (the default); a backend with kernels for block-quantized
    /// weights ([`DType::Quant`]) says so here, and model loaders keep a file's quantized
    /// tensors as stored only where it does. A backend that says `false` for a type fails to
    /// allocate buffers of it with [`crate::Error::UnsupportedWeight`].
    fn supports_weight_dtype(&self, dtype: DType) -> bool {
        dtype.is_float()
    }

    /// `out[m, n] = x[m, k] · Wᵀ` with `x` f32 `[m, k]`, `w` `[n, k]` row-major in f32, f16 or
    /// bf16 (or a block-quantized type where [`Device::supports_weight_dtype`] says so: rows
    /// are whole blocks, `k` a multiple of the block length), `out` f32 `[m, n]`; f32
    /// accumulation (half weights are widened exactly). Quantized weights may be multiplied by
    /// activations quantized to 8 bits per 32 values ([`crate::quant::q8`]), so the result may
    /// differ from the dequantized product by the activation rounding stated there.
    fn matmul(&self, dims: &MatmulDims, x: &Buffer, w: &Buffer, out: &Buffer) -> Result<()>;
    /// RMSNorm of each of `rows` rows of `dim` values of `x` (f32) scaled by `weight` (f32
    /// `[dim]`): `out = x / sqrt(mean(x²) + eps) * weight`, into f32 `out [rows, dim]`.
    /// `eps` must be finite and `>= 0`; `dim` must be non-zero when `rows > 0`.
    fn rmsnorm(
        &self,
        rows: usize,
        dim: usize,
        eps: f32,
        x: &Buffer,
        weight: &Buffer,
        out: &Buffer,
    ) -> Result<()>;
    /// Rotates `x` (f32 `[positions.len(), rope.heads, rope.head_dim]`) **in place**, token
    /// `t` by position `positions[t]`, as [`Rope`] defines it.
    fn rope(&self, rope: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()>;
    /// `out[i] = silu(gate[i]) * up[i]` for `i < len` (f32; `silu(g) = g / (1 + e^-g)`).
    fn silu_mul(&self, len: usize, gate: &Buffer, up: &Buffer, out: &Buffer) -> Result<()>;
    /// The residual add, **in place**: `x[i] += y[i]` for `i < len` (f32; `x` and `y` must
    /// be different buffers).
    fn add(&self, len: usize, x: &Buffer, y: &Buffer) -> Result<()>;
    /// A bias added to every row, **in place**: `x[r, c] += bias[c]` for `r < rows`,
    /// `c < cols` (f32; `x` `[rows, cols]` and `bias` `[cols]` must be different buffers).
    /// Used for the q/k/v projection biases of Qwen2. `cols` must be non-zero when `rows > 0`.
    fn add_bias(&self, rows: usize, cols: usize, x: &Buffer, bias: &Buffer) -> Result<()>;
    /// Gathers rows of `table` (`[vocab, dim]`, f32, f16 or bf16 — or quantized, where
    /// supported, with `dim` a multiple of the block length; `vocab = table.len() / dim`)
    /// into f32 `out [ids.len(), dim]`: `out[t] = table[ids[t]]`. An id `>= vocab` is an error.
    fn embedding(&self, dim: usize, table: &Buffer, ids: &[u32], out: &Buffer) -> Result<()>;
    /// For each of `rows` rows of `cols` f32 `logits`, writes the column of its largest value
    /// into `out[row]` (u32): ties go to the lower index, NaN ranks below every number, a row
    /// of NaN only gives 0. `cols` must be non-zero.
    fn argmax(&self, rows: usize, cols: usize, logits: &Buffer, out: &Buffer) -> Result<()>;
}

/// Helpers every backend gets for free.
pub trait DeviceExt: Device {
    /// Allocates a buffer holding `values` converted to `dtype` (a float type).
    fn upload_f32(&self, values: &[f32], dtype: DType) -> Result<Buffer> {
        let bytes = crate::dtype::encode_f32(values, dtype)
            .ok_or_else(|| crate::Error::shape(format!("upload_f32 into {dtype:?}")))?;
        let buf = self.alloc(dtype, values.len())?;
        self.write(&buf, 0, &bytes)?;
        Ok(buf)
    }
    /// Reads a whole float buffer as f32.
    fn download_f32(&self, buf: &Buffer) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; buf.bytes()];
        self.read(buf, 0, &mut bytes)?;
        crate::dtype::decode_f32(&bytes, buf.dtype())
            .ok_or_else(|| crate::Error::shape(format!("download_f32 of {:?}", buf.dtype())))
    }
    /// Reads `len` f32 values of an f32 buffer from element `offset`.
    fn download_f32_range(&self, buf: &Buffer, offset: usize, len: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; len];
        self.read(buf, offset, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }
    /// Reads `len` u32 values from `offset`.
    fn download_u32(&self, buf: &Buffer, offset: usize, len: usize) -> Result<Vec<u32>> {
        let mut out = vec![0u32; len];
        self.read(buf, offset, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }
    /// Allocates and resets an attention state for `rows` query rows of `q_heads` heads.
    fn alloc_attn_state(&self, rows: usize, q_heads: usize, head_dim: usize) -> Result<AttnState> {
        let state = AttnState {
            acc: self.alloc(DType::F32, rows * q_heads * head_dim)?,
            max: self.alloc(DType::F32, rows * q_heads)?,
            sum: self.alloc(DType::F32, rows * q_heads)?,
        };
        self.fill_f32(&state.max, 0, state.max.len(), f32::NEG_INFINITY)?;
        Ok(state)
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}
