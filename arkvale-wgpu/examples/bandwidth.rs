//! Achieved memory bandwidth of paged decode attention on the wgpu adapter, against a plain
//! buffer copy measured in the same run (the real-GPU benchmark; on lavapipe it
//! measures the software rasterizer's CPU). Prints a markdown table.
//!
//! `cargo run --release -p arkvale-wgpu --example bandwidth [-- CONTEXT_TOKENS [BATCH]]`
//! (defaults: 8192 tokens, batch 4; SmolLM2-like geometry: 3 KV heads x 64, GQA 3, pages of
//! 32, f16 KV, one head group per KV head).

use std::time::Instant;

use arkvale_core::{AttnPage, AttnRow, DType, Device, DeviceExt, KvDtype, KvLayout};
use arkvale_wgpu::WgpuDevice;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let context: usize = args.next().map_or(Ok(8192), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let dev = WgpuDevice::new()?;
    let a = dev.adapter();
    println!(
        "adapter: {} ({}, {}, {})",
        a.name,
        a.backend,
        a.device_type,
        a.driver.trim()
    );

    // A buffer copy of 64 MiB (read + write bytes).
    let n = 16 << 20;
    let src = dev.alloc(DType::F32, n)?;
    let dst = dev.alloc(DType::F32, n)?;
    dev.copy(&src, 0, &dst, 0, n)?;
    dev.synchronize()?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        dev.copy(&src, 0, &dst, 0, n)?;
    }
    dev.synchronize()?;
    let copy_s = t.elapsed().as_secs_f64() / reps as f64;
    let copy_gbs = 2.0 * (n * 4) as f64 / copy_s / 1e9;

    // Paged decode attention: every row reads all pages of its own sequence.
    let l = KvLayout {
        kv_dtype: KvDtype::F16,
        heads_per_group: 1,
        gqa: 3,
        page_size: 32,
        head_dim: 64,
        groups: 3,
    };
    let pages_per_seq = context.div_ceil(l.page_size);
    let slots = batch * l.groups * pages_per_seq;
    let pool = dev.alloc(DType::F16, slots * l.slot_elems())?;
    let q = dev.upload_f32(&vec![0.01; batch * l.q_heads() * l.head_dim], DType::F32)?;
    let out = dev.alloc(DType::F32, batch * l.q_heads() * l.head_dim)?;
    let mut rows = Vec::new();
    let mut pages = Vec::new();
    for b in 0..batch {
        for g in 0..l.groups {
            let start = pages.len() as u32;
            for p in 0..pages_per_seq {
                pages.push(AttnPage {
                    slot: ((b * l.groups + g) * pages_per_seq + p) as u32,
                    base_pos: (p * l.page_size) as u32,
                    len: l.page_size as u32,
                });
            }
            rows.push(AttnRow {
                q_row: b as u32,
                group: g as u32,
                pos: context as u32,
                page_start: start,
                page_count: pages_per_seq as u32,
            });
        }
    }
    let scale = 0.125;
    dev.decode_attention(&l, &pool, &q, &rows, &pages, None, scale, &out, None)?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        dev.decode_attention(&l, &pool, &q, &rows, &pages, None, scale, &out, None)?;
    }
    dev.synchronize()?;
    let attn_s = t.elapsed().as_secs_f64() / reps as f64;
    let kv_bytes = (slots * l.slot_bytes()) as f64;
    let attn_gbs = kv_bytes / attn_s / 1e9;

    println!();
    println!("| measurement | bytes | time | GB/s | of copy |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| buffer copy (read + write) | {} MiB | {:.2} ms | {copy_gbs:.2} | 100% |",
        (2 * n * 4) >> 20,
        copy_s * 1e3
    );
    println!(
        "| decode attention, batch {batch} x {context} tokens, f16 KV (KV read) | {:.1} MiB | \
         {:.2} ms | {attn_gbs:.2} | {:.0}% |",
        kv_bytes / (1 << 20) as f64,
        attn_s * 1e3,
        100.0 * attn_gbs / copy_gbs
    );
    Ok(())
}
