// Shared by every kernel source of arkvale-cuda: the storage types, their conversions, and
// warp helpers. NVRTC compiles each `.cu` file with this text prepended (no include paths,
// no CUDA headers: the half-precision conversions are single PTX instructions written here).
//
// Storage types are raw 16-bit patterns; arithmetic is always f32. Conversions round to
// nearest even, as the `half` crate (and so the CPU backend and the reference) does.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

struct f16_t { u16 bits; };
struct bf16_t { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16_t x) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_f32(bf16_t x) {
    return __uint_as_float(((u32)x.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float x) {
    f16_t r;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(r.bits) : "f"(x));
    return r;
}
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) {
    bf16_t r;
    asm("{ cvt.rn.bf16.f32 %0, %1; }" : "=h"(r.bits) : "f"(x));
    return r;
}

#define NEG_INF __int_as_float(0xff800000)
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, o));
    return x;
}

// Instantiates the device function template `NAME##_impl<T>` (whose KV-pool parameter is an
// untyped pointer) as three `extern "C"` kernels `NAME_f32`, `NAME_f16` and `NAME_bf16` with
// the parameter list `PARAMS` and the call arguments `ARGS`.
#define INSTANTIATE_KV(NAME, PARAMS, ARGS)                                                    \
    extern "C" __global__ void NAME##_f32 PARAMS { NAME##_impl<float> ARGS; }                 \
    extern "C" __global__ void NAME##_f16 PARAMS { NAME##_impl<f16_t> ARGS; }                 \
    extern "C" __global__ void NAME##_bf16 PARAMS { NAME##_impl<bf16_t> ARGS; }
