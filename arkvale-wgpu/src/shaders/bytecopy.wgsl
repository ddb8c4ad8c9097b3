// Byte-granular copy between word arrays: dst bytes [dst_byte, dst_byte + len) = src bytes
// [src_byte, src_byte + len). One invocation owns one destination word, so partial edge words
// are read-modify-written without races. prm: [src_byte, dst_byte, len, first_word, words].
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn src_byte(b: u32) -> u32 {
    return (src[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wg_index(wid, nwg) * 256u + lid;
    if (t >= prm[4]) {
        return;
    }
    let w = prm[3] + t;
    let sb = prm[0];
    let db = prm[1];
    let end = db + prm[2];
    var word = dst[w];
    for (var j = 0u; j < 4u; j = j + 1u) {
        let b = w * 4u + j;
        if (b >= db && b < end) {
            let v = src_byte(b - db + sb);
            word = (word & ~(0xffu << (j * 8u))) | (v << (j * 8u));
        }
    }
    dst[w] = word;
}
