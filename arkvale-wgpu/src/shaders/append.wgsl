// append_kv: one invocation per (dest, KV head of the group, element, K or V).
// prm: [dt, hg, p, d, kv_heads, slot_elems, n_dests, dests: (token, group, slot, pos) ...].
@group(0) @binding(1) var<storage, read_write> pool: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> k_in: array<f32>;
@group(0) @binding(3) var<storage, read> v_in: array<f32>;

const HDR: u32 = 7u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let dt = prm[0];
    let hg = prm[1];
    let p = prm[2];
    let d = prm[3];
    let kv_heads = prm[4];
    let slot_elems = prm[5];
    let n = prm[6];
    let t = wg_index(wid, nwg) * 256u + lid;
    if (t >= n * hg * d * 2u) {
        return;
    }
    let i = t % d;
    let h = (t / d) % hg;
    let which = (t / (d * hg)) % 2u;
    let di = t / (d * hg * 2u);
    let token = prm[HDR + di * 4u];
    let group = prm[HDR + di * 4u + 1u];
    let slot = prm[HDR + di * 4u + 2u];
    let pos = prm[HDR + di * 4u + 3u];
    let src = (token * kv_heads + group * hg + h) * d + i;
    var x: f32;
    if (which == 0u) {
        x = k_in[src];
    } else {
        x = v_in[src];
    }
    let at = slot * slot_elems + which * hg * p * d + (h * p + pos) * d + i;
    let bits = pack_elem(x, dt);
    if (dt == DT_F32) {
        atomicStore(&pool[at], bits);
    } else {
        let shift = (at & 1u) * 16u;
        atomicAnd(&pool[at >> 1u], ~(0xffffu << shift));
        atomicOr(&pool[at >> 1u], bits << shift);
    }
}
