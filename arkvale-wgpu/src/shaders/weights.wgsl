// attention_weights: one invocation per token weight (page index in the list, KV head of the
// group, token); it walks every row, and for each row that reads the page and lets the token
// take part, adds the row's softmax probabilities summed over the query heads sharing the KV
// head (each row added once, in row order, so no two invocations write the same weight).
// `stats` holds (max, sum) per (row, head of its group) from attention.wgsl mode 2.
// prm: as attention.wgsl (mode ignored).
@group(0) @binding(1) var<storage, read> pool: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> weights: array<f32>;

const HDR: u32 = 13u;

fn kv(dt: u32, at: u32) -> f32 {
    return unpack_elem(pool[word_of(at, dt)], at, dt);
}

fn mask_byte(i: u32) -> u32 {
    return (mask[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let dt = prm[0];
    let hg = prm[1];
    let gqa = prm[2];
    let p = prm[3];
    let d = prm[4];
    let slot_elems = prm[5];
    let q_heads = prm[6];
    let scale = prm_f32(7u);
    let has_mask = prm[9];
    let n_rows = prm[10];
    let n_pages = prm[11];
    let pages0 = HDR + n_rows * 5u;
    let t = wg_index(wid, nwg) * 64u + lid;
    if (t >= n_pages * hg * p) {
        return;
    }
    let i = t % p;
    let h = (t / p) % hg;
    let pi = t / (p * hg);
    let slot = prm[pages0 + pi * 3u];
    let base = prm[pages0 + pi * 3u + 1u];
    let len = prm[pages0 + pi * 3u + 2u];
    var w = weights[t];
    if (i >= len || (has_mask != 0u && mask_byte(((slot + prm[12]) * hg + h) * p + i) == 0u)) {
        return;
    }
    let k0 = slot * slot_elems + (h * p + i) * d;
    let heads = hg * gqa;
    for (var r = 0u; r < n_rows; r = r + 1u) {
        let q_row = prm[HDR + r * 5u];
        let group = prm[HDR + r * 5u + 1u];
        let pos = prm[HDR + r * 5u + 2u];
        let ps = prm[HDR + r * 5u + 3u];
        let pc = prm[HDR + r * 5u + 4u];
        if (pi < ps || pi >= ps + pc || base + i > pos) {
            continue;
        }
        var contrib = 0.0;
        for (var jj = 0u; jj < gqa; jj = jj + 1u) {
            let j = h * gqa + jj;
            let q0 = (q_row * q_heads + group * heads + j) * d;
            var dot = 0.0;
            for (var e = 0u; e < d; e = e + 1u) {
                dot = dot + q[q0 + e] * kv(dt, k0 + e);
            }
            let st = (r * heads + j) * 2u;
            contrib = contrib + exp(dot * scale - stats[st]) / stats[st + 1u];
        }
        if (contrib != 0.0) {
            w = w + contrib;
        }
    }
    weights[t] = w;
}
