// Probe: a Q4_K verify product (9–16 activation rows) in the limbs' exact-integer arithmetic on
// wgmma, against the runtime's own limb kernel (`matmul_q4_k_limb_n8`, compiled here from
// crates/kernels/cu): the same bits for every output, and the time of each, beside the default
// split-f16 rows kernel (`matmul_q4_k_mma_m2n2`) that a verify batch runs today.
//
// Not part of the runtime. Built with nvcc (bench/NOTES.md has the PyPI-wheel recipe):
//
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a -Icrates/kernels/cu -Ibench/probes \
//        -o /tmp/wgmma_limbs bench/probes/wgmma_limbs.cu && /tmp/wgmma_limbs
//
// Why: the limbs make a decode step 8 % faster (bench/NOTES.md, twenty-fifth session) but cost a
// verify batch 1.4–1.7× on mma.sync, where each activation row takes four int8 columns. On wgmma a
// warpgroup's 64 weight rows meet all 16 rows × 4 limbs as one n64 B from shared memory, and the
// 6-bit scale splits into the A operands (lo·q, hi·q ≤ 225) so a group is two exact integer
// chains with no per-sub-block fold.
//
// The kernel (q4k_limb_wg): WGS warpgroups a block on 64 weight rows each (warp w: rows 16w..),
// walking k-slices as the limb kernel's warps do (warpgroup j: slices j, j + WGS, ...), each
// group's B staged from an image (limb_prepare_b: the limbs as K-major 8 × 16-byte core matrices
// per sub-block, the limbs' lane sums as f16 core matrices for the mins, the 16 group scales) by
// 16-byte cp.async into one of two buffers. Per sub-block two chained wgmma m64n64k32 u8 × s8 (lo
// and hi scale parts); the mins one chain of two wgmma m64n64k16 f16 on the lane sums (exact);
// then, per column, d·2^e · P − dmin·2^e · M as the limb kernel folds it. Column n = row (n / 4) ×
// limb (n % 4): a thread's accumulators are the limb kernel's lane layout (columns 2t, 2t + 1 of
// each n8 tile), so its limb combination (limb_columns) and slice order apply unchanged.
#define Q4K_HL 0
#define WGV_LIB
#include "wgmma_verify.cu"

#ifndef __CUDACC_RTC__
#define LB_LIMB_BYTES (8 * 2048)               // 8 sub-blocks × [n group 8][k half 2][n 8][16 B]
#define LB_SUMS_BYTES (2 * 2048)               // 2 halves × the same geometry in f16
#define LB_BYTES (LB_LIMB_BYTES + LB_SUMS_BYTES + 128)  // + 16 group scales (padded)

// wgmma_s8<N>: d (N / 2 s32 a thread: columns 8j + 2t, + 1 of rows g, g + 8) = A·B (+ d when
// acc), A u8 from registers (the m16n8k32 fragment layout per warp), B s8 from shared memory:
// its descriptor as the low word dlo and the constant high word DHI (SBO 256, no swizzle), so a
// sub-block's is one add to the stage's. wgmma_f16<N>: the f16 counterpart (f32 accumulators)
// for the mins. N = 64 for 9–16 rows (16 rows × 4 limbs); 8, 16 and 32 for batches of 2, 4 and
// 8 rows. (The runtime's wgmma wrappers take whole 64-bit descriptors since the forty-first
// session; these keep the two words they were measured with.)
#define DHI (256 >> 4)
template <int N>
__device__ __forceinline__ void wgmma_s8(int* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 dlo, int acc);
template <int N>
__device__ __forceinline__ void wgmma_f16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 dlo, int acc);

// The accumulators' operands for R = N / 2 registers (constraint c), and per R the asm text of
// the descriptor (operands R + 4, + 6) and predicate (R + 5) set-up and of the register lists.
#define WG_OUT4(c) "+" c(d[0]), "+" c(d[1]), "+" c(d[2]), "+" c(d[3])
#define WG_OUT8(c) WG_OUT4(c), "+" c(d[4]), "+" c(d[5]), "+" c(d[6]), "+" c(d[7])
#define WG_OUT16(c) \
    WG_OUT8(c), "+" c(d[8]), "+" c(d[9]), "+" c(d[10]), "+" c(d[11]), "+" c(d[12]), "+" c(d[13]), "+" c(d[14]), "+" c(d[15])
#define WG_OUT32(c)                                                                                                   \
    WG_OUT16(c), "+" c(d[16]), "+" c(d[17]), "+" c(d[18]), "+" c(d[19]), "+" c(d[20]), "+" c(d[21]), "+" c(d[22]),  \
        "+" c(d[23]), "+" c(d[24]), "+" c(d[25]), "+" c(d[26]), "+" c(d[27]), "+" c(d[28]), "+" c(d[29]),          \
        "+" c(d[30]), "+" c(d[31])
#define WG_SETUP4 "setp.ne.b32 p, %9, 0;\nmov.b32 hi, %10;\nmov.b64 dd, {%8, hi};\n"
#define WG_REGS4 "{%0,%1,%2,%3}, {%4,%5,%6,%7}"
#define WG_SETUP8 "setp.ne.b32 p, %13, 0;\nmov.b32 hi, %14;\nmov.b64 dd, {%12, hi};\n"
#define WG_REGS8 "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}"
#define WG_SETUP16 "setp.ne.b32 p, %21, 0;\nmov.b32 hi, %22;\nmov.b64 dd, {%20, hi};\n"
#define WG_REGS16 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}"
#define WG_SETUP32 "setp.ne.b32 p, %37, 0;\nmov.b32 hi, %38;\nmov.b64 dd, {%36, hi};\n"
#define WG_REGS32                                                                                    \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25," \
    "%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}"

// One specialisation: FN<N> on T accumulators (constraint C), PTX shape suffix SHAPE (after
// "m64n<N>"), trailing operands TAIL (the f16 form's scales and layout).
#define WG_DEF(FN, T, C, N, R, SHAPE, TAIL)                                                                  \
    template <>                                                                                              \
    __device__ __forceinline__ void FN<N>(T * d, u32 a0, u32 a1, u32 a2, u32 a3, u32 dlo, int acc) {         \
        asm volatile("{\n.reg .pred p;\n.reg .b64 dd;\n.reg .b32 hi;\n" WG_SETUP##R                          \
                     "wgmma.mma_async.sync.aligned.m64n" #N SHAPE " " WG_REGS##R ", dd, p" TAIL ";\n}\n"     \
                     : WG_OUT##R(C)                                                                          \
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(dlo), "r"(acc), "n"(DHI));                   \
    }
#define WG_DEF_BOTH(N, R)                                            \
    WG_DEF(wgmma_s8, int, "r", N, R, "k32.s32.u8.s8", "")           \
    WG_DEF(wgmma_f16, float, "f", N, R, "k16.f32.f16.f16", ", 1, 1, 0")
WG_DEF_BOTH(8, 4)
WG_DEF_BOTH(16, 8)
WG_DEF_BOTH(32, 16)
WG_DEF_BOTH(64, 32)

// Group grp's image (one block of 256 threads a group): core-matrix row q (16 bytes) of the limbs
// (sub-block s, n group nb, k half kb, row i: column n = 8nb + i = batch row n / 4 (rows past m
// repeat row 0) × limb n % 4; k half 0 holds lane t's elements 8t..8t+3 for t = 0..3, half 1
// elements 8t+4..8t+7: the m16n8k32 k order the A fragments follow), then of the lane sums
// (half h, as the limb kernel's ls.x/ls.y (h = 0) and ls.z/ls.w (h = 1) feed its two mins mma),
// then the 16 rows' group scales.
__global__ void limb_prepare_b(const uint4* xs, u8* img, int k, int m) {
    int grp = blockIdx.x;
    const u8* base = limb_base((void*)xs, k, m);
    const u8* limbs = limb_rows((u8*)base, k, m);
    const u16* lsums = limb_lsums((u8*)base);
    const float* scales = limb_scales((u8*)base, k, m);
    u8* out = img + (i64)grp * LB_BYTES;
    for (int q = threadIdx.x; q < 1024 + 256; q += blockDim.x) {
        int i = q & 7, kb = (q >> 3) & 1, nb = (q >> 4) & 7, n = 8 * nb + i;
        int r = n >> 2 < m ? n >> 2 : 0, j = n & 3;
        i64 lrow = ((i64)grp * m + r) * 4 + j;
        u32 v[4];
        if (q < 1024) {
            int s = q >> 7;
#pragma unroll
            for (int t = 0; t < 4; ++t) v[t] = *(const u32*)(limbs + lrow * 256 + limb_word(s, t) + 4 * kb);
            *(uint4*)(out + s * 2048 + nb * 256 + kb * 128 + i * 16) = make_uint4(v[0], v[1], v[2], v[3]);
        } else {
            int h = (q - 1024) >> 7;
#pragma unroll
            for (int t = 0; t < 4; ++t) v[t] = *(const u32*)(lsums + lrow * 32 + 8 * t + 4 * h + 2 * kb);
            *(uint4*)(out + LB_LIMB_BYTES + h * 2048 + nb * 256 + kb * 128 + i * 16) =
                make_uint4(v[0], v[1], v[2], v[3]);
        }
    }
    if (threadIdx.x < 16)
        ((float*)(out + LB_LIMB_BYTES + LB_SUMS_BYTES))[threadIdx.x] =
            scales[(i64)grp * m + (threadIdx.x < m ? threadIdx.x : 0)];
}

// A thread's 32 running sums: in registers, or (SmemAcc) in shared memory at p[128·x] (the
// warpgroup's threads side by side, so no bank conflicts), which frees 32 registers.
template <int N>
struct RegAcc {
    float v[N / 2];
    __device__ __forceinline__ float& operator[](int x) { return v[x]; }
};
struct SmemAcc {
    float* p;
    __device__ __forceinline__ float& operator[](int x) { return p[128 * x]; }
};

// acc (32 floats, the thread's columns of rows g, g + 8) += group grp's share from the staged
// image st and the weights T, in the limb kernel's arithmetic. WAIT: 0 commits the 16 integer
// wgmma as one group (every A fragment stays live until it completes), 1 lets one sub-block's pair
// run while the next one's A is built, 2 waits for each pair.
template <int N, int WAIT, class Acc>
__device__ __forceinline__ void limb_wg_group(const u8* st, const Q4KTile& T, Acc& acc) {
    int t = threadIdx.x & 3;
    u32 sc[2][2], mn[2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r) q4k_unpack(T.s[r], sc[r], mn[r]);
    u32 lo[2][2], hi[2][2];
    q4k_scale_parts(sc, lo, hi);
    const float* gsc = (const float*)(st + LB_LIMB_BYTES + LB_SUMS_BYTES);
    const u32 dlo = (u32)wg_desc(st, 128, 256);  // + 16 per 256 bytes (the address field counts 16)
    float d0 = h2f((u16)(T.dd[0] & 0xffff)), dm0 = h2f((u16)(T.dd[0] >> 16));
    float d1 = h2f((u16)(T.dd[1] & 0xffff)), dm1 = h2f((u16)(T.dd[1] >> 16));
    // The mins first: acc − dmin·2^e·M is the inner FMA of the limb kernel's fold, so folding it
    // before the integer chains run gives the same bits and frees M's registers for them.
    {
        float tmn[N / 2];
        wg_fence();
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            u32 a[4];
            q4k_min_frag(mn[0][h], mn[1][h], a);
            wgmma_f16<N>(tmn, a[0], a[1], a[2], a[3], dlo + (LB_LIMB_BYTES + h * 2048) / 16, h);
        }
        wg_commit_wait0();
#pragma unroll
        for (int jn = 0; jn < N / 8; ++jn) {
            float gs = gsc[2 * jn + (t >> 1)];
            float dms0 = __fmul_rn(dm0, gs), dms1 = __fmul_rn(dm1, gs);
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[4 * jn + e] = __fmaf_rn(-(e < 2 ? dms0 : dms1), tmn[4 * jn + e], acc[4 * jn + e]);
        }
    }
    int P[N / 2], C[N / 2];
    wg_fence();
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        u32 al[2][2], ah[2][2];
        q4k_split_frags(T, s, lo, hi, al, ah);
        wgmma_s8<N>(P, al[0][0], al[1][0], al[0][1], al[1][1], dlo + 128 * s, s);
        wgmma_s8<N>(C, ah[0][0], ah[1][0], ah[0][1], ah[1][1], dlo + 128 * s, s);
        if (WAIT) {
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            if (WAIT == 1)
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            else
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        }
    }
    wg_commit_wait0();
#pragma unroll
    for (int jn = 0; jn < N / 8; ++jn) {
        float gs = gsc[2 * jn + (t >> 1)];
        float ds0 = __fmul_rn(d0, gs), ds1 = __fmul_rn(d1, gs);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            int x = 4 * jn + e;
            acc[x] = __fmaf_rn(e < 2 ? ds0 : ds1, (float)(P[x] + 16 * C[x]), acc[x]);
        }
    }
}

// A finished slice: each output's four limb columns combined as the limb kernel's limb_columns
// does (lanes t and t ^ 1 hold limbs 0, 1 and 2, 3), handed to put(batch row, weight row of the
// warp's 16, value) by the even lanes; then the sums restart from zero.
template <int N, class Acc, class F>
__device__ __forceinline__ void limb_slice_done(Acc& acc, F&& put) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int jn = 0; jn < N / 8; ++jn)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float c0 = acc[4 * jn + 2 * half], c1 = acc[4 * jn + 2 * half + 1];
            float v = (t & 1) ? __fmaf_rn(c1, 0x1p-21f, __fmul_rn(c0, 0x1p-14f)) : __fmaf_rn(c1, 0x1p-7f, c0);
            float o = __shfl_xor_sync(0xffffffffu, v, 1);
            if (!(t & 1)) put(2 * jn + (t >> 1), g + 8 * half, __fadd_rn(v, o));
        }
#pragma unroll
    for (int x = 0; x < N / 2; ++x) acc[x] = 0.0f;
}

// One warpgroup's walk over slices first, first + step, ... (below kw), each's groups in order:
// a group's B staged by cp.async into one of the two buffers at bufs while the previous group is
// multiplied, the weights of rows16 (this lane's rows g, g + 8) loaded a group ahead (AHEAD) or
// just before use, the group multiplied into the sums (limb_wg_group<WAIT>), and each finished
// slice's combined values handed to put(slice, batch row, weight row of the warp's 16, value).
// bar: the warpgroup's named barrier.
template <int N, bool AHEAD, int WAIT, class Acc, class Put>
__device__ __forceinline__ void limb_walk(const u8* w, const u8* img, u8* bufs, int first, int step, int kw,
                                          int n_groups, const int (&rows16)[2], int bar, Acc& acc, Put&& put) {
    int tid = threadIdx.x & 127, t = threadIdx.x & 3;
    auto stage = [&](u8* buf, int grp) {
        const u8* src = img + (i64)grp * LB_BYTES;
        for (int i = tid; i < LB_BYTES / 16; i += 128) {
            u32 d = static_cast<u32>(__cvta_generic_to_shared(buf + 16 * i));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src + 16 * i) : "memory");
        }
    };
    int v = first, grp = first;
    wg_walk_skip(v, grp, step, kw, n_groups);
#pragma unroll
    for (int x = 0; x < N / 2; ++x) acc[x] = 0.0f;
    int buf = 0;
    Q4KTile T, TN;
    if (v < kw) {
        stage(bufs, grp);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        if (AHEAD) q4k_load(T, w, rows16[0], rows16[1], n_groups, grp, t);
    }
    while (v < kw) {
        int v1 = v, g1 = grp;
        wg_walk_next(v1, g1, step, kw, n_groups);
        asm volatile("bar.sync %0, 128;\n" ::"r"(bar) : "memory");  // the other buffer is free
        if (v1 < kw) {
            stage(bufs + (buf ^ 1) * LB_BYTES, g1);
            if (AHEAD) q4k_load(TN, w, rows16[0], rows16[1], n_groups, g1, t);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        if (!AHEAD) q4k_load(T, w, rows16[0], rows16[1], n_groups, grp, t);
        asm volatile("cp.async.wait_group 1;\n" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync %0, 128;\n" ::"r"(bar) : "memory");
        limb_wg_group<N, WAIT>(bufs + buf * LB_BYTES, T, acc);
        if (AHEAD) T = TN;
        if (v1 != v) limb_slice_done<N>(acc, [&](int tok, int r, float x) { put(v, tok, r, x); });
        v = v1;
        grp = g1;
        buf ^= 1;
    }
}

// y = W·x for m (9..16) rows with limbs; grid ⌈n / 64⌉ blocks of 128·WGS threads; dynamic shared
// memory: WGS × 2 × LB_BYTES of stages, then the slices' values [slice][16 rows][64 weight rows].
// AHEAD and WAIT as for limb_walk; ACC_SMEM: the running sums in shared memory (SmemAcc, 16 KB a
// warpgroup after the slices' values).
template <int WGS, bool AHEAD = false, int WAIT = 0, bool ACC_SMEM = false, int N = 64>
__global__ void __launch_bounds__(128 * WGS, 1)
    q4k_limb_wg(const u8* w, const u8* img, float* y, int k, int n, int m, int kw) {
    extern __shared__ __align__(128) u8 sm[];
    int wg = threadIdx.x >> 7, tid = threadIdx.x & 127, warp = tid >> 5;
    float* red = (float*)(sm + WGS * 2 * LB_BYTES);  // [slice][16][64]
    int n_groups = k / 256;
    int rows[1][2];
    q4k_tile_rows<1>(min(blockIdx.x * 64 + warp * 16, n - 1), n, rows);
    // Empty slices hold +0.0, as the limb kernel's idle warps add.
    for (int s = wg; s < kw; s += WGS)
        if (s >= n_groups)
            for (int i = tid; i < 16 * 64; i += 128) red[s * 1024 + i] = 0.0f;
    auto park = [&](int v, int tok, int r, float x) { red[v * 1024 + tok * 64 + warp * 16 + r] = x; };
    if constexpr (ACC_SMEM) {
        SmemAcc acc{(float*)(sm + WGS * 2 * LB_BYTES + 8 * 1024 * 4) + wg * 32 * 128 + tid};
        limb_walk<N, AHEAD, WAIT>(w, img, sm + wg * 2 * LB_BYTES, wg, WGS, kw, n_groups, rows[0], 1 + wg, acc, park);
    } else {
        RegAcc<N> acc;
        limb_walk<N, AHEAD, WAIT>(w, img, sm + wg * 2 * LB_BYTES, wg, WGS, kw, n_groups, rows[0], 1 + wg, acc, park);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 16 * 64; i += blockDim.x) {
        int tok = i / 64, r = i % 64, row = blockIdx.x * 64 + r;
        float s_ = 0.0f;
        for (int u = 0; u < kw; ++u) s_ = __fadd_rn(s_, red[u * 1024 + i]);
        if (row < n && tok < m) y[(i64)tok * n + row] = s_;
    }
}

// q4k_limb_wgc: one warpgroup a CTA (so up to two CTAs an SM at 255 registers) and the kw slices
// spread over a cluster of S CTAs on the same 64 rows (CTA r: slices r, r + S, ...), so a product
// fills the machine (84 clusters of 64 rows at n 5,376 would leave 48 SMs idle at one CTA each).
// Each slice's combined values go straight into CTA 0's shared memory (st.shared::cluster); CTA 0
// adds the kw slices in slice order: the limb kernel's sum, so the same bits.
template <int S>
__global__ void __cluster_dims__(S, 1, 1) __launch_bounds__(128, 1)
    q4k_limb_wgc(const u8* w, const u8* img, float* y, int k, int n, int m, int kw) {
    extern __shared__ __align__(128) u8 sm[];
    int tid = threadIdx.x, warp = tid >> 5;
    int rank = wg_cluster_rank();
    float* red = (float*)(sm + 2 * LB_BYTES);  // CTA 0's: [slice][16][64]
    int tile = blockIdx.x / S;
    int n_groups = k / 256;
    int rows[1][2];
    q4k_tile_rows<1>(min(tile * 64 + warp * 16, n - 1), n, rows);
    if (rank == 0)
        for (int s_ = n_groups; s_ < kw; ++s_)
            for (int i = tid; i < 16 * 64; i += 128) red[s_ * 1024 + i] = 0.0f;
    wg_cluster_sync();  // every CTA of the cluster runs before any writes into CTA 0
    RegAcc<64> acc;
    limb_walk<64, true, 0>(w, img, sm, rank, S, kw, n_groups, rows[0], 1, acc, [&](int v, int tok, int r, float x) {
        st_cluster(&red[v * 1024 + tok * 64 + warp * 16 + r], 0, x);
    });
    wg_cluster_sync();
    if (rank == 0)
        for (int i = tid; i < 16 * 64; i += 128) {
            int tok = i / 64, r = i % 64, row = tile * 64 + r;
            float s_ = 0.0f;
            for (int u = 0; u < kw; ++u) s_ = __fadd_rn(s_, red[u * 1024 + i]);
            if (row < n && tok < m) y[(i64)tok * n + row] = s_;
        }
}

#include "probe_host.h"

static ProbeRng rng{0x11b5eed5};

int main() {
    const int k = 5376, kw = 8, n_groups = k / 256;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("%s\n", prop.name);
    for (int n : {8192, 5376, 21504}) {
        size_t bytes = (size_t)n * n_groups * 144;
        int copies = (int)((400u << 20) / bytes) + 1;  // past L2
        std::vector<u8> wv = probe_q4k_weights(rng, (size_t)n * n_groups);
        const int m_max = 16;
        std::vector<float> x((size_t)m_max * k);
        for (auto& v : x) v = rng.next_f();
        u8 *dw, *img;
        float *dx, *y_ref, *y_new, *y_f16;
        uint4* xs;
        CHECK(cudaMalloc(&dw, bytes * copies));
        for (int c = 0; c < copies; ++c) CHECK(cudaMemcpy(dw + bytes * c, wv.data(), bytes, cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&dx, x.size() * 4));
        CHECK(cudaMalloc(&xs, (size_t)m_max * k * 12 + 65536));
        CHECK(cudaMalloc(&img, (size_t)n_groups * LB_BYTES));
        CHECK(cudaMalloc(&y_ref, (size_t)m_max * n * 4));
        CHECK(cudaMalloc(&y_new, (size_t)m_max * n * 4));
        CHECK(cudaMalloc(&y_f16, (size_t)m_max * n * 4));
        CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
        auto time_us = [&](auto f) { return probe_time_us(f, copies); };
        auto smem = [](int wgs) { return wgs * 2 * LB_BYTES + 8 * 1024 * 4; };
        auto smem_acc = [](int wgs) { return wgs * 2 * LB_BYTES + 8 * 1024 * 4 + wgs * 32 * 128 * 4; };
        const int smemc = 2 * LB_BYTES + 8 * 1024 * 4;
        for (int m : {2, 5, 8, 9, 16}) {
            mmv_prepare_x<<<dim3((k / 8 + 127) / 128, m), 128>>>(dx, 0, k, k, m, xs, 1);
            CHECK(cudaGetLastError());
            limb_prepare_b<<<n_groups, 256>>>(xs, img, k, m);
            CHECK(cudaGetLastError());
            auto run_ref = [&](int c) {
                matmul_q4_k_limb_n8<<<dim3(1, n / 16, 1), 256>>>(dw + bytes * c, xs, y_ref, k, n, m, kw);
            };
            // The default kernel for the batch: up to 8 rows the persistent one-tile product (two
            // blocks an SM over the 16-row units, as source::persist_blocks), else the (2, 2) tile.
            const int sms = prop.multiProcessorCount, units = n / 16;
            const int p_blocks = std::max(std::min(units, 2 * sms), (units + 5) / 6);
            auto run_f16 = [&](int c) {
                if (m <= 8)
                    matmul_q4_k_mma_m1n1_p<<<dim3(1, p_blocks, 1), 256>>>(dw + bytes * c, xs, y_f16, k, n, m, kw, 0, 0,
                                                                        1, PDL_PLAIN);
                else
                    matmul_q4_k_mma_m2n2<<<dim3(1, (n + 31) / 32, 1), 256>>>(dw + bytes * c, xs, y_f16, k, n, m, kw, 0,
                                                                           0, PDL_PLAIN);
            };
            std::vector<float> a((size_t)m * n), b((size_t)m * n);
            probe_run_read([&] { run_ref(0); }, y_ref, (size_t)m_max * n, a);
            double us_ref = time_us(run_ref), us_f16 = time_us(run_f16);
            std::printf("n %5d m %2d: limb mma.sync (n8 tile) %7.2f us; split-f16 mma.sync (%s) %7.2f us\n", n, m, us_ref,
                        m <= 8 ? "one tile, persistent" : "2,2", us_f16);
            auto variant = [&](const char* name, auto run) {
                probe_run_read([&] { run(0); }, y_new, (size_t)m_max * n, b);
                BitDiff dd = bit_diff(a, b);
                double us = time_us(run);
                std::printf("        %-32s %7.2f us (%.2fx limb mma.sync, %.2fx split-f16): %zu of %zu differ, |d|/|ref| %.3g",
                            name, us, us / us_ref, us / us_f16, dd.differ, a.size(), dd.rel);
                if (dd.differ)
                    std::printf(" (first: token %zu row %zu, %.9g against %.9g)", dd.first / n, dd.first % n,
                                b[dd.first], a[dd.first]);
                std::printf("\n");
            };
            int blocks = (n + 63) / 64;
            if (m <= 2) {
                variant("n8 (2 rows): 2 wg, ahead", [&](int c) {
                    probe_launch(q4k_limb_wg<2, true, 0, false, 8>, blocks, 256, smem(2),
                        dw + bytes * c, img, y_new, k, n, m, kw);
                });
                variant("n8 (2 rows): 4 wg, ahead", [&](int c) {
                    probe_launch(q4k_limb_wg<4, true, 0, false, 8>, blocks, 512, smem(4),
                        dw + bytes * c, img, y_new, k, n, m, kw);
                });
                continue;
            }
            if (m <= 8) {
                variant("n32 (8 rows): 2 wg, ahead", [&](int c) {
                    probe_launch(q4k_limb_wg<2, true, 0, false, 32>, blocks, 256, smem(2),
                        dw + bytes * c, img, y_new, k, n, m, kw);
                });
                variant("n32 (8 rows): 3 wg, ahead", [&](int c) {
                    probe_launch(q4k_limb_wg<3, true, 0, false, 32>, blocks, 384, smem(3),
                        dw + bytes * c, img, y_new, k, n, m, kw);
                });
                variant("n32 (8 rows): 4 wg, ahead", [&](int c) {
                    probe_launch(q4k_limb_wg<4, true, 0, false, 32>, blocks, 512, smem(4),
                        dw + bytes * c, img, y_new, k, n, m, kw);
                });
                variant("n32 (8 rows): 4 wg", [&](int c) {
                    probe_launch(q4k_limb_wg<4, false, 0, false, 32>, blocks, 512, smem(4),
                        dw + bytes * c, img, y_new, k, n, m, kw);
                });
                continue;
            }
            variant("wgmma limbs, 2 warpgroups", [&](int c) {
                probe_launch(q4k_limb_wg<2>, blocks, 256, smem(2), dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("wgmma limbs, 3 warpgroups", [&](int c) {
                probe_launch(q4k_limb_wg<3>, blocks, 384, smem(3), dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("wgmma limbs, 4 warpgroups", [&](int c) {
                probe_launch(q4k_limb_wg<4>, blocks, 512, smem(4), dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("wgmma limbs, 2 wg, weights ahead", [&](int c) {
                probe_launch(q4k_limb_wg<2, true>, blocks, 256, smem(2), dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("wgmma limbs, 3 wg, weights ahead", [&](int c) {
                probe_launch(q4k_limb_wg<3, true>, blocks, 384, smem(3), dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("sums in smem: 3 wg, ahead", [&](int c) {
                probe_launch(q4k_limb_wg<3, true, 0, true>, blocks, 384, smem_acc(3),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("sums in smem: 3 wg", [&](int c) {
                probe_launch(q4k_limb_wg<3, false, 0, true>, blocks, 384, smem_acc(3),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("sums in smem: 2 wg, ahead", [&](int c) {
                probe_launch(q4k_limb_wg<2, true, 0, true>, blocks, 256, smem_acc(2),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("cluster of 2 CTAs x 1 wg, ahead", [&](int c) {
                probe_launch(q4k_limb_wgc<2>, blocks * 2, 128, smemc, dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("cluster of 4 CTAs x 1 wg, ahead", [&](int c) {
                probe_launch(q4k_limb_wgc<4>, blocks * 4, 128, smemc, dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("cluster of 8 CTAs x 1 wg, ahead", [&](int c) {
                probe_launch(q4k_limb_wgc<8>, blocks * 8, 128, smemc, dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("4 wg, one pair in flight", [&](int c) {
                probe_launch(q4k_limb_wg<4, false, 1>, blocks, 512, smem(4),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("4 wg, wait each pair", [&](int c) {
                probe_launch(q4k_limb_wg<4, false, 2>, blocks, 512, smem(4),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("3 wg, ahead, one pair in flight", [&](int c) {
                probe_launch(q4k_limb_wg<3, true, 1>, blocks, 384, smem(3),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            variant("2 wg, ahead, one pair in flight", [&](int c) {
                probe_launch(q4k_limb_wg<2, true, 1>, blocks, 256, smem(2),
                    dw + bytes * c, img, y_new, k, n, m, kw);
            });
            std::printf("        %-32s %7.2f us\n", "image prepare alone",
                        time_us([&](int) { limb_prepare_b<<<n_groups, 256>>>(xs, img, k, m); }));
        }
        for (void* p : {(void*)dw, (void*)dx, (void*)xs, (void*)img, (void*)y_ref, (void*)y_new, (void*)y_f16}) CHECK(cudaFree(p));
    }
    return 0;
}
#endif
