// matmul_rows: `out[m, n] = x[m, k] · Wᵀ` with f32 activations and f32 / f16 / bf16 weights
// `W [n, k]`, widened exactly and accumulated in f32 — the decode-sized GEMM (few rows), where
// reading the weights once is all that matters. Each warp computes one output column `j` for
// up to `MM_ROWS` rows: lanes stride over `k` (coalesced reads of `W[j]`), keep one partial
// sum per row, and reduce across the warp at the end. Grid: (ceil(n / warps), ceil(m / MM_ROWS)).
// Larger `m` goes to cuBLAS SGEMM on the host side (half weights widened by `widen_*` first).

#define MM_ROWS 8

template <typename T>
__device__ __forceinline__ void matmul_rows_impl(const float* x, const void* w_, float* out,
                                                 u32 m, u32 n, u32 k) {
    const T* w = (const T*)w_;
    const u32 warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 j = blockIdx.x * warps + warp;
    if (j >= n) return;
    const u32 i0 = blockIdx.y * MM_ROWS;
    const u32 mi = min((u32)MM_ROWS, m - i0);
    const T* wr = w + (u64)j * k;
    float acc[MM_ROWS];
#pragma unroll
    for (int r = 0; r < MM_ROWS; ++r) acc[r] = 0.0f;
    for (u32 l = lane; l < k; l += 32) {
        const float wv = to_f32(wr[l]);
#pragma unroll
        for (int r = 0; r < MM_ROWS; ++r)
            if ((u32)r < mi) acc[r] += x[(u64)(i0 + r) * k + l] * wv;
    }
#pragma unroll
    for (int r = 0; r < MM_ROWS; ++r) {
        const float s = warp_sum(acc[r]);
        if (lane == 0 && (u32)r < mi) out[(u64)(i0 + r) * n + j] = s;
    }
}

extern "C" __global__ void matmul_rows_f32(const float* x, const void* w, float* out, u32 m,
                                           u32 n, u32 k) {
    matmul_rows_impl<float>(x, w, out, m, n, k);
}
extern "C" __global__ void matmul_rows_f16(const float* x, const void* w, float* out, u32 m,
                                           u32 n, u32 k) {
    matmul_rows_impl<f16_t>(x, w, out, m, n, k);
}
extern "C" __global__ void matmul_rows_bf16(const float* x, const void* w, float* out, u32 m,
                                            u32 n, u32 k) {
    matmul_rows_impl<bf16_t>(x, w, out, m, n, k);
}
