//! Prefill once, fork per policy: snapshots of a prompt's prefill that rebuild the cache state
//! any policy and budget would have after prefilling the same prompt.
//!
//! # Why this is possible
//!
//! Prefill attention is exact for every policy (evicted pages are streamed back), so the
//! keys, values and layer outputs of a prompt do not depend on the policy. What a policy
//! decides during prefill is only *what is kept*:
//!
//! * page policies with a budget (`arkvale`, `streaming`) keep, after each chunk, sinks +
//!   window + the best pages for the chunk's last query (`make_resident_set` makes exactly
//!   that set resident, recalling what an earlier chunk evicted, so the final set depends on
//!   the last chunk's query and the digests only);
//! * `full` and `quest` keep every page (Quest's cuboid-max digests come from the keys);
//! * H2O accumulates the attention weights of every prompt query and keeps heavy hitters +
//!   recent tokens at the end of the prompt; TOVA keeps the tokens the last prompt token
//!   attends to most.
//!
//! A [`PrefillSnapshot`] records, for every layer and every prefill chunk, the chunk's keys and
//! values (f32, post-RoPE, as the model handed them to the cache), the chunk's last query, and
//! — when asked — the attention weights the token-level rules need (summed over each KV head's
//! query heads, exactly as `prefill_layer` computes them). [`CacheManager::fork_snapshot`]
//! replays the chunks into a new sequence of a manager with any policy and budget: it appends
//! the keys/values (sealing pages with *that* policy's digest and backups), runs the same
//! token-rule and page-selection steps `prefill_layer` runs after its attention, and skips the
//! attention itself.
//!
//! # What is exact
//!
//! For a prompt prefilled from an empty sequence in one [`CacheManager::prefill_layer`] pass per
//! layer and chunk (one `LlamaModel::prefill` call), the forked state equals the state the
//! target policy's own prefill produces, given the same keys/values/queries: the same pages
//! resident, the same digests, the same keep-masks and H2O scores — so decoding from it gives
//! the same logits. Keys/values/queries are bit-identical when the source and target prefill
//! computes bit-identical attention outputs, which holds for single-chunk prompts and for
//! policies that keep everything resident. For a multi-chunk prompt under a budgeted policy,
//! the direct prefill folds evicted pages into the online softmax after the resident ones, a
//! different floating-point summation order than a full cache's: its layer outputs (and so
//! later layers' keys and queries) may differ from the fork's in the last bits. The fork is
//! then what that policy's prefill computes in exact arithmetic; page selections can differ
//! only where two page scores tie within rounding.
//!
//! Token-level targets (H2O, TOVA) need the snapshot to carry token weights
//! ([`SnapshotOptions::token_weights`]) and a prompt that was prefilled with
//! a single final chunk (they drop tokens at the end of each `prefill` call; a later call would
//! attend with the keep-mask, which a snapshot of unmasked attention cannot reproduce).

use super::{CacheManager, SeqId};
use crate::{AttnPage, AttnRow, Buffer, DType, DeviceExt, Error, ModelShape, Result};

/// One prefill chunk of one layer, as the cache saw it.
#[derive(Debug, Clone)]
struct ChunkRecord {
    /// Keys `[n, Hkv, d]`, f32, post-RoPE.
    k: Vec<f32>,
    /// Values `[n, Hkv, d]`, f32.
    v: Vec<f32>,
    /// The chunk's last query `[H, d]`.
    last_q: Vec<f32>,
    /// Every query of the chunk `[n, H, d]`, if recorded.
    queries: Option<Vec<f32>>,
    /// Whether the chunk ended a `prefill` call (`last_chunk`).
    last_chunk: bool,
    /// H2O: attention weights of every query of the chunk, summed, `[kv_head][pos]`.
    all_weights: Option<Vec<Vec<f32>>>,
    /// TOVA: attention weights of the chunk's last query, `[kv_head][pos]` (final chunks).
    last_weights: Option<Vec<Vec<f32>>>,
}

/// What a snapshot records besides keys, values and each chunk's last query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The attention weights H2O and TOVA need (one more attention-sized pass per chunk), so
    /// that those policies can be forked too.
    pub token_weights: bool,
    /// Every query of the prompt (`[tokens, H, d]` per layer), for analyses such as digest
    /// recall; not needed to fork.
    pub queries: bool,
}

/// Capture state of one sequence while its prompt is prefilled.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    options: SnapshotOptions,
    /// Per layer, the chunks in order.
    layers: Vec<Vec<ChunkRecord>>,
}

/// What a prompt's prefill left for the cache, independent of the policy: replay it into any
/// manager of the same model shape with [`CacheManager::fork_snapshot`]. See the module docs
/// of `manager::fork` for what is exact.
#[derive(Debug, Clone)]
pub struct PrefillSnapshot {
    shape: ModelShape,
    token_weights: bool,
    layers: Vec<Vec<ChunkRecord>>,
}

impl PrefillSnapshot {
    /// Prompt tokens recorded.
    pub fn tokens(&self) -> usize {
        let row = self.shape.kv_heads * self.shape.head_dim;
        self.layers
            .first()
            .map_or(0, |l| l.iter().map(|c| c.k.len() / row).sum())
    }

    /// Whether token-level policies (H2O, TOVA) can be forked from it.
    pub fn has_token_weights(&self) -> bool {
        self.token_weights
    }

    /// The model shape it was recorded for.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Host bytes the snapshot holds (keys, values, queries and weights).
    pub fn bytes(&self) -> usize {
        let w = |o: &Option<Vec<Vec<f32>>>| o.as_ref().map_or(0, |v| v.iter().map(Vec::len).sum());
        4 * self
            .layers
            .iter()
            .flatten()
            .map(|c| {
                c.k.len()
                    + c.v.len()
                    + c.last_q.len()
                    + c.queries.as_ref().map_or(0, Vec::len)
                    + w(&c.all_weights)
                    + w(&c.last_weights)
            })
            .sum::<usize>()
    }

    /// The recorded keys of `layer`, `[tokens, Hkv, d]` f32 post-RoPE (all chunks in order).
    pub fn keys(&self, layer: usize) -> Option<Vec<f32>> {
        self.layers
            .get(layer)
            .map(|l| l.iter().flat_map(|c| c.k.iter().copied()).collect())
    }

    /// Every recorded query of `layer`, `[tokens, H, d]` f32 post-RoPE, if the snapshot was
    /// taken with [`SnapshotOptions::queries`].
    pub fn queries(&self, layer: usize) -> Option<Vec<f32>> {
        let l = self.layers.get(layer)?;
        let mut out = Vec::new();
        for c in l {
            out.extend_from_slice(c.queries.as_ref()?);
        }
        Some(out)
    }

    /// The last prompt token's query of `layer`, `[H, d]` f32 post-RoPE.
    pub fn last_query(&self, layer: usize) -> Option<&[f32]> {
        self.layers
            .get(layer)
            .and_then(|l| l.last())
            .map(|c| c.last_q.as_slice())
    }
}

impl CacheManager {
    /// Starts recording the prefill of sequence `seq` (which must be empty) into a
    /// [`PrefillSnapshot`], with the extras of `options`.
    pub fn begin_snapshot(&mut self, seq: SeqId, options: SnapshotOptions) -> Result<()> {
        let s = self.seq(seq)?;
        if s.layers.iter().any(|l| l.len > 0) {
            return Err(Error::InvalidRequest(format!(
                "a snapshot records a prompt from its start; sequence {} is not empty",
                seq.0
            )));
        }
        self.captures.insert(
            seq,
            super::fork::Capture {
                options,
                layers: vec![Vec::new(); self.shape.layers],
            },
        );
        Ok(())
    }

    /// Stops recording `seq` and returns what its prefill recorded.
    pub fn take_snapshot(&mut self, seq: SeqId) -> Result<PrefillSnapshot> {
        let cap = self.captures.remove(&seq).ok_or_else(|| {
            Error::InvalidRequest(format!("sequence {} is not being recorded", seq.0))
        })?;
        let counts: Vec<usize> = cap.layers.iter().map(Vec::len).collect();
        if counts.iter().any(|&c| c != counts[0]) || counts[0] == 0 {
            return Err(Error::InvalidRequest(format!(
                "the snapshot of sequence {} is incomplete: chunks per layer {counts:?} (prefill \
                 every layer of every chunk before taking it)",
                seq.0
            )));
        }
        Ok(PrefillSnapshot {
            shape: self.shape,
            token_weights: cap.options.token_weights,
            layers: cap.layers,
        })
    }

    /// Records one prefill chunk of `layer` of a recorded sequence (called by
    /// `prefill_layer` after its attention, with the chunk's rows and pages).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn capture_chunk(
        &mut self,
        layer: usize,
        seq: SeqId,
        q: &Buffer,
        k: &Buffer,
        v: &Buffer,
        n: usize,
        rows: &[AttnRow],
        pages: &[AttnPage],
        streamed: bool,
        last_chunk: bool,
    ) -> Result<()> {
        let Some(options) = self.captures.get(&seq).map(|c| c.options) else {
            return Ok(());
        };
        let token_weights = options.token_weights;
        let (h, hkv, d) = (self.shape.q_heads, self.shape.kv_heads, self.shape.head_dim);
        let dev = self.res.dev.clone();
        let kv = dev.download_f32_range(k, 0, n * hkv * d)?;
        let vv = dev.download_f32_range(v, 0, n * hkv * d)?;
        let last_q = dev.download_f32_range(q, (n - 1) * h * d, h * d)?;
        let queries = if options.queries {
            Some(dev.download_f32_range(q, 0, n * h * d)?)
        } else {
            None
        };
        let len = self.seqs[&seq].layers[layer].len;
        let (mut all_weights, mut last_weights) = (None, None);
        if token_weights {
            // Every earlier token must be in `pages` (a budgeted source streams evicted pages
            // separately, and their weights would be missing).
            if streamed {
                return Err(Error::InvalidRequest(
                    "token weights can only be recorded with a policy that keeps every page \
                     resident during prefill (e.g. full)"
                        .into(),
                ));
            }
            let w = self.token_weights(q, rows, pages)?;
            all_weights = Some(self.res.per_head_weights_all(rows, pages, &w, len));
            if last_chunk {
                let last: Vec<AttnRow> = rows
                    .iter()
                    .filter(|r| r.q_row as usize == n - 1)
                    .copied()
                    .collect();
                let w = self.token_weights(q, &last, pages)?;
                last_weights = Some(self.res.per_head_weights_all(&last, pages, &w, len));
            }
        }
        let cap = self.captures.get_mut(&seq).expect("checked");
        cap.layers[layer].push(ChunkRecord {
            k: kv,
            v: vv,
            last_q,
            queries,
            last_chunk,
            all_weights,
            last_weights,
        });
        Ok(())
    }

    /// Adds a sequence holding the state this manager's policy and budget would have after
    /// prefilling the snapshot's prompt (see the module docs of `manager::fork`), without
    /// computing any attention. Errors: another model shape, a token-level policy and a
    /// snapshot without token weights (or of several `prefill` calls), or any cache failure
    /// (the new sequence is then removed).
    pub fn fork_snapshot(&mut self, snap: &PrefillSnapshot) -> Result<SeqId> {
        if snap.shape != self.shape {
            return Err(Error::InvalidRequest(format!(
                "the snapshot is of model shape {:?}, this cache is for {:?}",
                snap.shape, self.shape
            )));
        }
        if let Some(rule) = self.policy.token_rule() {
            if !snap.token_weights {
                return Err(Error::InvalidRequest(format!(
                    "policy '{}' ({rule:?}) needs a snapshot recorded with token weights",
                    self.policy.name()
                )));
            }
            let chunks = &snap.layers[0];
            if chunks[..chunks.len() - 1].iter().any(|c| c.last_chunk) {
                return Err(Error::InvalidRequest(format!(
                    "policy '{}' can only be forked from a prompt prefilled in one call",
                    self.policy.name()
                )));
            }
        }
        let seq = self.add_sequence();
        match self.replay(seq, snap) {
            Ok(()) => Ok(seq),
            Err(e) => {
                let _ = self.remove_sequence(seq);
                Err(e)
            }
        }
    }

    fn replay(&mut self, seq: SeqId, snap: &PrefillSnapshot) -> Result<()> {
        let (h, hkv, d) = (self.shape.q_heads, self.shape.kv_heads, self.shape.head_dim);
        let dev = self.res.dev.clone();
        let chunks = snap.layers[0].len();
        for c in 0..chunks {
            for layer in 0..self.shape.layers {
                let rec = &snap.layers[layer][c];
                let n = rec.k.len() / (hkv * d);
                let plan = self.plan(layer);
                let kb = dev.upload_f32(&rec.k, DType::F32)?;
                let vb = dev.upload_f32(&rec.v, DType::F32)?;
                self.append_chunk(&plan, layer, seq, &kb, &vb, n)?;
                if let Some(rule) = plan.token_rule {
                    let missing = || Error::InvalidRequest("snapshot lacks token weights".into());
                    let budget_tokens = self.config.budget_tokens;
                    let ts = self.seqs.get_mut(&seq).expect("added").layers[layer]
                        .tokens
                        .as_mut()
                        .expect("token rule layers have token state");
                    if rule == crate::policy::TokenRule::H2O {
                        ts.accumulate(rec.all_weights.as_ref().ok_or_else(missing)?);
                    }
                    if rec.last_chunk {
                        let last = match rule {
                            crate::policy::TokenRule::H2O => None,
                            crate::policy::TokenRule::Tova => {
                                Some(rec.last_weights.as_deref().ok_or_else(missing)?)
                            }
                        };
                        let dropped = ts.after_prefill(rule, budget_tokens, last, h);
                        self.apply_drops(seq, layer, &dropped)?;
                    }
                }
                if plan.budgeted() {
                    let qb = dev.upload_f32(&rec.last_q, DType::F32)?;
                    let mass = self.prompt_end_mass(&plan, seq, layer, &qb, 0, rec.last_chunk)?;
                    self.select_after_prefill(&plan, seq, layer, &qb, 1, mass.as_deref())?;
                }
            }
        }
        Ok(())
    }
}
