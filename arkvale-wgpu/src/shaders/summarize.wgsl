// summarize: digests of page keys, the order of arkvale_core::digest::summarize.
// prm: [dt, hg, p, d, kind, slot_elems, n_jobs, jobs: (slot, digest, len) ...].
// Kinds: 0 cuboid-max, 1 cuboid-center, 2 cuboid-mean, 3 sphere-max, 4 sphere-center,
// 5 sphere-mean, 6 centroid. `per_dim`: one invocation per (job, head, dimension) for the
// cuboid kinds and centroid; `sphere`: one invocation per (job, head).
@group(0) @binding(1) var<storage, read> pool: array<u32>;
@group(0) @binding(2) var<storage, read_write> digests: array<f32>;

const HDR: u32 = 7u;

fn key(dt: u32, at: u32) -> f32 {
    return unpack_elem(pool[word_of(at, dt)], at, dt);
}

fn digest_len(kind: u32, d: u32) -> u32 {
    if (kind <= 2u) {
        return 2u * d;
    }
    if (kind <= 5u) {
        return d + 1u;
    }
    return d;
}

// The centre (max + min) / 2 of dimension i over the first n keys starting at element `k0`.
fn centre(dt: u32, k0: u32, n: u32, d: u32, i: u32) -> f32 {
    var lo = bitcast<f32>(0x7f800000u);
    var hi = neg_inf();
    for (var r = 0u; r < n; r = r + 1u) {
        let x = key(dt, k0 + r * d + i);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    return (hi + lo) / 2.0;
}

@compute @workgroup_size(64)
fn per_dim(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let dt = prm[0];
    let hg = prm[1];
    let p = prm[2];
    let d = prm[3];
    let kind = prm[4];
    let t = wg_index(wid, nwg) * 64u + lid;
    if (t >= prm[6] * hg * d) {
        return;
    }
    let i = t % d;
    let h = (t / d) % hg;
    let j = t / (d * hg);
    let slot = prm[HDR + j * 3u];
    let dig = prm[HDR + j * 3u + 1u];
    let n = prm[HDR + j * 3u + 2u];
    let k0 = slot * prm[5] + h * p * d;
    let out = (dig * hg + h) * digest_len(kind, d);
    if (kind == 6u) {
        var s = 0.0;
        for (var r = 0u; r < n; r = r + 1u) {
            s = s + key(dt, k0 + r * d + i);
        }
        digests[out + i] = s / f32(n);
        return;
    }
    let c = centre(dt, k0, n, d, i);
    var lo = bitcast<f32>(0x7f800000u);
    var hi = 0.0;
    var sum = 0.0;
    for (var r = 0u; r < n; r = r + 1u) {
        let a = abs(c - key(dt, k0 + r * d + i));
        lo = min(lo, a);
        hi = max(hi, a);
        sum = sum + a;
    }
    var rad: f32;
    if (kind == 0u) {
        rad = hi;
    } else if (kind == 1u) {
        rad = (lo + hi) / 2.0;
    } else {
        rad = sum / f32(n);
    }
    digests[out + i] = c + rad;
    digests[out + d + i] = c - rad;
}

@compute @workgroup_size(64)
fn sphere(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let dt = prm[0];
    let hg = prm[1];
    let p = prm[2];
    let d = prm[3];
    let kind = prm[4];
    let t = wg_index(wid, nwg) * 64u + lid;
    if (t >= prm[6] * hg) {
        return;
    }
    let h = t % hg;
    let j = t / hg;
    let slot = prm[HDR + j * 3u];
    let dig = prm[HDR + j * 3u + 1u];
    let n = prm[HDR + j * 3u + 2u];
    let k0 = slot * prm[5] + h * p * d;
    let out = (dig * hg + h) * digest_len(kind, d);
    for (var i = 0u; i < d; i = i + 1u) {
        digests[out + i] = centre(dt, k0, n, d, i);
    }
    var lo = bitcast<f32>(0x7f800000u);
    var hi = 0.0;
    var sum = 0.0;
    for (var r = 0u; r < n; r = r + 1u) {
        var acc = 0.0;
        for (var i = 0u; i < d; i = i + 1u) {
            let diff = digests[out + i] - key(dt, k0 + r * d + i);
            acc = acc + diff * diff;
        }
        let dist = sqrt(acc);
        lo = min(lo, dist);
        hi = max(hi, dist);
        sum = sum + dist;
    }
    var rad: f32;
    if (kind == 3u) {
        rad = hi;
    } else if (kind == 4u) {
        rad = (lo + hi) / 2.0;
    } else {
        rad = sum / f32(n);
    }
    digests[out + d] = rad;
}
