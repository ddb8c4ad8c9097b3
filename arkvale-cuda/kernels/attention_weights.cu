// attention_weights (H2O / TOVA only; correctness over speed): adds each row's softmax
// probabilities, summed over the query heads that share a KV head, to the token weights
// `weights[page index][h][i]` (f32, `[pages.len()][hg][p]`).
//
// Grid: one block per (row, KV head `h` of its group). For each query head of `h`, the block
// computes the softmax's max and sum over the row's participating tokens (block reductions),
// then every thread adds, for its tokens, the probabilities summed over those query heads with
// `atomicAdd` (several rows may share a page). Dynamic shared memory: `2 * gqa` floats.
// Dot products are f32; the reference sums in f64 (the suite's tolerance covers it).

#define W_THREADS 128

template <typename T>
__device__ __forceinline__ float w_logit(const T* pool, u64 koff, const float* qv, u32 d,
                                         float scale) {
    float dot = 0.0f;
    for (u32 x = 0; x < d; ++x) dot += qv[x] * to_f32(pool[koff + x]);
    return dot * scale;
}

__device__ __forceinline__ float block_reduce(float v, bool is_max, float* red) {
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = is_max ? NEG_INF : 0.0f;
    for (u32 w = 0; w < blockDim.x / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    return r;
}

template <typename T>
__device__ __forceinline__ void attn_weights_impl(const void* pool_, const float* q,
                                                  const u32* rows, const u32* pages,
                                                  const u8* mask, float scale, u32 hg, u32 gqa,
                                                  u32 p, u32 d, u32 q_heads, float* weights) {
    extern __shared__ float smem[];
    __shared__ float red[W_THREADS / 32];
    float* ms = smem;
    float* ls = smem + gqa;
    const T* pool = (const T*)pool_;
    const u32 h = blockIdx.x % hg, r = blockIdx.x / hg;
    const u32* row = rows + 5 * (u64)r;
    const u32 q_row = row[0], group = row[1], pos = row[2], page_start = row[3],
              page_count = row[4];
    const u64 half_slot = (u64)hg * p * d;
    const u32 n_tokens = page_count * p;
    for (u32 j = 0; j < gqa; ++j) {
        const u64 head = (u64)group * hg * gqa + (u64)h * gqa + j;
        const float* qv = q + ((u64)q_row * q_heads + head) * d;
        float mx = NEG_INF;
        for (u32 t = threadIdx.x; t < n_tokens; t += blockDim.x) {
            const u32* pg = pages + 3 * (u64)(page_start + t / p);
            const u32 slot = pg[0], i = t % p;
            if (i >= pg[2] || (u64)pg[1] + i > (u64)pos) continue;
            if (mask != 0 && mask[((u64)slot * hg + h) * p + i] == 0) continue;
            const u64 koff = (u64)slot * 2 * half_slot + ((u64)h * p + i) * d;
            mx = fmaxf(mx, w_logit(pool, koff, qv, d, scale));
        }
        mx = block_reduce(mx, true, red);
        float sum = 0.0f;
        if (mx != NEG_INF) {
            for (u32 t = threadIdx.x; t < n_tokens; t += blockDim.x) {
                const u32* pg = pages + 3 * (u64)(page_start + t / p);
                const u32 slot = pg[0], i = t % p;
                if (i >= pg[2] || (u64)pg[1] + i > (u64)pos) continue;
                if (mask != 0 && mask[((u64)slot * hg + h) * p + i] == 0) continue;
                const u64 koff = (u64)slot * 2 * half_slot + ((u64)h * p + i) * d;
                sum += expf(w_logit(pool, koff, qv, d, scale) - mx);
            }
        }
        sum = block_reduce(sum, false, red);
        if (threadIdx.x == 0) {
            ms[j] = mx;
            ls[j] = sum;
        }
    }
    __syncthreads();
    for (u32 t = threadIdx.x; t < n_tokens; t += blockDim.x) {
        const u32 pi = page_start + t / p;
        const u32* pg = pages + 3 * (u64)pi;
        const u32 slot = pg[0], i = t % p;
        if (i >= pg[2] || (u64)pg[1] + i > (u64)pos) continue;
        if (mask != 0 && mask[((u64)slot * hg + h) * p + i] == 0) continue;
        const u64 koff = (u64)slot * 2 * half_slot + ((u64)h * p + i) * d;
        float add = 0.0f;
        for (u32 j = 0; j < gqa; ++j) {
            if (ls[j] <= 0.0f) continue;
            const u64 head = (u64)group * hg * gqa + (u64)h * gqa + j;
            const float* qv = q + ((u64)q_row * q_heads + head) * d;
            add += expf(w_logit(pool, koff, qv, d, scale) - ms[j]) / ls[j];
        }
        if (add != 0.0f) atomicAdd(&weights[((u64)pi * hg + h) * p + i], add);
    }
}

INSTANTIATE_KV(attn_weights,
               (const void* pool, const float* q, const u32* rows, const u32* pages,
                const u8* mask, float scale, u32 hg, u32 gqa, u32 p, u32 d, u32 q_heads,
                float* weights),
               (pool, q, rows, pages, mask, scale, hg, gqa, p, d, q_heads, weights))
