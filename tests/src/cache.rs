//! Cache-level cases: the manager driving a backend through prefill and decode, checked
//! against exact f64 attention over the shadow of every stored token (DESIGN.md §2).

use std::sync::Arc;

use arkvale_core::manager::SeqId;
use arkvale_core::policy::{POLICY_NAMES, Residency};
use arkvale_core::{
    CacheConfig, Device, Error, KvDtype, ModelShape, PrefillKeep, ScoreAgg, VictimRule,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::Case;
use crate::driver::{Harness, compare};

/// Relative error allowed between a backend's attention and f64 over the same stored values
/// (storage rounding is in the shadow too, so this is f32 arithmetic error only).
const TOL: f64 = 1e-5;

/// The cache-level cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "cache::budget_covering_sequence_equals_full_bitwise",
            run: budget_covering_equals_full,
        },
        Case {
            name: "cache::outputs_match_selected_tokens_every_policy",
            run: outputs_match_selected_tokens,
        },
        Case {
            name: "cache::invariants_hold_over_random_runs",
            run: invariants_hold,
        },
        Case {
            name: "cache::host_overflow_spills_and_stays_exact",
            run: spill_stays_exact,
        },
        Case {
            name: "cache::exhausted_tiers_are_clear_errors",
            run: exhausted_tiers_are_errors,
        },
        Case {
            name: "cache::fig1d_recall_recovers_what_streaming_loses",
            run: fig1d_recall,
        },
        Case {
            name: "cache::removing_sequences_frees_every_tier",
            run: removal_frees_everything,
        },
        Case {
            name: "cache::recall_displaces_the_lowest_ranked_residents",
            run: victims_are_lowest_ranked,
        },
        Case {
            name: "cache::attention_feedback_keeps_what_attention_read",
            run: victims_follow_attention_mass,
        },
    ]
}

/// A random cache scenario.
#[derive(Debug, Clone)]
struct Scenario {
    shape: ModelShape,
    groups: usize,
    dense: usize,
    page: usize,
    budget_pages: usize,
    topk_pages: usize,
    chunk_pages: usize,
    prompts: Vec<usize>,
    steps: Vec<usize>,
    dtype: KvDtype,
    seed: u64,
    /// Bits of ArkVale's selection rules: 1 attention-feedback victims, 2 attention-mass
    /// prefill selection, 4 max score aggregation (the paper's rules at 0).
    rules: u8,
}

impl Scenario {
    fn config(&self) -> CacheConfig {
        let p = self.page;
        let max_tokens = self
            .prompts
            .iter()
            .zip(&self.steps)
            .map(|(a, b)| a + b)
            .max()
            .unwrap_or(0);
        let pages_per_seq = max_tokens / p + 2;
        let slot =
            2 * (self.shape.kv_heads / self.groups) * p * self.shape.head_dim * self.dtype.size();
        let slots = self.prompts.len()
            * self.shape.layers
            * self.groups
            * (pages_per_seq + self.chunk_pages)
            + 16;
        CacheConfig {
            page_size: p,
            budget_tokens: self.budget_pages * p,
            topk_tokens: Some(self.topk_pages * p),
            sink_pages: 1,
            window_pages: 2,
            dense_layers: self.dense,
            head_groups: self.groups,
            kv_dtype: self.dtype,
            device_bytes: slots * slot,
            host_bytes: slots * slot,
            prefill_chunk_tokens: self.chunk_pages * p,
            victims: if self.rules & 1 != 0 {
                VictimRule::Attention
            } else {
                VictimRule::Digest
            },
            prefill_keep: if self.rules & 2 != 0 {
                PrefillKeep::Attention
            } else {
                PrefillKeep::Digest
            },
            score_agg: if self.rules & 4 != 0 {
                ScoreAgg::Max
            } else {
                ScoreAgg::Mean
            },
            ..CacheConfig::default()
        }
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::sample::select(vec![1usize, 3, 4, 8]),
        prop::sample::select(vec![1usize, 2, 4]),
        prop::sample::select(vec![4usize, 8, 16]),
        1usize..=3,
        prop::sample::select(vec![8usize, 16, 32]),
        4usize..=8,
        1usize..=3,
        1usize..=4,
        any::<u64>(),
        prop::sample::select(vec![KvDtype::F32, KvDtype::F16, KvDtype::BF16]),
        0u8..8,
    )
        .prop_flat_map(
            |(gqa, kv, d, layers, page, budget, chunk, batch, seed, dtype, rules)| {
                let groups = prop::sample::select(
                    vec![1usize, 2, 4]
                        .into_iter()
                        .filter(|g| kv % g == 0)
                        .collect::<Vec<_>>(),
                );
                (
                    Just((gqa, kv, d, layers, page, budget, chunk, seed, dtype, rules)),
                    groups,
                    0..=layers.min(1),
                    1..=budget - 3,
                    prop::collection::vec(1usize..=12 * page, batch),
                    prop::collection::vec(1usize..=2 * page + 2, batch),
                )
            },
        )
        .prop_map(
            |(
                (gqa, kv, d, layers, page, budget, chunk, seed, dtype, rules),
                groups,
                dense,
                topk,
                prompts,
                steps,
            )| {
                Scenario {
                    shape: ModelShape {
                        layers,
                        q_heads: kv * gqa,
                        kv_heads: kv,
                        head_dim: d,
                    },
                    groups,
                    dense,
                    page,
                    budget_pages: budget,
                    topk_pages: topk,
                    chunk_pages: chunk,
                    prompts,
                    steps,
                    dtype,
                    seed,
                    rules,
                }
            },
        )
}

/// Runs `body` on random scenarios with a fresh seed (or `PROPTEST_RNG_SEED`).
fn check_scenarios(
    cases: u32,
    body: impl Fn(&Scenario) -> Result<(), String>,
) -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&scenario(), |s| body(&s).map_err(TestCaseError::fail))
        .map_err(|e| e.to_string())
}

/// Prefills every prompt, then decodes with ragged stops; calls `after_step` after each
/// prefill and each decode step. Returns every decode output in order.
fn drive(
    h: &mut Harness,
    s: &Scenario,
    mut after_step: impl FnMut(&Harness, &[SeqId]) -> Result<(), String>,
) -> Result<Vec<Vec<f32>>, String> {
    let ids: Vec<SeqId> = s.prompts.iter().map(|_| h.add()).collect();
    for (id, &n) in ids.iter().zip(&s.prompts) {
        h.prefill(*id, n, TOL)?;
        after_step(h, &ids)?;
    }
    let mut outs = Vec::new();
    for step in 0..s.steps.iter().copied().max().unwrap_or(0) {
        let batch: Vec<SeqId> = ids
            .iter()
            .zip(&s.steps)
            .filter(|(_, n)| **n > step)
            .map(|(id, _)| *id)
            .collect();
        outs.extend(
            h.decode(&batch, TOL)
                .map_err(|e| format!("step {step}: {e}"))?,
        );
        after_step(h, &ids)?;
    }
    Ok(outs)
}

fn budget_covering_equals_full(dev: &Arc<dyn Device>) -> Result<(), String> {
    check_scenarios(12, |s| {
        let cfg = s.config();
        let max_tokens = s
            .prompts
            .iter()
            .zip(&s.steps)
            .map(|(a, b)| a + b)
            .max()
            .unwrap_or(0);
        let pages = max_tokens.div_ceil(s.page).max(s.budget_pages);
        let big = CacheConfig {
            budget_tokens: pages * s.page,
            topk_tokens: Some(s.page),
            ..cfg.clone()
        };
        let mut full = Harness::new(dev, s.shape, cfg, "full", s.seed)?;
        let mut ark = Harness::new(dev, s.shape, big, "arkvale", s.seed)?;
        let a = drive(&mut full, s, |_, _| Ok(()))?;
        let b = drive(&mut ark, s, |_, _| Ok(()))?;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x.iter().zip(y).any(|(p, q)| p.to_bits() != q.to_bits()) {
                return Err(format!(
                    "layer-step {i}: arkvale with a covering budget differs from full"
                ));
            }
        }
        Ok(())
    })
}

fn outputs_match_selected_tokens(dev: &Arc<dyn Device>) -> Result<(), String> {
    for policy in POLICY_NAMES {
        check_scenarios(6, |s| {
            let mut h = Harness::new(dev, s.shape, s.config(), policy, s.seed)?;
            drive(&mut h, s, |_, _| Ok(())).map(|_| ())
        })
        .map_err(|e| format!("policy {policy}: {e}"))?;
    }
    Ok(())
}

fn invariants_hold(dev: &Arc<dyn Device>) -> Result<(), String> {
    for policy in ["arkvale", "streaming", "quest", "h2o"] {
        check_scenarios(8, |s| {
            let mut h = Harness::new(dev, s.shape, s.config(), policy, s.seed)?;
            drive(&mut h, s, check_invariants).map(|_| ())
        })
        .map_err(|e| format!("policy {policy}: {e}"))?;
    }
    Ok(())
}

/// DESIGN.md §2 invariants for every sequence, layer and group of `h`.
fn check_invariants(h: &Harness, ids: &[SeqId]) -> Result<(), String> {
    let cache = &h.cache;
    let cfg = cache.config();
    let b = *cache.budget();
    let shape = *cache.shape();
    let hg = shape.kv_heads / cfg.head_groups;
    let budgeted = matches!(cache.policy().residency(), Residency::Budget { .. });
    let window = cache.policy().window_pages(&b);
    let layout = *cache.layout();
    for &id in ids {
        for layer in 0..shape.layers {
            let len = cache.seq_len(id, layer).map_err(|e| e.to_string())?;
            for g in 0..cfg.head_groups {
                let pages = cache.pages(id, layer, g).map_err(|e| e.to_string())?;
                let resident = pages.iter().filter(|p| p.slot.is_some()).count();
                let n = pages.len();
                let at = format!("seq {} layer {layer} group {g}", id.0);
                if budgeted && layer >= cfg.dense_layers {
                    if resident > b.pages {
                        return Err(format!("{at}: {resident} resident > budget {}", b.pages));
                    }
                    for p in &pages {
                        let protected = p.index < b.sinks || p.index + window >= n;
                        if protected && p.slot.is_none() {
                            return Err(format!("{at}: sink/window page {} not resident", p.index));
                        }
                        if p.len == cfg.page_size && p.slot.is_none() && !p.backed_up {
                            return Err(format!(
                                "{at}: page {} neither resident nor backed up",
                                p.index
                            ));
                        }
                    }
                } else if resident != n {
                    return Err(format!(
                        "{at}: {resident} of {n} pages resident in a keep-all layer"
                    ));
                }
                // Resident bytes are exactly what was appended (recalls included).
                let sh = &h.shadows[&id];
                for p in pages.iter().filter(|p| p.slot.is_some()) {
                    let bytes = cache
                        .resident_page_bytes(id, layer, g, p.index)
                        .map_err(|e| e.to_string())?
                        .ok_or("resident page without bytes")?;
                    let vals = arkvale_core::dtype::decode_f32(&bytes, cfg.kv_dtype.dtype())
                        .ok_or("decode")?;
                    for j in 0..hg {
                        for t in 0..p.len {
                            let pos = p.index * cfg.page_size + t;
                            let src = (pos * shape.kv_heads + g * hg + j) * shape.head_dim;
                            let ko = layout.k_offset(0, j, t);
                            let vo = layout.v_offset(0, j, t);
                            let d = shape.head_dim;
                            if vals[ko..ko + d] != sh.k[layer][src..src + d]
                                || vals[vo..vo + d] != sh.v[layer][src..src + d]
                            {
                                return Err(format!(
                                    "{at}: page {} token {t} head {j} bytes differ from what was appended",
                                    p.index
                                ));
                            }
                        }
                    }
                }
                let _ = len;
            }
        }
    }
    Ok(())
}

fn spill_stays_exact(dev: &Arc<dyn Device>) -> Result<(), String> {
    check_scenarios(6, |s| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut cfg = s.config();
        let slot = cfg.slot_bytes(&s.shape);
        cfg.host_bytes = 3 * slot;
        cfg.spill_dir = Some(dir.path().to_path_buf());
        let mut h = Harness::new(dev, s.shape, cfg, "arkvale", s.seed)?;
        drive(&mut h, s, check_invariants)?;
        let hs = h.cache.host_stats();
        let backups: usize = hs.pages_in_host + hs.pages_on_disk;
        if backups > 3 && hs.pages_on_disk == 0 {
            return Err(format!(
                "{backups} backups in a 3-page host tier but nothing on disk"
            ));
        }
        Ok(())
    })
}

fn exhausted_tiers_are_errors(dev: &Arc<dyn Device>) -> Result<(), String> {
    let shape = ModelShape {
        layers: 2,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 8,
    };
    let base = CacheConfig {
        page_size: 8,
        budget_tokens: 64,
        dense_layers: 0,
        prefill_chunk_tokens: 32,
        kv_dtype: KvDtype::F32,
        ..CacheConfig::default()
    };
    let slot = base.slot_bytes(&shape);
    // Device pool: one sequence's budget in each layer plus a chunk and the staging slots of
    // prefill, then a second sequence that cannot fit.
    let cfg = CacheConfig {
        device_bytes: slot * (2 * 8 + 4 + 8 + 2),
        ..base.clone()
    };
    let mut h = Harness::new(dev, shape, cfg, "arkvale", 7)?;
    let a = h.add();
    h.prefill(a, 200, TOL)?;
    let b = h.add();
    match h.prefill(b, 200, TOL) {
        Err(e) if e.contains("device KV pool exhausted") => {}
        other => return Err(format!("expected a pool-exhausted error, got {other:?}")),
    }
    // Host tier without spill: a few pages, then a clear error.
    let cfg = CacheConfig {
        host_bytes: 4 * slot,
        ..base
    };
    let mut h = Harness::new(dev, shape, cfg, "arkvale", 8)?;
    let a = h.add();
    match h.prefill(a, 200, TOL) {
        Err(e)
            if e.contains(
                &Error::HostTierExhausted {
                    capacity_bytes: 4 * slot,
                    capacity_pages: 4,
                }
                .to_string(),
            ) =>
        {
            Ok(())
        }
        other => Err(format!(
            "expected a host-tier-exhausted error, got {other:?}"
        )),
    }
}

/// Paper Fig. 1(d): a page that did not matter to the prompt's last query is evicted, then a
/// later query needs it. ArkVale recalls it and matches the full cache; StreamingLLM cannot.
fn fig1d_recall(dev: &Arc<dyn Device>) -> Result<(), String> {
    let d = 16;
    let p = 8;
    let shape = ModelShape {
        layers: 1,
        q_heads: 2,
        kv_heads: 1,
        head_dim: d,
    };
    let cfg = CacheConfig {
        page_size: p,
        budget_tokens: 4 * p,
        topk_tokens: Some(p),
        dense_layers: 0,
        kv_dtype: KvDtype::F32,
        prefill_chunk_tokens: 64,
        ..CacheConfig::default()
    };
    let prompt = 8 * p;
    let needle_page = 2;
    let mut outputs = Vec::new();
    for policy in ["full", "arkvale", "streaming"] {
        let mut h = Harness::new(dev, shape, cfg.clone(), policy, 11)?;
        let id = h.add();
        // Keys: every page leans toward +e1 except the needle page, which points along e0 and
        // away from e1. Values: small noise, the needle's values a distinct constant.
        let mut k = h.rng.vec(prompt * d, 0.1);
        let mut v = h.rng.vec(prompt * d, 0.1);
        for t in 0..prompt {
            let row = &mut k[t * d..(t + 1) * d];
            if t / p == needle_page {
                row[0] = 8.0;
                row[1] = -1.0;
                v[t * d..(t + 1) * d].fill(1.0);
            } else {
                row[0] = 0.0;
                row[1] = 1.0;
            }
        }
        let mut q = vec![0f32; prompt * 2 * d];
        for t in 0..prompt {
            q[t * 2 * d + 1] = 1.0;
            q[t * 2 * d + d + 1] = 1.0;
        }
        h.prefill_with(id, 0, &q, &k, &v, true)?;
        if policy != "full"
            && h.cache.pages(id, 0, 0).map_err(|e| e.to_string())?[needle_page]
                .slot
                .is_some()
        {
            return Err(format!(
                "{policy}: the needle page should be evicted after the prompt"
            ));
        }
        // The later query looks for the needle (both query heads).
        let mut q = vec![0f32; 2 * d];
        q[0] = 4.0;
        q[d] = 4.0;
        let (_, k1, v1) = h.random_qkv(1);
        let masks = h.keep_masks(&[id], 0);
        let out = h.decode_layer_with(&[id], 0, &q, &k1, &v1)?;
        h.check_decode(&[id], 0, &q, &out, &masks, TOL)?;
        if policy == "arkvale" {
            let attended = h.cache.last_attended(id, 0, 0).map_err(|e| e.to_string())?;
            if !attended.contains(&(needle_page as u32)) || h.cache.stats().recalls == 0 {
                return Err(format!(
                    "arkvale did not recall the needle page (attended {attended:?})"
                ));
            }
        }
        outputs.push(out);
    }
    compare(&outputs[1], &outputs[0], 1e-2).map_err(|e| format!("arkvale vs full: {e}"))?;
    if compare(&outputs[2], &outputs[0], 0.5).is_ok() {
        return Err("streaming matched the full cache although the needle was evicted".into());
    }
    Ok(())
}

/// Removing sequences mid-run gives back their slots and backups; the others decode on.
fn removal_frees_everything(dev: &Arc<dyn Device>) -> Result<(), String> {
    check_scenarios(6, |s| {
        let mut h = Harness::new(dev, s.shape, s.config(), "arkvale", s.seed)?;
        let ids: Vec<SeqId> = s.prompts.iter().map(|_| h.add()).collect();
        for (id, &n) in ids.iter().zip(&s.prompts) {
            h.prefill(*id, n, TOL)?;
        }
        let (gone, kept) = ids.split_at(ids.len() / 2);
        for id in gone {
            h.cache.remove_sequence(*id).map_err(|e| e.to_string())?;
        }
        if h.cache
            .remove_sequence(gone.first().copied().unwrap_or(SeqId(u64::MAX)))
            .is_ok()
        {
            return Err("removing an unknown sequence must be an error".into());
        }
        if !kept.is_empty() {
            h.decode(kept, TOL)?;
            check_invariants(&h, kept)?;
        }
        for id in kept {
            h.cache.remove_sequence(*id).map_err(|e| e.to_string())?;
        }
        let hs = h.cache.host_stats();
        if h.cache.resident_bytes() != 0 || hs.pages_in_host + hs.pages_on_disk != 0 {
            return Err(format!(
                "after removing every sequence: {} resident bytes, {} host pages, {} disk pages",
                h.cache.resident_bytes(),
                hs.pages_in_host,
                hs.pages_on_disk
            ));
        }
        Ok(())
    })
}

/// DESIGN.md §2 step 4: evicted top-k pages are recalled into the slots of the lowest-ranked
/// resident candidates; the best resident candidate outside the top-k stays. And step 5: the
/// new page takes the slot of the page leaving the window.
fn victims_are_lowest_ranked(dev: &Arc<dyn Device>) -> Result<(), String> {
    let after_step = recall_scenario(dev, VictimRule::Digest, PrefillKeep::Digest)?;
    if after_step != [0, 1, 4, 5, 9, 10] {
        return Err(format!(
            "after the recall: resident {after_step:?}, expected [0, 1, 4, 5, 9, 10]"
        ));
    }
    Ok(())
}

/// Attention feedback (DESIGN.md §2, beyond the paper): the prompt keeps the pages with the
/// most exact attention mass of its last query, and a recall displaces the resident
/// candidates with the least mass measured at the previous attention — here the prompt's —
/// not the lowest digest scores of the current query.
fn victims_follow_attention_mass(dev: &Arc<dyn Device>) -> Result<(), String> {
    let after_step = recall_scenario(dev, VictimRule::Attention, PrefillKeep::Attention)?;
    if after_step != [0, 3, 4, 5, 9, 10] {
        return Err(format!(
            "after the recall: resident {after_step:?}, expected [0, 3, 4, 5, 9, 10] (pages 1 \
             and 2 had the least attention mass)"
        ));
    }
    Ok(())
}

/// A 10-page prompt whose last query (+e1) attends pages 3 > 2 > 1 most (pages 4, 5 point
/// along e0 and away from e1, pages 6, 7 slightly away); after it, sinks + pages 1-3 + the
/// window must be resident. Then one decode step whose query wants pages 4 and 5 (top-k = 2)
/// and, along -e2, ranks page 1 above 2 above 3 by digest: the two recalls need two victims
/// among pages 1-3. Returns the resident pages after the step.
fn recall_scenario(
    dev: &Arc<dyn Device>,
    victims: VictimRule,
    prefill_keep: PrefillKeep,
) -> Result<Vec<usize>, String> {
    let (d, p) = (16, 8);
    let shape = ModelShape {
        layers: 1,
        q_heads: 2,
        kv_heads: 1,
        head_dim: d,
    };
    let cfg = CacheConfig {
        page_size: p,
        budget_tokens: 6 * p,
        topk_tokens: Some(2 * p),
        dense_layers: 0,
        kv_dtype: KvDtype::F32,
        prefill_chunk_tokens: 128,
        victims,
        prefill_keep,
        ..CacheConfig::default()
    };
    let mut h = Harness::new(dev, shape, cfg, "arkvale", 5)?;
    let id = h.add();
    let prompt = 10 * p;
    let mut k = h.rng.vec(prompt * d, 0.05);
    let v = h.rng.vec(prompt * d, 1.0);
    for t in 0..prompt {
        let row = &mut k[t * d..(t + 1) * d];
        match t / p {
            page @ 1..=3 => {
                row[1] = 0.5 + 0.5 * page as f32;
                row[2] = 0.5 * page as f32;
            }
            4 | 5 => {
                row[0] = 8.0;
                row[1] = -1.0;
            }
            6 | 7 => row[1] = -0.5,
            _ => {}
        }
    }
    let mut q = vec![0f32; prompt * 2 * d];
    for t in 0..prompt {
        q[t * 2 * d + 1] = 1.0;
        q[t * 2 * d + d + 1] = 1.0;
    }
    h.prefill_with(id, 0, &q, &k, &v, true)?;
    let resident = |h: &Harness| -> Result<Vec<usize>, String> {
        Ok(h.cache
            .pages(id, 0, 0)
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|p| p.slot.is_some())
            .map(|p| p.index)
            .collect())
    };
    let after_prefill = resident(&h)?;
    if after_prefill != [0, 1, 2, 3, 8, 9] {
        return Err(format!(
            "after the prompt: resident {after_prefill:?}, expected sinks, pages 1-3 and the window"
        ));
    }
    // The first decode token opens page 10: page 8 leaves the window and gives up its slot;
    // pages 4 and 5 are recalled into the slots of two of pages 1-3.
    let mut q = vec![0f32; 2 * d];
    for head in q.chunks_mut(d) {
        head[0] = 4.0;
        head[2] = -1.0;
    }
    let (_, k1, v1) = h.random_qkv(1);
    let masks = h.keep_masks(&[id], 0);
    let out = h.decode_layer_with(&[id], 0, &q, &k1, &v1)?;
    h.check_decode(&[id], 0, &q, &out, &masks, TOL)?;
    resident(&h)
}
