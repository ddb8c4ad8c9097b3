//! Kernel dispatch: from a locked buffer's [`Data`] to a kernel generic over the KV storage
//! type, and the small argument bundles the ops hand to their kernels.

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, DigestKind, Error, KvLayout, Result, SummarizeJob,
};
use half::{bf16, f16};
use parking_lot::RwLockReadGuard;

use crate::attention::{self, Problem, StateMut};
use crate::buffer::Data;
use crate::elem::KvElem;
use crate::par::Par;
use crate::{append, digest_ops};

/// The f32 elements of a storage already checked to be f32.
pub(crate) fn f32s(d: &Data) -> Result<&[f32]> {
    match d {
        Data::F32(v) => Ok(v),
        _ => Err(Error::shape("expected f32 storage")),
    }
}

/// The mutable f32 elements of a storage already checked to be f32.
pub(crate) fn f32s_mut(d: &mut Data) -> Result<&mut [f32]> {
    match d {
        Data::F32(v) => Ok(v),
        _ => Err(Error::shape("expected f32 storage")),
    }
}

/// A kernel generic over the pool's element type.
pub(crate) trait PoolKernel {
    type Out;
    fn run<T: KvElem>(self, par: Par, pool: &[T]) -> Self::Out;
}

/// Runs `k` over the pool's typed elements.
pub(crate) fn with_pool<K: PoolKernel>(par: Par, data: &Data, k: K) -> Result<K::Out> {
    match data {
        Data::F32(v) => Ok(k.run::<f32>(par, v)),
        Data::F16(v) => Ok(k.run::<f16>(par, v)),
        Data::BF16(v) => Ok(k.run::<bf16>(par, v)),
        _ => Err(Error::shape("the KV pool must be f32, f16 or bf16")),
    }
}

/// Which attention kernel to run over a [`Problem`].
pub(crate) enum AttnOp<'a> {
    Decode(&'a mut [f32], Option<&'a mut [f32]>),
    Prefill(StateMut<'a>),
    Weights(&'a mut [f32]),
}

/// The attention kernels as a [`PoolKernel`].
pub(crate) struct AttnKernel<'a> {
    pub(crate) l: &'a KvLayout,
    pub(crate) q: &'a [f32],
    pub(crate) rows: &'a [AttnRow],
    pub(crate) pages: &'a [AttnPage],
    pub(crate) mask: Option<&'a [u8]>,
    pub(crate) scale: f32,
    pub(crate) op: AttnOp<'a>,
}

impl PoolKernel for AttnKernel<'_> {
    type Out = ();
    fn run<T: KvElem>(self, par: Par, pool: &[T]) {
        let pb = Problem {
            par,
            l: self.l,
            pool,
            q: self.q,
            rows: self.rows,
            pages: self.pages,
            mask: self.mask,
            scale: self.scale,
        };
        match self.op {
            AttnOp::Decode(out, lse) => attention::decode(&pb, out, lse),
            AttnOp::Prefill(state) => attention::prefill(&pb, state),
            AttnOp::Weights(w) => attention::weights(&pb, w),
        }
    }
}

/// `append_kv` as a pool kernel (needs the pool mutably).
pub(crate) struct AppendKernel<'a> {
    pub(crate) l: &'a KvLayout,
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) dests: &'a [AppendDest],
}

impl AppendKernel<'_> {
    /// Runs the append over the pool's typed elements.
    pub(crate) fn run_mut(self, par: Par, data: &mut Data) -> Result<()> {
        match data {
            Data::F32(p) => append::append_kv(par, self.l, p, self.k, self.v, self.dests),
            Data::F16(p) => append::append_kv(par, self.l, p, self.k, self.v, self.dests),
            Data::BF16(p) => append::append_kv(par, self.l, p, self.k, self.v, self.dests),
            _ => return Err(Error::shape("the KV pool must be f32, f16 or bf16")),
        }
        Ok(())
    }
}

/// `summarize` as a pool kernel.
pub(crate) struct SummarizeKernel<'a> {
    pub(crate) l: &'a KvLayout,
    pub(crate) kind: DigestKind,
    pub(crate) jobs: &'a [SummarizeJob],
    pub(crate) digests: &'a mut [f32],
}

impl PoolKernel for SummarizeKernel<'_> {
    type Out = ();
    fn run<T: KvElem>(self, par: Par, pool: &[T]) {
        digest_ops::summarize(par, self.l, self.kind, pool, self.jobs, self.digests)
    }
}

/// The locked inputs of an attention op.
pub(crate) struct AttnInputs<'a> {
    pub(crate) pool: RwLockReadGuard<'a, Data>,
    pub(crate) q: RwLockReadGuard<'a, Data>,
    pub(crate) mask: Option<RwLockReadGuard<'a, Data>>,
}

impl AttnInputs<'_> {
    /// The keep-mask bytes, if a mask was given.
    pub(crate) fn mask(&self) -> Result<Option<&[u8]>> {
        match self.mask.as_deref() {
            Some(Data::U8(m)) => Ok(Some(m)),
            Some(_) => Err(Error::shape("the keep-mask must be u8")),
            None => Ok(None),
        }
    }
}
