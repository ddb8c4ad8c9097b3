//! # arkvale-cpu
//!
//! [`CpuDevice`]: the multithreaded CPU implementation of [`arkvale_core::Device`], and the
//! oracle the other backends are compared with. It owns the arithmetic and the copies of the
//! KV ops on the CPU: typed buffers in a "device" arena and a separate host arena, a
//! persistent rayon pool for compute (append, digests, estimate, top-k, paged attention with
//! flash-decoding splits and tiled online-softmax prefill), and a copy thread that runs page
//! backups and recalls asynchronously behind events, plus the dense model ops (matmul via the
//! `gemm` crate, RMSNorm, RoPE, SiLU-gating, add, embedding, argmax). Arithmetic is f32; KV
//! storage is f32, f16 or bf16 (via `half`); weights and embedding tables are those or
//! ggml's block-quantized types ([`arkvale_core::QuantType`]), kept as stored.
//!
//! It must not decide anything: which pages are resident, recalled, evicted or attended is the
//! cache manager's business in `arkvale-core`. Every op agrees with the scalar reference in
//! [`arkvale_core::reference`] within f32 rounding (digests, scores and top-k bit for bit), and
//! a bad handle or descriptor is an error, never a panic.
//!
//! Modules, one job each: `buffer` (storage and arenas), `elem` (storage types, small f32
//! kernels), `scatter` (disjoint parallel writes), `par` (pool or inline), `append`,
//! `digest_ops` (summarize, estimate, top-k), `attention` (work decomposition and online
//! softmax), `attn_tile` (its score and weighted-value tile products), `matmul` (the
//! `gemm`-based dense matmul with f16/bf16 weights widened per tile), `quant` (matmul and
//! embedding with block-quantized weights kept as stored: AVX2 integer dots for decode,
//! dequantized tiles for prefill), `dense` (RMSNorm, RoPE, SiLU-gating, add, embedding, argmax
//! kernels) and `dense_ops` (their checks and dispatch), `event` and `copy_worker` (the
//! asynchronous copy queue), `dispatch` (from typed storage to generic kernels) and `device`
//! (the [`Device`](arkvale_core::Device) implementation).

#![warn(missing_docs)]

mod append;
mod attention;
mod attn_tile;
mod buffer;
mod copy_worker;
mod dense;
mod dense_ops;
mod device;
mod digest_ops;
mod dispatch;
mod elem;
mod event;
mod gemm_tile;
mod huge_pages;
mod matmul;
mod par;
mod quant;
mod scatter;

#[cfg(test)]
mod dense_tests;
#[cfg(test)]
mod tests;

pub use device::CpuDevice;
pub use event::CpuEvent;

/// The backend name used in errors and by [`arkvale_core::Device::name`].
pub(crate) const BACKEND: &str = "cpu";

/// The README's library snippet, compiled and run as a doc test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
