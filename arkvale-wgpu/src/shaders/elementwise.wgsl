// Elementwise dense ops, one invocation per element.
// silu_mul: prm [len]; a = gate, b = up, c = out.   out = gate / (1 + exp(-gate)) * up
// add:      prm [len]; c[i] += a[i]  (a = y, c = x)
// add_bias: prm [len, cols]; c[i] += a[i % cols]  (a = bias, c = x)
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256)
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if (i < prm[0]) {
        let g = a[i];
        c[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if (i < prm[0]) {
        c[i] = c[i] + a[i];
    }
}

@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if (i < prm[0]) {
        c[i] = c[i] + a[i % prm[1]];
    }
}
