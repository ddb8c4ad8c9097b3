//! Paged attention: decode (flash-decoding), prefill (tiled, online softmax into an
//! [`AttnState`](arkvale_core::AttnState)), finalize, and the token weights of H2O/TOVA.
//!
//! # Work decomposition
//!
//! Rows are gathered into **blocks**: consecutive rows of the same head group over the same
//! page range (the common prefill case: every query token of a chunk over the same pages), at
//! most [`ROW_BLOCK`] rows. A **task** is one block × one **chunk** of the block's pages
//! (flash-decoding's split of the key sequence); chunks are made small enough that there are a
//! few tasks per thread. A task walks its pages slot by slot (each slot is read front to back,
//! which keeps the memory streams sequential, and the next page's slot is prefetched while
//! one is computed), and for each KV head of the group scores every query head of the block
//! that shares that KV head against the page's keys (a `rows × gqa × p` score tile, never a
//! full score matrix), and folds it into running softmax partials `(max, sum, acc)` with one
//! rescale per page. With four or more queries per KV head the page's keys are first
//! transposed into an f32 tile (widened in registers on the way), which every query then
//! reuses; with fewer the scores read the keys from the pool as stored. Values are always read
//! as stored, widened in registers (one pass per pair of queries). The tasks of a block are then
//! merged in chunk order by online-softmax rescaling:
//!
//! ```text
//! m = max(m_a, m_b);  sum = sum_a e^(m_a - m) + sum_b e^(m_b - m);  acc likewise
//! ```
//!
//! Decode divides the merged partials into the output; prefill merges them into the state
//! (same rule), so a long prefix can be streamed through in several calls; finalize divides.
//! Every partial is a pure function of the inputs, and results are scattered to their query
//! row by one task per row in row order, so duplicate rows behave as in the sequential
//! reference.

use std::ops::Range;

use arkvale_core::{AttnPage, AttnRow, KvLayout};

use crate::attn_tile::{KEY_PAD, TRANSPOSE_FROM, scores, scores_rows, transpose, weighted_values};
use crate::elem::{KvElem, exp_lane, exp_shifted, max_lanes, prefetch, sum_lanes};
use crate::par::Par;
use crate::scatter::{chunks_mut, group_by_target};

/// Most query rows scored together against one page tile.
pub(crate) const ROW_BLOCK: usize = 16;

/// Tasks to aim for per worker thread (load balance across uneven chunks).
const TASKS_PER_THREAD: usize = 4;

/// The inputs of one attention op (descriptors validated).
pub(crate) struct Problem<'a, T> {
    /// Where the work runs.
    pub par: Par,
    /// Pool geometry.
    pub l: &'a KvLayout,
    /// The pool's elements.
    pub pool: &'a [T],
    /// Queries, f32 `[rows, H, d]`.
    pub q: &'a [f32],
    /// Attention rows.
    pub rows: &'a [AttnRow],
    /// The page list the rows index.
    pub pages: &'a [AttnPage],
    /// Keep-mask `[slots][hg][p]`, if any.
    pub mask: Option<&'a [u8]>,
    /// Score scale.
    pub scale: f32,
}

/// Online-softmax partials of every (row, query head of the row's group), flat and indexed by
/// `row * gh + j` (`gh = hg * gqa`); `acc` has `d` values per entry (empty when values were not
/// wanted).
pub(crate) struct Partials {
    gh: usize,
    d: usize,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

impl Partials {
    /// `(max, sum, acc)` of query head `j` of row `r`.
    fn get(&self, r: usize, j: usize) -> (f32, f32, &[f32]) {
        let t = r * self.gh + j;
        let acc = if self.acc.is_empty() {
            &[][..]
        } else {
            &self.acc[t * self.d..(t + 1) * self.d]
        };
        (self.m[t], self.l[t], acc)
    }
}

/// Folds the partial `(mb, lb, accb)` into `(m, l, acc)` (online-softmax merge). An empty side
/// (`sum == 0`) contributes nothing, so merging into a freshly reset state copies.
fn merge(m: &mut f32, l: &mut f32, acc: &mut [f32], mb: f32, lb: f32, accb: &[f32]) {
    if lb == 0.0 {
        return;
    }
    if *l == 0.0 {
        *m = mb;
        *l = lb;
        acc.copy_from_slice(accb);
        return;
    }
    let nm = m.max(mb);
    let (a, b) = ((*m - nm).exp(), (mb - nm).exp());
    *l = *l * a + lb * b;
    for (x, y) in acc.iter_mut().zip(accb) {
        *x = *x * a + *y * b;
    }
    *m = nm;
}

/// Consecutive rows of one group over one page range.
struct Block {
    rows: Range<usize>,
    group: usize,
    pages: Range<usize>,
}

/// Gathers rows into blocks (see the module doc).
fn blocks(rows: &[AttnRow]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for (n, r) in rows.iter().enumerate() {
        let pages = r.page_start as usize..r.page_start as usize + r.page_count as usize;
        match out.last_mut() {
            Some(b)
                if b.group == r.group as usize && b.pages == pages && b.rows.len() < ROW_BLOCK =>
            {
                b.rows.end = n + 1;
            }
            _ => out.push(Block {
                rows: n..n + 1,
                group: r.group as usize,
                pages,
            }),
        }
    }
    out
}

/// One unit of parallel work: a block and a chunk of its pages (all KV heads of the group).
struct Task {
    block: usize,
    pages: Range<usize>,
}

/// Splits every block's pages into chunks so that there are about `TASKS_PER_THREAD ×
/// threads` tasks; a block's tasks are consecutive, chunks in order.
fn tasks(blocks: &[Block], threads: usize) -> Vec<Task> {
    let split = (TASKS_PER_THREAD * threads)
        .div_ceil(blocks.len().max(1))
        .max(1);
    let mut out = Vec::new();
    for (b, blk) in blocks.iter().enumerate() {
        let per = blk.pages.len().div_ceil(split).max(1);
        let mut start = blk.pages.start;
        loop {
            let end = (start + per).min(blk.pages.end);
            out.push(Task {
                block: b,
                pages: start..end,
            });
            if end >= blk.pages.end {
                break;
            }
            start = end;
        }
    }
    out
}

/// Partials of one task: `m`, `l` per (query head of the group, row of the block, query
/// head of that KV head), `acc` `d` values each (when values are wanted); entry
/// `h * rows * gqa + row_in_block * gqa + jj` (see [`TaskOut::entry`]), so that the entries
/// of one KV head are contiguous. With page log-sum-exps wanted, `lse[(page - task start) *
/// entries + entry]`.
struct TaskOut {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    lse: Vec<f32>,
}

impl TaskOut {
    /// The entry of query head `j` of the group (`h * gqa + jj`) for row `ri` of a block of
    /// `rows` rows.
    fn entry(rows: usize, gqa: usize, ri: usize, j: usize) -> usize {
        (j / gqa) * rows * gqa + ri * gqa + j % gqa
    }
}

/// What a pass over the keys produces besides `(max, sum)`.
#[derive(Clone, Copy)]
pub(crate) struct Want {
    /// The weighted values (`acc`).
    pub values: bool,
    /// The log-sum-exp of every (page, query head).
    pub lse: bool,
}

/// Scratch tiles of one task: one page of one KV head's keys transposed and widened to f32
/// (empty when the scores read the pool as stored), the scores (then weights) of the KV
/// head's queries against it, and each query's rescale factor for the page.
struct Tiles {
    kt: Vec<f32>,
    s: Vec<f32>,
    alpha: Vec<f32>,
}

/// Runs one task (see [`run_task_body`]), compiled for AVX2 + FMA + F16C where the CPU has
/// them (the same code: wider vectors for widening, masking and the exponentials).
fn run_task<T: KvElem>(pb: &Problem<'_, T>, blk: &Block, task: &Task, want: Want) -> TaskOut {
    #[cfg(target_arch = "x86_64")]
    if crate::elem::has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features `run_task_avx2` is compiled for.
        return unsafe { run_task_avx2(pb, blk, task, want) };
    }
    run_task_body(pb, blk, task, want)
}

/// [`run_task_body`] compiled with AVX2, FMA and F16C enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn run_task_avx2<T: KvElem>(pb: &Problem<'_, T>, blk: &Block, task: &Task, want: Want) -> TaskOut {
    run_task_body(pb, blk, task, want)
}

/// Runs one task: for each page of the chunk (a slot is read front to back; the next one is
/// prefetched) and each KV head, transposes the head's keys into an f32 tile once when at
/// least [`TRANSPOSE_FROM`] queries share them (else the kernels read them as stored), scores
/// every query of the block that shares that KV head against them in one tile product, folds
/// each query's scores into its running softmax (one rescale per page) and adds the weighted
/// values in a second tile product (see [`crate::attn_tile`]).
#[inline(always)]
fn run_task_body<T: KvElem>(pb: &Problem<'_, T>, blk: &Block, task: &Task, want: Want) -> TaskOut {
    let values = want.values;
    let l = pb.l;
    let (d, p, gqa, hg) = (l.head_dim, l.page_size, l.gqa, l.heads_per_group);
    let rows = &pb.rows[blk.rows.clone()];
    // Queries per KV head (the block's rows × the head's query heads), and in all.
    let ne = rows.len() * gqa;
    let nq = hg * ne;
    // The block's queries of the group, KV head by KV head: entry `h * ne + ri * gqa + jj`.
    let mut qs = vec![0f32; nq * d];
    for (ri, row) in rows.iter().enumerate() {
        for h in 0..hg {
            let src = (row.q_row as usize * l.q_heads() + (blk.group * hg + h) * gqa) * d;
            let dst = (h * ne + ri * gqa) * d;
            // The score scale is applied to the queries once instead of to every score.
            for (x, &y) in qs[dst..dst + gqa * d]
                .iter_mut()
                .zip(&pb.q[src..src + gqa * d])
            {
                *x = y * pb.scale;
            }
        }
    }
    let mut out = TaskOut {
        m: vec![f32::NEG_INFINITY; nq],
        l: vec![0f32; nq],
        acc: vec![0f32; if values { nq * d } else { 0 }],
        lse: vec![f32::NEG_INFINITY; if want.lse { task.pages.len() * nq } else { 0 }],
    };
    let np = p.next_multiple_of(KEY_PAD);
    // Enough queries per KV head: transpose each page's keys once (widened) and let every
    // query reuse the tile. Fewer: the scores read the pool as stored.
    let tiled = ne >= TRANSPOSE_FROM;
    let mut tiles = Tiles {
        kt: vec![0f32; if tiled { d * np } else { 0 }],
        s: vec![0f32; ne * np],
        alpha: vec![1f32; ne],
    };
    let task_pages = &pb.pages[task.pages.clone()];
    let slot_elems = l.slot_elems();
    for (pn, page) in task_pages.iter().enumerate() {
        if let Some(next) = task_pages.get(pn + 1) {
            let at = next.slot as usize * slot_elems;
            prefetch(&pb.pool[at..at + slot_elems]);
        }
        let n = page.len as usize;
        // Tokens of this page each row may see (causality: base_pos + i <= pos).
        let reach = |row: &AttnRow| {
            row.pos
                .checked_sub(page.base_pos)
                .map(|r| n.min(r as usize + 1))
        };
        if n == 0 || rows.iter().all(|r| reach(r).is_none()) {
            continue;
        }
        let slot = page.slot as usize;
        for h in 0..hg {
            let ko = l.k_offset(slot, h, 0);
            let vo = l.v_offset(slot, h, 0);
            let (keys, vals) = (&pb.pool[ko..ko + n * d], &pb.pool[vo..vo + n * d]);
            let qh = &qs[h * ne * d..(h + 1) * ne * d];
            if tiled {
                transpose(keys, n, d, &mut tiles.kt, np);
                scores(qh, ne, d, &tiles.kt, np, &mut tiles.s);
            } else {
                scores_rows(qh, ne, d, keys, n, np, &mut tiles.s);
            }
            let keep = pb
                .mask
                .map(|m| &m[(slot * hg + h) * p..(slot * hg + h + 1) * p]);
            // Softmax bookkeeping per query; the scores become weights, 0 past each row's
            // reach (so the value product can run to the longest reach of the block).
            let mut nk = 0;
            for (ri, row) in rows.iter().enumerate() {
                let nr = reach(row).unwrap_or(0);
                for jj in 0..gqa {
                    let e = ri * gqa + jj;
                    let t = h * ne + e;
                    let s = &mut tiles.s[e * np..(e + 1) * np];
                    let (alpha, lse) = match fold_scores(s, nr, keep, &mut out, t, want.lse) {
                        Some(folded) => {
                            nk = nk.max(nr);
                            folded
                        }
                        None => (1.0, f32::NEG_INFINITY), // no participant: entry unchanged
                    };
                    tiles.alpha[e] = alpha;
                    if want.lse {
                        out.lse[pn * nq + t] = lse;
                    }
                }
            }
            if values && nk > 0 {
                let acc = &mut out.acc[h * ne * d..(h + 1) * ne * d];
                weighted_values(&tiles.s, np, nk, vals, d, &tiles.alpha, acc);
            }
        }
    }
    out
}

/// Sets the scores of the tokens `keep` drops (a 0 entry) to `-inf`, so that they weigh 0.
#[inline(always)]
fn mask_dropped(s: &mut [f32], keep: Option<&[u8]>) {
    if let Some(keep) = keep {
        for (x, &k) in s.iter_mut().zip(keep) {
            if k == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// Folds one page's scores `s` (already scaled; the first `nr` tokens may take part) into
/// entry `t` of `out`: drops the tokens `keep` masks, moves the running maximum to `m`
/// (rescaling the running sum by `alpha = e^(old m - m)`, 0 before the first participant),
/// turns the scores into weights `e^(s - m)` (exactly 0 for masked tokens, those past `nr`
/// and any below e^-87 of the maximum) and adds their sum. Returns `alpha`, by which the
/// caller rescales its running output, and (when `lse` is wanted, else `-inf`) the page's
/// log-sum-exp `m + ln Σ e^(s - m)`. `None`, with `s` zeroed and `out` unchanged, when no
/// token of the page takes part.
#[inline(always)]
fn fold_scores(
    s: &mut [f32],
    nr: usize,
    keep: Option<&[u8]>,
    out: &mut TaskOut,
    t: usize,
    lse: bool,
) -> Option<(f32, f32)> {
    mask_dropped(&mut s[..nr], keep);
    s[nr..].fill(0.0);
    let page_max = max_lanes(&s[..nr]);
    if page_max == f32::NEG_INFINITY {
        s[..nr].fill(0.0);
        return None;
    }
    let old = out.m[t];
    let m = old.max(page_max);
    let alpha = if m == old { 1.0 } else { exp_lane(old - m) };
    exp_shifted(&mut s[..nr], m);
    let page_sum = sum_lanes(&s[..nr]);
    out.l[t] = out.l[t] * alpha + page_sum;
    out.m[t] = m;
    Some((
        alpha,
        if lse {
            m + page_sum.ln()
        } else {
            f32::NEG_INFINITY
        },
    ))
}

/// The softmax partials of every row over all its pages: tasks in parallel, then the chunks of
/// each block merged in order. With `want.values == false` only `(max, sum)` are made; with
/// `want.lse` the pages' log-sum-exps are written to `lse` (`[page][gh]`, see
/// `Device::decode_attention`).
pub(crate) fn partials<T: KvElem>(
    pb: &Problem<'_, T>,
    want: Want,
    lse: Option<&mut [f32]>,
) -> Partials {
    let values = want.values;
    let l = pb.l;
    let d = l.head_dim;
    let gh = l.heads_per_group * l.gqa;
    let blocks = blocks(pb.rows);
    let tasks = tasks(&blocks, pb.par.threads());
    let outs: Vec<TaskOut> = pb
        .par
        .map(&tasks, |t| run_task(pb, &blocks[t.block], t, want));
    let n = pb.rows.len() * gh;
    let mut res = Partials {
        gh,
        d,
        m: vec![f32::NEG_INFINITY; n],
        l: vec![0f32; n],
        acc: vec![0f32; if values { n * d } else { 0 }],
    };
    // Merge each task into its rows' entries; a block's chunks arrive in order.
    // O(tasks × block × gh × d): small next to the tasks themselves.
    for (task, o) in tasks.iter().zip(&outs) {
        let blk = &blocks[task.block];
        for (ri, r) in blk.rows.clone().enumerate() {
            for j in 0..gh {
                let (t, e) = (TaskOut::entry(blk.rows.len(), l.gqa, ri, j), r * gh + j);
                let (acc, accb) = if values {
                    (&mut res.acc[e * d..(e + 1) * d], &o.acc[t * d..(t + 1) * d])
                } else {
                    (&mut [][..], &[][..])
                };
                merge(&mut res.m[e], &mut res.l[e], acc, o.m[t], o.l[t], accb);
            }
        }
    }
    if let Some(lse) = lse {
        // Page ranges do not overlap when log-sum-exps are wanted, so a block that covers
        // pages holds one row: its entries are the first `gh` of each page's, in head order.
        for (task, o) in tasks.iter().zip(&outs) {
            let nq = blocks[task.block].rows.len() * gh;
            for (pn, pi) in task.pages.clone().enumerate() {
                lse[pi * gh..(pi + 1) * gh].copy_from_slice(&o.lse[pn * nq..pn * nq + gh]);
            }
        }
    }
    res
}

/// Decode attention: partials divided into `out` (`[rows, H, d]`), zeros for rows with no
/// participant; only each row's group's heads are written. With `lse`, also the pages'
/// log-sum-exps (`[page][gh]`; the rows' page ranges do not overlap).
pub(crate) fn decode<T: KvElem>(pb: &Problem<'_, T>, out: &mut [f32], lse: Option<&mut [f32]>) {
    let want = Want {
        values: true,
        lse: lse.is_some(),
    };
    let parts = partials(pb, want, lse);
    let l = pb.l;
    let (d, gh) = (l.head_dim, l.heads_per_group * l.gqa);
    let row_len = l.q_heads() * d;
    let targets: Vec<usize> = pb.rows.iter().map(|r| r.q_row as usize).collect();
    let groups = group_by_target(&targets);
    let dst = chunks_mut(out, row_len, groups.iter().map(|g| g.0));
    pb.par.for_each(
        dst.into_iter().zip(&groups).collect(),
        |(dst, (_, items))| {
            for &r in items {
                let first = pb.rows[r].group as usize * gh;
                for j in 0..gh {
                    let (_, sum, acc) = parts.get(r, j);
                    let o = &mut dst[(first + j) * d..(first + j + 1) * d];
                    for (x, a) in o.iter_mut().zip(acc) {
                        *x = if sum > 0.0 { a / sum } else { 0.0 };
                    }
                }
            }
        },
    );
}

/// The state buffers of a prefill, as mutable slices.
pub(crate) struct StateMut<'a> {
    /// `acc [rows, H, d]`.
    pub acc: &'a mut [f32],
    /// `max [rows, H]`.
    pub max: &'a mut [f32],
    /// `sum [rows, H]`.
    pub sum: &'a mut [f32],
}

/// Prefill attention: merges every row's partials over its pages into the state.
pub(crate) fn prefill<T: KvElem>(pb: &Problem<'_, T>, state: StateMut<'_>) {
    let parts = partials(
        pb,
        Want {
            values: true,
            lse: false,
        },
        None,
    );
    let l = pb.l;
    let (d, gh, heads) = (l.head_dim, l.heads_per_group * l.gqa, l.q_heads());
    let targets: Vec<usize> = pb.rows.iter().map(|r| r.q_row as usize).collect();
    let groups = group_by_target(&targets);
    let touched = || groups.iter().map(|g| g.0);
    let acc = chunks_mut(state.acc, heads * d, touched());
    let max = chunks_mut(state.max, heads, touched());
    let sum = chunks_mut(state.sum, heads, touched());
    let items: Vec<_> = acc.into_iter().zip(max).zip(sum).zip(&groups).collect();
    pb.par.for_each(items, |(((acc, max), sum), (_, items))| {
        for &r in items {
            let first = pb.rows[r].group as usize * gh;
            for j in 0..gh {
                let (mb, lb, accb) = parts.get(r, j);
                let head = first + j;
                let a = &mut acc[head * d..(head + 1) * d];
                merge(&mut max[head], &mut sum[head], a, mb, lb, accb);
            }
        }
    });
}

/// Finalize: `out = acc / sum` for each row's group heads, zeros where `sum == 0`.
pub(crate) fn finalize(
    par: Par,
    l: &KvLayout,
    acc: &[f32],
    sum: &[f32],
    rows: &[AttnRow],
    out: &mut [f32],
) {
    let (d, gh, heads) = (l.head_dim, l.heads_per_group * l.gqa, l.q_heads());
    let targets: Vec<usize> = rows.iter().map(|r| r.q_row as usize).collect();
    let groups = group_by_target(&targets);
    let dst = chunks_mut(out, heads * d, groups.iter().map(|g| g.0));
    par.for_each(
        dst.into_iter().zip(&groups).collect(),
        |(dst, (q_row, items))| {
            for &r in items {
                let first = rows[r].group as usize * gh;
                for head in first..first + gh {
                    let s = sum[q_row * heads + head];
                    let a = &acc[(q_row * heads + head) * d..(q_row * heads + head + 1) * d];
                    for (x, y) in dst[head * d..(head + 1) * d].iter_mut().zip(a) {
                        *x = if s != 0.0 { y / s } else { 0.0 };
                    }
                }
            }
        },
    );
}

/// Token weights: adds each row's softmax probabilities, summed over the query heads that share
/// a KV head, to `weights[page index][h][i]`. Pass 1 finds every row's `(max, sum)`; pass 2
/// runs one task per (page of the list, KV head), which scores the rows reading that page
/// block by block with pass 1's tile products (keys widened and transposed once per page for
/// prefill blocks, read as stored for decode's few queries) and adds their probabilities in
/// row order: each weight has a single writer.
pub(crate) fn weights<T: KvElem>(pb: &Problem<'_, T>, weights: &mut [f32]) {
    let parts = partials(
        pb,
        Want {
            values: false,
            lse: false,
        },
        None,
    );
    let l = pb.l;
    let (d, p, gqa, hg) = (l.head_dim, l.page_size, l.gqa, l.heads_per_group);
    let n = pb.pages.len() * hg * p;
    pb.par.for_each(
        weights[..n].chunks_mut(p).enumerate().collect(),
        |(c, w)| {
            let (pi, h) = (c / hg, c % hg);
            let page = &pb.pages[pi];
            let len = page.len as usize;
            if len == 0 {
                return;
            }
            // The rows that attend this page, with the tokens of it each may see.
            let seen: Vec<(usize, usize)> = pb
                .rows
                .iter()
                .enumerate()
                .filter(|(_, row)| {
                    (row.page_start as usize..row.page_start as usize + row.page_count as usize)
                        .contains(&pi)
                })
                .filter_map(|(r, row)| {
                    let reach = row.pos.checked_sub(page.base_pos)?;
                    Some((r, len.min(reach as usize + 1)))
                })
                .collect();
            if seen.is_empty() {
                return;
            }
            let slot = page.slot as usize;
            let keep = pb
                .mask
                .map(|m| &m[(slot * hg + h) * p..(slot * hg + h + 1) * p]);
            // Scored block by block of rows as the first pass scores them (scale folded into
            // the queries): many queries per block against the page's keys widened and
            // transposed once (on first use), few (decode) straight from the pool.
            let np = len.next_multiple_of(KEY_PAD);
            let ko = l.k_offset(slot, h, 0);
            let keys = &pb.pool[ko..ko + len * d];
            let mut kt: Vec<f32> = Vec::new();
            let block_rows = seen.len().min(ROW_BLOCK);
            let mut qs = vec![0f32; block_rows * gqa * d];
            let mut s = vec![0f32; block_rows * gqa * np];
            for block in seen.chunks(ROW_BLOCK) {
                let ne = block.len() * gqa;
                for (bi, &(r, _)) in block.iter().enumerate() {
                    let row = &pb.rows[r];
                    let head0 = (row.group as usize * hg + h) * gqa;
                    let src = &pb.q[(row.q_row as usize * l.q_heads() + head0) * d..][..gqa * d];
                    for (x, &y) in qs[bi * gqa * d..(bi + 1) * gqa * d].iter_mut().zip(src) {
                        *x = y * pb.scale;
                    }
                }
                if ne < TRANSPOSE_FROM {
                    scores_rows(&qs[..ne * d], ne, d, keys, len, np, &mut s[..ne * np]);
                } else {
                    if kt.is_empty() {
                        kt = vec![0f32; d * np];
                        transpose(keys, len, d, &mut kt, np);
                    }
                    scores(&qs[..ne * d], ne, d, &kt, np, &mut s[..ne * np]);
                }
                for (bi, &(r, nr)) in block.iter().enumerate() {
                    for jj in 0..gqa {
                        let (m, sum, _) = parts.get(r, h * gqa + jj);
                        if sum == 0.0 {
                            continue;
                        }
                        let e = &mut s[(bi * gqa + jj) * np..][..nr];
                        mask_dropped(e, keep);
                        exp_shifted(e, m);
                        for (x, &y) in w[..nr].iter_mut().zip(e.iter()) {
                            *x += y / sum;
                        }
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_the_softmax_of_the_union() {
        // Two halves of scores [1, 3] and [2] with values [10, 30] and [20].
        let (mut m, mut l, mut acc) = (3.0f32, 1.0 + (-2f32).exp(), [30.0 + 10.0 * (-2f32).exp()]);
        merge(&mut m, &mut l, &mut acc, 2.0, 1.0, &[20.0]);
        let w: Vec<f64> = [1.0f64, 3.0, 2.0].iter().map(|s| (s - 3.0).exp()).collect();
        let want = (10.0 * w[0] + 30.0 * w[1] + 20.0 * w[2]) / w.iter().sum::<f64>();
        assert!(((acc[0] / l) as f64 - want).abs() < 1e-5);
        // Merging an empty partial changes nothing; merging into an empty one copies.
        merge(&mut m, &mut l, &mut acc, f32::NEG_INFINITY, 0.0, &[0.0]);
        assert_eq!(m, 3.0);
        let (mut m2, mut l2, mut a2) = (f32::NEG_INFINITY, 0.0, [0.0]);
        merge(&mut m2, &mut l2, &mut a2, m, l, &acc);
        assert_eq!((m2, l2, a2), (m, l, acc));
    }

    #[test]
    fn tasks_cover_every_page_once_in_order() {
        let rows: Vec<AttnRow> = (0..40)
            .map(|i| AttnRow {
                q_row: i,
                group: 0,
                pos: 100,
                page_start: 0,
                page_count: 7,
            })
            .chain([AttnRow {
                q_row: 0,
                group: 1,
                pos: 5,
                page_start: 3,
                page_count: 0,
            }])
            .collect();
        let b = blocks(&rows);
        assert_eq!(
            b.iter().map(|b| b.rows.len()).collect::<Vec<_>>(),
            vec![16, 16, 8, 1]
        );
        for threads in [1, 2, 16, 64] {
            let t = tasks(&b, threads);
            for (bi, blk) in b.iter().enumerate() {
                let covered: Vec<usize> = t
                    .iter()
                    .filter(|t| t.block == bi)
                    .flat_map(|t| t.pages.clone())
                    .collect();
                assert_eq!(covered, blk.pages.clone().collect::<Vec<_>>());
            }
        }
    }
}
