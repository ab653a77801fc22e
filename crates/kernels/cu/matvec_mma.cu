// Tensor-core products of Q4_K, Q6_K and Q8_0 weights with 1..8·NT activation rows: the decode
// step and speculative verify batches.
//
// A warp owns MT tiles of 16 weight rows; the MMV_WARPS warps of a block split the rows'
// 256-weight groups between them (warp w takes groups w, w + MMV_WARPS, ...) and their partial
// sums are added in a fixed order at the end. No output element's arithmetic depends on the
// other activation rows of the batch, so a verify row equals the decode step's value bit for
// bit.
//
// mma.sync m16n8k16 (f16 inputs, f32 accumulation). A holds integer-valued weights (the quant,
// times the sub-block scale where that stays exact in f16); the remaining scales are applied in
// f32 to per-group (Q4_K) or per-sub-block (Q6_K, Q8_0) partial sums. Each activation is split
// into two f16 halves, hi + lo, and multiplied twice, so every product is exact to ~2^-22 and
// the accumulation is f32: the result matches the f32 kernels to ~1e-6. (Activations must stay
// below 65504 in magnitude, the f16 range.)
//
// The 16 k's of one mma may be taken in any order as long as A and B agree. Lane (g, t) =
// (lane / 4, lane % 4) supplies, for weight rows g and g + 8, four consecutive weights e..e+3
// that its own 32-bit load holds, paired (e, e+2) and (e+1, e+3) as nibble/byte unpacking yields
// them, and the same four activations of activation row g.

#define MMV_WARPS 8

// Two f32 as one f16x2: `lo` in the low half.
__device__ __forceinline__ u32 pack_f32x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

// An f16 integer (|v| ≤ 2048) in both halves.
__device__ __forceinline__ u32 splat_h2(float v) {
    u32 h = f2h(v);
    return h | (h << 16);
}

// Activations k = e..e+3 of one row as B fragments: hi halves (e, e+2), (e+1, e+3) and the lo
// halves (v − hi) in the same order.
struct XFrag {
    u32 h0, h1, l0, l1;
};

__device__ __forceinline__ XFrag split_x(float4 v) {
    XFrag f;
    f.h0 = pack_f32x2(v.x, v.z);
    f.h1 = pack_f32x2(v.y, v.w);
    f.l0 = pack_f32x2(v.x - h2f((u16)(f.h0 & 0xffff)), v.z - h2f((u16)(f.h0 >> 16)));
    f.l1 = pack_f32x2(v.y - h2f((u16)(f.h1 & 0xffff)), v.w - h2f((u16)(f.h1 >> 16)));
    return f;
}

// c += A·(x hi) + A·(x lo) for the A fragment (a0 a1 a2 a3).
__device__ __forceinline__ void mma_split(float* c, u32 a0, u32 a1, u32 a2, u32 a3, XFrag x) {
    mma_16816(c, a0, a1, a2, a3, x.h0, x.h1);
    mma_16816(c, a0, a1, a2, a3, x.l0, x.l1);
}

__device__ __forceinline__ float4 load_x4(const float* p, bool valid) {
    return valid ? *(const float4*)p : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// f16x2 of (1024 + q) for the nibbles at bits 0..3 and 16..19 of v.
__device__ __forceinline__ u32 nibbles_h2(u32 v) { return (v & 0x000F000Fu) | 0x64006400u; }

// Lane (g, t)'s activation row for each 8-row tile nt (row m0 + 8·nt + g), at element `col` of
// the row; rows past m are marked invalid (their loads read zeros) and point at row m0.
template <int NT>
__device__ __forceinline__ void activation_rows(const float* x, i64 x_off, i64 x_stride, int m0, int m, int col,
                                                const float* (&xr)[NT], bool (&valid)[NT]) {
    int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        int tok = m0 + nt * 8 + g;
        valid[nt] = tok < m;
        xr[nt] = x + x_off + (i64)(valid[nt] ? tok : m0) * x_stride + col;
    }
}

// The group `grp` (of `group_bytes`) of weight rows g and g + 8 of each 16-row tile, rows past n
// clamped to the last one (their results are not written).
template <int MT>
__device__ __forceinline__ void weight_groups(const u8* w, int row0, int n, int n_groups, int grp, int group_bytes,
                                              const u8* (&b)[MT][2]) {
    int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        int ra = row0 + mt * 16 + g, rb = ra + 8;
        b[mt][0] = w + ((i64)(ra < n ? ra : n - 1) * n_groups + grp) * group_bytes;
        b[mt][1] = w + ((i64)(rb < n ? rb : n - 1) * n_groups + grp) * group_bytes;
    }
}

// ---- Q4_K: 144-byte groups (f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 nibble bytes).
// Sub-block s (32 weights) lives in the low (s even) or high (s odd) nibbles of bytes
// 32 (s / 2) .. +31 of the nibble area. Lane t loads bytes 8t..8t+7 of each 32-byte run: weights 8t..8t+3 (.x) and
// 8t+4..8t+7 (.y) of sub-blocks 2j and 2j + 1. A = sc·q (≤ 945, exact); the mins enter through
// two more mma per group whose k runs over (sub-block, lane) pairs: A = min[s], B = the lane's
// partial sum of its 8 activations of sub-block s.
struct Q4KTile {
    uint2 q[2][4];  // [row g / g + 8][32-byte run]
    u32 dd[2];      // d | dmin << 16
    u32 s[2][3];    // packed scales and mins
};

__device__ __forceinline__ void q4k_load(Q4KTile& T, const u8* w, int row_g, int row_g8, int n_groups,
                                         int grp, int t) {
    const u8* b[2] = {w + ((i64)row_g * n_groups + grp) * 144, w + ((i64)row_g8 * n_groups + grp) * 144};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        T.dd[r] = *(const u32*)b[r];
        T.s[r][0] = *(const u32*)(b[r] + 4);
        T.s[r][1] = *(const u32*)(b[r] + 8);
        T.s[r][2] = *(const u32*)(b[r] + 12);
#pragma unroll
        for (int j = 0; j < 4; ++j) T.q[r][j] = *(const uint2*)(b[r] + 16 + 32 * j + 8 * t);
    }
}

// The eight 6-bit scales (sc[0] bytes 0..3 = sub-blocks 0..3, sc[1] = 4..7) and mins (mn[]) of
// a Q4_K group from its three packed scale words.
__device__ __forceinline__ void q4k_unpack(const u32* s, u32* sc, u32* mn) {
    sc[0] = s[0] & 0x3f3f3f3fu;
    mn[0] = s[1] & 0x3f3f3f3fu;
    sc[1] = (s[2] & 0x0f0f0f0fu) | (((s[0] >> 6) & 0x03030303u) << 4);
    mn[1] = ((s[2] >> 4) & 0x0f0f0f0fu) | (((s[1] >> 6) & 0x03030303u) << 4);
}

// f16x2 (byte i of v, byte j of v) for bytes below 1024: 0x64 above each byte is 1024 + byte.
__device__ __forceinline__ u32 bytes_h2(u32 v, int i, int j) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(0x64u), "r"((u32)(i | (4 << 4) | (j << 8) | (4 << 12))));
    return hsub2(r, 0x64006400u);
}

template <int MT, int NT>
__device__ __forceinline__ void q4k_group(const Q4KTile (&T)[MT], const float* x, float (&acc)[MT][NT][4],
                                          int grp, int m0, int m, i64 x_off, i64 x_stride) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* xr[NT];
    bool valid[NT];
    activation_rows<NT>(x, x_off, x_stride, m0, m, grp * 256 + 8 * t, xr, valid);
    u32 sc[MT][2][2], mn[MT][2][2];  // [mt][row g / g + 8][sub-blocks 0..3 / 4..7]
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) q4k_unpack(T[mt].s[r], sc[mt][r], mn[mt][r]);
    float tsc[MT][NT][4], tmn[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) tsc[mt][nt][e] = tmn[mt][nt][e] = 0.0f;
    float part[NT][8];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        XFrag f[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            float4 v0 = load_x4(xr[nt] + 32 * s, valid[nt]), v1 = load_x4(xr[nt] + 32 * s + 4, valid[nt]);
            part[nt][s] = __fadd_rn(__fadd_rn(__fadd_rn(v0.x, v0.y), __fadd_rn(v0.z, v0.w)),
                                    __fadd_rn(__fadd_rn(v1.x, v1.y), __fadd_rn(v1.z, v1.w)));
            f[nt][0] = split_x(v0);
            f[nt][1] = split_x(v1);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            u32 a[2][2][2];  // [row g / g + 8][half .x/.y][pair (e, e+2) / (e+1, e+3)]
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                u32 scale = bytes_h2(sc[mt][r][s >> 2], s & 3, s & 3);
                u32 bias = hmul2(scale, 0xE400E400u);  // −1024·sc
                int shift = (s & 1) * 4;
                u32 wx = T[mt].q[r][s >> 1].x >> shift, wy = T[mt].q[r][s >> 1].y >> shift;
                a[r][0][0] = hfma2(nibbles_h2(wx), scale, bias);
                a[r][0][1] = hfma2(nibbles_h2(wx >> 8), scale, bias);
                a[r][1][0] = hfma2(nibbles_h2(wy), scale, bias);
                a[r][1][1] = hfma2(nibbles_h2(wy >> 8), scale, bias);
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                mma_split(tsc[mt][nt], a[0][0][0], a[1][0][0], a[0][0][1], a[1][0][1], f[nt][0]);
                mma_split(tsc[mt][nt], a[0][1][0], a[1][1][0], a[0][1][1], a[1][1][1], f[nt][1]);
            }
        }
    }
    // Mins: k = (sub-block s, lane t); slots (2t, 2t+1, 2t+8, 2t+9) hold s = 4h + (0, 2, 1, 3),
    // the order split_x pairs (v.x, v.z) and (v.y, v.w) in.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        XFrag p[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            p[nt] = split_x(make_float4(part[nt][4 * h], part[nt][4 * h + 1], part[nt][4 * h + 2],
                                        part[nt][4 * h + 3]));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            u32 a0 = bytes_h2(mn[mt][0][h], 0, 2), a1 = bytes_h2(mn[mt][1][h], 0, 2);
            u32 a2 = bytes_h2(mn[mt][0][h], 1, 3), a3 = bytes_h2(mn[mt][1][h], 1, 3);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_split(tmn[mt][nt], a0, a1, a2, a3, p[nt]);
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float d0 = h2f((u16)(T[mt].dd[0] & 0xffff)), m0_ = h2f((u16)(T[mt].dd[0] >> 16));
        float d1 = h2f((u16)(T[mt].dd[1] & 0xffff)), m1_ = h2f((u16)(T[mt].dd[1] >> 16));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float d = e < 2 ? d0 : d1, dm = e < 2 ? m0_ : m1_;
                acc[mt][nt][e] = __fmaf_rn(d, tsc[mt][nt][e], __fmaf_rn(-dm, tmn[mt][nt][e], acc[mt][nt][e]));
            }
        }
    }
}

// A warp's share of a Q4_K product: groups first, first + stride, ...; the next group's weights
// are loaded before the current one is multiplied, so a warp keeps loads in flight.
template <int MT, int NT>
__device__ __forceinline__ void q4k_rows(const u8* w, const float* x, float (&acc)[MT][NT][4], int row0,
                                         int n, int n_groups, int first, int stride, int m0, int m,
                                         i64 x_off, i64 x_stride) {
    int t = threadIdx.x & 3, g = (threadIdx.x & 31) >> 2;
    int rows[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        int ra = row0 + mt * 16 + g, rb = ra + 8;
        rows[mt][0] = ra < n ? ra : n - 1;
        rows[mt][1] = rb < n ? rb : n - 1;
    }
    // One activation tile: the next group's weights load during this one's products. Two tiles
    // need the registers for their activations, so the next group loads after.
    constexpr bool prefetch = NT == 1;
    Q4KTile cur[MT];
    int grp = first;
    if (grp >= n_groups) return;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) q4k_load(cur[mt], w, rows[mt][0], rows[mt][1], n_groups, grp, t);
    for (; grp < n_groups; grp += stride) {
        int next = grp + stride;
        Q4KTile nxt[MT];
        if (prefetch && next < n_groups) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) q4k_load(nxt[mt], w, rows[mt][0], rows[mt][1], n_groups, next, t);
        }
        q4k_group<MT, NT>(cur, x, acc, grp, m0, m, x_off, x_stride);
        if (prefetch) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) cur[mt] = nxt[mt];
        } else if (next < n_groups) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) q4k_load(cur[mt], w, rows[mt][0], rows[mt][1], n_groups, next, t);
        }
    }
}

// ---- Q6_K: 210-byte groups (ql[128], qh[64], int8 scales[16], f16 d). Weight i of half h
// (128 each), run p (32 each, i = 128h + 32p + l): low 4 bits from ql[64h + 32(p & 1) + l]
// (nibble p / 2), high 2 bits from qh[32h + l] (bits 2p, 2p + 1); sub-block (16 weights) i / 16.
// One mma covers one sub-block: lane t takes l = 16·lb + 4t .. +3. A = q − 32 (exact); the
// sub-block's d·scale multiplies the f32 partial sum.
template <int MT, int NT>
__device__ __forceinline__ void q6k_group(const u8* w, const float* x, float (&acc)[MT][NT][4], int row0,
                                          int n, int n_groups, int grp, int m0, int m, i64 x_off,
                                          i64 x_stride) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u8* b[MT][2];
    weight_groups<MT>(w, row0, n, n_groups, grp, 210, b);
    const float* xr[NT];
    bool valid[NT];
    activation_rows<NT>(x, x_off, x_stride, m0, m, grp * 256 + 4 * t, xr, valid);
    float dd[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) dd[mt][r] = h2f(*(const u16*)(b[mt][r] + 208));
    const u32 offset = 0x64206420u;  // f16x2 (1056, 1056): 1024 + 32
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int lb = 0; lb < 2; ++lb) {
            u32 ql[MT][2][2], qh[MT][2];  // [row][run parity p & 1]
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const u8* bb = b[mt][r];
                    ql[mt][r][0] = load_u32_2(bb + 64 * h + 16 * lb + 4 * t);
                    ql[mt][r][1] = load_u32_2(bb + 64 * h + 32 + 16 * lb + 4 * t);
                    qh[mt][r] = load_u32_2(bb + 128 + 32 * h + 16 * lb + 4 * t);
                }
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                int sb = 8 * h + 2 * p + lb;
                XFrag f[NT];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                    f[nt] = split_x(load_x4(xr[nt] + 128 * h + 32 * p + 16 * lb, valid[nt]));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    u32 a[2][2];
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        u32 lo = ql[mt][r][p & 1] >> (4 * (p >> 1));
                        u32 hi = qh[mt][r] >> (2 * p);
                        u32 q0 = (lo & 0x000F000Fu) | ((hi << 4) & 0x00300030u) | 0x64006400u;
                        u32 q1 = ((lo >> 8) & 0x000F000Fu) | ((hi >> 4) & 0x00300030u) | 0x64006400u;
                        a[r][0] = hsub2(q0, offset);
                        a[r][1] = hsub2(q1, offset);
                    }
                    float s0 = dd[mt][0] * (float)(signed char)b[mt][0][192 + sb];
                    float s1 = dd[mt][1] * (float)(signed char)b[mt][1][192 + sb];
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                        mma_split(c, a[0][0], a[1][0], a[0][1], a[1][1], f[nt]);
#pragma unroll
                        for (int e = 0; e < 4; ++e) acc[mt][nt][e] = __fmaf_rn(e < 2 ? s0 : s1, c[e], acc[mt][nt][e]);
                    }
                }
            }
        }
}

// ---- Q8_0: a group is 8 blocks of 34 bytes (f16 d, 32 int8). Lane t takes weights 8t..8t+3 and
// 8t+4..8t+7 of each block (one mma each); A = q (exact); d multiplies the block's f32 sum.
template <int MT, int NT>
__device__ __forceinline__ void q80_group(const u8* w, const float* x, float (&acc)[MT][NT][4], int row0,
                                          int n, int n_groups, int grp, int m0, int m, i64 x_off,
                                          i64 x_stride) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u8* b[MT][2];
    weight_groups<MT>(w, row0, n, n_groups, grp, 272, b);
    const float* xr[NT];
    bool valid[NT];
    activation_rows<NT>(x, x_off, x_stride, m0, m, grp * 256 + 8 * t, xr, valid);
    const u32 offset = 0x64806480u;  // f16x2 (1152, 1152): 1024 + 128
#pragma unroll
    for (int blk = 0; blk < 8; ++blk) {
        u32 q[MT][2][2];
        float d[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const u8* bb = b[mt][r] + 34 * blk;
                d[mt][r] = h2f(*(const u16*)bb);
                q[mt][r][0] = load_u32_2(bb + 2 + 8 * t);
                q[mt][r][1] = load_u32_2(bb + 6 + 8 * t);
            }
        XFrag f[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            f[nt][0] = split_x(load_x4(xr[nt] + 32 * blk, valid[nt]));
            f[nt][1] = split_x(load_x4(xr[nt] + 32 * blk + 4, valid[nt]));
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            u32 a[2][2][2];  // [row][half][pair]
#pragma unroll
            for (int r = 0; r < 2; ++r)
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    u32 v = q[mt][r][hf];
                    a[r][hf][0] = hsub2((v & 0x00FF00FFu) ^ 0x64806480u, offset);
                    a[r][hf][1] = hsub2(((v >> 8) & 0x00FF00FFu) ^ 0x64806480u, offset);
                }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                mma_split(c, a[0][0][0], a[1][0][0], a[0][0][1], a[1][0][1], f[nt][0]);
                mma_split(c, a[0][1][0], a[1][1][0], a[0][1][1], a[1][1][1], f[nt][1]);
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mt][nt][e] = __fmaf_rn(d[mt][e >> 1], c[e], acc[mt][nt][e]);
            }
        }
    }
}

// One block: MMV_WARPS / kw warp rows, each MT·16 weight rows, × NT·8 activation rows. The kw
// warps of a warp row split the groups (warp j takes groups j, j + kw, ...) and their partial
// sums are added in a fixed order; kw (1, 2, 4 or 8) depends only on k, so short rows (a 1024-
// wide drafter layer has 4 groups) keep every warp busy without changing any row's arithmetic
// across batch sizes.
template <int DT, int MT, int NT>
__device__ void matvec_mma_body(const u8* w, const float* x, float* y, int k, int n, int m, i64 x_off,
                                i64 x_stride, int kw) {
    __shared__ float red[MMV_WARPS][MT * NT * 4][32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int warp_rows = MMV_WARPS / kw, wr = warp / kw, wk = warp % kw;
    int row0 = (blockIdx.x * warp_rows + wr) * MT * 16, m0 = blockIdx.y * NT * 8;
    int n_groups = k / 256;
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
    if (row0 < n) {
        if (DT == DT_Q4_K) q4k_rows<MT, NT>(w, x, acc, row0, n, n_groups, wk, kw, m0, m, x_off, x_stride);
        for (int grp = wk; DT != DT_Q4_K && grp < n_groups; grp += kw) {
            if (DT == DT_Q6_K) q6k_group<MT, NT>(w, x, acc, row0, n, n_groups, grp, m0, m, x_off, x_stride);
            if (DT == DT_Q8_0) q80_group<MT, NT>(w, x, acc, row0, n, n_groups, grp, m0, m, x_off, x_stride);
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) red[warp][(mt * NT + nt) * 4 + e][lane] = acc[mt][nt][e];
    __syncthreads();
    for (int idx = threadIdx.x; idx < warp_rows * MT * NT * 4 * 32; idx += blockDim.x) {
        int l = idx & 31, i = (idx >> 5) % (MT * NT * 4), r = (idx >> 5) / (MT * NT * 4);
        float s = 0.0f;
        for (int v = 0; v < kw; ++v) s += red[r * kw + v][i][l];
        int e = i & 3, nt = (i >> 2) % NT, mt = (i >> 2) / NT;
        int row = (blockIdx.x * warp_rows + r) * MT * 16 + mt * 16 + (l >> 2) + (e >= 2 ? 8 : 0);
        int tok = m0 + nt * 8 + 2 * (l & 3) + (e & 1);
        if (row < n && tok < m) y[(i64)tok * n + row] = s;
    }
}

// matmul_<type>_mma_m<MT>n<NT>: blocks of MMV_WARPS warps, grid (⌈n / (16·MT·MMV_WARPS / kw)⌉,
// ⌈m / 8·NT⌉).
#define MMV_KERNEL(SUFFIX, DT, MT, NT, MIN_BLOCKS)                                                     \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, MIN_BLOCKS)                           \
        matmul_##SUFFIX##_mma_m##MT##n##NT(const u8* w, const float* x, float* y, int k, int n, int m, \
                                           i64 x_off, i64 x_stride, int kw) {                          \
        matvec_mma_body<DT, MT, NT>(w, x, y, k, n, m, x_off, x_stride, kw);                           \
    }
// Two blocks per SM (at most 128 registers) where that costs at most a few spilled bytes; the
// Q4_K kernels with two weight tiles per warp keep their registers (one block per SM).
#define MMV_KERNELS(SUFFIX, DT, MIN_BLOCKS_M2) \
    MMV_KERNEL(SUFFIX, DT, 1, 1, 2)           \
    MMV_KERNEL(SUFFIX, DT, 1, 2, 2)           \
    MMV_KERNEL(SUFFIX, DT, 2, 1, MIN_BLOCKS_M2) \
    MMV_KERNEL(SUFFIX, DT, 2, 2, MIN_BLOCKS_M2)
MMV_KERNELS(q4_k, DT_Q4_K, 1)
MMV_KERNELS(q6_k, DT_Q6_K, 2)
MMV_KERNELS(q8_0, DT_Q8_0, 2)
