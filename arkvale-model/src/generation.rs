//! The generation step machine, written once for every caller: `arkvale generate` and
//! `arkvale chat` drive one sequence with [`run_sequence`]; the batching engine behind
//! `arkvale serve` drives many, one [`Prefill`] chunk or one batched decode step at a time,
//! with the same pieces:
//!
//! - [`Prefill`] feeds a prompt into a sequence in chunks of [`prefill_chunk`] tokens;
//! - [`choose_tokens`] picks each row's next token from the [`Logits`] a forward call left on
//!   the device: greedy rows by the device's argmax (only the ids are downloaded), sampled
//!   rows from their downloaded logits;
//! - [`Generation`] takes each chosen token and says whether to feed it back or stop (EOS, a
//!   stop string, `max_tokens`, the context length), releasing the text as it goes.
//!
//! Greedy choices on the device are the host sampler's: both take the lowest index among
//! equal logits. NaN logits differ only in how they fail: the host sampler refuses any row
//! holding a NaN, while the device argmax skips NaN, so a greedy row fails only when all of
//! it is NaN (what a broken forward pass gives, NaN spreading through the final norm to
//! every logit).

use arkvale_core::{CacheManager, SeqId};

use crate::llama::{LlamaError, LlamaModel, Logits};
use crate::sampling::Sampler;
use crate::stop::{StopMatcher, StopStep};
use crate::text::{TextDecodeStream, TextError, TextTokenizer};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The end-of-sequence token was chosen (it is not part of the output).
    Eos,
    /// A stop string appeared in the output.
    StopString,
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The sequence reached the model's context length.
    ContextLength,
}

impl StopReason {
    /// The name in statistics: `eos`, `stop_string`, `max_tokens` or `context_length`.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextLength => "context_length",
        }
    }
}

/// A failure while generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The forward pass (or reading its logits) failed.
    #[error(transparent)]
    Model(#[from] LlamaError),
    /// No token could be drawn (NaN logits).
    #[error("sampling failed: {0}")]
    Sampling(String),
    /// The tokenizer could not decode a generated token.
    #[error("cannot decode token {token}: {source}")]
    Text {
        /// The token.
        token: u32,
        /// Why.
        source: TextError,
    },
}

/// Prompt tokens per prefill call on `cache` for a prompt of `prompt_len` tokens: the
/// cache's `prefill_chunk_tokens`, or the whole prompt for token-level policies (H2O, TOVA),
/// which choose their tokens at the end of a call.
pub fn prefill_chunk(cache: &CacheManager, prompt_len: usize) -> usize {
    if cache.policy().token_rule().is_some() {
        prompt_len.max(1)
    } else {
        cache.config().prefill_chunk_tokens.max(1)
    }
}

/// A prompt on its way into one sequence, one chunk of [`prefill_chunk`] tokens per
/// [`Prefill::step`].
#[derive(Debug, Clone)]
pub struct Prefill {
    seq: SeqId,
    done: usize,
    chunk: usize,
}

impl Prefill {
    /// Starts prefilling a prompt of `prompt_len` tokens into `seq` of `cache`.
    pub fn new(cache: &CacheManager, seq: SeqId, prompt_len: usize) -> Self {
        Prefill {
            seq,
            done: 0,
            chunk: prefill_chunk(cache, prompt_len),
        }
    }

    /// The sequence.
    pub fn seq(&self) -> SeqId {
        self.seq
    }

    /// Prompt tokens given to the model so far (the failed chunk included after an error).
    pub fn done(&self) -> usize {
        self.done
    }

    /// Runs the next chunk of `prompt` (the same tokens at every call) through `model`.
    /// Returns the logits of the prompt's last token after its last chunk, `None` before.
    /// An empty prompt, or a step after the last chunk, is an error.
    pub fn step<'m>(
        &mut self,
        model: &'m LlamaModel,
        cache: &mut CacheManager,
        prompt: &[u32],
    ) -> Result<Option<Logits<'m>>, LlamaError> {
        let start = self.done.min(prompt.len());
        let end = (start + self.chunk).min(prompt.len());
        self.done = end;
        let logits = model.prefill_logits(cache, self.seq, &prompt[start..end])?;
        Ok((end == prompt.len()).then_some(logits))
    }
}

/// The next token of every row of `logits`, row `r` by `samplers[r]`. Greedy samplers take
/// the device's argmax, for which only the ids are downloaded; the others draw from their
/// downloaded row. A row that cannot be drawn from (NaN logits; see the module docs) is an
/// error of its own; a device failure fails the call.
pub fn choose_tokens(
    logits: &Logits<'_>,
    samplers: &mut [&mut Sampler],
) -> Result<Vec<Result<u32, String>>, LlamaError> {
    if samplers.len() != logits.rows() {
        return Err(LlamaError::Input(format!(
            "{} samplers for {} rows of logits",
            samplers.len(),
            logits.rows()
        )));
    }
    let greedy = |s: &Sampler| s.params().is_greedy();
    let ids = if samplers.iter().any(|s| greedy(s)) {
        logits.argmax()?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(samplers.len());
    for (row, sampler) in samplers.iter_mut().enumerate() {
        out.push(if greedy(sampler) {
            let id = ids[row];
            // Only a row of NaN gives 0 with a NaN there.
            if id == 0 && logits.get(row, 0)?.is_nan() {
                Err("the model produced NaN logits".to_string())
            } else {
                Ok(id)
            }
        } else {
            sampler.sample(&logits.row(row)?)
        });
    }
    Ok(out)
}

/// When a generation ends, besides a stop string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The end-of-sequence id that ends it (`None`: never).
    pub eos: Option<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens the sequence holds before the first generated one (the prompt, and for a chat
    /// the conversation before it).
    pub held: usize,
    /// The model's context length: generation ends when the sequence would need more.
    pub context_length: usize,
}

/// What to do after [`Generation::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Feed `token` back into the model (a decode step) and choose the next one; `text` is
    /// the output released so far (possibly empty: an incomplete character, or text that may
    /// begin a stop string).
    Continue {
        /// The token to feed back.
        token: u32,
        /// Newly released output.
        text: String,
    },
    /// Generation ended; `text` is the rest of the output (with a stop string, what came
    /// before it). `token` is the last generated token (not fed back), `None` for EOS.
    Finished {
        /// Why.
        reason: StopReason,
        /// The last generated token, `None` for EOS.
        token: Option<u32>,
        /// The rest of the output.
        text: String,
    },
}

/// One sequence's generation state: its limits, stop strings and text decoder.
#[derive(Debug)]
pub struct Generation<'t> {
    limits: Limits,
    generated: usize,
    /// Taken when generation ends.
    stream: Option<TextDecodeStream<'t>>,
    stop: StopMatcher,
}

impl<'t> Generation<'t> {
    /// A generation decoding its tokens with `tokenizer`, ending at `stops` (empty stop
    /// strings are an error) and `limits`.
    pub fn new(
        tokenizer: &'t TextTokenizer,
        stops: Vec<String>,
        limits: Limits,
    ) -> Result<Self, String> {
        Ok(Generation {
            limits,
            generated: 0,
            stream: Some(tokenizer.decode_stream_continuing(true)),
            stop: StopMatcher::new(stops)?,
        })
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Tokens generated so far (EOS not counted).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Whether generation has ended (a [`Step::Finished`] was returned).
    pub fn is_finished(&self) -> bool {
        self.stream.is_none()
    }

    /// Takes the chosen `token`: EOS ends generation; any other token is decoded to text,
    /// checked for stop strings, and then ends generation at `max_tokens` or the context
    /// length, or is to be fed back. Accepting after the end is an error.
    pub fn accept(&mut self, token: u32) -> Result<Step, GenerationError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(GenerationError::Sampling(
                "generation has already finished".into(),
            ));
        };
        if Some(token) == self.limits.eos {
            return Ok(self.end(StopReason::Eos, None, String::new()));
        }
        self.generated += 1;
        let piece = stream
            .push(token)
            .map_err(|source| GenerationError::Text { token, source })?;
        match self.stop.push(&piece) {
            StopStep::Stopped { text, .. } => {
                // Nothing after the stop string is output.
                self.stream = None;
                Ok(Step::Finished {
                    reason: StopReason::StopString,
                    token: Some(token),
                    text,
                })
            }
            StopStep::Emit(text) => {
                let l = &self.limits;
                Ok(if self.generated >= l.max_tokens {
                    self.end(StopReason::MaxTokens, Some(token), text)
                } else if l.held + self.generated >= l.context_length {
                    self.end(StopReason::ContextLength, Some(token), text)
                } else {
                    Step::Continue { token, text }
                })
            }
        }
    }

    /// Ends generation now for `reason` (e.g. [`StopReason::MaxTokens`] when `max_tokens`
    /// is 0), releasing the text still held back.
    pub fn finish(&mut self, reason: StopReason) -> Step {
        self.end(reason, None, String::new())
    }

    /// Ends generation: `text` plus whatever the decoder and the stop matcher still hold
    /// (cut at a stop string there, which then becomes the reason).
    fn end(&mut self, mut reason: StopReason, token: Option<u32>, mut text: String) -> Step {
        if let Some(stream) = self.stream.take() {
            match self.stop.push(&stream.finish()) {
                StopStep::Emit(t) => {
                    text.push_str(&t);
                    text.push_str(&self.stop.finish());
                }
                StopStep::Stopped { text: t, .. } => {
                    text.push_str(&t);
                    reason = StopReason::StopString;
                }
            }
        }
        Step::Finished {
            reason,
            token,
            text,
        }
    }
}

/// What [`run_sequence`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The generated ids (EOS excluded; with a stop string, up to the token that completed
    /// it).
    pub tokens: Vec<u32>,
    /// Their text (with a stop string, what came before it).
    pub text: String,
    /// Why it ended; `None` when the sink asked to stop.
    pub stop: Option<StopReason>,
    /// Decode steps run (tokens fed back into the cache): every token but the last, unless
    /// generation ended at EOS.
    pub steps: usize,
}

/// Generates for one sequence `seq` of `cache` from its prompt's last `logits` (one row):
/// chooses each token with `sampler` ([`choose_tokens`]), gives it to `generation`, feeds
/// it back with [`LlamaModel::decode_logits`], until the generation ends or `sink` returns
/// `Ok(false)`. `sink(text, last)` receives the output as it is released, with
/// `last == true` once, for the final text (possibly empty) when generation ends.
pub fn run_sequence<E: From<GenerationError>>(
    model: &LlamaModel,
    cache: &mut CacheManager,
    seq: SeqId,
    logits: Logits<'_>,
    sampler: &mut Sampler,
    mut generation: Generation<'_>,
    mut sink: impl FnMut(&str, bool) -> Result<bool, E>,
) -> Result<Generated, E> {
    let mut out = Generated {
        tokens: Vec::new(),
        text: String::new(),
        stop: None,
        steps: 0,
    };
    let mut step = if generation.limits().max_tokens == 0 {
        generation.finish(StopReason::MaxTokens)
    } else {
        take_one(logits, sampler, &mut generation)?
    };
    loop {
        match step {
            Step::Continue { token, text } => {
                out.tokens.push(token);
                out.text.push_str(&text);
                if !sink(&text, false)? {
                    return Ok(out);
                }
                let logits = model
                    .decode_logits(cache, &[seq], &[token])
                    .map_err(GenerationError::from)?;
                out.steps += 1;
                step = take_one(logits, sampler, &mut generation)?;
            }
            Step::Finished {
                reason,
                token,
                text,
            } => {
                out.tokens.extend(token);
                out.text.push_str(&text);
                if sink(&text, true)? {
                    out.stop = Some(reason);
                }
                return Ok(out);
            }
        }
    }
}

/// Chooses the one row of `logits` with `sampler` and gives the token to `generation`; the
/// logits are dropped (their buffers given back) before the caller's next forward call.
fn take_one(
    logits: Logits<'_>,
    sampler: &mut Sampler,
    generation: &mut Generation<'_>,
) -> Result<Step, GenerationError> {
    let chosen = choose_tokens(&logits, &mut [sampler])?;
    drop(logits);
    let token = chosen
        .into_iter()
        .next()
        .expect("one row")
        .map_err(GenerationError::Sampling)?;
    generation.accept(token)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arkvale_core::{CacheConfig, Device, KvDtype, RopeScaling, policy_by_name};
    use arkvale_cpu::CpuDevice;

    use super::*;
    use crate::llama::{HostLayer, LlamaConfig, LlamaHostWeights};
    use crate::sampling::{SamplingParams, argmax};
    use crate::tokenizer::{BpeVocab, PreTokenizer, TokenType, Tokenizer};

    use arkvale_testkit::XorShift as Rng;

    /// 64 tokens: the printable ASCII characters `!` to `` ` `` (byte-level symbols that are
    /// the characters themselves), so every id decodes to one character.
    const VOCAB: usize = 64;

    fn tokenizer() -> TextTokenizer {
        let tokens: Vec<String> = (0..VOCAB as u8)
            .map(|i| char::from(b'!' + i).to_string())
            .collect();
        let vocab = BpeVocab {
            token_types: vec![TokenType::Normal; tokens.len()],
            tokens,
            merges: Vec::new(),
            pre_tokenizer: PreTokenizer::DigitsThenGpt2,
            bos_id: None,
            eos_id: None,
            add_bos: false,
            add_eos: false,
        };
        TextTokenizer::Gguf(Tokenizer::from_vocab(vocab).unwrap())
    }

    fn config() -> LlamaConfig {
        LlamaConfig {
            arch: "llama".into(),
            layers: 2,
            d_model: 32,
            d_ff: 48,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
            vocab: VOCAB,
            context_length: 128,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            rope_freq_factors: None,
            rms_eps: 1e-5,
            tied_embeddings: false,
            qkv_bias: false,
        }
    }

    /// Random weights; `output` replaces the random output projection when given.
    fn model(seed: u64, output: Option<Vec<f32>>) -> LlamaModel {
        let c = config();
        let mut r = Rng(seed | 1);
        let (d, kv, f) = (c.d_model, c.kv_heads * c.head_dim, c.d_ff);
        let s = |k: usize| 1.5 / (k as f32).sqrt();
        let w = LlamaHostWeights {
            embedding: r.vec(c.vocab * d, 1.0),
            layers: (0..c.layers)
                .map(|_| HostLayer {
                    attn_norm: vec![1.0; d],
                    wq: r.vec(d * d, s(d)),
                    wk: r.vec(kv * d, s(d)),
                    wv: r.vec(kv * d, s(d)),
                    wo: r.vec(d * d, s(d)),
                    ffn_norm: vec![1.0; d],
                    w_gate: r.vec(f * d, s(d)),
                    w_up: r.vec(f * d, s(d)),
                    w_down: r.vec(d * f, s(f)),
                    ..Default::default()
                })
                .collect(),
            output_norm: vec![1.0; d],
            output: Some(output.unwrap_or_else(|| r.vec(c.vocab * d, 1.0))),
        };
        let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
        LlamaModel::from_host_weights(dev, c, w, arkvale_core::DType::F32).unwrap()
    }

    fn cache(model: &LlamaModel, policy: &str, chunk: usize) -> CacheManager {
        let config = CacheConfig {
            page_size: 8,
            budget_tokens: 40,
            topk_tokens: Some(16),
            dense_layers: 1,
            kv_dtype: KvDtype::F32,
            device_bytes: 4 << 20,
            host_bytes: 4 << 20,
            prefill_chunk_tokens: chunk,
            ..Default::default()
        };
        let policy = policy_by_name(policy, &config).unwrap();
        CacheManager::new(model.device().clone(), model.shape(), config, policy).unwrap()
    }

    fn prompt(len: usize, seed: u64) -> Vec<u32> {
        let mut r = Rng(seed | 1);
        (0..len)
            .map(|_| ((r.unit() + 1.0) * 32.0) as u32 % VOCAB as u32)
            .collect()
    }

    fn sampler(temperature: f32, seed: u64) -> Sampler {
        let params = SamplingParams {
            temperature,
            ..Default::default()
        };
        Sampler::new(params, seed).unwrap()
    }

    /// Chooses for `logits` with greedy samplers (the device's argmax) and with a temperature
    /// sampler in row 1, and checks every row against the host sampler on the downloaded
    /// logits.
    fn check_choices(logits: &Logits<'_>) {
        let rows = logits.rows();
        let host = logits.to_vec().unwrap();
        let mut samplers: Vec<Sampler> = (0..rows).map(|_| sampler(0.0, 3)).collect();
        let mut refs: Vec<&mut Sampler> = samplers.iter_mut().collect();
        let device = choose_tokens(logits, &mut refs).unwrap();
        for (r, got) in device.into_iter().enumerate() {
            let row = &host[r * VOCAB..(r + 1) * VOCAB];
            assert_eq!(got.unwrap(), argmax(row), "row {r}");
            assert_eq!(sampler(0.0, 3).sample(row).unwrap(), argmax(row));
        }
        if rows > 1 {
            let mut samplers: Vec<Sampler> = (0..rows)
                .map(|r| sampler(if r == 1 { 1.5 } else { 0.0 }, 11))
                .collect();
            let mut refs: Vec<&mut Sampler> = samplers.iter_mut().collect();
            let mixed = choose_tokens(logits, &mut refs).unwrap();
            let drawn = sampler(1.5, 11).sample(&host[VOCAB..2 * VOCAB]).unwrap();
            assert_eq!(*mixed[1].as_ref().unwrap(), drawn);
            assert_eq!(*mixed[0].as_ref().unwrap(), argmax(&host[..VOCAB]));
        }
    }

    #[test]
    fn greedy_on_the_device_equals_greedy_on_downloaded_logits() {
        let m = model(5, None);
        let mut c = cache(&m, "full", 8);
        let seqs: Vec<SeqId> = (0..3).map(|_| c.add_sequence()).collect();
        let mut next = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let logits = m
                .prefill_logits(&mut c, seq, &prompt(5 + 4 * i, i as u64))
                .unwrap();
            assert_eq!((logits.rows(), logits.vocab()), (1, VOCAB));
            check_choices(&logits);
            next.push(logits.argmax().unwrap()[0]);
        }
        for _ in 0..4 {
            let logits = m.decode_logits(&mut c, &seqs, &next).unwrap();
            assert_eq!(logits.rows(), 3);
            check_choices(&logits);
            next = logits.argmax().unwrap();
        }
    }

    #[test]
    fn device_greedy_breaks_ties_to_the_lower_index() {
        // Output rows 9 and 40 equal `w`, rows 20 and 50 equal `-w`, all others zero: 9 and
        // 40 share the logit `s`, 20 and 50 share `-s`, so the largest logit is always a tie
        // (0 wins one only if `s == 0`).
        let d = config().d_model;
        let mut r = Rng(77);
        let w = r.vec(d, 1.0);
        let neg: Vec<f32> = w.iter().map(|x| -x).collect();
        let mut out = vec![0.0; VOCAB * d];
        for (row, v) in [(9, &w), (40, &w), (20, &neg), (50, &neg)] {
            out[row * d..(row + 1) * d].copy_from_slice(v);
        }
        let m = model(6, Some(out));
        let mut c = cache(&m, "full", 8);
        let seqs: Vec<SeqId> = (0..4).map(|_| c.add_sequence()).collect();
        for (i, &seq) in seqs.iter().enumerate() {
            let logits = m
                .prefill_logits(&mut c, seq, &prompt(6, 9 + i as u64))
                .unwrap();
            let host = logits.to_vec().unwrap();
            assert_eq!((host[9], host[20]), (host[40], host[50]));
            let want = match host[9].total_cmp(&0.0) {
                std::cmp::Ordering::Greater => 9,
                std::cmp::Ordering::Less => 20,
                std::cmp::Ordering::Equal => 0,
            };
            assert_eq!(logits.argmax().unwrap(), [want]);
            check_choices(&logits);
        }
        let logits = m.decode_logits(&mut c, &seqs, &[3; 4]).unwrap();
        check_choices(&logits);
    }

    #[test]
    fn reused_buffers_give_the_results_of_fresh_ones() {
        // The same calls on a model that has run calls of other sizes before (its kept
        // buffers hold their values) and on a fresh one.
        let used = model(8, None);
        let mut warm = cache(&used, "arkvale", 8);
        let s = warm.add_sequence();
        used.prefill(&mut warm, s, &prompt(30, 1)).unwrap();
        for t in 0..6 {
            used.decode(&mut warm, &[s], &[t]).unwrap();
        }
        let fresh = model(8, None);
        let run = |m: &LlamaModel| {
            let mut c = cache(m, "arkvale", 8);
            let (a, b) = (c.add_sequence(), c.add_sequence());
            // Over the budget of 40 tokens: the cache evicts and recalls.
            let mut out = m.prefill(&mut c, a, &prompt(45, 2)).unwrap();
            out.extend(m.prefill(&mut c, b, &prompt(37, 3)).unwrap());
            for t in 0..5 {
                out.extend(m.decode(&mut c, &[a, b], &[t, t + 1]).unwrap());
                out.extend(m.decode(&mut c, &[b], &[t + 2]).unwrap());
            }
            out
        };
        let (a, b) = (run(&used), run(&fresh));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn token_level_policies_prefill_the_whole_prompt_at_once() {
        let m = model(5, None);
        for (policy, want) in [("arkvale", 8), ("full", 8), ("h2o", 21), ("tova", 21)] {
            let c = cache(&m, policy, 8);
            assert_eq!(prefill_chunk(&c, 21), want, "{policy}");
        }
        let mut c = cache(&m, "arkvale", 8);
        let seq = c.add_sequence();
        let ids = prompt(21, 4);
        let mut p = Prefill::new(&c, seq, ids.len());
        let mut done = Vec::new();
        let last = loop {
            let logits = p.step(&m, &mut c, &ids).unwrap();
            done.push(p.done());
            if let Some(l) = logits {
                break l.to_vec().unwrap();
            }
        };
        assert_eq!(done, [8, 16, 21]);
        assert_eq!(c.seq_len(seq, 0).unwrap(), 21);
        let mut whole = cache(&m, "arkvale", 8);
        let s = whole.add_sequence();
        assert_eq!(last, m.prefill(&mut whole, s, &ids).unwrap());
        assert!(p.step(&m, &mut c, &ids).is_err(), "past the prompt");
    }

    /// Greedy tokens by hand: prefill, then downloaded logits and the host argmax.
    fn manual_greedy(m: &LlamaModel, ids: &[u32], n: usize) -> Vec<u32> {
        let mut c = cache(m, "arkvale", 8);
        let seq = c.add_sequence();
        let mut next = argmax(&m.prefill(&mut c, seq, ids).unwrap());
        let mut out = vec![next];
        while out.len() < n {
            next = argmax(&m.decode(&mut c, &[seq], &[next]).unwrap());
            out.push(next);
        }
        out
    }

    /// Runs [`run_sequence`] on a fresh cache, collecting what the sink saw.
    fn run(
        m: &LlamaModel,
        tok: &TextTokenizer,
        ids: &[u32],
        stops: &[&str],
        limits: Limits,
        sink_stops_after: Option<usize>,
    ) -> (Generated, Vec<(String, bool)>) {
        let mut c = cache(m, "arkvale", 8);
        let seq = c.add_sequence();
        let mut p = Prefill::new(&c, seq, ids.len());
        let logits = loop {
            if let Some(l) = p.step(m, &mut c, ids).unwrap() {
                break l;
            }
        };
        let stops = stops.iter().map(|s| s.to_string()).collect();
        let generation = Generation::new(tok, stops, limits).unwrap();
        let mut seen = Vec::new();
        let g = run_sequence(
            m,
            &mut c,
            seq,
            logits,
            &mut sampler(0.0, 1),
            generation,
            |text, last| -> Result<bool, GenerationError> {
                seen.push((text.to_string(), last));
                Ok(sink_stops_after.is_none_or(|n| seen.len() < n))
            },
        )
        .unwrap();
        assert_eq!(c.seq_len(seq, 0).unwrap(), ids.len() + g.steps);
        (g, seen)
    }

    #[test]
    fn the_step_machine_generates_the_greedy_tokens_and_stops_where_asked() {
        let m = model(12, None);
        let tok = tokenizer();
        let ids = prompt(19, 5);
        let want = manual_greedy(&m, &ids, 12);
        let text = |t: &[u32]| tok.decode(t, true).unwrap();
        let limits = Limits {
            eos: None,
            max_tokens: 12,
            held: ids.len(),
            context_length: 128,
        };

        // max_tokens: every token, all but the last fed back.
        let (g, seen) = run(&m, &tok, &ids, &[], limits, None);
        assert_eq!(g.tokens, want);
        assert_eq!(g.text, text(&want));
        assert_eq!((g.stop, g.steps), (Some(StopReason::MaxTokens), 11));
        assert_eq!(seen.len(), 12);
        assert!(seen[..11].iter().all(|(_, last)| !last) && seen[11].1);
        let streamed: String = seen.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(streamed, g.text);

        // EOS: the tokens before its first appearance; EOS itself is neither output nor fed.
        let k = 5;
        let eos = want[k];
        let first = want.iter().position(|&t| t == eos).unwrap();
        let (g, _) = run(
            &m,
            &tok,
            &ids,
            &[],
            Limits {
                eos: Some(eos),
                ..limits
            },
            None,
        );
        assert_eq!(g.tokens, want[..first]);
        assert_eq!((g.stop, g.steps), (Some(StopReason::Eos), first));

        // A stop string (the text of token k): up to the token that completed it, text before.
        let stop = text(&want[k..=k]);
        let j = want.iter().position(|&t| text(&[t]) == stop).unwrap();
        let (g, _) = run(&m, &tok, &ids, &[&stop], limits, None);
        assert_eq!(g.tokens, want[..=j]);
        assert_eq!(g.text, text(&want[..j]));
        assert_eq!((g.stop, g.steps), (Some(StopReason::StopString), j));

        // The context length: the sequence may hold 4 more tokens, of which 3 are fed back.
        let ctx = Limits {
            context_length: ids.len() + 4,
            ..limits
        };
        let (g, _) = run(&m, &tok, &ids, &[], ctx, None);
        assert_eq!(g.tokens, want[..4]);
        assert_eq!((g.stop, g.steps), (Some(StopReason::ContextLength), 3));

        // max_tokens 0: nothing chosen, one empty final text.
        let none = Limits {
            max_tokens: 0,
            ..limits
        };
        let (g, seen) = run(&m, &tok, &ids, &[], none, None);
        assert!(g.tokens.is_empty() && g.text.is_empty() && g.steps == 0);
        assert_eq!(g.stop, Some(StopReason::MaxTokens));
        assert_eq!(seen, [(String::new(), true)]);

        // A sink that stops after three pieces: three tokens, two fed back, no reason.
        let (g, seen) = run(&m, &tok, &ids, &[], limits, Some(3));
        assert_eq!(g.tokens, want[..3]);
        assert_eq!((g.stop, g.steps, seen.len()), (None, 2, 3));
    }

    #[test]
    fn a_stop_string_split_over_tokens_is_held_back_and_cut() {
        let tok = tokenizer();
        let id = |c: char| c as u32 - '!' as u32;
        let limits = Limits {
            eos: Some(id('#')),
            max_tokens: 10,
            held: 0,
            context_length: 100,
        };
        let mut g = Generation::new(&tok, vec!["AB".into()], limits).unwrap();
        let cont = |token: u32, text: &str| Step::Continue {
            token,
            text: text.into(),
        };
        assert_eq!(g.accept(id('Z')).unwrap(), cont(id('Z'), "Z"));
        assert_eq!(g.accept(id('A')).unwrap(), cont(id('A'), ""));
        assert_eq!(g.accept(id('A')).unwrap(), cont(id('A'), "A"));
        assert_eq!(
            g.accept(id('B')).unwrap(),
            Step::Finished {
                reason: StopReason::StopString,
                token: Some(id('B')),
                text: String::new(),
            }
        );
        assert!(g.is_finished() && g.accept(id('Z')).is_err());
        assert_eq!(g.generated(), 4);

        // A partial match held at EOS is released when generation ends.
        let mut g = Generation::new(&tok, vec!["AB".into()], limits).unwrap();
        assert_eq!(g.accept(id('A')).unwrap(), cont(id('A'), ""));
        assert_eq!(
            g.accept(id('#')).unwrap(),
            Step::Finished {
                reason: StopReason::Eos,
                token: None,
                text: "A".into(),
            }
        );
        assert_eq!(g.generated(), 1);
        assert!(Generation::new(&tok, vec![String::new()], limits).is_err());
    }
}
