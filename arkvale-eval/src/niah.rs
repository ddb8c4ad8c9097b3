//! Needle-in-a-haystack variants in the spirit of RULER (Hsieh et al., 2024), on the built-in
//! filler or a real-text haystack:
//!
//! * `single` — one needle "One of the special magic numbers for KEY is: VALUE." at the depth;
//! * `multikey` — the same needle plus `distractors` needles for other keys at random depths;
//!   the question asks for the first key only;
//! * `multivalue` — `values` needles for the same key with different values (the first at the
//!   depth, the others at random depths); every value must be generated.
//!
//! Keys are words, values 7-digit numbers, all drawn from the seed. The question: "What is the
//! special magic number for KEY mentioned in the provided text? The special magic number for
//! KEY mentioned in the provided text is" (plural for `multivalue`). `score` is the fraction of
//! values found in the output; `correct` means all of them.

use arkvale_model::llama::LlamaModel;

use crate::passkey::{self, Haystack, PromptSpec, RetrievalCase};
use crate::report::{Results, accuracy_table};
use crate::rng::Rng;
use crate::runner::{Progress, Sweep};
use crate::{EvalError, EvalTokenizer, Result};

/// The variant names.
pub const VARIANTS: [&str; 3] = ["single", "multikey", "multivalue"];

const WORDS: [&str; 32] = [
    "apple", "river", "candle", "falcon", "garden", "harbor", "island", "jacket", "kettle",
    "lantern", "meadow", "needle", "orchid", "pepper", "quarry", "rocket", "saddle", "tunnel",
    "umbrella", "velvet", "walnut", "yogurt", "zebra", "anchor", "bridge", "copper", "dolphin",
    "ember", "forest", "glacier", "hammer", "icicle",
];

/// Options of the NIAH task.
#[derive(Debug, Clone)]
pub struct NiahOptions {
    /// Variants to run (of [`VARIANTS`]).
    pub variants: Vec<String>,
    /// Context lengths in tokens.
    pub contexts: Vec<usize>,
    /// Depths of the (first) needle.
    pub depths: Vec<f64>,
    /// Distractor needles of `multikey`.
    pub distractors: usize,
    /// Values of `multivalue`.
    pub values: usize,
    /// Seed.
    pub seed: u64,
    /// Where each prompt's haystack starts in a real text.
    pub haystack_start: passkey::HaystackStart,
}

fn sentence(key: &str, value: &str) -> String {
    format!("One of the special magic numbers for {key} is: {value}.")
}

/// Builds the NIAH prompts: variants × depths × contexts (depths in
/// [`crate::runner::spread_order`]).
pub fn cases(
    tok: &dyn EvalTokenizer,
    haystack: &Haystack,
    opts: &NiahOptions,
) -> Result<Vec<RetrievalCase>> {
    let task = tok.encode_text(
        "Some special magic numbers are hidden within the following text. Make sure to \
         memorize them. I will quiz you about the numbers afterwards.",
    )?;
    let mut out = Vec::new();
    for variant in &opts.variants {
        if !VARIANTS.contains(&variant.as_str()) {
            return Err(EvalError::Input(format!(
                "unknown NIAH variant '{variant}', expected one of {}",
                VARIANTS.join(", ")
            )));
        }
        if variant == "multivalue" && opts.values == 0 {
            return Err(EvalError::Input("--values must be at least 1".into()));
        }
        for di in crate::runner::spread_order(opts.depths.len()) {
            let depth = opts.depths[di];
            for &ctx in &opts.contexts {
                let mut rng = Rng::for_case(opts.seed, &format!("niah/{variant}/{ctx}/{di}"));
                let mut words: Vec<&str> = WORDS.to_vec();
                // Fisher-Yates: distinct keys.
                for i in (1..words.len()).rev() {
                    words.swap(i, rng.range(0, i as u64 + 1) as usize);
                }
                let mut value = || rng.range(1_000_000, 10_000_000).to_string();
                let key = words[0];
                let mut answers = vec![value()];
                let mut needles = vec![(depth, sentence(key, &answers[0]))];
                let plural = variant == "multivalue";
                match variant.as_str() {
                    "multikey" => {
                        for w in words.iter().skip(1).take(opts.distractors) {
                            let v = value();
                            needles.push((0.0, sentence(w, &v)));
                        }
                    }
                    "multivalue" => {
                        for _ in 1..opts.values {
                            let v = value();
                            needles.push((0.0, sentence(key, &v)));
                            answers.push(v);
                        }
                    }
                    _ => {}
                }
                let mut rng = Rng::for_case(opts.seed, &format!("niah-depth/{variant}/{ctx}/{di}"));
                for n in needles.iter_mut().skip(1) {
                    n.0 = rng.unit();
                }
                let question = if plural {
                    format!(
                        "What are all the special magic numbers for {key} mentioned in the \
                         provided text? The special magic numbers for {key} mentioned in the \
                         provided text are"
                    )
                } else {
                    format!(
                        "What is the special magic number for {key} mentioned in the provided \
                         text? The special magic number for {key} mentioned in the provided \
                         text is"
                    )
                };
                let start = haystack.start(
                    opts.haystack_start,
                    &mut Rng::for_case(opts.seed, &format!("niah-start/{variant}/{ctx}/{di}")),
                );
                let spec = PromptSpec {
                    prefix: task.clone(),
                    needles: needles
                        .iter()
                        .map(|(d, s)| Ok((*d, tok.encode_text(s)?)))
                        .collect::<Result<_>>()?,
                    suffix: tok.encode_text(&question)?,
                    haystack,
                    start,
                };
                let ids = passkey::assemble(tok, &spec, ctx)?;
                out.push(RetrievalCase {
                    task: format!("niah-{variant}"),
                    target_context: ctx,
                    depth,
                    key: key.into(),
                    gen_tokens: 12 * answers.len(),
                    answers,
                    ids,
                    haystack_start: start,
                });
            }
        }
    }
    Ok(out)
}

/// The NIAH sweep: cases × variants of `sweep`, with one accuracy table per NIAH variant.
pub fn run(
    model: &LlamaModel,
    tok: &dyn EvalTokenizer,
    sweep: &Sweep,
    cases: &[RetrievalCase],
    progress: &mut dyn Progress,
) -> Result<Results> {
    sweep.validate(model)?;
    let records = passkey::run_cases(model, tok, sweep, cases, progress)?;
    let mut tasks: Vec<&str> = records.iter().map(|r| r.task.as_str()).collect();
    tasks.dedup();
    let tables = tasks
        .iter()
        .map(|t| {
            let mine: Vec<_> = records.iter().filter(|r| r.task == *t).cloned().collect();
            accuracy_table(&format!("{t} (all values retrieved / cases)"), &mine)
        })
        .collect();
    Ok(Results {
        meta: serde_json::Map::new(),
        records,
        tables,
    })
}
