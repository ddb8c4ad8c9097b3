// out[i, j] = sum_l x[i, l] * w[j, l] for rows i < m of a row chunk and columns j in
// [n0, n0 + n_chunk) of a weight chunk (W rows bound from element `w_base`).
// prm: [m, n, k, n0, n_chunk, w_base, w_dtype, x_base, out_base].
// `gemv` (small m): one invocation per output, no workgroup memory or barriers (barriers are
// expensive on CPU implementations such as lavapipe), four partial sums. `tiled`: 64 x 64 output tiles, 16 x 16 invocations of 4 x 4 outputs each, x and W
// staged through workgroup memory 16 columns of k at a time.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn weight(dt: u32, at: u32) -> f32 {
    return unpack_elem(w[word_of(at, dt)], at, dt);
}

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let m = prm[0];
    let n = prm[1];
    let k = prm[2];
    let n0 = prm[3];
    let nc = prm[4];
    let dt = prm[6];
    let per_row = (nc + 63u) / 64u;
    let g = wg_index(wid, nwg);
    let i = g / per_row;
    let jl = (g % per_row) * 64u + lid;
    if (i >= m || jl >= nc) {
        return;
    }
    let wrow = prm[5] + jl * k;
    let xrow = prm[7] + i * k;
    // Four partial sums break the dependency chain of one long accumulation.
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var l = 0u;
    if (dt == DT_F32) {
        for (; l + 4u <= k; l = l + 4u) {
            a0 = a0 + x[xrow + l] * bitcast<f32>(w[wrow + l]);
            a1 = a1 + x[xrow + l + 1u] * bitcast<f32>(w[wrow + l + 1u]);
            a2 = a2 + x[xrow + l + 2u] * bitcast<f32>(w[wrow + l + 2u]);
            a3 = a3 + x[xrow + l + 3u] * bitcast<f32>(w[wrow + l + 3u]);
        }
    } else if ((wrow & 1u) == 0u) {
        // Two half elements per word.
        for (; l + 4u <= k; l = l + 4u) {
            let w0 = w[(wrow + l) >> 1u];
            let w1 = w[(wrow + l + 2u) >> 1u];
            a0 = a0 + x[xrow + l] * unpack_elem(w0, 0u, dt);
            a1 = a1 + x[xrow + l + 1u] * unpack_elem(w0, 1u, dt);
            a2 = a2 + x[xrow + l + 2u] * unpack_elem(w1, 0u, dt);
            a3 = a3 + x[xrow + l + 3u] * unpack_elem(w1, 1u, dt);
        }
    }
    for (; l < k; l = l + 1u) {
        a0 = a0 + x[xrow + l] * weight(dt, wrow + l);
    }
    out[prm[8] + i * n + n0 + jl] = (a0 + a1) + (a2 + a3);
}

var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let m = prm[0];
    let n = prm[1];
    let k = prm[2];
    let n0 = prm[3];
    let nc = prm[4];
    let dt = prm[6];
    let i0 = wid.y * 64u;
    let j0 = wid.x * 64u;
    let ty = lid3.y;
    let tx = lid3.x;
    var acc: array<f32, 16>;
    for (var c = 0u; c < 16u; c = c + 1u) {
        acc[c] = 0.0;
    }
    for (var l0 = 0u; l0 < k; l0 = l0 + 16u) {
        // 256 invocations load 64 x 16 values of x and of W each: 4 per invocation.
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = lid + e * 256u;
            let rr = idx / 16u;
            let ll = idx % 16u;
            var xv = 0.0;
            if (i0 + rr < m && l0 + ll < k) {
                xv = x[prm[7] + (i0 + rr) * k + l0 + ll];
            }
            xs[rr * 16u + ll] = xv;
            var wv = 0.0;
            if (j0 + rr < nc && l0 + ll < k) {
                wv = weight(dt, prm[5] + (j0 + rr) * k + l0 + ll);
            }
            ws[rr * 16u + ll] = wv;
        }
        workgroupBarrier();
        for (var ll = 0u; ll < 16u; ll = ll + 1u) {
            var xr: array<f32, 4>;
            var wr: array<f32, 4>;
            for (var a = 0u; a < 4u; a = a + 1u) {
                xr[a] = xs[(ty * 4u + a) * 16u + ll];
                wr[a] = ws[(tx * 4u + a) * 16u + ll];
            }
            for (var a = 0u; a < 4u; a = a + 1u) {
                for (var b = 0u; b < 4u; b = b + 1u) {
                    acc[a * 4u + b] = acc[a * 4u + b] + xr[a] * wr[b];
                }
            }
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a = a + 1u) {
        for (var b = 0u; b < 4u; b = b + 1u) {
            let i = i0 + ty * 4u + a;
            let j = j0 + tx * 4u + b;
            if (i < m && j < nc) {
                out[prm[8] + i * n + n0 + j] = acc[a * 4u + b];
            }
        }
    }
}
