//! The forward pass: prefill (chunked) and batched decode, attention through the cache.
//!
//! # Buffers
//!
//! A forward call of `n` tokens needs a dozen activation buffers of `n` rows (and the logits
//! projection a few more). The model keeps those of its last [`SCRATCH_KEPT`] calls and hands
//! them to the next call of the same `n`, so that a decode loop at a steady batch size, or a
//! prefill of whole chunks, allocates nothing per step (on CUDA, freeing a buffer waits for
//! the device). A call takes its buffers out of that pool and gives them back when it is done
//! (for the logits, when the [`Logits`] is dropped), so concurrent calls never share one; a
//! call that fails drops its buffers. Every buffer is written before it is read in a call
//! (the attention output by the cache's attention for every query head), so reused contents
//! never leak into results; every backend runs a call's work in order, so a buffer given
//! back is not reused while its earlier work is pending.

use arkvale_core::{Buffer, CacheManager, DType, DeviceExt, MatmulDims, Rope, SeqId};

use super::{LlamaError, LlamaModel, Result};

/// How many forward calls' buffers (of distinct token counts) the model keeps for reuse.
const SCRATCH_KEPT: usize = 4;

/// Activations of one forward call of `n` tokens.
pub(super) struct Scratch {
    n: usize,
    /// Residual stream `[n, d_model]`.
    x: Buffer,
    /// Normalized input of a sub-layer `[n, d_model]`.
    h: Buffer,
    /// Queries `[n, H, d]` (exactly `n` rows: the cache infers the chunk length from it).
    q: Buffer,
    /// Keys `[n, Hkv, d]`.
    k: Buffer,
    /// Values `[n, Hkv, d]`.
    v: Buffer,
    /// Attention output `[n, H, d]`.
    attn: Buffer,
    /// Output of a projection back to `[n, d_model]`.
    proj: Buffer,
    /// Feed-forward gate, up and activation `[n, d_ff]`.
    gate: Buffer,
    up: Buffer,
    act: Buffer,
    /// The logits projection's buffers, for the row count it last had.
    head: Option<Head>,
}

/// The buffers of the final norm and logits projection of `rows` rows.
struct Head {
    rows: usize,
    /// The last residual row `[d_model]` when only it is projected out of several
    /// (prefill); `None` when every row of `x` is (decode).
    last: Option<Buffer>,
    /// Normalized rows `[rows, d_model]`.
    norm: Buffer,
    /// Logits `[rows, vocab]`.
    logits: Buffer,
    /// Greedy choices `[rows]` (u32).
    ids: Buffer,
}

/// Logits of a forward call, still on the device: `[rows, vocab]` f32, one row per
/// sequence of a decode batch, or the one row of a prompt's last token. Read them whole
/// ([`Logits::to_vec`]), a row at a time ([`Logits::row`]), or let the device pick each row's
/// largest and read only the ids ([`Logits::argmax`]). Dropping it gives the call's buffers
/// back to the model for the next call of the same size.
pub struct Logits<'m> {
    model: &'m LlamaModel,
    /// Taken out only by `drop`.
    scratch: Option<Scratch>,
}

impl std::fmt::Debug for Logits<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logits")
            .field("rows", &self.rows())
            .field("vocab", &self.vocab())
            .finish()
    }
}

impl Logits<'_> {
    fn head(&self) -> &Head {
        self.scratch
            .as_ref()
            .and_then(|s| s.head.as_ref())
            .expect("a Logits always holds its projection until dropped")
    }

    /// Rows (tokens whose next-token logits these are).
    pub fn rows(&self) -> usize {
        self.head().rows
    }

    /// Columns (the model's vocabulary size).
    pub fn vocab(&self) -> usize {
        self.model.config.vocab
    }

    /// The device buffer, f32 `[rows, vocab]`.
    pub fn buffer(&self) -> &Buffer {
        &self.head().logits
    }

    /// Every row's column of the largest logit, chosen on the device
    /// ([`arkvale_core::Device::argmax`]: ties go to the lower index, NaN ranks below every
    /// number, a row of NaN only gives 0); only the `rows` ids are downloaded.
    pub fn argmax(&self) -> Result<Vec<u32>> {
        let h = self.head();
        let dev = self.model.dev.as_ref();
        dev.argmax(h.rows, self.vocab(), &h.logits, &h.ids)?;
        Ok(dev.download_u32(&h.ids, 0, h.rows)?)
    }

    /// Row `row`, downloaded (`vocab` values).
    pub fn row(&self, row: usize) -> Result<Vec<f32>> {
        self.check_row(row)?;
        let v = self.vocab();
        Ok(self
            .model
            .dev
            .download_f32_range(&self.head().logits, row * v, v)?)
    }

    /// The logit of token `col` in row `row`, downloaded.
    pub fn get(&self, row: usize, col: usize) -> Result<f32> {
        self.check_row(row)?;
        if col >= self.vocab() {
            return Err(LlamaError::Input(format!(
                "column {col} of logits with {} columns",
                self.vocab()
            )));
        }
        let at = row * self.vocab() + col;
        Ok(self
            .model
            .dev
            .download_f32_range(&self.head().logits, at, 1)?[0])
    }

    /// Every row, downloaded, row-major `[rows, vocab]`.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let n = self.rows() * self.vocab();
        Ok(self
            .model
            .dev
            .download_f32_range(&self.head().logits, 0, n)?)
    }

    fn check_row(&self, row: usize) -> Result<()> {
        if row >= self.rows() {
            return Err(LlamaError::Input(format!(
                "row {row} of logits with {} rows",
                self.rows()
            )));
        }
        Ok(())
    }
}

impl Drop for Logits<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.scratch.take() {
            self.model.give_back(s);
        }
    }
}

impl LlamaModel {
    /// Runs `tokens` of sequence `seq` through the model (prefill): they take the positions
    /// after those the sequence already holds, in chunks of at most the cache's
    /// `prefill_chunk_tokens`, and every layer's attention goes through
    /// [`CacheManager::prefill_layer`]. Returns the logits of the last token (`vocab` values).
    ///
    /// Errors: an empty `tokens`, a token id `>= vocab`, a context that would exceed the
    /// model's `context_length`, a cache built for another [`LlamaModel::shape`], an unknown
    /// `seq`, or any cache/device failure.
    pub fn prefill(
        &self,
        cache: &mut CacheManager,
        seq: SeqId,
        tokens: &[u32],
    ) -> Result<Vec<f32>> {
        self.prefill_logits(cache, seq, tokens)?.to_vec()
    }

    /// [`LlamaModel::prefill`], leaving the last token's logits on the device (one row).
    pub fn prefill_logits(
        &self,
        cache: &mut CacheManager,
        seq: SeqId,
        tokens: &[u32],
    ) -> Result<Logits<'_>> {
        if tokens.is_empty() {
            return Err(LlamaError::Input("the prompt is empty".into()));
        }
        self.check_cache(cache)?;
        self.check_ids(tokens)?;
        let start = cache.seq_len(seq, 0)?;
        self.check_context(start, tokens.len())?;
        let chunk = cache.config().prefill_chunk_tokens.max(1);
        let mut pos = start;
        let pieces: Vec<&[u32]> = tokens.chunks(chunk).collect();
        for (i, ids) in pieces.iter().enumerate() {
            let last_chunk = i + 1 == pieces.len();
            let positions: Vec<u32> = (pos..pos + ids.len()).map(|p| p as u32).collect();
            let s = self.run_layers(cache, ids, &positions, |cache, layer, s| {
                Ok(cache.prefill_layer(layer, seq, &s.q, &s.k, &s.v, &s.attn, last_chunk)?)
            })?;
            pos += ids.len();
            if last_chunk {
                return self.logits(s, 1);
            }
            self.give_back(s);
        }
        unreachable!("tokens is not empty")
    }

    /// One decode step for a batch: token `tokens[i]` is appended to sequence `seqs[i]` at
    /// the position after its last one, every layer's attention goes through
    /// [`CacheManager::decode_layer`] (one call per layer for the whole batch). Returns the
    /// logits, row-major `[seqs.len(), vocab]`.
    ///
    /// Errors: an empty batch, `seqs` and `tokens` of different lengths, a repeated sequence,
    /// a token id `>= vocab`, a sequence at the model's `context_length`, a cache built for
    /// another shape, an unknown sequence, or any cache/device failure.
    pub fn decode(
        &self,
        cache: &mut CacheManager,
        seqs: &[SeqId],
        tokens: &[u32],
    ) -> Result<Vec<f32>> {
        self.decode_logits(cache, seqs, tokens)?.to_vec()
    }

    /// [`LlamaModel::decode`], leaving the logits on the device (row `i` for `seqs[i]`).
    pub fn decode_logits(
        &self,
        cache: &mut CacheManager,
        seqs: &[SeqId],
        tokens: &[u32],
    ) -> Result<Logits<'_>> {
        if seqs.is_empty() {
            return Err(LlamaError::Input("the decode batch is empty".into()));
        }
        if seqs.len() != tokens.len() {
            return Err(LlamaError::Input(format!(
                "{} sequences but {} tokens in the decode batch",
                seqs.len(),
                tokens.len()
            )));
        }
        self.check_cache(cache)?;
        self.check_ids(tokens)?;
        let mut positions = Vec::with_capacity(seqs.len());
        for (i, &seq) in seqs.iter().enumerate() {
            if seqs[..i].contains(&seq) {
                return Err(LlamaError::Input(format!(
                    "sequence {} appears twice in the decode batch",
                    seq.0
                )));
            }
            let len = cache.seq_len(seq, 0)?;
            self.check_context(len, 1)?;
            positions.push(len as u32);
        }
        let s = self.run_layers(cache, tokens, &positions, |cache, layer, s| {
            Ok(cache.decode_layer(layer, seqs, &s.q, &s.k, &s.v, &s.attn)?)
        })?;
        let rows = s.n;
        self.logits(s, rows)
    }

    /// Buffers for a call of `n` tokens: a kept set of that size, or new ones.
    fn take_scratch(&self, n: usize) -> Result<Scratch> {
        {
            let mut kept = self.scratch.lock();
            if let Some(i) = kept.iter().position(|s| s.n == n) {
                return Ok(kept.remove(i));
            }
        }
        let c = &self.config;
        let (d, kvd) = (c.d_model, c.kv_heads * c.head_dim);
        let f32_buf = |len: usize| self.dev.alloc(DType::F32, len);
        Ok(Scratch {
            n,
            x: f32_buf(n * d)?,
            h: f32_buf(n * d)?,
            q: f32_buf(n * d)?,
            k: f32_buf(n * kvd)?,
            v: f32_buf(n * kvd)?,
            attn: f32_buf(n * d)?,
            proj: f32_buf(n * d)?,
            gate: f32_buf(n * c.d_ff)?,
            up: f32_buf(n * c.d_ff)?,
            act: f32_buf(n * c.d_ff)?,
            head: None,
        })
    }

    /// Keeps `s` for the next call of its size (the most recent [`SCRATCH_KEPT`] sizes).
    fn give_back(&self, s: Scratch) {
        let mut kept = self.scratch.lock();
        kept.retain(|k| k.n != s.n);
        kept.insert(0, s);
        kept.truncate(SCRATCH_KEPT);
    }

    /// Embeds `ids` and runs every layer, `attend` filling `attn` from `q`, `k`, `v` of a
    /// layer. Returns the activations; `x` holds the final residual stream.
    fn run_layers(
        &self,
        cache: &mut CacheManager,
        ids: &[u32],
        positions: &[u32],
        mut attend: impl FnMut(&mut CacheManager, usize, &Scratch) -> Result<()>,
    ) -> Result<Scratch> {
        let c = &self.config;
        let dev = self.dev.as_ref();
        let n = ids.len();
        let (d, hd, kvd) = (c.d_model, c.head_dim, c.kv_heads * c.head_dim);
        let s = self.take_scratch(n)?;
        let rope = |heads: usize| Rope {
            style: self.rope_style,
            heads,
            head_dim: hd,
            inv_freq: &self.inv_freq,
            position_scale: 1.0,
        };
        let mm = |out_features: usize, in_features: usize| MatmulDims {
            m: n,
            n: out_features,
            k: in_features,
        };
        dev.embedding(d, &self.weights.embedding, ids, &s.x)?;
        for (layer, w) in self.weights.layers.iter().enumerate() {
            dev.rmsnorm(n, d, c.rms_eps, &s.x, &w.attn_norm, &s.h)?;
            dev.matmul(&mm(d, d), &s.h, &w.wq, &s.q)?;
            dev.matmul(&mm(kvd, d), &s.h, &w.wk, &s.k)?;
            dev.matmul(&mm(kvd, d), &s.h, &w.wv, &s.v)?;
            if let Some([bq, bk, bv]) = &w.qkv_bias {
                dev.add_bias(n, d, &s.q, bq)?;
                dev.add_bias(n, kvd, &s.k, bk)?;
                dev.add_bias(n, kvd, &s.v, bv)?;
            }
            dev.rope(&rope(c.q_heads), positions, &s.q)?;
            dev.rope(&rope(c.kv_heads), positions, &s.k)?;
            attend(cache, layer, &s)?;
            dev.matmul(&mm(d, d), &s.attn, &w.wo, &s.proj)?;
            dev.add(n * d, &s.x, &s.proj)?;
            dev.rmsnorm(n, d, c.rms_eps, &s.x, &w.ffn_norm, &s.h)?;
            dev.matmul(&mm(c.d_ff, d), &s.h, &w.w_gate, &s.gate)?;
            dev.matmul(&mm(c.d_ff, d), &s.h, &w.w_up, &s.up)?;
            dev.silu_mul(n * c.d_ff, &s.gate, &s.up, &s.act)?;
            dev.matmul(&mm(d, c.d_ff), &s.act, &w.w_down, &s.proj)?;
            dev.add(n * d, &s.x, &s.proj)?;
        }
        Ok(s)
    }

    /// Final RMSNorm and output projection of the last `rows` rows of `s.x` (all of them, or
    /// the last one), left on the device.
    fn logits(&self, mut s: Scratch, rows: usize) -> Result<Logits<'_>> {
        let c = &self.config;
        let dev = self.dev.as_ref();
        let d = c.d_model;
        if s.head.as_ref().is_none_or(|h| h.rows != rows) {
            s.head = Some(Head {
                rows,
                last: (rows < s.n)
                    .then(|| dev.alloc(DType::F32, rows * d))
                    .transpose()?,
                norm: dev.alloc(DType::F32, rows * d)?,
                logits: dev.alloc(DType::F32, rows * c.vocab)?,
                ids: dev.alloc(DType::U32, rows)?,
            });
        }
        let head = s.head.as_ref().expect("set above");
        let x = match &head.last {
            Some(last) => {
                dev.copy(&s.x, (s.n - rows) * d, last, 0, rows * d)?;
                last
            }
            None => &s.x,
        };
        dev.rmsnorm(rows, d, c.rms_eps, x, &self.weights.output_norm, &head.norm)?;
        let w = self
            .weights
            .output
            .as_ref()
            .unwrap_or(&self.weights.embedding);
        let dims = MatmulDims {
            m: rows,
            n: c.vocab,
            k: d,
        };
        dev.matmul(&dims, &head.norm, w, &head.logits)?;
        Ok(Logits {
            model: self,
            scratch: Some(s),
        })
    }

    fn check_cache(&self, cache: &CacheManager) -> Result<()> {
        if *cache.shape() != self.shape() {
            return Err(LlamaError::Input(format!(
                "the cache was built for {:?} but the model needs {:?}; build the \
                 CacheManager with model.shape()",
                cache.shape(),
                self.shape()
            )));
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&t| t as usize >= self.config.vocab) {
            Some(t) => Err(LlamaError::Input(format!(
                "token id {t} is out of the vocabulary of {} tokens",
                self.config.vocab
            ))),
            None => Ok(()),
        }
    }

    fn check_context(&self, held: usize, new: usize) -> Result<()> {
        let max = self.config.context_length;
        if held + new > max {
            return Err(LlamaError::Input(format!(
                "context of {} tokens ({held} held + {new} new) exceeds the model's \
                 context length of {max}",
                held + new
            )));
        }
        Ok(())
    }
}
