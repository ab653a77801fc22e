// Attention of up to 16 queries (decode steps and verify batches) over f16 K/V rows of D = 128,
// 256 or 512 on tensor cores: attention_tc_d128 (the DFlash drafter's heads) / _d256 / _d512.
//
// A block takes a unit: 8 rows, each row a (query, head) pair of one K/V group (row i of the
// group: query i / heads_per_group, head i % heads_per_group), and one split of the positions
// (the `_w` kernels: several splits of those rows, one after another), which it walks in steps
// of 32, its 4 warps sharing each step's dims (below). The rows are the n of
// mma.sync m16n8k16 (sm_80+; movmatrix needs PTX 7.8), the positions its m:
//   scores  Sᵀ[pos][row] = K[pos][·] · Qᵀ[·][row]   (A = K rows, B = Q),
//   output  Oᵀ[dv][row] += Vᵀ[dv][pos] · Pᵀ[pos][row] (A = V rows transposed, B = P).
// Q and P are f32 split into f16 halves (x = hi + lo, two products each): ~22 bits where the lo
// half is a normal f16 (P is scaled by 2^12 first, see P_SCALE), so the outputs stay within ~1e-6
// of f32 arithmetic (tests: ≤ 1.4e-6 relative to the CPU). |q| must stay below f16's 65504. One K/V row loaded serves the
// unit's 8 rows: the heads of a group in a decode step, and the queries of a verify batch too.
//
// Batch invariance (a verify row gets the decode step's bits): a row's visible range and splits
// are the per-query kernels' (visible_range), a unit walks the union of its rows' ranges in steps
// of 32 positions at multiples of 32, and a step in which a row sees nothing leaves its running
// max, sum and output exactly as they were (scores −∞, weights 0, rescale by exactly 1). Every
// mma output element depends only on its own row's operands, and the sums over a row's lanes run
// in a fixed order. So a row's arithmetic is the same whatever other rows share its unit. One
// caveat, as in any tensor-core attention: a position a row cannot see but another row of its
// unit can (or none can: the unit loads the hull lo..hi of its rows' ranges) is multiplied by
// weight 0, so a non-finite V row there would reach the row; K/V rows come from finite,
// RMS-normalised projections, and rows outside the hull (unwritten cache rows included) are
// never loaded. NaN scores: as in the per-query kernels a NaN weight poisons its row, except in
// a step where every score a row sees is NaN before any finite one (fmaxf drops NaN; weights 0).
//
// Each lane holds rows 2c and 2c + 1 (c = lane % 4) of every score and output fragment, and
// positions g and g + 8 (g = lane / 4) of each 16-position tile. The 32 dims a lane-quad loads
// as 16-byte words (lane c: dims 8c .. 8c + 7) are the k of two mma steps in a fixed
// permutation; each warp keeps its chunks of Q in registers in the same order. V rows loaded the same way are
// transposed in registers by movmatrix into the A fragments of Vᵀ, whose m index then maps to
// dv = 32j + 8(μ / 2) + 2e + μ % 2 (chunk j, word e, μ = 0..7).

#define TC_ATT_WARPS 4  // warps per block (unit); each takes every 4th 32-dim chunk
#define TC_ATT_ROWS 8   // rows per unit: the n of the mma
#define TC_ATT_STEP 32  // positions per step: two m16 tiles

// The weights P (≤ 1) are split as P · 2^12 (≤ 4096, in f16's range), so the lo half stays a
// normal f16 down to weights of 2^-15; the outputs take the 2^-12 back (powers of two: exact).
#define P_SCALE 4096.0f

__device__ __forceinline__ u32 movmatrix_trans(u32 x) {
    u32 y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}

// x0, x1 as f16 pairs hi and lo with x = hi + lo to ~22 bits (split_x's rounding, for a pair).
__device__ __forceinline__ void split_pair(float x0, float x1, u32& hi, u32& lo) {
    hi = pack_f32x2(x0, x1);
    lo = pack_f32x2(x0 - h2f((u16)(hi & 0xffff)), x1 - h2f((u16)(hi >> 16)));
}

// Sum (or max) over the 8 lanes of a lane's column c (lanes c, c + 4, ..., c + 28), in the same
// butterfly order on every lane, so all 8 get the same bits.
__device__ __forceinline__ float column_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 4);
    x += __shfl_xor_sync(0xffffffffu, x, 8);
    return x + __shfl_xor_sync(0xffffffffu, x, 16);
}
__device__ __forceinline__ float column_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 8));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 16));
}

__device__ __forceinline__ uint4 load_row16(const u16* p, bool live) {
    return live ? *(const uint4*)p : make_uint4(0, 0, 0, 0);
}

// Grid (n_head_kv, ⌈n_tok · heads_per_group / 8⌉ · slots): y = slot · row tiles + row tile. A block
// takes the unit of its row tile at split `slot`, or (WALK, the `_w` kernels) at splits slot,
// slot + slots, ... (slots < n_split, chosen by the host to bound the blocks), loading its Q rows
// once: the splits past every row's used ones then cost no block launch (a DFlash block over a
// short context used 6 of 64 splits). A unit's arithmetic does not depend on the slot count, so
// neither do the bits.
// The 4 warps work on every step together: warp w takes the 32-dim chunks j ≡ w (mod 4) of the
// scores (its share of the K loads and products) and of the outputs (its dv slice, its share of
// the V loads); the warps' partial scores meet in shared memory (double-buffered by step parity,
// one barrier a step) and are summed in warp order, so every warp holds the same scores and runs
// the same softmax. A unit walks its union's steps in order; no merge at the end.
template <int D, bool WALK>
__device__ void attention_tc_body(const float* q, Layout4 lq, const u16* k, Layout4 lk, const u16* v, Layout4 lv,
                                  const int* q_pos, const int* n_kv_ptr, const float* mask, float* out, int n_tok,
                                  int n_head, int n_head_kv, int cap, float scale, int mask_kind, int window,
                                  int ring, int* err, int n_split, float* partial) {
    constexpr int J = D / 32;               // 32-dim chunks
    constexpr int JW = J / TC_ATT_WARPS;    // chunks per warp
    static_assert(D % (32 * TC_ATT_WARPS) == 0, "every warp takes the same number of chunks");
    __shared__ float part_s[2][TC_ATT_WARPS][8][32];  // [step parity][warp][score value][lane]
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, c = lane & 3;
    int hpg = n_head / n_head_kv, kvh = blockIdx.x;
    int n_rt = (n_tok * hpg + TC_ATT_ROWS - 1) / TC_ATT_ROWS;
    int rt = blockIdx.y % n_rt, slots = WALK ? gridDim.y / n_rt : 1;
    // Query and head of tile row r (query ≥ n_tok when the row is padding).
    auto row_query = [&](int r) { return (rt * TC_ATT_ROWS + r) / hpg; };
    auto row_head = [&](int r) { return kvh * hpg + (rt * TC_ATT_ROWS + r) % hpg; };

    // Every global load that does not depend on n_kv first, so they are in flight together:
    // this warp's chunks of Q (row g) and this lane's rows' query positions.
    float qx[JW][8];
    {
        int t = row_query(g);
        const float* qr = q + lq.off + (i64)row_head(g) * lq.s1 + (i64)t * lq.s2 + 8 * c;
#pragma unroll
        for (int jj = 0; jj < JW; ++jj)
#pragma unroll
            for (int e = 0; e < 8; ++e) qx[jj][e] = t < n_tok ? qr[32 * (warp + jj * TC_ATT_WARPS) + e] : 0.0f;
    }
    int rq[2], qp[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        rq[u] = row_query(2 * c + u);
        qp[u] = rq[u] < n_tok ? q_pos[rq[u]] : 0;
    }

    int n_kv = *n_kv_ptr;
    if (n_kv < 0 || (!ring && n_kv > cap)) {
        if (threadIdx.x == 0) report(err, ERR_N_KV);
        for (int r = warp; r < TC_ATT_ROWS; r += TC_ATT_WARPS)
            if (row_query(r) < n_tok)
                for (int i = lane; i < D; i += 32) out[((i64)row_query(r) * n_head + row_head(r)) * D + i] = 0.0f;
        return;
    }

    const u16* kb = k + lk.off + (i64)kvh * lk.s1 + 8 * c + 32 * warp;
    const u16* vb = v + lv.off + (i64)kvh * lv.s1 + 8 * c + 32 * warp;

    for (int split = blockIdx.y / n_rt; split < n_split; split += slots) {
        // The visible ranges of this lane's rows 2c and 2c + 1 in this split, and the unit's union
        // (the same in every warp).
        int rlo[2], rhi[2], rused[2];
        bool rwrite[2];
        int blo = 0x7fffffff, bhi = -1;
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            i64 lo = 1, hi = 0;
            int used = 0;
            if (rq[u] < n_tok) used = visible_range(qp[u], n_kv, split, n_split, cap, mask_kind, window, ring, lo, hi);
            rwrite[u] = split < used;
            rused[u] = used;
            rlo[u] = (int)lo;
            rhi[u] = (int)hi;
            if (hi >= lo) {
                blo = min(blo, (int)lo);
                bhi = max(bhi, (int)hi);
            }
        }
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
            blo = min(blo, __shfl_xor_sync(0xffffffffu, blo, o));
            bhi = max(bhi, __shfl_xor_sync(0xffffffffu, bhi, o));
        }
        // A split past every row's used splits writes nothing, nor do the later ones (a row's used
        // count does not depend on the split; block-uniform).
        if (!__any_sync(0xffffffffu, rwrite[0] || rwrite[1])) break;

        // This warp's Q chunks as f16 hi and lo words in fragment order (row g, dims 32j + 8c ..).
        uint4 qh[JW], ql[JW];
#pragma unroll
        for (int jj = 0; jj < JW; ++jj) {
            split_pair(qx[jj][0], qx[jj][1], qh[jj].x, ql[jj].x);
            split_pair(qx[jj][2], qx[jj][3], qh[jj].y, ql[jj].y);
            split_pair(qx[jj][4], qx[jj][5], qh[jj].z, ql[jj].z);
            split_pair(qx[jj][6], qx[jj][7], qh[jj].w, ql[jj].w);
        }

        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
        float acc[JW][2][4];
#pragma unroll
        for (int jj = 0; jj < JW; ++jj)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[jj][h][e] = 0.0f;

        int parity = 0;
        for (int p0 = bhi < blo ? bhi + 1 : blo / TC_ATT_STEP * TC_ATT_STEP; p0 <= bhi;
             p0 += TC_ATT_STEP, parity ^= 1) {
            // This lane's positions p0 + 16a + 8b + g, whether the unit reads them, and their rows.
            int pos[2][2];
            bool live[2][2];
            i64 slot[2][2];
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    pos[a][b] = p0 + 16 * a + 8 * b + g;
                    live[a][b] = pos[a][b] >= blo && pos[a][b] <= bhi;
                    slot[a][b] = live[a][b] ? cache_row(pos[a][b], cap, ring) : 0;
                }

            // This step's V words for this warp's chunks, loaded with K's so the two memory round
            // trips overlap (the weights that multiply them come after the barrier): 156 registers
            // at D 256 and 244 at 512, against 126 and 172 with V loaded after the softmax, and
            // decode at 32K +3 %, t(1) at 4K −1.8 % (bench/NOTES.md).
            uint4 vw[JW][2][2];
#pragma unroll
            for (int jj = 0; jj < JW; ++jj)
#pragma unroll
                for (int a = 0; a < 2; ++a)
#pragma unroll
                    for (int b = 0; b < 2; ++b)
                        vw[jj][a][b] = load_row16(vb + slot[a][b] * lv.s2 + 32 * TC_ATT_WARPS * jj, live[a][b]);

            // This warp's partial scores (its chunks; hi and lo products in separate chains).
            float sh[2][4], sl[2][4];
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int e = 0; e < 4; ++e) sh[a][e] = sl[a][e] = 0.0f;
#pragma unroll
            for (int jj = 0; jj < JW; ++jj) {
#pragma unroll
                for (int a = 0; a < 2; ++a) {
                    const i64 off = 32 * TC_ATT_WARPS * jj;
                    uint4 k0 = load_row16(kb + slot[a][0] * lk.s2 + off, live[a][0]);
                    uint4 k1 = load_row16(kb + slot[a][1] * lk.s2 + off, live[a][1]);
                    mma_16816(sh[a], k0.x, k1.x, k0.y, k1.y, qh[jj].x, qh[jj].y);
                    mma_16816(sl[a], k0.x, k1.x, k0.y, k1.y, ql[jj].x, ql[jj].y);
                    mma_16816(sh[a], k0.z, k1.z, k0.w, k1.w, qh[jj].z, qh[jj].w);
                    mma_16816(sl[a], k0.z, k1.z, k0.w, k1.w, ql[jj].z, ql[jj].w);
                }
            }
            // The scores: the warps' partials summed in warp order (the same bits in every warp).
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int e = 0; e < 4; ++e) part_s[parity][warp][4 * a + e][lane] = __fadd_rn(sh[a][e], sl[a][e]);
            __syncthreads();
            float sc[2][4];
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = part_s[parity][0][4 * a + e][lane];
#pragma unroll
                    for (int w = 1; w < TC_ATT_WARPS; ++w) x = __fadd_rn(x, part_s[parity][w][4 * a + e][lane]);
                    sc[a][e] = x;
                }

            // Online softmax per row: s[a][b][u] is position pos[a][b], row 2c + u.
            float s[2][2][2], mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b)
#pragma unroll
                    for (int u = 0; u < 2; ++u) {
                        int p = pos[a][b];
                        float x = -INFINITY;
                        if (p >= rlo[u] && p <= rhi[u]) {
                            x = __fmul_rn(sc[a][2 * b + u], scale);
                            if (mask) x = __fadd_rn(x, mask[slot[a][b] + (i64)rq[u] * cap]);
                        }
                        s[a][b][u] = x;
                        mx[u] = fmaxf(mx[u], x);
                    }
            float rescale[2];
            u32 pb_hi[2][2], pb_lo[2][2];  // P as mma B fragments: [a][b] (positions 16a + 8b + 0..7)
            float w[2][2][2];
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                float mn = fmaxf(m[u], column_max(mx[u]));
                float sum = 0.0f;
                if (mn == -INFINITY) {
                    rescale[u] = 1.0f;
#pragma unroll
                    for (int a = 0; a < 2; ++a)
#pragma unroll
                        for (int b = 0; b < 2; ++b) w[a][b][u] = 0.0f;
                } else {
                    // A row's first visible step: its sum and outputs are still 0, so a rescale by 1
                    // (skipped below) gives the same bits as one by 0.
                    rescale[u] = m[u] == -INFINITY ? 1.0f : expf(m[u] - mn);
#pragma unroll
                    for (int a = 0; a < 2; ++a)
#pragma unroll
                        for (int b = 0; b < 2; ++b) {
                            float x = s[a][b][u];
                            w[a][b][u] = x == -INFINITY ? 0.0f : expf(x - mn);
                        }
                    sum = __fadd_rn(__fadd_rn(w[0][0][u], w[0][1][u]), __fadd_rn(w[1][0][u], w[1][1][u]));
                }
                l[u] = __fmaf_rn(l[u], rescale[u], column_sum(sum));
                m[u] = mn;
            }
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    u32 hi, lo;
                    split_pair(__fmul_rn(w[a][b][0], P_SCALE), __fmul_rn(w[a][b][1], P_SCALE), hi, lo);
                    pb_hi[a][b] = movmatrix_trans(hi);
                    pb_lo[a][b] = movmatrix_trans(lo);
                }

            // Rescale this warp's outputs (skipped, exactly, when no row's max moved).
            if (__any_sync(0xffffffffu, rescale[0] != 1.0f || rescale[1] != 1.0f)) {
#pragma unroll
                for (int jj = 0; jj < JW; ++jj)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        acc[jj][h][0] = __fmul_rn(acc[jj][h][0], rescale[0]);
                        acc[jj][h][1] = __fmul_rn(acc[jj][h][1], rescale[1]);
                        acc[jj][h][2] = __fmul_rn(acc[jj][h][2], rescale[0]);
                        acc[jj][h][3] = __fmul_rn(acc[jj][h][3], rescale[1]);
                    }
            }

            // Oᵀ += Vᵀ · Pᵀ on this warp's chunks: V words transposed into A fragments (dv map in
            // the header).
#pragma unroll
            for (int jj = 0; jj < JW; ++jj) {
#pragma unroll
                for (int a = 0; a < 2; ++a) {
                    const uint4 v0 = vw[jj][a][0], v1 = vw[jj][a][1];
                    u32 t0[4] = {movmatrix_trans(v0.x), movmatrix_trans(v0.y), movmatrix_trans(v0.z),
                                 movmatrix_trans(v0.w)};
                    u32 t1[4] = {movmatrix_trans(v1.x), movmatrix_trans(v1.y), movmatrix_trans(v1.z),
                                 movmatrix_trans(v1.w)};
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        mma_16816(acc[jj][h], t0[2 * h], t0[2 * h + 1], t1[2 * h], t1[2 * h + 1], pb_hi[a][0],
                                  pb_hi[a][1]);
                        mma_16816(acc[jj][h], t0[2 * h], t0[2 * h + 1], t1[2 * h], t1[2 * h + 1], pb_lo[a][0],
                                  pb_lo[a][1]);
                    }
                }
            }
        }

        // The output rows, or with splits each split's (max, sum, unnormalised output) for
        // attention_combine_f32: this warp's chunks j = warp + 4·jj. acc[jj][h][2x + u] is row
        // 2c + u, dv 32j + 8(g / 2) + 2(2h + x) + g % 2. A row that saw no position in this split
        // (empty) writes exact zeros: its accumulators hold the unit's other rows' positions times
        // weight 0, which a non-finite V row there would turn into NaN, and the combine adds every
        // split (an empty one with weight 0).
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            if (!rwrite[u]) continue;
            int hd = row_head(2 * c + u);
            bool empty = m[u] == -INFINITY;
            float* dst;
            float inv = 1.0f;
            if (att_direct(rused[u], n_split)) {  // the output row (attention.cu, ATT_ONE_DIRECT)
                dst = out + ((i64)rq[u] * n_head + hd) * D;
                inv = !empty && l[u] > 0.0f ? __fmul_rn(__frcp_rn(l[u]), 1.0f / P_SCALE) : 0.0f;
            } else {
                float* part = partial + (((i64)rq[u] * n_head + hd) * n_split + split) * (D + 2);
                if (warp == 0 && g == 0) {
                    part[0] = m[u];
                    part[1] = empty ? 0.0f : l[u];
                }
                dst = part + 2;
                inv = empty ? 0.0f : 1.0f / P_SCALE;
            }
            dst += 32 * warp + 8 * (g >> 1) + (g & 1);  // then constant offsets
#pragma unroll
            for (int jj = 0; jj < JW; ++jj)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int x = 0; x < 2; ++x)
                        dst[32 * TC_ATT_WARPS * jj + 2 * (2 * h + x)] =
                            empty ? 0.0f : __fmul_rn(acc[jj][h][2 * x + u], inv);
        }
        if (!WALK) break;
        __syncthreads();  // the next split's first step writes part_s, which warps may still read
    }
}

// attention_tc_d<D> runs one split per block, attention_tc_d<D>_w walks (see the body).
#define ATTENTION_TC(D)                                                                          \
    ATTENTION_ROWS_ENTRY(attention_tc_d##D, (attention_tc_body<D, false>), TC_ATT_WARPS * 32)   \
    ATTENTION_ROWS_ENTRY(attention_tc_d##D##_w, (attention_tc_body<D, true>), TC_ATT_WARPS * 32)
ATTENTION_TC(128)
ATTENTION_TC(256)
ATTENTION_TC(512)
