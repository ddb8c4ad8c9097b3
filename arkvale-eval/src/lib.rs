//! # arkvale-eval
//!
//! The experiments of the ArkVale paper on a real model, with every baseline policy, as
//! library code: the accuracy experiments behind `arkvale eval` and the throughput experiment
//! behind `arkvale bench throughput`. It drives arkvale-model's [`LlamaModel`] through
//! arkvale-core's cache manager; it owns no model code, no policy and no kernel, and it draws
//! nothing (tables and plots on screen are the `arkvale` CLI's, in arkvale-cli).
//!
//! * [`passkey`] — the paper's Table 1 task (a 5-digit pass key hidden at a depth of filler
//!   text, greedy decoding, correct if the key is in the first 8 generated tokens);
//! * [`niah`] — needle-in-a-haystack variants in the spirit of RULER (several keys, several
//!   values, distractor needles, real-text haystacks);
//! * [`fidelity`] — teacher-forced decoding of real text under each policy: top-1 agreement
//!   and KL divergence against `full`, and perplexity;
//! * [`digest_recall`] — the paper's Fig. 7: how well each digest kind's estimated top-k
//!   pages overlap the true top-k pages (by exact max q·k) on real queries and keys;
//! * [`recalls`] — the paper's Fig. 4b: recalls per decode step against cache capacity and k;
//! * [`throughput`] — the paper's Fig. 9b: the largest batch each policy fits under a KV
//!   memory cap and its decode tokens/s.
//!
//! Every task prefills each prompt **once** (a `full` cache recording a
//! [`arkvale_core::PrefillSnapshot`]) and forks the recorded state into one cache per policy ×
//! budget ([`runner`]): prefill attention is exact for every policy, so only what each policy
//! keeps differs, and `CacheManager::fork_snapshot` rebuilds exactly that. Results are
//! [`Record`]s written as `results.json`, CSV and markdown ([`report`]); [`summary`] renders
//! any task's tables from records read back. Progress goes to a caller-supplied [`Progress`]
//! sink; everything is deterministic given the seed. The real-prose haystacks ([`haystacks`])
//! are built into the crate (`data/haystack/`).
//!
//! [`LlamaModel`]: arkvale_model::llama::LlamaModel

#![warn(missing_docs)]

pub mod digest_recall;
pub mod error;
pub mod fidelity;
pub mod haystacks;
pub mod niah;
pub mod passkey;
pub mod recalls;
pub mod report;
pub mod rng;
pub mod runner;
pub mod summary;
pub mod throughput;

pub use error::{EvalError, Result};
pub use report::{Record, Results};
pub use runner::{Progress, Sweep, Variant};

/// What the tasks need of a tokenizer: plain text to ids (no BOS, special tokens not
/// parsed), ids back to text, and the end-of-sequence id. Implemented for the GGUF
/// [`arkvale_model::tokenizer::Tokenizer`]; implement it for any other.
pub trait EvalTokenizer {
    /// Token ids of `text` (no special tokens added or parsed).
    fn encode_text(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids`, special tokens skipped.
    fn decode_text(&self, ids: &[u32]) -> Result<String>;
    /// The end-of-sequence id, if any.
    fn eos(&self) -> Option<u32>;
}

impl EvalTokenizer for arkvale_model::tokenizer::Tokenizer {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, false, false)
            .map_err(|e| EvalError::Tokenizer(e.to_string()))
    }
    fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.decode(ids, true)
            .map_err(|e| EvalError::Tokenizer(e.to_string()))
    }
    fn eos(&self) -> Option<u32> {
        self.eos_id()
    }
}

pub use arkvale_model::sampling::argmax;
