//! # arkvale-wgpu
//!
//! [`WgpuDevice`]: the portable GPU implementation of [`arkvale_core::Device`] on `wgpu`, with
//! WGSL compute shaders (one `.wgsl` file per job in `src/shaders/`). It runs on any Vulkan,
//! Metal or DX12 adapter, and in CI on Mesa lavapipe (software Vulkan). It owns the arithmetic
//! and the copies of the KV ops (append, digests, estimate, top-k, paged decode and prefill
//! attention, token weights, asynchronous page backup/recall through mapped staging buffers)
//! and the dense model ops (a tiled workgroup-memory GEMM and a GEMV for matmul, RMSNorm,
//! RoPE, SiLU-gating, add, bias add, embedding, argmax). Arithmetic is f32; KV pools, weights
//! and embedding tables may be f32, f16 or bf16 (unpacked from 32-bit words in the shaders).
//!
//! Like every backend it decides nothing: residency, recall and eviction are the cache
//! manager's business in `arkvale-core`. Every op agrees with the scalar reference in
//! [`arkvale_core::reference`] (the differential suite in `arkvale-tests` checks it), and a bad
//! handle or descriptor is an error, never a panic.
//!
//! Layers, as in the other backends: kernels (`shaders/*.wgsl`) → a thin launch layer that
//! checks every binding against the adapter's limits and captures wgpu validation errors
//! (`context`, `kernels`, `limits`) → the [`Backend`](arkvale_core::Backend) implementation
//! (`device`, `kv`, `dense`, with `buffer`, `event`), under core's checked
//! [`Device`](arkvale_core::Device) layer, which validates every call's input before it gets
//! here. Nothing outside this crate sees a wgpu type.
//!
//! ## How it is checked
//!
//! The differential suite (`cargo run -p arkvale-tests --bin arkvale-suite -- --backend wgpu`)
//! holds this backend to the same tolerances as every other, `|device - reference| <= tol *
//! (scale + |reference|)`: **exact** for `append_kv` (f16/bf16 rounding is round-to-nearest-even
//! in integer bit operations, bit for bit `half`'s), `topk`, page copies, buffer ops, `add`,
//! `add_bias`, `embedding` and `argmax`; `1e-5` for digests, scores, RMSNorm, RoPE, SiLU-gating,
//! f32-weight matmul (scale: `sum |x| |w|`) and attention over f32 KV; `1e-2` for attention over
//! f16/bf16 KV and half-weight matmul (this backend computes those in f32 too, so it is far
//! inside). The crate's own tests cover what the suite cannot see: rounding corner cases, buffers
//! split into segments, matmul split under a small binding limit. `tests/tests/wgpu_smollm2.rs`
//! in `arkvale-tests` checks that SmolLM2 greedy generation gives the CPU backend's tokens.
//!
//! ## Performance
//!
//! Written to be right first and portable second. Kernels avoid barriers where they can (on CPU
//! implementations such as lavapipe a barrier is a coroutine switch); the GEMV used for decode
//! has no workgroup memory at all. `examples/bandwidth.rs` measures paged decode attention's
//! achieved bandwidth against a buffer copy in the same run. Decode attention gives each
//! (row, query head) one workgroup and does not yet split long contexts over workgroups
//! (flash-decoding) nor share K/V reads between the query heads of a GQA group.

#![warn(missing_docs)]

mod buffer;
mod context;
mod dense;
mod device;
mod event;
mod kernels;
mod kv;
mod limits;

#[cfg(test)]
mod tests;

pub use context::AdapterReport;
pub use device::WgpuDevice;
pub use event::WgpuEvent;

/// The backend name used in errors and by [`arkvale_core::Device::name`].
pub(crate) const BACKEND: &str = "wgpu";
