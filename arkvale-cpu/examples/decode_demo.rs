//! Decodes a synthetic long sequence with a full cache and with ArkVale, and prints the
//! statistics side by side.
//!
//! ```text
//! cargo run --release --example decode_demo -p arkvale-cpu -- [--context 16384] [--budget 2048] [--steps 32]
//! ```
//!
//! The context is loaded directly into the caches (random post-RoPE keys with a per-page
//! bias, so some pages matter more than others); each decode step then runs every layer with
//! fresh random queries, keys and values, identical for both caches, and the outputs are
//! compared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arkvale_core::{
    CacheConfig, CacheManager, CacheStats, DType, Device, DeviceExt, KvDtype, ModelShape,
    policy_by_name,
};
use arkvale_cpu::CpuDevice;
use arkvale_testkit::XorShift;

struct Args {
    context: usize,
    budget: usize,
    steps: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        context: 16384,
        budget: 2048,
        steps: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--context" => args.context = value("--context")?,
            "--budget" => args.budget = value("--budget")?,
            "--steps" => args.steps = value("--steps")?,
            "-h" | "--help" => {
                println!(
                    "decode_demo: full cache vs ArkVale on a synthetic long sequence\n\n\
                     --context N  tokens loaded before decoding (default 16384)\n\
                     --budget N   ArkVale budget in tokens per layer and head group (default 2048)\n\
                     --steps N    decode steps (default 32)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(args)
}

/// Topic directions: each page of keys leans toward one, and queries toward a few, so some
/// pages matter much more than others (as in real models) and the important set drifts slowly.
const TOPICS: usize = 64;

fn synthetic_keys(
    rng: &mut XorShift,
    topics: &[f32],
    tokens: usize,
    shape: ModelShape,
) -> Vec<f32> {
    let d = shape.head_dim;
    let mut k = rng.vec(tokens * shape.kv_heads * d, 1.0);
    for (t, head) in k.chunks_mut(d).enumerate() {
        let page = t / shape.kv_heads / 32;
        let topic = (page * 2654435761) % TOPICS;
        for (x, c) in head.iter_mut().zip(&topics[topic * d..(topic + 1) * d]) {
            *x = 0.5 * *x + 3.0 * c;
        }
    }
    k
}

fn synthetic_query(rng: &mut XorShift, topics: &[f32], shape: ModelShape) -> Vec<f32> {
    let d = shape.head_dim;
    let mut q = rng.vec(shape.q_heads * d, 1.0);
    let focus = (rng.vec(1, 1.0)[0].abs() * 3.0) as usize;
    for head in q.chunks_mut(d) {
        for (x, c) in head.iter_mut().zip(&topics[focus * d..(focus + 1) * d]) {
            *x = 0.3 * *x + 1.0 * c;
        }
    }
    q
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let shape = ModelShape {
        layers: 4,
        q_heads: 16,
        kv_heads: 4,
        head_dim: 64,
    };
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(None)?);
    let base = CacheConfig {
        page_size: 32,
        budget_tokens: args.budget,
        dense_layers: 2,
        kv_dtype: KvDtype::F16,
        device_bytes: 1 << 30,
        host_bytes: 2 << 30,
        ..CacheConfig::default()
    };
    let row = shape.kv_heads * shape.head_dim;
    let qrow = shape.q_heads * shape.head_dim;
    let topics = XorShift(7).vec(TOPICS * shape.head_dim, 1.0);
    let mut caches = Vec::new();
    for name in ["full", "arkvale"] {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut cache = CacheManager::new(
            dev.clone(),
            shape,
            base.clone(),
            policy_by_name(name, &base)?,
        )?;
        let seq = cache.add_sequence();
        let started = Instant::now();
        for layer in 0..shape.layers {
            let k = synthetic_keys(&mut rng, &topics, args.context, shape);
            let v = rng.vec(args.context * row, 1.0);
            let q = dev.upload_f32(&synthetic_query(&mut rng, &topics, shape), DType::F32)?;
            cache.load_layer(layer, seq, &k, &v, &q)?;
        }
        eprintln!(
            "{name}: loaded {} tokens x {} layers in {:.1?}",
            args.context,
            shape.layers,
            started.elapsed()
        );
        cache.take_stats();
        caches.push((name, cache, seq, Duration::ZERO, Vec::<f32>::new()));
    }
    let mut rng = XorShift(42);
    let mut rel_err = Vec::new();
    for _ in 0..args.steps {
        for layer in 0..shape.layers {
            let q = dev.upload_f32(&synthetic_query(&mut rng, &topics, shape), DType::F32)?;
            let k = dev.upload_f32(&rng.vec(row, 1.0), DType::F32)?;
            let v = dev.upload_f32(&rng.vec(row, 1.0), DType::F32)?;
            for (_, cache, seq, time, last) in caches.iter_mut() {
                let out = dev.alloc(DType::F32, qrow)?;
                let started = Instant::now();
                cache.decode_layer(layer, &[*seq], &q, &k, &v, &out)?;
                *time += started.elapsed();
                *last = dev.download_f32(&out)?;
            }
            let (a, b) = (&caches[0].4, &caches[1].4);
            let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            let den: f32 = a.iter().map(|x| x * x).sum();
            rel_err.push((num / den.max(1e-20)).sqrt());
        }
    }
    println!(
        "context {} tokens, {} decode steps, {} layers ({} dense), {}q/{}kv heads x {}, f16 KV\n",
        args.context,
        args.steps,
        shape.layers,
        base.dense_layers,
        shape.q_heads,
        shape.kv_heads,
        shape.head_dim
    );
    println!("| | full | arkvale (budget {}) |", args.budget);
    println!("|---|---|---|");
    let stats: Vec<CacheStats> = caches.iter().map(|c| c.1.stats().clone()).collect();
    let line =
        |name: &str, f: &dyn Fn(usize) -> String| println!("| {name} | {} | {} |", f(0), f(1));
    let per_step = |i: usize| caches[i].3.as_secs_f64() * 1e3 / args.steps as f64;
    line("decode ms / step (all layers)", &|i| {
        format!("{:.2}", per_step(i))
    });
    line("resident KV MiB", &|i| {
        format!(
            "{:.1}",
            caches[i].1.resident_bytes() as f64 / (1 << 20) as f64
        )
    });
    line("full-cache KV MiB", &|i| {
        format!("{:.1}", caches[i].1.full_bytes() as f64 / (1 << 20) as f64)
    });
    line("recalls / layer-step", &|i| {
        format!("{:.2}", stats[i].recalls_per_layer_step())
    });
    line("pages scored / step", &|i| {
        format!("{}", stats[i].pages_scored / args.steps as u64)
    });
    line("host->device MiB", &|i| {
        format!("{:.1}", stats[i].bytes_h2d as f64 / (1 << 20) as f64)
    });
    let t = |i: usize| stats[i].time;
    line("estimate / select / recall ms", &|i| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{:.1} / {:.1} / {:.1}",
            ms(t(i).estimate),
            ms(t(i).select),
            ms(t(i).recall)
        )
    });
    line("attention / other ms", &|i| {
        format!(
            "{:.1} / {:.1}",
            t(i).attention.as_secs_f64() * 1e3,
            t(i).other.as_secs_f64() * 1e3
        )
    });
    let mean = rel_err.iter().sum::<f32>() / rel_err.len().max(1) as f32;
    println!(
        "\nspeedup (full / arkvale): {:.2}x; output relative error vs full: mean {:.4}",
        per_step(0) / per_step(1),
        mean
    );
    Ok(())
}
