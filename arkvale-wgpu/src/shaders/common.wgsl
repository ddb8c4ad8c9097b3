// Shared by every kernel (prepended to each shader file).
//
// Binding 0 of every kernel is `prm`: a read-only u32 array holding the kernel's parameters
// followed by its descriptors (jobs, rows, pages), written by the host per dispatch. f32
// parameters travel as their bits. Workgroups are dispatched in two dimensions (x up to 65535)
// and linearised with `wg_index`.
//
// Storage types: KV pools, weights and embedding tables are bound as `array<u32>`; f16 and
// bf16 elements are unpacked from (and packed into) their 16-bit halves with integer bit
// operations, so f16/bf16 storage needs no SHADER_F16 and rounding is round-to-nearest-even,
// bit for bit what the `half` crate does on the host.

@group(0) @binding(0) var<storage, read> prm: array<u32>;

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

fn wg_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn prm_f32(i: u32) -> f32 {
    return bitcast<f32>(prm[i]);
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// f16 bits (low 16 bits of `h`) to f32, exact.
fn f16_to_f32(h: u32) -> f32 {
    let s = (h >> 15u) & 1u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    var r: f32;
    if (e == 0u) {
        r = f32(m) * 5.9604644775390625e-8;
    } else if (e == 31u) {
        r = bitcast<f32>(0x7f800000u | (m << 13u));
    } else {
        r = bitcast<f32>(((e + 112u) << 23u) | (m << 13u));
    }
    return bitcast<f32>(bitcast<u32>(r) | (s << 31u));
}

// f32 to f16 bits, round to nearest even (NaN stays a quiet NaN, as `half` does).
fn f32_to_f16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let s = (b >> 16u) & 0x8000u;
    let e = i32((b >> 23u) & 0xffu);
    let m = b & 0x7fffffu;
    if (e == 255) {
        if (m != 0u) {
            return s | 0x7e00u | (m >> 13u);
        }
        return s | 0x7c00u;
    }
    let he = e - 112;
    if (he >= 31) {
        return s | 0x7c00u;
    }
    if (he <= 0) {
        if (he < -10) {
            return s;
        }
        let mm = m | 0x800000u;
        let shift = u32(14 - he);
        var hm = mm >> shift;
        let rem = mm & ((1u << shift) - 1u);
        let half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (hm & 1u) == 1u)) {
            hm = hm + 1u;
        }
        return s | hm;
    }
    var hb = (u32(he) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (hb & 1u) == 1u)) {
        hb = hb + 1u;
    }
    return s | hb;
}

// f32 to bf16 bits, round to nearest even (NaN stays a quiet NaN, as `half` does).
fn f32_to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// Element `i` of a buffer of storage type `dt` from the word that holds it.
fn unpack_elem(word: u32, i: u32, dt: u32) -> f32 {
    if (dt == DT_F32) {
        return bitcast<f32>(word);
    }
    let h = (word >> ((i & 1u) * 16u)) & 0xffffu;
    if (dt == DT_F16) {
        return f16_to_f32(h);
    }
    return bitcast<f32>(h << 16u);
}

// The word index of element `i` of storage type `dt`.
fn word_of(i: u32, dt: u32) -> u32 {
    if (dt == DT_F32) {
        return i;
    }
    return i >> 1u;
}

// The 16-bit pattern (or 32-bit for f32) of `x` rounded to `dt`.
fn pack_elem(x: f32, dt: u32) -> u32 {
    if (dt == DT_F32) {
        return bitcast<u32>(x);
    }
    if (dt == DT_F16) {
        return f32_to_f16(x);
    }
    return f32_to_bf16(x);
}
