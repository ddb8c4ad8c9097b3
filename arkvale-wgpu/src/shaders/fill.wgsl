// fill_f32: buf[offset + i] = value for i < len. prm: [offset, len, value bits].
@group(0) @binding(1) var<storage, read_write> buf: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if (i < prm[1]) {
        buf[prm[0] + i] = prm_f32(2u);
    }
}
