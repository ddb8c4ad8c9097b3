//! # arkvale-model
//!
//! Real models on the ArkVale cache: everything between a model file and generated text. The
//! Llama-family architectures (Llama 2/3, Mistral, Qwen2, SmolLM2) loaded from GGUF and
//! safetensors, the tokenizer and chat templates, sampling, stop strings, generation and the
//! continuous-batching engine. It drives a `Device` through arkvale-core's cache manager and
//! must not decide eviction itself (policies live in core) nor contain kernels (arithmetic lives
//! in the backends). The experiments built on it are the arkvale-eval crate and the `arkvale`
//! command line is arkvale-cli; this crate depends on neither, nor on any command-line, HTTP or
//! plotting library.
//!
//! The [`gguf`] reader parses GGUF v2/v3 with typed metadata access, memory-mapped tensor data
//! and dequantization to `f32` of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and
//! Q6_K tensors; malformed files are errors, never panics; [`hf`] reads Hugging Face model
//! directories. The [`tokenizer`] turns text into token ids and back as llama.cpp does, for the
//! byte-level BPE vocabularies of GGUF files (SmolLM2, Llama 3, Qwen2, GPT-2 style). The
//! [`llama`] module runs Llama-family decoders from GGUF (SmolLM2, Llama 2/3 files of
//! architecture `llama`): chunked prefill and batched decode with every attention going through
//! the `CacheManager`, f32 logits out. The [`chat`] module renders the chat templates stored
//! in model files (Jinja, with `minijinja`) into prompt text. [`loaded`] opens either kind of
//! model path (GGUF file or Hugging Face directory) into a [`loaded::LoadedModel`] with one
//! [`text::TextTokenizer`]; [`sampling`] draws next tokens (greedy, temperature, top-k,
//! top-p, seeded) and [`stop`] ends generation at stop strings. [`generation`] is the one
//! generation step machine (chunked prefill, token choice on the device for greedy decoding,
//! stop conditions) that the `arkvale` CLI and the batching [`engine`] both drive.

#![warn(missing_docs)]

pub mod chat;
pub mod engine;
pub mod generation;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod loaded;
pub mod memory;
pub mod sampling;
pub mod stop;
pub mod text;
pub mod tokenizer;
