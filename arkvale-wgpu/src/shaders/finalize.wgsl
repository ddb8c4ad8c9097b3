// attention_finalize: out = acc / sum per (row, head of its group, dimension); zeros where
// sum == 0. prm: [hg, gqa, d, q_heads, n_rows, rows: (q_row, group) ...].
@group(0) @binding(1) var<storage, read> acc: array<f32>;
@group(0) @binding(2) var<storage, read> sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let hg = prm[0];
    let gqa = prm[1];
    let d = prm[2];
    let q_heads = prm[3];
    let t = wg_index(wid, nwg) * 256u + lid;
    let heads = hg * gqa;
    if (t >= prm[4] * heads * d) {
        return;
    }
    let e = t % d;
    let j = (t / d) % heads;
    let r = t / (d * heads);
    let q_row = prm[5u + r * 2u];
    let group = prm[6u + r * 2u];
    let hi = q_row * q_heads + group * heads + j;
    let s = sums[hi];
    var o = 0.0;
    if (s != 0.0) {
        o = acc[hi * d + e] / s;
    }
    out[hi * d + e] = o;
}
