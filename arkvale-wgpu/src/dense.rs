//! The dense model ops of [`WgpuDevice`], its [`DenseBackend`] implementation: checks, splits
//! below the binding limit, and the launches of `matmul.wgsl`, `rows.wgsl`, `rope.wgsl`,
//! `elementwise.wgsl` and `embedding.wgsl`.

use arkvale_core::{
    Buffer, Checked, DType, DenseBackend, Error, MatmulDims, Result, Rope, RopeStyle,
};

use crate::BACKEND;
use crate::buffer::GpuBuffer;
use crate::context::Binding;
use crate::device::WgpuDevice;
use crate::kernels::Kernel;
use crate::kv::dt_code;
use crate::limits::{align_items, chunks, word_cover};

/// Largest `m` the GEMV kernel handles (its per-invocation accumulators).
const GEMV_MAX_M: usize = 8;

fn too_big(what: &str) -> Error {
    Error::device(
        BACKEND,
        format!("{what}: one row does not fit the adapter's storage-binding limit"),
    )
}

impl WgpuDevice {
    fn max_binding(&self) -> u64 {
        self.gpu.limits.max_storage_buffer_binding_size
    }

    /// The binding of bytes `[start, start + len)` of `g` (one segment).
    fn part<'a>(&self, g: &'a GpuBuffer, start: u64, len: u64, what: &str) -> Result<Binding<'a>> {
        let (buffer, offset) = g.within(&self.gpu.device, start, len, what)?;
        Ok(Binding {
            buffer,
            offset,
            size: len,
        })
    }

    fn offset_align(&self) -> u64 {
        self.gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64
    }

    /// Zeroes the first `len` f32 values of `ob` (a matmul with `k == 0`).
    fn fill_zero_rows(&self, ob: &GpuBuffer, len: usize) -> Result<()> {
        let mut enc = self.gpu.encoder();
        for (b, at, n) in ob.pieces(&self.gpu.device, 0, len as u64 * 4) {
            enc.clear_buffer(b, at, Some(n));
        }
        self.gpu.submit(enc, "matmul")?;
        Ok(())
    }
}

impl DenseBackend for WgpuDevice {
    /// See [`arkvale_core::Device::matmul`]. Weight rows and activation rows are split so
    /// that every binding fits the adapter's limit.
    fn raw_matmul(
        &self,
        _: Checked,
        dims: &MatmulDims,
        x: &Buffer,
        w: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let MatmulDims { m, n, k } = *dims;
        let xb = self.gpu_buf(x, "matmul: x")?;
        let wb = self.gpu_buf(w, "matmul: weights")?;
        let ob = self.gpu_buf(out, "matmul: out")?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return self.fill_zero_rows(ob, m * n);
        }
        let dt = dt_code(w.dtype())?;
        let esize = w.dtype().size() as u64;
        let max = self.max_binding();
        let align = self.offset_align();
        let w_chunks = chunks(
            n,
            k as u64 * esize,
            max,
            align_items(k as u64 * esize, align),
        )
        .ok_or_else(|| too_big("matmul: weights"))?;
        let row_bytes = (k.max(n) as u64) * 4;
        let m_align = {
            let a = align_items(k as u64 * 4, align);
            let b = align_items(n as u64 * 4, align);
            a / gcd(a, b) * b
        };
        let m_chunks =
            chunks(m, row_bytes, max, m_align).ok_or_else(|| too_big("matmul: x/out"))?;
        let mut enc = self.gpu.encoder();
        for &(m0, mc) in &m_chunks {
            let xw = self.part(
                xb,
                m0 as u64 * k as u64 * 4,
                mc as u64 * k as u64 * 4,
                "matmul",
            )?;
            let ow = self.part(
                ob,
                m0 as u64 * n as u64 * 4,
                mc as u64 * n as u64 * 4,
                "matmul",
            )?;
            for &(n0, nc) in &w_chunks {
                let (wstart, wlen) =
                    word_cover(n0 as u64 * k as u64 * esize, nc as u64 * k as u64 * esize);
                let ww = self.part(wb, wstart, wlen.min(wb.total - wstart), "matmul")?;
                let meta = [
                    mc as u32, n as u32, k as u32, n0 as u32, nc as u32, 0, dt, 0, 0,
                ];
                if mc <= GEMV_MAX_M {
                    let groups = mc as u64 * nc.div_ceil(64) as u64;
                    self.gpu.encode(
                        &mut enc,
                        Kernel::Gemv,
                        &meta,
                        &[xw, ww, ow],
                        groups,
                        "matmul",
                    )?;
                } else {
                    self.gpu.encode_grid(
                        &mut enc,
                        Kernel::GemmTiled,
                        &meta,
                        &[xw, ww, ow],
                        (nc.div_ceil(64) as u32, mc.div_ceil(64) as u32),
                        "matmul",
                    )?;
                }
            }
        }
        self.gpu.submit(enc, "matmul")?;
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
        let xb = self.gpu_buf(x, "rmsnorm: x")?;
        let wb = self.gpu_buf(weight, "rmsnorm: weight")?;
        let ob = self.gpu_buf(out, "rmsnorm: out")?;
        let len = rows * dim;
        if len == 0 {
            return Ok(());
        }
        let meta = [rows as u32, dim as u32, eps.to_bits()];
        self.gpu.launch(
            Kernel::RmsNorm,
            &meta,
            &[
                Binding::whole(xb.single("rmsnorm")?),
                Binding::whole(wb.single("rmsnorm")?),
                Binding::whole(ob.single("rmsnorm")?),
            ],
            rows as u64,
            "rmsnorm",
        )
    }

    /// See [`arkvale_core::Device::rope`]. The cos/sin table is computed on the host in f64
    /// (as [`Rope`] defines the angle) and uploaded with the positions.
    fn raw_rope(&self, _: Checked, r: &Rope<'_>, positions: &[u32], x: &Buffer) -> Result<()> {
        let xb = self.gpu_buf(x, "rope: x")?;
        let len = positions.len() * r.heads * r.head_dim;
        if len == 0 {
            return Ok(());
        }
        let mut table = Vec::with_capacity(positions.len() * r.head_dim);
        for &p in positions {
            for &f in r.inv_freq {
                let a = p as f64 * r.position_scale as f64 * f as f64;
                let (s, c) = a.sin_cos();
                table.push((c as f32).to_bits());
                table.push((s as f32).to_bits());
            }
        }
        let cs = self.gpu.upload_words(&table, "arkvale rope table");
        let meta = [
            positions.len() as u32,
            r.heads as u32,
            r.head_dim as u32,
            matches!(r.style, RopeStyle::Neox) as u32,
        ];
        let threads = (len / 2) as u64;
        self.gpu.launch(
            Kernel::Rope,
            &meta,
            &[Binding::whole(&cs), Binding::whole(xb.single("rope")?)],
            threads.div_ceil(256),
            "rope",
        )
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
        let gb = self.gpu_buf(gate, "silu_mul: gate")?;
        let ub = self.gpu_buf(up, "silu_mul: up")?;
        let ob = self.gpu_buf(out, "silu_mul: out")?;
        if len == 0 {
            return Ok(());
        }
        self.gpu.launch(
            Kernel::SiluMul,
            &[len as u32],
            &[
                Binding::whole(gb.single("silu_mul")?),
                Binding::whole(ub.single("silu_mul")?),
                Binding::whole(ob.single("silu_mul")?),
            ],
            (len as u64).div_ceil(256),
            "silu_mul",
        )
    }

    /// See [`arkvale_core::Device::add`].
    fn raw_add(&self, _: Checked, len: usize, x: &Buffer, y: &Buffer) -> Result<()> {
        let xb = self.gpu_buf(x, "add: x")?;
        let yb = self.gpu_buf(y, "add: y")?;
        if len == 0 {
            return Ok(());
        }
        self.gpu.launch(
            Kernel::Add,
            &[len as u32],
            &[
                Binding::whole(yb.single("add")?),
                Binding::whole(&self.gpu.dummies[0]),
                Binding::whole(xb.single("add")?),
            ],
            (len as u64).div_ceil(256),
            "add",
        )
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
        let xb = self.gpu_buf(x, "add_bias: x")?;
        let bb = self.gpu_buf(bias, "add_bias: bias")?;
        let len = rows * cols;
        if len == 0 {
            return Ok(());
        }
        self.gpu.launch(
            Kernel::AddBias,
            &[len as u32, cols as u32],
            &[
                Binding::whole(bb.single("add_bias")?),
                Binding::whole(&self.gpu.dummies[0]),
                Binding::whole(xb.single("add_bias")?),
            ],
            (len as u64).div_ceil(256),
            "add_bias",
        )
    }

    /// See [`arkvale_core::Device::embedding`]. Rows are gathered with copy commands (no
    /// binding limit applies to the table); f16/bf16 rows are widened by a kernel.
    fn raw_embedding(
        &self,
        _: Checked,
        dim: usize,
        table: &Buffer,
        ids: &[u32],
        out: &Buffer,
    ) -> Result<()> {
        let tb = self.gpu_buf(table, "embedding: table")?;
        let ob = self.gpu_buf(out, "embedding: out")?;
        let len = ids.len() * dim;
        if ids.is_empty() {
            return Ok(());
        }
        let mut enc = self.gpu.encoder();
        if table.dtype() == DType::F32 {
            let row = dim as u64 * 4;
            for (t, &id) in ids.iter().enumerate() {
                let (dst, at) = ob.within(&self.gpu.device, t as u64 * row, row, "embedding")?;
                let mut to = at;
                for (src, from, n) in tb.pieces(&self.gpu.device, id as u64 * row, row) {
                    enc.copy_buffer_to_buffer(src, from, dst, to, n);
                    to += n;
                }
            }
            self.gpu.submit(enc, "embedding")?;
            return Ok(());
        }
        let row = dim as u64 * 2;
        let row_words = (row + 2).div_ceil(4);
        let rows = self.gpu.buffer(
            row_words * 4 * ids.len() as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            "arkvale embedding rows",
        )?;
        let mut meta = vec![
            ids.len() as u32,
            dim as u32,
            dt_code(table.dtype())?,
            row_words as u32,
        ];
        for (t, &id) in ids.iter().enumerate() {
            let (start, cover) = word_cover(id as u64 * row, row);
            let cover = cover.min(tb.total - start);
            let mut to = t as u64 * row_words * 4;
            for (src, from, n) in tb.pieces(&self.gpu.device, start, cover) {
                enc.copy_buffer_to_buffer(src, from, &rows, to, n);
                to += n;
            }
            meta.push(((id as u64 * row - start) / 2) as u32);
        }
        self.gpu.encode(
            &mut enc,
            Kernel::Embedding,
            &meta,
            &[
                Binding::whole(&rows),
                Binding::whole(ob.single("embedding")?),
            ],
            (len as u64).div_ceil(256),
            "embedding",
        )?;
        self.gpu.submit(enc, "embedding")?;
        Ok(())
    }

    /// See [`arkvale_core::Device::argmax`]. Rows are split so that each binding of logits
    /// fits the adapter's limit; results go through a small buffer and copy commands.
    fn raw_argmax(
        &self,
        _: Checked,
        rows: usize,
        cols: usize,
        logits: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let lb = self.gpu_buf(logits, "argmax: logits")?;
        let ob = self.gpu_buf(out, "argmax: out")?;
        if rows == 0 {
            return Ok(());
        }
        let row = cols as u64 * 4;
        let parts = chunks(
            rows,
            row,
            self.max_binding(),
            align_items(row, self.offset_align()),
        )
        .ok_or_else(|| too_big("argmax: logits"))?;
        let tmp = self.gpu.buffer(
            rows as u64 * 4,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            "arkvale argmax out",
        )?;
        let mut enc = self.gpu.encoder();
        for &(r0, rc) in &parts {
            let lw = self.part(lb, r0 as u64 * row, rc as u64 * row, "argmax")?;
            let part = self.gpu.buffer(
                rc as u64 * 4,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                "arkvale argmax part",
            )?;
            self.gpu.encode(
                &mut enc,
                Kernel::Argmax,
                &[rc as u32, cols as u32],
                &[
                    lw,
                    Binding::whole(&self.gpu.dummies[0]),
                    Binding::whole(&part),
                ],
                rc as u64,
                "argmax",
            )?;
            enc.copy_buffer_to_buffer(&part, 0, &tmp, r0 as u64 * 4, rc as u64 * 4);
        }
        let (dst, at) = ob.within(&self.gpu.device, 0, rows as u64 * 4, "argmax")?;
        enc.copy_buffer_to_buffer(&tmp, 0, dst, at, rows as u64 * 4);
        self.gpu.submit(enc, "argmax")?;
        Ok(())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
