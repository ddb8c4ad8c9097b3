// topk: the rank of every score in its segment is the number of scores that come before it
// in the order of arkvale_core::digest::rank_cmp (higher first, NaN last, lower index first);
// ranks below k are written. One workgroup per (segment, chunk of 64 scores), host-built.
// prm: [n_groups, groups: (start, len, k, out_offset, first_index) ...].
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

fn is_nan(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7fffffffu) > 0x7f800000u;
}

// Whether (sa, a) ranks before (sb, b).
fn before(sa: f32, a: u32, sb: f32, b: u32) -> bool {
    let na = is_nan(sa);
    let nb = is_nan(sb);
    if (na != nb) {
        return nb;
    }
    if (!na && sa != sb) {
        return sa > sb;
    }
    return a < b;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if (g >= prm[0]) {
        return;
    }
    let start = prm[1u + g * 5u];
    let len = prm[2u + g * 5u];
    let k = prm[3u + g * 5u];
    let out0 = prm[4u + g * 5u];
    let i = prm[5u + g * 5u] + lid;
    if (i >= len) {
        return;
    }
    let si = scores[start + i];
    var rank = 0u;
    for (var j = 0u; j < len; j = j + 1u) {
        if (before(scores[start + j], j, si, i)) {
            rank = rank + 1u;
        }
    }
    if (rank < k) {
        out[out0 + rank] = i;
    }
}
