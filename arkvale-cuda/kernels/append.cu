// append_kv: writes new keys and values (f32 `[tokens, Hkv, d]`) into KV-pool slots, rounding
// to the pool's storage type.
//
// Grid: one block per (destination, KV head of its group); threads stride over `d`.
// `dests` holds four u32 per destination: token, group, slot, pos (validated on the host).
// Two destinations naming the same place race (the trait leaves their order open).

template <typename T>
__device__ __forceinline__ void append_kv_impl(void* pool_, const float* k, const float* v,
                                               const u32* dests, u32 n_dests, u32 hg, u32 p,
                                               u32 d, u32 kv_heads) {
    const u32 n = blockIdx.x / hg, h = blockIdx.x % hg;
    if (n >= n_dests) return;
    const u32* de = dests + 4 * (u64)n;
    const u32 token = de[0], group = de[1], slot = de[2], pos = de[3];
    T* pool = (T*)pool_;
    const u64 half_slot = (u64)hg * p * d;
    const u64 kdst = (u64)slot * 2 * half_slot + ((u64)h * p + pos) * d;
    const u64 vdst = kdst + half_slot;
    const u64 src = ((u64)token * kv_heads + (u64)group * hg + h) * d;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) {
        pool[kdst + i] = from_f32<T>(k[src + i]);
        pool[vdst + i] = from_f32<T>(v[src + i]);
    }
}

INSTANTIATE_KV(append_kv,
               (void* pool, const float* k, const float* v, const u32* dests, u32 n_dests,
                u32 hg, u32 p, u32 d, u32 kv_heads),
               (pool, k, v, dests, n_dests, hg, p, d, kv_heads))
