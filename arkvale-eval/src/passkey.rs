//! Passkey retrieval (the paper's Table 1) and the retrieval sweep shared with [`crate::niah`].
//!
//! The prompt (the classic format; `arkvale-model/tests/fixtures/smollm2_reference.json` holds
//! it as measured with llama.cpp): the task line, the filler "The grass is green. ..."
//! repeated, the needle "The pass key is NNNNN. Remember it. NNNNN is the pass key." at the
//! depth, the filler again, then "What is the pass key? The pass key is" — the pieces joined
//! by newlines, the filler repetitions by spaces. Greedy decoding; a case is correct when the key appears
//! in the text of the first 8 generated tokens.

use arkvale_core::SnapshotOptions;
use arkvale_model::llama::LlamaModel;
use serde_json::json;

use crate::report::{Record, Results, accuracy_table};
use crate::rng::Rng;
use crate::runner::{self, Progress, Sweep};
use crate::{EvalError, EvalTokenizer, Result};

/// The task line.
pub const TASK: &str = "There is an important info hidden inside a lot of irrelevant text. Find \
                        it and memorize it. I will quiz you about the important information there.";
/// One repetition of the built-in filler.
pub const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
/// The question closing the raw prompt.
pub const QUESTION: &str = "What is the pass key? The pass key is";
/// The question of the chat prompt's user turn.
pub const CHAT_QUESTION: &str = "What is the pass key?";
/// What the assistant turn starts with in the chat prompt.
pub const CHAT_ANSWER_PREFIX: &str = "The pass key is";

/// The needle sentence for `key`.
pub fn needle(key: &str) -> String {
    format!("The pass key is {key}. Remember it. {key} is the pass key.")
}

/// The text the needles hide in.
#[derive(Debug, Clone)]
pub enum Haystack {
    /// The built-in filler, in whole repetitions (`' '.join([FILLER] * n)` per segment).
    Filler {
        /// Tokens of `FILLER`.
        first: Vec<u32>,
        /// Tokens of `" " + FILLER`.
        next: Vec<u32>,
    },
    /// Real text (tokens of a file, repeated if the file is too short), cut at token positions.
    Text {
        /// Tokens of the whole text.
        ids: Vec<u32>,
        /// Token positions where a paragraph (a line) starts: 0 and every position right after
        /// a token that holds a newline. A prompt's haystack may start at any of them
        /// ([`HaystackStart::Random`]).
        paragraphs: Vec<usize>,
    },
}

/// Where in a real-text haystack each prompt's haystack begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HaystackStart {
    /// At the text's first token, for every prompt (one passage of the text for every case:
    /// a text whose opening happens to confuse the model fails every case alike).
    Beginning,
    /// At a paragraph start drawn per case from the seed, so that a sweep samples many passages
    /// of the text (the default).
    #[default]
    Random,
}

impl HaystackStart {
    /// The CLI names, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["beginning", "random"];

    /// The option by its CLI name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "beginning" => Ok(HaystackStart::Beginning),
            "random" => Ok(HaystackStart::Random),
            _ => Err(EvalError::Input(format!(
                "unknown haystack start '{name}', expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            HaystackStart::Beginning => "beginning",
            HaystackStart::Random => "random",
        }
    }
}

impl Haystack {
    /// The built-in filler.
    pub fn filler(tok: &dyn EvalTokenizer) -> Result<Self> {
        Ok(Haystack::Filler {
            first: tok.encode_text(FILLER)?,
            next: tok.encode_text(&format!(" {FILLER}"))?,
        })
    }

    /// Real text, its paragraph starts found from the tokens' own text. Errors on text
    /// without tokens.
    pub fn text(tok: &dyn EvalTokenizer, text: &str) -> Result<Self> {
        let ids = tok.encode_text(text.trim())?;
        if ids.is_empty() {
            return Err(EvalError::Input("the haystack text is empty".into()));
        }
        let mut has_newline = std::collections::HashMap::new();
        let mut newline = Vec::with_capacity(ids.len());
        for &id in &ids {
            let nl = match has_newline.get(&id) {
                Some(&nl) => nl,
                None => *has_newline
                    .entry(id)
                    .or_insert(tok.decode_text(&[id])?.contains('\n')),
            };
            newline.push(nl);
        }
        // A run of newline tokens starts its paragraph after the last of them.
        let paragraphs = std::iter::once(0)
            .chain((1..ids.len()).filter(|&i| newline[i - 1] && !newline[i]))
            .collect();
        Ok(Haystack::Text { ids, paragraphs })
    }

    /// The token offset a prompt's haystack starts at: 0 for the filler and for
    /// [`HaystackStart::Beginning`], else a paragraph start drawn from `rng`.
    pub fn start(&self, how: HaystackStart, rng: &mut Rng) -> usize {
        match (self, how) {
            (Haystack::Text { paragraphs, .. }, HaystackStart::Random) => {
                paragraphs[rng.range(0, paragraphs.len() as u64) as usize]
            }
            _ => 0,
        }
    }

    /// `cuts.len() + 1` segments of at most `budget` tokens in all, the haystack cut at the
    /// fractions `cuts` (each in `[0, 1]`, ascending); a text haystack read from token `start`
    /// on (wrapping around to its beginning), the filler ignores `start`.
    pub fn segments(&self, budget: usize, cuts: &[f64], start: usize) -> Vec<Vec<u32>> {
        let s = cuts.len() + 1;
        let bounds = |n: usize| -> Vec<usize> {
            let mut b = vec![0];
            b.extend(
                cuts.iter()
                    .map(|f| ((f.clamp(0.0, 1.0) * n as f64).round() as usize).min(n)),
            );
            b.push(n);
            for i in 1..b.len() {
                b[i] = b[i].max(b[i - 1]);
            }
            b
        };
        match self {
            Haystack::Filler { first, next } => {
                // Each non-empty segment pays `first` once and `next` per further repetition.
                let extra = first.len().saturating_sub(next.len()) * s;
                let n = budget.saturating_sub(extra) / next.len().max(1);
                let b = bounds(n);
                b.windows(2)
                    .map(|w| {
                        let k = w[1] - w[0];
                        let mut seg = Vec::new();
                        for i in 0..k {
                            seg.extend_from_slice(if i == 0 { first } else { next });
                        }
                        seg
                    })
                    .collect()
            }
            Haystack::Text { ids, .. } => {
                let all: Vec<u32> = ids
                    .iter()
                    .copied()
                    .cycle()
                    .skip(start % ids.len())
                    .take(budget)
                    .collect();
                let b = bounds(all.len());
                b.windows(2).map(|w| all[w[0]..w[1]].to_vec()).collect()
            }
        }
    }
}

/// A retrieval prompt: fixed text around a haystack with needles at depths.
#[derive(Debug, Clone)]
pub struct PromptSpec<'a> {
    /// Tokens before the haystack (task line).
    pub prefix: Vec<u32>,
    /// Needles (tokens) with the depth each goes to (fractions of the haystack).
    pub needles: Vec<(f64, Vec<u32>)>,
    /// Tokens after the haystack (question).
    pub suffix: Vec<u32>,
    /// The haystack.
    pub haystack: &'a Haystack,
    /// Token offset the haystack is read from ([`Haystack::start`]).
    pub start: usize,
}

/// Builds `prefix \n seg0 \n needle \n seg1 ... \n suffix` of at most `context` tokens
/// (whole filler repetitions; exactly `context` for a text haystack).
pub fn assemble(
    tok: &dyn EvalTokenizer,
    spec: &PromptSpec<'_>,
    context: usize,
) -> Result<Vec<u32>> {
    let nl = tok.encode_text("\n")?;
    let mut needles = spec.needles.clone();
    needles.sort_by(|a, b| a.0.total_cmp(&b.0));
    let fixed = spec.prefix.len()
        + spec.suffix.len()
        + needles.iter().map(|n| n.1.len()).sum::<usize>()
        // A newline before every haystack segment (needles + 1), every needle, and the suffix.
        + nl.len() * (2 * needles.len() + 2);
    if fixed + 16 > context {
        return Err(EvalError::Input(format!(
            "a context of {context} tokens cannot hold the task, needles and question ({fixed} \
             tokens) and a haystack"
        )));
    }
    let cuts: Vec<f64> = needles.iter().map(|n| n.0).collect();
    let segs = spec.haystack.segments(context - fixed, &cuts, spec.start);
    let mut ids = spec.prefix.clone();
    for (i, seg) in segs.iter().enumerate() {
        ids.extend_from_slice(&nl);
        ids.extend_from_slice(seg);
        if let Some((_, n)) = needles.get(i) {
            ids.extend_from_slice(&nl);
            ids.extend_from_slice(n);
        }
    }
    ids.extend_from_slice(&nl);
    ids.extend_from_slice(&spec.suffix);
    Ok(ids)
}

/// Turns a user message into prompt tokens with the model's chat template (ending with the
/// assistant header); given by the caller, which owns the template.
pub type ChatRender<'a> = &'a dyn Fn(&str) -> Result<Vec<u32>>;

/// One prompt of a retrieval sweep.
#[derive(Debug, Clone)]
pub struct RetrievalCase {
    /// Task name for the records.
    pub task: String,
    /// Context length asked for.
    pub target_context: usize,
    /// Depth of the (first) needle.
    pub depth: f64,
    /// The key or question subject, for the records.
    pub key: String,
    /// Strings that must all appear in the output.
    pub answers: Vec<String>,
    /// Prompt tokens.
    pub ids: Vec<u32>,
    /// Tokens to generate.
    pub gen_tokens: usize,
    /// Token offset into the text haystack the prompt's haystack starts at (0: the filler or
    /// the text's beginning).
    pub haystack_start: usize,
}

/// Runs every case under every variant of `sweep`: one prefill per case, one fork per
/// variant, greedy decoding. A case's `correct` is whether every answer appears in the output;
/// `extra.score` is the fraction that does.
pub fn run_cases(
    model: &LlamaModel,
    tok: &dyn EvalTokenizer,
    sweep: &Sweep,
    cases: &[RetrievalCase],
    progress: &mut dyn Progress,
) -> Result<Vec<Record>> {
    let token_weights = sweep
        .variants
        .iter()
        .any(|v| matches!(v.policy.as_str(), "h2o" | "tova"));
    for c in cases {
        runner::check_context(model, c.ids.len(), c.gen_tokens)?;
    }
    progress.start((cases.len() * sweep.variants.len()) as u64, "cases");
    let mut records = Vec::new();
    for c in cases {
        let pre = runner::prefill_once(
            model,
            &sweep.base,
            &c.ids,
            SnapshotOptions {
                token_weights,
                ..Default::default()
            },
        )?;
        for v in &sweep.variants {
            progress.inc(
                0,
                &format!(
                    "ctx {} depth {:.2} {}",
                    c.target_context,
                    c.depth,
                    v.label()
                ),
            );
            let t = std::time::Instant::now();
            let (mut cache, seq) = runner::fork(model, sweep, v, &pre.snapshot, c.gen_tokens)?;
            let out = runner::greedy(model, &mut cache, seq, &pre.logits, c.gen_tokens, tok.eos())?;
            let text = tok.decode_text(&out)?;
            let found = c
                .answers
                .iter()
                .filter(|a| text.contains(a.as_str()))
                .count();
            let stats = cache.stats();
            records.push(Record {
                task: c.task.clone(),
                policy: v.policy.clone(),
                budget: v.budget,
                page_size: sweep.base.page_size,
                context: c.ids.len(),
                depth: Some(c.depth),
                key: c.key.clone(),
                output: text,
                correct: Some(found == c.answers.len()),
                extra: serde_json::Map::from_iter([
                    ("target_context".into(), json!(c.target_context)),
                    ("haystack_start".into(), json!(c.haystack_start)),
                    ("answers".into(), json!(c.answers)),
                    (
                        "score".into(),
                        json!(found as f64 / c.answers.len().max(1) as f64),
                    ),
                    ("prefill_s".into(), json!(round3(pre.seconds))),
                    ("decode_s".into(), json!(round3(t.elapsed().as_secs_f64()))),
                    ("recalls".into(), json!(stats.recalls)),
                ]),
            });
            progress.inc(1, "");
        }
        progress.checkpoint(&records);
    }
    progress.finish();
    Ok(records)
}

/// Rounds to 3 decimals (timings in the records).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `n` depths evenly spaced over `0 .. 1` (`0, 1/n, ..., (n-1)/n`: 10 gives 0%..90%).
pub fn even_depths(n: usize) -> Vec<f64> {
    (0..n).map(|i| i as f64 / n as f64).collect()
}

/// Options of the passkey task.
#[derive(Debug, Clone)]
pub struct PasskeyOptions {
    /// Context lengths in tokens.
    pub contexts: Vec<usize>,
    /// Needle depths (fractions of the haystack).
    pub depths: Vec<f64>,
    /// Seed of the keys.
    pub seed: u64,
    /// Tokens generated per case (the key must appear in them).
    pub gen_tokens: usize,
    /// Where each prompt's haystack starts in a real text.
    pub haystack_start: HaystackStart,
}

/// Builds the passkey prompts: one per context × depth, each with its own 5-digit key. Depths
/// come in [`runner::spread_order`] (contexts inner), so that a sweep stopped part-way has
/// every context at evenly spread depths.
pub fn cases(
    tok: &dyn EvalTokenizer,
    haystack: &Haystack,
    chat: Option<ChatRender<'_>>,
    opts: &PasskeyOptions,
) -> Result<Vec<RetrievalCase>> {
    let mut out = Vec::new();
    for di in runner::spread_order(opts.depths.len()) {
        let depth = opts.depths[di];
        for &ctx in &opts.contexts {
            let key = Rng::for_case(opts.seed, &format!("passkey/{ctx}/{di}"))
                .range(10_000, 100_000)
                .to_string();
            let start = haystack.start(
                opts.haystack_start,
                &mut Rng::for_case(opts.seed, &format!("passkey-start/{ctx}/{di}")),
            );
            let needle_ids = tok.encode_text(&needle(&key))?;
            let ids = match chat {
                None => assemble(
                    tok,
                    &PromptSpec {
                        prefix: tok.encode_text(TASK)?,
                        needles: vec![(depth, needle_ids)],
                        suffix: tok.encode_text(QUESTION)?,
                        haystack,
                        start,
                    },
                    ctx,
                )?,
                Some(render) => {
                    // Measure the template's overhead, then fill the rest with haystack.
                    let bare = render(&format!("{TASK}\n\n{CHAT_QUESTION}"))?.len()
                        + tok.encode_text(CHAT_ANSWER_PREFIX)?.len();
                    let inner_ctx = ctx.checked_sub(bare).ok_or_else(|| {
                        EvalError::Input(format!("context {ctx} is shorter than the chat prompt"))
                    })?;
                    let inner = assemble(
                        tok,
                        &PromptSpec {
                            prefix: Vec::new(),
                            needles: vec![(depth, needle_ids)],
                            suffix: Vec::new(),
                            haystack,
                            start,
                        },
                        inner_ctx,
                    )?;
                    let text = format!(
                        "{TASK}\n{}\n{CHAT_QUESTION}",
                        tok.decode_text(&inner)?.trim()
                    );
                    let mut ids = render(&text)?;
                    ids.extend(tok.encode_text(CHAT_ANSWER_PREFIX)?);
                    ids
                }
            };
            out.push(RetrievalCase {
                task: "passkey".into(),
                target_context: ctx,
                depth,
                key: key.clone(),
                answers: vec![key],
                ids,
                gen_tokens: opts.gen_tokens,
                haystack_start: start,
            });
        }
    }
    Ok(out)
}

/// The passkey sweep: cases × variants, with an accuracy table.
pub fn run(
    model: &LlamaModel,
    tok: &dyn EvalTokenizer,
    sweep: &Sweep,
    cases: &[RetrievalCase],
    progress: &mut dyn Progress,
) -> Result<Results> {
    sweep.validate(model)?;
    let records = run_cases(model, tok, sweep, cases, progress)?;
    let tables = vec![accuracy_table(
        "Passkey retrieval (correct / cases per context length)",
        &records,
    )];
    Ok(Results {
        meta: serde_json::Map::new(),
        records,
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_order_is_a_permutation_spreading_early_indices() {
        assert_eq!(runner::spread_order(4), vec![0, 2, 1, 3]);
        assert_eq!(runner::spread_order(10)[..4], [0, 8, 4, 2]);
        let mut all = runner::spread_order(10);
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(runner::spread_order(0).is_empty());
        assert_eq!(runner::spread_order(1), vec![0]);
    }

    #[test]
    fn depths_are_evenly_spaced() {
        assert_eq!(even_depths(4), vec![0.0, 0.25, 0.5, 0.75]);
        assert_eq!(even_depths(10)[9], 0.9);
    }

    #[test]
    fn text_segments_cover_the_budget() {
        let h = Haystack::Text {
            ids: vec![1, 2, 3],
            paragraphs: vec![0],
        };
        let s = h.segments(10, &[0.5], 0);
        assert_eq!(s, vec![vec![1, 2, 3, 1, 2], vec![3, 1, 2, 3, 1]]);
        let s = h.segments(5, &[0.4], 2);
        assert_eq!(s, vec![vec![3, 1], vec![2, 3, 1]]);
        let s = h.segments(4, &[0.0, 1.0], 0);
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![0, 4, 0]);
    }

    /// One token per character.
    struct Chars;
    impl EvalTokenizer for Chars {
        fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.chars().map(|c| c as u32).collect())
        }
        fn decode_text(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().filter_map(|&i| char::from_u32(i)).collect())
        }
        fn eos(&self) -> Option<u32> {
            None
        }
    }

    #[test]
    fn a_text_haystack_prompt_has_exactly_the_context() {
        let h = Haystack::Text {
            ids: (100..200).collect(),
            paragraphs: vec![0],
        };
        for needles in 1..=3 {
            let spec = PromptSpec {
                prefix: vec![1, 2, 3],
                needles: (0..needles).map(|i| (i as f64 / 3.0, vec![7; 5])).collect(),
                suffix: vec![4, 5],
                haystack: &h,
                start: 37,
            };
            for context in [64, 65, 300] {
                let ids = assemble(&Chars, &spec, context).unwrap();
                assert_eq!(ids.len(), context, "{needles} needles");
            }
        }
    }

    #[test]
    fn paragraph_starts_follow_newlines_and_random_starts_are_among_them() {
        let h = Haystack::text(&Chars, "ab\n\ncd\nef").unwrap();
        let Haystack::Text { ids, paragraphs } = &h else {
            panic!("a text haystack");
        };
        assert_eq!(ids.len(), 9);
        assert_eq!(paragraphs, &vec![0, 4, 7]);
        assert_eq!(h.start(HaystackStart::Beginning, &mut Rng::new(3)), 0);
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = Rng::new(11);
        for _ in 0..64 {
            seen.insert(h.start(HaystackStart::Random, &mut rng));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 4, 7]);
        let filler = Haystack::filler(&Chars).unwrap();
        assert_eq!(filler.start(HaystackStart::Random, &mut rng), 0);
        assert_eq!(
            HaystackStart::parse("random").unwrap(),
            HaystackStart::Random
        );
        assert!(HaystackStart::parse("middle").is_err());
    }

    #[test]
    fn filler_segments_are_whole_repetitions() {
        let h = Haystack::Filler {
            first: vec![1, 2, 3],
            next: vec![9, 2, 3],
        };
        let s = h.segments(14, &[0.5], 5);
        // 14 - (3-3)*2 = 14 → 4 repetitions, 2 + 2.
        assert_eq!(s[0], vec![1, 2, 3, 9, 2, 3]);
        assert_eq!(s[1], vec![1, 2, 3, 9, 2, 3]);
    }
}
