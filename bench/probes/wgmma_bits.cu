// Probe: do Hopper's warpgroup products (wgmma.mma_async m64n8k16, A from registers, B from
// shared memory) give the same f32 bits as the warp-level mma.sync m16n8k16 chains our decode
// and verify kernels use, for the same k16 chunks added in the same order? And how fast is each?
//
// Not part of the runtime (the product kernels are NVRTC-compiled from crates/kernels/cu). Run on
// the lent GPU machine (nvcc, no Rust needed):
//
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/wgmma_bits bench/probes/wgmma_bits.cu && /tmp/wgmma_bits
//
// (`-arch=sm_90a` alone gave ptxas a compute_90 PTX on the lent machine, nvcc 13.0, and failed.)
//
// (If ptxas reports the wgmma instructions serialised, C7510 / C7515, the wgmma rate printed
// understates the hardware.)
//
// It prints, for each of two descriptor readings (which byte offset steps along k), the largest
// error of each kernel against a float64 reference and how many outputs differ in bits between
// the two kernels; then each kernel's throughput. A descriptor reading whose error is large is a
// layout mistake, not a rounding difference: only the reading that matches the reference says
// anything about the bits. (bench/NOTES.md, twenty-second session, gathers the facts behind it.)
#ifndef __CUDACC_RTC__  // NVRTC (a compile check without nvcc) has none of the host headers
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_fp16.h>  // host-side conversions only; the kernels see f16 bit patterns
#endif

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

// Two f16 bit patterns as one f16x2 register (lo in the low half).
__device__ u32 pack(u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); }

// Problem: a 64 × K f16 matrix A (weights: four warps' 16-row tiles) times a K × 8 f16 matrix B
// (activations: eight columns), f32 accumulation over K in k16 chunks, chunk 0 first.
constexpr int M = 64, N = 8, K = 256, CHUNKS = K / 16;

// Lane (g, t)'s A fragment of rows 16w + g, + 8 and columns 16c + 2t, +1, +8, +9 (mma.sync
// m16n8k16's layout, which wgmma m64nNk16 stacks per warp).
__device__ void a_frag(const u16* a, int w, int c, int lane, u32 (&f)[4]) {
    int g = lane >> 2, t = lane & 3;
    auto pair = [&](int row, int col) { return pack(a[row * K + col], a[row * K + col + 1]); };
    int r0 = 16 * w + g, c0 = 16 * c + 2 * t;
    f[0] = pair(r0, c0);
    f[1] = pair(r0 + 8, c0);
    f[2] = pair(r0, c0 + 8);
    f[3] = pair(r0 + 8, c0 + 8);
}

// Writes the warp's 16 × 8 block of D (f32 fragment: rows g, g + 8, columns 2t, 2t + 1).
__device__ void store_d(float* d, int w, int lane, const float (&c)[4]) {
    int g = lane >> 2, t = lane & 3, r0 = 16 * w + g;
    d[r0 * N + 2 * t] = c[0];
    d[r0 * N + 2 * t + 1] = c[1];
    d[(r0 + 8) * N + 2 * t] = c[2];
    d[(r0 + 8) * N + 2 * t + 1] = c[3];
}

// Four warps, each a chain of mma.sync over the CHUNKS k16 chunks into one accumulator.
__global__ void with_mma(const u16* a, const u16* b, float* d) {
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int ch = 0; ch < CHUNKS; ++ch) {
        u32 f[4];
        a_frag(a, w, ch, lane, f);
        int k0 = 16 * ch + 2 * t;
        u32 b0 = pack(b[k0 * N + g], b[(k0 + 1) * N + g]);
        u32 b1 = pack(b[(k0 + 8) * N + g], b[(k0 + 9) * N + g]);
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(f[0]), "r"(f[1]), "r"(f[2]), "r"(f[3]), "r"(b0), "r"(b1));
    }
    store_d(d, w, lane, c);
}

// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address,
// leading- and stride-dimension byte offsets (each >> 4), no swizzle, base offset 0.
__device__ u64 descriptor(const void* smem, u32 lbo, u32 sbo) {
    u32 addr = static_cast<u32>(__cvta_generic_to_shared(smem));
    u64 desc = 0;
    desc |= static_cast<u64>((addr >> 4) & 0x3FFF);
    desc |= static_cast<u64>((lbo >> 4) & 0x3FFF) << 16;
    desc |= static_cast<u64>((sbo >> 4) & 0x3FFF) << 32;
    return desc;
}

// One warpgroup: B's chunk c in shared memory as two 8 × 8 "core matrices" (8 rows n of 16 bytes
// holding k = 0..7, then k = 8..15 of the chunk, K-major), `step` bytes apart; the descriptor
// gives `step` as the leading byte offset (reading 0) or the stride byte offset (reading 1), the
// other 256. A wgmma per chunk accumulates into the same registers, the first from zero.
__global__ void with_wgmma(const u16* a, const u16* b, float* d, int reading) {
    // [chunk][k half][n][k]; one chunk of zeros past the last, which reading 1 (k step 256
    // bytes) reaches from the last chunk.
    __shared__ __align__(128) u16 bs[CHUNKS + 1][2][8][8];
    for (int i = threadIdx.x; i < K * N; i += blockDim.x) {
        int k = i / N, n = i % N;
        bs[k / 16][(k % 16) / 8][n][k % 8] = b[k * N + n];
    }
    for (int i = threadIdx.x; i < 128; i += blockDim.x) (&bs[CHUNKS][0][0][0])[i] = 0;
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 step = 8 * 8 * sizeof(u16);  // 128 bytes between the two core matrices
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    u32 f[CHUNKS][4];
#pragma unroll
    for (int ch = 0; ch < CHUNKS; ++ch) a_frag(a, w, ch, lane, f[ch]);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ch = 0; ch < CHUNKS; ++ch) {
        u64 desc = reading == 0 ? descriptor(&bs[ch][0][0][0], step, 256) : descriptor(&bs[ch][0][0][0], 256, step);
        int accumulate = ch > 0;
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n"
            "}\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(f[ch][0]), "r"(f[ch][1]), "r"(f[ch][2]), "r"(f[ch][3]), "l"(desc), "r"(accumulate));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    store_d(d, w, lane, c);
}

// Throughput: every warp(group) runs four independent accumulator chains of `iters` products
// on fixed fragments (the results are written so nothing is optimised away).
__global__ void mma_rate(float* sink, int iters) {
    u32 f0 = 0x3c003c00u + threadIdx.x, f1 = f0 ^ 1, bb = 0x3c003c00u;
    float c[4][4] = {};
    for (int i = 0; i < iters; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
            asm volatile(
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%4,%5}, {%6,%6}, "
                "{%0,%1,%2,%3};\n"
                : "+f"(c[j][0]), "+f"(c[j][1]), "+f"(c[j][2]), "+f"(c[j][3])
                : "r"(f0), "r"(f1), "r"(bb));
    float s = 0.0f;
    for (int j = 0; j < 4; ++j) s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// One wgmma m64n<N>k16 (A from registers, B from shared memory) into accumulators c.
template <int N>
__device__ __forceinline__ void wgmma_n(float* c, u32 f0, u32 f1, u64 desc);
template <>
__device__ __forceinline__ void wgmma_n<8>(float* c, u32 f0, u32 f1, u64 desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, {%4,%5,%4,%5}, %6, p, 1, 1, 0;\n"
        "}\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(f0), "r"(f1), "l"(desc));
}
template <>
__device__ __forceinline__ void wgmma_n<16>(float* c, u32 f0, u32 f1, u64 desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%8,%9}, %10, p, 1, 1, "
        "0;\n"
        "}\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]), "+f"(c[4]), "+f"(c[5]), "+f"(c[6]), "+f"(c[7])
        : "r"(f0), "r"(f1), "l"(desc));
}
template <>
__device__ __forceinline__ void wgmma_n<32>(float* c, u32 f0, u32 f1, u64 desc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
        "{%16,%17,%16,%17}, %18, p, 1, 1, 0;\n"
        "}\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]), "+f"(c[4]), "+f"(c[5]), "+f"(c[6]), "+f"(c[7]),
          "+f"(c[8]), "+f"(c[9]), "+f"(c[10]), "+f"(c[11]), "+f"(c[12]), "+f"(c[13]), "+f"(c[14]), "+f"(c[15])
        : "r"(f0), "r"(f1), "l"(desc));
}

// Throughput of wgmma m64n<N>k16: CH independent accumulator chains per warpgroup, a commit
// group of CH products per iteration and at most two groups in flight. B: N/8 core matrices
// along n (256 bytes apart) of two along k (128 bytes apart), all ones.
template <int N, int CH>
__global__ void wgmma_rate(float* sink, int iters) {
    __shared__ __align__(128) u16 bs[N / 8][2][8][8];
    for (int i = threadIdx.x; i < N * 16; i += blockDim.x) (&bs[0][0][0][0])[i] = 0x3c00;  // 1.0
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    u64 desc = descriptor(&bs[0][0][0][0], 128, 256);
    u32 f0 = 0x3c003c00u + threadIdx.x, f1 = f0 ^ 1;
    float c[CH][N / 2] = {};
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < CH; ++j) wgmma_n<N>(c[j], f0, f1, desc);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    float s = 0.0f;
    for (int j = 0; j < CH; ++j)
        for (int e = 0; e < N / 2; ++e) s += c[j][e];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

#ifndef __CUDACC_RTC__
#include "probe_host.h"

// Values with spread exponents (2^-12 .. 2^4, both signs), so that the f32 sums' roundings show.
static float spread(u64& s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double u = (double)(s >> 11) / (double)(1ull << 53);
    double e = std::ldexp(1.0, (int)((s >> 5) % 17) - 12);
    return (float)((u * 2.0 - 1.0) * e);
}

int main() {
    std::vector<__half> a(M * K), b(K * N);
    std::vector<double> ref(M * N, 0.0);
    u64 seed = 0x5eed;
    for (auto& v : a) v = __float2half(spread(seed));
    for (auto& v : b) v = __float2half(spread(seed));
    for (int r = 0; r < M; ++r)
        for (int n = 0; n < N; ++n)
            for (int k = 0; k < K; ++k) ref[r * N + n] += (double)__half2float(a[r * K + k]) * __half2float(b[k * N + n]);
    u16 *da, *db;
    float *dm, *dw, *sink;
    CHECK(cudaMalloc(&da, a.size() * 2));
    CHECK(cudaMalloc(&db, b.size() * 2));
    CHECK(cudaMalloc(&dm, M * N * 4));
    CHECK(cudaMalloc(&dw, M * N * 4));
    CHECK(cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
    std::vector<float> hm(M * N), hw(M * N);
    with_mma<<<1, 128>>>(da, db, dm);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(hm.data(), dm, M * N * 4, cudaMemcpyDeviceToHost));
    auto max_err = [&](const std::vector<float>& v) {
        double e = 0.0, norm = 0.0;
        for (int i = 0; i < M * N; ++i) {
            e = std::fmax(e, std::fabs(v[i] - ref[i]));
            norm = std::fmax(norm, std::fabs(ref[i]));
        }
        return e / norm;
    };
    std::printf("mma.sync chain: max |err| / max |ref| = %.3g\n", max_err(hm));
    for (int reading = 0; reading < 2; ++reading) {
        CHECK(cudaMemset(dw, 0, M * N * 4));
        with_wgmma<<<1, 128>>>(da, db, dw, reading);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpy(hw.data(), dw, M * N * 4, cudaMemcpyDeviceToHost));
        int differ = 0;
        for (int i = 0; i < M * N; ++i) differ += std::memcmp(&hm[i], &hw[i], 4) != 0;
        std::printf("wgmma (k step as the %s offset): max |err| / max |ref| = %.3g, %d of %d outputs differ in bits from mma.sync\n",
                    reading == 0 ? "leading" : "stride", max_err(hw), differ, M * N);
    }
    int dev, sms;
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    int blocks = 4 * sms, iters = 4096;
    CHECK(cudaMalloc(&sink, blocks * 128 * 4));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    // Rates: mma.sync m16n8k16, then wgmma m64n<N>k16 for N = 8, 16, 32 with 4 and 8 chains.
    struct Rate {
        const char* name;
        double macs_per_iter;  // per block
        void (*kernel)(float*, int);
    };
    const Rate rates[] = {
        {"mma.sync m16n8k16, 4 warps x 4 chains", 4.0 * 4 * 16 * 8 * 16, mma_rate},
        {"wgmma m64n8k16, 4 chains", 4.0 * 64 * 8 * 16, wgmma_rate<8, 4>},
        {"wgmma m64n8k16, 8 chains", 8.0 * 64 * 8 * 16, wgmma_rate<8, 8>},
        {"wgmma m64n16k16, 4 chains", 4.0 * 64 * 16 * 16, wgmma_rate<16, 4>},
        {"wgmma m64n16k16, 8 chains", 8.0 * 64 * 16 * 16, wgmma_rate<16, 8>},
        {"wgmma m64n32k16, 4 chains", 4.0 * 64 * 32 * 16, wgmma_rate<32, 4>},
    };
    for (const Rate& r : rates) {
        float ms = 0.0f;
        for (int rep = 0; rep < 2; ++rep) {  // the first is a warm-up
            CHECK(cudaEventRecord(t0));
            r.kernel<<<blocks, 128>>>(sink, iters);
            CHECK(cudaEventRecord(t1));
            CHECK(cudaEventSynchronize(t1));
            CHECK(cudaGetLastError());
            CHECK(cudaEventElapsedTime(&ms, t0, t1));
        }
        double macs = (double)blocks * iters * r.macs_per_iter;
        std::printf("%-40s f16 -> f32: %6.1f TFLOP/s (%d SMs, %d blocks of 128 threads)\n", r.name,
                    2.0 * macs / (ms * 1e-3) / 1e12, sms, blocks);
    }
    return 0;
}
#endif
