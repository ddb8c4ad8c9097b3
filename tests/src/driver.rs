//! A synthetic model for cache-level tests: random post-RoPE keys, values and queries fed
//! through a [`CacheManager`] by prefill chunks and decode steps, with a shadow copy of every
//! stored key and value so each output can be checked against exact f64 attention over
//! exactly the tokens the policy let take part.

use std::sync::Arc;

use arkvale_core::manager::{CacheManager, SeqId};
use arkvale_core::{CacheConfig, DType, Device, DeviceExt, KvDtype, ModelShape, policy_by_name};
use arkvale_testkit::XorShift;

/// What the shadow knows of one sequence: every token's K and V per layer, as stored.
#[derive(Debug, Clone, Default)]
pub struct Shadow {
    /// `k[layer]` is `[tokens, Hkv, d]`, rounded to the KV dtype.
    pub k: Vec<Vec<f32>>,
    /// `v[layer]` likewise.
    pub v: Vec<Vec<f32>>,
}

/// A cache manager plus the shadow of every sequence in it.
pub struct Harness {
    /// The manager under test.
    pub cache: CacheManager,
    /// Shadows, by sequence.
    pub shadows: std::collections::BTreeMap<SeqId, Shadow>,
    /// The input generator (seeded, so a scenario replays from its seed).
    pub rng: XorShift,
    /// Scale of keys relative to queries (larger = peakier attention).
    pub key_scale: f32,
}

impl Harness {
    /// A manager for `policy` over `dev`.
    pub fn new(
        dev: &Arc<dyn Device>,
        shape: ModelShape,
        config: CacheConfig,
        policy: &str,
        seed: u64,
    ) -> Result<Self, String> {
        let policy = policy_by_name(policy, &config).map_err(|e| e.to_string())?;
        let cache =
            CacheManager::new(dev.clone(), shape, config, policy).map_err(|e| e.to_string())?;
        Ok(Harness {
            cache,
            shadows: Default::default(),
            rng: XorShift::new(seed),
            key_scale: 1.0,
        })
    }

    /// Adds a sequence.
    pub fn add(&mut self) -> SeqId {
        let id = self.cache.add_sequence();
        let layers = self.cache.shape().layers;
        self.shadows.insert(
            id,
            Shadow {
                k: vec![Vec::new(); layers],
                v: vec![Vec::new(); layers],
            },
        );
        id
    }

    fn kv_dtype(&self) -> KvDtype {
        self.cache.config().kv_dtype
    }

    /// Random inputs for `n` tokens: `(q, k, v)` with `q` `[n, H, d]`, `k`, `v` `[n, Hkv, d]`.
    pub fn random_qkv(&mut self, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let s = *self.cache.shape();
        let ks = self.key_scale;
        (
            self.rng.vec(n * s.q_heads * s.head_dim, 1.0),
            self.rng.vec(n * s.kv_heads * s.head_dim, ks),
            self.rng.vec(n * s.kv_heads * s.head_dim, 1.0),
        )
    }

    /// Prefills `tokens` random tokens into `seq` (all layers, chunked), checking every
    /// chunk's output against exact causal attention over the whole prefix.
    pub fn prefill(&mut self, seq: SeqId, tokens: usize, tol: f64) -> Result<(), String> {
        let chunk = self.cache.config().prefill_chunk_tokens;
        let layers = self.cache.shape().layers;
        let mut done = 0;
        while done < tokens {
            let n = chunk.min(tokens - done);
            let last = done + n == tokens;
            for layer in 0..layers {
                let (q, k, v) = self.random_qkv(n);
                let out = self.prefill_with(seq, layer, &q, &k, &v, last)?;
                let len = self.shadows[&seq].k[layer].len() / self.kv_row();
                for i in 0..n {
                    let pos = len - n + i;
                    let expect = self.reference_row(
                        seq,
                        layer,
                        &q[i * self.q_row()..(i + 1) * self.q_row()],
                        |_, t| t <= pos,
                    );
                    compare(&out[i * self.q_row()..(i + 1) * self.q_row()], &expect, tol)
                        .map_err(|e| format!("prefill layer {layer} token {pos}: {e}"))?;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn q_row(&self) -> usize {
        let s = self.cache.shape();
        s.q_heads * s.head_dim
    }

    fn kv_row(&self) -> usize {
        let s = self.cache.shape();
        s.kv_heads * s.head_dim
    }

    /// Prefills one chunk of one layer with given inputs (recorded in the shadow).
    pub fn prefill_with(
        &mut self,
        seq: SeqId,
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        last: bool,
    ) -> Result<Vec<f32>, String> {
        let dev = self.cache.device().clone();
        let e = |e: arkvale_core::Error| e.to_string();
        let [qb, kb, vb, out] = upload_step(&dev, q, k, v).map_err(e)?;
        self.cache
            .prefill_layer(layer, seq, &qb, &kb, &vb, &out, last)
            .map_err(e)?;
        self.record(&[seq], layer, k, v);
        dev.download_f32(&out).map_err(e)
    }

    /// One decode step (every layer) for `seqs`; returns each layer's output `[n, H, d]` and
    /// checks it against exact attention over the tokens the policy selected.
    pub fn decode(&mut self, seqs: &[SeqId], tol: f64) -> Result<Vec<Vec<f32>>, String> {
        let layers = self.cache.shape().layers;
        let mut outs = Vec::with_capacity(layers);
        for layer in 0..layers {
            let (q, k, v) = self.random_qkv(seqs.len());
            let masks = self.keep_masks(seqs, layer);
            let out = self.decode_layer_with(seqs, layer, &q, &k, &v)?;
            self.check_decode(seqs, layer, &q, &out, &masks, tol)?;
            outs.push(out);
        }
        Ok(outs)
    }

    /// Decodes one layer with given inputs (recorded in the shadow); returns the output.
    pub fn decode_layer_with(
        &mut self,
        seqs: &[SeqId],
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Vec<f32>, String> {
        let dev = self.cache.device().clone();
        let e = |e: arkvale_core::Error| e.to_string();
        let [qb, kb, vb, out] = upload_step(&dev, q, k, v).map_err(e)?;
        self.cache
            .decode_layer(layer, seqs, &qb, &kb, &vb, &out)
            .map_err(e)?;
        let kr = self.kv_row();
        for (i, id) in seqs.iter().enumerate() {
            self.record(
                &[*id],
                layer,
                &k[i * kr..(i + 1) * kr],
                &v[i * kr..(i + 1) * kr],
            );
        }
        dev.download_f32(&out).map_err(e)
    }

    /// Appends stored (rounded) keys and values of one sequence to its shadow.
    fn record(&mut self, seqs: &[SeqId], layer: usize, k: &[f32], v: &[f32]) {
        let round = self.kv_dtype();
        for id in seqs {
            let sh = self.shadows.get_mut(id).expect("known");
            sh.k[layer].extend(k.iter().map(|&x| round.round(x)));
            sh.v[layer].extend(v.iter().map(|&x| round.round(x)));
        }
    }

    /// The keep-masks of token-level policies, per sequence and KV head, as they are now
    /// (take them before a step: a step drops tokens only after its attention).
    pub fn keep_masks(&self, seqs: &[SeqId], layer: usize) -> Vec<Vec<Option<Vec<bool>>>> {
        let heads = self.cache.shape().kv_heads;
        seqs.iter()
            .map(|id| {
                (0..heads)
                    .map(|h| self.cache.keep_mask(*id, layer, h).unwrap_or(None))
                    .collect()
            })
            .collect()
    }

    /// Checks a decode output against f64 attention over the pages the cache reports as
    /// attended, minus tokens that `masks_before` (from [`Harness::keep_masks`] before the
    /// step) had dropped; tokens newer than a mask are kept.
    pub fn check_decode(
        &self,
        seqs: &[SeqId],
        layer: usize,
        q: &[f32],
        out: &[f32],
        masks_before: &[Vec<Option<Vec<bool>>>],
        tol: f64,
    ) -> Result<(), String> {
        let s = *self.cache.shape();
        let p = self.cache.config().page_size;
        let hg = s.kv_heads / self.cache.config().head_groups;
        let qr = self.q_row();
        for (i, id) in seqs.iter().enumerate() {
            let mut attended: Vec<Vec<bool>> = Vec::new();
            for g in 0..self.cache.config().head_groups {
                let pages = self
                    .cache
                    .last_attended(*id, layer, g)
                    .map_err(|e| e.to_string())?;
                let len = self.cache.seq_len(*id, layer).map_err(|e| e.to_string())?;
                let mut sel = vec![false; len];
                for pg in pages {
                    let a = pg as usize * p;
                    sel[a..(a + p).min(len)].fill(true);
                }
                attended.push(sel);
            }
            let masks = &masks_before[i];
            let expect = self.reference_row(*id, layer, &q[i * qr..(i + 1) * qr], |kvh, t| {
                attended[kvh / hg][t]
                    && masks[kvh]
                        .as_ref()
                        .is_none_or(|m| m.get(t).copied().unwrap_or(true))
            });
            compare(&out[i * qr..(i + 1) * qr], &expect, tol)
                .map_err(|e| format!("decode layer {layer} seq {}: {e}", id.0))?;
        }
        Ok(())
    }

    /// Exact f64 attention of one query row (`[H, d]`) of `seq` in `layer` over the tokens
    /// `take(kv_head, position)` admits.
    pub fn reference_row(
        &self,
        seq: SeqId,
        layer: usize,
        q: &[f32],
        take: impl Fn(usize, usize) -> bool,
    ) -> Vec<f32> {
        let s = self.cache.shape();
        let d = s.head_dim;
        let sh = &self.shadows[&seq];
        let len = sh.k[layer].len() / self.kv_row();
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0f32; s.q_heads * d];
        for h in 0..s.q_heads {
            let kvh = h / s.gqa();
            let qh = &q[h * d..(h + 1) * d];
            let at = |t: usize| (t * s.kv_heads + kvh) * d;
            let scores: Vec<(usize, f64)> = (0..len)
                .filter(|&t| take(kvh, t))
                .map(|t| {
                    let k = &sh.k[layer][at(t)..at(t) + d];
                    (
                        t,
                        qh.iter()
                            .zip(k)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            * scale,
                    )
                })
                .collect();
            let m = scores.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x.1 - m).exp()).sum();
            for j in 0..d {
                let acc: f64 = scores
                    .iter()
                    .map(|&(t, sc)| (sc - m).exp() * sh.v[layer][at(t) + j] as f64)
                    .sum();
                out[h * d + j] = if z > 0.0 { (acc / z) as f32 } else { 0.0 };
            }
        }
        out
    }
}

/// Uploads one step's inputs and a NaN-poisoned output buffer: `[q, k, v, out]`.
fn upload_step(
    dev: &Arc<dyn Device>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> arkvale_core::Result<[arkvale_core::Buffer; 4]> {
    Ok([
        dev.upload_f32(q, DType::F32)?,
        dev.upload_f32(k, DType::F32)?,
        dev.upload_f32(v, DType::F32)?,
        dev.upload_f32(&vec![f32::NAN; q.len()], DType::F32)?,
    ])
}

/// Norm-wise relative error of `got` against `want`, per head-sized slice, within `tol`.
pub fn compare(got: &[f32], want: &[f32], tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} vs {}", got.len(), want.len()));
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        if !a.is_finite() {
            return Err(format!("non-finite output {a} (unwritten?)"));
        }
        diff += (*a as f64 - *b as f64).powi(2);
        norm += (*b as f64).powi(2);
    }
    let rel = diff.sqrt() / norm.sqrt().max(1e-12);
    if rel > tol {
        return Err(format!("relative error {rel:.3e} > {tol:.0e}"));
    }
    Ok(())
}
