//! The batching engine on SmolLM2 (skipped without the model): admission by KV memory holds
//! as many `full` sequences as fit (one here) and more `arkvale` ones, every request
//! completes, oversized requests and a full queue are refused, and a dropped receiver
//! cancels its request. (That a batched decode gives each sequence its own tokens is tested
//! on a random model in `llama_random.rs`.)

mod common;

use std::sync::Arc;

use arkvale_core::{CacheConfig, DType, KvDtype, policy::Residency};
use arkvale_cpu::CpuDevice;
use arkvale_model::engine::{
    Engine, EngineConfig, EngineHandle, Event, FinishReason, Request, SubmitError, collect_blocking,
};
use arkvale_model::loaded::LoadedModel;
use arkvale_model::memory::{STAGING_SLACK, sequence_slots};
use arkvale_model::sampling::SamplingParams;
use common::model_path;

fn load() -> Option<Arc<LoadedModel>> {
    let path = model_path()?;
    let dev = Arc::new(CpuDevice::new(Some(2)).unwrap());
    Some(Arc::new(LoadedModel::open(&path, dev, DType::F32).unwrap()))
}

fn cache_config() -> CacheConfig {
    CacheConfig {
        page_size: 8,
        budget_tokens: 48,
        kv_dtype: KvDtype::F32,
        prefill_chunk_tokens: 16,
        ..Default::default()
    }
}

/// An engine whose pool holds exactly `full_sequences` full-cache sequences of `tokens`.
fn engine(model: &Arc<LoadedModel>, policy: &str, tokens: usize, max_queue: usize) -> EngineHandle {
    let c = cache_config();
    let shape = model.model.shape();
    let slots = sequence_slots(&shape, &c, Residency::KeepAll, tokens) + STAGING_SLACK;
    Engine::spawn(
        model.clone(),
        EngineConfig {
            cache: c.clone(),
            policy: policy.into(),
            kv_bytes: slots * c.slot_bytes(&shape),
            host_bytes: 256 << 20,
            max_batch: 8,
            max_queue,
        },
    )
    .unwrap()
}

/// A request for `prompt` said 25 times (~150-200 tokens: well over the budget).
fn request(model: &LoadedModel, prompt: &str, max_tokens: usize) -> Request {
    Request {
        prompt: model.prompt_tokens(&[prompt; 25].join(" ")).unwrap(),
        max_tokens,
        params: SamplingParams::default(),
        seed: 1,
        stop: Vec::new(),
        eos: None,
    }
}

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
];

#[test]
fn admission_batches_arkvale_but_not_full() {
    let Some(model) = load() else { return };
    let max_tokens = 16;
    let tokens = PROMPTS
        .iter()
        .map(|p| request(&model, p, max_tokens).prompt.len() + max_tokens)
        .max()
        .unwrap();
    for (policy, batched) in [("full", false), ("arkvale", true)] {
        let e = engine(&model, policy, tokens, 8);
        let rxs: Vec<_> = PROMPTS
            .iter()
            .map(|p| e.submit(request(&model, p, max_tokens)).unwrap())
            .collect();
        for mut rx in rxs {
            let (text, ids, done) = collect_blocking(&mut rx);
            assert_eq!(ids.len(), max_tokens, "{policy}: {done:?}");
            assert!(!text.is_empty());
            assert!(
                matches!(
                    done,
                    Event::Done {
                        reason: FinishReason::Length,
                        ..
                    }
                ),
                "{done:?}"
            );
        }
        let m = e.metrics();
        // Every answer is in: every request is counted as finished, none is running.
        assert_eq!(
            (m.finished, m.running, m.queued),
            (3, 0, 0),
            "{policy}: {m:?}"
        );
        // `full` fits one sequence at a time in this pool; `arkvale`'s smaller reservations
        // let sequences decode together.
        assert_eq!(m.max_batch_seen > 1, batched, "{policy}: {m:?}");
        assert_eq!(m.generated_tokens, 3 * max_tokens as u64, "{policy}: {m:?}");
    }
}

#[test]
fn oversized_requests_full_queue_and_cancellation() {
    let Some(model) = load() else { return };
    // Long enough that no request can finish in the moment between submitting and dropping.
    let max_tokens = 200;
    let tokens = request(&model, PROMPTS[1], max_tokens).prompt.len() + max_tokens;
    let mut e = engine(&model, "full", tokens, 1);
    let long = request(&model, PROMPTS[0], 4 * max_tokens);
    match e.submit(long) {
        Err(SubmitError::TooLarge { need, have }) => assert!(need > have),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut empty = request(&model, "x", 1);
    empty.prompt.clear();
    assert!(matches!(e.submit(empty), Err(SubmitError::Invalid(_))));

    // One running + one waiting at most: of three immediate submissions one is refused.
    let results: Vec<_> = (0..3)
        .map(|_| e.submit(request(&model, PROMPTS[1], max_tokens)))
        .collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(SubmitError::QueueFull(1))))
    );
    // One or two accepted: the second waits if the engine has admitted the first already.
    let accepted = results.iter().filter(|r| r.is_ok()).count() as u64;
    // Dropping the receivers cancels; shutting down waits for the engine thread, which
    // leaves only when nothing is running or queued, so the counters are final.
    drop(results);
    e.shutdown();
    let m = e.metrics();
    assert_eq!((m.running, m.queued), (0, 0), "{m:?}");
    assert_eq!((m.finished, m.cancelled), (accepted, accepted), "{m:?}");
    assert!(
        m.generated_tokens < accepted * max_tokens as u64,
        "cancelled requests ran to the end: {m:?}"
    );
}
