// Row-wise dense ops, one workgroup of 64 invocations per row.
// rmsnorm: prm [rows, dim, eps bits]; x, weight, out.
// argmax:  prm [rows, cols]; x = logits, out = u32 indices (as bits).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

var<workgroup> red: array<f32, 64>;
var<workgroup> ridx: array<u32, 64>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = wg_index(wid, nwg);
    if (r >= prm[0]) {
        return;
    }
    let dim = prm[1];
    let x0 = r * dim;
    var s = 0.0;
    for (var i = lid; i < dim; i = i + 64u) {
        let v = x[x0 + i];
        s = s + v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h = h >> 1u) {
        if (lid < h) {
            red[lid] = red[lid] + red[lid + h];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(red[0] / f32(dim) + prm_f32(2u));
    for (var i = lid; i < dim; i = i + 64u) {
        out[x0 + i] = bitcast<u32>(x[x0 + i] * inv * wt[i]);
    }
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Whether candidate (v, i) beats (bv, bi); `NONE` marks "no number seen yet".
const NONE: u32 = 0xffffffffu;
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if (i == NONE) {
        return false;
    }
    if (bi == NONE) {
        return true;
    }
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(64)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let r = wg_index(wid, nwg);
    if (r >= prm[0]) {
        return;
    }
    let cols = prm[1];
    let x0 = r * cols;
    var bv = 0.0;
    var bi = NONE;
    for (var i = lid; i < cols; i = i + 64u) {
        let v = x[x0 + i];
        if (!is_nan(v) && better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    red[lid] = bv;
    ridx[lid] = bi;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h = h >> 1u) {
        if (lid < h && better(red[lid + h], ridx[lid + h], red[lid], ridx[lid])) {
            red[lid] = red[lid + h];
            ridx[lid] = ridx[lid + h];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var best = ridx[0];
        if (best == NONE) {
            best = 0u;
        }
        out[r] = best;
    }
}
