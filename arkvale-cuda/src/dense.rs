//! The dense model ops of [`CudaDevice`], its [`DenseBackend`] implementation: checks and
//! the launches of `matmul.cu` (or cuBLAS SGEMM for many rows) and `dense.cu` (RMSNorm, RoPE,
//! SiLU-gating, add, bias add, embedding, argmax).

use arkvale_core::{
    Buffer, Checked, DType, DenseBackend, Error, MatmulDims, Result, Rope, RopeStyle,
};

use crate::BACKEND;
use crate::device::{CudaDevice, State};
use crate::driver::{Cublas, kargs};
use crate::launch::{grid1d, suffix, u32_bytes};

/// Rows per block of the small-`m` matmul kernel (`MM_ROWS`).
const MM_ROWS: usize = 8;
/// Up to this many rows, matmul uses the weight-streaming kernel; above, cuBLAS SGEMM.
const GEMV_MAX_ROWS: usize = 8;
/// Bytes of f32 weights widened per cuBLAS call for half-precision weights.
const WIDEN_CHUNK_BYTES: usize = 64 << 20;

impl DenseBackend for CudaDevice {
    /// [`Device::matmul`](arkvale_core::Device::matmul).
    fn raw_matmul(
        &self,
        _: Checked,
        dims: &MatmulDims,
        x: &Buffer,
        w: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let MatmulDims { m, n, k } = *dims;
        let xs = self.buf(x, "matmul: x")?;
        let ws = self.buf(w, "matmul: weights")?;
        let os = self.buf(out, "matmul: out")?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if [m, n, k].iter().any(|&v| v > i32::MAX as usize) {
            return Err(Error::shape("matmul: a dimension beyond 2^31 - 1"));
        }
        let mut st = self.state.lock();
        let use_blas = m > GEMV_MAX_ROWS && k > 0 && {
            if st.cublas.is_none() {
                st.cublas = Some(Cublas::new(&self.ctx, &self.compute)?);
            }
            matches!(st.cublas, Some(Some(_)))
        };
        let (xp, wp, op) = (xs.mem.ptr, ws.mem.ptr, os.mem.ptr);
        if !use_blas {
            let (mm, nn, kk) = (m as u32, n as u32, k as u32);
            let gy = m.div_ceil(MM_ROWS);
            if gy > 65535 {
                return Err(Error::shape("matmul: too many rows for one launch"));
            }
            return self.launch(
                &format!("matmul_rows_{}", suffix(w.dtype())),
                (n.div_ceil(8) as u32, gy as u32, 1),
                256,
                0,
                &kargs![xp, wp, op, mm, nn, kk],
            );
        }
        let sgemm = |st: &State, a: u64, rows: usize, c: u64| -> Result<()> {
            let Some(Some(blas)) = &st.cublas else {
                return Err(Error::device(BACKEND, "cuBLAS handle missing"));
            };
            // out^T [n, m] (column-major, ld n) = W [rows, k]^T-as-column-major · x^T.
            // SAFETY: every pointer is a live allocation of the checked size; dims fit i32.
            unsafe {
                blas.sgemm_tn(
                    rows as i32,
                    m as i32,
                    k as i32,
                    a,
                    k as i32,
                    xp,
                    k as i32,
                    c,
                    n as i32,
                )
            }
        };
        if w.dtype() == DType::F32 {
            return sgemm(&st, wp, n, op);
        }
        let chunk = (WIDEN_CHUNK_BYTES / 4 / k).clamp(1, n);
        let tmp = self.scratch(&mut st, chunk * k * 4)?;
        let mut n0 = 0;
        while n0 < n {
            let rows = chunk.min(n - n0);
            let cnt = (rows * k) as u64;
            let src = wp + (n0 * k * w.dtype().size()) as u64;
            self.launch(
                &format!("widen_{}", suffix(w.dtype())),
                (grid1d(cnt), 1, 1),
                256,
                0,
                &kargs![src, tmp, cnt],
            )?;
            sgemm(&st, tmp, rows, op + (n0 * 4) as u64)?;
            n0 += rows;
        }
        Ok(())
    }

    /// [`Device::rmsnorm`](arkvale_core::Device::rmsnorm).
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
        self.ctx.bind()?;
        let xs = self.buf(x, "rmsnorm: x")?;
        let ws = self.buf(weight, "rmsnorm: weight")?;
        let os = self.buf(out, "rmsnorm: out")?;
        let len = rows * dim;
        if len == 0 {
            return Ok(());
        }
        if rows > i32::MAX as usize || dim > u32::MAX as usize {
            return Err(Error::shape("rmsnorm: too many rows"));
        }
        let (xp, wp, op, r, dm) = (xs.mem.ptr, ws.mem.ptr, os.mem.ptr, rows as u32, dim as u32);
        self.launch(
            "rmsnorm",
            (rows as u32, 1, 1),
            256,
            0,
            &kargs![xp, wp, op, r, dm, eps],
        )
    }

    /// [`Device::rope`](arkvale_core::Device::rope).
    fn raw_rope(&self, _: Checked, rope: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let xs = self.buf(x, "rope: x")?;
        let len = positions.len() * rope.heads * rope.head_dim;
        if len == 0 {
            return Ok(());
        }
        let mut st = self.state.lock();
        let a = self.upload(
            &mut st,
            &[u32_bytes(positions), bytemuck::cast_slice(rope.inv_freq)],
        )?;
        let (xp, pp, fp) = (xs.mem.ptr, a[0], a[1]);
        let (t, h, d, style, scale) = (
            positions.len() as u32,
            rope.heads as u32,
            rope.head_dim as u32,
            match rope.style {
                RopeStyle::Neox => 0u32,
                RopeStyle::Interleaved => 1u32,
            },
            rope.position_scale,
        );
        let pairs = (len / 2) as u64;
        self.launch(
            "rope",
            (grid1d(pairs), 1, 1),
            256,
            0,
            &kargs![xp, pp, fp, t, h, d, style, scale],
        )
    }

    /// [`Device::silu_mul`](arkvale_core::Device::silu_mul).
    fn raw_silu_mul(
        &self,
        _: Checked,
        len: usize,
        gate: &Buffer,
        up: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let gs = self.buf(gate, "silu_mul: gate")?;
        let us = self.buf(up, "silu_mul: up")?;
        let os = self.buf(out, "silu_mul: out")?;
        if len == 0 {
            return Ok(());
        }
        let (gp, up_, op, n) = (gs.mem.ptr, us.mem.ptr, os.mem.ptr, len as u64);
        self.launch(
            "silu_mul",
            (grid1d(n), 1, 1),
            256,
            0,
            &kargs![gp, up_, op, n],
        )
    }

    /// [`Device::add`](arkvale_core::Device::add).
    fn raw_add(&self, _: Checked, len: usize, x: &Buffer, y: &Buffer) -> Result<()> {
        self.ctx.bind()?;
        let xs = self.buf(x, "add: x")?;
        let ys = self.buf(y, "add: y")?;
        if len == 0 {
            return Ok(());
        }
        let (xp, yp, n) = (xs.mem.ptr, ys.mem.ptr, len as u64);
        self.launch("add_inplace", (grid1d(n), 1, 1), 256, 0, &kargs![xp, yp, n])
    }

    /// [`Device::add_bias`](arkvale_core::Device::add_bias).
    fn raw_add_bias(
        &self,
        _: Checked,
        rows: usize,
        cols: usize,
        x: &Buffer,
        bias: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let xs = self.buf(x, "add_bias: x")?;
        let bs = self.buf(bias, "add_bias: bias")?;
        if rows == 0 {
            return Ok(());
        }
        let len = rows * cols;
        if cols > u32::MAX as usize {
            return Err(Error::shape("add_bias: cols beyond 2^32 - 1"));
        }
        let (xp, bp, r, c) = (xs.mem.ptr, bs.mem.ptr, rows as u64, cols as u32);
        self.launch(
            "add_bias",
            (grid1d(len as u64), 1, 1),
            256,
            0,
            &kargs![xp, bp, r, c],
        )
    }

    /// [`Device::embedding`](arkvale_core::Device::embedding).
    fn raw_embedding(
        &self,
        _: Checked,
        dim: usize,
        table: &Buffer,
        ids: &[u32],
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let ts = self.buf(table, "embedding: table")?;
        let os = self.buf(out, "embedding: out")?;
        let len = ids.len() * dim;
        if len == 0 {
            return Ok(());
        }
        if dim > u32::MAX as usize {
            return Err(Error::shape("embedding: dim beyond 2^32 - 1"));
        }
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(ids)])?;
        let (tp, ip, n, dm, op) = (ts.mem.ptr, a[0], ids.len() as u32, dim as u32, os.mem.ptr);
        self.launch(
            &format!("embedding_{}", suffix(table.dtype())),
            (grid1d(len as u64), 1, 1),
            256,
            0,
            &kargs![tp, ip, n, dm, op],
        )
    }

    /// [`Device::argmax`](arkvale_core::Device::argmax).
    fn raw_argmax(
        &self,
        _: Checked,
        rows: usize,
        cols: usize,
        logits: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let ls = self.buf(logits, "argmax: logits")?;
        let os = self.buf(out, "argmax: out")?;
        if rows == 0 {
            return Ok(());
        }
        if rows > i32::MAX as usize || cols > u32::MAX as usize {
            return Err(Error::shape("argmax: too many rows or columns"));
        }
        let (lp, op, r, c) = (ls.mem.ptr, os.mem.ptr, rows as u32, cols as u32);
        self.launch("argmax", (rows as u32, 1, 1), 256, 0, &kargs![lp, op, r, c])
    }
}
