// Dequantization of one 32-element chunk of a weight row, for every supported type.
// `row` points at the row's first byte; `c` is the chunk index within the row.

__device__ __forceinline__ void scale_min_k4(int j, const u8* s, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

template <int DT>
__device__ __forceinline__ void dq32(const u8* row, int c, float* v) {
    if (DT == DT_F32) {
        const float* p = (const float*)row + c * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) v[j] = p[j];
    } else if (DT == DT_F16) {
        const u16* p = (const u16*)row + c * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) v[j] = h2f(p[j]);
    } else if (DT == DT_BF16) {
        const u16* p = (const u16*)row + c * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) v[j] = bf2f(p[j]);
    } else if (DT == DT_Q4_0) {
        const u8* b = row + c * 18;
        float d = ldh(b);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            u8 q = b[2 + j];
            v[j] = d * (float)((int)(q & 0xF) - 8);
            v[j + 16] = d * (float)((int)(q >> 4) - 8);
        }
    } else if (DT == DT_Q4_1) {
        const u8* b = row + c * 20;
        float d = ldh(b), m = ldh(b + 2);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            u8 q = b[4 + j];
            v[j] = d * (float)(q & 0xF) + m;
            v[j + 16] = d * (float)(q >> 4) + m;
        }
    } else if (DT == DT_Q5_0) {
        const u8* b = row + c * 22;
        float d = ldh(b);
        u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            u8 q = b[6 + j];
            int x0 = (int)((q & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            int x1 = (int)((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            v[j] = d * (float)x0;
            v[j + 16] = d * (float)x1;
        }
    } else if (DT == DT_Q5_1) {
        const u8* b = row + c * 24;
        float d = ldh(b), m = ldh(b + 2);
        u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            u8 q = b[8 + j];
            v[j] = d * (float)((q & 0xF) | (((qh >> j) & 1) << 4)) + m;
            v[j + 16] = d * (float)((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) + m;
        }
    } else if (DT == DT_Q8_0) {
        const u8* b = row + c * 34;
        float d = ldh(b);
#pragma unroll
        for (int j = 0; j < 32; ++j) v[j] = d * (float)(signed char)b[2 + j];
    } else if (DT == DT_Q2_K) {
        const u8* b = row + (c >> 3) * 84;
        int sub = c & 7, half = sub >> 2, sh = sub & 3;
        float d = ldh(b + 80), dmin = ldh(b + 82);
#pragma unroll
        for (int part = 0; part < 2; ++part) {
            u8 sc = b[half * 8 + sh * 2 + part];
            float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
#pragma unroll
            for (int l = 0; l < 16; ++l) {
                u8 q = b[16 + half * 32 + part * 16 + l];
                v[part * 16 + l] = dl * (float)((q >> (2 * sh)) & 3) - ml;
            }
        }
    } else if (DT == DT_Q3_K) {
        const u8* b = row + (c >> 3) * 110;
        int sub = c & 7, half = sub >> 2, sh = sub & 3;
        const u8* s = b + 96;
        float d = ldh(b + 108);
        u8 m = (u8)(1 << (half * 4 + sh));
#pragma unroll
        for (int part = 0; part < 2; ++part) {
            int i = half * 8 + sh * 2 + part;
            int low = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
            int high = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
            float dl = d * (float)((low | (high << 4)) - 32);
#pragma unroll
            for (int l = 0; l < 16; ++l) {
                u8 q = b[32 + half * 32 + part * 16 + l];
                int lo2 = (q >> (2 * sh)) & 3;
                int hb = (b[part * 16 + l] & m) ? 0 : 4;
                v[part * 16 + l] = dl * (float)(lo2 - hb);
            }
        }
    } else if (DT == DT_Q4_K) {
        const u8* b = row + (c >> 3) * 144;
        int j = c & 7;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        float d = ldh(b) * (float)sc, mn = ldh(b + 2) * (float)m;
        const u8* q = b + 16 + (j >> 1) * 32;
        int shift = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; ++l) v[l] = d * (float)((q[l] >> shift) & 0xF) - mn;
    } else if (DT == DT_Q5_K) {
        const u8* b = row + (c >> 3) * 176;
        int j = c & 7;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        float d = ldh(b) * (float)sc, mn = ldh(b + 2) * (float)m;
        const u8* qh = b + 16;
        const u8* q = b + 48 + (j >> 1) * 32;
        int shift = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            int x = ((q[l] >> shift) & 0xF) + ((qh[l] >> j) & 1) * 16;
            v[l] = d * (float)x - mn;
        }
    } else if (DT == DT_Q6_K) {
        const u8* b = row + (c >> 3) * 210;
        int sub = c & 7, half = sub >> 2, g = sub & 3;
        float d = ldh(b + 208);
        const u8* ql = b + half * 64 + (g & 1) * 32;
        const u8* qh = b + 128 + half * 32;
        const signed char* sc = (const signed char*)(b + 192 + half * 8);
        int shift = (g >> 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            int q = (int)(((ql[l] >> shift) & 0xF) | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
            v[l] = d * (float)sc[l / 16 + 2 * g] * (float)q;
        }
    }
}

// Bytes of one row of `k` elements.
__device__ __forceinline__ i64 row_bytes(int dt, i64 k) {
    switch (dt) {
        case DT_F32: return k * 4;
        case DT_F16: case DT_BF16: return k * 2;
        case DT_Q4_0: return k / 32 * 18;
        case DT_Q4_1: return k / 32 * 20;
        case DT_Q5_0: return k / 32 * 22;
        case DT_Q5_1: return k / 32 * 24;
        case DT_Q8_0: return k / 32 * 34;
        case DT_Q2_K: return k / 256 * 84;
        case DT_Q3_K: return k / 256 * 110;
        case DT_Q4_K: return k / 256 * 144;
        case DT_Q5_K: return k / 256 * 176;
        case DT_Q6_K: return k / 256 * 210;
    }
    return 0;
}

// Dispatches a templated device function on a run-time dtype code.
#define DISPATCH_DT(dt, F, ...)                     \
    switch (dt) {                                   \
        case DT_F32: F<DT_F32>(__VA_ARGS__); break;   \
        case DT_F16: F<DT_F16>(__VA_ARGS__); break;   \
        case DT_BF16: F<DT_BF16>(__VA_ARGS__); break; \
        case DT_Q4_0: F<DT_Q4_0>(__VA_ARGS__); break; \
        case DT_Q4_1: F<DT_Q4_1>(__VA_ARGS__); break; \
        case DT_Q5_0: F<DT_Q5_0>(__VA_ARGS__); break; \
        case DT_Q5_1: F<DT_Q5_1>(__VA_ARGS__); break; \
        case DT_Q8_0: F<DT_Q8_0>(__VA_ARGS__); break; \
        case DT_Q2_K: F<DT_Q2_K>(__VA_ARGS__); break; \
        case DT_Q3_K: F<DT_Q3_K>(__VA_ARGS__); break; \
        case DT_Q4_K: F<DT_Q4_K>(__VA_ARGS__); break; \
        case DT_Q5_K: F<DT_Q5_K>(__VA_ARGS__); break; \
        case DT_Q6_K: F<DT_Q6_K>(__VA_ARGS__); break; \
    }

// Element `l` (0..31) of 32-element chunk `c` of a weight row: the per-lane form of dq32, so
// that the 32 lanes of a warp read one chunk's bytes (and the matching activations) together.
template <int DT>
__device__ __forceinline__ float dq1(const u8* row, int c, int l) {
    if (DT == DT_F32) return ((const float*)row)[c * 32 + l];
    if (DT == DT_F16) return h2f(((const u16*)row)[c * 32 + l]);
    if (DT == DT_BF16) return bf2f(((const u16*)row)[c * 32 + l]);
    if (DT == DT_Q4_0) {
        const u8* b = row + c * 18;
        u8 q = b[2 + (l & 15)];
        int x = l < 16 ? (q & 0xF) : (q >> 4);
        return ldh(b) * (float)(x - 8);
    }
    if (DT == DT_Q4_1) {
        const u8* b = row + c * 20;
        u8 q = b[4 + (l & 15)];
        int x = l < 16 ? (q & 0xF) : (q >> 4);
        return ldh(b) * (float)x + ldh(b + 2);
    }
    if (DT == DT_Q5_0) {
        const u8* b = row + c * 22;
        u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
        u8 q = b[6 + (l & 15)];
        int x = (l < 16 ? (q & 0xF) : (q >> 4)) | (((qh >> l) & 1) << 4);
        return ldh(b) * (float)(x - 16);
    }
    if (DT == DT_Q5_1) {
        const u8* b = row + c * 24;
        u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
        u8 q = b[8 + (l & 15)];
        int x = (l < 16 ? (q & 0xF) : (q >> 4)) | (((qh >> l) & 1) << 4);
        return ldh(b) * (float)x + ldh(b + 2);
    }
    if (DT == DT_Q8_0) {
        const u8* b = row + c * 34;
        return ldh(b) * (float)(signed char)b[2 + l];
    }
    if (DT == DT_Q2_K) {
        const u8* b = row + (c >> 3) * 84;
        int sub = c & 7, half = sub >> 2, sh = sub & 3, part = l >> 4;
        u8 sc = b[half * 8 + sh * 2 + part];
        u8 q = b[16 + half * 32 + l];
        return ldh(b + 80) * (float)(sc & 0xF) * (float)((q >> (2 * sh)) & 3) - ldh(b + 82) * (float)(sc >> 4);
    }
    if (DT == DT_Q3_K) {
        const u8* b = row + (c >> 3) * 110;
        int sub = c & 7, half = sub >> 2, sh = sub & 3, part = l >> 4;
        const u8* s = b + 96;
        int i = half * 8 + sh * 2 + part;
        int low = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
        int high = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        u8 q = b[32 + half * 32 + l];
        int hb = (b[l] & (1 << (half * 4 + sh))) ? 0 : 4;
        return ldh(b + 108) * (float)((low | (high << 4)) - 32) * (float)(((q >> (2 * sh)) & 3) - hb);
    }
    if (DT == DT_Q4_K) {
        const u8* b = row + (c >> 3) * 144;
        int j = c & 7;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        u8 q = b[16 + (j >> 1) * 32 + l];
        return ldh(b) * (float)sc * (float)((q >> ((j & 1) * 4)) & 0xF) - ldh(b + 2) * (float)m;
    }
    if (DT == DT_Q5_K) {
        const u8* b = row + (c >> 3) * 176;
        int j = c & 7;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        u8 q = b[48 + (j >> 1) * 32 + l];
        int x = ((q >> ((j & 1) * 4)) & 0xF) + ((b[16 + l] >> j) & 1) * 16;
        return ldh(b) * (float)sc * (float)x - ldh(b + 2) * (float)m;
    }
    // DT_Q6_K
    const u8* b = row + (c >> 3) * 210;
    int sub = c & 7, half = sub >> 2, g = sub & 3;
    u8 ql = b[half * 64 + (g & 1) * 32 + l];
    u8 qh = b[128 + half * 32 + l];
    int q = (int)(((ql >> ((g >> 1) * 4)) & 0xF) | (((qh >> (2 * g)) & 3) << 4)) - 32;
    const signed char* sc = (const signed char*)(b + 192 + half * 8);
    return ldh(b + 208) * (float)sc[l / 16 + 2 * g] * (float)q;
}
