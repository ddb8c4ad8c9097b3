// topk: for each segment of scores, the indices of its `k` best, best first, on the device.
// The order is `arkvale_core::digest::rank_cmp`: higher score first, NaN below every number,
// ties to the lower index. It is total, so every element has a unique rank (the number of
// elements that beat it), and the element of rank `r < k` is written to `out[off + r]` —
// the same set and order as the reference, with no sort and no atomics.
//
// Grid: one block per segment; each thread ranks candidates against the whole segment, which
// is streamed through shared memory in tiles. `segs` holds four u32 per segment: start, len,
// k and the output offset (the running sum of the earlier segments' k).

#define TOPK_TILE 1024

__device__ __forceinline__ bool beats(float sa, u32 a, float sb, u32 b) {
    const bool na = isnan(sa), nb = isnan(sb);
    const float ka = na ? NEG_INF : sa, kb = nb ? NEG_INF : sb;
    if (ka != kb) return ka > kb;
    if (na != nb) return nb;
    return a < b;
}

extern "C" __global__ void topk(const float* scores, const u32* segs, u32 n_segs, u32* out) {
    __shared__ float tile[TOPK_TILE];
    const u32 seg = blockIdx.x;
    if (seg >= n_segs) return;
    const u32 start = segs[4 * seg], len = segs[4 * seg + 1], k = segs[4 * seg + 2],
              off = segs[4 * seg + 3];
    if (k == 0) return;
    const float* s = scores + start;
    for (u32 base = 0; base < len; base += blockDim.x) {
        const u32 i = base + threadIdx.x;
        const bool valid = i < len;
        const float si = valid ? s[i] : 0.0f;
        u32 rank = 0;
        for (u32 tb = 0; tb < len; tb += TOPK_TILE) {
            const u32 n = min(TOPK_TILE, len - tb);
            __syncthreads();
            for (u32 j = threadIdx.x; j < n; j += blockDim.x) tile[j] = s[tb + j];
            __syncthreads();
            if (valid && rank < k) {
                for (u32 j = 0; j < n; ++j) rank += beats(tile[j], tb + j, si, i) ? 1u : 0u;
            }
        }
        if (valid && rank < k) out[off + rank] = i;
    }
}
