//! wgpu-specific unit tests: what the differential suite cannot see (segmented buffers, the
//! storage-type decision, half-precision rounding corner cases, limits). The differential
//! suite in `arkvale-tests` covers every op against the reference. Each test prints a skip
//! line and passes when no wgpu adapter exists on the machine.

use arkvale_core::{
    AppendDest, DType, Device, DeviceExt, KvDtype, KvLayout, MatmulDims, reference,
};
use half::{bf16, f16};

use crate::WgpuDevice;

fn device() -> Option<WgpuDevice> {
    match WgpuDevice::new() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

#[test]
fn adapter_report_and_storage_decision() {
    let Some(dev) = device() else { return };
    let a = dev.adapter();
    assert!(!a.name.is_empty());
    assert!(a.max_storage_binding >= 128 << 20 || a.max_storage_binding > 0);
    // Half storage never depends on SHADER_F16: it is unpacked with integer operations.
    assert!(dev.f16_storage());
    assert_eq!(dev.name(), "wgpu");
}

/// Values that exercise every rounding path of f32 -> f16 / bf16: ties to even, carries into
/// the exponent, overflow to infinity, f16 subnormals and underflow, infinities, NaN, -0.
fn tricky() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.99,
        65520.0,
        1e9,
        -1e9,
        6.1e-5,
        5.96e-8,
        2.98e-8,
        2.99e-8,
        1e-10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        3.4e38,
    ];
    // Exact ties between two f16 / bf16 values, both parities.
    for base in [1.0f32, 3.0, 1024.0, 0.75] {
        let b = base.to_bits();
        v.push(f32::from_bits(b | 0x1000));
        v.push(f32::from_bits(b | 0x3000));
        v.push(f32::from_bits(b | 0x8000));
        v.push(f32::from_bits(b | 0x18000));
        v.push(f32::from_bits(b | 0x7fff));
    }
    v
}

#[test]
fn append_rounds_to_nearest_even_bit_for_bit() {
    let Some(dev) = device() else { return };
    let vals = tricky();
    for kv in [KvDtype::F16, KvDtype::BF16, KvDtype::F32] {
        let l = KvLayout {
            kv_dtype: kv,
            heads_per_group: 1,
            gqa: 1,
            page_size: vals.len(),
            head_dim: 1,
            groups: 1,
        };
        let pool = dev.alloc(kv.dtype(), l.slot_elems()).unwrap();
        let k = dev.upload_f32(&vals, DType::F32).unwrap();
        let neg: Vec<f32> = vals.iter().map(|x| -x).collect();
        let v = dev.upload_f32(&neg, DType::F32).unwrap();
        let dests: Vec<AppendDest> = (0..vals.len() as u32)
            .map(|t| AppendDest {
                token: t,
                group: 0,
                slot: 0,
                pos: t,
            })
            .collect();
        dev.append_kv(&l, &pool, &k, &v, &dests).unwrap();
        let mut bytes = vec![0u8; pool.bytes()];
        dev.read(&pool, 0, &mut bytes).unwrap();
        let want: Vec<u8> = vals
            .iter()
            .chain(&neg)
            .flat_map(|&x| match kv {
                KvDtype::F16 => f16::from_f32(x).to_le_bytes().to_vec(),
                KvDtype::BF16 => bf16::from_f32(x).to_le_bytes().to_vec(),
                KvDtype::F32 => x.to_le_bytes().to_vec(),
            })
            .collect();
        for (i, (a, b)) in bytes
            .chunks(kv.size())
            .zip(want.chunks(kv.size()))
            .enumerate()
        {
            assert_eq!(a, b, "{kv:?} element {i} ({})", vals[i % vals.len()]);
        }
    }
}

#[test]
fn segmented_buffers_copy_across_segment_boundaries() {
    let Some(mut dev) = device() else { return };
    // Force 1 MiB segments: a 2.5 MiB buffer has three.
    dev.max_single = 1 << 20;
    dev.max_piece = 1 << 20;
    let n = (5 << 20) / 2 / 4;
    let buf = dev.alloc(DType::F32, n).unwrap();
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    dev.write(&buf, 0, bytemuck::cast_slice(&values)).unwrap();
    assert_eq!(dev.download_f32(&buf).unwrap(), values);
    // A fill and a copy that straddle the first boundary.
    let edge = (1 << 20) / 4;
    dev.fill_f32(&buf, edge - 3, 7, 9.5).unwrap();
    let other = dev.alloc(DType::F32, n).unwrap();
    dev.copy(&buf, edge - 10, &other, 2 * edge - 5, 20).unwrap();
    let mut want = values.clone();
    want[edge - 3..edge + 4].fill(9.5);
    assert_eq!(dev.download_f32(&buf).unwrap(), want);
    let got = dev.download_f32_range(&other, 2 * edge - 5, 20).unwrap();
    assert_eq!(got, &want[edge - 10..edge + 10]);
    // Unaligned f16 copy within one buffer across a boundary (memmove semantics).
    let h = dev.alloc(DType::F16, 3 * (1 << 20) / 2).unwrap();
    let hv: Vec<f32> = (0..2000).map(|i| i as f32).collect();
    let at = (1 << 20) / 2 - 999;
    dev.write(
        &h,
        at,
        &arkvale_core::dtype::encode_f32(&hv, DType::F16).unwrap(),
    )
    .unwrap();
    dev.copy(&h, at, &h, at + 3, 2000).unwrap();
    let mut back = vec![0u8; 4000];
    dev.read(&h, at + 3, &mut back).unwrap();
    assert_eq!(
        arkvale_core::dtype::decode_f32(&back, DType::F16).unwrap(),
        hv
    );
    // A matmul whose weight rows lie in one segment works; an op that binds a whole
    // segmented buffer is an error, not a wrong result.
    let x = dev.upload_f32(&[1.0; 4], DType::F32).unwrap();
    let out = dev.alloc(DType::F32, 4).unwrap();
    dev.matmul(&MatmulDims { m: 1, n: 1, k: 4 }, &x, &buf, &out)
        .unwrap();
    let sum: f32 = want[..4].iter().sum();
    assert_eq!(dev.download_f32_range(&out, 0, 1).unwrap(), [sum]);
    let err = dev.rmsnorm(1, 4, 0.0, &buf, &x, &out).unwrap_err();
    assert!(err.to_string().contains("larger than one binding"), "{err}");
}

#[test]
fn matmul_splits_weights_that_exceed_one_binding() {
    let Some(dev) = device() else { return };
    // Rows of 256 f16 weights (512 bytes) and 1024-byte activation rows under a 2 KiB binding
    // limit: weights go 4 rows at a time, activations 2 rows at a time.
    let (m, n, k) = (3usize, 64usize, 256usize);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 16.0)
        .collect();
    let xb = dev.upload_f32(&x, DType::F32).unwrap();
    let wb = dev.upload_f32(&w, DType::F16).unwrap();
    let out = dev.upload_f32(&vec![f32::NAN; m * n], DType::F32).unwrap();
    let mut small = WgpuDevice {
        id: dev.id,
        gpu: dev.gpu,
        max_single: dev.max_single,
        max_piece: dev.max_piece,
    };
    small.gpu.limits.max_storage_buffer_binding_size = 2048;
    small
        .matmul(&MatmulDims { m, n, k }, &xb, &wb, &out)
        .unwrap();
    let mut want = vec![0f32; m * n];
    let wr: Vec<f32> = w.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    reference::matmul(&MatmulDims { m, n, k }, &x, &wr, &mut want);
    let got = small.download_f32(&out).unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn long_decode_rows_split_into_page_chunks_match_the_reference() {
    let Some(dev) = device() else { return };
    let l = KvLayout {
        kv_dtype: KvDtype::F32,
        heads_per_group: 2,
        gqa: 2,
        page_size: 8,
        head_dim: 24,
        groups: 1,
    };
    // Row 0 reads 50 pages (four chunks), row 1 three pages (one), row 2 none.
    let slots = 53;
    let pool_v: Vec<f32> = (0..slots * l.slot_elems())
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0)
        .collect();
    let q_v: Vec<f32> = (0..3 * l.q_heads() * l.head_dim)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0)
        .collect();
    let pages: Vec<arkvale_core::AttnPage> = (0..slots as u32)
        .map(|s| arkvale_core::AttnPage {
            slot: (s * 7) % slots as u32,
            base_pos: s * 8,
            len: if s == 49 { 5 } else { 8 },
        })
        .collect();
    let row = |q_row, page_start, page_count| arkvale_core::AttnRow {
        q_row,
        group: 0,
        pos: 10_000,
        page_start,
        page_count,
    };
    let rows = [row(0, 0, 50), row(1, 50, 3), row(2, 53, 0)];
    let pool = dev.upload_f32(&pool_v, DType::F32).unwrap();
    let q = dev.upload_f32(&q_v, DType::F32).unwrap();
    let out = dev
        .upload_f32(&vec![f32::NAN; q_v.len()], DType::F32)
        .unwrap();
    dev.decode_attention(&l, &pool, &q, &rows, &pages, None, 0.3, &out, None)
        .unwrap();
    let mut want = vec![f32::NAN; q_v.len()];
    reference::attention(&l, &pool_v, &q_v, &rows, &pages, None, 0.3, &mut want);
    let got = dev.download_f32(&out).unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{i}: {a} vs {b}");
    }
}
