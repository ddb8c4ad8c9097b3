// rope, in place: one invocation per (token, head, pair); the per-token cos/sin table is
// computed on the host in f64 (the angle's definition) and rounded to f32.
// prm: [tokens, heads, head_dim, neox (1) or interleaved (0)]; cs: [tokens][d/2][cos, sin].
@group(0) @binding(1) var<storage, read> cs: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let heads = prm[1];
    let d = prm[2];
    let half = d / 2u;
    let t = wg_index(wid, nwg) * 256u + lid;
    if (t >= prm[0] * heads * half) {
        return;
    }
    let i = t % half;
    let tok = t / (half * heads);
    let base = (t / half) * d;
    var i0 = 2u * i;
    var i1 = 2u * i + 1u;
    if (prm[3] == 1u) {
        i0 = i;
        i1 = i + half;
    }
    let c = cs[(tok * half + i) * 2u];
    let s = cs[(tok * half + i) * 2u + 1u];
    let x0 = x[base + i0];
    let x1 = x[base + i1];
    x[base + i0] = x0 * c - x1 * s;
    x[base + i1] = x0 * s + x1 * c;
}
