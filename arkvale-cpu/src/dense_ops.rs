//! The dense model ops of [`CpuDevice`]: handle and size checks, locking, and dispatch to the
//! kernels in `matmul` and `dense`. The [`Device`](arkvale_core::Device) implementation in
//! `device` forwards to these methods.
//!
//! Every size product is checked for overflow, every buffer for its dtype and length, and an
//! output for not being an input, before any work starts.

use std::sync::Arc;

use arkvale_core::{Buffer, DType, Error, MatmulDims, Result, Rope};

use crate::buffer::{Data, Storage};
use crate::dense;
use crate::device::CpuDevice;
use crate::dispatch::{f32s, f32s_mut};
use crate::matmul::{self, Weights};
use crate::quant;

use arkvale_core::validate::{self, at_least, product};

/// The storage of a weight buffer (f32, f16, bf16 or quantized) made by this device; for a
/// quantized one, rows of `row_len` values must be whole blocks.
fn weight_table<'a>(
    dev: &CpuDevice,
    buf: &'a Buffer,
    row_len: usize,
    what: &str,
) -> Result<&'a Arc<Storage>> {
    let s = dev.storage(buf, what)?;
    let dtype = buf.dtype();
    if !dtype.is_weight() {
        return Err(Error::shape(format!(
            "{what}: expected an f32, f16, bf16 or quantized buffer, got {dtype}"
        )));
    }
    if row_len % dtype.block_len() != 0 {
        return Err(Error::shape(format!(
            "{what}: rows of {row_len} values are not whole {dtype} blocks of {}",
            dtype.block_len()
        )));
    }
    Ok(s)
}

/// A weight table's typed elements.
fn weights(data: &Data, dtype: DType) -> Result<Weights<'_>> {
    match (data, dtype) {
        (Data::F32(v), _) => Ok(Weights::F32(v)),
        (Data::F16(v), _) => Ok(Weights::F16(v)),
        (Data::BF16(v), _) => Ok(Weights::BF16(v)),
        (Data::Blocks(v), DType::Quant(q)) => Ok(Weights::Quant(q, v)),
        _ => Err(Error::shape(format!(
            "expected f32, f16, bf16 or quantized storage, got {dtype}"
        ))),
    }
}

impl CpuDevice {
    /// See [`arkvale_core::Device::matmul`].
    pub(crate) fn dense_matmul(
        &self,
        dims: &MatmulDims,
        x: &Buffer,
        w: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let MatmulDims { m, n, k } = *dims;
        let x_s = self.typed(x, DType::F32, "matmul: x")?;
        let w_s = weight_table(self, w, k, "matmul: weights")?;
        let o_s = self.typed(out, DType::F32, "matmul: out")?;
        validate::not_aliased(out, &[x, w], "matmul")?;
        at_least(x, product(m, k, "matmul: x")?, "matmul: x [m, k]")?;
        at_least(
            w,
            product(n, k, "matmul: weights")?,
            "matmul: weights [n, k]",
        )?;
        at_least(out, product(m, n, "matmul: out")?, "matmul: out [m, n]")?;
        let (xg, wg) = (x_s.data.read_recursive(), w_s.data.read_recursive());
        let mut og = o_s.data.write();
        let (xv, ov) = (f32s(&xg)?, f32s_mut(&mut og)?);
        let weights = weights(&wg, w.dtype())?;
        let work = m.saturating_mul(n).saturating_mul(k);
        self.run(work, |par| matmul::matmul(par, m, n, k, xv, weights, ov));
        Ok(())
    }

    /// See [`arkvale_core::Device::rmsnorm`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense_rmsnorm(
        &self,
        rows: usize,
        dim: usize,
        eps: f32,
        x: &Buffer,
        weight: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let x_s = self.typed(x, DType::F32, "rmsnorm: x")?;
        let w_s = self.typed(weight, DType::F32, "rmsnorm: weight")?;
        let o_s = self.typed(out, DType::F32, "rmsnorm: out")?;
        validate::not_aliased(out, &[x, weight], "rmsnorm")?;
        let len = validate::rmsnorm(rows, dim, eps, x, weight, out)?;
        if len == 0 {
            return Ok(());
        }
        let (xg, wg) = (x_s.data.read_recursive(), w_s.data.read_recursive());
        let mut og = o_s.data.write();
        let (xv, wv, ov) = (f32s(&xg)?, f32s(&wg)?, f32s_mut(&mut og)?);
        self.run(len * 4, |par| {
            dense::rmsnorm(par, dim, eps, &xv[..len], &wv[..dim], &mut ov[..len])
        });
        Ok(())
    }

    /// See [`arkvale_core::Device::rope`].
    pub(crate) fn dense_rope(&self, r: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()> {
        let x_s = self.typed(x, DType::F32, "rope: x")?;
        let len = validate::rope(r, positions.len(), x)?;
        if len == 0 {
            return Ok(());
        }
        let mut xg = x_s.data.write();
        let xv = &mut f32s_mut(&mut xg)?[..len];
        self.run(len * 4, |par| dense::rope(par, r, positions, xv));
        Ok(())
    }

    /// See [`arkvale_core::Device::silu_mul`].
    pub(crate) fn dense_silu_mul(
        &self,
        len: usize,
        gate: &Buffer,
        up: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let g_s = self.typed(gate, DType::F32, "silu_mul: gate")?;
        let u_s = self.typed(up, DType::F32, "silu_mul: up")?;
        let o_s = self.typed(out, DType::F32, "silu_mul: out")?;
        validate::not_aliased(out, &[gate, up], "silu_mul")?;
        at_least(gate, len, "silu_mul: gate")?;
        at_least(up, len, "silu_mul: up")?;
        at_least(out, len, "silu_mul: out")?;
        let (gg, ug) = (g_s.data.read_recursive(), u_s.data.read_recursive());
        let mut og = o_s.data.write();
        let (gv, uv, ov) = (f32s(&gg)?, f32s(&ug)?, f32s_mut(&mut og)?);
        self.run(len * 8, |par| {
            dense::silu_mul(par, &gv[..len], &uv[..len], &mut ov[..len])
        });
        Ok(())
    }

    /// See [`arkvale_core::Device::add`].
    pub(crate) fn dense_add(&self, len: usize, x: &Buffer, y: &Buffer) -> Result<()> {
        let x_s = self.typed(x, DType::F32, "add: x")?;
        let y_s = self.typed(y, DType::F32, "add: y")?;
        if Arc::ptr_eq(x_s, y_s) {
            return Err(Error::shape("add: x and y must be different buffers"));
        }
        at_least(x, len, "add: x")?;
        at_least(y, len, "add: y")?;
        let yg = y_s.data.read_recursive();
        let mut xg = x_s.data.write();
        let (yv, xv) = (f32s(&yg)?, f32s_mut(&mut xg)?);
        self.run(len, |par| dense::add(par, &mut xv[..len], &yv[..len]));
        Ok(())
    }

    /// See [`arkvale_core::Device::add_bias`].
    pub(crate) fn dense_add_bias(
        &self,
        rows: usize,
        cols: usize,
        x: &Buffer,
        bias: &Buffer,
    ) -> Result<()> {
        let x_s = self.typed(x, DType::F32, "add_bias: x")?;
        let b_s = self.typed(bias, DType::F32, "add_bias: bias")?;
        if Arc::ptr_eq(x_s, b_s) {
            return Err(Error::shape(
                "add_bias: x and bias must be different buffers",
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        if cols == 0 {
            return Err(Error::shape("add_bias: cols must be non-zero"));
        }
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::shape("add_bias: rows * cols overflows"))?;
        at_least(x, len, "add_bias: x")?;
        at_least(bias, cols, "add_bias: bias")?;
        let bg = b_s.data.read_recursive();
        let mut xg = x_s.data.write();
        let (bv, xv) = (f32s(&bg)?, f32s_mut(&mut xg)?);
        self.run(len, |par| dense::add_bias(par, &mut xv[..len], &bv[..cols]));
        Ok(())
    }

    /// See [`arkvale_core::Device::embedding`].
    pub(crate) fn dense_embedding(
        &self,
        dim: usize,
        table: &Buffer,
        ids: &[u32],
        out: &Buffer,
    ) -> Result<()> {
        if dim == 0 {
            return Err(Error::shape("embedding: rows of 0 values"));
        }
        let t_s = weight_table(self, table, dim, "embedding: table")?;
        let o_s = self.typed(out, DType::F32, "embedding: out")?;
        validate::not_aliased(out, &[table], "embedding")?;
        let vocab = table.len() / dim;
        if let Some((t, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= vocab)
        {
            return Err(Error::shape(format!(
                "embedding: token id {id} (position {t}) outside a vocabulary of {vocab}"
            )));
        }
        let len = product(ids.len(), dim, "embedding")?;
        at_least(out, len, "embedding: out [ids, dim]")?;
        let tg = t_s.data.read_recursive();
        let mut og = o_s.data.write();
        let ov = &mut f32s_mut(&mut og)?[..len];
        let table = weights(&tg, table.dtype())?;
        self.run(len, |par| match table {
            Weights::Quant(q, t) => {
                quant::embedding(par, quant::Kernel::detect(), dim, q, t, ids, ov)
            }
            Weights::F32(t) => dense::embedding(par, dim, t, ids, ov),
            Weights::F16(t) => dense::embedding(par, dim, t, ids, ov),
            Weights::BF16(t) => dense::embedding(par, dim, t, ids, ov),
        });
        Ok(())
    }

    /// See [`arkvale_core::Device::argmax`].
    pub(crate) fn dense_argmax(
        &self,
        rows: usize,
        cols: usize,
        logits: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let l_s = self.typed(logits, DType::F32, "argmax: logits")?;
        let o_s = self.typed(out, DType::U32, "argmax: out")?;
        if cols == 0 {
            return Err(Error::shape("argmax: rows of 0 columns have no maximum"));
        }
        let len = product(rows, cols, "argmax")?;
        at_least(logits, len, "argmax: logits [rows, cols]")?;
        at_least(out, rows, "argmax: out [rows]")?;
        let lg = l_s.data.read_recursive();
        let mut og = o_s.data.write();
        let Data::U32(ov) = &mut *og else {
            return Err(Error::shape("argmax: out must be u32"));
        };
        let lv = f32s(&lg)?;
        self.run(len, |par| {
            dense::argmax(par, cols, &lv[..len], &mut ov[..rows])
        });
        Ok(())
    }
}
