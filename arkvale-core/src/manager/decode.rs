//! One decode layer-step for a batch of sequences (see the module docs of `manager`).

use std::time::Instant;

use super::table::{GroupTable, LayerPlan};
use super::tokens::Dropped;
use super::{CacheManager, SeqId};
use crate::policy::{AttendScope, Residency};
use crate::{
    AppendDest, AttnPage, AttnRow, Buffer, DType, DeviceExt, Error, EstimateJob, PageBudget,
    Result, TopkSegment, VictimRule,
};

/// The page log-sum-exps one layer's last decode attention wrote (attention feedback): the
/// device buffer, reused step after step, and what its entries belong to until they are read.
#[derive(Debug, Default)]
pub(crate) struct LayerMass {
    /// `[pages][hg * gqa]` f32, written by `decode_attention`.
    buf: Option<Buffer>,
    /// What the entries belong to; `None` once read (or before the first write).
    pending: Option<PendingMass>,
}

/// What the page log-sum-exps of one decode attention belong to: its rows (row `r` of the
/// step reads query row `r.q_row` of `seqs[r.q_row]`, group `r.group`) and its batch.
#[derive(Debug)]
struct PendingMass {
    /// The attention's rows.
    rows: Vec<AttnRow>,
    /// The step's batch.
    seqs: Vec<SeqId>,
}

/// Where one (row, group)'s candidates sit in the step's ranking.
struct ScoredGroup {
    row: usize,
    group: usize,
    first_candidate: usize,
    /// Candidates (the device ranks all of them).
    len: usize,
    /// Offset of this group's ranking in the step's picks.
    pick_start: usize,
    /// Top-k: the first `k` of the ranking.
    k: usize,
}

impl CacheManager {
    /// Runs decode layer `layer` for one new token of each sequence in `seqs` (row `i` of the
    /// inputs belongs to `seqs[i]`): appends `k`/`v` (f32 `[n, Hkv, d]`, keys after RoPE),
    /// selects, recalls and attends with `q` (f32 `[n, H, d]`), writing `out` (f32 `[n, H, d]`).
    pub fn decode_layer(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &Buffer,
        k: &Buffer,
        v: &Buffer,
        out: &Buffer,
    ) -> Result<()> {
        let n = seqs.len();
        self.check_batch(layer, seqs)?;
        let (h, hkv) = (self.shape.q_heads, self.shape.kv_heads);
        self.check_rows("q", q, n, h)?;
        self.check_rows("k", k, n, hkv)?;
        self.check_rows("v", v, n, hkv)?;
        self.check_rows("out", out, n, h)?;
        let plan = self.plan(layer);
        let budget = self.budget;
        let p = budget.page_size;
        let groups = self.config.head_groups;

        // 1–2. Append, then seal the pages that became full.
        let started = Instant::now();
        let mut dests = Vec::with_capacity(n * groups);
        let mut filled = Vec::new();
        for (row, id) in seqs.iter().enumerate() {
            let ls = &mut self.seqs.get_mut(id).expect("checked").layers[layer];
            let (page, off) = (ls.len / p, ls.len % p);
            for (g, table) in ls.groups.iter_mut().enumerate() {
                let slot = self
                    .res
                    .slot_for_token(&plan, &budget, table, (page, off), true)?;
                dests.push(AppendDest {
                    token: row as u32,
                    group: g as u32,
                    slot,
                    pos: off as u32,
                });
                if off + 1 == p {
                    filled.push((*id, g, page, slot));
                }
            }
            ls.len += 1;
            if let Some(ts) = ls.tokens.as_mut() {
                ts.push_tokens(1);
            }
        }
        self.res
            .dev
            .append_kv(&self.res.layout, &self.res.pool, k, v, &dests)?;
        let slots: Vec<u32> = filled.iter().map(|f| f.3).collect();
        let sealed = self.res.seal(&plan, &slots)?;
        for ((id, g, page, _), s) in filled.into_iter().zip(sealed) {
            let entry =
                &mut self.seqs.get_mut(&id).expect("checked").layers[layer].groups[g].pages[page];
            entry.digest = s.digest;
            entry.backup = s.backup;
        }
        self.res.stats.time.other += started.elapsed();

        // 3. Estimate and select on the device; read the selection back.
        let started = Instant::now();
        let mut scored: Vec<ScoredGroup> = Vec::new();
        let mut jobs = Vec::new();
        let mut segments = Vec::new();
        let mut picks_total = 0;
        if plan.digest.is_some() && plan.topk > 0 {
            for (row, id) in seqs.iter().enumerate() {
                let ls = &self.seqs[id].layers[layer];
                for (g, table) in ls.groups.iter().enumerate() {
                    let n_pages = table.pages.len();
                    let cands = plan.candidates(&budget, n_pages);
                    if n_pages <= budget.pages || cands.is_empty() {
                        continue;
                    }
                    let start = jobs.len();
                    for i in cands.clone() {
                        let digest = table.pages[i].digest.ok_or_else(|| {
                            Error::InvalidRequest(format!("candidate page {i} has no digest"))
                        })?;
                        jobs.push(EstimateJob {
                            q_row: row as u32,
                            group: g as u32,
                            digest,
                        });
                    }
                    // The whole ranking comes back, not only the top-k: its tail orders the
                    // recall victims, so no scores need to be read back.
                    segments.push(TopkSegment {
                        start: start as u32,
                        len: cands.len() as u32,
                        k: cands.len() as u32,
                    });
                    scored.push(ScoredGroup {
                        row,
                        group: g,
                        first_candidate: cands.start,
                        len: cands.len(),
                        pick_start: picks_total,
                        k: plan.topk.min(cands.len()),
                    });
                    picks_total += cands.len();
                }
            }
        }
        let picks = if jobs.is_empty() {
            Vec::new()
        } else {
            self.estimate_and_pick(&plan, q, &jobs, &segments, picks_total)?
        };
        self.res.stats.pages_scored += jobs.len() as u64;
        let feedback = plan.victims == VictimRule::Attention
            && plan.residency == (Residency::Budget { recall: true });
        if feedback && !jobs.is_empty() {
            // The selection was just read back, so the device has long finished the layer's
            // previous attention: reading its page masses costs no extra wait.
            self.apply_pending_mass(layer)?;
        }
        self.res.stats.time.estimate += started.elapsed();

        // 4. Plan recalls (evicted top-k into the lowest-ranked resident candidates' slots)
        //    and the page list of every attention row.
        let started = Instant::now();
        let mut copies = Vec::new();
        let mut rows = Vec::with_capacity(n * groups);
        let mut attn_pages = Vec::new();
        let mut scored_iter = scored.iter().peekable();
        for (row, id) in seqs.iter().enumerate() {
            let ls = &mut self.seqs.get_mut(id).expect("checked").layers[layer];
            let len = ls.len;
            for (g, table) in ls.groups.iter_mut().enumerate() {
                let mut top: Vec<usize> = Vec::new();
                if let Some(sg) = scored_iter.next_if(|sg| sg.row == row && sg.group == g) {
                    let ranking: Vec<usize> = picks[sg.pick_start..sg.pick_start + sg.len]
                        .iter()
                        .map(|&i| sg.first_candidate + i as usize)
                        .collect();
                    top = ranking[..sg.k].to_vec();
                    if plan.residency == (Residency::Budget { recall: true }) {
                        let recalled = self.res.plan_recalls(
                            table,
                            &budget,
                            &ranking,
                            sg.k,
                            plan.victims,
                            &mut copies,
                        )?;
                        self.res.stats.recalls += recalled as u64;
                    }
                }
                let chosen = attended_pages(table, &plan, &budget, &top);
                let page_start = attn_pages.len() as u32;
                for &i in &chosen {
                    let slot = table.pages[i].slot.ok_or_else(|| {
                        Error::InvalidRequest(format!("attended page {i} is not resident"))
                    })?;
                    attn_pages.push(super::prefill::attn_page(slot, i, p, len));
                }
                rows.push(AttnRow {
                    q_row: row as u32,
                    group: g as u32,
                    pos: (len - 1) as u32,
                    page_start,
                    page_count: chosen.len() as u32,
                });
                table.last_attended = chosen.iter().map(|&i| i as u32).collect();
            }
        }
        self.res.stats.time.select += started.elapsed();
        self.res.recall(&copies)?;

        // 5. Attention (with the pages' log-sum-exps under attention feedback).
        let started = Instant::now();
        let mask = plan.token_rule.and(self.res.masks.as_ref());
        let gh = self.res.layout.heads_per_group * self.res.layout.gqa;
        let dev = self.res.dev.clone();
        let lm = &mut self.res.pending_mass[layer];
        if feedback {
            super::grow(
                dev.as_ref(),
                &mut lm.buf,
                DType::F32,
                (attn_pages.len() * gh).max(1),
            )?;
        }
        dev.decode_attention(
            &self.res.layout,
            &self.res.pool,
            q,
            &rows,
            &attn_pages,
            mask,
            self.scale,
            out,
            if feedback { lm.buf.as_ref() } else { None },
        )?;
        self.res.stats.time.attention += started.elapsed();
        self.res.stats.decode_layer_steps += n as u64;

        // Token-level baselines: update keep-masks from this step's weights.
        if let Some(rule) = plan.token_rule {
            let started = Instant::now();
            let weights = self.token_weights(q, &rows, &attn_pages)?;
            let budget_tokens = self.config.budget_tokens;
            let q_heads = self.shape.q_heads;
            let mut dropped_all = Vec::new();
            for (row, id) in seqs.iter().enumerate() {
                let ls = &mut self.seqs.get_mut(id).expect("checked").layers[layer];
                let per_head = self
                    .res
                    .per_head_weights(&rows, &attn_pages, &weights, row, ls.len);
                let ts = ls
                    .tokens
                    .as_mut()
                    .expect("token rule layers have token state");
                let dropped = ts.after_decode(rule, budget_tokens, &per_head, q_heads);
                dropped_all.push((*id, dropped));
            }
            for (id, dropped) in dropped_all {
                self.apply_drops(id, layer, &dropped)?;
            }
            self.res.stats.time.other += started.elapsed();
        }
        if feedback {
            // Read at the layer's next step (`apply_pending_mass`).
            self.res.pending_mass[layer].pending = Some(PendingMass {
                rows,
                seqs: seqs.to_vec(),
            });
        }
        Ok(())
    }

    /// Estimates every job, selects each segment's top-k on the device, and reads the picks
    /// picks back (the step's one host synchronization).
    pub(super) fn estimate_and_pick(
        &mut self,
        plan: &LayerPlan,
        q: &Buffer,
        jobs: &[EstimateJob],
        segments: &[TopkSegment],
        picks_total: usize,
    ) -> Result<Vec<u32>> {
        let kind = plan.digest.expect("scored layers have a digest");
        let res = &mut self.res;
        let dev = res.dev.clone();
        super::grow(
            dev.as_ref(),
            &mut res.scratch_scores,
            DType::F32,
            jobs.len(),
        )?;
        super::grow(
            dev.as_ref(),
            &mut res.scratch_picks,
            DType::U32,
            picks_total.max(1),
        )?;
        let (scores_buf, picks_buf) = (
            res.scratch_scores.as_ref().expect("grown"),
            res.scratch_picks.as_ref().expect("grown"),
        );
        let digests = res
            .digests
            .as_ref()
            .expect("scored layers have digests")
            .buffer();
        dev.estimate(
            &res.layout,
            kind,
            self.config.score_agg,
            digests,
            q,
            jobs,
            scores_buf,
        )?;
        dev.topk(scores_buf, segments, picks_buf)?;
        dev.download_u32(picks_buf, 0, picks_total)
    }

    /// Turns the page log-sum-exps of layer `layer`'s last decode attention into the masses
    /// of the pages it read ([`crate::mass::page_mass`]); every other page of those
    /// (sequence, group) tables gets mass 0. Sequences removed since are skipped.
    pub(super) fn apply_pending_mass(&mut self, layer: usize) -> Result<()> {
        let lm = &mut self.res.pending_mass[layer];
        let (Some(PendingMass { rows, seqs }), Some(buf)) = (lm.pending.take(), lm.buf.as_ref())
        else {
            return Ok(());
        };
        let gh = self.res.layout.heads_per_group * self.res.layout.gqa;
        let pages_len = rows
            .iter()
            .map(|r| (r.page_start + r.page_count) as usize)
            .max()
            .unwrap_or(0);
        let lse = self.res.dev.download_f32_range(buf, 0, pages_len * gh)?;
        let mass = crate::mass::page_mass(&lse, &rows, gh, pages_len);
        for row in &rows {
            let Some(seq) = self.seqs.get_mut(&seqs[row.q_row as usize]) else {
                continue;
            };
            let table = &mut seq.layers[layer].groups[row.group as usize];
            for page in &mut table.pages {
                page.mass = 0.0;
            }
            for (k, &pi) in table.last_attended.iter().enumerate() {
                table.pages[pi as usize].mass = mass[row.page_start as usize + k];
            }
        }
        Ok(())
    }

    /// Writes the dropped tokens' keep-mask bytes to zero.
    pub(super) fn apply_drops(
        &mut self,
        id: SeqId,
        layer: usize,
        dropped: &[Dropped],
    ) -> Result<()> {
        let Some(mask) = self.res.masks.as_ref() else {
            return Ok(());
        };
        let layout = self.res.layout;
        let p = layout.page_size;
        let ls = &self.seqs[&id].layers[layer];
        for d in dropped {
            let (g, j) = (
                d.kv_head / layout.heads_per_group,
                d.kv_head % layout.heads_per_group,
            );
            let slot = ls.groups[g].pages[d.pos / p].slot.ok_or_else(|| {
                Error::InvalidRequest("token-level policies keep every page resident".into())
            })?;
            let offset = slot as usize * layout.tokens_per_slot() + j * p + d.pos % p;
            self.res.dev.write(mask, offset, &[0u8])?;
        }
        self.res.stats.tokens_evicted += dropped.len() as u64;
        Ok(())
    }

    /// Checks a decode batch: a valid layer, known and distinct sequences, every sequence at
    /// this layer exactly one token behind the previous layer.
    fn check_batch(&self, layer: usize, seqs: &[SeqId]) -> Result<()> {
        if layer >= self.shape.layers {
            return Err(Error::InvalidRequest(format!(
                "layer {layer} out of {}",
                self.shape.layers
            )));
        }
        if seqs.is_empty() {
            return Err(Error::InvalidRequest("empty decode batch".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in seqs {
            if !seen.insert(*id) {
                return Err(Error::InvalidRequest(format!(
                    "sequence {} twice in a batch",
                    id.0
                )));
            }
            self.seq(*id)?;
        }
        Ok(())
    }
}

impl super::Resources {
    /// For one scored (sequence, group) with its candidates `ranking` (page indices, best
    /// first, as the device's top-k ranked them): recalls the evicted pages among the first `k`
    /// into the slots of the resident candidates outside them that `victims` orders first:
    /// the lowest-ranked ones, or (attention feedback) those with the least attention mass,
    /// ties to the lower-ranked (or free slots while under budget). Returns how many pages
    /// it recalls; the copies go to `copies`.
    fn plan_recalls(
        &mut self,
        table: &mut GroupTable,
        budget: &PageBudget,
        ranking: &[usize],
        k: usize,
        victims: VictimRule,
        copies: &mut Vec<(u32, crate::host_store::BackupId)>,
    ) -> Result<usize> {
        let (top, rest) = ranking.split_at(k);
        let missing: Vec<usize> = top
            .iter()
            .copied()
            .filter(|&i| table.pages[i].slot.is_none())
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        // Worst-ranked first: the ranking's tail, reversed; under attention feedback a stable
        // sort by mass keeps that order among equal masses.
        let mut order: Vec<usize> = rest
            .iter()
            .rev()
            .copied()
            .filter(|&i| table.pages[i].slot.is_some())
            .collect();
        if victims == VictimRule::Attention {
            order.sort_by(|&a, &b| table.pages[a].mass.total_cmp(&table.pages[b].mass));
        }
        let mut victims = order.into_iter();
        for &page in &missing {
            let slot = match victims.next() {
                Some(v) => self.evict(table, v)?,
                None if table.resident < budget.pages => self.slots.alloc()?,
                None => {
                    return Err(Error::InvalidRequest(format!(
                        "no slot for recalled page {page}: {} resident of budget {}",
                        table.resident, budget.pages
                    )));
                }
            };
            let backup = table.pages[page].backup.ok_or_else(|| {
                Error::InvalidRequest(format!("evicted page {page} has no backup"))
            })?;
            table.pages[page].slot = Some(slot);
            table.resident += 1;
            copies.push((slot, backup));
        }
        Ok(missing.len())
    }

    /// Splits one row's summed token weights into `[kv_head][pos]` vectors of length `len`.
    pub(super) fn per_head_weights(
        &self,
        rows: &[AttnRow],
        pages: &[AttnPage],
        weights: &[f32],
        q_row: usize,
        len: usize,
    ) -> Vec<Vec<f32>> {
        let layout = &self.layout;
        let (hg, p) = (layout.heads_per_group, layout.page_size);
        let mut out = vec![vec![0f32; len]; layout.kv_heads()];
        for r in rows.iter().filter(|r| r.q_row as usize == q_row) {
            for pi in r.page_start..r.page_start + r.page_count {
                let page = &pages[pi as usize];
                for j in 0..hg {
                    let head = r.group as usize * hg + j;
                    for t in 0..page.len as usize {
                        let pos = page.base_pos as usize + t;
                        out[head][pos] += weights[(pi as usize * hg + j) * p + t];
                    }
                }
            }
        }
        out
    }
}

/// Pages a decode row attends, ascending: all resident pages, or sinks + top-k + window.
fn attended_pages(
    table: &GroupTable,
    plan: &LayerPlan,
    budget: &PageBudget,
    top: &[usize],
) -> Vec<usize> {
    let n_pages = table.pages.len();
    let resident = || {
        (0..n_pages)
            .filter(|&i| table.pages[i].slot.is_some())
            .collect()
    };
    if n_pages <= budget.pages || plan.attend == AttendScope::Resident {
        return resident();
    }
    let cands = plan.candidates(budget, n_pages);
    let mut chosen: Vec<usize> = (0..cands.start).chain(cands.end..n_pages).collect();
    chosen.extend_from_slice(top);
    chosen.sort_unstable();
    chosen
}
