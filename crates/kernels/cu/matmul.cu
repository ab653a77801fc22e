// Matrix products and row gathers over weights of any supported type.
//
// matmul: one warp per output row n; its lanes walk the row's 32-element chunks, dequantize each
// once into registers and use it for every activation row of the group (up to MM_ROWS), so a
// weight byte is read once for a decode step or a verify batch of up to MM_ROWS tokens.

#define MM_ROWS 16
#define MM_WARPS 4

// Four bytes from a 2-byte-aligned address (Q6_K and Q8_0 blocks have odd multiples of 2 bytes).
__device__ __forceinline__ u32 load_u32_2(const u8* p) {
    return (u32)(*(const u16*)p) | ((u32)(*(const u16*)(p + 2)) << 16);
}

// Four consecutive weights e..e+3 (e a multiple of 4) of 32-element chunk c of a Q8_0 or Q5_0
// row that starts at an even address (34- and 22-byte blocks keep every word 2-byte aligned).
template <int DT>
__device__ __forceinline__ void dq4(const u8* row, int c, int e, float (&v)[4]) {
    if (DT == DT_Q8_0) {
        const u8* b = row + c * 34;
        float d = ldh(b);
        u32 q = load_u32_2(b + 2 + e);
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = d * (float)(signed char)((q >> (8 * i)) & 0xff);
    } else {
        const u8* b = row + c * 22;
        float d = ldh(b);
        u32 qh = load_u32_2(b + 2) >> e;
        u32 q = load_u32_2(b + 6 + (e & 15));
        int shift = e < 16 ? 0 : 4;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int x = (int)((q >> (8 * i + shift)) & 0xF) | (int)(((qh >> i) & 1) << 4);
            v[i] = d * (float)(x - 16);
        }
    }
}

// Q8_0 and Q5_0 rows (at even addresses) in matmul and matmul_id, four chunks a pass: lane l
// takes weights 4(l % 8)..+3 of chunk 4p + l / 8, one word of quants instead of a byte for each
// weight (the 26B-A4B's 704-wide expert downs: 22 chunks, 6 passes; its 2,112-wide FFN downs).
// A lane's partials run over its chunks in order and do not depend on R, so a row has its bits
// in any batch. x0: the first activation row, `stride` elements apart.
template <int DT, int R>
__device__ __forceinline__ void quad_sums(const u8* wr, const float* x0, i64 stride, int rows, int n_chunks,
                                          int lane, float (&acc)[R]) {
    int q = lane >> 3, e = (lane & 7) * 4;
    bool vec = ((size_t)x0 & 15) == 0 && (stride & 3) == 0;
#pragma unroll(R <= 2 ? 4 : 1)
    for (int c = q; c < n_chunks; c += 4) {
        float v[4];
        dq4<DT>(wr, c, e, v);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < rows) {
                const float* xp = x0 + (i64)r * stride + c * 32 + e;
                float4 a = vec ? *(const float4*)xp : make_float4(xp[0], xp[1], xp[2], xp[3]);
                acc[r] += v[0] * a.x;
                acc[r] += v[1] * a.y;
                acc[r] += v[2] * a.z;
                acc[r] += v[3] * a.w;
            }
        }
    }
}

// Whether rows of type DT from w take quad_sums: Q8_0 and Q5_0 weights at an even address (their
// rows are whole blocks of 34 and 22 bytes, so every row of such a tensor starts at one too).
template <int DT>
__device__ __forceinline__ bool quad_rows(const u8* w) {
    return (DT == DT_Q8_0 || DT == DT_Q5_0) && ((size_t)w & 1) == 0;
}

// MM_BATCH (an A/B knob, `SPECULA_MM_BATCH`; 4 restores the loop before it): chunks whose
// weights a lane loads before it uses the first of them, in the one- and two-row kernels and
// matmul_id. A lane's sum still runs over the chunks in order, so the bits are the same for any
// batch. (With `#pragma unroll 4` the compiler issued four chunks' loads and then waited: the
// 26B-A4B's 88-chunk router rows took 22 round trips to memory, 16.8 µs under ncu.)
#ifndef MM_BATCH
#define MM_BATCH 8
#endif

template <int DT, int R>
__device__ void matmul_body(const u8* w, const float* x, float* y, int k, int n, int m,
                            i64 x_off, i64 x_row_stride) {
    // Lane l takes element l of every 32-element chunk: a warp reads each chunk's weight bytes
    // and each activation row's 32 floats as one coalesced access. R (the activation rows of
    // this block, a compile-time bound) keeps the accumulators in registers with no work for
    // absent rows.
    constexpr int U = R <= 2 ? MM_BATCH : 4;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * MM_WARPS + warp;
    int m0 = blockIdx.y * R;
    if (row >= n) return;
    const u8* wr = w + (i64)row * row_bytes(DT, k);
    const float* xb = x + x_off + (i64)m0 * x_row_stride + lane;
    int rows = m - m0 < R ? m - m0 : R;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    int n_chunks = k / 32;
    if (quad_rows<DT>(w)) {
        quad_sums<DT, R>(wr, xb - lane, x_row_stride, rows, n_chunks, lane, acc);
        n_chunks = 0;
    }
    for (int c0 = 0; c0 < n_chunks; c0 += U) {
        float v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = c0 + u < n_chunks ? dq1<DT>(wr, c0 + u, lane) : 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (c0 + u < n_chunks) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    if (r < rows) acc[r] += v[u] * xb[(i64)r * x_row_stride + (c0 + u) * 32];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r < rows) y[(i64)(m0 + r) * n + row] = s;
    }
}

// MOE_GROUP_MAX: the most (token, slot) pairs an expert-grouped product (matmul_id_g,
// matmul_id_tcg) takes in one launch; the host checks.
#define MOE_GROUP_MAX 256

// The pairs among the launch's first `pairs` whose expert id is e, in pair order, into list;
// returns their count. Every thread of the block calls it; list is complete when it returns.
// A block leads its expert's group when its own pair is list[0].
__device__ __forceinline__ int expert_group(const int* ids, int pairs, int e, int* list) {
    __shared__ int counts[32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    int base = 0;
    for (int i0 = 0; i0 < pairs; i0 += blockDim.x) {
        int i = i0 + threadIdx.x;
        bool hit = i < pairs && ids[i] == e;
        unsigned b = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) counts[warp] = __popc(b);
        __syncthreads();
        int before = base, sum = 0;
        for (int v = 0; v < warps; ++v) {
            before += v < warp ? counts[v] : 0;
            sum += counts[v];
        }
        if (hit) list[before + __popc(b & ((1u << lane) - 1))] = i;
        base += sum;
        __syncthreads();
    }
    return base;
}

// The activation row of (token, slot) pair `pair` of an expert-indexed product: its token's row
// where a token's slots share one (x_slots == 1), else its own.
__device__ __forceinline__ int pair_x_row(int pair, int n_used, int x_slots) {
    return x_slots == 1 ? pair / n_used : pair;
}

// Expert-indexed product: block (x, pair) computes MM_WARPS output rows of slot pair = j + t * n_used,
// a warp per row as matmul_body (lane l takes element l of every 32-element chunk, so a warp's
// weight and activation reads are coalesced). (A lane per chunk, dequantizing all 32 of it,
// read each lane's bytes apart and left lanes idle on short rows: the 26B-A4B's 704-wide
// expert downs ran at 232 GB/s under ncu.) The tensor-core matmul_id_tc_* kernels take the
// shapes they can (matvec_mma.cu).
template <int DT>
__device__ void matmul_id_body(const u8* w, const float* x, const int* ids, float* y, int k, int n,
                               int n_expert, int n_used, int x_slots, i64 x_off, i64 x_row_stride,
                               int* err) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * MM_WARPS + warp;
    int pair = blockIdx.y;
    if (row >= n) return;
    int e = ids[pair];
    if (e < 0 || e >= n_expert) {
        if (lane == 0) report(err, ERR_EXPERT_ID);
        return;
    }
    int t = pair / n_used;
    int xr_index = x_slots == 1 ? t : pair;
    const float* xr = x + x_off + (i64)xr_index * x_row_stride;
    const u8* wr = w + ((i64)e * n + row) * row_bytes(DT, k);
    if (quad_rows<DT>(w)) {
        float acc[1] = {0.0f};
        quad_sums<DT, 1>(wr, xr, 0, 1, k / 32, lane, acc);
        acc[0] = warp_sum(acc[0]);
        if (lane == 0) y[(i64)pair * n + row] = acc[0];
        return;
    }
    const float* xb = xr + lane;
    float acc = 0.0f;
    int n_chunks = k / 32;
    for (int c0 = 0; c0 < n_chunks; c0 += MM_BATCH) {
        float v[MM_BATCH];
#pragma unroll
        for (int u = 0; u < MM_BATCH; ++u)
            v[u] = c0 + u < n_chunks ? dq1<DT>(wr, c0 + u, lane) : 0.0f;
#pragma unroll
        for (int u = 0; u < MM_BATCH; ++u)
            if (c0 + u < n_chunks) acc += v[u] * xb[(c0 + u) * 32];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(i64)pair * n + row] = acc;
}

// quad_sums of W weight rows wr[i] over R activation rows at addresses xs[r] (the expert-grouped
// downs): each (weight row, activation row) takes the same operations in the same order as
// quad_sums gives that pair alone, so the same bits; an activation load serves W weight rows.
template <int DT, int W, int R>
__device__ __forceinline__ void quad_sums_gathered(const u8* const (&wr)[W], const float* const (&xs)[R], bool vec,
                                                   int rows, int n_chunks, int lane, float (&acc)[W][R]) {
    int q = lane >> 3, e = (lane & 7) * 4;
    for (int c = q; c < n_chunks; c += 4) {
        float v[W][4];
#pragma unroll
        for (int i = 0; i < W; ++i) dq4<DT>(wr[i], c, e, v[i]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < rows) {
                const float* xp = xs[r] + c * 32 + e;
                float4 a = vec ? *(const float4*)xp : make_float4(xp[0], xp[1], xp[2], xp[3]);
#pragma unroll
                for (int i = 0; i < W; ++i) {
                    acc[i][r] += v[i][0] * a.x;
                    acc[i][r] += v[i][1] * a.y;
                    acc[i][r] += v[i][2] * a.z;
                    acc[i][r] += v[i][3] * a.w;
                }
            }
        }
    }
}

// The group of pair p's expert (e = ids[p]) into list, in pair order (expert_group). Returns its
// count when this block leads the group (p is its first pair), else 0, and 0 with the error
// reported when e is outside the experts. Every thread of the block calls it.
__device__ __forceinline__ int lead_expert_group(const int* ids, int pairs, int p, int n_expert, int* err, int* list,
                                                 int& e) {
    e = ids[p];
    if (e < 0 || e >= n_expert) {
        if (threadIdx.x == 0) report(err, ERR_EXPERT_ID);
        return 0;
    }
    int count = expert_group(ids, pairs, e, list);
    return list[0] == p ? count : 0;
}

// Output rows a warp of the W-row quad kernels (matmul_<type>_quad, matmul_id_g) takes
// (source::QUAD_WARP_ROWS): a block of MM_WARPS warps covers MM_WARPS · QUAD_WARP_ROWS of them.
#define QUAD_WARP_ROWS 4

// A warp's output rows row0..row0 + QUAD_WARP_ROWS − 1 (those below n; wr their weight rows, rows
// past n repeating the last) of `count` activation rows, eight a pass: activation row j at
// x_of(j), its outputs to row out_of(j) of y. Each output has quad_sums' bits for its pair alone.
template <int DT, class XOf, class OutOf>
__device__ __forceinline__ void quad_rows_passes(const u8* const (&wr)[QUAD_WARP_ROWS], int row0, int n, int k,
                                                 int count, bool vec, XOf x_of, OutOf out_of, float* y, int lane) {
    for (int j0 = 0; j0 < count; j0 += 8) {
        int rows = count - j0 < 8 ? count - j0 : 8;
        const float* xs[8];
        float acc[QUAD_WARP_ROWS][8];
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            xs[r] = x_of(j0 + (r < rows ? r : 0));
#pragma unroll
            for (int i = 0; i < QUAD_WARP_ROWS; ++i) acc[i][r] = 0.0f;
        }
        quad_sums_gathered<DT, QUAD_WARP_ROWS, 8>(wr, xs, vec, rows, k / 32, lane, acc);
#pragma unroll
        for (int i = 0; i < QUAD_WARP_ROWS; ++i)
#pragma unroll
            for (int r = 0; r < 8; ++r) {
                if (r < rows) {
                    float s = warp_sum(acc[i][r]);
                    if (lane == 0 && row0 + i < n) y[(i64)out_of(j0 + r) * n + row0 + i] = s;
                }
            }
    }
}

// The weight rows row0.. of a quad kernel's warp, rows past n repeating the last.
template <int DT>
__device__ __forceinline__ void quad_weight_rows(const u8* w, int row0, int n, int k,
                                                 const u8* (&wr)[QUAD_WARP_ROWS]) {
#pragma unroll
    for (int i = 0; i < QUAD_WARP_ROWS; ++i) wr[i] = w + (i64)(row0 + i < n ? row0 + i : n - 1) * row_bytes(DT, k);
}

// matmul_<type>_quad (Q8_0 and Q5_0 rows at even addresses, batches of 2–16 rows: the host
// checks): grid (⌈n / (MM_WARPS · QUAD_WARP_ROWS)⌉, ⌈m / 8⌉), a warp QUAD_WARP_ROWS output rows
// of activation rows 8·y.. (at most eight), so an activation load serves QUAD_WARP_ROWS weight
// rows. (The warp-per-row matmul_<type>_r8 reads every activation row once per output row: the
// 26B-A4B's 2,112-wide FFN downs took 77 µs a launch for 16 rows under ncu, against 11 for one.)
// Every row has matmul_<type>_r1's bits.
template <int DT>
__device__ void matmul_quad_body(const u8* w, const float* x, float* y, int k, int n, int m, i64 x_off,
                                 i64 x_row_stride) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * MM_WARPS + warp) * QUAD_WARP_ROWS, m0 = blockIdx.y * 8;
    if (row0 >= n) return;
    const u8* wr[QUAD_WARP_ROWS];
    quad_weight_rows<DT>(w, row0, n, k, wr);
    const float* xb = x + x_off;
    bool vec = ((size_t)xb & 15) == 0 && (x_row_stride & 3) == 0;
    int count = m - m0 < 8 ? m - m0 : 8;
    quad_rows_passes<DT>(
        wr, row0, n, k, count, vec, [&](int j) { return xb + (i64)(m0 + j) * x_row_stride; },
        [&](int j) { return m0 + j; }, y, lane);
}

// matmul_id_g_<type> (Q8_0 and Q5_0 rows at even addresses: the host checks): matmul_id_<type>
// with the launch's (token, slot) pairs grouped by expert, for batches of a few tokens (verify).
// Grid (⌈n / (MM_WARPS · QUAD_WARP_ROWS)⌉, pairs): block (x, p) exits unless p is the first pair
// of its expert, whose block takes every pair of that expert (quad_rows_passes), so each picked
// expert's rows are read and dequantized once a launch, not once a pair. Every pair's output has
// the bits matmul_id gives it alone.
template <int DT>
__device__ void matmul_id_group_body(const u8* w, const float* x, const int* ids, float* y, int k, int n,
                                     int n_expert, int n_used, int x_slots, i64 x_off, i64 x_row_stride,
                                     int* err) {
    __shared__ int pairs[MOE_GROUP_MAX];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * MM_WARPS + warp) * QUAD_WARP_ROWS;
    // The search of lead_expert_group, written out: through the helper this kernel took 96
    // registers for Q5_0, not 80 (local nvcc; bench/results/session34-h200/compiler-figures.txt).
    int p = blockIdx.y, e = ids[p];
    if (e < 0 || e >= n_expert) {
        if (threadIdx.x == 0) report(err, ERR_EXPERT_ID);
        return;
    }
    const u8* we = w + (i64)e * n * row_bytes(DT, k);
    int count = expert_group(ids, gridDim.y, e, pairs);
    if (pairs[0] != p || row0 >= n) return;
    const u8* wr[QUAD_WARP_ROWS];
    quad_weight_rows<DT>(we, row0, n, k, wr);
    const float* xb = x + x_off;
    bool vec = ((size_t)xb & 15) == 0 && (x_row_stride & 3) == 0;
    quad_rows_passes<DT>(
        wr, row0, n, k, count, vec,
        [&](int j) {
            return xb + (i64)pair_x_row(pairs[j], n_used, x_slots) * x_row_stride;
        },
        [&](int j) { return pairs[j]; }, y, lane);
}

// Row gather: one thread per 32-element chunk of an output row.
template <int DT>
__device__ void get_rows_body(const u8* table, const int* ids, float* y, int k, int n_rows, int n_ids,
                              int* err) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    int chunks = k / 32;
    if (idx >= (i64)chunks * n_ids) return;
    int j = (int)(idx / chunks), c = (int)(idx % chunks);
    int id = ids[j];
    if (id < 0 || id >= n_rows) {
        report(err, ERR_ROW_ID);
        return;
    }
    float v[32];
    dq32<DT>(table + (i64)id * row_bytes(DT, k), c, v);
#pragma unroll
    for (int l = 0; l < 32; ++l) y[(i64)j * k + c * 32 + l] = v[l];
}

#define WEIGHT_KERNELS(SUFFIX, DT)                                                                   \
    extern "C" __global__ void matmul_##SUFFIX##_r1(const u8* w, const float* x, float* y, int k,   \
                                                    int n, int m, i64 x_off, i64 x_row_stride) {    \
        pdl_entry();                                                                                \
        matmul_body<DT, 1>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }                                                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_r2(const u8* w, const float* x, float* y, int k,   \
                                                    int n, int m, i64 x_off, i64 x_row_stride) {    \
        pdl_entry();                                                                                \
        matmul_body<DT, 2>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }                                                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_r4(const u8* w, const float* x, float* y, int k,   \
                                                    int n, int m, i64 x_off, i64 x_row_stride) {    \
        pdl_entry();                                                                                \
        matmul_body<DT, 4>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }                                                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_r8(const u8* w, const float* x, float* y, int k,   \
                                                    int n, int m, i64 x_off, i64 x_row_stride) {    \
        pdl_entry();                                                                                \
        matmul_body<DT, 8>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }                                                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_r16(const u8* w, const float* x, float* y, int k,  \
                                                     int n, int m, i64 x_off, i64 x_row_stride) {   \
        pdl_entry();                                                                                \
        matmul_body<DT, 16>(w, x, y, k, n, m, x_off, x_row_stride);                                 \
    }                                                                                                \
    extern "C" __global__ void matmul_id_##SUFFIX(const u8* w, const float* x, const int* ids,       \
                                                  float* y, int k, int n, int n_expert, int n_used,  \
                                                  int x_slots, i64 x_off, i64 x_row_stride,          \
                                                  int* err) {                                        \
        pdl_entry();                                                                                 \
        matmul_id_body<DT>(w, x, ids, y, k, n, n_expert, n_used, x_slots, x_off, x_row_stride, err); \
    }                                                                                                \
    extern "C" __global__ void get_rows_##SUFFIX(const u8* table, const int* ids, float* y, int k,   \
                                                 int n_rows, int n_ids, int* err) {                  \
        pdl_entry();                                                                                 \
        get_rows_body<DT>(table, ids, y, k, n_rows, n_ids, err);                                    \
    }

WEIGHT_KERNELS(f32, DT_F32)
WEIGHT_KERNELS(f16, DT_F16)
WEIGHT_KERNELS(bf16, DT_BF16)
WEIGHT_KERNELS(q4_0, DT_Q4_0)
WEIGHT_KERNELS(q4_1, DT_Q4_1)
WEIGHT_KERNELS(q5_0, DT_Q5_0)
WEIGHT_KERNELS(q5_1, DT_Q5_1)
WEIGHT_KERNELS(q8_0, DT_Q8_0)
WEIGHT_KERNELS(q2_k, DT_Q2_K)
WEIGHT_KERNELS(q3_k, DT_Q3_K)
WEIGHT_KERNELS(q4_k, DT_Q4_K)
WEIGHT_KERNELS(q5_k, DT_Q5_K)
WEIGHT_KERNELS(q6_k, DT_Q6_K)

#define MATMUL_ID_GROUP_KERNEL(SUFFIX, DT)                                                            \
    extern "C" __global__ void matmul_id_g_##SUFFIX(const u8* w, const float* x, const int* ids,       \
                                                    float* y, int k, int n, int n_expert, int n_used,  \
                                                    int x_slots, i64 x_off, i64 x_row_stride,          \
                                                    int* err) {                                        \
        pdl_entry();                                                                                   \
        matmul_id_group_body<DT>(w, x, ids, y, k, n, n_expert, n_used, x_slots, x_off, x_row_stride, err); \
    }
MATMUL_ID_GROUP_KERNEL(q8_0, DT_Q8_0)
MATMUL_ID_GROUP_KERNEL(q5_0, DT_Q5_0)

#define MATMUL_QUAD_KERNEL(SUFFIX, DT)                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_quad(const u8* w, const float* x, float* y, int k,   \
                                                      int n, int m, i64 x_off, i64 x_row_stride) {    \
        pdl_entry();                                                                                   \
        matmul_quad_body<DT>(w, x, y, k, n, m, x_off, x_row_stride);                                   \
    }
MATMUL_QUAD_KERNEL(q8_0, DT_Q8_0)
MATMUL_QUAD_KERNEL(q5_0, DT_Q5_0)

// Fast paths for Q4_K, Q6_K and Q8_0 (rows of a multiple of 256, activations 16-byte aligned).
// A warp walks its rows 256 weights (one group) per iteration; each lane decodes 8 weights of
// the group with wide loads, unpacking scales once, and dots them with two float4 of every
// activation row, at offsets x_first(lane) and x_first(lane) + X_SECOND within the group. A warp
// computes NR consecutive output rows, so each activation load serves NR weight rows. A decoder
// gives the group's byte size, the two activation offsets and `decode`.

__device__ __forceinline__ int scale_byte(u32 s0, u32 s1, u32 s2, int i) {
    u32 w = i < 4 ? s0 : (i < 8 ? s1 : s2);
    return (int)((w >> (8 * (i & 3))) & 0xff);
}

// Q4_K super-block (144 bytes): lane l decodes sub-block l / 4's scale and min and 8 nibbles
// (one 8-byte load): weights 8l..8l+7.
struct Q4KFast {
    static constexpr int GROUP_BYTES = 144;
    static constexpr int X_SECOND = 4;
    static __device__ __forceinline__ int x_first(int lane) { return lane * 8; }
    static __device__ __forceinline__ void decode(const u8* b, int lane, float* v) {
        int j = lane >> 2, o = (lane & 3) * 8, shift = (j & 1) * 4;
        u32 dd = *(const u32*)b;
        u32 s0 = *(const u32*)(b + 4), s1 = *(const u32*)(b + 8), s2 = *(const u32*)(b + 12);
        uint2 qq = *(const uint2*)(b + 16 + (j >> 1) * 32 + o);
        int sc, mn;
        if (j < 4) {
            sc = scale_byte(s0, s1, s2, j) & 63;
            mn = scale_byte(s0, s1, s2, j + 4) & 63;
        } else {
            sc = (scale_byte(s0, s1, s2, j + 4) & 0xF) | ((scale_byte(s0, s1, s2, j - 4) >> 6) << 4);
            mn = (scale_byte(s0, s1, s2, j + 4) >> 4) | ((scale_byte(s0, s1, s2, j) >> 6) << 4);
        }
        float dl = h2f((u16)(dd & 0xffff)) * (float)sc;
        float ml = h2f((u16)(dd >> 16)) * (float)mn;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            v[e] = dl * (float)((qq.x >> (8 * e + shift)) & 0xF) - ml;
            v[4 + e] = dl * (float)((qq.y >> (8 * e + shift)) & 0xF) - ml;
        }
    }
};

// Q6_K super-block (210 bytes): ql[128] low nibbles, qh[64] high bit pairs, 16 int8 scales, f16
// d last. Lane t takes half h = t / 16 and, in it, positions l0..l0+3 of ql run p: 4 weights
// from the low nibbles (offset 128h + 32p + l0) and 4 from the high nibbles (64 further).
struct Q6KFast {
    static constexpr int GROUP_BYTES = 210;
    static constexpr int X_SECOND = 64;
    static __device__ __forceinline__ int x_first(int lane) {
        return 128 * (lane >> 4) + 32 * ((lane >> 3) & 1) + (lane & 7) * 4;
    }
    static __device__ __forceinline__ void decode(const u8* b, int lane, float* v) {
        int h = lane >> 4, p = (lane >> 3) & 1, l0 = (lane & 7) * 4;
        int sc_lo = 8 * h + l0 / 16 + 2 * p, sc_hi = sc_lo + 4;
        int sh_lo = 2 * p, sh_hi = 4 + 2 * p;
        u32 ql = load_u32_2(b + 64 * h + 32 * p + l0);
        u32 qh = load_u32_2(b + 128 + 32 * h + l0);
        float d = h2f(*(const u16*)(b + 208));
        float dlo = d * (float)(signed char)b[192 + sc_lo];
        float dhi = d * (float)(signed char)b[192 + sc_hi];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            int qlo = (int)(((ql >> (8 * e)) & 0xF) | (((qh >> (8 * e + sh_lo)) & 3) << 4)) - 32;
            int qhi = (int)(((ql >> (8 * e + 4)) & 0xF) | (((qh >> (8 * e + sh_hi)) & 3) << 4)) - 32;
            v[e] = dlo * (float)qlo;
            v[4 + e] = dhi * (float)qhi;
        }
    }
};

// Q8_0, 8 blocks of 34 bytes per group: lane t reads 8 int8 of block t / 4 (four 2-byte loads)
// and that block's f16 scale: weights 8t..8t+7.
struct Q80Fast {
    static constexpr int GROUP_BYTES = 8 * 34;
    static constexpr int X_SECOND = 4;
    static __device__ __forceinline__ int x_first(int lane) { return lane * 8; }
    static __device__ __forceinline__ void decode(const u8* g, int lane, float* v) {
        const u8* b = g + (lane >> 2) * 34;
        int q = (lane & 3) * 8;
        float d = h2f(*(const u16*)b);
        u32 lo = load_u32_2(b + 2 + q), hi = load_u32_2(b + 6 + q);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            v[e] = d * (float)(signed char)((lo >> (8 * e)) & 0xff);
            v[4 + e] = d * (float)(signed char)((hi >> (8 * e)) & 0xff);
        }
    }
};

template <class D, int R, int NR>
__device__ void matmul_fast_body(const u8* w, const float* x, float* y, int k, int n, int m,
                                 i64 x_off, i64 x_row_stride) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * MM_WARPS + warp) * NR;
    int m0 = blockIdx.y * R;
    if (row0 >= n) return;
    int n_groups = k / 256;
    int rows = m - m0 < R ? m - m0 : R;
    const float* xb = x + x_off + (i64)m0 * x_row_stride + D::x_first(lane);
    float acc[NR][R];
#pragma unroll
    for (int i = 0; i < NR; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[i][r] = 0.0f;
#pragma unroll 2
    for (int g = 0; g < n_groups; ++g) {
        float v[NR][8];
#pragma unroll
        for (int i = 0; i < NR; ++i) {
            int row = row0 + i < n ? row0 + i : n - 1;
            D::decode(w + ((i64)row * n_groups + g) * D::GROUP_BYTES, lane, v[i]);
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < rows) {
                const float* xr = xb + (i64)r * x_row_stride + g * 256;
                float4 a = *(const float4*)xr, c = *(const float4*)(xr + D::X_SECOND);
#pragma unroll
                for (int i = 0; i < NR; ++i)
                    acc[i][r] += v[i][0] * a.x + v[i][1] * a.y + v[i][2] * a.z + v[i][3] * a.w +
                                 v[i][4] * c.x + v[i][5] * c.y + v[i][6] * c.z + v[i][7] * c.w;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < NR; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float s = warp_sum(acc[i][r]);
            if (lane == 0 && r < rows && row0 + i < n) y[(i64)(m0 + r) * n + row0 + i] = s;
        }
}

// matmul_<type>_fast_r<R> with NR output rows per warp (the host mirrors NR in
// `source::fast_rows_per_warp`).
#define FAST_KERNEL(SUFFIX, D, R, NR)                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_fast_r##R(const u8* w, const float* x, float* y,   \
                                                           int k, int n, int m, i64 x_off,          \
                                                           i64 x_row_stride) {                      \
        pdl_entry();                                                                                \
        matmul_fast_body<D, R, NR>(w, x, y, k, n, m, x_off, x_row_stride);                           \
    }
#define FAST_KERNELS(SUFFIX, D)                                                                      \
    FAST_KERNEL(SUFFIX, D, 1, 1)                                                                     \
    FAST_KERNEL(SUFFIX, D, 2, 2)                                                                     \
    FAST_KERNEL(SUFFIX, D, 4, 4)                                                                     \
    FAST_KERNEL(SUFFIX, D, 8, 4)                                                                     \
    FAST_KERNEL(SUFFIX, D, 16, 2)
FAST_KERNELS(q4_k, Q4KFast)
FAST_KERNELS(q6_k, Q6KFast)
FAST_KERNELS(q8_0, Q80Fast)

// Prefill path (more than 16 activation rows) for the types matvec_mma.cu does not take (and for
// all with SPECULA_MMA_PREFILL=0): tensor cores. A block computes a 64 (weight rows)
// x 64 (activation rows) tile: each 32-wide k step dequantizes the weight tile and converts the
// activations in shared memory, then four warps issue mma.sync m16n8k16 (f16 inputs, f32
// accumulation), each warp a 32 x 32 sub-tile. Every value is split into two f16 halves
// (v = hi + lo) and the product taken as hi·hi + hi·lo + lo·hi, which keeps f32-level accuracy
// (the mma units have ample headroom for three products).
#define TC_BN 64
#define TC_BM 64
#define TC_BK 32
#define TC_PAD 8

__device__ __forceinline__ u32 pack_h2(u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); }

__device__ __forceinline__ void mma_16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <int DT>
__device__ void matmul_tc_body(const u8* w, const float* x, float* y, int k, int n, int m, i64 x_off,
                               i64 x_row_stride) {
    __shared__ u16 ws[TC_BN][TC_BK + TC_PAD];
    __shared__ u16 wl[TC_BN][TC_BK + TC_PAD];
    __shared__ u16 xs[TC_BM][TC_BK + TC_PAD];
    __shared__ u16 xl[TC_BM][TC_BK + TC_PAD];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    int n0 = blockIdx.x * TC_BN, m0 = blockIdx.y * TC_BM;
    int wn = (warp & 1) * 32, wm = (warp >> 1) * 32;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    i64 rb = row_bytes(DT, k);
    for (int k0 = 0; k0 < k; k0 += TC_BK) {
        // Weight tile: threads 0..63 dequantize one row's 32-element chunk each.
        if (threadIdx.x < TC_BN) {
            int r = threadIdx.x;
            float v[32];
            if (n0 + r < n) {
                dq32<DT>(w + (i64)(n0 + r) * rb, k0 / 32, v);
            } else {
#pragma unroll
                for (int e = 0; e < 32; ++e) v[e] = 0.0f;
            }
#pragma unroll
            for (int e = 0; e < 32; ++e) {
                u16 hi = f2h(v[e]);
                ws[r][e] = hi;
                wl[r][e] = f2h(v[e] - h2f(hi));
            }
        }
        // Activation tile: 64 x 32 floats, 16 per thread.
        for (int idx = threadIdx.x; idx < TC_BM * TC_BK; idx += blockDim.x) {
            int r = idx / TC_BK, e = idx % TC_BK;
            float v = m0 + r < m ? x[x_off + (i64)(m0 + r) * x_row_stride + k0 + e] : 0.0f;
            u16 hi = f2h(v);
            xs[r][e] = hi;
            xl[r][e] = f2h(v - h2f(hi));
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                int ar = wn + i * 16;
                int c0 = kk + 2 * t, c1 = kk + 2 * t + 8;
                u32 a0 = pack_h2(ws[ar + g][c0], ws[ar + g][c0 + 1]);
                u32 a1 = pack_h2(ws[ar + g + 8][c0], ws[ar + g + 8][c0 + 1]);
                u32 a2 = pack_h2(ws[ar + g][c1], ws[ar + g][c1 + 1]);
                u32 a3 = pack_h2(ws[ar + g + 8][c1], ws[ar + g + 8][c1 + 1]);
                u32 l0 = pack_h2(wl[ar + g][c0], wl[ar + g][c0 + 1]);
                u32 l1 = pack_h2(wl[ar + g + 8][c0], wl[ar + g + 8][c0 + 1]);
                u32 l2 = pack_h2(wl[ar + g][c1], wl[ar + g][c1 + 1]);
                u32 l3 = pack_h2(wl[ar + g + 8][c1], wl[ar + g + 8][c1 + 1]);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    int bc = wm + j * 8 + g;
                    u32 b0 = pack_h2(xs[bc][c0], xs[bc][c0 + 1]);
                    u32 b1 = pack_h2(xs[bc][c1], xs[bc][c1 + 1]);
                    u32 m0_ = pack_h2(xl[bc][c0], xl[bc][c0 + 1]);
                    u32 m1_ = pack_h2(xl[bc][c1], xl[bc][c1 + 1]);
                    mma_16816(acc[i][j], l0, l1, l2, l3, b0, b1);
                    mma_16816(acc[i][j], a0, a1, a2, a3, m0_, m1_);
                    mma_16816(acc[i][j], a0, a1, a2, a3, b0, b1);
                }
            }
        }
        __syncthreads();
    }
    // acc[i][j]: rows (weight) wn + 16i + g (+8), columns (activation) wm + 8j + 2t (+1).
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int nr = n0 + wn + i * 16 + g + (e >= 2 ? 8 : 0);
                int mc = m0 + wm + j * 8 + 2 * t + (e & 1);
                if (nr < n && mc < m) y[(i64)mc * n + nr] = acc[i][j][e];
            }
}

#define TC_KERNEL(SUFFIX, DT)                                                                        \
    extern "C" __global__ void matmul_tc_##SUFFIX(const u8* w, const float* x, float* y, int k, int n, \
                                                  int m, i64 x_off, i64 x_row_stride) {              \
        pdl_entry();                                                                                 \
        matmul_tc_body<DT>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }
TC_KERNEL(f32, DT_F32)
TC_KERNEL(f16, DT_F16)
TC_KERNEL(bf16, DT_BF16)
TC_KERNEL(q4_0, DT_Q4_0)
TC_KERNEL(q4_1, DT_Q4_1)
TC_KERNEL(q5_0, DT_Q5_0)
TC_KERNEL(q5_1, DT_Q5_1)
TC_KERNEL(q8_0, DT_Q8_0)
TC_KERNEL(q2_k, DT_Q2_K)
TC_KERNEL(q3_k, DT_Q3_K)
TC_KERNEL(q4_k, DT_Q4_K)
TC_KERNEL(q5_k, DT_Q5_K)
TC_KERNEL(q6_k, DT_Q6_K)

// ---- The GEMM route (`CudaBackend::launch_gemm`): long products (prefill chunks) run as one
// cuBLAS f16 GEMM with f32 accumulation, after these two kernels have written both operands as
// f16: `rows` weight rows dequantized (rounded once, from the f32 value `dq32` computes), and the
// activation rows. One thread per 32-element chunk; chunk i of the weights is chunk i % (k/32)
// of row i / (k/32), written to out[32 i ..].
template <int DT>
__device__ void dequant_f16_body(const u8* w, int k, i64 rows, u16* out) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 per_row = k / 32;
    if (i >= rows * per_row) return;
    float v[32];
    dq32<DT>(w + (i / per_row) * row_bytes(DT, k), (int)(i % per_row), v);
    uint4* o = (uint4*)(out + 32 * i);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float* s = v + 8 * j;
        o[j] = make_uint4(pack_h2(f2h(s[0]), f2h(s[1])), pack_h2(f2h(s[2]), f2h(s[3])),
                          pack_h2(f2h(s[4]), f2h(s[5])), pack_h2(f2h(s[6]), f2h(s[7])));
    }
}

#define DEQUANT_F16_KERNEL(SUFFIX, DT)                                                                 \
    extern "C" __global__ void dequant_f16_##SUFFIX(const u8* w, int k, i64 rows, u16* out) {         \
        pdl_entry();                                                                                  \
        dequant_f16_body<DT>(w, k, rows, out);                                                        \
    }
// Not f32 or bf16 weights (source::gemm_weight_type).
DEQUANT_F16_KERNEL(f16, DT_F16)
DEQUANT_F16_KERNEL(q4_0, DT_Q4_0)
DEQUANT_F16_KERNEL(q4_1, DT_Q4_1)
DEQUANT_F16_KERNEL(q5_0, DT_Q5_0)
DEQUANT_F16_KERNEL(q5_1, DT_Q5_1)
DEQUANT_F16_KERNEL(q8_0, DT_Q8_0)
DEQUANT_F16_KERNEL(q2_k, DT_Q2_K)
DEQUANT_F16_KERNEL(q3_k, DT_Q3_K)
DEQUANT_F16_KERNEL(q4_k, DT_Q4_K)
DEQUANT_F16_KERNEL(q5_k, DT_Q5_K)
DEQUANT_F16_KERNEL(q6_k, DT_Q6_K)

// m rows of k f32 activations (x_stride apart from x_off) as a dense m × k f16 matrix, one block
// per row. Each row is scaled by a power of two first: e is the smallest e ≥ 0 with
// max |x| ≤ 32768 · 2^e, the row is written as f16(x · 2^-e) (an exact scaling, then the one
// rounding) and row_scale[row] = 2^e, which `gemm_rescale` multiplies the product's output row
// by. So activations past the f16 range (a GLU output can reach them) stay finite and keep f16's
// relative precision; rows within it (e = 0) are untouched. `vec4`: k, x_off and x_stride
// multiples of 4 (16-byte loads).
extern "C" __global__ void rows_to_f16(const float* x, i64 x_off, i64 x_stride, int k, int vec4, u16* out,
                                       float* row_scale) {
    pdl_entry();
    __shared__ float part[32];
    const float* row = x + x_off + (i64)blockIdx.x * x_stride;
    u16* o = out + (i64)blockIdx.x * k;
    float mx = 0.0f;
    for (int c = threadIdx.x; c < k; c += blockDim.x) mx = fmaxf(mx, fabsf(row[c]));
    for (int d = 16; d > 0; d >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) part[warp] = mx;
    __syncthreads();
    if (warp == 0) {
        mx = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        for (int d = 16; d > 0; d >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
        if (lane == 0) part[0] = mx;
    }
    __syncthreads();
    mx = part[0];
    int e = 0;
    while (e < 128 && mx > ldexpf(32768.0f, e)) ++e;
    float s = ldexpf(1.0f, -e);
    if (threadIdx.x == 0) row_scale[blockIdx.x] = ldexpf(1.0f, e);
    if (vec4) {
        for (int c = 4 * threadIdx.x; c < k; c += 4 * blockDim.x) {
            float4 v = *(const float4*)(row + c);
            *(uint2*)(o + c) = make_uint2(pack_h2(f2h(v.x * s), f2h(v.y * s)), pack_h2(f2h(v.z * s), f2h(v.w * s)));
        }
        return;
    }
    for (int c = threadIdx.x; c < k; c += blockDim.x) o[c] = f2h(row[c] * s);
}

// y[row][0..n) *= row_scale[row] for the rows `rows_to_f16` scaled (one block per row; rows with
// scale 1 return at once).
extern "C" __global__ void gemm_rescale(float* y, int n, const float* row_scale) {
    pdl_entry();
    float s = row_scale[blockIdx.x];
    if (s == 1.0f) return;
    float* r = y + (i64)blockIdx.x * n;
    for (int c = threadIdx.x; c < n; c += blockDim.x) r[c] *= s;
}
