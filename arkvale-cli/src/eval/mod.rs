//! `arkvale eval`: the accuracy experiments of the ArkVale paper (passkey, NIAH, fidelity,
//! digest recall, recalls) on any model, written as results.json / CSV / markdown / PNG.
//! The experiments themselves live in `arkvale_eval`; this is the command-line glue:
//! options, model loading, progress bars, files and plots.

pub mod args;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use arkvale_core::DigestKind;
use arkvale_eval::{
    EvalTokenizer, Progress, Record, Results, Sweep, digest_recall, fidelity, niah, passkey,
    recalls, summary,
};
use arkvale_model::loaded::LoadedModel;
use arkvale_model::text::TextTokenizer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use self::args::{EvalArgs, EvalTask, HaystackArgs, SweepArgs, parse_depths};
use crate::common_args::ExperimentArgs;
use crate::plot;
use crate::setup::load_experiment;

/// Runs `arkvale eval <task>`.
pub fn run(a: EvalArgs) -> Result<()> {
    match a.task {
        EvalTask::Passkey(a) => {
            let depths = parse_depths(&a.depths).map_err(anyhow::Error::msg)?;
            let m = load_experiment(&a.common)?;
            let tok = Tok(&m.tokenizer);
            let sweep = sweep(&a.sweep, m.model.shape().kv_heads)?;
            let haystack = haystack(&tok, &a.haystack)?;
            let render = |text: &str| -> arkvale_eval::Result<Vec<u32>> {
                m.chat_tokens(&[arkvale_model::chat::Message::new("user", text)])
                    .map_err(|e| arkvale_eval::EvalError::Input(e.to_string()))
            };
            if a.chat {
                m.chat_template()?;
            }
            let opts = passkey::PasskeyOptions {
                contexts: a.contexts.clone(),
                depths,
                seed: a.common.seed,
                gen_tokens: a.gen_tokens,
                haystack_start: passkey::HaystackStart::parse(&a.haystack.haystack_start)?,
            };
            let cases = passkey::cases(
                &tok,
                &haystack,
                a.chat.then_some(&render as passkey::ChatRender<'_>),
                &opts,
            )?;
            let started = Instant::now();
            let mut progress = bar_saving(
                &a.common,
                out_dir(&a.common, "passkey"),
                "Passkey retrieval (partial)",
            );
            let mut res = passkey::run(&m.model, &tok, &sweep, &cases, &mut progress)?;
            meta(
                &mut res,
                &m,
                &a.common,
                started,
                json!({
                    "task": "passkey",
                    "contexts": a.contexts, "depths": opts.depths, "gen_tokens": a.gen_tokens,
                    "haystack": haystack_meta(&a.haystack), "haystack_start": a.haystack.haystack_start, "chat": a.chat, "cache": cache_meta(&sweep),
                }),
            );
            finish(&res, &out_dir(&a.common, "passkey"))
        }
        EvalTask::Niah(a) => {
            let depths = parse_depths(&a.depths).map_err(anyhow::Error::msg)?;
            let m = load_experiment(&a.common)?;
            let tok = Tok(&m.tokenizer);
            let sweep = sweep(&a.sweep, m.model.shape().kv_heads)?;
            let haystack = haystack(&tok, &a.haystack)?;
            let opts = niah::NiahOptions {
                variants: a.variants.clone(),
                contexts: a.contexts.clone(),
                depths,
                distractors: a.distractors,
                values: a.values,
                seed: a.common.seed,
                haystack_start: passkey::HaystackStart::parse(&a.haystack.haystack_start)?,
            };
            let cases = niah::cases(&tok, &haystack, &opts)?;
            let started = Instant::now();
            let mut progress = bar_saving(&a.common, out_dir(&a.common, "niah"), "NIAH (partial)");
            let mut res = niah::run(&m.model, &tok, &sweep, &cases, &mut progress)?;
            meta(
                &mut res,
                &m,
                &a.common,
                started,
                json!({
                    "task": "niah", "variants": a.variants, "contexts": a.contexts,
                    "depths": opts.depths, "distractors": a.distractors, "values": a.values,
                    "haystack": haystack_meta(&a.haystack), "haystack_start": a.haystack.haystack_start, "cache": cache_meta(&sweep),
                }),
            );
            finish(&res, &out_dir(&a.common, "niah"))
        }
        EvalTask::Fidelity(a) => {
            let m = load_experiment(&a.common)?;
            let tok = Tok(&m.tokenizer);
            let sweep = sweep(&a.sweep, m.model.shape().kv_heads)?;
            let text = arkvale_eval::runner::text_tokens(&tok, &a.text_file, a.prefill + a.decode)?;
            let opts = fidelity::FidelityOptions {
                prefill: a.prefill,
                decode: a.decode,
                samples: a.samples,
            };
            let started = Instant::now();
            let mut res = fidelity::run(&m.model, &sweep, &text, &opts, &mut bar(&a.common))?;
            meta(
                &mut res,
                &m,
                &a.common,
                started,
                json!({
                    "task": "fidelity", "text_file": a.text_file, "prefill": a.prefill,
                    "decode": a.decode, "samples": a.samples, "cache": cache_meta(&sweep),
                }),
            );
            finish(&res, &out_dir(&a.common, "fidelity"))
        }
        EvalTask::DigestRecall(a) => {
            let m = load_experiment(&a.common)?;
            let tok = Tok(&m.tokenizer);
            let text = arkvale_eval::runner::text_tokens(&tok, &a.text_file, a.context)?;
            let opts = digest_recall::DigestRecallOptions {
                context: a.context,
                page_size: a.page_size,
                queries: a.queries,
                max_k: a.max_k,
                seed: a.common.seed,
                sinks: a.sinks,
                window: a.window,
            };
            let started = Instant::now();
            let mut res = digest_recall::run(&m.model, &text, &opts, &mut bar(&a.common))?;
            meta(
                &mut res,
                &m,
                &a.common,
                started,
                json!({
                    "task": "digest-recall", "text_file": a.text_file, "context": a.context,
                    "page_size": a.page_size, "queries": a.queries, "max_k": a.max_k,
                }),
            );
            finish(&res, &out_dir(&a.common, "digest-recall"))
        }
        EvalTask::Plot(a) => replot(&a.dir),
        EvalTask::Recalls(a) => {
            let m = load_experiment(&a.common)?;
            let tok = Tok(&m.tokenizer);
            let sweep = Sweep {
                base: a.cache.config(m.model.shape().kv_heads)?,
                variants: Vec::new(),
            };
            let text = arkvale_eval::runner::text_tokens(&tok, &a.text_file, a.prefill + a.decode)?;
            let opts = recalls::RecallsOptions {
                prefill: a.prefill,
                decode: a.decode,
                capacities: a.capacities.clone(),
                ks: a.ks.clone(),
            };
            let started = Instant::now();
            let mut res = recalls::run(&m.model, &sweep, &text, &opts, &mut bar(&a.common))?;
            meta(
                &mut res,
                &m,
                &a.common,
                started,
                json!({
                    "task": "recalls", "text_file": a.text_file, "prefill": a.prefill,
                    "decode": a.decode, "capacities": a.capacities, "ks": a.ks,
                    "cache": cache_meta(&sweep),
                }),
            );
            finish(&res, &out_dir(&a.common, "recalls"))
        }
    }
}

/// Draws the plots of `res` (by the task of its records) into `dir`.
fn draw_plots(res: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    let task = res.records.first().map_or("", |r| r.task.as_str());
    match task {
        "fidelity" => {
            let recs: Vec<_> = res.records.iter().collect();
            let mut out = Vec::new();
            for (metric, label, file) in [
                (
                    "top1_agreement",
                    "top-1 agreement with full (%)",
                    "agreement",
                ),
                ("kl", "mean KL(full || policy)", "kl"),
                ("perplexity", "perplexity", "perplexity"),
            ] {
                let scale = if metric == "top1_agreement" {
                    100.0
                } else {
                    1.0
                };
                let series =
                    plot::budget_series(&recs, |r| r.metric(metric).unwrap_or(0.0) * scale);
                let path = dir.join(format!("fidelity_{file}_vs_budget.png"));
                plot::lines(
                    &path,
                    &format!("fidelity: {label}"),
                    "budget (tokens)",
                    label,
                    &series,
                    None,
                )?;
                out.push(path);
            }
            Ok(out)
        }
        "digest-recall" => {
            let mut out = Vec::new();
            for mode in ["head", "group"] {
                let series: Vec<plot::Series> = DigestKind::ALL
                    .iter()
                    .map(|k| {
                        let pts = res
                            .records
                            .iter()
                            .filter(|r| {
                                r.policy == k.name()
                                    && r.extra.get("mode").and_then(|v| v.as_str()) == Some(mode)
                            })
                            .filter_map(|r| Some((r.metric("k")?, r.metric("recall")? * 100.0)))
                            .collect();
                        (k.name().to_string(), pts)
                    })
                    .collect();
                let path = dir.join(format!("digest_recall_{mode}.png"));
                plot::lines(
                    &path,
                    &format!("digest top-k recall ({mode} ranking)"),
                    "k (pages)",
                    "recall (%)",
                    &series,
                    None,
                )?;
                out.push(path);
            }
            Ok(out)
        }
        "recalls" => {
            let mut ks: Vec<usize> = res
                .records
                .iter()
                .filter_map(|r| r.metric("topk").map(|k| k as usize))
                .collect();
            ks.sort();
            ks.dedup();
            let p = res.records.first().map_or(1, |r| r.page_size.max(1));
            let series: Vec<plot::Series> = ks
                .iter()
                .map(|&k| {
                    let pts = res
                        .records
                        .iter()
                        .filter(|r| r.metric("topk") == Some(k as f64))
                        .filter_map(|r| {
                            Some((
                                r.metric("capacity_pages")?,
                                r.metric("recalls_per_layer_step")?,
                            ))
                        })
                        .collect();
                    (format!("k = {} pages", k / p), pts)
                })
                .collect();
            let path = dir.join("recalls_vs_capacity.png");
            plot::lines(
                &path,
                "recalls per decode step per layer",
                "cache capacity (pages)",
                "recalls / step",
                &series,
                None,
            )?;
            Ok(vec![path])
        }
        _ => plot::retrieval(dir, &res.records),
    }
}

/// `arkvale eval plot`: rebuilds summary.md, results.csv and the plots of a results.json
/// (e.g. of a sweep stopped part-way).
fn replot(dir: &Path) -> Result<()> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut res = Results::from_json(&json)?;
    res.summarize(summary::task_tables);
    finish(&res, dir)
}

/// The eval tasks' view of a model's tokenizer.
struct Tok<'a>(&'a TextTokenizer);

impl EvalTokenizer for Tok<'_> {
    fn encode_text(&self, text: &str) -> arkvale_eval::Result<Vec<u32>> {
        self.0
            .encode(text, false, false)
            .map_err(|e| arkvale_eval::EvalError::Tokenizer(e.to_string()))
    }
    fn decode_text(&self, ids: &[u32]) -> arkvale_eval::Result<String> {
        self.0
            .decode(ids, true)
            .map_err(|e| arkvale_eval::EvalError::Tokenizer(e.to_string()))
    }
    fn eos(&self) -> Option<u32> {
        self.0.eos_id()
    }
}

fn sweep(s: &SweepArgs, kv_heads: usize) -> Result<Sweep> {
    let policies: Vec<String> = s.policies.iter().map(|p| p.trim().to_string()).collect();
    Ok(Sweep::new(
        s.cache.config(kv_heads)?,
        &policies,
        &s.budgets,
    )?)
}

fn cache_meta(s: &Sweep) -> serde_json::Value {
    let b = &s.base;
    json!({
        "selection": crate::selection::selection_meta(b),
        "page_size": b.page_size, "sinks": b.sink_pages, "window": b.window_pages,
        "dense_layers": b.dense_layers, "digest": b.digest.name(), "topk": b.topk_tokens,
        "kv_dtype": format!("{:?}", b.kv_dtype), "prefill_chunk": b.prefill_chunk_tokens,
        "variants": s.variants.iter().map(|v| v.label()).collect::<Vec<_>>(),
    })
}

/// The haystack of `--haystack NAME` / `--haystack-file FILE` (the file wins).
fn haystack(tok: &Tok<'_>, h: &HaystackArgs) -> Result<passkey::Haystack> {
    Ok(
        match (
            &h.haystack_file,
            arkvale_eval::haystacks::by_name(&h.haystack),
        ) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the haystack file {}", f.display()))?;
                passkey::Haystack::text(tok, &text)?
            }
            (None, Some(text)) => passkey::Haystack::text(tok, text)?,
            (None, None) => passkey::Haystack::filler(tok)?,
        },
    )
}

/// What the results metadata says about the haystack.
fn haystack_meta(h: &HaystackArgs) -> String {
    match &h.haystack_file {
        Some(f) => format!("file:{}", f.display()),
        None => h.haystack.clone(),
    }
}

fn out_dir(c: &ExperimentArgs, task: &str) -> PathBuf {
    c.out
        .clone()
        .unwrap_or_else(|| PathBuf::from("eval-out").join(task))
}

fn meta(
    res: &mut Results,
    m: &LoadedModel,
    c: &ExperimentArgs,
    started: Instant,
    options: serde_json::Value,
) {
    res.meta
        .insert("model".into(), json!(m.path.display().to_string()));
    res.meta.insert("seed".into(), json!(c.seed));
    res.meta.insert(
        "backend".into(),
        json!(format!("{:?}", c.backend).to_lowercase()),
    );
    res.meta.insert("threads".into(), json!(c.threads));
    res.meta.insert(
        "elapsed_s".into(),
        json!(passkey::round3(started.elapsed().as_secs_f64())),
    );
    res.meta.insert(
        "command".into(),
        json!(std::env::args().collect::<Vec<_>>().join(" ")),
    );
    res.meta.insert("options".into(), options);
}

/// Writes the files, draws the plots, prints the tables and where everything went.
fn finish(res: &Results, dir: &Path) -> Result<()> {
    res.write(dir)?;
    let pngs = draw_plots(res, dir)?;
    println!("{}", res.markdown());
    eprintln!(
        "wrote {} records to {} (results.json, results.csv, summary.md, {} plots) in {:.1} s",
        res.records.len(),
        dir.display(),
        pngs.len(),
        res.meta
            .get("elapsed_s")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    );
    Ok(())
}

/// Writes partial records somewhere.
type SaveFn = Box<dyn Fn(&[Record])>;

/// Progress bars on stderr when it is a terminal; otherwise (a log file) one plain line per
/// step; nothing with --no-progress.
struct Bar {
    /// Saves partial results after each prompt (passkey, niah).
    save: Option<SaveFn>,
    bar: Option<ProgressBar>,
    mode: BarMode,
    pos: u64,
    total: u64,
    started: Option<Instant>,
}

#[derive(PartialEq)]
enum BarMode {
    Terminal,
    Lines,
    Off,
}

fn bar(c: &ExperimentArgs) -> Bar {
    let mode = if c.no_progress {
        BarMode::Off
    } else if std::io::stderr().is_terminal() {
        BarMode::Terminal
    } else {
        BarMode::Lines
    };
    Bar {
        save: None,
        bar: None,
        mode,
        pos: 0,
        total: 0,
        started: None,
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64, what: &str) {
        (self.pos, self.total, self.started) = (0, total, Some(Instant::now()));
        if self.mode != BarMode::Terminal {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(&format!(
            "{{bar:40.cyan/blue}} {{pos}}/{{len}} {what} ({{elapsed}}, eta {{eta}}) {{msg}}"
        )) {
            bar.set_style(style);
        }
        self.bar = Some(bar);
    }
    fn inc(&mut self, n: u64, msg: &str) {
        self.pos += n;
        if let Some(b) = &self.bar {
            if !msg.is_empty() {
                b.set_message(msg.to_string());
            }
            b.inc(n);
        } else if self.mode == BarMode::Lines && !msg.is_empty() {
            let secs = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            eprintln!("[{}/{} {secs:.0}s] {msg}", self.pos, self.total);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
    fn checkpoint(&mut self, records: &[Record]) {
        if let Some(save) = &self.save {
            save(records);
        }
    }
}

/// A progress sink that also writes the retrieval records finished so far (results.json,
/// results.csv, summary.md) into `dir` after each prompt, so a long sweep stopped part-way
/// leaves its finished cases.
fn bar_saving(c: &ExperimentArgs, dir: PathBuf, title: &'static str) -> Bar {
    let mut b = bar(c);
    b.save = Some(Box::new(move |records: &[Record]| {
        let res = Results {
            meta: serde_json::Map::from_iter([("partial".to_string(), json!(true))]),
            records: records.to_vec(),
            tables: vec![arkvale_eval::report::accuracy_table(title, records)],
        };
        if let Err(e) = res.write(&dir) {
            eprintln!("warning: cannot save partial results: {e}");
        }
    }));
    b
}
