// estimate: one importance score per (query row, head group, digest) job, all jobs of a batch
// in one launch, GQA-aware: each query head of the group is scored against the digest of its
// own KV head (`j / gqa`), and the group's scores are combined by mean (agg 0) or max (agg 1).
// The f32 operation order is that of `arkvale_core::digest::score` and
// `arkvale_core::reference::estimate`, without FMA contraction, so scores match the CPU bit
// for bit (and so the pages the top-k picks).
//
// Grid: one warp per job (`blockDim.x / 32` jobs per block); lanes stride over the group's
// query heads, each scoring one head sequentially over `d`; lane 0 then aggregates in head
// order. Dynamic shared memory: `warps * hg * gqa` floats. `jobs`: q_row, group, digest.

__device__ __forceinline__ float digest_score(u32 kind, const float* q, const float* dg, u32 d) {
    float acc = 0.0f;
    if (kind <= 2) {
        for (u32 i = 0; i < d; ++i) {
            const float a = __fmul_rn(q[i], dg[i]), b = __fmul_rn(q[i], dg[d + i]);
            acc = __fadd_rn(acc, fmaxf(a, b));
        }
        return acc;
    }
    for (u32 i = 0; i < d; ++i) acc = __fadd_rn(acc, __fmul_rn(q[i], dg[i]));
    if (kind == 6) return acc;
    float nn = 0.0f;
    for (u32 i = 0; i < d; ++i) nn = __fadd_rn(nn, __fmul_rn(q[i], q[i]));
    return __fadd_rn(acc, __fmul_rn(dg[d], __fsqrt_rn(nn)));
}

extern "C" __global__ void estimate(const float* digests, const float* q, const u32* jobs,
                                    u32 n_jobs, u32 kind, u32 agg, u32 hg, u32 gqa, u32 d,
                                    u32 q_heads, float* scores) {
    extern __shared__ float smem[];
    const u32 warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 job = blockIdx.x * warps + warp;
    if (job >= n_jobs) return;
    const u32 g = hg * gqa;
    float* s = smem + warp * g;
    const u32 q_row = jobs[3 * job], group = jobs[3 * job + 1], dig = jobs[3 * job + 2];
    const u32 dl = kind <= 2 ? 2 * d : (kind <= 5 ? d + 1 : d);
    for (u32 j = lane; j < g; j += 32) {
        const u64 head = (u64)group * g + j;
        const float* qv = q + ((u64)q_row * q_heads + head) * d;
        const float* dg = digests + ((u64)dig * hg + j / gqa) * dl;
        s[j] = digest_score(kind, qv, dg, d);
    }
    __syncwarp();
    if (lane == 0) {
        float sum = 0.0f, mx = NEG_INF;
        for (u32 j = 0; j < g; ++j) {
            sum = __fadd_rn(sum, s[j]);
            mx = fmaxf(mx, s[j]);
        }
        scores[job] = agg == 0 ? __fdiv_rn(sum, (float)g) : mx;
    }
}
