// estimate: one invocation per job; each query head of the group scored against its KV head's
// digest (arkvale_core::digest::score), combined by mean (agg 0) or max (agg 1).
// prm: [hg, gqa, d, kind, agg, q_heads, n_jobs, jobs: (q_row, group, digest) ...].
@group(0) @binding(1) var<storage, read> digests: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;

const HDR: u32 = 7u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let hg = prm[0];
    let gqa = prm[1];
    let d = prm[2];
    let kind = prm[3];
    let t = wg_index(wid, nwg) * 64u + lid;
    if (t >= prm[6]) {
        return;
    }
    let q_row = prm[HDR + t * 3u];
    let group = prm[HDR + t * 3u + 1u];
    let dig = prm[HDR + t * 3u + 2u];
    var dl = d;
    if (kind <= 2u) {
        dl = 2u * d;
    } else if (kind <= 5u) {
        dl = d + 1u;
    }
    var sum = 0.0;
    var mx = neg_inf();
    for (var j = 0u; j < hg * gqa; j = j + 1u) {
        let head = group * hg * gqa + j;
        let q0 = (q_row * prm[5] + head) * d;
        let at = (dig * hg + j / gqa) * dl;
        var s = 0.0;
        if (kind <= 2u) {
            for (var i = 0u; i < d; i = i + 1u) {
                let qi = q[q0 + i];
                s = s + max(qi * digests[at + i], qi * digests[at + d + i]);
            }
        } else if (kind <= 5u) {
            var dot = 0.0;
            var nrm = 0.0;
            for (var i = 0u; i < d; i = i + 1u) {
                let qi = q[q0 + i];
                dot = dot + qi * digests[at + i];
                nrm = nrm + qi * qi;
            }
            s = dot + digests[at + d] * sqrt(nrm);
        } else {
            for (var i = 0u; i < d; i = i + 1u) {
                s = s + q[q0 + i] * digests[at + i];
            }
        }
        sum = sum + s;
        mx = max(mx, s);
    }
    if (prm[4] == 0u) {
        scores[t] = sum / f32(hg * gqa);
    } else {
        scores[t] = mx;
    }
}
