// Host helpers the probes share: the CUDA error check and a seeded generator of test data.
#pragma once
#include <cstdio>
#include <cstdlib>

// Exits with the file, line and CUDA's message when x fails.
#define CHECK(x)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));       \
            std::exit(1);                                                                         \
        }                                                                                         \
    } while (0)

// A 64-bit linear congruential generator; each probe seeds its own.
struct ProbeRng {
    unsigned long long s;
    unsigned next_u32() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (unsigned)(s >> 32);
    }
    // Uniform in [-1, 1).
    float next_f() { return (float)((next_u32() >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }
    // A positive f16 of 2^-14 .. 2^-8 (a Q4_K d or dmin of plausible size), as its bits.
    unsigned short small_f16() { return (unsigned short)(((1 + next_u32() % 6) << 10) | (next_u32() & 0x3ff)); }
};

#include <cmath>
#include <cstring>
#include <vector>

// Microseconds per call of f(i) over `reps` calls, i cycling through 0..cycle−1 (weight copies
// that together outgrow L2), after one untimed round of the same calls.
template <class F>
double probe_time_us(F&& f, int cycle, int reps = 60) {
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    float ms = 0;
    for (int round = 0; round < 2; ++round) {
        CHECK(cudaEventRecord(t0));
        for (int i = 0; i < reps; ++i) f(i % cycle);
        CHECK(cudaEventRecord(t1));
        CHECK(cudaEventSynchronize(t1));
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
    }
    CHECK(cudaEventDestroy(t0));
    CHECK(cudaEventDestroy(t1));
    return 1e3 * ms / reps;
}

// How an output b differs from a reference a: outputs whose bits differ, the first of them
// (size_t(-1) if none) and ‖b − a‖ / ‖a‖.
struct BitDiff {
    size_t differ = 0, first = (size_t)-1;
    double rel = 0;
};
inline BitDiff bit_diff(const std::vector<float>& a, const std::vector<float>& b) {
    BitDiff d;
    double err = 0, norm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::memcmp(&a[i], &b[i], 4) != 0) {
            ++d.differ;
            if (d.first == (size_t)-1) d.first = i;
        }
        err += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        norm += (double)a[i] * a[i];
    }
    d.rel = std::sqrt(err / norm);
    return d;
}

// Fills y's first `fill` floats with NaN bits (so an output a kernel leaves unwritten shows), runs
// f once, waits, and copies y's first out.size() floats to out.
template <class F>
void probe_run_read(F&& f, float* y, size_t fill, std::vector<float>& out) {
    CHECK(cudaMemset(y, 0xff, fill * 4));
    f();
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(out.data(), y, out.size() * 4, cudaMemcpyDeviceToHost));
}

#include <unordered_map>

// kern<<<grid, block, smem>>>(args...), first allowing the kernel `smem` bytes of dynamic shared
// memory where that is more than the default 48 KB (once per kernel and size), so a variant is
// named with its shared memory in one place.
template <class... P, class... A>
void probe_launch(void (*kern)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
    static std::unordered_map<const void*, size_t> allowed;
    size_t& done = allowed[(const void*)kern];
    if (smem > (48u << 10) && done < smem) {
        CHECK(cudaFuncSetAttribute((const void*)kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        done = smem;
    }
    kern<<<grid, block, smem>>>(args...);
}

// The copy bandwidth as the bench measures it: 2 × bytes / time over `reps` device-to-device
// copies of 1 GiB (after one untimed), in GB/s.
inline double probe_copy_gbs(int reps) {
    size_t bytes = 1ull << 30;
    void *src, *dst;
    CHECK(cudaMalloc(&src, bytes));
    CHECK(cudaMalloc(&dst, bytes));
    CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    CHECK(cudaEventRecord(t0));
    for (int i = 0; i < reps; ++i) CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
    CHECK(cudaEventRecord(t1));
    CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, t0, t1));
    CHECK(cudaEventDestroy(t0));
    CHECK(cudaEventDestroy(t1));
    CHECK(cudaFree(src));
    CHECK(cudaFree(dst));
    return 2.0 * reps * bytes / (ms * 1e-3) / 1e9;
}

// `groups` random Q4_K groups of 144 bytes: random scale and nibble bytes, and d and dmin each a
// positive f16 of plausible size (ProbeRng::small_f16), drawn in that order from `rng`.
inline std::vector<unsigned char> probe_q4k_weights(ProbeRng& rng, size_t groups) {
    std::vector<unsigned char> w(groups * 144);
    for (auto& b : w) b = (unsigned char)rng.next_u32();
    for (size_t gi = 0; gi < groups; ++gi) {
        unsigned short d = rng.small_f16(), dm = rng.small_f16();
        std::memcpy(&w[gi * 144], &d, 2);
        std::memcpy(&w[gi * 144 + 2], &dm, 2);
    }
    return w;
}
