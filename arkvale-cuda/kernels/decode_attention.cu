// Paged attention, split-KV ("flash-decoding"): the partial pass shared by decode and prefill,
// the combine pass of decode (normalize into `out`) and of prefill (fold into a running
// flash-attention state), and the finalize pass of a prefill state.
//
// Work item: one KV head `h` over one page range, for up to `MAX_G` (query row, query head)
// *pairs* that read that KV head and those pages: the query heads of a row that share `h`
// (GQA), and in prefill also several consecutive rows with the same page range (query tiling:
// each key and value is loaded once for all pairs, so a prompt chunk reads the KV `MAX_G / gqa`
// times less often than row by row). Each pair has its own causal limit `pos`. The host builds
// the items (`ITEM_WORDS` u32 each: h, page_start, page_count, n_pairs, then q_row, head, pos
// per pair). The page range is cut into `n_splits` splits of `pages_per_split` pages; grid =
// (items, n_splits), so one long sequence still fills the GPU. A block has `ATTN_WARPS`
// warps; each warp takes every `ATTN_WARPS`-th token of the split, two tokens per iteration,
// and keeps an online softmax (running max `m`, sum `l`, accumulator over `d`) per pair; lane
// `x` holds elements `x*E .. x*E+E` of the head dimension (`E` = 1, 2, 4 or 8: `d <= 256`).
// The block merges its warps in shared memory and writes one partial `(m, l, acc[d])` per
// pair. Arithmetic is f32 (`expf`, not the fast approximation); the reference is f64.
//
// Page log-sum-exps (`page_lse != 0`, decode only): each warp then walks whole pages (pages
// `warp, warp + ATTN_WARPS, ..` of the split, two tokens per iteration) instead of every
// `ATTN_WARPS`-th token, keeps a second online sum per pair for the current page, and at the
// page's end writes `ln sum exp(s)` over its participating tokens (-inf when none) to
// `page_lse[page * g.lse_heads + head % g.lse_heads]` — the same pass over the keys.
//
// A token takes part for a pair iff `i < len`, `base_pos + i <= pos` and (with a mask) its
// keep-mask byte `mask[(slot * hg + h) * p + i]` is non-zero. Pages: slot, base_pos, len
// (three u32).

#define ATTN_WARPS 4
#define MAX_G 8
#define ITEM_WORDS (4 + 3 * MAX_G)

struct AttnGeom {
    u32 hg, p, d, q_heads, n_splits, pages_per_split, n_items, lse_heads;
};

// Loads tokens `t[0]`, `t[1]` of the split (both before folding either in) and folds each
// into the online softmax of every pair that may see it; with `track`, also into the pair's
// page sum `(pm, pl)`.
template <typename T, int E>
__device__ __forceinline__ void attn_fold_two(
    const T* pool, const u32* pages, const u8* mask, const AttnGeom& g, u32 h, u64 first_page,
    const u32 (&t)[2], u32 n_tokens, u32 np, u64 max_pos, const u64 (&pos)[MAX_G],
    const float (&qv)[MAX_G][E], float scale, float (&m)[MAX_G], float (&l)[MAX_G],
    float (&acc)[MAX_G][E], bool track, float (&pm)[MAX_G], float (&pl)[MAX_G]) {
    const u32 lane = threadIdx.x % 32;
    const u64 half_slot = (u64)g.hg * g.p * g.d;
    float kv[2][E], vv[2][E];
    bool ok[2];
    u64 tp[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        ok[u] = false;
        tp[u] = 0;
        u64 koff = 0;
        if (t[u] < n_tokens) {
            const u32* pg = pages + 3 * (first_page + t[u] / g.p);
            const u32 slot = pg[0], len = pg[2], i = t[u] % g.p;
            tp[u] = (u64)pg[1] + i;
            ok[u] = i < len && tp[u] <= max_pos &&
                    (mask == 0 || mask[((u64)slot * g.hg + h) * g.p + i] != 0);
            koff = (u64)slot * 2 * half_slot + ((u64)h * g.p + i) * g.d;
        }
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const u32 x = lane * E + e;
            kv[u][e] = ok[u] && x < g.d ? to_f32(pool[koff + x]) : 0.0f;
            vv[u][e] = ok[u] && x < g.d ? to_f32(pool[koff + half_slot + x]) : 0.0f;
        }
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        if (!ok[u]) continue;
#pragma unroll
        for (int j = 0; j < MAX_G; ++j) {
            if ((u32)j >= np) break;
            if (tp[u] > pos[j]) continue;
            float dot = 0.0f;
#pragma unroll
            for (int e = 0; e < E; ++e) dot += qv[j][e] * kv[u][e];
            const float s = warp_sum(dot) * scale;
            const float m_new = fmaxf(m[j], s);
            const float corr = expf(m[j] - m_new);
            const float w = expf(s - m_new);
            l[j] = l[j] * corr + w;
#pragma unroll
            for (int e = 0; e < E; ++e) acc[j][e] = acc[j][e] * corr + w * vv[u][e];
            m[j] = m_new;
            if (track) {
                const float pm_new = fmaxf(pm[j], s);
                pl[j] = pl[j] * expf(pm[j] - pm_new) + expf(s - pm_new);
                pm[j] = pm_new;
            }
        }
    }
}

template <typename T, int E>
__device__ __forceinline__ void attn_partial_impl(const void* pool_, const float* q,
                                                  const u32* items, const u32* pages,
                                                  const u8* mask, float scale, AttnGeom g,
                                                  float* part_ml, float* part_acc,
                                                  float* page_lse) {
    __shared__ float sm_m[ATTN_WARPS][MAX_G];
    __shared__ float sm_l[ATTN_WARPS][MAX_G];
    __shared__ float sm_acc[ATTN_WARPS][MAX_G][32 * E];
    const T* pool = (const T*)pool_;
    const u32 y = blockIdx.x, split = blockIdx.y;
    const u32* it = items + (u64)ITEM_WORDS * y;
    const u32 h = it[0], page_start = it[1], page_count = it[2];
    const u32 np = min((u32)MAX_G, it[3]);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 p_begin = split * g.pages_per_split;
    const u32 p_end = min(p_begin + g.pages_per_split, page_count);

    float qv[MAX_G][E];
    float acc[MAX_G][E];
    float m[MAX_G], l[MAX_G];
    u64 pos[MAX_G];
    u64 max_pos = 0;
#pragma unroll
    for (int j = 0; j < MAX_G; ++j) {
        m[j] = NEG_INF;
        l[j] = 0.0f;
        const bool live = (u32)j < np;
        const u32 q_row = live ? it[4 + 3 * j] : 0, head = live ? it[5 + 3 * j] : 0;
        pos[j] = live ? (u64)it[6 + 3 * j] : 0;
        max_pos = live && pos[j] > max_pos ? pos[j] : max_pos;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const u32 x = lane * E + e;
            acc[j][e] = 0.0f;
            qv[j][e] = (live && x < g.d) ? q[((u64)q_row * g.q_heads + head) * g.d + x] : 0.0f;
        }
    }

    const u32 n_tokens = p_begin < p_end ? (p_end - p_begin) * g.p : 0;
    const u64 first_page = (u64)page_start + p_begin;
    float pm[MAX_G], pl[MAX_G];
    if (page_lse == 0) {
        // Two tokens per warp and iteration: both tokens' keys and values are loaded before
        // either is folded in, so each warp keeps twice the bytes in flight (decode is
        // bandwidth-bound).
        for (u32 t0 = warp; t0 < n_tokens; t0 += 2 * ATTN_WARPS) {
            const u32 t[2] = {t0, t0 + ATTN_WARPS};
            attn_fold_two<T, E>(pool, pages, mask, g, h, first_page, t, n_tokens, np, max_pos,
                                pos, qv, scale, m, l, acc, false, pm, pl);
        }
    } else {
        const u32 n_pages = p_begin < p_end ? p_end - p_begin : 0;
        for (u32 pg = warp; pg < n_pages; pg += ATTN_WARPS) {
#pragma unroll
            for (int j = 0; j < MAX_G; ++j) {
                pm[j] = NEG_INF;
                pl[j] = 0.0f;
            }
            for (u32 i0 = 0; i0 < g.p; i0 += 2) {
                const u32 t[2] = {pg * g.p + i0, i0 + 1 < g.p ? pg * g.p + i0 + 1 : n_tokens};
                attn_fold_two<T, E>(pool, pages, mask, g, h, first_page, t, n_tokens, np,
                                    max_pos, pos, qv, scale, m, l, acc, true, pm, pl);
            }
            if (lane == 0) {
#pragma unroll
                for (int j = 0; j < MAX_G; ++j) {
                    if ((u32)j >= np) break;
                    const u32 local = it[5 + 3 * j] % g.lse_heads;
                    page_lse[(first_page + pg) * g.lse_heads + local] =
                        pl[j] > 0.0f ? pm[j] + logf(pl[j]) : NEG_INF;
                }
            }
        }
    }

#pragma unroll
    for (int j = 0; j < MAX_G; ++j) {
        if (lane == 0) {
            sm_m[warp][j] = m[j];
            sm_l[warp][j] = l[j];
        }
#pragma unroll
        for (int e = 0; e < E; ++e) sm_acc[warp][j][lane * E + e] = acc[j][e];
    }
    __syncthreads();
    const u64 item = (u64)y * g.n_splits + split;
    for (u32 idx = threadIdx.x; idx < np * g.d; idx += blockDim.x) {
        const u32 j = idx / g.d, x = idx % g.d;
        float mx = NEG_INF;
        for (int w = 0; w < ATTN_WARPS; ++w) mx = fmaxf(mx, sm_m[w][j]);
        float sum = 0.0f, a = 0.0f;
        if (mx != NEG_INF) {
            for (int w = 0; w < ATTN_WARPS; ++w) {
                if (sm_m[w][j] == NEG_INF) continue;
                const float c = expf(sm_m[w][j] - mx);
                sum += sm_l[w][j] * c;
                a += sm_acc[w][j][x] * c;
            }
        }
        const u64 pi = item * MAX_G + j;
        part_acc[pi * g.d + x] = a;
        if (x == 0) {
            part_ml[2 * pi] = mx;
            part_ml[2 * pi + 1] = sum;
        }
    }
}

#define ATTN_PARTIAL(TY, SUF, E)                                                               \
    extern "C" __global__ void attn_partial_##SUF##_e##E(                                      \
        const void* pool, const float* q, const u32* items, const u32* pages, const u8* mask, \
        float scale, AttnGeom g, float* part_ml, float* part_acc, float* page_lse) {          \
        attn_partial_impl<TY, E>(pool, q, items, pages, mask, scale, g, part_ml, part_acc,    \
                                 page_lse);                                                   \
    }
#define ATTN_PARTIAL_ALL_E(TY, SUF)                                                            \
    ATTN_PARTIAL(TY, SUF, 1) ATTN_PARTIAL(TY, SUF, 2) ATTN_PARTIAL(TY, SUF, 4)                 \
    ATTN_PARTIAL(TY, SUF, 8)
ATTN_PARTIAL_ALL_E(float, f32)
ATTN_PARTIAL_ALL_E(f16_t, f16)
ATTN_PARTIAL_ALL_E(bf16_t, bf16)

// Merges the splits of one work item (grid: one block per item). `fold == 0`: writes
// `acc / l` (zeros for a pair with no participating token) into `out [rows, H, d]`.
// `fold != 0`: folds the merged partial into the state `st_acc [rows, H, d]`,
// `st_max / st_sum [rows, H]` (online softmax in the natural-log domain); a pair with no
// participating token leaves the state as it was.
extern "C" __global__ void attn_combine(const u32* items, AttnGeom g, const float* part_ml,
                                        const float* part_acc, u32 fold, float* out,
                                        float* st_acc, float* st_max, float* st_sum) {
    __shared__ float sh_m[MAX_G], sh_l[MAX_G], sh_old_m[MAX_G], sh_old_l[MAX_G];
    __shared__ u64 sh_si[MAX_G];
    const u32 y = blockIdx.x;
    const u32* it = items + (u64)ITEM_WORDS * y;
    const u32 np = min((u32)MAX_G, it[3]);
    if (threadIdx.x < np) {
        const u32 j = threadIdx.x;
        const u64 si = (u64)it[4 + 3 * j] * g.q_heads + it[5 + 3 * j];
        sh_si[j] = si;
        float mx = NEG_INF;
        for (u32 s = 0; s < g.n_splits; ++s)
            mx = fmaxf(mx, part_ml[2 * (((u64)y * g.n_splits + s) * MAX_G + j)]);
        float sum = 0.0f;
        if (mx != NEG_INF) {
            for (u32 s = 0; s < g.n_splits; ++s) {
                const u64 pi = ((u64)y * g.n_splits + s) * MAX_G + j;
                if (part_ml[2 * pi] != NEG_INF) sum += part_ml[2 * pi + 1] * expf(part_ml[2 * pi] - mx);
            }
        }
        sh_m[j] = mx;
        sh_l[j] = sum;
        if (fold) {
            sh_old_m[j] = st_max[si];
            sh_old_l[j] = st_sum[si];
        }
    }
    __syncthreads();
    for (u32 idx = threadIdx.x; idx < np * g.d; idx += blockDim.x) {
        const u32 j = idx / g.d, x = idx % g.d;
        const float mx = sh_m[j];
        float a = 0.0f;
        if (mx != NEG_INF) {
            for (u32 s = 0; s < g.n_splits; ++s) {
                const u64 pi = ((u64)y * g.n_splits + s) * MAX_G + j;
                if (part_ml[2 * pi] != NEG_INF) a += part_acc[pi * g.d + x] * expf(part_ml[2 * pi] - mx);
            }
        }
        const u64 o = sh_si[j] * g.d + x;
        if (!fold) {
            out[o] = sh_l[j] > 0.0f ? a / sh_l[j] : 0.0f;
        } else if (mx != NEG_INF) {
            const float old_m = sh_old_m[j];
            const float mn = fmaxf(old_m, mx);
            const float c0 = old_m == NEG_INF ? 0.0f : expf(old_m - mn);
            st_acc[o] = st_acc[o] * c0 + a * expf(mx - mn);
        }
    }
    if (fold) {
        __syncthreads();
        if (threadIdx.x < np) {
            const u32 j = threadIdx.x;
            const float mx = sh_m[j];
            if (mx != NEG_INF) {
                const float old_m = sh_old_m[j];
                const float mn = fmaxf(old_m, mx);
                const float c0 = old_m == NEG_INF ? 0.0f : expf(old_m - mn);
                st_sum[sh_si[j]] = sh_old_l[j] * c0 + sh_l[j] * expf(mx - mn);
                st_max[sh_si[j]] = mn;
            }
        }
    }
}

// `out = acc / sum` for each row's group heads (zeros where `sum == 0`). Grid: one block per
// row; threads stride over the group's `hg * gqa * d` elements.
extern "C" __global__ void attn_finalize(const u32* rows, u32 n_rows, u32 group_heads, u32 d,
                                         u32 q_heads, const float* acc, const float* sum,
                                         float* out) {
    const u32 r = blockIdx.x;
    if (r >= n_rows) return;
    const u32 q_row = rows[5 * (u64)r], group = rows[5 * (u64)r + 1];
    for (u32 idx = threadIdx.x; idx < group_heads * d; idx += blockDim.x) {
        const u64 head = (u64)group * group_heads + idx / d;
        const u64 si = (u64)q_row * q_heads + head;
        const u64 o = si * d + idx % d;
        const float s = sum[si];
        out[o] = s == 0.0f ? 0.0f : acc[o] / s;
    }
}
