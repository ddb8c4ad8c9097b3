//! Chunked prefill of one layer (see the module docs of `manager`).

use std::time::Instant;

use super::table::LayerPlan;
use super::{CacheManager, SeqId};
use crate::host_store::BackupId;
use crate::{
    AppendDest, AttnPage, AttnRow, Buffer, DType, DeviceExt, Error, EstimateJob, PrefillKeep,
    Result, TopkSegment,
};

/// The most slots prefill borrows from the pool at a time to stream evicted pages back for
/// its attention (freed again before the chunk returns). A pool sized for its sequences needs
/// this many slots spare while a prompt is prefilled.
pub const PREFILL_STAGING_SLOTS: usize = 8;

impl CacheManager {
    /// Prefills one chunk of a prompt in layer `layer` of sequence `seq`: appends `k`/`v`
    /// (f32 `[n, Hkv, d]`, post-RoPE) and writes the exact causal attention of the chunk's
    /// queries `q` (f32 `[n, H, d]`) over every earlier token and the chunk into `out`.
    /// `n` must not exceed `prefill_chunk_tokens`. Set `last_chunk` on the prompt's final
    /// chunk: token-level policies select their tokens then.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_layer(
        &mut self,
        layer: usize,
        seq: SeqId,
        q: &Buffer,
        k: &Buffer,
        v: &Buffer,
        out: &Buffer,
        last_chunk: bool,
    ) -> Result<()> {
        let q_row = self.shape.q_heads * self.shape.head_dim;
        let n = q.len() / q_row;
        if q.dtype() != DType::F32 || q.len() % q_row != 0 {
            return Err(Error::shape(format!(
                "q must be f32 [n, {}, {}], got {q:?}",
                self.shape.q_heads, self.shape.head_dim
            )));
        }
        if layer >= self.shape.layers {
            return Err(Error::InvalidRequest(format!(
                "layer {layer} out of {}",
                self.shape.layers
            )));
        }
        if n == 0 || n > self.config.prefill_chunk_tokens {
            return Err(Error::InvalidRequest(format!(
                "a prefill chunk must hold 1..={} tokens, got {n}; split the prompt",
                self.config.prefill_chunk_tokens
            )));
        }
        self.seq(seq)?;
        let (h, hkv, d) = (self.shape.q_heads, self.shape.kv_heads, self.shape.head_dim);
        self.check_rows("k", k, n, hkv)?;
        self.check_rows("v", v, n, hkv)?;
        self.check_rows("out", out, n, h)?;
        // The layer's last decode step may have left masses to apply (attention feedback):
        // apply them now, before this chunk changes the sequence's page tables, so that they
        // describe the tables they were measured on and cannot later overwrite the masses this
        // prefill sets (a chat turn prefilled after decode steps).
        self.apply_pending_mass(layer)?;
        let plan = self.plan(layer);
        let budget = self.budget;
        let p = budget.page_size;

        let start = self.append_chunk(&plan, layer, seq, k, v, n)?;

        // Exact causal attention: resident pages at once, evicted pages streamed back.
        let started = Instant::now();
        let state = self.res.dev.alloc_attn_state(n, h, d)?;
        let masked = plan.token_rule.is_some();
        let ls = &self.seqs[&seq].layers[layer];
        let len = ls.len;
        // Every group has a resident page (the chunk's last page), so every group gets rows.
        let (resident, evicted) = split_residency(ls)?;
        let (ranges, pages) = group_pages(&resident, p, len);
        let rows = chunk_rows(&ranges, n, start);
        let scale = self.scale;
        let layout = self.res.layout;
        let mask = if masked {
            self.res.masks.as_ref()
        } else {
            None
        };
        self.res.dev.prefill_attention(
            &layout,
            &self.res.pool,
            q,
            &rows,
            &pages,
            mask,
            scale,
            &state,
        )?;
        if !evicted.is_empty() {
            self.stream_evicted(q, n, start, len, &evicted, masked, &state)?;
        }
        self.res
            .dev
            .attention_finalize(&layout, &state, &rows, out)?;
        self.res.stats.time.attention += started.elapsed();
        if self.captures.contains_key(&seq) {
            let streamed = !evicted.is_empty();
            self.capture_chunk(layer, seq, q, k, v, n, &rows, &pages, streamed, last_chunk)?;
        }

        // Token-level baselines: H2O accumulates every prompt query's attention; TOVA keeps
        // what the last prompt token attends to.
        if let Some(rule) = plan.token_rule {
            let started = Instant::now();
            let weight_rows: Vec<AttnRow> = match rule {
                crate::policy::TokenRule::H2O => rows.clone(),
                crate::policy::TokenRule::Tova => rows
                    .iter()
                    .filter(|r| r.q_row as usize == n - 1)
                    .copied()
                    .collect(),
            };
            let mut per_head = None;
            if rule == crate::policy::TokenRule::H2O || last_chunk {
                let w = self.token_weights(q, &weight_rows, &pages)?;
                per_head = Some(self.res.per_head_weights_all(&weight_rows, &pages, &w, len));
            }
            let budget_tokens = self.config.budget_tokens;
            let q_heads = self.shape.q_heads;
            let ts = self.seqs.get_mut(&seq).expect("checked").layers[layer]
                .tokens
                .as_mut()
                .expect("token rule layers have token state");
            if rule == crate::policy::TokenRule::H2O
                && let Some(w) = &per_head
            {
                ts.accumulate(w);
            }
            if last_chunk {
                let dropped = ts.after_prefill(rule, budget_tokens, per_head.as_deref(), q_heads);
                self.apply_drops(seq, layer, &dropped)?;
            }
            self.res.stats.time.other += started.elapsed();
        }

        // Budgeted layers keep sinks + window + the best pages for the last query.
        if plan.budgeted() {
            let mass = self.prompt_end_mass(&plan, seq, layer, q, n - 1, last_chunk)?;
            self.select_after_prefill(&plan, seq, layer, q, n, mass.as_deref())?;
        }
        Ok(())
    }

    /// Under [`PrefillKeep::Attention`], at the end of a prompt (`last_chunk`) that exceeds
    /// the budget: the page masses of the last prompt query (row `q_row` of `q`), per group
    /// and page ([`CacheManager::last_query_mass`]); otherwise `None` (selection by digest).
    pub(super) fn prompt_end_mass(
        &mut self,
        plan: &LayerPlan,
        seq: SeqId,
        layer: usize,
        q: &Buffer,
        q_row: usize,
        last_chunk: bool,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        let over = self.seqs[&seq].layers[layer]
            .groups
            .iter()
            .any(|t| t.pages.len() > self.budget.pages);
        if !(last_chunk && over && plan.prefill_keep == PrefillKeep::Attention) {
            return Ok(None);
        }
        let started = Instant::now();
        let mass = self.last_query_mass(seq, layer, q, q_row)?;
        self.res.stats.time.estimate += started.elapsed();
        Ok(Some(mass))
    }

    /// Per head group, the attention mass ([`crate::mass::page_mass`]: softmax weight summed
    /// over the page, maximum over the group's query heads) of every page of `layer` of `seq`
    /// for query row `q_row` of `q` at the layer's last position. One decode-attention pass of
    /// that single query with page log-sum-exps: the resident pages at once, the evicted ones
    /// staged back through a few slots.
    fn last_query_mass(
        &mut self,
        seq: SeqId,
        layer: usize,
        q: &Buffer,
        q_row: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let gh = self.res.layout.heads_per_group * self.res.layout.gqa;
        let ls = &self.seqs[&seq].layers[layer];
        let len = ls.len;
        let mut lse: Vec<Vec<f32>> = ls
            .groups
            .iter()
            .map(|t| vec![f32::NEG_INFINITY; t.pages.len() * gh])
            .collect();
        let (resident, evicted) = split_residency(ls)?;
        self.page_lse_pass(q, q_row, len, &resident, &mut lse)?;
        self.staged(&evicted, |cm, staged| {
            cm.page_lse_pass(q, q_row, len, staged, &mut lse)
        })?;
        Ok(lse
            .iter()
            .map(|l| {
                let n_pages = l.len() / gh;
                let row = AttnRow {
                    page_count: n_pages as u32,
                    ..Default::default()
                };
                crate::mass::page_mass(l, &[row], gh, n_pages)
            })
            .collect())
    }

    /// Page log-sum-exps of query row `q_row` at position `len - 1` over `pages` (`(group, page
    /// index, slot)`, grouped by group), scattered into `lse[group][page * gh ..]`.
    fn page_lse_pass(
        &mut self,
        q: &Buffer,
        q_row: usize,
        len: usize,
        pages: &[(usize, usize, u32)],
        lse: &mut [Vec<f32>],
    ) -> Result<()> {
        if pages.is_empty() {
            return Ok(());
        }
        let p = self.budget.page_size;
        let layout = self.res.layout;
        let gh = layout.heads_per_group * layout.gqa;
        let (ranges, attn_pages) = group_pages(pages, p, len);
        let rows: Vec<AttnRow> = ranges
            .iter()
            .map(|r| AttnRow {
                q_row: q_row as u32,
                group: r.group as u32,
                pos: (len - 1) as u32,
                page_start: r.start,
                page_count: r.count,
            })
            .collect();
        let dev = self.res.dev.clone();
        let row_len = layout.q_heads() * layout.head_dim;
        super::grow(
            dev.as_ref(),
            &mut self.res.scratch_row,
            DType::F32,
            (q_row + 1) * row_len,
        )?;
        super::grow(
            dev.as_ref(),
            &mut self.res.scratch_lse,
            DType::F32,
            pages.len() * gh,
        )?;
        let (out, lse_buf) = (
            self.res.scratch_row.as_ref().expect("grown"),
            self.res.scratch_lse.as_ref().expect("grown"),
        );
        dev.decode_attention(
            &layout,
            &self.res.pool,
            q,
            &rows,
            &attn_pages,
            None,
            self.scale,
            out,
            Some(lse_buf),
        )?;
        let got = dev.download_f32_range(lse_buf, 0, pages.len() * gh)?;
        for (e, &(g, i, _)) in pages.iter().enumerate() {
            lse[g][i * gh..(i + 1) * gh].copy_from_slice(&got[e * gh..(e + 1) * gh]);
        }
        Ok(())
    }

    /// Recalls `evicted` pages (`(group, page index, backup)`) batch by batch into a few
    /// staging slots and calls `f` with each batch as `(group, page index, staging slot)`;
    /// the staging slots are freed whatever happens.
    fn staged(
        &mut self,
        evicted: &[(usize, usize, BackupId)],
        mut f: impl FnMut(&mut Self, &[(usize, usize, u32)]) -> Result<()>,
    ) -> Result<()> {
        if evicted.is_empty() {
            return Ok(());
        }
        let staging = self
            .res
            .slots
            .alloc_many(PREFILL_STAGING_SLOTS.min(evicted.len()))?;
        let result = (|| {
            for batch in evicted.chunks(staging.len()) {
                let copies: Vec<(u32, BackupId)> =
                    batch.iter().zip(&staging).map(|(e, &s)| (s, e.2)).collect();
                self.res.recall(&copies)?;
                let staged: Vec<(usize, usize, u32)> = batch
                    .iter()
                    .zip(&staging)
                    .map(|(e, &s)| (e.0, e.1, s))
                    .collect();
                f(self, &staged)?;
                self.res.stats.prefill_streamed += batch.len() as u64;
            }
            Ok(())
        })();
        for s in staging {
            self.res.slots.free(s);
        }
        result
    }

    /// Appends `n` tokens' keys and values to a layer of a sequence (chunk pages take fresh
    /// slots) and seals the pages they fill. Returns the position of the first new token.
    pub(super) fn append_chunk(
        &mut self,
        plan: &LayerPlan,
        layer: usize,
        seq: SeqId,
        k: &Buffer,
        v: &Buffer,
        n: usize,
    ) -> Result<usize> {
        let budget = self.budget;
        let p = budget.page_size;
        let groups = self.config.head_groups;
        // Append the chunk, then seal every page it filled.
        let started = Instant::now();
        let ls = &mut self.seqs.get_mut(&seq).expect("checked").layers[layer];
        let start = ls.len;
        let mut dests = Vec::with_capacity(n * groups);
        let mut filled = Vec::new();
        for i in 0..n {
            let pos = start + i;
            let (page, off) = (pos / p, pos % p);
            for (g, table) in ls.groups.iter_mut().enumerate() {
                let slot = self
                    .res
                    .slot_for_token(plan, &budget, table, (page, off), false)?;
                dests.push(AppendDest {
                    token: i as u32,
                    group: g as u32,
                    slot,
                    pos: off as u32,
                });
                if off + 1 == p {
                    filled.push((g, page, slot));
                }
            }
        }
        ls.len += n;
        if let Some(ts) = ls.tokens.as_mut() {
            ts.push_tokens(n);
        }
        self.res
            .dev
            .append_kv(&self.res.layout, &self.res.pool, k, v, &dests)?;
        let slots: Vec<u32> = filled.iter().map(|f| f.2).collect();
        let sealed = self.res.seal(plan, &slots)?;
        let ls = &mut self.seqs.get_mut(&seq).expect("checked").layers[layer];
        for ((g, page, _), s) in filled.into_iter().zip(sealed) {
            ls.groups[g].pages[page].digest = s.digest;
            ls.groups[g].pages[page].backup = s.backup;
        }
        self.res.stats.prefill_layer_tokens += n as u64;
        self.res.stats.time.other += started.elapsed();

        Ok(start)
    }

    /// Loads precomputed keys and values (f32 `[n, Hkv, d]`, post-RoPE) into a layer of a
    /// sequence without computing attention — restoring a saved cache or building a long
    /// context for benchmarks. Budgeted layers then keep sinks + window + the pages ranked
    /// best for `query` (f32 `[1, H, d]`), exactly as after a prefill chunk. Token-level
    /// policies need attention weights, so they are refused. `n` may exceed the prefill chunk:
    /// the tokens are loaded chunk by chunk.
    pub fn load_layer(
        &mut self,
        layer: usize,
        seq: SeqId,
        k: &[f32],
        v: &[f32],
        query: &Buffer,
    ) -> Result<()> {
        self.seq(seq)?;
        if layer >= self.shape.layers {
            return Err(Error::InvalidRequest(format!(
                "layer {layer} out of {}",
                self.shape.layers
            )));
        }
        let plan = self.plan(layer);
        if plan.token_rule.is_some() {
            return Err(Error::InvalidRequest(format!(
                "policy '{}' needs attention weights; use prefill_layer",
                self.policy.name()
            )));
        }
        let row = self.shape.kv_heads * self.shape.head_dim;
        if k.len() != v.len() || k.len() % row != 0 {
            return Err(Error::shape(format!(
                "k and v must both be [n, {}, {}]",
                self.shape.kv_heads, self.shape.head_dim
            )));
        }
        self.check_rows("query", query, 1, self.shape.q_heads)?;
        let chunk = self.config.prefill_chunk_tokens;
        let dev = self.res.dev.clone();
        for (kc, vc) in k.chunks(chunk * row).zip(v.chunks(chunk * row)) {
            let kb = dev.upload_f32(kc, DType::F32)?;
            let vb = dev.upload_f32(vc, DType::F32)?;
            self.append_chunk(&plan, layer, seq, &kb, &vb, kc.len() / row)?;
            if plan.budgeted() {
                self.select_after_prefill(&plan, seq, layer, query, 1, None)?;
            }
        }
        Ok(())
    }

    /// Streams evicted pages through staging slots and folds them into `state`.
    #[allow(clippy::too_many_arguments)]
    fn stream_evicted(
        &mut self,
        q: &Buffer,
        n: usize,
        start: usize,
        len: usize,
        evicted: &[(usize, usize, BackupId)],
        masked: bool,
        state: &crate::AttnState,
    ) -> Result<()> {
        let p = self.budget.page_size;
        self.staged(evicted, |cm, staged| {
            let (ranges, pages) = group_pages(staged, p, len);
            let rows = chunk_rows(&ranges, n, start);
            let mask = if masked { cm.res.masks.as_ref() } else { None };
            cm.res.dev.prefill_attention(
                &cm.res.layout,
                &cm.res.pool,
                q,
                &rows,
                &pages,
                mask,
                cm.scale,
                state,
            )
        })
    }

    /// After a chunk: for each group with more than `B` pages keep sinks + window + the
    /// `B - sinks - window` candidates ranked best for the chunk's last query — by digest
    /// score, or, when `mass` (per group, per page) is given, by attention mass (ties: the
    /// lower page index), which then also becomes every page's observed mass.
    pub(super) fn select_after_prefill(
        &mut self,
        plan: &LayerPlan,
        seq: SeqId,
        layer: usize,
        q: &Buffer,
        n: usize,
        mass: Option<&[Vec<f32>]>,
    ) -> Result<()> {
        let budget = self.budget;
        let keep_top = budget.pages - budget.sinks - plan.window;
        let ls = &self.seqs[&seq].layers[layer];
        let mut jobs = Vec::new();
        let mut segments = Vec::new();
        let mut groups_scored = Vec::new();
        for (g, table) in ls.groups.iter().enumerate() {
            let n_pages = table.pages.len();
            if n_pages <= budget.pages {
                continue;
            }
            let cands = plan.candidates(&budget, n_pages);
            let k = keep_top.min(cands.len());
            let start = jobs.len();
            if mass.is_none() && plan.digest.is_some() && k > 0 && k < cands.len() {
                for i in cands.clone() {
                    let digest = table.pages[i].digest.ok_or_else(|| {
                        Error::InvalidRequest(format!("candidate page {i} has no digest"))
                    })?;
                    jobs.push(EstimateJob {
                        q_row: (n - 1) as u32,
                        group: g as u32,
                        digest,
                    });
                }
                segments.push(TopkSegment {
                    start: start as u32,
                    len: cands.len() as u32,
                    k: k as u32,
                });
            }
            groups_scored.push((g, cands, k, start));
        }
        let started = Instant::now();
        let picks_total: usize = segments.iter().map(|s| s.k as usize).sum();
        let picks = if jobs.is_empty() {
            Vec::new()
        } else {
            self.estimate_and_pick(plan, q, &jobs, &segments, picks_total)?
        };
        self.res.stats.pages_scored += jobs.len() as u64;
        self.res.stats.time.estimate += started.elapsed();

        let mut pick_at = 0;
        for (g, cands, k, _) in groups_scored {
            let table = &mut self.seqs.get_mut(&seq).expect("checked").layers[layer].groups[g];
            let n_pages = table.pages.len();
            let mut keep = vec![true; n_pages];
            if let Some(mass) = mass {
                for (page, &m) in table.pages.iter_mut().zip(&mass[g]) {
                    page.mass = m;
                }
            }
            if k < cands.len() {
                keep[cands.clone()].fill(false);
                if let Some(mass) = mass {
                    let mut order: Vec<usize> = cands.clone().collect();
                    order.sort_by(|&a, &b| mass[g][b].total_cmp(&mass[g][a]));
                    for &i in &order[..k] {
                        keep[i] = true;
                    }
                } else if plan.digest.is_some() && k > 0 {
                    for &i in &picks[pick_at..pick_at + k] {
                        keep[cands.start + i as usize] = true;
                    }
                    pick_at += k;
                }
            }
            let started = Instant::now();
            self.res.make_resident_set(table, &keep)?;
            self.res.stats.time.recall += started.elapsed();
        }
        Ok(())
    }

    /// Softmax weights of `rows` (keep-mask applied) summed over query heads, aligned with
    /// `pages` (`[page][hg][p]`), read back to the host. Token-level layers only.
    pub(super) fn token_weights(
        &mut self,
        q: &Buffer,
        rows: &[AttnRow],
        pages: &[AttnPage],
    ) -> Result<Vec<f32>> {
        let n = pages.len() * self.res.layout.tokens_per_slot();
        let dev = self.res.dev.clone();
        super::grow(
            dev.as_ref(),
            &mut self.res.scratch_weights,
            DType::F32,
            n.max(1),
        )?;
        let w = self.res.scratch_weights.as_ref().expect("grown");
        dev.fill_f32(w, 0, n, 0.0)?;
        let mask = self.res.masks.as_ref();
        dev.attention_weights(
            &self.res.layout,
            &self.res.pool,
            q,
            rows,
            pages,
            mask,
            self.scale,
            w,
        )?;
        dev.download_f32_range(w, 0, n)
    }
}

impl super::Resources {
    /// Sums the token weights of every row into `[kv_head][pos]` vectors of length `len`.
    pub(super) fn per_head_weights_all(
        &self,
        rows: &[AttnRow],
        pages: &[AttnPage],
        weights: &[f32],
        len: usize,
    ) -> Vec<Vec<f32>> {
        // Rows sharing a page range were already summed on the device; visit each range once.
        let mut seen = std::collections::BTreeSet::new();
        let firsts: Vec<AttnRow> = rows
            .iter()
            .filter(|r| seen.insert((r.group, r.page_start)))
            .map(|r| AttnRow { q_row: 0, ..*r })
            .collect();
        self.per_head_weights(&firsts, pages, weights, 0, len)
    }
}

/// The resident pages of a layer as `(group, page index, slot)` and the evicted ones as
/// `(group, page index, backup)`, group by group in page order.
#[allow(clippy::type_complexity)]
fn split_residency(
    ls: &super::table::LayerState,
) -> Result<(Vec<(usize, usize, u32)>, Vec<(usize, usize, BackupId)>)> {
    let (mut resident, mut evicted) = (Vec::new(), Vec::new());
    for (g, table) in ls.groups.iter().enumerate() {
        for (i, entry) in table.pages.iter().enumerate() {
            match (entry.slot, entry.backup) {
                (Some(slot), _) => resident.push((g, i, slot)),
                (None, Some(b)) => evicted.push((g, i, b)),
                (None, None) => {
                    return Err(Error::InvalidRequest(format!(
                        "page {i} is neither resident nor backed up"
                    )));
                }
            }
        }
    }
    Ok((resident, evicted))
}

/// One group's run of a page list.
struct GroupRange {
    /// Head group.
    group: usize,
    /// First page of the run.
    start: u32,
    /// Pages in the run.
    count: u32,
}

/// The page list of `pages` (`(group, page index, slot)`, grouped by group) in a layer of
/// `len` tokens, and the range each group's run occupies in it.
fn group_pages(
    pages: &[(usize, usize, u32)],
    p: usize,
    len: usize,
) -> (Vec<GroupRange>, Vec<AttnPage>) {
    let (mut ranges, mut out) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < pages.len() {
        let group = pages[i].0;
        let start = out.len() as u32;
        while i < pages.len() && pages[i].0 == group {
            out.push(attn_page(pages[i].2, pages[i].1, p, len));
            i += 1;
        }
        ranges.push(GroupRange {
            group,
            start,
            count: out.len() as u32 - start,
        });
    }
    (ranges, out)
}

/// The rows of a prefill chunk of `n` queries at positions `start..start + n`, for every
/// group's page range (group by group, query rows in order).
fn chunk_rows(ranges: &[GroupRange], n: usize, start: usize) -> Vec<AttnRow> {
    ranges
        .iter()
        .flat_map(|r| {
            (0..n).map(move |i| AttnRow {
                q_row: i as u32,
                group: r.group as u32,
                pos: (start + i) as u32,
                page_start: r.start,
                page_count: r.count,
            })
        })
        .collect()
}

/// The attention view of page `index` of a (layer, group) holding `len` tokens.
pub(super) fn attn_page(slot: u32, index: usize, p: usize, len: usize) -> AttnPage {
    AttnPage {
        slot,
        base_pos: (index * p) as u32,
        len: (len - index * p).min(p) as u32,
    }
}
