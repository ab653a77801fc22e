// Probe: a decode step's one-row Q4_K product with its weights brought into shared memory by TMA
// (tensor-map tile copies, a deep ring of stages signalled by mbarriers) instead of each warp's
// own double-buffered register loads, against the runtime's `matmul_q4_k_mma_m1n1_p1` (compiled
// here from crates/kernels/cu): the same bits for every output, and the time of each on the 31B's
// Q4_K shapes with the weights cycled through more copies than L2 holds.
//
// Not part of the runtime. Built with nvcc (see bench/NOTES.md for the PyPI-wheel recipe), once
// per arithmetic (-DQ4K_HL=0: the default kernels, 1: the knob's), and run on the lent machine:
//
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a -DQ4K_HL=1 -Icrates/kernels/cu \
//        -o /tmp/tma_decode bench/probes/tma_decode.cu && /tmp/tma_decode
//
// Why: a decode step is 0.43 of the H200's copy bandwidth (0.55 on the H100). A one-row product
// keeps at most two 2,304-byte tiles per warp in flight (16 warps an SM, ~37 KB), about what
// Little's law asks for at the H100's bandwidth and less than the H200's needs; the ring here
// keeps NS stages of 18 KB per block in flight with no registers.
//
// The kernel (q4k_tma_p1): 8 consumer warps and one producer warp a block, persistent over the
// units (a 16·(8 / kw)-row tile of one split plane) blockIdx.x, + gridDim.x, ... A stage is one
// step of a unit: its kw consecutive groups kw·z + kw·splits·j .. + kw − 1 for all the tile's
// rows, i.e. the group each slice takes next, so consumer warp (wr, wk) multiplies group
// kw·z + kw·splits·j + wk of rows 16·wr.. with the runtime's own group function — slice wk's groups
// in the runtime's order — and the slices' sums are added in slice order as the runtime adds
// them: the same bits. Per group a stage holds two TMA boxes: the 128 nibble bytes of every row
// (128-byte swizzle, so the lanes' 8-byte reads of eight rows fall in distinct banks) and the
// 16-byte headers (d, dmin, scales).
#ifndef Q4K_HL
#define Q4K_HL 1
#endif
#include <cuda.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "dequant.cuh"
#include "matmul.cu"
#include "matvec_mma.cu"

#ifndef __CUDACC_RTC__
#define TMA_CONSUMERS 8
#define TMA_STAGE_BYTES (8 * 16 * 144)  // kw groups × 16·(8 / kw) rows × 144 bytes
#define TMA_MAX_ITERS 16                // units a block walks at most (the launch ensures it)

#include "probe_mbar.cuh"

// The box of map at (c0 u64 elements, c1 rows) into dst, completing bytes on bar.
__device__ __forceinline__ void tma_2d(void* dst, const CUtensorMap* map, int c0, int c1, u64* bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(smem_u32(dst)),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
        : "memory");
}

// A warp's Q4KTile (rows rg and rg + 8 of the stage's tile) from a stage's boxes of its group:
// nibbles q (R rows × 128 bytes, 128-byte swizzle: 16-byte chunk c of row L at c ^ (L & 7)) and
// headers h (R rows × 16 bytes).
__device__ __forceinline__ void q4k_load_tma(Q4KTile& T, const u8* q, const u8* h, int rg, int g, int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int row = rg + 8 * r;
        uint4 hd = *(const uint4*)(h + 16 * row);
        T.dd[r] = hd.x;
        T.s[r][0] = hd.y;
        T.s[r][1] = hd.z;
        T.s[r][2] = hd.w;
#pragma unroll
        for (int j = 0; j < 4; ++j)
            T.q[r][j] = *(const uint2*)(q + 128 * row + 16 * ((2 * j + (t >> 1)) ^ g) + 8 * (t & 1));
    }
}

// MODE 0: the product; 1: the ring alone (consumers wait and release, no arithmetic: what the
// copies cost); 2: loads from shared memory but no arithmetic; 3: the arithmetic alone (no copies,
// no waits: whatever the stages hold); 4: the ring alone with one box a stage (kw groups × R rows,
// unswizzled); 5: the ring alone with one 1-D bulk copy a stage from a tile-major layout (a
// stage's groups of a tile's rows contiguous, as a repacked copy would be; timing only). TEAMS: independent rings a block
// (8 consumer warps and a producer warp each; team p of block b walks units b·TEAMS + p, then
// every gridDim.x·TEAMS-th); MINB: blocks an SM (register cap).
template <int NS, int MODE = 0, int TEAMS = 1, int MINB = 1>
__global__ void __launch_bounds__(32 * (TMA_CONSUMERS + 1) * TEAMS, MINB)
    q4k_tma_p1(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap th,
               const __grid_constant__ CUtensorMap tw, const u8* w, const uint4* xs, float* y, int k, int n, int kw,
               int splits) {
    extern __shared__ __align__(1024) u8 sm_raw[];
    __shared__ __align__(8) u64 bars[TEAMS][NS][2];  // [team][stage][full, empty]
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    bool producer = warp >= TMA_CONSUMERS * TEAMS;
    int team = producer ? warp - TMA_CONSUMERS * TEAMS : warp / TMA_CONSUMERS, cw = warp % TMA_CONSUMERS;
    u8* sm = (u8*)(((uintptr_t)sm_raw + 1023) & ~(uintptr_t)1023) + team * NS * TMA_STAGE_BYTES;
    // [team][iteration][consumer warp][16 rows], after every team's stages
    float* red = (float*)((u8*)(((uintptr_t)sm_raw + 1023) & ~(uintptr_t)1023) + TEAMS * NS * TMA_STAGE_BYTES);
    int n_groups = k / 256, warp_rows = TMA_CONSUMERS / kw, R = 16 * warp_rows;
    int tiles_y = (n + R - 1) / R, units = tiles_y * splits;
    int first_unit = blockIdx.x * TEAMS, unit_stride = gridDim.x * TEAMS;
    if (threadIdx.x == 0)
        for (int p = 0; p < TEAMS; ++p)
            for (int i = 0; i < NS; ++i) {
                mbar_init(&bars[p][i][0], 1);
                mbar_init(&bars[p][i][1], TMA_CONSUMERS);
            }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncthreads();
    if (producer) {
        if (lane == 0 && MODE != 3) {
            int c = 0;
            for (int it = 0; it < TMA_MAX_ITERS; ++it) {
                int u = first_unit + team + it * unit_stride;
                if (u >= units) break;
                int z = u / tiles_y, row0 = (u % tiles_y) * R;
                for (int g0 = kw * z; g0 < n_groups; g0 += kw * splits, ++c) {
                    int slot = c % NS;
                    u64* full = &bars[team][slot][0];
                    if (c >= NS) mbar_wait(&bars[team][slot][1], ((c / NS) - 1) & 1);
                    int ng = min(kw, n_groups - g0);
                    u8* st = sm + slot * TMA_STAGE_BYTES;
                    if (MODE == 4) {  // one box, kept inside the row (timing only)
                        mbar_expect_tx(full, kw * R * 144);
                        tma_2d(st, &tw, min(g0, n_groups - kw) * 18, row0, full);
                        continue;
                    }
                    if (MODE == 5) {
                        mbar_expect_tx(full, ng * R * 144);
                        asm volatile(
                            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                                smem_u32(st)),
                            "l"(w + (i64)row0 * n_groups * 144 + (i64)g0 * R * 144), "r"(ng * R * 144), "r"(smem_u32(full))
                            : "memory");
                        continue;
                    }
                    mbar_expect_tx(full, ng * R * 144);
                    for (int v = 0; v < ng; ++v) {
                        tma_2d(st + v * R * 128, &tq, (g0 + v) * 18 + 2, row0, full);
                        tma_2d(st + kw * R * 128 + v * R * 16, &th, (g0 + v) * 18, row0, full);
                    }
                }
            }
        }
    } else {
        int wr = cw / kw, wk = cw % kw, rg = 16 * wr + g;
        Acts<true> A{xs, 0, 0, k, 1};
        float acc[1][1][4];
        zero4(acc[0][0]);
        int c = 0;
        for (int it = 0; it < TMA_MAX_ITERS; ++it) {
            int u = first_unit + team + it * unit_stride;
            if (u >= units) break;
            int z = u / tiles_y;
            for (int g0 = kw * z; g0 < n_groups; g0 += kw * splits, ++c) {
                int slot = c % NS;
                if (MODE != 3) mbar_wait(&bars[team][slot][0], (c / NS) & 1);
                int grp = g0 + wk;
                if ((MODE == 0 || MODE == 2 || MODE == 3) && grp < n_groups) {
                    const u8* st = sm + slot * TMA_STAGE_BYTES;
                    Q4KTile T[1];
                    q4k_load_tma(T[0], st + wk * R * 128, st + kw * R * 128 + wk * R * 16, rg, g, t);
                    if (MODE == 2) {
                        acc[0][0][0] += __uint_as_float(T[0].q[0][0].x ^ T[0].q[1][3].y ^ T[0].dd[0] ^ T[0].s[1][2]);
                    } else if constexpr (Q4K_HL) {
                        q4k_group_one<true>(T, A, acc, grp);
                    } else {
                        q4k_group<1, 1, true>(T, A, acc, grp, 0, 1);
                    }
                }
                __syncwarp();
                if (lane == 0 && MODE != 3) mbar_arrive(&bars[team][slot][1]);
            }
            if (t == 0) {  // lane (g, 0) holds rows g (e = 0) and g + 8 (e = 2) of the one row
                float* r = red + ((team * TMA_MAX_ITERS + it) * TMA_CONSUMERS + cw) * 16;
                r[g] = acc[0][0][0];
                r[g + 8] = acc[0][0][2];
            }
            zero4(acc[0][0]);
        }
    }
    __syncthreads();
    // Each unit's rows: the slices added in slice order, empty slices as +0.0 (the runtime's sum).
    for (int idx = threadIdx.x; idx < TEAMS * TMA_MAX_ITERS * R; idx += blockDim.x) {
        int p = idx / (TMA_MAX_ITERS * R), it = idx / R % TMA_MAX_ITERS, r = idx % R;
        int u = first_unit + p + it * unit_stride;
        if (u >= units) continue;
        int z = u / tiles_y, row = (u % tiles_y) * R + r, wr = r / 16;
        const float* rp = red + (p * TMA_MAX_ITERS + it) * TMA_CONSUMERS * 16;
        float s = 0.0f;
        for (int v = 0; v < kw; ++v) s += v + kw * z < n_groups ? rp[(wr * kw + v) * 16 + r % 16] : 0.0f;
        if (row < n) y[(i64)z * n + row] = s;
    }
}

// The read ceiling: every 16 bytes of w once, coalesced, folded into one word (written only if
// it is a value no input gives, so the loads stay).
__global__ void __launch_bounds__(512) stream_read(const uint4* w, size_t n16, u32* out) {
    u32 x = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(w + i);
        x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (x == 0x9e3779b9u) out[0] = x;
}

#include "probe_host.h"

static ProbeRng rng{0x7a3d5eed};

typedef CUresult (*EncodeTiled)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The 2-D map of a Q4_K weight matrix as u64 elements (n_groups · 18 a row, n rows), box
// (box0 elements, rows).
static CUtensorMap weight_map(EncodeTiled enc, const u8* w, int n, int n_groups, int box0, int rows, bool swz) {
    CUtensorMap m;
    cuuint64_t dims[2] = {(cuuint64_t)n_groups * 18, (cuuint64_t)n}, strides[1] = {(cuuint64_t)n_groups * 144};
    cuuint32_t box[2] = {(cuuint32_t)box0, (cuuint32_t)rows}, es[2] = {1, 1};
    CUresult r = enc(&m, CU_TENSOR_MAP_DATA_TYPE_UINT64, 2, (void*)w, dims, strides, box, es,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, swz ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        std::fprintf(stderr, "cuTensorMapEncodeTiled failed: %d\n", (int)r);
        std::exit(1);
    }
    return m;
}

// The runtime's launch arithmetic (source.rs): k-warps, k-splits, persistent blocks.
static int k_warps(int k) {
    int g = k / 256;
    return g >= 8 ? 8 : g >= 4 ? 4 : g >= 2 ? 2 : 1;
}
static int k_splits(int k) {
    int g = k / 256;
    return g >= 64 ? 4 : g >= 32 ? 2 : 1;
}

int main() {
    int dev, sms;
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, dev));
    EncodeTiled enc = nullptr;
    cudaDriverEntryPointQueryResult q;
    CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&enc, 12000, cudaEnableDefault, &q));
    if (!enc) {
        std::fprintf(stderr, "no cuTensorMapEncodeTiled\n");
        return 1;
    }
    std::printf("%s, %d SMs, Q4K_HL %d\n", prop.name, sms, Q4K_HL);
    std::printf("copy bandwidth %.0f GB/s\n", probe_copy_gbs(10));
    struct Shape {
        int k, n;
        const char* name;
    };
    const Shape shapes[] = {{5376, 21504, "gate/up"}, {5376, 8192, "q      "}, {8192, 5376, "o      "},
                            {21504, 5376, "down   "}, {5376, 4096, "k      "}};
    const bool first_only = std::getenv("PROBE_FIRST") != nullptr;  // gate/up only (for ncu)
    for (const Shape& sh : shapes) {
        if (first_only && &sh != shapes) break;
        int k = sh.k, n = sh.n, n_groups = k / 256, kw = k_warps(k), splits = k_splits(k);
        size_t bytes = (size_t)n * n_groups * 144;
        int copies = (int)((400u << 20) / bytes) + 1;  // well past L2 (50–60 MB)
        std::vector<u8> w = probe_q4k_weights(rng, (size_t)n * n_groups);
        std::vector<float> x(k);
        for (auto& v : x) v = rng.next_f();
        u8* dw;
        float *dx, *y_ref, *y_new;
        uint4* xs;
        CHECK(cudaMalloc(&dw, bytes * copies));
        for (int c = 0; c < copies; ++c) CHECK(cudaMemcpy(dw + bytes * c, w.data(), bytes, cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&dx, k * 4));
        CHECK(cudaMalloc(&xs, (size_t)k * 4 + 65536));
        CHECK(cudaMalloc(&y_ref, (size_t)splits * n * 4));
        CHECK(cudaMalloc(&y_new, (size_t)splits * n * 4));
        CHECK(cudaMemcpy(dx, x.data(), k * 4, cudaMemcpyHostToDevice));
        mmv_prepare_x<<<dim3((k / 8 + 127) / 128, 1), 128>>>(dx, 0, k, k, 1, xs, 0);
        CHECK(cudaGetLastError());
        int warp_rows = 8 / kw, R = 16 * warp_rows;
        int units = (n + R - 1) / R * splits;
        int ref_blocks = std::max(std::min(units, 2 * sms), (units + 5) / 6);
        std::vector<CUtensorMap> mq(copies), mh(copies), mw(copies);
        for (int c = 0; c < copies; ++c) {
            mq[c] = weight_map(enc, dw + bytes * c, n, n_groups, 16, R, true);
            mh[c] = weight_map(enc, dw + bytes * c, n, n_groups, 2, R, false);
            mw[c] = weight_map(enc, dw + bytes * c, n, n_groups, kw * 18, R, false);
        }
        auto time_us = [&](auto f) { return probe_time_us(f, copies); };
        auto run_ref = [&](int c) {
            matmul_q4_k_mma_m1n1_p1<<<dim3(1, ref_blocks, 1), 256>>>(dw + bytes * c, xs, y_ref, k, n, 1, kw, 0, 0,
                                                                   splits, PDL_PLAIN);
        };
        std::vector<float> a((size_t)splits * n), b((size_t)splits * n);
        probe_run_read([&] { run_ref(0); }, y_ref, a.size(), a);
        double us_ref = time_us(run_ref);
        std::printf("%s k %5d n %5d (kw %d, splits %d, %d copies of %.1f MB): runtime _p1 %7.2f us (%5.0f GB/s)\n",
                    sh.name, k, n, kw, splits, copies, bytes / 1e6, us_ref, bytes / us_ref / 1e3);
        auto variant = [&](const char* name, auto kern, int ns, int teams, int blocks_per_sm, bool check) {
            int smem = teams * (ns * TMA_STAGE_BYTES + TMA_MAX_ITERS * TMA_CONSUMERS * 16 * 4) + 1024;
            CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            int per_block = teams, blocks = std::min((units + per_block - 1) / per_block, blocks_per_sm * sms);
            if ((units + blocks * teams - 1) / (blocks * teams) > TMA_MAX_ITERS)
                blocks = (units + teams * TMA_MAX_ITERS - 1) / (teams * TMA_MAX_ITERS);
            int threads = 32 * (TMA_CONSUMERS + 1) * teams;
            auto run = [&](int c) {
                kern<<<blocks, threads, smem>>>(mq[c], mh[c], mw[c], dw + bytes * c, xs, y_new, k, n, kw, splits);
            };
            probe_run_read([&] { run(0); }, y_new, (size_t)splits * n, b);
            BitDiff dd = bit_diff(a, b);
            double us = time_us(run);
            std::printf("        %-36s %7.2f us (%5.0f GB/s, %.2fx the runtime's time)", name, us, bytes / us / 1e3,
                        us / us_ref);
            if (check) {
                std::printf(": %zu of %zu outputs differ in bits", dd.differ, a.size());
                if (dd.differ)
                    std::printf(" (first: plane %zu row %zu, %.9g against %.9g)", dd.first / n, dd.first % n,
                                b[dd.first], a[dd.first]);
            }
            std::printf("\n");
        };
        {
            u32* sink;
            CHECK(cudaMalloc(&sink, 4));
            double us = time_us([&](int c) { stream_read<<<4 * sms, 512>>>((const uint4*)(dw + bytes * c), bytes / 16, sink); });
            std::printf("        %-36s %7.2f us (%5.0f GB/s, %.2fx the runtime's time)\n", "streaming read (16-byte loads)", us,
                        bytes / us / 1e3, us / us_ref);
            CHECK(cudaFree(sink));
        }
        if (bytes < (30u << 20)) {
            auto run_l2 = [&](int) { run_ref(0); };
            double us = time_us(run_l2);
            std::printf("        %-36s %7.2f us (%5.0f GB/s, %.2fx the runtime's time)\n", "runtime _p1, weights in L2", us,
                        bytes / us / 1e3, us / us_ref);
        }
        variant("arithmetic alone, 8 warps x 2 blk/SM", q4k_tma_p1<4, 3, 1, 2>, 4, 1, 2, false);
        variant("arithmetic alone, 8 warps x 3 blk/SM", q4k_tma_p1<3, 3, 1, 3>, 3, 1, 3, false);
        variant("arithmetic alone, 8 warps x 4 blk/SM", q4k_tma_p1<2, 3, 1, 4>, 2, 1, 4, false);
        variant("ring 3 stages, 8 warps, 3 blocks/SM", q4k_tma_p1<3, 0, 1, 3>, 3, 1, 3, true);
        variant("ring 2 stages, 8 warps, 4 blocks/SM", q4k_tma_p1<2, 0, 1, 4>, 2, 1, 4, true);
        variant("arithmetic alone, 16 warps, 1 blk/SM", q4k_tma_p1<5, 3, 2, 1>, 5, 2, 1, false);
        variant("ring alone, one box a stage, 2 x 5", q4k_tma_p1<5, 4, 2, 1>, 5, 2, 1, false);
        variant("ring alone, 1-D tile-major, 2 x 5", q4k_tma_p1<5, 5, 2, 1>, 5, 2, 1, false);
        variant("ring alone, 1-D tile-major, 8 st", q4k_tma_p1<8, 5>, 8, 1, 1, false);
        variant("ring 8 stages, 8 warps, 1 block/SM", q4k_tma_p1<8>, 8, 1, 1, true);
        variant("ring 4 stages, 8 warps, 2 blocks/SM", q4k_tma_p1<4, 0, 1, 2>, 4, 1, 2, true);
        variant("ring 5 stages, 8 warps, 2 blocks/SM", q4k_tma_p1<5, 0, 1, 2>, 5, 1, 2, true);
        variant("2 rings x 5 st, 16 warps, 1 blk/SM", q4k_tma_p1<5, 0, 2, 1>, 5, 2, 1, true);
        variant("ring alone, 8 stages, 1 block/SM", q4k_tma_p1<8, 1>, 8, 1, 1, false);
        variant("ring alone, 2 x 5 stages, 1 blk/SM", q4k_tma_p1<5, 1, 2, 1>, 5, 2, 1, false);
        variant("ring + smem loads, 8 st, 1 blk/SM", q4k_tma_p1<8, 2>, 8, 1, 1, false);
        variant("ring + smem loads, 2 x 5 st, 1 blk", q4k_tma_p1<5, 2, 2, 1>, 5, 2, 1, false);
        for (void* p : {(void*)dw, (void*)dx, (void*)xs, (void*)y_ref, (void*)y_new}) CHECK(cudaFree(p));
    }
    return 0;
}
#endif
