//! What the commands share to get going: the model of `--model` opened on `--backend` (for
//! `generate` and `chat`, and for the experiments of `eval` and `bench`), a KV cache sized for
//! it, the checks of the run options clap cannot make, the clock seed, and byte sizes for
//! people. A leaf: it names no command module, so every command may use it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arkvale_core::{CacheConfig, CacheManager, Device, policy_by_name};
use arkvale_model::loaded::LoadedModel;
use arkvale_model::memory::size_cache;
use arkvale_model::sampling::SamplingParams;
use arkvale_model::stop::StopMatcher;

use crate::backend::open_device;
use crate::common_args::{CacheArgs, ExperimentArgs, RunArgs};
use crate::model_path::resolve_model;

/// A model loaded for generation (weights, tokenizer, chat template) and its device.
pub struct Loaded {
    /// The model, its tokenizer and chat template.
    pub inner: LoadedModel,
    /// The device the model runs on.
    pub dev: Arc<dyn Device>,
    /// How long loading took.
    pub load_time: Duration,
}

impl std::ops::Deref for Loaded {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.inner
    }
}

/// Checks the options shared by `generate` and `chat` that clap cannot check.
pub fn check_run_args(run: &RunArgs) -> Result<SamplingParams> {
    let params = SamplingParams {
        temperature: run.temperature,
        top_k: run.top_k,
        top_p: run.top_p,
    };
    // The library names the fields (`temperature`, `top_p`); name the flags.
    params
        .validate()
        .map_err(|e| anyhow::anyhow!("--{}", e.replacen("top_p", "top-p", 1)))?;
    if run.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    StopMatcher::new(run.stop.clone()).map_err(|e| anyhow::anyhow!("--stop: {e}"))?;
    Ok(params)
}

/// Loads the model of `--model` (a GGUF file or a Hugging Face directory) on `--backend`.
pub fn load(run: &RunArgs) -> Result<Loaded> {
    let path = resolve_model(run.model.as_deref())?;
    let t_load = Instant::now();
    let dev = open_device(run.backend, run.threads)?;
    let inner = LoadedModel::open(&path, dev.clone(), run.weights.storage())?;
    Ok(Loaded {
        inner,
        dev,
        load_time: t_load.elapsed(),
    })
}

impl Loaded {
    /// A KV cache for this model sized for `total_tokens` tokens, and its configuration.
    pub fn new_cache(
        &self,
        c: &CacheArgs,
        total_tokens: usize,
    ) -> Result<(CacheManager, CacheConfig)> {
        let mut config = c.config(self.model.shape().kv_heads)?;
        let policy = policy_by_name(&c.policy, &config)?;
        let sizing = size_cache(
            &self.model.shape(),
            &config,
            policy.residency(),
            total_tokens,
        );
        config.device_bytes = sizing.device_bytes;
        config.host_bytes = sizing.host_bytes;
        let cache = CacheManager::new(self.dev.clone(), self.model.shape(), config.clone(), policy)
            .context("cannot create the KV cache")?;
        Ok((cache, config))
    }
}

/// Loads the model of `--model` on `--backend` for an experiment (`eval`, `bench`).
pub fn load_experiment(c: &ExperimentArgs) -> Result<LoadedModel> {
    if c.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let path = resolve_model(c.model.as_deref())?;
    let dev = open_device(c.backend, c.threads)?;
    LoadedModel::open(&path, dev, c.weights.storage())
        .with_context(|| format!("cannot load the model {}", path.display()))
}

/// A seed from the clock, for runs without `--seed`.
pub fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `n` bytes in KiB/MiB/GiB with one decimal.
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
