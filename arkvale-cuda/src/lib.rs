//! # arkvale-cuda
//!
//! [`CudaDevice`]: the NVIDIA implementation of [`arkvale_core::Device`] on
//! [`cudarc`](https://docs.rs/cudarc) 0.19 — the backend the project exists for (the paper's
//! speedups come from GPU memory bandwidth). It owns the CUDA side of the KV ops and the dense
//! model ops: kernels written in CUDA C (`kernels/*.cu`, one job per file) and compiled at run
//! time with NVRTC for the device's own architecture (once per process), cuBLAS SGEMM for
//! large matmuls, pinned host memory and two copy streams for asynchronous page backups and
//! recalls. Like every backend it decides nothing: which pages are resident, recalled or
//! attended is the cache manager's business in `arkvale-core`.
//!
//! **Verification status: built, and every kernel compiled through NVRTC (sm_80 and sm_90,
//! down to machine code) on machines without a GPU; not yet run on a GPU.** The
//! differential suite, the end-to-end generation test and the benchmarks run on a GPU through
//! `cargo xtask device-check`; until that has happened, treat every numeric claim below as
//! the design, not a measurement.
//!
//! ## Building and loading
//!
//! cudarc is built with `dynamic-loading`: no CUDA toolkit is needed to build, and `libcuda`,
//! `libnvrtc` (13.x) and `libcublas` are loaded when a device is opened. Without a driver
//! (or without a device, or without NVRTC) [`CudaDevice::new`] returns an
//! [`arkvale_core::Error::Device`] saying what is missing — [`probe`] checks
//! `libcuda` before any driver call, because cudarc panics when a library is absent. Without
//! libcublas, every matmul uses the backend's own weight-streaming kernel.
//!
//! ## How the `Device` contract maps to CUDA
//!
//! * **Stream order.** Every compute op (and `write`, `copy`, `fill_f32`) is issued on one
//!   non-blocking *compute stream*, so later ops observe earlier ones. Descriptor arrays
//!   (append destinations, jobs, rows, pages, positions, ids) are uploaded into one reusable
//!   device buffer on that same stream just before the launch that reads them.
//! * **Asynchronous page copies.** [`Device::backup_pages`](arkvale_core::Device::backup_pages)
//!   runs on a device-to-host stream and
//!   [`Device::recall_pages`](arkvale_core::Device::recall_pages) on a host-to-device stream;
//!   each first waits (on the device) for an event recorded on the compute stream, so a copy
//!   observes every compute op issued before it, and returns a [`CudaEvent`] recorded after its
//!   copies. Adjacent slots with adjacent host offsets are merged into one copy. Host memory is
//!   pinned with `cuMemHostAlloc(flags = 0)` (cached, not write-combined: backups are read
//!   back by the host and by the disk spill tier).
//!   [`Device::wait_on_device`](arkvale_core::Device::wait_on_device) is `cuStreamWaitEvent` on
//!   the compute stream: no host stall.
//! * **Ownership.** Dropping a buffer (device or pinned) waits for the device to go idle and
//!   then frees it, so no in-flight kernel or copy can touch freed memory. Buffers are
//!   long-lived in the cache manager and the model, so this costs nothing in a decode step.
//! * **Errors.** Every descriptor is checked on the host before a launch, by core's checked
//!   [`Device`](arkvale_core::Device) layer over this crate's
//!   [`Backend`](arkvale_core::Backend) (the same checks and wording for every backend): an
//!   index out of range, a buffer too small, a wrong dtype, an output that is also an input is
//!   [`arkvale_core::Error::Shape`]; a handle of another device or a driver failure is
//!   [`arkvale_core::Error::Device`]. Nothing panics. One limit the CPU backend does not
//!   have: attention needs `head_dim <= 256`.
//!
//! ## Where a decode step synchronizes with the host, and why
//!
//! Inside the backend, only three methods block the calling thread:
//! [`Device::read`](arkvale_core::Device::read) (the host needs the bytes),
//! [`Device::synchronize`](arkvale_core::Device::synchronize) and
//! [`Device::wait_host`](arkvale_core::Device::wait_host). Uploading descriptors does not
//! (the driver stages pageable bytes and returns), launches do not, copies do not. In a
//! decode step of the cache manager the host therefore waits exactly where it needs data:
//! 1. reading the **top-k indices** (one small `read`) after estimate + top-k, because which
//!    pages to recall and which slots they displace is decided on the host, in core (a
//!    backend never decides what to evict); the recalls it issues then run on the recall
//!    stream while the compute stream waits for them on the device only;
//! 2. reading the **sampled token** (argmax) at the end of a model step, because the next
//!    step's embedding lookup takes token ids from the host;
//! 3. `wait_host` on a **backup's event** only when a slot must change hands while its backup
//!    may still be reading it (the manager's rule; rare, since backups start a step earlier).
//!
//! ## Kernels (see each `.cu` file's header for its decomposition)
//!
//! * `append.cu` — new keys/values into pool slots, rounded to f16/bf16/f32 storage.
//! * `summarize.cu` — every digest kind (cuboid/sphere max/center/mean, centroid), in the
//!   reference's exact f32 operation order (no FMA contraction): digests match the CPU bit
//!   for bit.
//! * `estimate.cu` — every page of a batch in one launch, GQA-aware (each query head against
//!   its KV head's digest, mean or max over the group), also in the reference's order.
//! * `topk.cu` — top-k on the device by exact ranks (higher score, NaN last, ties to the lower
//!   index): the same set and order as the reference.
//! * `decode_attention.cu` — paged attention, split-KV (flash-decoding: a row's pages are cut
//!   into splits so one long sequence fills the GPU), batch-aware, GQA-aware (keys and values
//!   loaded once per KV head for up to 8 query heads), f32 accumulation; its partial pass also
//!   serves prefill, whose combine pass folds into the running flash-attention state. Work
//!   items are tiled over (query row, query head) pairs: consecutive rows with the same page
//!   range (a prefill chunk) share each key/value load, up to 8 pairs per item, each pair with
//!   its own causal limit. Tensor cores (`mma`) are not used yet: prefill is CUDA-core f32.
//! * `attention_weights.cu` — softmax weights per token for H2O/TOVA (correct, not fast).
//! * `dense.cu` — fill, RMSNorm, RoPE and SiLU-gating (in f64, as the reference), add, bias
//!   add, embedding gather (f32/f16/bf16 tables), argmax (ties to the lower index, NaN last),
//!   and the widening of half weights for cuBLAS.
//! * `matmul.cu` — `x · Wᵀ` for up to 8 rows (decode) with f32/f16/bf16 weights read once and
//!   widened exactly; more rows go to cuBLAS SGEMM (half weights widened in 64 MiB chunks),
//!   with f32 accumulation throughout (no TF32, no half activations).
//!
//! ## Running it on a GPU
//!
//! `cargo xtask device-check --build` (here, no GPU needed) builds the differential suite
//! (`arkvale-suite`, CUDA only), the end-to-end test (`tests/tests/cuda_generate.rs`: greedy
//! generation of a random-weight model with SmolLM2's shapes, CUDA tokens == CPU tokens) and the
//! benchmarks (`src/bin/bench.rs`: (a) decode attention bandwidth vs a device copy and vs PyTorch
//! SDPA, (b) the LongChat-7B-shaped decode step with its estimate / select / recall / attention /
//! other breakdown vs the full cache, (c) recall vs a pinned memcpy) in release, stripped, and
//! copies them with `device/run.sh` and `device/sdpa.py` into `target/device/`. On the GPU
//! machine, `bash target/device/run.sh` runs all of it in under 5 minutes and writes logs and
//! tables to `$OUT`, summary last. Results belong in `docs/results/cuda.md`.
//!
//! ## Tolerances against the CPU backend (the differential suite's)
//!
//! append, top-k, page copies, add, bias add, embedding, argmax: exact. Digests and scores:
//! bit-identical by construction, checked at 1e-5. Attention: 1e-5 relative for f32 storage,
//! the suite's half tolerance for f16/bf16 storage. Matmul: 1e-5 (f32 weights) and the suite's
//! half tolerance (f16/bf16 weights), though the arithmetic is f32 either way.

#![warn(missing_docs)]

mod attention;
mod buffer;
mod copies;
mod dense;
mod device;
mod driver;
pub mod kernels;
mod kv;
mod launch;
#[cfg(test)]
mod tests;

pub use copies::CudaEvent;
pub use device::CudaDevice;
pub use driver::probe;

/// The backend name used in errors and by [`arkvale_core::Device::name`].
pub(crate) const BACKEND: &str = "cuda";
