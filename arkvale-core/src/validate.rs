//! The input checks of every [`crate::Device`] operation, shared by all backends: buffer
//! dtypes and lengths, aliasing, the KV layout, each KV op's descriptors (append destinations,
//! summarize/estimate jobs, top-k segments, attention rows and pages), page-copy plans and
//! element/byte ranges. The checked [`crate::Device`] layer ([`crate::backend`]) runs them
//! before any backend code, so that bad input is an [`Error::Shape`] with the same wording on
//! every backend alike — never a panic or an out-of-bounds access.

use crate::{
    AppendDest, AttnPage, AttnRow, Buffer, DType, DigestKind, Error, EstimateJob, HostBuffer,
    KvLayout, Result, Rope, SummarizeJob, TopkSegment,
};

/// Elements needed to hold item `index` of `per` elements each (`(index + 1) * per`), or
/// `usize::MAX` on overflow (which then fails every size check).
pub fn end_of(index: usize, per: usize) -> usize {
    index
        .checked_add(1)
        .and_then(|n| n.checked_mul(per))
        .unwrap_or(usize::MAX)
}

/// Fails unless `need <= have`.
fn fits(need: usize, have: usize, what: impl FnOnce() -> String) -> Result<()> {
    if need <= have {
        Ok(())
    } else {
        Err(Error::shape(format!(
            "{}: needs {need} elements, buffer has {have}",
            what()
        )))
    }
}

/// Checks that every size of the layout is positive and that its derived sizes do not
/// overflow.
pub fn layout(l: &KvLayout) -> Result<()> {
    let dims = [l.heads_per_group, l.gqa, l.page_size, l.head_dim, l.groups];
    if dims.contains(&0) {
        return Err(Error::shape(format!("KV layout with a zero size: {l:?}")));
    }
    let slot = 2usize
        .checked_mul(l.heads_per_group)
        .and_then(|x| x.checked_mul(l.page_size))
        .and_then(|x| x.checked_mul(l.head_dim))
        .and_then(|x| x.checked_mul(l.kv_dtype.size()));
    let heads = l
        .heads_per_group
        .checked_mul(l.groups)
        .and_then(|x| x.checked_mul(l.gqa));
    let q_row = heads.and_then(|h| h.checked_mul(l.head_dim));
    if slot.is_none() || q_row.is_none() {
        return Err(Error::shape(format!("KV layout sizes overflow: {l:?}")));
    }
    Ok(())
}

/// Slots in a pool of `pool_len` elements.
pub fn slots(l: &KvLayout, pool_len: usize) -> usize {
    pool_len / l.slot_elems()
}

/// Checks one slot index.
pub fn slot(l: &KvLayout, pool_len: usize, slot: u32, what: &str) -> Result<()> {
    slot_lazy(l, pool_len, slot, &|| what.to_string())
}

/// [`slot`] with the description made only on failure (these checks run for every page of
/// every op, so formatting it eagerly would cost more than the checks).
fn slot_lazy(l: &KvLayout, pool_len: usize, slot: u32, what: &dyn Fn() -> String) -> Result<()> {
    if (slot as usize) < slots(l, pool_len) {
        Ok(())
    } else {
        Err(Error::shape(format!(
            "{}: slot {slot} outside a pool of {} slots",
            what(),
            slots(l, pool_len)
        )))
    }
}

/// Checks a head group index (`what` describes the item, made only on failure).
fn group(l: &KvLayout, group: u32, what: &dyn Fn() -> String) -> Result<()> {
    if (group as usize) < l.groups {
        Ok(())
    } else {
        Err(Error::shape(format!(
            "{}: group {group} of {} groups",
            what(),
            l.groups
        )))
    }
}

/// Checks append destinations against the pool and the `[tokens, Hkv, d]` inputs.
pub fn append(
    l: &KvLayout,
    pool_len: usize,
    k_len: usize,
    v_len: usize,
    dests: &[AppendDest],
) -> Result<()> {
    let row = l.kv_heads() * l.head_dim;
    for (n, d) in dests.iter().enumerate() {
        let what = || format!("append_kv dest {n} {d:?}");
        group(l, d.group, &what)?;
        slot_lazy(l, pool_len, d.slot, &what)?;
        if d.pos as usize >= l.page_size {
            return Err(Error::shape(format!(
                "{}: position beyond page size {}",
                what(),
                l.page_size
            )));
        }
        fits(end_of(d.token as usize, row), k_len.min(v_len), || {
            format!("{}: k/v", what())
        })?;
    }
    Ok(())
}

/// Checks summarize jobs against the pool and the digest store.
pub fn summarize(
    l: &KvLayout,
    kind: DigestKind,
    pool_len: usize,
    jobs: &[SummarizeJob],
    digests_len: usize,
) -> Result<()> {
    let per = l.heads_per_group * kind.len(l.head_dim);
    for (n, j) in jobs.iter().enumerate() {
        let what = || format!("summarize job {n} {j:?}");
        slot_lazy(l, pool_len, j.slot, &what)?;
        if j.len == 0 || j.len as usize > l.page_size {
            return Err(Error::shape(format!(
                "{}: len must be in 1..={}",
                what(),
                l.page_size
            )));
        }
        fits(end_of(j.digest as usize, per), digests_len, || {
            format!("{}: digests", what())
        })?;
    }
    Ok(())
}

/// Checks estimate jobs against the digests, queries and scores.
pub fn estimate(
    l: &KvLayout,
    kind: DigestKind,
    digests_len: usize,
    q_len: usize,
    jobs: &[EstimateJob],
    scores_len: usize,
) -> Result<()> {
    let per = l.heads_per_group * kind.len(l.head_dim);
    let q_row = l.q_heads() * l.head_dim;
    fits(jobs.len(), scores_len, || "estimate: scores".into())?;
    for (n, j) in jobs.iter().enumerate() {
        let what = || format!("estimate job {n} {j:?}");
        group(l, j.group, &what)?;
        fits(end_of(j.digest as usize, per), digests_len, || {
            format!("{}: digests", what())
        })?;
        fits(end_of(j.q_row as usize, q_row), q_len, || {
            format!("{}: q", what())
        })?;
    }
    Ok(())
}

/// Checks top-k segments against the scores and the output.
pub fn topk(scores_len: usize, segments: &[TopkSegment], out_len: usize) -> Result<()> {
    let mut at = 0usize;
    for (n, s) in segments.iter().enumerate() {
        let end = s.start as usize + s.len as usize;
        if end > scores_len || s.k > s.len {
            return Err(Error::shape(format!(
                "topk segment {n} {s:?}: needs k <= len and start + len <= {scores_len}"
            )));
        }
        at += s.k as usize;
    }
    fits(at, out_len, || "topk: out".into())
}

/// Checks attention rows and pages against the pool, the queries, the per-row outputs
/// (`out_len` elements of `[rows, H, d]`) and the keep-mask.
pub fn attention(
    l: &KvLayout,
    pool_len: usize,
    q_len: usize,
    out_len: usize,
    rows: &[AttnRow],
    pages: &[AttnPage],
    mask_len: Option<usize>,
) -> Result<()> {
    let q_row = l.q_heads() * l.head_dim;
    for (n, r) in rows.iter().enumerate() {
        let what = || format!("attention row {n} {r:?}");
        group(l, r.group, &what)?;
        fits(end_of(r.q_row as usize, q_row), q_len.min(out_len), || {
            format!("{}: q/out", what())
        })?;
        let end = r.page_start as usize + r.page_count as usize;
        fits(end, pages.len(), || format!("{}: page list", what()))?;
    }
    for (n, pg) in pages.iter().enumerate() {
        let what = || format!("attention page {n} {pg:?}");
        slot_lazy(l, pool_len, pg.slot, &what)?;
        if pg.len as usize > l.page_size {
            return Err(Error::shape(format!(
                "{}: len beyond page size {}",
                what(),
                l.page_size
            )));
        }
        if let Some(m) = mask_len {
            fits(end_of(pg.slot as usize, l.tokens_per_slot()), m, || {
                format!("{}: mask", what())
            })?;
        }
    }
    Ok(())
}

/// Checks a decode attention's `page_lse` output of `lse_len` f32 values: it holds
/// `pages.len() * hg * gqa` values and no two rows' page ranges overlap (each entry has one
/// writer).
pub fn page_lse(l: &KvLayout, rows: &[AttnRow], pages_len: usize, lse_len: usize) -> Result<()> {
    let gh = l.heads_per_group * l.gqa;
    fits(pages_len * gh, lse_len, || {
        format!("page_lse: {pages_len} pages x {gh} heads")
    })?;
    let mut ranges: Vec<(usize, usize)> = rows
        .iter()
        .filter(|r| r.page_count > 0)
        .map(|r| {
            let s = r.page_start as usize;
            (s, s + r.page_count as usize)
        })
        .collect();
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(Error::shape(format!(
            "page_lse: rows' page ranges {:?} and {:?} overlap",
            w[0].0..w[0].1,
            w[1].0..w[1].1
        )));
    }
    Ok(())
}

/// Checks that an attention state of `acc`, `max`, `sum` lengths holds every row's query row.
pub fn state(
    l: &KvLayout,
    rows: &[AttnRow],
    acc_len: usize,
    max_len: usize,
    sum_len: usize,
) -> Result<()> {
    let heads = l.q_heads();
    for (n, r) in rows.iter().enumerate() {
        let what = || format!("attention state for row {n} {r:?}");
        group(l, r.group, &what)?;
        fits(
            end_of(r.q_row as usize, heads * l.head_dim),
            acc_len,
            || format!("{}: acc", what()),
        )?;
        fits(
            end_of(r.q_row as usize, heads),
            max_len.min(sum_len),
            || format!("{}: max/sum", what()),
        )?;
    }
    Ok(())
}

/// Checks that elements `offset .. offset + len` lie inside a buffer of `size` elements
/// (the units are the caller's: elements, or bytes of host memory), without overflow.
pub fn range(offset: usize, len: usize, size: usize, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::shape(format!(
            "{what}: range {offset}..{offset}+{len} outside a buffer of {size}"
        ))),
    }
}

/// Fails with [`Error::Shape`] if the output buffer `out` is also one of `inputs` (an
/// operation cannot read and write one buffer at once); compares [`Buffer::id`]s.
pub fn not_aliased(out: &Buffer, inputs: &[&Buffer], what: &str) -> Result<()> {
    if inputs.iter().any(|i| i.id() == out.id()) {
        return Err(Error::shape(format!(
            "{what}: the output buffer must not also be an input"
        )));
    }
    Ok(())
}

/// Fails with [`Error::Shape`] if two of an operation's `outputs` are the same buffer.
pub fn distinct_outputs(outputs: &[&Buffer], what: &str) -> Result<()> {
    for (n, o) in outputs.iter().enumerate() {
        if outputs[..n].iter().any(|p| p.id() == o.id()) {
            return Err(Error::shape(format!(
                "{what}: two outputs are the same buffer"
            )));
        }
    }
    Ok(())
}

/// Fails unless `buf` holds elements of `dtype`.
pub fn dtype(buf: &Buffer, dtype: DType, what: &str) -> Result<()> {
    if buf.dtype() != dtype {
        return Err(Error::shape(format!(
            "{what}: expected a {dtype:?} buffer, got {:?}",
            buf.dtype()
        )));
    }
    Ok(())
}

/// [`crate::Device::import`]: the `bytes` handed over are exactly `len` elements of `dtype`
/// (whose size [`crate::Device::alloc`]'s checks have already bounded).
pub fn import(dtype: DType, len: usize, bytes: usize) -> Result<()> {
    match dtype.bytes_for(len) {
        Some(need) if need == bytes => Ok(()),
        _ => Err(Error::shape(format!(
            "import: {bytes} bytes are not {len} x {dtype}"
        ))),
    }
}

/// The elements in `bytes` bytes of `dtype` written or read at element `offset`: the bytes
/// must be whole elements (whole blocks, at a block boundary, for quantized types).
pub fn byte_span(dtype: DType, offset: usize, bytes: usize, what: &str) -> Result<usize> {
    match (dtype.bytes_for(offset), dtype.elems_in(bytes)) {
        (Some(_), Some(len)) => Ok(len),
        _ => Err(Error::shape(format!(
            "{what}: {bytes} bytes at element {offset} are not whole {dtype} elements \
             (quantized types: whole blocks at a block boundary)"
        ))),
    }
}

/// The checks of [`crate::Device::copy`]: one dtype, both ranges inside their buffers and,
/// for quantized types, whole blocks at block boundaries.
pub fn copy(src: &Buffer, src_off: usize, dst: &Buffer, dst_off: usize, len: usize) -> Result<()> {
    let dtype = src.dtype();
    if dtype != dst.dtype() {
        return Err(Error::shape(format!(
            "copy: {dtype:?} into {:?}",
            dst.dtype()
        )));
    }
    range(src_off, len, src.len(), "copy: src")?;
    range(dst_off, len, dst.len(), "copy: dst")?;
    let blocks = [src_off, dst_off, len].map(|n| dtype.bytes_for(n).is_some());
    if blocks.contains(&false) {
        return Err(Error::shape(format!(
            "copy: {len} {dtype} elements at {src_off} -> {dst_off} are not whole blocks at a \
             block boundary"
        )));
    }
    Ok(())
}

/// The checks of a page backup or recall: a valid layout, a pool of its `kv_dtype`, every
/// slot inside the pool and every host range of `layout.slot_bytes()` bytes inside `host`.
pub fn page_copies(
    l: &KvLayout,
    pool: &Buffer,
    copies: &[(u32, u64)],
    host: &HostBuffer,
    what: &str,
) -> Result<()> {
    layout(l)?;
    dtype(pool, l.kv_dtype.dtype(), &format!("{what}: pool"))?;
    let n = l.slot_bytes();
    for &(s, at) in copies {
        slot(l, pool.len(), s, what)?;
        let at =
            usize::try_from(at).map_err(|_| Error::shape(format!("{what}: host offset {at}")))?;
        range(
            at,
            n,
            host.bytes(),
            &format!("{what}: slot {s} at host byte"),
        )?;
    }
    Ok(())
}

/// The `(pool byte, host byte, bytes)` ranges of page copies that [`page_copies`] accepted.
pub fn page_copy_plan(l: &KvLayout, copies: &[(u32, u64)]) -> Vec<(usize, usize, usize)> {
    let n = l.slot_bytes();
    copies
        .iter()
        .map(|&(s, at)| (s as usize * n, at as usize, n))
        .collect()
}

/// `a * b`, or a shape error naming `what` on overflow.
pub fn product(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::shape(format!("{what}: {a} x {b} elements overflow")))
}

/// Fails unless `buf` holds at least `need` elements.
pub fn at_least(buf: &Buffer, need: usize, what: &str) -> Result<()> {
    if buf.len() < need {
        return Err(Error::shape(format!(
            "{what}: needs {need} elements, the buffer has {}",
            buf.len()
        )));
    }
    Ok(())
}

/// The shape checks of [`crate::Device::rmsnorm`] (the caller checks dtypes and aliasing):
/// returns `rows * dim`, the elements of `x` and `out`.
pub fn rmsnorm(
    rows: usize,
    dim: usize,
    eps: f32,
    x: &Buffer,
    weight: &Buffer,
    out: &Buffer,
) -> Result<usize> {
    if dim == 0 && rows > 0 {
        return Err(Error::shape("rmsnorm: rows of 0 values"));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::shape(format!(
            "rmsnorm: eps must be >= 0, got {eps}"
        )));
    }
    let len = product(rows, dim, "rmsnorm")?;
    at_least(x, len, "rmsnorm: x [rows, dim]")?;
    at_least(weight, dim, "rmsnorm: weight [dim]")?;
    at_least(out, len, "rmsnorm: out [rows, dim]")?;
    Ok(len)
}

/// The shape checks of [`crate::Device::rope`] for `tokens` positions: returns the elements
/// of `x` rotated.
pub fn rope(r: &Rope<'_>, tokens: usize, x: &Buffer) -> Result<usize> {
    if r.head_dim == 0 || r.head_dim % 2 != 0 {
        return Err(Error::shape(format!(
            "rope: head_dim must be even and non-zero, got {}",
            r.head_dim
        )));
    }
    if r.inv_freq.len() != r.head_dim / 2 {
        return Err(Error::shape(format!(
            "rope: {} inverse frequencies for head_dim {} (need head_dim / 2)",
            r.inv_freq.len(),
            r.head_dim
        )));
    }
    if !r.position_scale.is_finite() {
        return Err(Error::shape("rope: position_scale must be finite"));
    }
    let token = product(r.heads, r.head_dim, "rope")?;
    let len = product(tokens, token, "rope")?;
    at_least(x, len, "rope: x [tokens, heads, head_dim]")?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KvDtype;

    fn l() -> KvLayout {
        KvLayout {
            kv_dtype: KvDtype::F16,
            heads_per_group: 2,
            gqa: 2,
            page_size: 4,
            head_dim: 3,
            groups: 2,
        }
    }

    #[test]
    fn rejects_zero_and_overflowing_layouts() {
        assert!(layout(&l()).is_ok());
        assert!(layout(&KvLayout { gqa: 0, ..l() }).is_err());
        assert!(
            layout(&KvLayout {
                head_dim: usize::MAX / 2,
                ..l()
            })
            .is_err()
        );
    }

    #[test]
    fn rejects_out_of_range_descriptors() {
        let slot = l().slot_elems();
        let ok = AppendDest {
            token: 1,
            group: 1,
            slot: 1,
            pos: 3,
        };
        assert!(append(&l(), 2 * slot, 24, 24, &[ok]).is_ok());
        assert!(append(&l(), 2 * slot, 24, 24, &[AppendDest { slot: 2, ..ok }]).is_err());
        assert!(append(&l(), 2 * slot, 24, 24, &[AppendDest { pos: 4, ..ok }]).is_err());
        assert!(append(&l(), 2 * slot, 24, 24, &[AppendDest { group: 2, ..ok }]).is_err());
        assert!(append(&l(), 2 * slot, 24, 23, &[ok]).is_err());
        let seg = TopkSegment {
            start: 2,
            len: 3,
            k: 2,
        };
        assert!(topk(5, &[seg, seg], 4).is_ok());
        assert!(topk(5, &[seg, seg], 3).is_err());
        assert!(topk(4, &[seg], 4).is_err());
        assert!(topk(5, &[TopkSegment { k: 4, ..seg }], 9).is_err());
        let row = AttnRow {
            q_row: 0,
            group: 0,
            pos: 0,
            page_start: u32::MAX,
            page_count: u32::MAX,
        };
        assert!(attention(&l(), slot, 100, 100, &[row], &[], None).is_err());
    }

    #[test]
    fn range_checks_the_end_without_overflow() {
        assert!(range(0, 0, 0, "t").is_ok());
        assert!(range(2, 3, 5, "t").is_ok(), "ending exactly at the end");
        assert!(range(5, 0, 5, "t").is_ok(), "empty range at the end");
        let err = range(2, 4, 5, "write").unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("write: range 2..2+4 outside a buffer of 5"),
            "{err}"
        );
        assert!(range(6, 0, 5, "t").is_err(), "offset past the end");
        assert!(
            range(usize::MAX, 1, usize::MAX, "t").is_err(),
            "offset + len overflows"
        );
        assert!(
            range(1, usize::MAX, usize::MAX, "t").is_err(),
            "offset + len overflows"
        );
    }

    fn buf(len: usize) -> Buffer {
        Buffer::new(Box::new(vec![0f32; len]), len, crate::DType::F32)
    }

    #[test]
    fn aliasing_compares_buffer_identity() {
        let (a, b, c) = (buf(4), buf(4), buf(4));
        assert_ne!(a.id(), b.id());
        assert!(not_aliased(&a, &[&b, &c], "op").is_ok());
        assert!(not_aliased(&a, &[], "op").is_ok());
        let err = not_aliased(&b, &[&a, &b], "matmul").unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("matmul: the output buffer must not also be an input"),
            "{err}"
        );
        assert!(distinct_outputs(&[&a, &b, &c], "op").is_ok());
        assert!(distinct_outputs(&[&a, &b, &a], "op").is_err());
    }
}
