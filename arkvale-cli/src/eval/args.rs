//! The options of `arkvale eval` (clap derive).

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use crate::common_args::{CacheShape, ExperimentArgs};

/// The policies' exact rules, shown by `arkvale eval <task> --help`.
pub const POLICY_RULES: &str = "\
Policies (every one gets the same token budget B; pages of --page-size tokens; the first \
--dense-layers layers of every policy keep and attend every page, paper Fig. 3):
  full       no eviction: every token resident and attended (the reference).
  arkvale    B/page-size pages resident per layer; every full page is backed up to host memory \
and summarized into a digest (--digest, default cuboid-mean); after the prompt the sink pages \
(--sinks), the window (--window, the partial page included) and the pages scoring best against \
the last prompt token's query are kept; each decode step scores every page from its digest, \
takes the top-k (--topk, default min(1280, B/2) tokens) and recalls evicted top-k pages from \
host memory in place of the lowest-scored resident ones; attention over the resident pages.
  streaming  StreamingLLM: the sink pages + the most recent B/page-size - sinks pages; evicted \
pages never return.
  h2o        H2O, per KV head at token granularity: B/2 most recent tokens + B - B/2 heavy \
hitters by attention accumulated over every query (the prompt's included); each step evicts \
the non-recent token with the least accumulated attention.
  tova       TOVA, per layer at token granularity: after the prompt keep the B tokens the last \
prompt token attends to most (averaged over all heads); each step evicts the token with the \
lowest current attention.
  quest      Quest: every page stays resident; each step attends the sinks, the window and the \
B/page-size - sinks - window pages with the largest cuboid-max bound.

Each prompt is prefilled once (exact attention, as every policy's prefill is) and the cache \
state is forked per policy x budget: the fork holds exactly what that policy's own prefill \
keeps.

Outputs in --out: results.json ({\"meta\": ..., \"records\": [...]}, one record per case), \
results.csv, summary.md (also printed) and PNG plots.";

/// `arkvale eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The experiment.
    #[command(subcommand)]
    pub task: EvalTask,
}

/// The experiments.
#[derive(Debug, Subcommand)]
pub enum EvalTask {
    /// Passkey retrieval (paper Table 1): policy x budget x context x depth.
    #[command(after_long_help = POLICY_RULES)]
    Passkey(PasskeyArgs),
    /// Needle-in-a-haystack variants (RULER-style: multi-key, multi-value, real-text haystack).
    #[command(after_long_help = POLICY_RULES)]
    Niah(NiahArgs),
    /// Teacher-forced fidelity against `full`: top-1 agreement, KL divergence, perplexity.
    #[command(after_long_help = POLICY_RULES)]
    Fidelity(FidelityArgs),
    /// Digest recall accuracy (paper Fig. 7): estimated vs true top-k pages per digest kind.
    DigestRecall(DigestRecallArgs),
    /// Recalls per decode step vs cache capacity and k (paper Fig. 4b).
    Recalls(RecallsArgs),
    /// Redraw the plots and tables of a results.json (e.g. of a sweep stopped part-way).
    Plot(PlotArgs),
}

/// `arkvale eval plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The directory holding results.json (plots, CSV and summary.md are rewritten there).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The cache options of a sweep.
#[derive(Debug, Args, Clone)]
pub struct SweepArgs {
    /// Policies, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,arkvale,streaming,h2o,tova,quest"
    )]
    pub policies: Vec<String>,
    /// Token budgets, comma-separated (multiples of --page-size).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "512,1024,2048",
        value_name = "TOKENS"
    )]
    pub budgets: Vec<usize>,
    #[command(flatten)]
    pub cache: CacheShape,
}

/// `arkvale eval passkey`.
#[derive(Debug, Args)]
pub struct PasskeyArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Context lengths in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2048,4096,6144",
        value_name = "TOKENS"
    )]
    pub contexts: Vec<usize>,
    /// Needle depths: a count N (N depths evenly spaced 0%..(100-100/N)%) or a
    /// comma-separated list of fractions in [0, 1].
    #[arg(long, default_value = "10", value_name = "N|LIST")]
    pub depths: String,
    #[command(flatten)]
    pub haystack: HaystackArgs,
    /// Wrap the prompt in the model's chat template (one user turn; the answer prefix "The
    /// pass key is" starts the assistant turn).
    #[arg(long)]
    pub chat: bool,
    /// Tokens generated per case (the key must appear in them).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub gen_tokens: usize,
}

/// `arkvale eval niah`.
#[derive(Debug, Args)]
pub struct NiahArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Variants, comma-separated: single, multikey, multivalue.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,multikey,multivalue"
    )]
    pub variants: Vec<String>,
    /// Context lengths in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2048,4096",
        value_name = "TOKENS"
    )]
    pub contexts: Vec<usize>,
    /// Depths of the (first) needle: a count or a comma-separated list of fractions.
    #[arg(long, default_value = "4", value_name = "N|LIST")]
    pub depths: String,
    /// Distractor needles (other keys) of `multikey`.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub distractors: usize,
    /// Values of the key in `multivalue`.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub values: usize,
    #[command(flatten)]
    pub haystack: HaystackArgs,
}

/// `arkvale eval fidelity`.
#[derive(Debug, Args)]
pub struct FidelityArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Real text: the prefill and the teacher-forced continuation come from it.
    #[arg(long, value_name = "FILE")]
    pub text_file: PathBuf,
    /// Prefill tokens.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub prefill: usize,
    /// Teacher-forced decode tokens.
    #[arg(long, default_value_t = 256, value_name = "M")]
    pub decode: usize,
    /// Windows of prefill + decode tokens, evenly spaced over the text.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub samples: usize,
}

/// `arkvale eval digest-recall`.
#[derive(Debug, Args)]
pub struct DigestRecallArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Real text whose queries and keys are analysed.
    #[arg(long, value_name = "FILE")]
    pub text_file: PathBuf,
    /// Tokens of the text prefilled.
    #[arg(long, default_value_t = 4096, value_name = "TOKENS")]
    pub context: usize,
    /// Tokens per page.
    #[arg(long, default_value_t = 32, value_name = "TOKENS")]
    pub page_size: usize,
    /// Query positions sampled from the second half of the text.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub queries: usize,
    /// Largest k.
    #[arg(long, default_value_t = 40, value_name = "K")]
    pub max_k: usize,
    /// Leading pages left out of the ranking (the cache's sinks; 0 ranks every page).
    #[arg(long, default_value_t = 1, value_name = "PAGES")]
    pub sinks: usize,
    /// Trailing pages left out of the ranking (the cache's window, the query's partial page
    /// included; 0 or 1 rank every full page).
    #[arg(long, default_value_t = 2, value_name = "PAGES")]
    pub window: usize,
}

/// `arkvale eval recalls`.
#[derive(Debug, Args)]
pub struct RecallsArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    #[command(flatten)]
    pub cache: CacheShape,
    /// Real text: the prefill and the teacher-forced continuation come from it.
    #[arg(long, value_name = "FILE")]
    pub text_file: PathBuf,
    /// Prefill tokens.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub prefill: usize,
    /// Decode steps.
    #[arg(long, default_value_t = 128, value_name = "M")]
    pub decode: usize,
    /// Cache capacities (budgets) in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "512,1024,1536,2048",
        value_name = "TOKENS"
    )]
    pub capacities: Vec<usize>,
    /// Top-k sizes in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "128,256,512",
        value_name = "TOKENS"
    )]
    pub ks: Vec<usize>,
}

/// Parses `--depths`: a count or a list of fractions in [0, 1].
pub fn parse_depths(s: &str) -> Result<Vec<f64>, String> {
    let s = s.trim();
    if !s.contains([',', '.']) {
        let n: usize = s
            .parse()
            .map_err(|_| format!("--depths: expected a count or fractions, got '{s}'"))?;
        if n == 0 {
            return Err("--depths: the count must be at least 1".into());
        }
        return Ok(arkvale_eval::passkey::even_depths(n));
    }
    s.split(',')
        .map(|x| {
            let v: f64 = x
                .trim()
                .parse()
                .map_err(|_| format!("--depths: '{x}' is not a number"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("--depths: {v} is outside [0, 1]"));
            }
            Ok(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_count_or_list() {
        assert_eq!(parse_depths("2").unwrap(), vec![0.0, 0.5]);
        assert_eq!(parse_depths("0.1,1").unwrap(), vec![0.1, 1.0]);
        assert!(parse_depths("0").is_err());
        assert!(parse_depths("1.5").is_err());
        assert!(parse_depths("x,y").is_err());
    }
}

/// The haystack options of the retrieval tasks (`passkey`, `niah`).
#[derive(Debug, Args)]
pub struct HaystackArgs {
    /// The text the needles hide in: a built-in public-domain novel (`persuasion`,
    /// `moby-dick`) or the paper's repetitive `filler` ("The grass is green. ..."), which
    /// flatters digest selection (every filler page looks alike).
    #[arg(long, default_value = "persuasion", value_parser = PossibleValuesParser::new(arkvale_eval::haystacks::NAMES))]
    pub haystack: String,
    /// A text file as the haystack instead (overrides --haystack).
    #[arg(long, value_name = "FILE")]
    pub haystack_file: Option<PathBuf>,
    /// Where each prompt's haystack starts in a real text: `random`, a paragraph drawn per case
    /// from --seed (so a sweep samples many passages of the novel), or `beginning`, the text's
    /// first token for every case (how results before round 5 were made; one passage for every
    /// case). The filler ignores it.
    #[arg(long, default_value = "random", value_parser = PossibleValuesParser::new(arkvale_eval::passkey::HaystackStart::NAMES))]
    pub haystack_start: String,
}
