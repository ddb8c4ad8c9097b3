//! The dense model ops of [`CpuDevice`], its [`DenseBackend`] implementation: storage lookup,
//! locking, and dispatch to the kernels in `matmul` and `dense`.
//!
//! Core's checked [`Device`](arkvale_core::Device) layer has already checked every size product
//! for overflow, every buffer for its dtype and length, and every output for not being an
//! input; here only the handles' origin is checked.

use arkvale_core::{Buffer, Checked, DType, DenseBackend, Error, MatmulDims, Result, Rope};

use crate::buffer::Data;
use crate::dense;
use crate::device::CpuDevice;
use crate::dispatch::{f32s, f32s_mut};
use crate::matmul::{self, Weights};
use crate::quant;

/// A weight table's typed elements.
fn weights(data: &Data, dtype: DType) -> Result<Weights<'_>> {
    match (data, dtype) {
        (Data::F32(v), _) => Ok(Weights::F32(v)),
        (Data::F16(v), _) => Ok(Weights::F16(v)),
        (Data::BF16(v), _) => Ok(Weights::BF16(v)),
        (Data::Blocks(v), DType::Quant(q)) => Ok(Weights::Quant(q, v)),
        (Data::Mapped(b), DType::Quant(q)) => Ok(Weights::Quant(q, b.as_slice())),
        _ => Err(Error::shape(format!(
            "expected f32, f16, bf16 or quantized storage, got {dtype}"
        ))),
    }
}

impl DenseBackend for CpuDevice {
    fn raw_supports_weight_dtype(&self, dtype: DType) -> bool {
        dtype.is_weight()
    }

    /// See [`arkvale_core::Device::matmul`].
    fn raw_matmul(
        &self,
        _: Checked,
        dims: &MatmulDims,
        x: &Buffer,
        w: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let MatmulDims { m, n, k } = *dims;
        let x_s = self.storage(x, "matmul: x")?;
        let w_s = self.storage(w, "matmul: weights")?;
        let o_s = self.storage(out, "matmul: out")?;
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
    fn raw_rmsnorm(
        &self,
        _: Checked,
        rows: usize,
        dim: usize,
        eps: f32,
        x: &Buffer,
        weight: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let x_s = self.storage(x, "rmsnorm: x")?;
        let w_s = self.storage(weight, "rmsnorm: weight")?;
        let o_s = self.storage(out, "rmsnorm: out")?;
        let len = rows * dim;
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
    fn raw_rope(&self, _: Checked, r: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()> {
        let x_s = self.storage(x, "rope: x")?;
        let len = positions.len() * r.heads * r.head_dim;
        if len == 0 {
            return Ok(());
        }
        let mut xg = x_s.data.write();
        let xv = &mut f32s_mut(&mut xg)?[..len];
        self.run(len * 4, |par| dense::rope(par, r, positions, xv));
        Ok(())
    }

    /// See [`arkvale_core::Device::silu_mul`].
    fn raw_silu_mul(
        &self,
        _: Checked,
        len: usize,
        gate: &Buffer,
        up: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let g_s = self.storage(gate, "silu_mul: gate")?;
        let u_s = self.storage(up, "silu_mul: up")?;
        let o_s = self.storage(out, "silu_mul: out")?;
        let (gg, ug) = (g_s.data.read_recursive(), u_s.data.read_recursive());
        let mut og = o_s.data.write();
        let (gv, uv, ov) = (f32s(&gg)?, f32s(&ug)?, f32s_mut(&mut og)?);
        self.run(len * 8, |par| {
            dense::silu_mul(par, &gv[..len], &uv[..len], &mut ov[..len])
        });
        Ok(())
    }

    /// See [`arkvale_core::Device::add`].
    fn raw_add(&self, _: Checked, len: usize, x: &Buffer, y: &Buffer) -> Result<()> {
        let x_s = self.storage(x, "add: x")?;
        let y_s = self.storage(y, "add: y")?;
        let yg = y_s.data.read_recursive();
        let mut xg = x_s.data.write();
        let (yv, xv) = (f32s(&yg)?, f32s_mut(&mut xg)?);
        self.run(len, |par| dense::add(par, &mut xv[..len], &yv[..len]));
        Ok(())
    }

    /// See [`arkvale_core::Device::add_bias`].
    fn raw_add_bias(
        &self,
        _: Checked,
        rows: usize,
        cols: usize,
        x: &Buffer,
        bias: &Buffer,
    ) -> Result<()> {
        let x_s = self.storage(x, "add_bias: x")?;
        let b_s = self.storage(bias, "add_bias: bias")?;
        if rows == 0 {
            return Ok(());
        }
        let len = rows * cols;
        let bg = b_s.data.read_recursive();
        let mut xg = x_s.data.write();
        let (bv, xv) = (f32s(&bg)?, f32s_mut(&mut xg)?);
        self.run(len, |par| dense::add_bias(par, &mut xv[..len], &bv[..cols]));
        Ok(())
    }

    /// See [`arkvale_core::Device::embedding`].
    fn raw_embedding(
        &self,
        _: Checked,
        dim: usize,
        table: &Buffer,
        ids: &[u32],
        out: &Buffer,
    ) -> Result<()> {
        let t_s = self.storage(table, "embedding: table")?;
        let o_s = self.storage(out, "embedding: out")?;
        let len = ids.len() * dim;
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
    fn raw_argmax(
        &self,
        _: Checked,
        rows: usize,
        cols: usize,
        logits: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let l_s = self.storage(logits, "argmax: logits")?;
        let o_s = self.storage(out, "argmax: out")?;
        let len = rows * cols;
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
