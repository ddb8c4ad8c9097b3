// Paged attention, one workgroup of 64 invocations per (row, query head of the row's group).
// The query is staged in workgroup memory; the row's pages are walked in tiles of 64 tokens:
// each invocation scores one token of the tile (q . k over the head dimension), the tile's
// scores go through workgroup memory, and every invocation folds the tile into the running
// online-softmax state (max, sum) and its own output dimensions (dim = lid + 64 c, c < 4).
//
// mode 0 (decode): start empty, write acc / sum (zeros when no token took part) to `out`.
// mode 1 (prefill): start from and write back the flash state (acc, max, sum).
// mode 2 (stats): start empty, write (max, sum) of the workgroup to `out[2 wg ..]`.
// mode 3 (partial, flash-decoding): start empty, write (max, sum, acc[d]) of the workgroup to
//        `out[wg (d + 2) ..]`; `combine.wgsl` merges the partials of one row's page chunks.
// Bit 4 of the mode word (modes 0 and 3): also write each page's log-sum-exp of the scaled
// scores, `ln sum exp(s)` over its participating tokens (-inf when none), to
// `st_max[page index * hg * gqa + j]` (the page log-sum-exps of `Device::decode_attention`).
//
// prm: [dt, hg, gqa, p, d, slot_elems, q_heads, scale bits, mode, has_mask, n_rows,
//        n_pages, slot_base (added to slots for the mask), rows: (q_row, group, pos, page_start, page_count) ..., pages: (slot,
//        base_pos, len) ...].
@group(0) @binding(1) var<storage, read> pool: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> st_max: array<f32>;
@group(0) @binding(6) var<storage, read_write> st_sum: array<f32>;

const HDR: u32 = 13u;
const TILE: u32 = 64u;
const MAX_D: u32 = 256u;

var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 64>;

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
    let mode = prm[8] & 15u;
    let want_lse = (prm[8] & 16u) != 0u;
    let has_mask = prm[9];
    let n_rows = prm[10];
    let pages0 = HDR + n_rows * 5u;
    let wg = wg_index(wid, nwg);
    let heads = hg * gqa;
    if (wg >= n_rows * heads) {
        return;
    }
    let r = wg / heads;
    let j = wg % heads;
    let q_row = prm[HDR + r * 5u];
    let group = prm[HDR + r * 5u + 1u];
    let pos = prm[HDR + r * 5u + 2u];
    let page_start = prm[HDR + r * 5u + 3u];
    let page_count = prm[HDR + r * 5u + 4u];
    let head = group * heads + j;
    let h = j / gqa;
    let q0 = (q_row * q_heads + head) * d;
    for (var i = lid; i < d; i = i + TILE) {
        qs[i] = q[q0 + i];
    }
    var m = neg_inf();
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    let sidx = q_row * q_heads + head;
    if (mode == 1u) {
        m = st_max[sidx];
        l = st_sum[sidx];
        for (var c = 0u; c < 4u; c = c + 1u) {
            let dim = lid + c * TILE;
            if (dim < d) {
                acc[c] = out[q0 + dim];
            }
        }
    }
    workgroupBarrier();
    for (var pi = page_start; pi < page_start + page_count; pi = pi + 1u) {
        let slot = prm[pages0 + pi * 3u];
        let base = prm[pages0 + pi * 3u + 1u];
        let len = prm[pages0 + pi * 3u + 2u];
        let k0 = slot * slot_elems + h * p * d;
        let v0 = k0 + hg * p * d;
        var plse = neg_inf();
        for (var t0 = 0u; t0 < p; t0 = t0 + TILE) {
            let i = t0 + lid;
            var s = neg_inf();
            var take = i < len && i < p && base + i <= pos;
            if (take && has_mask != 0u) {
                take = mask_byte(((slot + prm[12]) * hg + h) * p + i) != 0u;
            }
            if (take) {
                var dot = 0.0;
                for (var e = 0u; e < d; e = e + 1u) {
                    dot = dot + qs[e] * kv(dt, k0 + i * d + e);
                }
                s = dot * scale;
            }
            sc[lid] = s;
            workgroupBarrier();
            var tm = neg_inf();
            let n = min(TILE, p - t0);
            for (var u = 0u; u < n; u = u + 1u) {
                tm = max(tm, sc[u]);
            }
            if (tm > -3.0e38) {
                var m_new = tm;
                var alpha = 0.0;
                if (m > -3.0e38) {
                    m_new = max(m, tm);
                    alpha = exp(m - m_new);
                }
                l = l * alpha;
                for (var c = 0u; c < 4u; c = c + 1u) {
                    acc[c] = acc[c] * alpha;
                }
                var tile_l = 0.0;
                for (var u = 0u; u < n; u = u + 1u) {
                    let su = sc[u];
                    if (su > -3.0e38) {
                        let w = exp(su - m_new);
                        l = l + w;
                        tile_l = tile_l + w;
                        for (var c = 0u; c < 4u; c = c + 1u) {
                            let dim = lid + c * TILE;
                            if (dim < d) {
                                acc[c] = acc[c] + w * kv(dt, v0 + (t0 + u) * d + dim);
                            }
                        }
                    }
                }
                m = m_new;
                if (want_lse && tile_l > 0.0) {
                    let tl = m_new + log(tile_l);
                    if (plse > -3.0e38) {
                        let hi = max(plse, tl);
                        plse = hi + log(exp(plse - hi) + exp(tl - hi));
                    } else {
                        plse = tl;
                    }
                }
            }
            workgroupBarrier();
        }
        if (want_lse && lid == 0u) {
            st_max[pi * heads + j] = plse;
        }
    }
    if (mode == 3u) {
        let o = wg * (d + 2u);
        if (lid == 0u) {
            out[o] = m;
            out[o + 1u] = l;
        }
        for (var c = 0u; c < 4u; c = c + 1u) {
            let dim = lid + c * TILE;
            if (dim < d) {
                out[o + 2u + dim] = acc[c];
            }
        }
        return;
    }
    if (mode == 2u) {
        if (lid == 0u) {
            out[2u * wg] = m;
            out[2u * wg + 1u] = l;
        }
        return;
    }
    if (mode == 1u) {
        if (lid == 0u) {
            st_max[sidx] = m;
            st_sum[sidx] = l;
        }
        for (var c = 0u; c < 4u; c = c + 1u) {
            let dim = lid + c * TILE;
            if (dim < d) {
                out[q0 + dim] = acc[c];
            }
        }
        return;
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        let dim = lid + c * TILE;
        if (dim < d) {
            var o = 0.0;
            if (l > 0.0) {
                o = acc[c] / l;
            }
            out[q0 + dim] = o;
        }
    }
}
