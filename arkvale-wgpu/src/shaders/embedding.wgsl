// embedding: rows were copied word-aligned into `rows` (one row of `row_words` words per
// token, the row starting at element `phase` of its first word); widen them to f32.
// prm: [tokens, dim, dtype, row_words, phases ...].
@group(0) @binding(1) var<storage, read> rows: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let dim = prm[1];
    let dt = prm[2];
    let t = wg_index(wid, nwg) * 256u + lid;
    if (t >= prm[0] * dim) {
        return;
    }
    let tok = t / dim;
    let e = t % dim + prm[4u + tok];
    let at = tok * prm[3] * 2u + e;
    out[t] = unpack_elem(rows[tok * prm[3] + (e >> 1u)], at, dt);
}
