// The model's element-wise and row-wise dense ops: fill, RMSNorm, RoPE, SiLU-gating, residual
// add, bias add, embedding gather, argmax, and the widening of half-precision weights to f32
// (for cuBLAS SGEMM). RMSNorm, RoPE and SiLU compute in f64 like the reference
// (`arkvale_core::reference::dense`) and round once; add, bias add and embedding are exact.

extern "C" __global__ void fill_f32(float* buf, u64 n, float value) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        buf[i] = value;
}

// One block per row; `blockDim.x` a multiple of 32, at most 1024.
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, u32 rows,
                                   u32 dim, float eps) {
    __shared__ double red[32];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (u64)r * dim;
    double s = 0.0;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += (double)xr[i] * (double)xr[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
    __syncthreads();
    double total = 0.0;
    for (u32 k = 0; k < blockDim.x / 32; ++k) total += red[k];
    const double inv = 1.0 / sqrt(total / (double)dim + (double)eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x)
        out[(u64)r * dim + i] = (float)((double)xr[i] * inv * (double)w[i]);
}

// One thread per (token, head, pair). style 0: NeoX (i, i + d/2); 1: interleaved (2i, 2i+1).
extern "C" __global__ void rope(float* x, const u32* positions, const float* inv_freq,
                                u32 tokens, u32 heads, u32 d, u32 style, float position_scale) {
    const u32 half = d / 2;
    const u64 n = (u64)tokens * heads * half;
    for (u64 idx = blockIdx.x * (u64)blockDim.x + threadIdx.x; idx < n;
         idx += (u64)gridDim.x * blockDim.x) {
        const u32 i = idx % half;
        const u64 th = idx / half;
        const u32 t = th / heads;
        const double a = (double)positions[t] * (double)position_scale * (double)inv_freq[i];
        double sn, cs;
        sincos(a, &sn, &cs);
        const u32 i0 = style == 0 ? i : 2 * i, i1 = style == 0 ? i + half : 2 * i + 1;
        float* hd = x + th * d;
        const double x0 = hd[i0], x1 = hd[i1];
        hd[i0] = (float)(x0 * cs - x1 * sn);
        hd[i1] = (float)(x0 * sn + x1 * cs);
    }
}

extern "C" __global__ void silu_mul(const float* gate, const float* up, float* out, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * (double)up[i]);
    }
}

extern "C" __global__ void add_inplace(float* x, const float* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = x[i] + y[i];
}

extern "C" __global__ void add_bias(float* x, const float* bias, u64 rows, u32 cols) {
    const u64 n = rows * cols;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = x[i] + bias[i % cols];
}

template <typename T>
__device__ __forceinline__ void embedding_impl(const void* table_, const u32* ids, u32 n_ids,
                                               u32 dim, float* out) {
    const T* table = (const T*)table_;
    const u64 n = (u64)n_ids * dim;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 t = i / dim, c = i % dim;
        out[i] = to_f32(table[(u64)ids[t] * dim + c]);
    }
}
INSTANTIATE_KV(embedding, (const void* table, const u32* ids, u32 n_ids, u32 dim, float* out),
               (table, ids, n_ids, dim, out))

template <typename T>
__device__ __forceinline__ void widen_impl(const void* src_, float* dst, u64 n) {
    const T* src = (const T*)src_;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = to_f32(src[i]);
}
INSTANTIATE_KV(widen, (const void* src, float* dst, u64 n), (src, dst, n))

// Whether candidate (va, ia) beats (vb, ib): NaN never wins, larger wins, ties to the lower
// index; an index of 0xffffffff means "no candidate".
__device__ __forceinline__ bool argmax_beats(float va, u32 ia, float vb, u32 ib) {
    if (ia == 0xffffffffu) return false;
    if (ib == 0xffffffffu) return true;
    return va > vb || (va == vb && ia < ib);
}

// One block per row (`blockDim.x` a multiple of 32). A row of NaN only gives 0.
extern "C" __global__ void argmax(const float* logits, u32* out, u32 rows, u32 cols) {
    __shared__ float sv[32];
    __shared__ u32 si[32];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (u64)r * cols;
    float bv = 0.0f;
    u32 bi = 0xffffffffu;
    for (u32 j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = row[j];
        if (!isnan(v) && argmax_beats(v, j, bv, bi)) {
            bv = v;
            bi = j;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
        const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (argmax_beats(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (threadIdx.x % 32 == 0) {
        sv[threadIdx.x / 32] = bv;
        si[threadIdx.x / 32] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < blockDim.x / 32; ++w) {
            if (argmax_beats(sv[w], si[w], bv, bi)) {
                bv = sv[w];
                bi = si[w];
            }
        }
        out[r] = bi == 0xffffffffu ? 0u : bi;
    }
}
