// summarize: the digest of a page's keys for every digest kind (DESIGN.md §2), in exactly the
// f32 operation order of `arkvale_core::digest::summarize` (the `__f*_rn` intrinsics keep the
// compiler from contracting products and sums into FMAs), so digests match the CPU bit for bit.
//
// Kinds: 0 cuboid-max, 1 cuboid-center, 2 cuboid-mean, 3 sphere-max, 4 sphere-center,
// 5 sphere-mean, 6 centroid. Grid: one block per (job, KV head of the group); threads stride
// over the head dimension. Dynamic shared memory: `d + p` floats (the center `c` and the
// per-token distances of the sphere kinds). `jobs` holds three u32 per job: slot, digest, len.

template <typename T>
__device__ __forceinline__ void summarize_impl(const void* pool_, const u32* jobs, u32 n_jobs,
                                               u32 kind, u32 hg, u32 p, u32 d,
                                               float* digests) {
    extern __shared__ float smem[];
    float* c = smem;
    float* dist = smem + d;
    const u32 job = blockIdx.x / hg, h = blockIdx.x % hg;
    if (job >= n_jobs) return;
    const T* pool = (const T*)pool_;
    const u32 slot = jobs[3 * job], dig = jobs[3 * job + 1], len = jobs[3 * job + 2];
    const u64 base = (u64)slot * 2 * hg * p * d + (u64)h * p * d;
    const u32 dl = kind <= 2 ? 2 * d : (kind <= 5 ? d + 1 : d);
    float* out = digests + ((u64)dig * hg + h) * dl;
    const float n = (float)len;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) {
        float lo = __int_as_float(0x7f800000), hi = NEG_INF;
        for (u32 t = 0; t < len; ++t) {
            const float x = to_f32(pool[base + (u64)t * d + i]);
            lo = fminf(lo, x);
            hi = fmaxf(hi, x);
        }
        const float ci = __fdiv_rn(__fadd_rn(hi, lo), 2.0f);
        c[i] = ci;
        if (kind <= 2) {
            float rlo = __int_as_float(0x7f800000), rhi = 0.0f, sum = 0.0f;
            for (u32 t = 0; t < len; ++t) {
                const float a = fabsf(__fsub_rn(ci, to_f32(pool[base + (u64)t * d + i])));
                rlo = fminf(rlo, a);
                rhi = fmaxf(rhi, a);
                sum = __fadd_rn(sum, a);
            }
            const float r = kind == 0 ? rhi
                          : kind == 1 ? __fdiv_rn(__fadd_rn(rlo, rhi), 2.0f)
                                      : __fdiv_rn(sum, n);
            out[i] = __fadd_rn(ci, r);
            out[d + i] = __fsub_rn(ci, r);
        } else if (kind == 6) {
            float sum = 0.0f;
            for (u32 t = 0; t < len; ++t) sum = __fadd_rn(sum, to_f32(pool[base + (u64)t * d + i]));
            out[i] = __fdiv_rn(sum, n);
        } else {
            out[i] = ci;
        }
    }
    if (kind >= 3 && kind <= 5) {
        __syncthreads();
        for (u32 t = threadIdx.x; t < len; t += blockDim.x) {
            float s = 0.0f;
            for (u32 i = 0; i < d; ++i) {
                const float diff = __fsub_rn(c[i], to_f32(pool[base + (u64)t * d + i]));
                s = __fadd_rn(s, __fmul_rn(diff, diff));
            }
            dist[t] = __fsqrt_rn(s);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float rlo = __int_as_float(0x7f800000), rhi = 0.0f, sum = 0.0f;
            for (u32 t = 0; t < len; ++t) {
                rlo = fminf(rlo, dist[t]);
                rhi = fmaxf(rhi, dist[t]);
                sum = __fadd_rn(sum, dist[t]);
            }
            out[d] = kind == 3 ? rhi
                   : kind == 4 ? __fdiv_rn(__fadd_rn(rlo, rhi), 2.0f)
                               : __fdiv_rn(sum, n);
        }
    }
}

INSTANTIATE_KV(summarize,
               (const void* pool, const u32* jobs, u32 n_jobs, u32 kind, u32 hg, u32 p, u32 d,
                float* digests),
               (pool, jobs, n_jobs, kind, hg, p, d, digests))
