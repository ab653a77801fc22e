// Attention over K/V rows addressed by absolute position, head dims up to 512.
// attention_f32 and attention_f16_e*: one (head, query) per block (the attention_f16_e*_g2 forms:
// two heads of one K/V group, for batches of 4 queries or more); each warp takes every
// ATT_WARPS-th visible position with its own running softmax, and the warps' partial results are
// merged at the end (decode steps and verify batches). attention_mq_d*: one block per (head, 16
// queries) sharing K/V tiles in shared memory (prefill chunks), below. attention_plan.rs routes.

#define ATT_WARPS 4
#define ATT_MAX_D 512

// Fewest positions per split: a short range is not spread over more blocks than this allows (each
// split's block has a fixed cost, and the combine reads every used split), nor over fewer when
// long (a warp walks its positions one after another). `SPECULA_ATT_MIN_SPLIT` overrides it for
// A/B runs (source::KNOB_DEFINES).
#ifndef ATT_MIN_SPLIT
#define ATT_MIN_SPLIT 16
#endif
// Up to ATT_FILL_SPLITS splits a query takes one per ATT_MIN_SPLIT visible positions (enough
// blocks in flight at short range); past that, one per ATT_LONG_SPLIT positions, up to the
// launch's n_split (more blocks in flight at long range: a block walks its split's steps in order).
#define ATT_FILL_SPLITS 32
#define ATT_LONG_SPLIT 512

// The cache row of position p (0 ≤ p < 2^31: positions and n_kv are ints): p % cap in a ring, in
// 32-bit arithmetic (the 64-bit remainder is a subroutine call of ~70 instructions).
__device__ __forceinline__ i64 cache_row(i64 p, int cap, int ring) { return ring ? (i64)((u32)p % (u32)cap) : p; }

// The cache row `step` positions after row `slot` (step ≥ 0), for walks that move up a ring
// without a remainder per position.
__device__ __forceinline__ i64 cache_row_add(i64 slot, int step, int cap, int ring) {
    slot += step;
    if (ring)
        while (slot >= cap) slot -= cap;
    return slot;
}

// The positions lo..hi a query at absolute position qp sees in split `split` of n_split (empty
// when hi < lo), given n_kv cached positions (checked by the caller). Returns the number of splits
// in use for this query, the larger of ⌈visible / ATT_MIN_SPLIT⌉ capped at ATT_FILL_SPLITS and
// ⌈visible / ATT_LONG_SPLIT⌉, capped at n_split (1 when nothing is visible): splits from there on
// see nothing and write no partial. The count depends only on the query's visible range, so a
// verify row splits as the decode step at its position does.
__device__ __forceinline__ int visible_range(i64 qp, int n_kv, int split, int n_split, int cap, int mask_kind,
                                             int window, int ring, i64& lo, i64& hi) {
    lo = ring ? imax(0, (i64)n_kv - cap) : 0;
    hi = (i64)n_kv - 1;
    if (mask_kind >= 1) hi = imin(hi, qp);
    if (mask_kind == 2) lo = imax(lo, qp - window + 1);
    i64 len = hi - lo + 1;  // < 2^31: the divisions below are 32-bit (a 64-bit one is a call)
    int used = 1;
    if (n_split > 1 && len > 0) {
        int fill = (int)imin(ATT_FILL_SPLITS, (len + ATT_MIN_SPLIT - 1) / ATT_MIN_SPLIT);
        int along = (int)((u32)(len + ATT_LONG_SPLIT - 1) / (u32)ATT_LONG_SPLIT);
        used = imin(n_split, imax(fill, along));
    }
    if (split >= used) {
        lo = 1;
        hi = 0;
    } else if (used > 1) {
        i64 per = (i64)((u32)(len + used - 1) / (u32)used);
        i64 start = lo + per * split;
        hi = imin(hi, start + per - 1);
        lo = start;
    }
    return used;
}

// The visible positions lo..hi of query t for this block's split (split-K: each block takes its
// share) and the query's used splits. Returns false when the block has nothing to do: n_kv is
// impossible (the output zeroed and the error reported) or the split is past the query's used
// splits (see visible_range).
__device__ __forceinline__ bool attention_range(const int* q_pos, const int* n_kv_ptr, int t, int split,
                                                int n_split, int cap, int mask_kind, int window, int ring,
                                                float* o, int d_v, int* err, i64& lo, i64& hi, int& used) {
    int n_kv = *n_kv_ptr;
    if (n_kv < 0 || (!ring && n_kv > cap)) {
        if (threadIdx.x == 0) report(err, ERR_N_KV);
        for (int i = threadIdx.x; i < d_v; i += blockDim.x) o[i] = 0.0f;
        return false;
    }
    used = visible_range(q_pos[t], n_kv, split, n_split, cap, mask_kind, window, ring, lo, hi);
    return split < used;
}

// ATT_ONE_DIRECT 1 (the default; an A/B knob, `SPECULA_ATT_ONE_DIRECT`): a query that uses one
// split (see visible_range) gets its output row from that split's block, as with n_split 1, and
// attention_combine_f32 leaves it alone: it would only have divided the one partial by its sum,
// a kernel's round trips later (a decode step's 60 combines at short range). The choice depends
// on the query's visible range only, so a verify row still gets the decode step's bits. 0: only
// launches of one split write rows; the combine merges every query of the others.
#ifndef ATT_ONE_DIRECT
#define ATT_ONE_DIRECT 1
#endif
// Whether a block writes its query's output row rather than a partial (see ATT_ONE_DIRECT).
__device__ __forceinline__ bool att_direct(int used, int n_split) { return ATT_ONE_DIRECT ? used <= 1 : n_split <= 1; }

// Merges the warps' running softmaxes (max wm, sum wl, unnormalised output wacc, in shared
// memory after a barrier) into the output row o, or for a query of more than one used split
// stores the block's (max, sum, unnormalised output) for attention_combine_f32.
__device__ __forceinline__ void attention_merge_warps(const float* wm, const float* wl,
                                                      const float (*wacc)[ATT_MAX_D], float* o, float* partial,
                                                      int t, int h, int n_head, int split, int n_split, int used,
                                                      int d_v) {
    float mx = -INFINITY;
    for (int w = 0; w < ATT_WARPS; ++w) mx = fmaxf(mx, wm[w]);
    float* part = att_direct(used, n_split) ? 0 : partial + (((i64)t * n_head + h) * n_split + split) * (d_v + 2);
    if (part && threadIdx.x == 0) {
        float den = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w) den += wm[w] == -INFINITY ? 0.0f : wl[w] * expf(wm[w] - mx);
        part[0] = mx;
        part[1] = mx == -INFINITY ? 0.0f : den;
    }
    for (int i = threadIdx.x; i < d_v; i += blockDim.x) {
        if (mx == -INFINITY) {
            if (part) part[2 + i] = 0.0f;
            else o[i] = 0.0f;
            continue;
        }
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w) {
            float f = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - mx);
            num += wacc[w][i] * f;
            den += wl[w] * f;
        }
        if (part) part[2 + i] = num;
        else o[i] = den > 0.0f ? num / den : 0.0f;
    }
}

// mask_kind: 0 none / explicit, 1 causal, 2 sliding window.
extern "C" __global__ void attention_f32(const float* q, Layout4 lq, const void* k, int k_dt, Layout4 lk,
                                         const void* v, int v_dt, Layout4 lv, const int* q_pos,
                                         const int* n_kv_ptr, const float* mask, float* out, int d, int d_v,
                                         int n_head, int n_head_kv, int cap, float scale, int mask_kind,
                                         int window, int ring, int* err, int n_split, float* partial) {
    pdl_entry();
    __shared__ float qs[ATT_MAX_D];
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][ATT_MAX_D];
    int h = blockIdx.x, t = blockIdx.y, split = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = h / (n_head / n_head_kv);
    const float* qr = q + lq.off + (i64)h * lq.s1 + (i64)t * lq.s2;
    for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = qr[i];
    __syncthreads();
    float* o = out + ((i64)t * n_head + h) * d_v;
    i64 lo, hi;
    int used = 1;
    if (!attention_range(q_pos, n_kv_ptr, t, split, n_split, cap, mask_kind, window, ring, o, d_v, err, lo, hi,
                         used))
        return;

    float m = -INFINITY, l = 0.0f;
    float acc[ATT_MAX_D / 32];
#pragma unroll
    for (int j = 0; j < ATT_MAX_D / 32; ++j) acc[j] = 0.0f;
    i64 slot = cache_row(lo + warp, cap, ring);
    for (i64 p = lo + warp; p <= hi; p += ATT_WARPS, slot = cache_row_add(slot, ATT_WARPS, cap, ring)) {
        i64 kr = lk.off + (i64)g * lk.s1 + slot * lk.s2;
        float s = 0.0f;
        for (int i = lane; i < d; i += 32) s += qs[i] * load_float(k, k_dt, kr + i);
        s = warp_sum(s) * scale;
        if (mask) s += mask[slot + (i64)t * cap];
        if (s == -INFINITY) continue;
        float mn = fmaxf(m, s);
        float c = expf(m - mn), w = expf(s - mn);
        l = l * c + w;
        i64 vr = lv.off + (i64)g * lv.s1 + slot * lv.s2;
#pragma unroll
        for (int j = 0; j < ATT_MAX_D / 32; ++j) {
            int i = lane + 32 * j;
            if (i < d_v) acc[j] = acc[j] * c + w * load_float(v, v_dt, vr + i);
        }
        m = mn;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < ATT_MAX_D / 32; ++j) {
        int i = lane + 32 * j;
        if (i < d_v) wacc[warp][i] = acc[j];
    }
    __syncthreads();
    attention_merge_warps(wm, wl, wacc, o, partial, t, h, n_head, split, n_split, used, d_v);
}

// Most splits attention_combine_f32 takes (the host's split knob stops at 256).
#define ATT_COMBINE_MAX_SPLITS 256

// Merges the used splits of attention_f32 (and the f16, multi-query and tensor-core kernels):
// a block per (head, query, 128 output dims); the same range arguments as those kernels give
// each query's split count. The splits' maxima and weights come first, in one round of loads
// and shared memory, so a thread's loads of its output over the splits are independent (a loop
// that read each split's max, then its weight and output, ran one memory round trip per split:
// 23 µs per launch at depth 4K under ncu). An empty split (max −∞) has weight 0 and, from the
// per-query, multi-query and tensor-core kernels, exact zeros (the tensor-core kernel writes them
// for a row with no position in the split, whatever its accumulators hold), so it adds exactly
// nothing. Sums run in split order, the same for every query.
extern "C" __global__ void attention_combine_f32(const float* partial, float* out, int d_v, int n_head, int n_split,
                                                 const int* q_pos, const int* n_kv_ptr, int cap, int mask_kind,
                                                 int window, int ring) {
    pdl_entry();
    __shared__ float fw[ATT_COMBINE_MAX_SPLITS], lw[ATT_COMBINE_MAX_SPLITS];
    int h = blockIdx.x, t = blockIdx.y;
    int i = blockIdx.z * blockDim.x + threadIdx.x;
    int n_kv = *n_kv_ptr;
    if (n_kv < 0 || (!ring && n_kv > cap)) return;  // the attention kernel zeroed it and reported
    i64 lo, hi;
    int used = visible_range(q_pos[t], n_kv, 0, n_split, cap, mask_kind, window, ring, lo, hi);
    if (ATT_ONE_DIRECT && used <= 1) return;  // its one split's block wrote the row (att_direct)
    used = min(used, ATT_COMBINE_MAX_SPLITS);  // a guard for the shared arrays: the host never plans more
    const i64 stride = d_v + 2;
    const float* p = partial + ((i64)t * n_head + h) * n_split * stride;
    float* o = out + ((i64)t * n_head + h) * d_v;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < used; s += blockDim.x) mx = fmaxf(mx, p[s * stride]);
    mx = block_max(mx);
    if (mx == -INFINITY) {
        if (i < d_v) o[i] = 0.0f;
        return;
    }
    for (int s = threadIdx.x; s < used; s += blockDim.x) {
        float m = p[s * stride];
        fw[s] = m == -INFINITY ? 0.0f : expf(m - mx);
        lw[s] = p[s * stride + 1];
    }
    __syncthreads();
    if (i >= d_v) return;
    float num = 0.0f, den = 0.0f;
#pragma unroll 8
    for (int s = 0; s < used; ++s) {
        num += p[s * stride + 2 + i] * fw[s];
        den += lw[s] * fw[s];
    }
    o[i] = den > 0.0f ? num / den : 0.0f;
}

// attention_f32 for f16 K/V rows of d = d_v = 32·E (256 or 512) with 16-byte-aligned rows: lane l
// owns dims E·l .. E·l + E − 1, loads them with 16-byte loads, and a warp works on two positions
// per iteration so two dot/shuffle/exp chains are in flight. Same arguments, splits and partial
// layout as attention_f32 (k_dt and v_dt are F16 by the host's choice).
__device__ __forceinline__ void load_h8(const u16* p, float* out) {
    uint4 v = *(const uint4*)p;
    u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = h2f((u16)(w[i] & 0xffff));
        out[2 * i + 1] = h2f((u16)(w[i] >> 16));
    }
}

// With RQ > 1 (the `_g2` kernels), a block takes RQ heads of one K/V group for its query: each
// K/V row loaded serves RQ dot products and softmax updates, where one block per head loaded it
// RQ times. Every head's arithmetic is the RQ = 1 kernel's (the same positions, warps, order and
// merge, with the roundings spelled out), so the bits are too.
template <int E, int RQ>
__device__ void attention_f16_wide_body(const float* q, Layout4 lq, const u16* k, Layout4 lk, const u16* v,
                                        Layout4 lv, const int* q_pos, const int* n_kv_ptr, const float* mask,
                                        float* out, int d_v, int n_head, int n_head_kv, int cap, float scale,
                                        int mask_kind, int window, int ring, int* err, int n_split,
                                        float* partial) {
    __shared__ float wm[RQ][ATT_WARPS], wl[RQ][ATT_WARPS];
    __shared__ float wacc[RQ][ATT_WARPS][ATT_MAX_D];
    int h0 = blockIdx.x * RQ, t = blockIdx.y, split = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = h0 / (n_head / n_head_kv);
    float qv[RQ][E];
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        const float* qr = q + lq.off + (i64)(h0 + r) * lq.s1 + (i64)t * lq.s2 + lane * E;
#pragma unroll
        for (int e = 0; e < E; ++e) qv[r][e] = qr[e];
    }
    i64 lo, hi;
    bool live = true;
    int used = 1;
#pragma unroll
    for (int r = 0; r < RQ; ++r)
        live = attention_range(q_pos, n_kv_ptr, t, split, n_split, cap, mask_kind, window, ring,
                               out + ((i64)t * n_head + h0 + r) * d_v, d_v, err, lo, hi, used);
    if (!live) return;
    float m[RQ], l[RQ], acc[RQ][E];
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[r][e] = 0.0f;
    }
    i64 kbase = lk.off + (i64)g * lk.s1 + lane * E, vbase = lv.off + (i64)g * lv.s1 + lane * E;
    i64 row0 = cache_row(lo + warp, cap, ring);
    for (i64 p = lo + warp; p <= hi; p += 2 * ATT_WARPS, row0 = cache_row_add(row0, 2 * ATT_WARPS, cap, ring)) {
        i64 pp[2] = {p, p + ATT_WARPS <= hi ? p + ATT_WARPS : p};
        i64 rows[2] = {row0, pp[1] == p ? row0 : cache_row_add(row0, ATT_WARPS, cap, ring)};
        float kv[2][E], vv[2][E], s[RQ][2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            i64 slot = rows[j];
#pragma unroll
            for (int c = 0; c < E; c += 8) {
                load_h8(k + kbase + slot * lk.s2 + c, kv[j] + c);
                load_h8(v + vbase + slot * lv.s2 + c, vv[j] + c);
            }
#pragma unroll
            for (int r = 0; r < RQ; ++r) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < E; ++e) d = __fmaf_rn(qv[r][e], kv[j][e], d);
                s[r][j] = d;
            }
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            i64 slot = rows[j];
#pragma unroll
            for (int r = 0; r < RQ; ++r) {
                s[r][j] = __fmul_rn(warp_sum(s[r][j]), scale);
                if (mask) s[r][j] = __fadd_rn(s[r][j], mask[slot + (i64)t * cap]);
            }
        }
#pragma unroll
        for (int r = 0; r < RQ; ++r) {
            if (pp[1] == pp[0]) s[r][1] = -INFINITY;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                if (s[r][j] == -INFINITY) continue;
                float mn = fmaxf(m[r], s[r][j]);
                float c = expf(m[r] - mn), w = expf(s[r][j] - mn);
                l[r] = __fmaf_rn(l[r], c, w);
#pragma unroll
                for (int e = 0; e < E; ++e) acc[r][e] = __fmaf_rn(acc[r][e], c, __fmul_rn(w, vv[j][e]));
                m[r] = mn;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        if (lane == 0) {
            wm[r][warp] = m[r];
            wl[r][warp] = l[r];
        }
#pragma unroll
        for (int e = 0; e < E; ++e) wacc[r][warp][lane * E + e] = acc[r][e];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RQ; ++r)
        attention_merge_warps(wm[r], wl[r], wacc[r], out + ((i64)t * n_head + h0 + r) * d_v, partial, t, h0 + r,
                              n_head, split, n_split, used, d_v);
}

// attention_f16_e<E> (a block per head) and attention_f16_e<E>_g2 (a block per two heads of one
// K/V group; grid x n_head / 2).
#define ATTENTION_WIDE(E, RQ, TAIL)                                                                          \
    extern "C" __global__ void attention_f16_e##E##TAIL(const float* q, Layout4 lq, const void* k, int k_dt, \
                                                        Layout4 lk, const void* v, int v_dt, Layout4 lv,    \
                                                        const int* q_pos, const int* n_kv_ptr,              \
                                                        const float* mask, float* out, int d, int d_v,      \
                                                        int n_head, int n_head_kv, int cap, float scale,    \
                                                        int mask_kind, int window, int ring, int* err,      \
                                                        int n_split, float* partial) {                      \
        pdl_entry();                                                                                        \
        attention_f16_wide_body<E, RQ>(q, lq, (const u16*)k, lk, (const u16*)v, lv, q_pos, n_kv_ptr, mask,   \
                                       out, d_v, n_head, n_head_kv, cap, scale, mask_kind, window, ring, err, \
                                       n_split, partial);                                                     \
    }
ATTENTION_WIDE(8, 1, )
ATTENTION_WIDE(16, 1, )
ATTENTION_WIDE(8, 2, _g2)
ATTENTION_WIDE(16, 2, _g2)

// Attention of many queries (prefill chunks; every batch under SPECULA_MQ_ATTENTION=all) for f16
// K/V rows of D = d = d_v (256 or 512), 16-byte aligned: one block per (head, 16 consecutive
// queries, split). Each tile of 32 K/V
// positions is loaded into shared memory once and read by all 16 queries, instead of once per
// (head, query) block as in attention_f32 / attention_f16_e*. Warp w owns queries 2w and 2w + 1:
// in the score phase lane l takes position l of the tile for both, so the online softmax of a
// tile is two warp reductions; in the P·V phase lane l owns dims 8l + 256c. Same arguments,
// visible ranges, splits and partial layout as attention_f32. Dynamic shared memory:
// attention_plan::mq_smem_bytes(D) bytes.
#define MQ_ROWS 16
#define MQ_POS 32
#define MQ_THREADS 256

template <int D>
__device__ void attention_mq_body(const float* q, Layout4 lq, const u16* k, Layout4 lk, const u16* v, Layout4 lv,
                                  const int* q_pos, const int* n_kv_ptr, const float* mask, float* out,
                                  int n_tok, int n_head, int n_head_kv, int cap, float scale, int mask_kind,
                                  int window, int ring, int* err, int n_split, float* partial) {
    constexpr int KS = D + 8;  // halves per shared K/V row: the pad makes 16-byte reads conflict-free
    constexpr int C = D / 256; // 8-dim chunks per lane in the P·V phase
    extern __shared__ __align__(16) unsigned char mq_smem[];
    u16* ks = (u16*)mq_smem;
    u16* vs = ks + MQ_POS * KS;
    float* qs = (float*)(vs + MQ_POS * KS);
    int h = blockIdx.x, t0 = blockIdx.y * MQ_ROWS, split = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = h / (n_head / n_head_kv);
    int n_kv = *n_kv_ptr;
    if (n_kv < 0 || (!ring && n_kv > cap)) {
        if (threadIdx.x == 0) report(err, ERR_N_KV);
        for (int i = threadIdx.x; i < MQ_ROWS * D; i += MQ_THREADS) {
            int t = t0 + i / D;
            if (t < n_tok) out[((i64)t * n_head + h) * D + i % D] = 0.0f;
        }
        return;
    }
    // Visible range of each of this warp's two queries, and the block's union.
    i64 rlo[2], rhi[2], blo = 0x7fffffffffffffffLL, bhi = -1;
    int rused[2] = {1, 1};
    for (int r = 0; r < MQ_ROWS; ++r) {
        int t = t0 + r;
        i64 lo = 1, hi = 0;
        int used = 1;
        if (t < n_tok) used = visible_range(q_pos[t], n_kv, split, n_split, cap, mask_kind, window, ring, lo, hi);
        if (hi >= lo) {
            blo = imin(blo, lo);
            bhi = imax(bhi, hi);
        }
        if (r == 2 * warp) rlo[0] = lo, rhi[0] = hi, rused[0] = used;
        if (r == 2 * warp + 1) rlo[1] = lo, rhi[1] = hi, rused[1] = used;
    }
    for (int i = threadIdx.x; i < MQ_ROWS * D; i += MQ_THREADS) {
        int t = t0 + i / D;
        qs[i] = t < n_tok ? q[lq.off + (i64)h * lq.s1 + (i64)t * lq.s2 + i % D] : 0.0f;
    }
    i64 kbase = lk.off + (i64)g * lk.s1, vbase = lv.off + (i64)g * lv.s1;
    const float* q0 = qs + (2 * warp) * D;
    const float* q1 = q0 + D;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, acc[2][C][8];
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int c = 0; c < C; ++c)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][c][e] = 0.0f;
    // Tiles start at multiples of MQ_POS, so a query's tiles, lanes and online-softmax steps do
    // not depend on the other queries of its block (tiles it cannot see change nothing): a
    // verify row gets the decode step's bits.
    for (i64 p0 = blo / MQ_POS * MQ_POS; p0 <= bhi; p0 += MQ_POS) {
        __syncthreads();  // the previous tile is consumed (and, the first time, qs is written)
        for (int i = threadIdx.x; i < MQ_POS * (D / 8); i += MQ_THREADS) {
            int pr = i / (D / 8), c8 = (i % (D / 8)) * 8;
            i64 p = p0 + pr;
            uint4 kx = make_uint4(0, 0, 0, 0), vx = kx;
            if (p >= blo && p <= bhi) {
                i64 slot = cache_row(p, cap, ring);
                kx = *(const uint4*)(k + kbase + slot * lk.s2 + c8);
                vx = *(const uint4*)(v + vbase + slot * lv.s2 + c8);
            }
            *(uint4*)(ks + pr * KS + c8) = kx;
            *(uint4*)(vs + pr * KS + c8) = vx;
        }
        __syncthreads();
        // Scores of position p0 + lane for the warp's two queries.
        float s[2] = {0.0f, 0.0f};
        const u16* kr = ks + lane * KS;
#pragma unroll 4
        for (int d = 0; d < D; d += 8) {
            float kf[8];
            load_h8(kr + d, kf);
            float4 a0 = *(const float4*)(q0 + d), a1 = *(const float4*)(q0 + d + 4);
            float4 b0 = *(const float4*)(q1 + d), b1 = *(const float4*)(q1 + d + 4);
            s[0] += a0.x * kf[0] + a0.y * kf[1] + a0.z * kf[2] + a0.w * kf[3] + a1.x * kf[4] + a1.y * kf[5] +
                    a1.z * kf[6] + a1.w * kf[7];
            s[1] += b0.x * kf[0] + b0.y * kf[1] + b0.z * kf[2] + b0.w * kf[3] + b1.x * kf[4] + b1.y * kf[5] +
                    b1.z * kf[6] + b1.w * kf[7];
        }
        i64 p = p0 + lane;
        float w[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            float sj = -INFINITY;
            if (p >= rlo[j] && p <= rhi[j]) {
                sj = s[j] * scale;
                if (mask) sj += mask[cache_row(p, cap, ring) + (i64)(t0 + 2 * warp + j) * cap];
            }
            float mn = fmaxf(m[j], warp_max(sj));
            float c = m[j] == -INFINITY ? 0.0f : expf(m[j] - mn);
            w[j] = sj == -INFINITY ? 0.0f : expf(sj - mn);
            l[j] = l[j] * c + warp_sum(w[j]);
            m[j] = mn;
#pragma unroll
            for (int cc = 0; cc < C; ++cc)
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[j][cc][e] *= c;
        }
        // P·V: lane owns dims 8·lane + 256·c. A position a query cannot see (weight 0) is
        // skipped, not multiplied by 0, so a non-finite V row there cannot reach that query:
        // it only reads the rows the per-query kernels would. The weights are warp-uniform.
#pragma unroll 4
        for (int pp = 0; pp < MQ_POS; ++pp) {
            float w0 = __shfl_sync(0xffffffffu, w[0], pp), w1 = __shfl_sync(0xffffffffu, w[1], pp);
            if (w0 == 0.0f && w1 == 0.0f) continue;
#pragma unroll
            for (int c = 0; c < C; ++c) {
                float vf[8];
                load_h8(vs + pp * KS + c * 256 + lane * 8, vf);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (w0 != 0.0f) acc[0][c][e] += w0 * vf[e];
                    if (w1 != 0.0f) acc[1][c][e] += w1 * vf[e];
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        int t = t0 + 2 * warp + j;
        if (t >= n_tok) continue;
        bool empty = m[j] == -INFINITY;
        if (!att_direct(rused[j], n_split)) {
            float* part = partial + (((i64)t * n_head + h) * n_split + split) * (D + 2);
            if (lane == 0) {
                part[0] = m[j];
                part[1] = empty ? 0.0f : l[j];
            }
#pragma unroll
            for (int c = 0; c < C; ++c)
#pragma unroll
                for (int e = 0; e < 8; ++e) part[2 + c * 256 + lane * 8 + e] = empty ? 0.0f : acc[j][c][e];
        } else if (split == 0) {  // one used split (see attention_range): the output row itself
            float* o = out + ((i64)t * n_head + h) * D;
            float inv = !empty && l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
#pragma unroll
            for (int c = 0; c < C; ++c)
#pragma unroll
                for (int e = 0; e < 8; ++e) o[c * 256 + lane * 8 + e] = acc[j][c][e] * inv;
        }
    }
}

// The entry point NAME of a kernel over a batch's f16 K/V rows (the multi-query and tensor-core
// kernels): the attention kernels' argument list, BODY (a body template's instance, in
// parentheses where its arguments hold a comma) called with the batch's query count.
#define ATTENTION_ROWS_ENTRY(NAME, BODY, THREADS)                                                             \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                     \
        NAME(const float* q, Layout4 lq, const void* k, int k_dt, Layout4 lk, const void* v, int v_dt,       \
             Layout4 lv, const int* q_pos, const int* n_kv_ptr, const float* mask, float* out, int d, int d_v, \
             int n_head, int n_head_kv, int cap, float scale, int mask_kind, int window, int ring, int* err,  \
             int n_split, float* partial) {                                                                  \
        pdl_entry();                                                                                          \
        BODY(q, lq, (const u16*)k, lk, (const u16*)v, lv, q_pos, n_kv_ptr, mask, out, (int)lq.d2, n_head,     \
             n_head_kv, cap, scale, mask_kind, window, ring, err, n_split, partial);                          \
    }
#define ATTENTION_MQ(D) ATTENTION_ROWS_ENTRY(attention_mq_d##D, attention_mq_body<D>, MQ_THREADS)
ATTENTION_MQ(256)
ATTENTION_MQ(512)
