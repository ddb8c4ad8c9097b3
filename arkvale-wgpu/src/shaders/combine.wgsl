// Flash-decoding combine: one invocation per (row, query head of its group, dimension) merges
// the row's page-chunk partials (max, sum, acc) from attention.wgsl mode 3 into the output:
// M = max m_c, L = sum l_c e^(m_c - M), out = sum acc_c e^(m_c - M) / L (zeros when L = 0).
// meta: [hg, gqa, d, q_heads, n_rows, rows: (q_row, group, first_part, n_parts) ...], where the
// partial of chunk c and head j is at index (first_part + c) * heads + j.
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let hg = prm[0];
    let gqa = prm[1];
    let d = prm[2];
    let q_heads = prm[3];
    let heads = hg * gqa;
    let t = wg_index(wid, nwg) * 256u + lid;
    if (t >= prm[4] * heads * d) {
        return;
    }
    let e = t % d;
    let j = (t / d) % heads;
    let r = t / (d * heads);
    let q_row = prm[5u + r * 4u];
    let group = prm[6u + r * 4u];
    let first = prm[7u + r * 4u];
    let n = prm[8u + r * 4u];
    var mx = neg_inf();
    for (var c = 0u; c < n; c = c + 1u) {
        mx = max(mx, parts[((first + c) * heads + j) * (d + 2u)]);
    }
    var l = 0.0;
    var a = 0.0;
    if (mx > -3.0e38) {
        for (var c = 0u; c < n; c = c + 1u) {
            let o = ((first + c) * heads + j) * (d + 2u);
            let mc = parts[o];
            if (mc > -3.0e38) {
                let w = exp(mc - mx);
                l = l + parts[o + 1u] * w;
                a = a + parts[o + 2u + e] * w;
            }
        }
    }
    var res = 0.0;
    if (l > 0.0) {
        res = a / l;
    }
    out[(q_row * q_heads + group * heads + j) * d + e] = res;
}
