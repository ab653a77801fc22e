// Matrix products and row gathers over weights of any supported type.
//
// matmul: one warp per output row n; its lanes walk the row's 32-element chunks, dequantize each
// once into registers and use it for every activation row of the group (up to MM_ROWS), so a
// weight byte is read once for a decode step or a verify batch of up to MM_ROWS tokens.

#define MM_ROWS 16
#define MM_WARPS 4

template <int DT, int R>
__device__ void matmul_body(const u8* w, const float* x, float* y, int k, int n, int m,
                            i64 x_off, i64 x_row_stride) {
    // Lane l takes element l of every 32-element chunk: a warp reads each chunk's weight bytes
    // and each activation row's 32 floats as one coalesced access. R (the activation rows of
    // this block, a compile-time bound) keeps the accumulators in registers with no work for
    // absent rows.
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
#pragma unroll 4
    for (int c = 0; c < n_chunks; ++c) {
        float v = dq1<DT>(wr, c, lane);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < rows) acc[r] += v * xb[(i64)r * x_row_stride + c * 32];
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r < rows) y[(i64)(m0 + r) * n + row] = s;
    }
}

// Expert-indexed product: block (x, pair) computes MM_WARPS output rows of slot pair = j + t * n_used.
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
    float acc = 0.0f;
    for (int c = lane; c < k / 32; c += 32) {
        float v[32];
        dq32<DT>(wr, c, v);
#pragma unroll
        for (int j = 0; j < 32; ++j) acc += v[j] * xr[c * 32 + j];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(i64)pair * n + row] = acc;
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
        matmul_body<DT, 1>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }                                                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_r4(const u8* w, const float* x, float* y, int k,   \
                                                    int n, int m, i64 x_off, i64 x_row_stride) {    \
        matmul_body<DT, 4>(w, x, y, k, n, m, x_off, x_row_stride);                                  \
    }                                                                                                \
    extern "C" __global__ void matmul_##SUFFIX##_r16(const u8* w, const float* x, float* y, int k,  \
                                                     int n, int m, i64 x_off, i64 x_row_stride) {   \
        matmul_body<DT, 16>(w, x, y, k, n, m, x_off, x_row_stride);                                 \
    }                                                                                                \
    extern "C" __global__ void matmul_id_##SUFFIX(const u8* w, const float* x, const int* ids,       \
                                                  float* y, int k, int n, int n_expert, int n_used,  \
                                                  int x_slots, i64 x_off, i64 x_row_stride,          \
                                                  int* err) {                                        \
        matmul_id_body<DT>(w, x, ids, y, k, n, n_expert, n_used, x_slots, x_off, x_row_stride, err); \
    }                                                                                                \
    extern "C" __global__ void get_rows_##SUFFIX(const u8* table, const int* ids, float* y, int k,   \
                                                 int n_rows, int n_ids, int* err) {                  \
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

// Q4_K fast path (rows of a multiple of 256, activations 16-byte aligned). Per iteration a warp
// takes one 256-weight super-block: lane l decodes sub-block l / 4's scale and min once, loads 8
// bytes of nibbles (8 weights) in one access and two float4 of each activation row.
__device__ __forceinline__ int scale_byte(u32 s0, u32 s1, u32 s2, int i) {
    u32 w = i < 4 ? s0 : (i < 8 ? s1 : s2);
    return (int)((w >> (8 * (i & 3))) & 0xff);
}

template <int R>
__device__ void matmul_q4_k_fast_body(const u8* w, const float* x, float* y, int k, int n, int m,
                                      i64 x_off, i64 x_row_stride) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * MM_WARPS + warp;
    int m0 = blockIdx.y * R;
    if (row >= n) return;
    int n_sb = k / 256;
    const u8* wr = w + (i64)row * n_sb * 144;
    int j = lane >> 2, o = (lane & 3) * 8, shift = (j & 1) * 4;
    int rows = m - m0 < R ? m - m0 : R;
    const float* xb = x + x_off + (i64)m0 * x_row_stride + j * 32 + o;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
#pragma unroll 2
    for (int sb = 0; sb < n_sb; ++sb) {
        const u8* b = wr + sb * 144;
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
        float v[8];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            v[e] = dl * (float)((qq.x >> (8 * e + shift)) & 0xF) - ml;
            v[4 + e] = dl * (float)((qq.y >> (8 * e + shift)) & 0xF) - ml;
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r < rows) {
                const float4* xr = (const float4*)(xb + (i64)r * x_row_stride + sb * 256);
                float4 a = xr[0], c = xr[1];
                acc[r] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * c.x + v[5] * c.y + v[6] * c.z + v[7] * c.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r < rows) y[(i64)(m0 + r) * n + row] = s;
    }
}

#define Q4K_FAST(R)                                                                                  \
    extern "C" __global__ void matmul_q4_k_fast_r##R(const u8* w, const float* x, float* y, int k,   \
                                                     int n, int m, i64 x_off, i64 x_row_stride) {    \
        matmul_q4_k_fast_body<R>(w, x, y, k, n, m, x_off, x_row_stride);                             \
    }
Q4K_FAST(1)
Q4K_FAST(4)
Q4K_FAST(16)
