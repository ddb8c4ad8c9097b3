//! The forward pass: prefill (chunked) and batched decode, attention through the cache.

use arkvale_core::{Buffer, CacheManager, DType, DeviceExt, MatmulDims, Rope, SeqId};

use super::{LlamaError, LlamaModel, Result};

/// Activations of one forward call of `n` tokens.
struct Scratch {
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
        if tokens.is_empty() {
            return Err(LlamaError::Input("the prompt is empty".into()));
        }
        self.check_cache(cache)?;
        self.check_ids(tokens)?;
        let start = cache.seq_len(seq, 0)?;
        self.check_context(start, tokens.len())?;
        let chunk = cache.config().prefill_chunk_tokens.max(1);
        let mut last_x = None;
        let mut pos = start;
        let pieces: Vec<&[u32]> = tokens.chunks(chunk).collect();
        for (i, ids) in pieces.iter().enumerate() {
            let last_chunk = i + 1 == pieces.len();
            let positions: Vec<u32> = (pos..pos + ids.len()).map(|p| p as u32).collect();
            let s = self.run_layers(cache, ids, &positions, |cache, layer, s| {
                Ok(cache.prefill_layer(layer, seq, &s.q, &s.k, &s.v, &s.attn, last_chunk)?)
            })?;
            pos += ids.len();
            last_x = Some(s);
        }
        let s = last_x.expect("tokens is not empty");
        let d = self.config.d_model;
        let row = self.dev.alloc(DType::F32, d)?;
        self.dev.copy(&s.x, (s.n - 1) * d, &row, 0, d)?;
        self.logits(&row, 1)
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
        self.logits(&s.x, s.n)
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
        let f32_buf = |len: usize| dev.alloc(DType::F32, len);
        let s = Scratch {
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
        };
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

    /// Final RMSNorm and output projection of the first `rows` rows of `x`, downloaded.
    fn logits(&self, x: &Buffer, rows: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let dev = self.dev.as_ref();
        let h = dev.alloc(DType::F32, rows * c.d_model)?;
        dev.rmsnorm(rows, c.d_model, c.rms_eps, x, &self.weights.output_norm, &h)?;
        let out = dev.alloc(DType::F32, rows * c.vocab)?;
        let w = self
            .weights
            .output
            .as_ref()
            .unwrap_or(&self.weights.embedding);
        let dims = MatmulDims {
            m: rows,
            n: c.vocab,
            k: c.d_model,
        };
        dev.matmul(&dims, &h, w, &out)?;
        Ok(dev.download_f32(&out)?)
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
