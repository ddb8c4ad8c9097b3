//! # arkvale-core
//!
//! The semantics of ArkVale ("Efficient Generative LLM Inference with Recallable Key-Value
//! Eviction", NeurIPS 2024) in one place, with no device code:
//!
//! * [`CacheConfig`] and its validation, [`ModelShape`], [`KvDtype`];
//! * page [`digest`]s (the paper's seven kinds plus the centroid baseline) as scalar reference;
//! * the eviction [`policy`] trait and the built-in policies (`arkvale`, `full`, `streaming`,
//!   `quest`, `h2o`, `tova`);
//! * the bookkeeping: page tables, the device slot pool, the host backup store and its disk
//!   spill tier;
//! * the [`Device`] trait (KV ops and the [`dense`] model ops) that the model and the
//!   [`CacheManager`] drive, implemented once here over the [`Backend`] trait every backend
//!   implements: core checks every call's input ([`validate`]) before backend code runs;
//! * the block-quantized weight formats ([`quant`]): layouts, dequantization and the scalar
//!   quantized dot product;
//! * scalar [`reference`](mod@reference) implementations of every device op, the oracle of the
//!   differential tests.
//!
//! This crate decides *which* pages are resident, recalled, evicted and attended; backends only
//! do arithmetic and copies. It must not grow device-specific code.

#![warn(missing_docs)]

pub mod backend;
pub mod config;
pub mod dense;
pub mod device;
pub mod digest;
pub mod dtype;
pub mod error;
pub mod host_store;
pub mod manager;
pub mod mass;
#[cfg(test)]
mod mock;
pub mod policy;
pub mod pool;
pub mod quant;
pub mod reference;
pub mod shape;
pub mod shared_bytes;
pub mod spill;
pub mod stats;
pub mod validate;

pub use backend::{Backend, Checked, DenseBackend, KvBackend, MemoryBackend};
pub use config::{
    AttentionMode, CacheConfig, DigestKind, PageBudget, PrefillKeep, Preset, ScoreAgg, VictimRule,
    apply_overrides,
};
pub use dense::{MatmulDims, Rope, RopeScaling, RopeStyle, rope_inv_freq};
pub use device::{
    AppendDest, AttnPage, AttnRow, AttnState, Buffer, Device, DeviceEvent, DeviceExt, EstimateJob,
    Event, HostBuffer, KvLayout, SummarizeJob, TopkSegment,
};
pub use dtype::{DType, KvDtype};
pub use error::{Error, Result};
pub use manager::{
    CacheManager, PREFILL_STAGING_SLOTS, PageInfo, PrefillSnapshot, SeqId, SnapshotOptions,
};
pub use policy::{Policy, policy_by_name, policy_from_spec};
pub use quant::QuantType;
pub use shape::ModelShape;
pub use shared_bytes::SharedBytes;
pub use stats::{CacheStats, PhaseTimes};
