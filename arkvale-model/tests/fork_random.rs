//! Prefill once, fork per policy (`CacheManager::begin_snapshot` / `fork_snapshot`) against
//! each policy's own prefill, on a small random-weight Llama model (no file needed): the same
//! resident pages, the same keep-masks and the same decode logits — bit for bit when the
//! prompt is one prefill chunk, within rounding (and with the same residency) when the budgeted
//! policies' prefill streams evicted pages in a different summation order.

use std::sync::Arc;

use arkvale_core::{
    CacheConfig, CacheManager, DType, Device, KvDtype, SeqId, SnapshotOptions,
    policy::POLICY_NAMES, policy_by_name,
};
use arkvale_cpu::CpuDevice;
use arkvale_model::llama::{LlamaConfig, LlamaModel};
use arkvale_testkit::XorShift;
use arkvale_testkit::llama::{random_weights_with_qk_gain, tiny_config};

/// The tiny model with query and key projections twice as large as usual: peakier attention,
/// so that which pages each policy keeps shows in the logits.
fn model() -> LlamaModel {
    let c = LlamaConfig {
        context_length: 512,
        ..tiny_config()
    };
    let w = random_weights_with_qk_gain(&c, 11, 2.0);
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    LlamaModel::from_host_weights(dev, c, w, DType::F32).unwrap()
}

fn cache(model: &LlamaModel, policy: &str, chunk: usize) -> CacheManager {
    let config = CacheConfig {
        page_size: 8,
        budget_tokens: 64,
        topk_tokens: Some(32),
        dense_layers: 1,
        kv_dtype: KvDtype::F32,
        device_bytes: 8 << 20,
        host_bytes: 8 << 20,
        prefill_chunk_tokens: chunk,
        ..Default::default()
    };
    let policy = policy_by_name(policy, &config).unwrap();
    CacheManager::new(model.device().clone(), model.shape(), config, policy).unwrap()
}

fn prompt(len: usize) -> Vec<u32> {
    let mut r = XorShift(5);
    (0..len)
        .map(|_| ((r.unit() + 1.0) * 32.0) as u32 % 64)
        .collect()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Residency of every (layer, group) page and every keep-mask of a sequence.
fn state(c: &CacheManager, seq: SeqId) -> (Vec<Vec<bool>>, Vec<Option<Vec<bool>>>) {
    let shape = *c.shape();
    let mut pages = Vec::new();
    let mut masks = Vec::new();
    for layer in 0..shape.layers {
        for g in 0..c.config().head_groups {
            pages.push(
                c.pages(seq, layer, g)
                    .unwrap()
                    .iter()
                    .map(|p| p.slot.is_some())
                    .collect(),
            );
        }
        for h in 0..shape.kv_heads {
            masks.push(c.keep_mask(seq, layer, h).unwrap());
        }
    }
    (pages, masks)
}

/// Greedy decode of `steps` tokens after `logits`; returns every step's logits.
fn decode(model: &LlamaModel, c: &mut CacheManager, seq: SeqId, logits: &[f32]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut next = argmax(logits);
    for _ in 0..6 {
        let l = model.decode(c, &[seq], &[next]).unwrap();
        next = argmax(&l);
        out.push(l);
    }
    out
}

fn check(chunk: usize, exact: bool) {
    let model = model();
    let ids = prompt(200);
    let mut src = cache(&model, "full", chunk);
    let s = src.add_sequence();
    src.begin_snapshot(
        s,
        SnapshotOptions {
            token_weights: true,
            ..Default::default()
        },
    )
    .unwrap();
    let logits = model.prefill(&mut src, s, &ids).unwrap();
    let snap = src.take_snapshot(s).unwrap();
    assert_eq!(snap.tokens(), ids.len());
    for name in POLICY_NAMES {
        let mut direct = cache(&model, name, chunk);
        let d = direct.add_sequence();
        let direct_logits = model.prefill(&mut direct, d, &ids).unwrap();
        let mut forked = cache(&model, name, chunk);
        let f = forked.fork_snapshot(&snap).unwrap();
        let (dp, dm) = state(&direct, d);
        let (fp, fm) = state(&forked, f);
        assert_eq!(dp, fp, "{name}: resident pages (chunk {chunk})");
        assert_eq!(dm, fm, "{name}: keep-masks (chunk {chunk})");
        if name != "full" && name != "quest" {
            assert!(
                dp.iter().any(|l| l.contains(&false))
                    || dm.iter().flatten().any(|m| m.contains(&false)),
                "{name}: the test must evict something"
            );
        }
        let dl = decode(&model, &mut direct, d, &direct_logits);
        let fl = decode(&model, &mut forked, f, &logits);
        for (step, (a, b)) in dl.iter().zip(&fl).enumerate() {
            if exact {
                assert_eq!(a, b, "{name}: decode step {step} logits differ");
            } else {
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-3,
                    "{name}: decode step {step} logits differ by {diff}"
                );
            }
        }
        for layer in 0..model.shape().layers {
            assert_eq!(
                direct.last_attended(d, layer, 0).unwrap(),
                forked.last_attended(f, layer, 0).unwrap(),
                "{name}: pages attended by the last decode step of layer {layer}"
            );
        }
        // The fork leaves the source untouched and can be forked again.
        let again = forked.fork_snapshot(&snap).unwrap();
        assert_eq!(state(&forked, again), (fp, fm), "{name}: second fork");
    }
}

#[test]
fn fork_equals_direct_prefill_bit_for_bit_in_one_chunk() {
    check(256, true);
}

#[test]
fn fork_equals_direct_prefill_across_chunks() {
    check(64, false);
}

#[test]
fn fork_errors_are_clear() {
    let model = model();
    let ids = prompt(40);
    let mut src = cache(&model, "full", 64);
    let s = src.add_sequence();
    src.begin_snapshot(s, SnapshotOptions::default()).unwrap();
    model.prefill(&mut src, s, &ids).unwrap();
    // Not empty any more: a snapshot must start with the prompt.
    let e = src
        .begin_snapshot(s, SnapshotOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    let snap = src.take_snapshot(s).unwrap();
    assert!(src.take_snapshot(s).is_err());
    let mut h2o = cache(&model, "h2o", 64);
    let e = h2o.fork_snapshot(&snap).unwrap_err().to_string();
    assert!(e.contains("token weights"), "{e}");
    assert!(
        h2o.sequences().is_empty(),
        "a failed fork leaves no sequence"
    );
    let mut ark = cache(&model, "arkvale", 64);
    let f = ark.fork_snapshot(&snap).unwrap();
    assert_eq!(ark.seq_len(f, 0).unwrap(), 40);
}
