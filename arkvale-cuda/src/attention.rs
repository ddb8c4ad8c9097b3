//! The attention ops of [`CudaDevice`]: the work items and geometry of paged attention, the
//! shared checks, and the launches of `decode_attention.cu` (partial and combine passes for
//! decode and prefill, finalize) and `attention_weights.cu`.

use arkvale_core::{AttnPage, AttnRow, AttnState, Buffer, Error, KvLayout, Result};

use crate::buffer::CudaBuf;
use crate::device::{CudaDevice, State};
use crate::driver::kargs;
use crate::launch::{suffix, u32_bytes};
use arkvale_core::validate::product;

/// Query heads handled together by one attention work item (`MAX_G` in the kernels).
pub(crate) const MAX_G: usize = 8;

/// The geometry of the attention kernels (`AttnGeom` in `decode_attention.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AttnGeom {
    hg: u32,
    p: u32,
    d: u32,
    q_heads: u32,
    n_splits: u32,
    pages_per_split: u32,
    n_items: u32,
    /// Query heads per group (`hg * gqa`): the row stride of the page log-sum-exps.
    lse_heads: u32,
}

/// Words of one attention work item (`ITEM_WORDS` in `decode_attention.cu`).
pub(crate) const ITEM_WORDS: usize = 4 + 3 * MAX_G;

/// The attention work items of `rows` (see `decode_attention.cu`): for every run of
/// consecutive rows with the same group and page range, and every KV head `h` of the group,
/// the (query row, query head, position) pairs that read `h` — each row's `gqa` heads, row
/// after row — in items of up to [`MAX_G`] pairs. Decode rows have their own page ranges, so
/// an item holds one row's heads; a prefill chunk's rows share theirs and are tiled.
pub(crate) fn attn_items(layout: &KvLayout, rows: &[AttnRow]) -> Vec<u32> {
    let (hg, gqa) = (layout.heads_per_group, layout.gqa);
    let mut words = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let r0 = rows[start];
        let mut end = start + 1;
        while end < rows.len()
            && rows[end].group == r0.group
            && rows[end].page_start == r0.page_start
            && rows[end].page_count == r0.page_count
        {
            end += 1;
        }
        for h in 0..hg {
            let pairs: Vec<[u32; 3]> = rows[start..end]
                .iter()
                .flat_map(|r| {
                    (0..gqa).map(move |g| {
                        let head = (r.group as usize * hg + h) * gqa + g;
                        [r.q_row, head as u32, r.pos]
                    })
                })
                .collect();
            for chunk in pairs.chunks(MAX_G) {
                let mut item = [0u32; ITEM_WORDS];
                item[..4].copy_from_slice(&[
                    h as u32,
                    r0.page_start,
                    r0.page_count,
                    chunk.len() as u32,
                ]);
                for (j, pair) in chunk.iter().enumerate() {
                    item[4 + 3 * j..7 + 3 * j].copy_from_slice(pair);
                }
                words.extend_from_slice(&item);
            }
        }
        start = end;
    }
    words
}

impl CudaDevice {
    /// The partial pass of paged attention for `rows` (see `decode_attention.cu`); returns the
    /// geometry, the work items' device address, the partials' addresses and the item count.
    #[allow(clippy::too_many_arguments)]
    fn attn_partials(
        &self,
        st: &mut State,
        layout: &KvLayout,
        pool: &CudaBuf,
        q: &CudaBuf,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&CudaBuf>,
        scale: f32,
        page_lse: u64,
    ) -> Result<(AttnGeom, u64, u64, u64, u32)> {
        let d = layout.head_dim;
        let e = match d.div_ceil(32) {
            1 => 1,
            2 => 2,
            3 | 4 => 4,
            5..=8 => 8,
            _ => {
                return Err(Error::shape(format!(
                    "attention: head_dim {d} above the CUDA backend's limit of 256"
                )));
            }
        };
        let item_words = attn_items(layout, rows);
        let items = item_words.len() / ITEM_WORDS;
        let max_pages = rows
            .iter()
            .map(|r| r.page_count as usize)
            .max()
            .unwrap_or(0)
            .max(1);
        let target = 4 * self.sms as usize;
        let want = target.div_ceil(items.max(1)).clamp(1, max_pages);
        let pps = max_pages.div_ceil(want).max(1);
        let n_splits = max_pages.div_ceil(pps).max(1);
        if n_splits > 65535 || items > i32::MAX as usize {
            return Err(Error::shape(
                "attention: too many rows or pages for one launch",
            ));
        }
        let geom = AttnGeom {
            hg: layout.heads_per_group as u32,
            p: layout.page_size as u32,
            d: d as u32,
            q_heads: layout.q_heads() as u32,
            n_splits: n_splits as u32,
            pages_per_split: pps as u32,
            n_items: items as u32,
            lse_heads: (layout.heads_per_group * layout.gqa) as u32,
        };
        let page_words: Vec<u32> = pages
            .iter()
            .flat_map(|p| [p.slot, p.base_pos, p.len])
            .collect();
        let addrs = self.upload(st, &[u32_bytes(&item_words), u32_bytes(&page_words)])?;
        let (rows_ptr, pages_ptr) = (addrs[0], addrs[1]);
        let n_part = items * n_splits * MAX_G;
        let ml_bytes = n_part * 2 * 4;
        let acc_bytes = n_part * d * 4;
        let base = self.scratch(st, ml_bytes.next_multiple_of(256) + acc_bytes)?;
        let part_ml = base;
        let part_acc = base + ml_bytes.next_multiple_of(256) as u64;
        let pool_ptr = pool.mem.ptr;
        let q_ptr = q.mem.ptr;
        let mask_ptr = mask.map_or(0u64, |m| m.mem.ptr);
        let name = format!("attn_partial_{}_e{e}", suffix(layout.kv_dtype.dtype()));
        self.launch(
            &name,
            (items as u32, n_splits as u32, 1),
            32 * 4,
            0,
            &kargs![
                pool_ptr, q_ptr, rows_ptr, pages_ptr, mask_ptr, scale, geom, part_ml, part_acc,
                page_lse
            ],
        )?;
        Ok((geom, rows_ptr, part_ml, part_acc, items as u32))
    }

    /// The pool, q and mask handles of an attention op.
    fn attn_inputs<'a>(
        &self,
        what: &str,
        pool: &'a Buffer,
        q: &'a Buffer,
        mask: Option<&'a Buffer>,
    ) -> Result<(&'a CudaBuf, &'a CudaBuf, Option<&'a CudaBuf>)> {
        let pool_s = self.kv_pool(pool, what)?;
        let q_s = self.buf(q, &format!("{what}: q"))?;
        let mask_s = mask
            .map(|m| self.buf(m, &format!("{what}: mask")))
            .transpose()?;
        Ok((pool_s, q_s, mask_s))
    }

    /// [`Device::decode_attention`](arkvale_core::Device::decode_attention).
    pub(crate) fn attn_decode(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        out: &Buffer,
        page_lse: Option<&Buffer>,
    ) -> Result<()> {
        self.ctx.bind()?;
        let what = "decode_attention";
        let o = self.buf(out, "decode_attention: out")?;
        let lse = page_lse
            .map(|b| self.buf(b, "decode_attention: page_lse"))
            .transpose()?;
        let (p, qs, m) = self.attn_inputs(what, pool, q, mask)?;
        if rows.is_empty() {
            return Ok(());
        }
        let lse_ptr = lse.map_or(0u64, |b| b.mem.ptr);
        let mut st = self.state.lock();
        let (geom, rows_ptr, part_ml, part_acc, items) =
            self.attn_partials(&mut st, layout, p, qs, rows, pages, m, scale, lse_ptr)?;
        let (fold, out_ptr, zero) = (0u32, o.mem.ptr, 0u64);
        self.launch(
            "attn_combine",
            (items, 1, 1),
            128,
            0,
            &kargs![
                rows_ptr, geom, part_ml, part_acc, fold, out_ptr, zero, zero, zero
            ],
        )
    }

    /// [`Device::prefill_attention`](arkvale_core::Device::prefill_attention).
    pub(crate) fn attn_prefill(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        state: &AttnState,
    ) -> Result<()> {
        self.ctx.bind()?;
        let what = "prefill_attention";
        let acc = self.buf(&state.acc, "prefill_attention: state.acc")?;
        let max = self.buf(&state.max, "prefill_attention: state.max")?;
        let sum = self.buf(&state.sum, "prefill_attention: state.sum")?;
        let (p, qs, m) = self.attn_inputs(what, pool, q, mask)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock();
        let (geom, rows_ptr, part_ml, part_acc, items) =
            self.attn_partials(&mut st, layout, p, qs, rows, pages, m, scale, 0)?;
        let (fold, zero) = (1u32, 0u64);
        let (ap, mp, sp) = (acc.mem.ptr, max.mem.ptr, sum.mem.ptr);
        self.launch(
            "attn_combine",
            (items, 1, 1),
            128,
            0,
            &kargs![rows_ptr, geom, part_ml, part_acc, fold, zero, ap, mp, sp],
        )
    }

    /// [`Device::attention_finalize`](arkvale_core::Device::attention_finalize).
    pub(crate) fn attn_finalize(
        &self,
        layout: &KvLayout,
        state: &AttnState,
        rows: &[AttnRow],
        out: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let acc = self.buf(&state.acc, "attention_finalize: state.acc")?;
        let sum = self.buf(&state.sum, "attention_finalize: state.sum")?;
        self.buf(&state.max, "attention_finalize: state.max")?;
        let o = self.buf(out, "attention_finalize: out")?;
        if rows.is_empty() {
            return Ok(());
        }
        let words: Vec<u32> = rows
            .iter()
            .flat_map(|r| [r.q_row, r.group, r.pos, r.page_start, r.page_count])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&words)])?;
        let (rp, n, gh, d, qh) = (
            a[0],
            rows.len() as u32,
            (layout.heads_per_group * layout.gqa) as u32,
            layout.head_dim as u32,
            layout.q_heads() as u32,
        );
        let (ap, sp, op) = (acc.mem.ptr, sum.mem.ptr, o.mem.ptr);
        self.launch(
            "attn_finalize",
            (rows.len() as u32, 1, 1),
            128,
            0,
            &kargs![rp, n, gh, d, qh, ap, sp, op],
        )
    }

    /// [`Device::attention_weights`](arkvale_core::Device::attention_weights).
    pub(crate) fn attn_weights(
        &self,
        layout: &KvLayout,
        pool: &Buffer,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
        mask: Option<&Buffer>,
        scale: f32,
        weights: &Buffer,
    ) -> Result<()> {
        self.ctx.bind()?;
        let what = "attention_weights";
        let w = self.buf(weights, "attention_weights: weights")?;
        let (p, qs, m) = self.attn_inputs(what, pool, q, mask)?;
        if rows.is_empty() {
            return Ok(());
        }
        let row_words: Vec<u32> = rows
            .iter()
            .flat_map(|r| [r.q_row, r.group, r.pos, r.page_start, r.page_count])
            .collect();
        let page_words: Vec<u32> = pages
            .iter()
            .flat_map(|p| [p.slot, p.base_pos, p.len])
            .collect();
        let mut st = self.state.lock();
        let a = self.upload(&mut st, &[u32_bytes(&row_words), u32_bytes(&page_words)])?;
        let (pp, qp, rp, gp, mp, wp) = (
            p.mem.ptr,
            qs.mem.ptr,
            a[0],
            a[1],
            m.map_or(0u64, |m| m.mem.ptr),
            w.mem.ptr,
        );
        let (hg, gqa, ps, d, qh) = (
            layout.heads_per_group as u32,
            layout.gqa as u32,
            layout.page_size as u32,
            layout.head_dim as u32,
            layout.q_heads() as u32,
        );
        let blocks = product(rows.len(), layout.heads_per_group, what)?;
        self.launch(
            &format!("attn_weights_{}", suffix(layout.kv_dtype.dtype())),
            (blocks as u32, 1, 1),
            128,
            2 * layout.gqa * 4,
            &kargs![pp, qp, rp, gp, mp, scale, hg, gqa, ps, d, qh, wp],
        )
    }
}
