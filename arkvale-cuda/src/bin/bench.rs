//! `arkvale-cuda-bench`: the GPU benchmarks of `cargo xtask device-check` (issue 5), each
//! reported as a ratio measured in the same run:
//!
//! * **(a) attention** — paged decode attention (f16 KV, 32 heads, head dim 128, page 32) over
//!   every page of a batch: bytes of K and V read per second, against a device-to-device copy
//!   of the same bytes (counted read + write, as bandwidth figures usually are). The PyTorch
//!   `scaled_dot_product_attention` side of (a) is `sdpa.py`, run by `run.sh` on the same
//!   shapes (written to `attn_shapes.json` here).
//! * **(b) decode step** — one ArkVale decode step of a LongChat-7B-shaped model (32 layers,
//!   32 heads, head dim 128, f16 KV and weights, random values) at 10k / 20k / 30k context,
//!   batch 4, budgets 512 / 1024 / 2048 / 4096 tokens against the full cache, split into
//!   estimate / select / recall / attention / other (paper Fig. 9a). One layer's KV pool,
//!   digests and host backup are built and the step's per-layer work is timed and multiplied
//!   by 32 layers (every layer does the same work on the same shapes; one layer's KV of a
//!   30k x 4 batch is 1.9 GB, 32 of them would not fit next to the weights). Pages are chosen
//!   as the cache manager does (estimate all candidates, top-k, recall the missing ones into
//!   the slots of the lowest-ranked residents) with queries that drift slowly from step to
//!   step (`q_t = 0.9 q_{t-1} + 0.1 noise`, a stand-in for real decoding's temporal locality);
//!   "other" is the layer's dense work at batch 4 (q/k/v/o, gate/up/down matmuls with f16
//!   weights, two RMSNorms, RoPE, SiLU-gating, two residual adds, the KV append) plus the
//!   LM head once per step. The cache manager's host bookkeeping is not included.
//! * **(c) recall** — `recall_pages` of scattered slots (one copy per 256 KiB page) host to
//!   device, against one plain pinned `cuMemcpyHtoDAsync` of the same bytes.
//!
//! Usage: `arkvale-cuda-bench [--quick] [--out DIR] [--shapes FILE] [--json FILE]`
//! (`--quick`: fewer iterations and only the 30k context in (b)). Prints the tables and writes
//! them to `DIR/bench.md`; `--shapes` writes (a)'s shapes and times for `sdpa.py`, `--json`
//! every result as JSON. Without a usable GPU it prints why and exits with code 3.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use arkvale_core::{
    AppendDest, AttnPage, AttnRow, Buffer, DType, Device, DeviceExt, DigestKind, EstimateJob,
    KvDtype, KvLayout, MatmulDims, Result, Rope, RopeStyle, ScoreAgg, SummarizeJob, TopkSegment,
};
use arkvale_cuda::CudaDevice;

const HEADS: usize = 32;
const HEAD_DIM: usize = 128;
const PAGE: usize = 32;
const LAYERS: usize = 32;
const HIDDEN: usize = 4096;
const FFN: usize = 11008;
const VOCAB: usize = 32000;
const BATCH: usize = 4;

fn layout() -> KvLayout {
    KvLayout {
        kv_dtype: KvDtype::F16,
        heads_per_group: HEADS,
        gqa: 1,
        page_size: PAGE,
        head_dim: HEAD_DIM,
        groups: 1,
    }
}

/// A small, fast deterministic generator (xorshift64*), values in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Seconds per call of `f`, averaged over `iters` calls after one warm-up.
fn time(dev: &CudaDevice, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

/// A buffer of `len` elements of `dtype` filled with random values in [-scale, scale): a
/// random block is uploaded once and replicated on the device.
fn random_buffer(
    dev: &CudaDevice,
    rng: &mut Rng,
    dtype: DType,
    len: usize,
    scale: f32,
) -> Result<Buffer> {
    let buf = dev.alloc(dtype, len)?;
    let block = len.min(8 << 20);
    let vals = rng.vec(block, scale);
    let bytes = arkvale_core::dtype::encode_f32(&vals, dtype).expect("float dtype");
    dev.write(&buf, 0, &bytes)?;
    let mut at = block;
    while at < len {
        let n = block.min(len - at);
        dev.copy(&buf, 0, &buf, at, n)?;
        at += n;
    }
    Ok(buf)
}

struct Report {
    md: String,
    json: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (out, shapes, json) = (value("--out"), value("--shapes"), value("--json"));
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("arkvale-cuda-bench: skipped ({e})");
            return ExitCode::from(3);
        }
    };
    let mut rep = Report {
        md: format!(
            "# arkvale-cuda benchmarks\n\nDevice: {} (sm_{}, {} SMs)\n\n",
            dev.device_name(),
            dev.arch(),
            dev.multiprocessors()
        ),
        json: Vec::new(),
    };
    let mut failed = false;
    for (name, result) in [
        (
            "attention",
            bench_attention(&dev, quick, &mut rep, shapes.as_deref()),
        ),
        ("recall", bench_recall(&dev, quick, &mut rep)),
        ("decode step", bench_step(&dev, quick, &mut rep)),
    ] {
        if let Err(e) = result {
            println!("benchmark {name} failed: {e}");
            let _ = writeln!(rep.md, "\n**{name}: failed: {e}**\n");
            failed = true;
        }
    }
    println!("{}", rep.md);
    if let Some(dir) = out {
        let _ = std::fs::write(format!("{dir}/bench.md"), &rep.md);
    }
    if let Some(path) = json {
        let _ = std::fs::write(path, format!("[\n{}\n]\n", rep.json.join(",\n")));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Rows and pages of attention over `pages` consecutive slots per sequence (sequence `b`'s
/// pages are slots `b*pages ..`), every page full.
fn full_rows(batch: usize, pages: usize, ctx: usize) -> (Vec<AttnRow>, Vec<AttnPage>) {
    let rows = (0..batch)
        .map(|b| AttnRow {
            q_row: b as u32,
            group: 0,
            pos: ctx as u32 - 1,
            page_start: (b * pages) as u32,
            page_count: pages as u32,
        })
        .collect();
    let pages = (0..batch * pages)
        .map(|s| AttnPage {
            slot: s as u32,
            base_pos: ((s % pages) * PAGE) as u32,
            len: PAGE as u32,
        })
        .collect();
    (rows, pages)
}

/// (a) paged decode attention vs a device-to-device copy of the same bytes.
fn bench_attention(
    dev: &CudaDevice,
    quick: bool,
    rep: &mut Report,
    shapes_path: Option<&str>,
) -> Result<()> {
    let l = layout();
    let mut rng = Rng(0x1234_5678);
    let iters = if quick { 5 } else { 20 };
    let shapes: &[(usize, usize)] = &[(1, 32768), (4, 8192), (4, 32768)];
    rep.md
        .push_str("## (a) paged decode attention (f16 KV, 32 heads x 128, page 32)\n\n");
    rep.md.push_str("| batch | context | KV bytes | time (us) | attention GB/s | copy GB/s (r+w) | attention / copy |\n|---|---|---|---|---|---|---|\n");
    let mut shape_json = Vec::new();
    for &(batch, ctx) in shapes {
        let pages = ctx / PAGE;
        let slots = batch * pages;
        let pool = random_buffer(dev, &mut rng, DType::F16, slots * l.slot_elems(), 1.0)?;
        let q = dev.upload_f32(&rng.vec(batch * HEADS * HEAD_DIM, 1.0), DType::F32)?;
        let out_b = dev.alloc(DType::F32, batch * HEADS * HEAD_DIM)?;
        let (rows, pg) = full_rows(batch, pages, ctx);
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        let t = time(dev, iters, || {
            dev.decode_attention(&l, &pool, &q, &rows, &pg, None, scale, &out_b, None)
        })?;
        let bytes = (slots * l.slot_bytes()) as f64;
        let copy_dst = dev.alloc(DType::F16, slots * l.slot_elems())?;
        let tc = time(dev, iters, || dev.copy(&pool, 0, &copy_dst, 0, pool.len()))?;
        let (gbs, cgbs) = (bytes / t / 1e9, 2.0 * bytes / tc / 1e9);
        let _ = writeln!(
            rep.md,
            "| {batch} | {ctx} | {:.0} MB | {:.1} | {gbs:.0} | {cgbs:.0} | {:.2} |",
            bytes / 1e6,
            t * 1e6,
            gbs / cgbs
        );
        rep.json.push(format!(
            "{{\"bench\":\"attention\",\"batch\":{batch},\"context\":{ctx},\"seconds\":{t:e},\"gbps\":{gbs:.1},\"copy_gbps\":{cgbs:.1}}}"
        ));
        shape_json.push(format!(
            "{{\"batch\":{batch},\"context\":{ctx},\"heads\":{HEADS},\"head_dim\":{HEAD_DIM},\"seconds\":{t:e}}}"
        ));
    }
    if let Some(path) = shapes_path {
        let _ = std::fs::write(path, format!("[{}]\n", shape_json.join(",")));
    }
    rep.md.push('\n');
    Ok(())
}

/// (c) recall of scattered pages vs one plain pinned upload of the same bytes.
fn bench_recall(dev: &CudaDevice, quick: bool, rep: &mut Report) -> Result<()> {
    let l = layout();
    let pages = if quick { 512 } else { 2048 };
    let host = dev.alloc_host(pages * l.slot_bytes())?;
    let pool = dev.alloc(DType::F16, pages * l.slot_elems())?;
    // A fixed permutation: no two consecutive copies are adjacent, so none are merged.
    let copies: Vec<(u32, u64)> = (0..pages)
        .map(|i| {
            let slot = (i * 769) % pages;
            (slot as u32, (i * l.slot_bytes()) as u64)
        })
        .collect();
    let iters = if quick { 3 } else { 10 };
    let t = time(dev, iters, || {
        let ev = dev.recall_pages(&l, &host, &copies, &pool)?;
        dev.wait_host(&ev)
    })?;
    let mut tp = 0.0;
    for _ in 0..iters {
        tp += dev.time_pinned_upload(&host, &pool, pages * l.slot_bytes())?;
    }
    tp /= iters as f64;
    let bytes = (pages * l.slot_bytes()) as f64;
    let _ = writeln!(
        rep.md,
        "## (c) recall host -> device ({pages} scattered pages of {} KiB)\n\n| recall GB/s | pinned memcpy GB/s | recall / memcpy |\n|---|---|---|\n| {:.1} | {:.1} | {:.2} |\n",
        l.slot_bytes() / 1024,
        bytes / t / 1e9,
        bytes / tp / 1e9,
        tp / t
    );
    rep.json.push(format!(
        "{{\"bench\":\"recall\",\"pages\":{pages},\"seconds\":{t:e},\"memcpy_seconds\":{tp:e}}}"
    ));
    Ok(())
}

/// Per-layer times of one decode step (seconds).
#[derive(Default, Clone, Copy)]
struct Split {
    estimate: f64,
    select: f64,
    recall: f64,
    attention: f64,
    other: f64,
    recalled_pages: f64,
}

/// The dense work of one layer at batch 4 and of the LM head, with f16 weights.
struct Dense {
    w: Vec<Buffer>,
    head: Buffer,
    x: Buffer,
    h: Buffer,
    qkv: Vec<Buffer>,
    gate: Buffer,
    up: Buffer,
    act: Buffer,
    norm_w: Buffer,
    logits: Buffer,
    inv_freq: Vec<f32>,
}

impl Dense {
    fn new(dev: &CudaDevice, rng: &mut Rng) -> Result<Self> {
        let s = 0.02;
        let shapes = [
            (HIDDEN, HIDDEN),
            (HIDDEN, HIDDEN),
            (HIDDEN, HIDDEN),
            (HIDDEN, HIDDEN),
            (FFN, HIDDEN),
            (FFN, HIDDEN),
            (HIDDEN, FFN),
        ];
        let mut w = Vec::new();
        for (n, k) in shapes {
            w.push(random_buffer(dev, rng, DType::F16, n * k, s)?);
        }
        let f32b = |n: usize, rng: &mut Rng| dev.upload_f32(&rng.vec(n, 1.0), DType::F32);
        Ok(Dense {
            w,
            head: random_buffer(dev, rng, DType::F16, VOCAB * HIDDEN, s)?,
            x: f32b(BATCH * HIDDEN, rng)?,
            h: f32b(BATCH * HIDDEN, rng)?,
            qkv: (0..4)
                .map(|_| f32b(BATCH * HIDDEN, rng))
                .collect::<Result<_>>()?,
            gate: f32b(BATCH * FFN, rng)?,
            up: f32b(BATCH * FFN, rng)?,
            act: f32b(BATCH * FFN, rng)?,
            norm_w: f32b(HIDDEN, rng)?,
            logits: dev.alloc(DType::F32, BATCH * VOCAB)?,
            inv_freq: (0..HEAD_DIM / 2)
                .map(|i| 10000f32.powf(-(2.0 * i as f32) / HEAD_DIM as f32))
                .collect(),
        })
    }

    /// One layer's dense ops (and the KV append into `pool`).
    fn layer(&self, dev: &CudaDevice, pool: &Buffer, dests: &[AppendDest]) -> Result<()> {
        let mm = |n, k, x: &Buffer, w: &Buffer, o: &Buffer| {
            dev.matmul(&MatmulDims { m: BATCH, n, k }, x, w, o)
        };
        dev.rmsnorm(BATCH, HIDDEN, 1e-5, &self.x, &self.norm_w, &self.h)?;
        for i in 0..3 {
            mm(HIDDEN, HIDDEN, &self.h, &self.w[i], &self.qkv[i])?;
        }
        let rope = Rope {
            style: RopeStyle::Neox,
            heads: HEADS,
            head_dim: HEAD_DIM,
            inv_freq: &self.inv_freq,
            position_scale: 1.0,
        };
        let pos = vec![1000u32; BATCH];
        dev.rope(&rope, &pos, &self.qkv[0])?;
        dev.rope(&rope, &pos, &self.qkv[1])?;
        dev.append_kv(&layout(), pool, &self.qkv[1], &self.qkv[2], dests)?;
        mm(HIDDEN, HIDDEN, &self.qkv[0], &self.w[3], &self.qkv[3])?;
        dev.add(BATCH * HIDDEN, &self.x, &self.qkv[3])?;
        dev.rmsnorm(BATCH, HIDDEN, 1e-5, &self.x, &self.norm_w, &self.h)?;
        mm(FFN, HIDDEN, &self.h, &self.w[4], &self.gate)?;
        mm(FFN, HIDDEN, &self.h, &self.w[5], &self.up)?;
        dev.silu_mul(BATCH * FFN, &self.gate, &self.up, &self.act)?;
        mm(HIDDEN, FFN, &self.act, &self.w[6], &self.h)?;
        dev.add(BATCH * HIDDEN, &self.x, &self.h)?;
        // Keep the residual stream bounded across repetitions.
        dev.rmsnorm(BATCH, HIDDEN, 1e-5, &self.h, &self.norm_w, &self.x)
    }

    fn lm_head(&self, dev: &CudaDevice) -> Result<()> {
        dev.matmul(
            &MatmulDims {
                m: BATCH,
                n: VOCAB,
                k: HIDDEN,
            },
            &self.x,
            &self.head,
            &self.logits,
        )
    }
}

/// (b) the ArkVale decode step vs the full cache.
fn bench_step(dev: &CudaDevice, quick: bool, rep: &mut Report) -> Result<()> {
    let l = layout();
    let mut rng = Rng(0xdead_beef);
    let dense = Dense::new(dev, &mut rng)?;
    let scratch_pool = dev.alloc(DType::F16, BATCH * l.slot_elems())?;
    let dests: Vec<AppendDest> = (0..BATCH)
        .map(|b| AppendDest {
            token: b as u32,
            group: 0,
            slot: b as u32,
            pos: 0,
        })
        .collect();
    let iters = if quick { 3 } else { 10 };
    let t_other = time(dev, iters, || dense.layer(dev, &scratch_pool, &dests))?;
    let t_head = time(dev, iters, || dense.lm_head(dev))?;
    let contexts: &[usize] = if quick {
        &[30720]
    } else {
        &[10240, 20480, 30720]
    };
    let budgets = [512usize, 1024, 2048, 4096];
    rep.md.push_str(
        "## (b) decode step, LongChat-7B shape (32 layers x 32 heads x 128, f16), batch 4\n\n",
    );
    rep.md.push_str("Per step, in ms (per-layer work x 32 layers, LM head once). `other` = dense layer work + KV append.\n\n");
    rep.md.push_str("| context | policy | total | estimate | select | recall | attention | other | recalled pages / layer | speedup vs full |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for &ctx in contexts {
        let pages = ctx / PAGE;
        let total_slots = BATCH * pages;
        // The full cache: every page resident.
        let pool_full =
            random_buffer(dev, &mut rng, DType::F16, total_slots * l.slot_elems(), 1.0)?;
        let q = dev.upload_f32(&rng.vec(BATCH * HEADS * HEAD_DIM, 1.0), DType::F32)?;
        let out_b = dev.alloc(DType::F32, BATCH * HEADS * HEAD_DIM)?;
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        let (rows, pg) = full_rows(BATCH, pages, ctx);
        let t_full_attn = time(dev, iters, || {
            dev.decode_attention(&l, &pool_full, &q, &rows, &pg, None, scale, &out_b, None)
        })?;
        let full_ms = (LAYERS as f64 * (t_full_attn + t_other) + t_head) * 1e3;
        let _ = writeln!(
            rep.md,
            "| {ctx} | full | {full_ms:.2} | - | - | - | {:.2} | {:.2} | - | 1.00 |",
            LAYERS as f64 * t_full_attn * 1e3,
            (LAYERS as f64 * t_other + t_head) * 1e3
        );
        // Host backup of every page and the digests of every page.
        let host = dev.alloc_host(total_slots * l.slot_bytes())?;
        let all: Vec<(u32, u64)> = (0..total_slots)
            .map(|s| (s as u32, (s * l.slot_bytes()) as u64))
            .collect();
        let ev = dev.backup_pages(&l, &pool_full, &all, &host)?;
        dev.wait_host(&ev)?;
        let kind = DigestKind::CuboidMean;
        let digests = dev.alloc(DType::F32, total_slots * HEADS * kind.len(HEAD_DIM))?;
        let jobs: Vec<SummarizeJob> = (0..total_slots)
            .map(|s| SummarizeJob {
                slot: s as u32,
                digest: s as u32,
                len: PAGE as u32,
            })
            .collect();
        dev.summarize(&l, kind, &pool_full, &jobs, &digests)?;
        let mut qv = rng.vec(BATCH * HEADS * HEAD_DIM, 1.0);
        for &budget in &budgets {
            let mut split =
                step_arkvale(dev, &mut rng, &mut qv, ctx, budget, &host, &digests, iters)?;
            split.other = t_other;
            let per = |x: f64| LAYERS as f64 * x * 1e3;
            let total =
                per(split.estimate + split.select + split.recall + split.attention + split.other)
                    + t_head * 1e3;
            let _ = writeln!(
                rep.md,
                "| {ctx} | arkvale {budget} | {total:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |",
                per(split.estimate),
                per(split.select),
                per(split.recall),
                per(split.attention),
                per(split.other) + t_head * 1e3,
                split.recalled_pages,
                full_ms / total
            );
            rep.json.push(format!(
                "{{\"bench\":\"step\",\"context\":{ctx},\"budget\":{budget},\"total_ms\":{total:.4},\"full_ms\":{full_ms:.4},\"estimate_ms\":{:.4},\"select_ms\":{:.4},\"recall_ms\":{:.4},\"attention_ms\":{:.4},\"recalled_pages\":{:.2}}}",
                per(split.estimate),
                per(split.select),
                per(split.recall),
                per(split.attention),
                split.recalled_pages
            ));
        }
    }
    rep.md.push('\n');
    Ok(())
}

/// Runs `steps` ArkVale decode steps of one layer at `budget` tokens and returns the mean
/// per-layer split. `other` here is the dense layer time measured in `bench_step`.
#[allow(clippy::too_many_arguments)]
fn step_arkvale(
    dev: &CudaDevice,
    rng: &mut Rng,
    qv: &mut [f32],
    ctx: usize,
    budget: usize,
    host: &arkvale_core::HostBuffer,
    digests: &Buffer,
    steps: usize,
) -> Result<Split> {
    let l = layout();
    let pages = ctx / PAGE;
    let b_pages = budget / PAGE;
    let k_pages = (1280.min(budget / 2) / PAGE).max(1);
    let (n_sink, n_win) = (1usize, 2usize);
    let cand = pages - n_sink - n_win;
    let pool = dev.alloc(DType::F16, BATCH * b_pages * l.slot_elems())?;
    // Resident set per sequence: page index per local slot (initially sinks, window, and the
    // first candidates); recall it from the host backup.
    let mut resident: Vec<Vec<usize>> = (0..BATCH)
        .map(|_| {
            let mut v: Vec<usize> = (0..n_sink).collect();
            v.extend(pages - n_win..pages);
            v.extend(n_sink..n_sink + (b_pages - n_sink - n_win));
            v
        })
        .collect();
    let mut initial = Vec::new();
    for (b, res) in resident.iter().enumerate() {
        for (i, &page) in res.iter().enumerate() {
            initial.push((
                (b * b_pages + i) as u32,
                ((b * pages + page) * l.slot_bytes()) as u64,
            ));
        }
    }
    let ev = dev.recall_pages(&l, host, &initial, &pool)?;
    dev.wait_host(&ev)?;
    let q = dev.alloc(DType::F32, qv.len())?;
    let scores = dev.alloc(DType::F32, BATCH * cand)?;
    let top = dev.alloc(DType::U32, BATCH * k_pages)?;
    let jobs: Vec<EstimateJob> = (0..BATCH)
        .flat_map(|b| {
            (n_sink..pages - n_win).map(move |p| EstimateJob {
                q_row: b as u32,
                group: 0,
                digest: (b * pages + p) as u32,
            })
        })
        .collect();
    let segs: Vec<TopkSegment> = (0..BATCH)
        .map(|b| TopkSegment {
            start: (b * cand) as u32,
            len: cand as u32,
            k: k_pages as u32,
        })
        .collect();
    let out_b = dev.alloc(DType::F32, qv.len())?;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut acc = Split::default();
    let warm = 2;
    for step in 0..steps + warm {
        for x in qv.iter_mut() {
            *x = 0.9 * *x + 0.1 * rng.next();
        }
        dev.write(&q, 0, bytemuck::cast_slice(qv))?;
        dev.synchronize()?;
        let t0 = Instant::now();
        dev.estimate(
            &l,
            DigestKind::CuboidMean,
            ScoreAgg::Mean,
            digests,
            &q,
            &jobs,
            &scores,
        )?;
        dev.synchronize()?;
        let t1 = Instant::now();
        dev.topk(&scores, &segs, &top)?;
        let picked = dev.download_u32(&top, 0, BATCH * k_pages)?;
        let t2 = Instant::now();
        // Recall the top-k pages that are not resident into the slots of residents that are
        // neither sinks, window nor top-k (the lowest-ranked first: here, any such slot).
        let mut copies = Vec::new();
        for b in 0..BATCH {
            let want: Vec<usize> = picked[b * k_pages..(b + 1) * k_pages]
                .iter()
                .map(|&i| n_sink + i as usize)
                .collect();
            let res = &mut resident[b];
            let missing: Vec<usize> = want.iter().copied().filter(|p| !res.contains(p)).collect();
            let mut free = (0..res.len()).filter(|&i| {
                let p = res[i];
                p >= n_sink && p < pages - n_win && !want.contains(&p)
            });
            let mut moves = Vec::new();
            for p in missing {
                if let Some(i) = free.next() {
                    moves.push((i, p));
                }
            }
            for (i, p) in moves {
                res[i] = p;
                copies.push((
                    (b * b_pages + i) as u32,
                    ((b * pages + p) * l.slot_bytes()) as u64,
                ));
            }
        }
        if !copies.is_empty() {
            let ev = dev.recall_pages(&l, host, &copies, &pool)?;
            dev.wait_on_device(&ev)?;
        }
        dev.synchronize()?;
        let t3 = Instant::now();
        let mut rows = Vec::new();
        let mut pg = Vec::new();
        for (b, res) in resident.iter().enumerate() {
            rows.push(AttnRow {
                q_row: b as u32,
                group: 0,
                pos: ctx as u32 - 1,
                page_start: pg.len() as u32,
                page_count: res.len() as u32,
            });
            for (i, &p) in res.iter().enumerate() {
                pg.push(AttnPage {
                    slot: (b * b_pages + i) as u32,
                    base_pos: (p * PAGE) as u32,
                    len: PAGE as u32,
                });
            }
        }
        dev.decode_attention(&l, &pool, &q, &rows, &pg, None, scale, &out_b, None)?;
        dev.synchronize()?;
        let t4 = Instant::now();
        if step >= warm {
            acc.estimate += (t1 - t0).as_secs_f64();
            acc.select += (t2 - t1).as_secs_f64();
            acc.recall += (t3 - t2).as_secs_f64();
            acc.attention += (t4 - t3).as_secs_f64();
            acc.recalled_pages += copies.len() as f64 / BATCH as f64;
        }
    }
    let n = steps as f64;
    Ok(Split {
        estimate: acc.estimate / n,
        select: acc.select / n,
        recall: acc.recall / n,
        attention: acc.attention / n,
        other: 0.0,
        recalled_pages: acc.recalled_pages / n,
    })
}
