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
