//! The checked [`Device`] layer, tested once for every backend against the recording mock:
//! each op's valid call reaches the backend, and every kind of bad input is an error before
//! any backend method runs.

use super::*;
use crate::mock::MockDevice;
use crate::{DeviceExt, KvDtype, QuantType, RopeStyle};

const L: KvLayout = KvLayout {
    kv_dtype: KvDtype::F16,
    heads_per_group: 2,
    gqa: 2,
    page_size: 4,
    head_dim: 4,
    groups: 2,
};
/// Slots in the test pool.
const SLOTS: usize = 3;
/// Query rows of the test q/out buffers.
const ROWS: usize = 2;

/// Asserts that `r` is a shape error whose message contains `needle`, and that no backend op
/// ran.
#[track_caller]
fn rejects<T: std::fmt::Debug>(dev: &MockDevice, r: Result<T>, needle: &str) {
    match r {
        Err(Error::Shape(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected a shape error containing {needle:?}, got {other:?}"),
    }
    assert_eq!(
        dev.take_calls(),
        Vec::<&str>::new(),
        "the backend was reached"
    );
}

/// Asserts that `r` succeeded and reached exactly the backend op `op`.
#[track_caller]
fn reaches<T: std::fmt::Debug>(dev: &MockDevice, r: Result<T>, op: &str) {
    r.unwrap();
    assert_eq!(dev.take_calls(), vec![op]);
}

fn buf(dev: &MockDevice, dtype: DType, len: usize) -> Buffer {
    dev.alloc(dtype, len).unwrap()
}

fn f32s(dev: &MockDevice, len: usize) -> Buffer {
    buf(dev, DType::F32, len)
}

fn pool(dev: &MockDevice) -> Buffer {
    buf(dev, DType::F16, SLOTS * L.slot_elems())
}

fn q(dev: &MockDevice) -> Buffer {
    f32s(dev, ROWS * L.q_heads() * L.head_dim)
}

#[test]
fn alloc_rejects_partial_blocks_overflow_and_unsupported_weights() {
    let dev = MockDevice::default();
    let q4 = DType::Quant(QuantType::Q4_0);
    assert_eq!(dev.alloc(q4, 64).unwrap().len(), 64);
    rejects(&dev, dev.alloc(q4, 33), "not a whole number of blocks");
    rejects(&dev, dev.alloc(DType::F32, usize::MAX), "overflows");
    let floats = MockDevice {
        float_only: true,
        ..MockDevice::default()
    };
    assert!(!floats.supports_weight_dtype(q4));
    let err = floats.alloc(q4, 64).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedWeight { backend, dtype } if backend == "mock" && *dtype == q4),
        "{err:?}"
    );
    assert!(floats.alloc(DType::BF16, 3).is_ok());
}

#[test]
fn import_checks_the_byte_count_and_copies_by_default() {
    use crate::SharedBytes;
    let dev = MockDevice::default();
    let q4 = DType::Quant(QuantType::Q4_0);
    let whole = || SharedBytes::from_vec(vec![0; 2 * 18]);
    assert!(!dev.imports_in_place(q4));
    reaches(&dev, dev.import(q4, 64, whole()), "write");
    rejects(
        &dev,
        dev.import(q4, 32, whole()),
        "import: 36 bytes are not 32",
    );
    rejects(
        &dev,
        dev.import(q4, 33, whole()),
        "not a whole number of blocks",
    );
    let floats = MockDevice {
        float_only: true,
        ..MockDevice::default()
    };
    let err = floats.import(q4, 64, whole()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedWeight { .. }), "{err:?}");
}

#[test]
fn memory_ops_check_ranges_element_sizes_and_dtypes() {
    let dev = MockDevice::default();
    let (a, b) = (f32s(&dev, 8), f32s(&dev, 8));
    reaches(&dev, dev.write(&a, 2, &[0; 24]), "write");
    reaches(&dev, dev.write(&a, 8, &[]), "write");
    rejects(
        &dev,
        dev.write(&a, 2, &[0; 28]),
        "write: range 2..2+7 outside a buffer of 8",
    );
    rejects(&dev, dev.write(&a, 0, &[0; 6]), "not whole f32 elements");
    rejects(
        &dev,
        dev.write(&a, usize::MAX, &[0; 4]),
        "write: 4 bytes at element",
    );
    rejects(&dev, dev.write(&a, 9, &[]), "write: range 9..9+0");
    let mut out = [0u8; 8];
    reaches(&dev, dev.read(&a, 6, &mut out), "read");
    rejects(&dev, dev.read(&a, 7, &mut out), "read: range");
    rejects(
        &dev,
        dev.read(&a, 0, &mut out[..3]),
        "not whole f32 elements",
    );
    let q4 = buf(&dev, DType::Quant(QuantType::Q4_0), 64);
    let block = QuantType::Q4_0.block_bytes();
    reaches(&dev, dev.write(&q4, 32, &vec![0; block]), "write");
    rejects(&dev, dev.write(&q4, 16, &vec![0; block]), "whole blocks");
    rejects(&dev, dev.write(&q4, 0, &vec![0; block + 1]), "whole blocks");

    reaches(&dev, dev.copy(&a, 0, &b, 4, 4), "copy");
    reaches(&dev, dev.copy(&a, 0, &a, 2, 6), "copy");
    rejects(&dev, dev.copy(&a, 5, &b, 0, 4), "copy: src: range");
    rejects(&dev, dev.copy(&a, 0, &b, 5, 4), "copy: dst: range");
    let u = buf(&dev, DType::U32, 8);
    rejects(&dev, dev.copy(&a, 0, &u, 0, 1), "copy: F32 into U32");
    let q4b = buf(&dev, DType::Quant(QuantType::Q4_0), 64);
    reaches(&dev, dev.copy(&q4, 32, &q4b, 0, 32), "copy");
    rejects(&dev, dev.copy(&q4, 0, &q4b, 0, 16), "not whole blocks");

    reaches(&dev, dev.fill_f32(&a, 4, 4, 1.0), "fill_f32");
    rejects(&dev, dev.fill_f32(&a, 4, 5, 1.0), "fill_f32: range");
    rejects(
        &dev,
        dev.fill_f32(&u, 0, 1, 1.0),
        "fill_f32: expected a F32 buffer, got U32",
    );

    let host = dev.alloc_host(16).unwrap();
    dev.host_write(&host, 12, &[1, 2, 3, 4]).unwrap();
    let mut back = [0u8; 4];
    dev.host_read(&host, 12, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4]);
    rejects(
        &dev,
        dev.host_write(&host, 13, &[0; 4]),
        "host_write (bytes): range",
    );
    rejects(
        &dev,
        dev.host_read(&host, 17, &mut []),
        "host_read (bytes): range",
    );
}

#[test]
fn page_copies_check_layout_pool_slots_and_host_ranges() {
    let dev = MockDevice::default();
    let p = pool(&dev);
    let n = L.slot_bytes() as u64;
    let host = dev.alloc_host(2 * n as usize).unwrap();
    let ok = [(2, 0), (0, n)];
    reaches(&dev, dev.backup_pages(&L, &p, &ok, &host), "backup_pages");
    reaches(&dev, dev.recall_pages(&L, &host, &ok, &p), "recall_pages");
    for (copies, needle) in [
        (vec![(3, 0)], "slot 3 outside a pool of 3 slots"),
        (vec![(0, n + 1)], "slot 0 at host byte: range"),
        (vec![(0, u64::MAX)], "slot 0 at host byte: range"),
    ] {
        rejects(&dev, dev.backup_pages(&L, &p, &copies, &host), needle);
        rejects(&dev, dev.recall_pages(&L, &host, &copies, &p), needle);
    }
    let f32_pool = f32s(&dev, p.len());
    rejects(
        &dev,
        dev.backup_pages(&L, &f32_pool, &ok, &host),
        "backup_pages: pool",
    );
    rejects(
        &dev,
        dev.recall_pages(&L, &host, &ok, &f32_pool),
        "recall_pages: pool",
    );
    let zero = KvLayout { groups: 0, ..L };
    rejects(&dev, dev.backup_pages(&zero, &p, &ok, &host), "zero size");
    assert_eq!(
        validate::page_copy_plan(&L, &ok)[1],
        (0, n as usize, n as usize)
    );
}

#[test]
fn kv_ops_check_dtypes_aliasing_and_descriptors() {
    let dev = MockDevice::default();
    let p = pool(&dev);
    let row = L.kv_heads() * L.head_dim;
    let (k, v) = (f32s(&dev, 2 * row), f32s(&dev, 2 * row));
    let dest = AppendDest {
        token: 1,
        group: 1,
        slot: 2,
        pos: 3,
    };
    reaches(&dev, dev.append_kv(&L, &p, &k, &v, &[dest]), "append_kv");
    rejects(
        &dev,
        dev.append_kv(&L, &p, &k, &v, &[AppendDest { slot: 3, ..dest }]),
        "slot 3",
    );
    rejects(
        &dev,
        dev.append_kv(&L, &p, &k, &v, &[AppendDest { token: 2, ..dest }]),
        "k/v",
    );
    let l32 = KvLayout {
        kv_dtype: KvDtype::F32,
        ..L
    };
    let p32 = f32s(&dev, SLOTS * l32.slot_elems());
    rejects(
        &dev,
        dev.append_kv(&l32, &p32, &p32, &v, &[]),
        "append_kv: the output buffer must not also be an input",
    );
    let k16 = buf(&dev, DType::F16, 2 * row);
    rejects(
        &dev,
        dev.append_kv(&L, &p, &k16, &v, &[dest]),
        "append_kv: k: expected",
    );
    rejects(
        &dev,
        dev.append_kv(&L, &k, &k, &v, &[]),
        "append_kv: pool: expected a F16",
    );
    let bad = KvLayout { head_dim: 0, ..L };
    rejects(&dev, dev.append_kv(&bad, &p, &k, &v, &[]), "zero size");

    let per = L.heads_per_group * DigestKind::default().len(L.head_dim);
    let digests = f32s(&dev, 2 * per);
    let job = SummarizeJob {
        slot: 0,
        digest: 1,
        len: 4,
    };
    let kind = DigestKind::default();
    reaches(
        &dev,
        dev.summarize(&L, kind, &p, &[job], &digests),
        "summarize",
    );
    let far = SummarizeJob { digest: 2, ..job };
    rejects(
        &dev,
        dev.summarize(&L, kind, &p, &[far], &digests),
        "digests",
    );
    let empty = SummarizeJob { len: 0, ..job };
    rejects(
        &dev,
        dev.summarize(&L, kind, &p, &[empty], &digests),
        "len must be in 1..=4",
    );

    let (qb, scores) = (q(&dev), f32s(&dev, 2));
    let ej = EstimateJob {
        q_row: 1,
        group: 1,
        digest: 1,
    };
    let agg = ScoreAgg::default();
    reaches(
        &dev,
        dev.estimate(&L, kind, agg, &digests, &qb, &[ej, ej], &scores),
        "estimate",
    );
    let three = [ej; 3];
    rejects(
        &dev,
        dev.estimate(&L, kind, agg, &digests, &qb, &three, &scores),
        "scores",
    );
    let row2 = EstimateJob { q_row: 2, ..ej };
    rejects(
        &dev,
        dev.estimate(&L, kind, agg, &digests, &qb, &[row2], &scores),
        ": q",
    );
    rejects(
        &dev,
        dev.estimate(&L, kind, agg, &digests, &qb, &[ej], &qb),
        "estimate: the output buffer must not also be an input",
    );

    let out = buf(&dev, DType::U32, 4);
    let seg = TopkSegment {
        start: 0,
        len: 2,
        k: 2,
    };
    reaches(&dev, dev.topk(&scores, &[seg], &out), "topk");
    rejects(
        &dev,
        dev.topk(&scores, &[TopkSegment { k: 3, ..seg }], &out),
        "needs k <= len",
    );
    rejects(
        &dev,
        dev.topk(&scores, &[TopkSegment { start: 1, ..seg }], &out),
        "start + len",
    );
    rejects(&dev, dev.topk(&scores, &[seg; 3], &out), "topk: out");
    rejects(
        &dev,
        dev.topk(&scores, &[seg], &scores),
        "topk: out: expected a U32",
    );
}

#[test]
fn attention_ops_check_inputs_outputs_and_descriptors() {
    let dev = MockDevice::default();
    let (p, qb, out) = (pool(&dev), q(&dev), q(&dev));
    let mask = buf(&dev, DType::U8, SLOTS * L.tokens_per_slot());
    let row = AttnRow {
        q_row: 1,
        group: 1,
        pos: 9,
        page_start: 0,
        page_count: 2,
    };
    let page = AttnPage {
        slot: 2,
        base_pos: 0,
        len: 4,
    };
    let pages = [page, page];
    let gh = L.heads_per_group * L.gqa;
    let lse = f32s(&dev, 2 * gh);
    let s = 0.5;
    let decode =
        |r: &[AttnRow], pg: &[AttnPage], m: Option<&Buffer>, o: &Buffer, l: Option<&Buffer>| {
            dev.decode_attention(&L, &p, &qb, r, pg, m, s, o, l)
        };
    reaches(
        &dev,
        decode(&[row], &pages, Some(&mask), &out, Some(&lse)),
        "decode_attention",
    );
    let bad_slot = [AttnPage { slot: 3, ..page }];
    rejects(
        &dev,
        decode(&[], &bad_slot, None, &out, None),
        "slot 3 outside",
    );
    let long = [AttnPage { len: 5, ..page }];
    rejects(
        &dev,
        decode(&[], &long, None, &out, None),
        "len beyond page size",
    );
    let past = AttnRow {
        page_count: 3,
        ..row
    };
    rejects(&dev, decode(&[past], &pages, None, &out, None), "page list");
    let group = AttnRow { group: 2, ..row };
    rejects(
        &dev,
        decode(&[group], &pages, None, &out, None),
        "group 2 of 2 groups",
    );
    let small_mask = buf(&dev, DType::U8, 2 * L.tokens_per_slot());
    rejects(
        &dev,
        decode(&[row], &pages, Some(&small_mask), &out, None),
        "mask",
    );
    rejects(
        &dev,
        decode(&[row], &pages, Some(&qb), &out, None),
        "mask: expected a U8",
    );
    rejects(
        &dev,
        decode(&[row], &pages, None, &qb, None),
        "must not also be an input",
    );
    rejects(
        &dev,
        decode(&[row], &pages, None, &out, Some(&out)),
        "two outputs are the same",
    );
    let short_lse = f32s(&dev, gh);
    rejects(
        &dev,
        decode(&[row], &pages, None, &out, Some(&short_lse)),
        "page_lse",
    );
    let overlap = [
        row,
        AttnRow {
            q_row: 0,
            page_start: 1,
            page_count: 1,
            ..row
        },
    ];
    rejects(
        &dev,
        decode(&overlap, &pages, None, &out, Some(&lse)),
        "overlap",
    );
    reaches(
        &dev,
        decode(&overlap, &pages, None, &out, None),
        "decode_attention",
    );

    let state = dev.alloc_attn_state(ROWS, L.q_heads(), L.head_dim).unwrap();
    dev.take_calls(); // the state's reset
    let prefill = |m: Option<&Buffer>, st: &AttnState| {
        dev.prefill_attention(&L, &p, &qb, &[row], &pages, m, s, st)
    };
    reaches(&dev, prefill(Some(&mask), &state), "prefill_attention");
    let small = dev.alloc_attn_state(1, L.q_heads(), L.head_dim).unwrap();
    dev.take_calls();
    rejects(&dev, prefill(None, &small), "attention state for row 0");
    // A state buffer as the queries (an `AttnState` owns its buffers, so they are distinct).
    let acc_as_q = &state.acc;
    rejects(
        &dev,
        dev.prefill_attention(&L, &p, acc_as_q, &[], &[], None, s, &state),
        "prefill_attention: the output buffer must not also be an input",
    );

    reaches(
        &dev,
        dev.attention_finalize(&L, &state, &[row], &out),
        "attention_finalize",
    );
    rejects(
        &dev,
        dev.attention_finalize(&L, &state, &[row], &state.acc),
        "must not also be",
    );
    let one_row = f32s(&dev, L.q_heads() * L.head_dim);
    rejects(
        &dev,
        dev.attention_finalize(&L, &state, &[row], &one_row),
        ": acc",
    );
    rejects(
        &dev,
        dev.attention_finalize(&L, &small, &[row], &out),
        "acc: needs 64",
    );

    let w = f32s(&dev, 2 * L.tokens_per_slot());
    let weights = |wb: &Buffer| dev.attention_weights(&L, &p, &qb, &[row], &pages, None, s, wb);
    reaches(&dev, weights(&w), "attention_weights");
    let short = f32s(&dev, 2 * L.tokens_per_slot() - 1);
    rejects(&dev, weights(&short), "attention_weights: weights: range");
    rejects(&dev, weights(&qb), "must not also be an input");
}

#[test]
fn dense_ops_check_dtypes_sizes_and_aliasing() {
    let dev = MockDevice::default();
    let (x, w, out) = (f32s(&dev, 6), f32s(&dev, 12), f32s(&dev, 8));
    let dims = MatmulDims { m: 2, n: 4, k: 3 };
    reaches(&dev, dev.matmul(&dims, &x, &w, &out), "matmul");
    rejects(
        &dev,
        dev.matmul(&MatmulDims { m: 3, ..dims }, &x, &w, &out),
        "matmul: x [m, k]",
    );
    rejects(
        &dev,
        dev.matmul(&MatmulDims { n: 5, ..dims }, &x, &w, &out),
        "weights [n, k]",
    );
    rejects(
        &dev,
        dev.matmul(&dims, &x, &w, &w),
        "must not also be an input",
    );
    let huge = MatmulDims {
        m: usize::MAX,
        n: 1,
        k: 2,
    };
    rejects(&dev, dev.matmul(&huge, &x, &w, &out), "overflow");
    let u = buf(&dev, DType::U32, 12);
    rejects(
        &dev,
        dev.matmul(&dims, &x, &u, &out),
        "expected an f32, f16, bf16 or quantized",
    );
    let q4 = buf(&dev, DType::Quant(QuantType::Q4_0), 128);
    rejects(
        &dev,
        dev.matmul(&dims, &x, &q4, &out),
        "not whole Q4_0 blocks",
    );
    let (x32, out32) = (f32s(&dev, 64), f32s(&dev, 8));
    let qdims = MatmulDims { m: 2, n: 4, k: 32 };
    reaches(&dev, dev.matmul(&qdims, &x32, &q4, &out32), "matmul");
    let floats = MockDevice {
        float_only: true,
        ..MockDevice::default()
    };
    let err = floats.matmul(&qdims, &x32, &q4, &out32).unwrap_err();
    assert!(matches!(err, Error::UnsupportedWeight { .. }), "{err:?}");
    assert!(floats.take_calls().is_empty());

    let (norm_w, y) = (f32s(&dev, 3), f32s(&dev, 6));
    reaches(&dev, dev.rmsnorm(2, 3, 1e-5, &x, &norm_w, &y), "rmsnorm");
    rejects(&dev, dev.rmsnorm(2, 3, -1.0, &x, &norm_w, &y), "eps");
    rejects(
        &dev,
        dev.rmsnorm(2, 0, 1e-5, &x, &norm_w, &y),
        "rows of 0 values",
    );
    rejects(
        &dev,
        dev.rmsnorm(2, 4, 1e-5, &x, &w, &w),
        "must not also be an input",
    );
    rejects(
        &dev,
        dev.rmsnorm(3, 3, 1e-5, &x, &norm_w, &out),
        "rmsnorm: x [rows, dim]",
    );

    let inv = [1.0, 0.5];
    let rope = Rope {
        style: RopeStyle::default(),
        heads: 1,
        head_dim: 4,
        inv_freq: &inv,
        position_scale: 1.0,
    };
    reaches(&dev, dev.rope(&rope, &[0, 1], &out), "rope");
    rejects(&dev, dev.rope(&rope, &[0, 1, 2], &out), "rope: x");
    rejects(
        &dev,
        dev.rope(
            &Rope {
                head_dim: 3,
                ..rope
            },
            &[0],
            &out,
        ),
        "even",
    );
    rejects(
        &dev,
        dev.rope(
            &Rope {
                inv_freq: &inv[..1],
                ..rope
            },
            &[0],
            &out,
        ),
        "inverse",
    );
    rejects(&dev, dev.rope(&rope, &[0], &u), "rope: x: expected a F32");

    reaches(&dev, dev.silu_mul(6, &x, &y, &out), "silu_mul");
    rejects(&dev, dev.silu_mul(7, &x, &y, &out), "silu_mul: gate");
    rejects(
        &dev,
        dev.silu_mul(6, &x, &y, &y),
        "must not also be an input",
    );

    reaches(&dev, dev.add(6, &x, &y), "add");
    rejects(
        &dev,
        dev.add(6, &x, &x),
        "add: x and y must be different buffers",
    );
    rejects(&dev, dev.add(7, &x, &y), "add: x");
    reaches(&dev, dev.add_bias(2, 3, &x, &norm_w), "add_bias");
    reaches(&dev, dev.add_bias(0, 0, &x, &norm_w), "add_bias");
    rejects(
        &dev,
        dev.add_bias(2, 3, &x, &x),
        "x and bias must be different buffers",
    );
    rejects(&dev, dev.add_bias(2, 0, &x, &norm_w), "rows of 0 values");
    rejects(&dev, dev.add_bias(2, 4, &out, &norm_w), "bias [cols]");
    rejects(&dev, dev.add_bias(usize::MAX, 2, &x, &norm_w), "overflow");

    reaches(&dev, dev.embedding(3, &w, &[3, 0], &x), "embedding");
    rejects(
        &dev,
        dev.embedding(3, &w, &[4], &x),
        "token id 4 (position 0) outside a vocabulary of 4",
    );
    rejects(&dev, dev.embedding(0, &w, &[0], &x), "rows of 0 values");
    rejects(&dev, dev.embedding(3, &w, &[0, 1, 2], &x), "embedding: out");
    rejects(
        &dev,
        dev.embedding(3, &w, &[0], &w),
        "must not also be an input",
    );

    let idx = buf(&dev, DType::U32, 2);
    reaches(&dev, dev.argmax(2, 3, &x, &idx), "argmax");
    rejects(&dev, dev.argmax(2, 0, &x, &idx), "rows of 0 columns");
    rejects(&dev, dev.argmax(3, 3, &x, &idx), "argmax: logits");
    rejects(
        &dev,
        dev.argmax(2, 3, &x, &y),
        "argmax: out: expected a U32",
    );
}
