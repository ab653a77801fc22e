// Tensor-core products of Q4_K, Q6_K and Q8_0 weights with any number of activation rows, 8·NT
// per block: the decode step, speculative verify batches and (blocks of 8·NT rows) prefill chunks.
//
// A warp owns MT tiles of 16 weight rows; the kw warps of a block that share them split the
// rows' 256-weight groups (warp j takes groups j, j + kw, ...), long rows also over gridDim.z
// blocks, and the partial sums are added in a fixed order that depends on k only. Up to 16
// activation rows no output element's arithmetic depends on the other rows of the batch, so a
// verify row equals the decode step's value bit for bit; prefill products (kw = 1, the NT = 4
// tiles) add in their own order.
//
// The `_mma_` kernels: mma.sync m16n8k16 (f16 inputs, f32 accumulation). (The opt-in Q4_K limb
// kernels further down take int8 activation limbs instead; see there.) A holds the weights'
// integers exactly: the quant (Q6_K, Q8_0; f32 scales per sub-block or block sum), the raw Q4_K
// nibble as an f16 subnormal q·2^-24 in decode steps and verify batches (q4k_group_rows; f32
// scales per sub-block sum), or the quant times its sub-block scale in prefill tiles
// (q4k_group_tiles; d per group sum). Each activation is split
// into two f16 halves, hi + lo, and multiplied twice, so every product is exact to ~2^-22 and
// the accumulation is f32: the result matches the f32 kernels to ~1e-6. (Activations must stay
// below 65504 in magnitude, the f16 range.)
//
// The 16 k's of one mma may be taken in any order as long as A and B agree. Lane (g, t) =
// (lane / 4, lane % 4) supplies, for weight rows g and g + 8, four consecutive weights e..e+3
// that its own 32-bit load holds, paired (e, e+2) and (e+1, e+3) as nibble/byte unpacking yields
// them, and the same four activations of activation row g.
//
// Large products read activations prepared once per input by `mmv_prepare_x`, or by the RMSNorm
// kernel that produced them: every 4-element chunk as the four f16x2 words of its B fragments,
// and the Q4_K per-lane sub-block sums; splitting them in every warp of every block cost about 30
// instructions per 8 activations, as much as unpacking the warp's weights. Any product of an
// input that is already prepared reads it (k and v after q). Other small products (the `_x`
// kernels) split in place, which costs less than an extra launch; same bits either way, except
// for Q4_K products with limbs on, whose prepared form takes the limb kernels (the choice
// depends on the graph and k, n only, never on the batch, so a row's bits still do not).

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

// Prepared activations (`mmv_prepare_x`): row r's chunk c (elements 4c..4c+3) at
// xs[r·k/4 + c] as {hi (e, e+2), hi (e+1, e+3), lo (e, e+2), lo (e+1, e+3)}; after the m rows of
// chunks, each row's k/8 Q4_K sub-block sums, ordered (group, lane t, sub-block s), each four
// (sub-blocks 4h..4h+3 of a lane) split like a chunk: 16 bytes, split_x of their float4.
__device__ __forceinline__ XFrag load_xf(const uint4* p) {
    uint4 v = *p;
    XFrag f;
    f.h0 = v.x;
    f.h1 = v.y;
    f.l0 = v.z;
    f.l1 = v.w;
    return f;
}

// The sum of 8 activations in the fixed order both preparation paths use (the Q4_K mins' B).
__device__ __forceinline__ float sum8(float4 v0, float4 v1) {
    return __fadd_rn(__fadd_rn(__fadd_rn(v0.x, v0.y), __fadd_rn(v0.z, v0.w)),
                     __fadd_rn(__fadd_rn(v1.x, v1.y), __fadd_rn(v1.z, v1.w)));
}

// Writes activations 8c..8c+7 (v0, v1) of row r of an m-row, k-wide input in the prepared layout:
// two chunks and the sum of the 8 (lane t's share of a Q4_K sub-block), added in the order the
// Q4_K product expects.
__device__ __forceinline__ void prepare_chunk8(uint4* xs, int k, int m, int r, int c, float4 v0, float4 v1) {
    XFrag f0 = split_x(v0), f1 = split_x(v1);
    uint4* row = xs + (i64)r * (k / 4);
    row[2 * c] = make_uint4(f0.h0, f0.h1, f0.l0, f0.l1);
    row[2 * c + 1] = make_uint4(f1.h0, f1.h1, f1.l0, f1.l1);
    u16* parts = (u16*)(xs + (i64)m * (k / 4)) + (i64)r * (k / 4);
    int grp = c / 32, w = c % 32;  // w = 4 s + t: sub-block s = 4h + j, lane t
    int j = w >> 2 & 3;
    u16* quad = parts + 2 * (grp * 32 + (w & 3) * 8 + (w >> 4) * 4);
    float v = sum8(v0, v1);
    u16 hi = f2h(v);
    quad[2 * (j & 1) + (j >> 1)] = hi;
    quad[4 + 2 * (j & 1) + (j >> 1)] = f2h(v - h2f(hi));
}

// ---- Limbs: products of at most LIMB_MAX_ROWS rows of Q4_K weights (`matmul_q4_k_limb_n*`) take
// each activation as four int8 limbs, x = 2^e · (L0 + L1·2^-7 + L2·2^-14 + L3·2^-21), with 2^e
// the power of two of its 256-element group (one per row and Q4_K group) that puts the group's
// largest |x| below 64: |Lj| ≤ 64, and the error is below 2^-22 of 2^e, under 2^-27 of the
// group's largest value for groups whose largest |x| is above 2^-94 (2^e is kept at 2^-100 or
// above, so d·2^e stays a normal float for every normal f16 d; below that the step stays 2^-122).
// Activations must stay below 2^117 in magnitude (d·2^e overflows beyond). Multiplied by the Q4_K quants in int8 mma, a group's sums are exact
// integers, so only the per-group scaling rounds. Their layout follows the Q4_K sums, at byte
// m·k·4 + m·k/2 of the prepared activations, group by group, so that a lane's reads of every
// activation tile are one address plus constants:
//   lsums  f16 [k/256][m][4][4 (lane t)][8]  the sums of limb j over lane t's 8 elements of
//                                          sub-blocks s = 4h + (0, 2, 1, 3), h = 0, 1 (exact)
//   limbs  i8  [k/256][m][4][256]          limb j of row r, the group's elements (see limb_word)
//   scale  f32 [k/256][m]                  2^e, or NaN for a group holding a NaN or an infinity
//   then LIMB_PAD_BYTES that the product kernels' reads of rows past the batch may reach (their
//   outputs are never written).
// The preparing kernels write them only for batches of at most LIMB_MAX_ROWS rows whose product
// reads them (their `limbs` argument).
#define LIMB_MAX_ROWS 16
#define LIMB_PAD_BYTES 16384
// Byte offset of lane t's 8 limbs (elements 8t..8t+7) of sub-block s within a group's limb row:
// sub-block pairs interleaved per lane, [s / 2][lane t][s % 2][8 bytes], so a lane's words of two
// sub-blocks are one 16-byte load (one-row decode 12.42 → 11.82 ms on an H200 against elements
// in order, bench/NOTES.md).
__device__ __forceinline__ int limb_word(int s, int t) { return (s >> 1) * 64 + 16 * t + 8 * (s & 1); }

__device__ __forceinline__ u8* limb_base(void* xs, int k, int m) { return (u8*)xs + (i64)m * k * 4 + (i64)m * k / 2; }
// The three regions of the layout above, from its base.
__device__ __forceinline__ u16* limb_lsums(u8* base) { return (u16*)base; }
__device__ __forceinline__ u8* limb_rows(u8* base, int k, int m) { return base + (i64)m * k; }
__device__ __forceinline__ float* limb_scales(u8* base, int k, int m) { return (float*)(base + (i64)m * k * 5); }

// |v| for the group maximum, with NaN and ±inf as +inf (fmaxf would drop a NaN).
__device__ __forceinline__ float limb_abs(float v) {
    float a = fabsf(v);
    return a <= 3.402823466e38f ? a : INFINITY;
}

// Writes the limbs of activations 8c..8c+7 (v0, v1) of row r: lane t = c % 4 of sub-block
// s = (c % 32) / 4 of group c / 32. The 32 chunks of a group are the 32 lanes of the calling
// warp, all of which call it together (the group's maximum is a warp reduction). Not inlined:
// inside the RMSNorm kernel its registers made the decode step's norms spill even with limbs off.
__device__ __noinline__ void prepare_limbs8(uint4* xs, int k, int m, int r, int c, float4 v0, float4 v1) {
    u8* base = limb_base(xs, k, m);
    float x[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, limb_abs(x[i]));
    amax = warp_max(amax);
    bool bad = !(amax < INFINITY);
    // e in [-100, 122]: 2^e and 2^(21 - e) are normal floats, and d·2^e is not subnormal for
    // any normal f16 d.
    int e = -100;
    if (!bad && amax > 0.0f) {
        int E;
        frexpf(amax, &E);
        e = max(E - 6, -100);
    }
    float f = __int_as_float((127 + 21 - e) << 23);  // 2^(21 - e): |x|·f < 2^27, exact
    u32 words[4][2] = {{0u, 0u}, {0u, 0u}, {0u, 0u}, {0u, 0u}};
    int sums[4] = {0, 0, 0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        // U = round(x·2^(21 - e)) = ((L0·128 + L1)·128 + L2)·128 + L3, balanced base-128 digits.
        int u = bad ? 0 : __float2int_rn(x[i] * f);
        int l[4];
#pragma unroll
        for (int j = 3; j > 0; --j) {
            int t = u + 64;
            l[j] = (t & 127) - 64;
            u = t >> 7;
        }
        l[0] = u;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            sums[j] += l[j];
            words[j][i >> 2] |= ((u32)l[j] & 0xffu) << (8 * (i & 3));
        }
    }
    int grp = c / 32, w = c % 32, s = w >> 2, t = w & 3;
    int slot = 4 * (s >> 2) + ((s & 1) << 1) + ((s >> 1) & 1);  // s & 3 = 0, 2, 1, 3 → 0, 1, 2, 3
    i64 lrow = ((i64)grp * m + r) * 4;                           // limb 0's row in the group
    u16* lsums = limb_lsums(base);
    u8* limbs = limb_rows(base, k, m);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        *(uint2*)(limbs + (lrow + j) * 256 + limb_word(s, t)) = make_uint2(words[j][0], words[j][1]);
        lsums[(lrow + j) * 32 + 8 * t + slot] = f2h((float)sums[j]);
    }
    if (w == 0)
        limb_scales(base, k, m)[(i64)grp * m + r] = bad ? __int_as_float(0x7fc00000) : __int_as_float((127 + e) << 23);
}

// Splits m rows of k activations (k a multiple of 256; rows x_stride apart from x_off, 16-byte
// aligned) into the prepared layout above, and with `limbs` (m ≤ LIMB_MAX_ROWS) the limbs: grid
// (⌈k / 8·blockDim.x⌉, m), one thread per 8 activations (a warp per group; k / 8 is a multiple
// of 32, so a warp is all in or all out).
extern "C" __global__ void mmv_prepare_x(const float* x, i64 x_off, i64 x_stride, int k, int m, uint4* xs,
                                         int limbs) {
    pdl_entry();
    int r = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= k / 8) return;
    const float* p = x + x_off + (i64)r * x_stride + 8 * c;
    float4 v0 = *(const float4*)p, v1 = *(const float4*)(p + 4);
    prepare_chunk8(xs, k, m, r, c, v0, v1);
    if (limbs) prepare_limbs8(xs, k, m, r, c, v0, v1);
}

// (v & mask) | magic in one LOP3 (the compiler otherwise spends two on two immediates).
template <u32 MASK, u32 MAGIC>
__device__ __forceinline__ u32 and_or(u32 v) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(v), "n"(MASK), "n"(MAGIC));
    return r;
}

// f16x2 of (1024 + q) for the nibbles at bits 0..3 and 16..19 of v.
__device__ __forceinline__ u32 nibbles_h2(u32 v) { return and_or<0x000F000Fu, 0x64006400u>(v); }

// f16x2 of (64 + q) for the nibbles at bits 4..7 and 20..23 of v (64's f16 exponent makes bit 4
// the units bit), so high nibbles need no shift.
__device__ __forceinline__ u32 high_nibbles_h2(u32 v) { return and_or<0x00F000F0u, 0x54005400u>(v); }

// A product's activations: prepared by `mmv_prepare_x` (PREP), or the f32 rows themselves
// (x_off, x_stride), split here by every warp that reads them, which for a small product costs
// less than the extra launch. Both give the same fragments and sums bit for bit. GATHER (f32
// rows only): batch row tok is activation row xrows[tok] and writes output row outs[tok] (the
// expert-grouped products, matmul_id_tcg); the arithmetic is the same.
template <bool PREP, bool GATHER = false>
struct Acts {
    static_assert(!(PREP && GATHER), "gathered rows are f32 rows");
    const void* p;
    i64 off, stride;
    int k, m;
    const int* xrows = nullptr;
    const int* outs = nullptr;

    // The activation row of batch row tok.
    __device__ __forceinline__ i64 row(int tok) const { return GATHER ? (i64)xrows[tok] : (i64)tok; }
    // The output row of batch row tok.
    __device__ __forceinline__ i64 out(int tok) const { return GATHER ? (i64)outs[tok] : (i64)tok; }

    // Elements 4c..4c+3 of row tok as B fragments.
    __device__ __forceinline__ XFrag chunk(int tok, int c) const {
        if (PREP) return load_xf((const uint4*)p + (i64)tok * (k / 4) + c);
        return split_x(*(const float4*)((const float*)p + off + row(tok) * stride + 4 * c));
    }

    // Lane t's sums of its 8 activations of Q4_K sub-blocks 4h..4h+3 of group grp, split as B
    // fragments.
    __device__ __forceinline__ XFrag sums(int tok, int grp, int t, int h) const {
        if (PREP) return load_xf((const uint4*)p + (i64)m * (k / 4) + (i64)tok * (k / 32) + grp * 8 + 2 * t + h);
        float r[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float* q = (const float*)p + off + row(tok) * stride + grp * 256 + 32 * (4 * h + j) + 8 * t;
            r[j] = sum8(*(const float4*)q, *(const float4*)(q + 4));
        }
        return split_x(make_float4(r[0], r[1], r[2], r[3]));
    }

    // chunk's hi pair (h0, h1) or, with lo, its lo pair (l0, l1): one B column's share.
    __device__ __forceinline__ uint2 chunk_half(int tok, int c, bool lo) const {
        if (PREP) return ((const uint2*)p)[2 * ((i64)tok * (k / 4) + c) + lo];
        XFrag f = chunk(tok, c);
        return lo ? make_uint2(f.l0, f.l1) : make_uint2(f.h0, f.h1);
    }

    // sums' hi or lo pair, as chunk_half.
    __device__ __forceinline__ uint2 sums_half(int tok, int grp, int t, int h, bool lo) const {
        if (PREP) return ((const uint2*)p)[2 * ((i64)m * (k / 4) + (i64)tok * (k / 32) + grp * 8 + 2 * t + h) + lo];
        XFrag f = sums(tok, grp, t, h);
        return lo ? make_uint2(f.l0, f.l1) : make_uint2(f.h0, f.h1);
    }
};

// Lane (g, t)'s activation row for each 8-row tile nt: row m0 + 8·nt + g, or row m0 past m. An
// mma's output columns are independent dot products, so a column fed another row's activations
// only makes an output that is never written: no predicate, no zeroing.
template <int NT>
__device__ __forceinline__ void activation_rows(int m0, int m, int (&tok)[NT]) {
    int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) tok[nt] = m0 + nt * 8 + g < m ? m0 + nt * 8 + g : m0;
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

// Q4K_HL 1: the Q4_K decode and verify kernels (q4k_group_rows, q4k_mins) multiply a sub-block by
// the hi activation halves in one mma chain and by the lo halves in another, and fold each chain
// into the f32 sums by its own FMA, hi first (the mins likewise), where 0 (the default) runs one
// chain alternating them. A batch of one row then takes hi and lo as two columns of one mma
// (q4k_group_one): half the mma of a decode step, the same bits as a verify row. An A/B knob,
// `SPECULA_Q4K_HL`; the two orders round differently, so each is tested on its own.
#ifndef Q4K_HL
#define Q4K_HL 0
#endif

// ---- Q4_K: 144-byte groups (f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 nibble bytes).
// Sub-block s (32 weights) lives in the low (s even) or high (s odd) nibbles of bytes
// 32 (s / 2) .. +31 of the nibble area. Lane t loads bytes 8t..8t+7 of each 32-byte run: weights
// 8t..8t+3 (.x) and 8t+4..8t+7 (.y) of sub-blocks 2j and 2j + 1. A = the nibble as an f16
// subnormal (q4k_group_rows) or sc·q (≤ 945, exact; q4k_group_tiles); the mins enter through
// two more mma per group whose k runs over (sub-block, lane) pairs: A = min[s], B = the lane's
// partial sum of its 8 activations of sub-block s.
struct Q4KTile {
    uint2 q[2][4];  // [row g / g + 8][32-byte run]
    u32 dd[2];      // d | dmin << 16
    u32 s[2][3];    // packed scales and mins
};

// Weight words are read once per product: WEIGHT_L1 2 (the default) loads them as first to
// evict from L1 (ld.global.nc.L1::evict_first), so the activations that every warp rereads stay
// there (H200, Q4_K weights: 31B decode 13.99 → 13.70 ms, with limbs 11.59 → 11.27); 0 plain
// loads. (Not allocating them in L1 at all was slower, 14.80 ms: the four lanes of a row then
// fetch its scale words from L2 one load at a time; bench/NOTES.md.)
#ifndef WEIGHT_L1
#define WEIGHT_L1 2
#endif
// The hint of the Q6_K and Q8_0 kernels with NT activation tiles: theirs only at one tile; at two
// or more the asm loads cost those kernels registers and spills (the DFlash block's 16-row
// products 9 % slower on an H200), where Q4_K's are unaffected.
#define SMALL_HINT(NT) ((NT) == 1 ? WEIGHT_L1 : 0)
// The hinted loads are plain (not volatile, no memory clobber) so the compiler may schedule them
// freely, even before any wait (pdl_enter's, a late lead's pdl_late, or a sibling's at exit):
// sound only because weights are written before any launch
// that reads them, by the host or by the repack kernels (q8_0_repack, q6_k_repack), which the
// backend waits for when it makes a copy, and never by a kernel of a run. Generic pointers to
// device allocations are global addresses.
template <int HINT = WEIGHT_L1>
__device__ __forceinline__ u32 ldw32(const u8* p) {
    u32 v;
    if (HINT == 2) {
        asm("ld.global.nc.L1::evict_first.u32 %0, [%1];" : "=r"(v) : "l"(p));
    } else {
        v = *(const u32*)p;
    }
    return v;
}
template <int HINT = WEIGHT_L1>
__device__ __forceinline__ u32 ldw16(const u8* p) {
    unsigned short v;
    if (HINT == 2) {
        asm("ld.global.nc.L1::evict_first.u16 %0, [%1];" : "=h"(v) : "l"(p));
    } else {
        v = *(const u16*)p;
    }
    return v;
}
template <int HINT = WEIGHT_L1>
__device__ __forceinline__ uint4 ldw128(const u8* p) {
    uint4 v;
    if (HINT == 2) {
        asm("ld.global.nc.L1::evict_first.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
    } else {
        v = *(const uint4*)p;
    }
    return v;
}
template <int HINT = WEIGHT_L1>
__device__ __forceinline__ uint2 ldw64(const u8* p) {
    uint2 v;
    if (HINT == 2) {
        asm("ld.global.nc.L1::evict_first.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    } else {
        v = *(const uint2*)p;
    }
    return v;
}

// Q4K_HEAD16 1 (the default) loads a group's 16 header bytes (d, dmin, scales) in one 16-byte
// load, 0 in four 4-byte ones (an A/B knob, `SPECULA_Q4K_HEAD16`). 144-byte groups keep them
// 16-byte aligned wherever the weights start 16-byte aligned (the backend checks). H200, 31B
// decode 89.5 → 92.9 tok/s (bench/NOTES.md, twentieth session): ten loads a group for a lane,
// not sixteen.
#ifndef Q4K_HEAD16
#define Q4K_HEAD16 1
#endif
// Lane t's share of the groups at b[0] (row g) and b[1] (row g + 8): from global memory with the
// WEIGHT_L1 hint, or (HINT 0, plain loads) from a copy staged in shared memory (the wgmma verify
// kernel's, wgmma_verify.cu).
template <int HINT = WEIGHT_L1>
__device__ __forceinline__ void q4k_load_rows(Q4KTile& T, const u8* const (&b)[2], int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (Q4K_HEAD16) {
            uint4 h = ldw128<HINT>(b[r]);
            T.dd[r] = h.x;
            T.s[r][0] = h.y;
            T.s[r][1] = h.z;
            T.s[r][2] = h.w;
        } else {
            T.dd[r] = ldw32<HINT>(b[r]);
            T.s[r][0] = ldw32<HINT>(b[r] + 4);
            T.s[r][1] = ldw32<HINT>(b[r] + 8);
            T.s[r][2] = ldw32<HINT>(b[r] + 12);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) T.q[r][j] = ldw64<HINT>(b[r] + 16 + 32 * j + 8 * t);
    }
}

__device__ __forceinline__ void q4k_load(Q4KTile& T, const u8* w, int row_g, int row_g8, int n_groups,
                                         int grp, int t) {
    const u8* b[2] = {w + ((i64)row_g * n_groups + grp) * 144, w + ((i64)row_g8 * n_groups + grp) * 144};
    q4k_load_rows(T, b, t);
}

// The eight 6-bit scales (sc[0] bytes 0..3 = sub-blocks 0..3, sc[1] = 4..7) and mins (mn[]) of
// a Q4_K group from its three packed scale words.
__device__ __forceinline__ void q4k_unpack(const u32* s, u32* sc, u32* mn) {
    sc[0] = s[0] & 0x3f3f3f3fu;
    mn[0] = s[1] & 0x3f3f3f3fu;
    sc[1] = (s[2] & 0x0f0f0f0fu) | (((s[0] >> 6) & 0x03030303u) << 4);
    mn[1] = ((s[2] >> 4) & 0x0f0f0f0fu) | (((s[1] >> 6) & 0x03030303u) << 4);
}

// q4k_unpack for rows g and g + 8 of each of MT tiles.
template <int MT>
__device__ __forceinline__ void q4k_unpack_tiles(const Q4KTile (&T)[MT], u32 (&sc)[MT][2][2], u32 (&mn)[MT][2][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) q4k_unpack(T[mt].s[r], sc[mt][r], mn[mt][r]);
}

// f16x2 (byte i of v, byte j of v) for bytes below 1024: 0x64 above each byte is 1024 + byte.
__device__ __forceinline__ u32 bytes_h2(u32 v, int i, int j) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(0x64u), "r"((u32)(i | (4 << 4) | (j << 8) | (4 << 12))));
    return hsub2(r, 0x64006400u);
}

// The A fragment of the Q4_K mins' mma for half h of a group (k = (sub-block, lane): slots
// (2t, 2t+1, 2t+8, 2t+9) hold sub-blocks 4h + (0, 2, 1, 3)) from the packed mins of rows g and
// g + 8.
__device__ __forceinline__ void q4k_min_frag(u32 mn_g, u32 mn_g8, u32 (&a)[4]) {
    a[0] = bytes_h2(mn_g, 0, 2);
    a[1] = bytes_h2(mn_g8, 0, 2);
    a[2] = bytes_h2(mn_g, 1, 3);
    a[3] = bytes_h2(mn_g8, 1, 3);
}

// c[j] = 0 for the four accumulators of one mma.
__device__ __forceinline__ void zero4(float* c) { c[0] = c[1] = c[2] = c[3] = 0.0f; }

// tmn += a Q4_K group's mins times its activations' sub-block sums: k = (sub-block s, lane t);
// slots (2t, 2t+1, 2t+8, 2t+9) hold s = 4h + (0, 2, 1, 3), the order split_x pairs (v.x, v.z)
// and (v.y, v.w) in. B = the lane's sums of its 8 activations of sub-blocks 4h..4h+3.
// PASS 0: the hi and lo halves alternating in one chain; 1: the hi halves only; 2: the lo only
// (Q4K_HL's two chains).
template <int MT, int NT, bool PREP, int PASS = 0, bool G = false>
__device__ __forceinline__ void q4k_mins(const u32 (&mn)[MT][2][2], const Acts<PREP, G>& A, const int (&tok)[NT],
                                         int grp, float (&tmn)[MT][NT][4]) {
    int t = threadIdx.x & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        XFrag p[NT];
        uint2 q[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            if (PASS == 0)
                p[nt] = A.sums(tok[nt], grp, t, h);
            else
                q[nt] = A.sums_half(tok[nt], grp, t, h, PASS == 2);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            u32 a[4];
            q4k_min_frag(mn[mt][0][h], mn[mt][1][h], a);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if (PASS == 0)
                    mma_split(tmn[mt][nt], a[0], a[1], a[2], a[3], p[nt]);
                else
                    mma_16816(tmn[mt][nt], a[0], a[1], a[2], a[3], q[nt].x, q[nt].y);
            }
        }
    }
}

// acc −= dmin · (pass PASS of the group's mins · sub-block sums), for rows g and g + 8 (e < 2, e ≥ 2).
template <int MT, int NT, bool PREP, int PASS, bool G>
__device__ __forceinline__ void q4k_mins_fold(const Q4KTile (&T)[MT], const u32 (&mn)[MT][2][2], const Acts<PREP, G>& A,
                                              const int (&tok)[NT], int grp, float (&acc)[MT][NT][4]) {
    float tmn[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) zero4(tmn[mt][nt]);
    q4k_mins<MT, NT, PREP, PASS>(mn, A, tok, grp, tmn);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float m0_ = h2f((u16)(T[mt].dd[0] >> 16)), m1_ = h2f((u16)(T[mt].dd[1] >> 16));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = __fmaf_rn(-(e < 2 ? m0_ : m1_), tmn[mt][nt][e], acc[mt][nt][e]);
    }
}

// One Q4_K group of a prefill tile (NT ≥ 4 activation tiles, source::MMA_PREFILL_TILES): A =
// sc·q in f16 (the nibbles through the 1024/64 exponent magic, one HFMA2 with the scale and
// −offset·scale per two weights), one accumulator chain per tile across the sub-blocks (prefill
// tiles have independent mma in plenty), then d and dmin in f32. Another order than
// q4k_group_rows: no row of more than 16 is compared with a decode row.
template <int MT, int NT, bool PREP, bool G>
__device__ __forceinline__ void q4k_group_tiles(const Q4KTile (&T)[MT], const Acts<PREP, G>& A, float (&acc)[MT][NT][4],
                                                int grp, int m0, int m) {
    int t = threadIdx.x & 3;
    int tok[NT];
    activation_rows<NT>(m0, m, tok);
    u32 sc[MT][2][2], mn[MT][2][2];  // [mt][row g / g + 8][sub-blocks 0..3 / 4..7]
    q4k_unpack_tiles<MT>(T, sc, mn);
    float c[MT][NT][4], tmn[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            zero4(c[mt][nt]);
            zero4(tmn[mt][nt]);
        }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        XFrag f[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            f[nt][0] = A.chunk(tok[nt], grp * 64 + 8 * s + 2 * t);
            f[nt][1] = A.chunk(tok[nt], grp * 64 + 8 * s + 2 * t + 1);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            u32 a[2][2][2];  // [row g / g + 8][half .x/.y][pair (e, e+2) / (e+1, e+3)]
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                // Even sub-blocks: low nibbles as 1024 + q; odd: high nibbles as 64 + q. One fma
                // with the scale and −offset·scale gives sc·q exactly.
                u32 scale = bytes_h2(sc[mt][r][s >> 2], s & 3, s & 3);
                u32 bias = hmul2(scale, (s & 1) ? 0xD400D400u : 0xE400E400u);  // −64·sc / −1024·sc
                u32 wx = T[mt].q[r][s >> 1].x, wy = T[mt].q[r][s >> 1].y;
                if (s & 1) {
                    a[r][0][0] = hfma2(high_nibbles_h2(wx), scale, bias);
                    a[r][0][1] = hfma2(high_nibbles_h2(wx >> 8), scale, bias);
                    a[r][1][0] = hfma2(high_nibbles_h2(wy), scale, bias);
                    a[r][1][1] = hfma2(high_nibbles_h2(wy >> 8), scale, bias);
                } else {
                    a[r][0][0] = hfma2(nibbles_h2(wx), scale, bias);
                    a[r][0][1] = hfma2(nibbles_h2(wx >> 8), scale, bias);
                    a[r][1][0] = hfma2(nibbles_h2(wy), scale, bias);
                    a[r][1][1] = hfma2(nibbles_h2(wy >> 8), scale, bias);
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    mma_16816(c[mt][nt], a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1],
                              f[nt][hf].h0, f[nt][hf].h1);
                    mma_16816(c[mt][nt], a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1],
                              f[nt][hf].l0, f[nt][hf].l1);
                }
        }
    }
    q4k_mins<MT, NT, PREP>(mn, A, tok, grp, tmn);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float d0 = h2f((u16)(T[mt].dd[0] & 0xffff)), m0_ = h2f((u16)(T[mt].dd[0] >> 16));
        float d1 = h2f((u16)(T[mt].dd[1] & 0xffff)), m1_ = h2f((u16)(T[mt].dd[1] >> 16));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float d = e < 2 ? d0 : d1, dm = e < 2 ? m0_ : m1_;
                acc[mt][nt][e] = __fmaf_rn(d, c[mt][nt][e], __fmaf_rn(-dm, tmn[mt][nt][e], acc[mt][nt][e]));
            }
        }
    }
}

// float(byte i of v): one I2F.U8 with a byte select for bytes 0, 2 and 3 (ptxas masks byte 1
// and converts it as a u32: three instructions).
__device__ __forceinline__ float byte_f32(u32 v, int i) {
    float r;
    asm("cvt.rn.f32.u8 %0, %1;" : "=f"(r) : "r"(v >> (8 * i)));
    return r;
}

// Sub-block s's A fragments of a tile's rows g and g + 8 as f16 subnormals (q4k_group_rows):
// a[row g / g + 8][half .x / .y][pair (e, e + 2) / (e + 1, e + 3)], its low nibbles (s even) or
// high ones (s odd) masked in place.
__device__ __forceinline__ void q4k_subnormal_frags(const Q4KTile& T, int s, u32 (&a)[2][2][2]) {
    const u32 mask = (s & 1) ? 0x00F000F0u : 0x000F000Fu;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        u32 wx = T.q[r][s >> 1].x, wy = T.q[r][s >> 1].y;
        a[r][0][0] = wx & mask;
        a[r][0][1] = (wx >> 8) & mask;
        a[r][1][0] = wy & mask;
        a[r][1][1] = (wy >> 8) & mask;
    }
}

// One Q4_K group of a decode step or verify batch (NT ≤ 2 activation tiles). A holds the raw
// nibbles as f16 subnormals: q·2^-24 for the low nibbles (bits 0..3 of each half), q·2^-20 for
// the high ones (bits 4..7), one AND per two weights and nothing to subtract. Each sub-block's
// product (its two k-halves, hi and lo activations, four mma) is its own f32 sum, exact but for
// the mma's additions; its 6-bit scale multiplies it into the group's f32 sum of the even or of
// the odd sub-blocks, in sub-block order, and the tail scales those by d·2^24 and d·2^20 (under
// Q4K_HL the hi and lo products are two sums, each scaled in, hi first). Every row of any batch
// takes the same operations in the same order, so a verify row equals the decode step's (a decode
// step's `_p1` kernel under Q4K_HL: q4k_group_one).
template <int MT, int NT, bool PREP, bool G>
__device__ __forceinline__ void q4k_group_rows(const Q4KTile (&T)[MT], const Acts<PREP, G>& A, float (&acc)[MT][NT][4],
                                               int grp, int m0, int m) {
    int t = threadIdx.x & 3;
    int tok[NT];
    activation_rows<NT>(m0, m, tok);
    u32 sc[MT][2][2], mn[MT][2][2];  // [mt][row g / g + 8][sub-blocks 0..3 / 4..7]
    q4k_unpack_tiles<MT>(T, sc, mn);
    // The mins (q4k_mins), −dmin·M into acc before d·T (the tiles' tail order). With
    // one activation tile they come first, so that neither they nor M stay live through the
    // sub-blocks (its double-buffered weights need the registers: H200, 31B decode 79.7 → 83.4
    // tok/s); with two, last (first cost the 16-row verify 1 %, and spilled in (1, 2)). Same
    // operations either way, so the same bits.
    auto mins = [&]() {
        if (Q4K_HL) {
            q4k_mins_fold<MT, NT, PREP, 1>(T, mn, A, tok, grp, acc);
            q4k_mins_fold<MT, NT, PREP, 2>(T, mn, A, tok, grp, acc);
        } else {
            q4k_mins_fold<MT, NT, PREP, 0>(T, mn, A, tok, grp, acc);
        }
    };
    if (NT == 1) mins();
    float tsc[MT][NT][2][4];  // [..][even / odd sub-blocks][c]
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            zero4(tsc[mt][nt][0]);
            zero4(tsc[mt][nt][1]);
        }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        XFrag f[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            f[nt][0] = A.chunk(tok[nt], grp * 64 + 8 * s + 2 * t);
            f[nt][1] = A.chunk(tok[nt], grp * 64 + 8 * s + 2 * t + 1);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            u32 a[2][2][2];
            q4k_subnormal_frags(T[mt], s, a);
            float s0 = byte_f32(sc[mt][0][s >> 2], s & 3), s1 = byte_f32(sc[mt][1][s >> 2], s & 3);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                // The sub-block's product c, scaled into the even or odd sum.
                auto fold = [&](const float (&c)[4]) {
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        tsc[mt][nt][s & 1][e] = __fmaf_rn(e < 2 ? s0 : s1, c[e], tsc[mt][nt][s & 1][e]);
                };
                float c[4];
                zero4(c);
                if (Q4K_HL) {
                    // The hi chain, folded in, then the lo chain into the same registers.
#pragma unroll
                    for (int hf = 0; hf < 2; ++hf)
                        mma_16816(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], f[nt][hf].h0, f[nt][hf].h1);
                    fold(c);
                    zero4(c);
#pragma unroll
                    for (int hf = 0; hf < 2; ++hf)
                        mma_16816(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], f[nt][hf].l0, f[nt][hf].l1);
                } else {
#pragma unroll
                    for (int hf = 0; hf < 2; ++hf)
                        mma_split(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], f[nt][hf]);
                }
                fold(c);
            }
        }
    }
    if (NT != 1) mins();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        // d·2^24 and d·2^20 undo the subnormals' scales (exact for every f16 d).
        float d0 = h2f((u16)(T[mt].dd[0] & 0xffff)), d1 = h2f((u16)(T[mt].dd[1] & 0xffff));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float d = e < 2 ? d0 : d1;
                acc[mt][nt][e] = __fmaf_rn(d * 16777216.0f, tsc[mt][nt][0][e], acc[mt][nt][e]);
                acc[mt][nt][e] = __fmaf_rn(d * 1048576.0f, tsc[mt][nt][1][e], acc[mt][nt][e]);
            }
    }
}

// One Q4_K group: the rows kernel up to two activation tiles (decode steps, verify batches), the
// sc·q kernel for prefill tiles.
template <int MT, int NT, bool PREP, bool G>
__device__ __forceinline__ void q4k_group(const Q4KTile (&T)[MT], const Acts<PREP, G>& A, float (&acc)[MT][NT][4],
                                          int grp, int m0, int m) {
    if (NT >= 4)
        q4k_group_tiles<MT, NT, PREP>(T, A, acc, grp, m0, m);
    else
        q4k_group_rows<MT, NT, PREP>(T, A, acc, grp, m0, m);
}

// One Q4_K group of a batch of one row (m = 1) under Q4K_HL: the row's hi and lo activation halves
// are columns 0 and 1 of one mma (lane g's B: the hi pair for even g, the lo pair for odd; the
// columns past 1 repeat them and are never written), so a sub-block takes two mma, not four, and
// the mins two. Lane (g, 0)'s c[0] and c[1] (c[2] and c[3]) are row g's (g + 8's) hi and lo
// chains, folded in hi first with the same scales as q4k_group_rows folds them: the same bits as
// a verify row. They live where the rows kernel keeps column 0 (acc e = 0 and 2).
template <bool PREP, bool G>
__device__ __forceinline__ void q4k_group_one(const Q4KTile (&T)[1], const Acts<PREP, G>& A, float (&acc)[1][1][4],
                                              int grp) {
    int t = threadIdx.x & 3;
    bool lo = (threadIdx.x >> 2) & 1;
    u32 sc[1][2][2], mn[1][2][2];
    q4k_unpack_tiles<1>(T, sc, mn);
    {  // the mins first, as the rows kernel with one activation tile
        float c[4];
        zero4(c);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            uint2 p = A.sums_half(0, grp, t, h, lo);
            u32 a[4];
            q4k_min_frag(mn[0][0][h], mn[0][1][h], a);
            mma_16816(c, a[0], a[1], a[2], a[3], p.x, p.y);
        }
        float m0_ = h2f((u16)(T[0].dd[0] >> 16)), m1_ = h2f((u16)(T[0].dd[1] >> 16));
        acc[0][0][0] = __fmaf_rn(-m0_, c[0], acc[0][0][0]);
        acc[0][0][2] = __fmaf_rn(-m1_, c[2], acc[0][0][2]);
        acc[0][0][0] = __fmaf_rn(-m0_, c[1], acc[0][0][0]);
        acc[0][0][2] = __fmaf_rn(-m1_, c[3], acc[0][0][2]);
    }
    float tsc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // [even / odd sub-blocks][row g / g + 8]
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        uint2 f[2];
        f[0] = A.chunk_half(0, grp * 64 + 8 * s + 2 * t, lo);
        f[1] = A.chunk_half(0, grp * 64 + 8 * s + 2 * t + 1, lo);
        u32 a[2][2][2];
        q4k_subnormal_frags(T[0], s, a);
        float s0 = byte_f32(sc[0][0][s >> 2], s & 3), s1 = byte_f32(sc[0][1][s >> 2], s & 3);
        float c[4];
        zero4(c);
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
            mma_16816(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], f[hf].x, f[hf].y);
        tsc[s & 1][0] = __fmaf_rn(s0, c[0], tsc[s & 1][0]);
        tsc[s & 1][1] = __fmaf_rn(s1, c[2], tsc[s & 1][1]);
        tsc[s & 1][0] = __fmaf_rn(s0, c[1], tsc[s & 1][0]);
        tsc[s & 1][1] = __fmaf_rn(s1, c[3], tsc[s & 1][1]);
    }
    float d0 = h2f((u16)(T[0].dd[0] & 0xffff)), d1 = h2f((u16)(T[0].dd[1] & 0xffff));
    acc[0][0][0] = __fmaf_rn(d0 * 16777216.0f, tsc[0][0], acc[0][0][0]);
    acc[0][0][0] = __fmaf_rn(d0 * 1048576.0f, tsc[1][0], acc[0][0][0]);
    acc[0][0][2] = __fmaf_rn(d1 * 16777216.0f, tsc[0][1], acc[0][0][2]);
    acc[0][0][2] = __fmaf_rn(d1 * 1048576.0f, tsc[1][1], acc[0][0][2]);
}

// Weight rows g and g + 8 of each of a warp's MT 16-row tiles from row0 on, clamped to the last
// row (their results are not written).
template <int MT>
__device__ __forceinline__ void q4k_tile_rows(int row0, int n, int (&rows)[MT][2]) {
    int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        int ra = row0 + mt * 16 + g, rb = ra + 8;
        rows[mt][0] = ra < n ? ra : n - 1;
        rows[mt][1] = rb < n ? rb : n - 1;
    }
}

// Calls group(T, grp) with the weights of rows `rows` for a warp's Q4_K groups first,
// first + stride, ...; with DOUBLE the next group's weights load into the other of two tiles
// while the current one is multiplied, else after it (for kernels that need the registers).
template <int MT, bool DOUBLE, class F>
__device__ __forceinline__ void q4k_groups(const u8* w, const int (&rows)[MT][2], int n_groups, int first, int stride,
                                           F&& group) {
    int t = threadIdx.x & 3;
    auto load = [&](Q4KTile(&T)[MT], int grp) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) q4k_load(T[mt], w, rows[mt][0], rows[mt][1], n_groups, grp, t);
    };
    if (first >= n_groups) return;
    if (DOUBLE) {
        Q4KTile a[MT], b[MT];
        load(a, first);
        for (int grp = first; grp < n_groups; grp += 2 * stride) {
            int g1 = grp + stride, g2 = g1 + stride;
            if (g1 < n_groups) load(b, g1);
            group(a, grp);
            if (g1 >= n_groups) break;
            if (g2 < n_groups) load(a, g2);
            group(b, g1);
        }
    } else {
        Q4KTile cur[MT];
        for (int grp = first; grp < n_groups; grp += stride) {
            load(cur, grp);
            group(cur, grp);
        }
    }
}

// A warp's share of a Q4_K product: double-buffered weights with one activation tile; two
// need the registers for their activations, so the next group loads after.
template <int MT, int NT, bool PREP, bool G>
__device__ __forceinline__ void q4k_rows(const u8* w, const Acts<PREP, G>& A, float (&acc)[MT][NT][4], int row0,
                                         int n, int n_groups, int first, int stride, int m0, int m) {
    int rows[MT][2];
    q4k_tile_rows<MT>(row0, n, rows);
    q4k_groups<MT, NT == 1>(w, rows, n_groups, first, stride, [&](const Q4KTile(&T)[MT], int grp) {
        q4k_group<MT, NT, PREP>(T, A, acc, grp, m0, m);
    });
}

// ---- Persistent products (the `_p` kernels: MT = 1, one activation tile; and `_m2n2_p`, the
// (2, 2) tile of 9–16-row batches, one block per SM, PERSIST_ITERS_M2). Rather than
// a block per 16·(MMV_WARPS / kw) weight rows and split plane, which starts all its warps on cold
// loads at once and ends at a barrier that the warps with one group fewer wait at (a 21-group row
// over 8 warps: 3, 3, 3, 3, 3, 2, 2, 2), gridDim.y blocks take the units (row tile, plane)
// blockIdx.y, + gridDim.y, ... (at most PERSIST_ITERS each), and a warp's loads run ahead across
// units (one-tile walks; the two-tile ones load each group right before it). In iteration i warp
// (wr, wk) takes slice (wk + 3i) % kw of its unit's groups, so over a block's iterations every
// warp gets about as many groups; the slices' partial sums wait in shared
// memory, and after one barrier each unit's rows add them in slice order, as the one-shot kernels
// add their warps' (empty slices as +0.0): the same bits for every row.
#define PERSIST_ITERS 6
// The two-weight-tile walks (`_m2n2_p`, 9–16 rows) take at most this many units a block: their
// partial sums per iteration are four times the one-tile kernels' (see matvec_mma_persist_body),
// and 3 iterations of them fill the 48 KiB of static shared memory exactly.
#define PERSIST_ITERS_M2 3
// The launch must give gridDim.y · PERSIST_ITERS (PERSIST_ITERS_M2) ≥ the units
// (source::persist_blocks, persist_blocks_m2 do): units past that would be left unwritten.
template <int MT>
__host__ __device__ constexpr int persist_iters() {
    return MT == 1 ? PERSIST_ITERS : PERSIST_ITERS_M2;
}

// WALK_FAST 1 (the default; an A/B knob, `SPECULA_WALK_FAST`): a walk finds its next unit
// without dividing where it can (kw is a power of two; unsplit products have one plane); 0
// divides as before. Same units, groups and order. H200, 31B decode 98.4 / 98.8 → 99.7 / 99.7
// tok/s (bench/NOTES.md, twenty-second session).
#ifndef WALK_FAST
#define WALK_FAST 1
#endif

// Where a warp is in its walk: iteration i, group grp of weight rows row0.., or done (i < 0).
struct PersistWalk {
    int n_groups, kw, wk, wr, warp_rows, splits, tiles_y, units, n;
    int iters, tile_rows;  // units a block takes at most; weight rows of a warp's unit (16 · MT)
    int i, grp, row0;

    // kw divides MMV_WARPS (8), so it is a power of two.
    __device__ __forceinline__ int slice(int it) const {
        return WALK_FAST ? (wk + 3 * it) & (kw - 1) : (wk + 3 * it) % kw;
    }
    // Unit of iteration it (or -1 past the block's last), its plane z and first weight row.
    __device__ __forceinline__ int unit(int it) const {
        int u = (int)blockIdx.y + it * (int)gridDim.y;
        return it < iters && u < units ? u : -1;
    }
    __device__ __forceinline__ int plane(int u) const { return WALK_FAST && splits == 1 ? 0 : u / tiles_y; }
    __device__ __forceinline__ int tile_row0(int u) const {
        return ((WALK_FAST && splits == 1 ? u : u % tiles_y) * warp_rows + wr) * tile_rows;
    }
    // The first group of slice sl of plane z, or n_groups and more if the slice is empty.
    __device__ __forceinline__ int first_group(int sl, int z) const { return sl + kw * z; }

    // Moves to the first group of iteration it or a later one that has work for this warp.
    __device__ __forceinline__ void enter(int it) {
        for (;; ++it) {
            int u = unit(it);
            if (u < 0) {
                i = -1;
                return;
            }
            grp = first_group(slice(it), plane(u));
            row0 = tile_row0(u);
            if (grp < n_groups && row0 < n) {
                i = it;
                return;
            }
        }
    }
    __device__ __forceinline__ void advance() {
        grp += kw * splits;
        if (grp >= n_groups) enter(i + 1);
    }
};

// Runs a warp's walk: group(T, grp, row0) per group (T: the MT Q4_K weight tiles, double-buffered
// across units for DT_Q4_K with one tile, loaded right before their group with two; unused for
// other types), then flush(i) after the last group of each iteration. With pdl = PDL_LEAD_LATE it
// waits for the kernel before (pdl_late) after its setup and, for Q4_K, its first weight loads;
// before any activation load.
template <int DT, int MT = 1, class G, class F>
__device__ __forceinline__ void persist_walk(PersistWalk W, const u8* w, int pdl, G&& group, F&& flush) {
    W.enter(0);
    if (W.i < 0) {
        pdl_late(pdl);
        return;
    }
    if constexpr (DT == DT_Q4_K && MT == 1) {
        int t = threadIdx.x & 3;
        auto load = [&](Q4KTile& T, const PersistWalk& P) {
            int rows[1][2];
            q4k_tile_rows<1>(P.row0, P.n, rows);
            q4k_load(T, w, rows[0][0], rows[0][1], P.n_groups, P.grp, t);
        };
        Q4KTile a[1], b[1];
        load(a[0], W);
        pdl_late(pdl);  // the first weights are on their way while the kernel before finishes
        for (;;) {
            PersistWalk X = W;
            X.advance();
            if (X.i >= 0) load(b[0], X);
            group(a, W.grp, W.row0);
            if (X.i != W.i) flush(W.i);
            if (X.i < 0) break;
            W = X;
            W.advance();
            if (W.i >= 0) load(a[0], W);
            group(b, X.grp, X.row0);
            if (W.i != X.i) flush(X.i);
            if (W.i < 0) break;
        }
    } else {
        // One group at a time: Q4_K with two weight tiles loads them right before their group
        // (with two activation tiles the registers go to the activations, as in q4k_groups);
        // the other types load inside group.
        Q4KTile cur[MT];
        auto load = [&](const PersistWalk& P) {
            if constexpr (DT == DT_Q4_K) {
                int rows[MT][2];
                q4k_tile_rows<MT>(P.row0, P.n, rows);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    q4k_load(cur[mt], w, rows[mt][0], rows[mt][1], P.n_groups, P.grp, threadIdx.x & 3);
            }
        };
        load(W);
        pdl_late(pdl);
        for (;;) {
            int i = W.i;
            group(cur, W.grp, W.row0);
            W.advance();
            if (W.i != i) flush(i);
            if (W.i < 0) break;
            load(W);
        }
    }
}

// A block's walk parameters (see PersistWalk) for warps of MT weight tiles.
template <int MT = 1>
__device__ __forceinline__ PersistWalk persist_walk_of(int k, int n, int kw, int splits) {
    int warp = threadIdx.x >> 5;
    PersistWalk W;
    W.iters = persist_iters<MT>();
    W.tile_rows = 16 * MT;
    W.n_groups = k / 256;
    W.kw = kw;
    W.wk = warp % kw;
    W.wr = warp / kw;
    W.warp_rows = MMV_WARPS / kw;
    W.splits = splits;
    W.tiles_y = (n + W.tile_rows * W.warp_rows - 1) / (W.tile_rows * W.warp_rows);
    W.units = W.tiles_y * splits;
    W.n = n;
    W.i = -1;
    return W;
}

// ---- Q4_K × limbs (see prepare_limbs8): products of at most LIMB_MAX_ROWS prepared rows. A
// block's warps own 16-row weight tiles as in the `_mma_` kernels (kw warps split a row's groups,
// long rows also over gridDim.z blocks); an 8-column activation tile holds two activation rows ×
// four limbs (column g: row 2·nt + g / 4, limb g % 4). Per sub-block s one int8 mma multiplies
// the raw quants (u8, low or high nibbles masked in place: no conversion) by the limbs (s8): an
// exact integer, scaled by the 6-bit sub-block scale in integer arithmetic; the mins enter
// through one f16 mma per half group on the limbs' exact lane sums. So each group's two sums are
// exact integers (|Σ sc·q·L| ≤ 8·63·32·15·64 < 2^24, |Σ m·ΣL| < 2^20), and the only roundings are
// d·P and dmin·M per group in f32, the f32 sum over groups and warps, and the limbs' combination.
// No arithmetic depends on which activation tile or batch a row is in: every row of every batch
// up to 16 gets the same bits.

// c = A·B for int8 A (u8, 16 × 32) and B (s8, 32 × 8), s32 accumulation from zero.
__device__ __forceinline__ void imma_16832(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}

// c += A·B, as imma_16832.
__device__ __forceinline__ void imma_16832_acc(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Lane (g, t)'s view of the limbs. Its B column in tile nt is row m0 + 2·nt + g / 4 of the batch,
// limb g % 4; its output columns 2t, 2t + 1 are row m0 + 2·nt + t / 2. Rows past the batch are
// read too (inside the layout and its padding; their columns are never written).
struct LimbLane {
    const u8* lim;       // tile 0's limb row, at the lane's 8 elements (8t) of group 0
    const u8* sums;      // its lane sums, at lane t's 8 of group 0
    const float* scale;  // the group scale of tile 0's output row in group 0
    int m;               // batch rows: a group's limb rows are 4m apart

    // Tile 0's in group grp; tile nt is 2048 (limbs), 512 (sums) bytes or 2 floats further.
    __device__ __forceinline__ const u8* limbs(int grp) const { return lim + (i64)grp * m * 1024; }
    __device__ __forceinline__ const u8* lane_sums(int grp) const { return sums + (i64)grp * m * 256; }
    __device__ __forceinline__ const float* group_scale(int grp) const { return scale + grp * m; }
};

__device__ __forceinline__ LimbLane limb_lane(const void* xs, int k, int m, int m0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    u8* base = limb_base((void*)xs, k, m);
    int lrow = (m0 + (g >> 2)) * 4 + (g & 3);
    LimbLane L;
    L.sums = (const u8*)limb_lsums(base) + lrow * 64 + 16 * t;
    L.lim = limb_rows(base, k, m) + lrow * 256 + limb_word(0, t);
    L.scale = limb_scales(base, k, m) + m0 + (t >> 1);
    L.m = m;
    return L;
}

// Eight activation tiles keep their running sums in shared memory (see q4k_limb_group).
#define LIMB_ACC_SMEM(NT) ((NT) >= 8)

// The 6-bit scales of rows g and g + 8 (sc, packed bytes as q4k_unpack gives them) split as
// sc = 16·hi + lo, lo ≤ 15 and hi ≤ 3, packed the same way: lo·q ≤ 225 and hi·q ≤ 45 stay bytes.
__device__ __forceinline__ void q4k_scale_parts(const u32 (&sc)[2][2], u32 (&lo)[2][2], u32 (&hi)[2][2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            lo[r][h] = sc[r][h] & 0x0F0F0F0Fu;
            hi[r][h] = (sc[r][h] >> 4) & 0x03030303u;
        }
}

// Sub-block s's quants of row g (r = 0) or g + 8 (r = 1): the low (s even) or high (s odd)
// nibbles of run s / 2, masked in place; lane t's words hold its elements 8t..8t+3 (a[0]) and
// 8t+4..8t+7 (a[1]), the limbs' order.
__device__ __forceinline__ void q4k_limb_quants(const Q4KTile& T, int s, int r, u32 (&a)[2]) {
    uint2 q = T.q[r][s >> 1];
    a[0] = ((s & 1) ? q.x >> 4 : q.x) & 0x0F0F0F0Fu;
    a[1] = ((s & 1) ? q.y >> 4 : q.y) & 0x0F0F0F0Fu;
}

// Sub-block s's quants of rows g and g + 8 times its lo and hi scale parts: the u8 A fragments
// [row g / g + 8][elements 8t.. / 8t+4..] of the two integer chains, one multiply per 4 quants.
__device__ __forceinline__ void q4k_split_frags(const Q4KTile& T, int s, const u32 (&lo)[2][2], const u32 (&hi)[2][2],
                                                u32 (&al)[2][2], u32 (&ah)[2][2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        u32 a[2];
        q4k_limb_quants(T, s, r, a);
        u32 l = __byte_perm(lo[r][s >> 2], 0u, 0x4440u | (s & 3));
        u32 h = __byte_perm(hi[r][s >> 2], 0u, 0x4440u | (s & 3));
        al[r][0] = a[0] * l;
        al[r][1] = a[1] * l;
        ah[r][0] = a[0] * h;
        ah[r][1] = a[1] * h;
    }
}

template <int NT>
__device__ __forceinline__ void q4k_limb_group(const Q4KTile& T, const LimbLane& L, float (&acc)[NT][4], float4* accs,
                                               int grp) {
    u32 sc[2][2], mn[2][2];  // [row g / g + 8][sub-blocks 0..3 / 4..7]
#pragma unroll
    for (int r = 0; r < 2; ++r) q4k_unpack(T.s[r], sc[r], mn[r]);
    float d0 = h2f((u16)(T.dd[0] & 0xffff)), dm0 = h2f((u16)(T.dd[0] >> 16));
    float d1 = h2f((u16)(T.dd[1] & 0xffff)), dm1 = h2f((u16)(T.dd[1] >> 16));
    u32 ma[2][4];  // the mins' A fragments, halves h = 0, 1
#pragma unroll
    for (int h = 0; h < 2; ++h) q4k_min_frag(mn[0][h], mn[1][h], ma[h]);
    // Tile nt's group sum P = Σ_s sc_s · (quants · limbs of sub-block s), exact. Up to two tiles
    // (decode, short verify batches): one mma per sub-block and tile, its result times sc_s.
    // More tiles: sc_s = 16·hi + lo splits the scale into the A operands (lo·q ≤ 225, hi·q ≤ 45,
    // one multiply per 4 packed quants), two mma per sub-block and tile accumulate the whole
    // group, and P = Σ lo·q·L + 16·Σ hi·q·L. The same integer either way, so the same bits.
    constexpr bool SPLIT = NT >= 4;
    const u8* lim = L.limbs(grp);
    int P[NT][4];
    if constexpr (!SPLIT) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) P[nt][0] = P[nt][1] = P[nt][2] = P[nt][3] = 0;
        // Every limb word of the group first (two sub-blocks per 16-byte load), so their loads
        // are in flight together.
        uint2 bb[NT][8];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int s = 0; s < 8; s += 2) {
                uint4 v = *(const uint4*)(lim + nt * 2048 + limb_word(s, 0));
                bb[nt][s] = make_uint2(v.x, v.y);
                bb[nt][s + 1] = make_uint2(v.z, v.w);
            }
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            u32 a[2][2];
            int sv[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                q4k_limb_quants(T, s, r, a[r]);
                sv[r] = (int)__byte_perm(sc[r][s >> 2], 0u, 0x4440u | (s & 3));
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                uint2 b = bb[nt][s];
                int c[4];
                imma_16832(c, a[0][0], a[1][0], a[0][1], a[1][1], b.x, b.y);
                P[nt][0] += sv[0] * c[0];
                P[nt][1] += sv[0] * c[1];
                P[nt][2] += sv[1] * c[2];
                P[nt][3] += sv[1] * c[3];
            }
        }
    } else {
        int chi[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) P[nt][e] = chi[nt][e] = 0;
        u32 lo[2][2], hi[2][2];  // [row][sub-blocks 0..3 / 4..7], packed bytes
        q4k_scale_parts(sc, lo, hi);
        // Sub-block s + 1's limb words load while s is multiplied.
        uint2 bn[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) bn[nt] = *(const uint2*)(lim + nt * 2048 + limb_word(0, 0));
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            uint2 bc[NT];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                bc[nt] = bn[nt];
                if (s < 7) bn[nt] = *(const uint2*)(lim + nt * 2048 + limb_word(s + 1, 0));
            }
            u32 al[2][2], ah[2][2];
            q4k_split_frags(T, s, lo, hi, al, ah);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                uint2 b = bc[nt];
                imma_16832_acc(P[nt], al[0][0], al[1][0], al[0][1], al[1][1], b.x, b.y);
                imma_16832_acc(chi[nt], ah[0][0], ah[1][0], ah[0][1], ah[1][1], b.x, b.y);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) P[nt][e] += 16 * chi[nt][e];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int* p = P[nt];
        // Mins: k = (sub-block, lane) as in q4k_group, B = the lane sums of the column's limb.
        uint4 ls = *(const uint4*)(L.lane_sums(grp) + nt * 512);
        float tmn[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_16816(tmn, ma[0][0], ma[0][1], ma[0][2], ma[0][3], ls.x, ls.y);
        mma_16816(tmn, ma[1][0], ma[1][1], ma[1][2], ma[1][3], ls.z, ls.w);
        // The group's activation scale 2^e: exact in the products with d and dmin.
        float gs = L.group_scale(grp)[2 * nt];
        float ds0 = __fmul_rn(d0, gs), ds1 = __fmul_rn(d1, gs), dms0 = __fmul_rn(dm0, gs), dms1 = __fmul_rn(dm1, gs);
        // Eight tiles keep their running sums in shared memory (accs, the lane's float4 per
        // tile): in registers they would spill beside the 64 of the group's integer sums.
        float a4[4];
        if constexpr (LIMB_ACC_SMEM(NT)) {
            float4 v = accs[nt * 32];
            a4[0] = v.x, a4[1] = v.y, a4[2] = v.z, a4[3] = v.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) a4[e] = acc[nt][e];
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float d = e < 2 ? ds0 : ds1, dm = e < 2 ? dms0 : dms1;
            a4[e] = __fmaf_rn(d, (float)p[e], __fmaf_rn(-dm, tmn[e], a4[e]));
        }
        if constexpr (LIMB_ACC_SMEM(NT)) {
            accs[nt * 32] = make_float4(a4[0], a4[1], a4[2], a4[3]);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] = a4[e];
        }
    }
}

// A warp's values per (tile, activation row, weight row) from its limb column sums: lane (g, t)
// holds columns 2t, 2t + 1, activation row t / 2 of the tile, limbs 0, 1 (t even) or 2, 3 (t
// odd), for weight rows g (e = 0, 1) and g + 8 (e = 2, 3). The whole warp calls it.
template <int NT>
__device__ __forceinline__ void limb_columns(const float (&acc)[NT][4], float (*out)[2][16]) {
    int lane = threadIdx.x & 31, t = lane & 3, g = lane >> 2;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float c0 = acc[nt][2 * half], c1 = acc[nt][2 * half + 1];
            float v = (t & 1) ? __fmaf_rn(c1, 0x1p-21f, __fmul_rn(c0, 0x1p-14f)) : __fmaf_rn(c1, 0x1p-7f, c0);
            float o = __shfl_xor_sync(0xffffffffu, v, 1);
            if (!(t & 1)) out[nt][t >> 1][g + 8 * half] = __fadd_rn(v, o);
        }
}

// One block of matmul_q4_k_limb_n<NT>: MMV_WARPS / kw warp rows of 16 weight rows × 2·NT
// activation rows; the kw warps of a warp row split the groups (warp j takes j, j + kw, ...,
// offset by kw·blockIdx.z over gridDim.z partial planes). Each warp combines its four limb
// columns per output (lanes 2i and 2i + 1 hold limbs 0, 1 and 2, 3), then the kw warps' values
// are added in warp order (the groups' activation scales are applied per group).
template <int NT>
__device__ void q4k_limb_body(const u8* w, const void* xs, float* y, int k, int n, int m, int kw) {
    __shared__ float red[MMV_WARPS][NT][2][16];  // [warp][tile][row of the tile][weight row]
    __shared__ float4 acc_smem[LIMB_ACC_SMEM(NT) ? MMV_WARPS : 1][LIMB_ACC_SMEM(NT) ? NT : 1][32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int warp_rows = MMV_WARPS / kw, wr = warp / kw, wk = warp % kw;
    int row0 = (blockIdx.y * warp_rows + wr) * 16, m0 = blockIdx.x * NT * 2;
    int n_groups = k / 256;
    int first = wk + kw * (int)blockIdx.z, stride = kw * (int)gridDim.z;
    y += (i64)blockIdx.z * m * n;
    float acc[NT][4];
    float4* accs = &acc_smem[LIMB_ACC_SMEM(NT) ? warp : 0][0][lane];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        if (LIMB_ACC_SMEM(NT)) accs[nt * 32] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    if (row0 < n) {
        LimbLane L = limb_lane(xs, k, m, m0);
        int rows[1][2];
        q4k_tile_rows<1>(row0, n, rows);
        // Double-buffered weights for one activation tile, as the `_mma_` kernels.
        q4k_groups<1, NT == 1>(w, rows, n_groups, first, stride, [&](const Q4KTile(&T)[1], int grp) {
            q4k_limb_group<NT>(T[0], L, acc, accs, grp);
        });
    }
    if (LIMB_ACC_SMEM(NT)) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            float4 v = accs[nt * 32];
            acc[nt][0] = v.x, acc[nt][1] = v.y, acc[nt][2] = v.z, acc[nt][3] = v.w;
        }
    }
    limb_columns<NT>(acc, red[warp]);
    __syncthreads();
    for (int idx = threadIdx.x; idx < warp_rows * 32 * NT; idx += blockDim.x) {
        int r = idx / (32 * NT), tl = (idx / 16) % (2 * NT), R = idx % 16;
        float s = 0.0f;
        for (int v = 0; v < kw; ++v) s = __fadd_rn(s, red[r * kw + v][tl >> 1][tl & 1][R]);
        int row = (blockIdx.y * warp_rows + r) * 16 + R, tok = m0 + tl;
        if (row < n && tok < m) y[(i64)tok * n + row] = s;
    }
}

// matmul_q4_k_limb_n<NT>: Q4_K weights × prepared limbs of m ≤ LIMB_MAX_ROWS rows; blocks of
// MMV_WARPS warps, grid (⌈m / 2·NT⌉, ⌈n / (16·MMV_WARPS / kw)⌉, splits); with splits > 1, y holds
// `splits` planes of m·n partial sums.
#define Q4K_LIMB_KERNEL(NT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, 2)                                          \
        matmul_q4_k_limb_n##NT(const u8* w, const void* x, float* y, int k, int n, int m, int kw) {         \
        pdl_entry();                                                                                         \
        q4k_limb_body<NT>(w, x, y, k, n, m, kw);                                                             \
    }
Q4K_LIMB_KERNEL(1)
Q4K_LIMB_KERNEL(2)
Q4K_LIMB_KERNEL(4)
Q4K_LIMB_KERNEL(8)

// One block of matmul_q4_k_limb_n<NT>_p (see PersistWalk): the limb kernel's warps, groups and
// order, walked persistently.
template <int NT>
__device__ void q4k_limb_persist_body(const u8* w, const void* xs, float* y, int k, int n, int m, int kw,
                                      int splits) {
    static_assert(!LIMB_ACC_SMEM(NT), "persistent limb kernels keep their sums in registers");
    __shared__ float red[PERSIST_ITERS][MMV_WARPS][NT][2][16];  // [iteration][row · kw + slice]
    int m0 = blockIdx.x * NT * 2;
    PersistWalk W = persist_walk_of(k, n, kw, splits);
    LimbLane L = limb_lane(xs, k, m, m0);
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) zero4(acc[nt]);
    persist_walk<DT_Q4_K>(
        W, w, PDL_PLAIN, [&](const Q4KTile(&T)[1], int grp, int) { q4k_limb_group<NT>(T[0], L, acc, nullptr, grp); },
        [&](int i) {
            limb_columns<NT>(acc, red[i][W.wr * kw + W.slice(i)]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) zero4(acc[nt]);
        });
    __syncthreads();
    int per_unit = W.warp_rows * 32 * NT;
    for (int idx = threadIdx.x; idx < PERSIST_ITERS * per_unit; idx += blockDim.x) {
        int it = idx / per_unit, u = W.unit(it);
        if (u < 0) break;
        int z = W.plane(u), j = idx % per_unit;
        int r = j / (32 * NT), tl = (j / 16) % (2 * NT), R = j % 16;
        float s = 0.0f;
        for (int v = 0; v < kw; ++v)
            s = __fadd_rn(s, W.first_group(v, z) < W.n_groups ? red[it][r * kw + v][tl >> 1][tl & 1][R] : 0.0f);
        int row = ((u % W.tiles_y) * W.warp_rows + r) * 16 + R, tok = m0 + tl;
        if (row < n && tok < m) y[(i64)z * m * n + (i64)tok * n + row] = s;
    }
}

// matmul_q4_k_limb_n<NT>_p: matmul_q4_k_limb_n<NT> in gridDim.y persistent blocks (grid
// (⌈m / 2·NT⌉, blocks, 1)) over `splits` planes.
#define Q4K_LIMB_PERSIST_KERNEL(NT)                                                                          \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, 2)                                          \
        matmul_q4_k_limb_n##NT##_p(const u8* w, const void* x, float* y, int k, int n, int m, int kw,        \
                                   int splits) {                                                             \
        pdl_entry();                                                                                         \
        q4k_limb_persist_body<NT>(w, x, y, k, n, m, kw, splits);                                             \
    }
Q4K_LIMB_PERSIST_KERNEL(1)
Q4K_LIMB_PERSIST_KERNEL(2)

// A 32-bit word at p: one load where p is 4-byte aligned, else two 2-byte loads.
template <int HINT>
__device__ __forceinline__ u32 load_u32_a(const u8* p, bool aligned) {
    return aligned ? ldw32<HINT>(p) : ldw16<HINT>(p) | ldw16<HINT>(p + 2) << 16;
}

// The scales of Q6_K groups b (rows g and g + 8 of each weight tile): whether each group starts
// 4-byte aligned (210-byte groups start 2- or 4-byte aligned; an aligned one, every other group
// when a row has an even number of them, is read in 4-byte words, halving its loads), its d, and
// its 16 int8 sub-block scales, four per word. With R (q6_k_repack's layout, 16-byte aligned
// groups) the scales are one 16-byte load and `al` is not set.
template <int MT, int HINT, bool R = false>
__device__ __forceinline__ void q6k_scales(const u8* const (&b)[MT][2], bool (&al)[MT][2], float (&dd)[MT][2],
                                           u32 (&scales)[MT][2][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (R) {
                uint4 sv = *(const uint4*)(b[mt][r] + 192);
                scales[mt][r][0] = sv.x;
                scales[mt][r][1] = sv.y;
                scales[mt][r][2] = sv.z;
                scales[mt][r][3] = sv.w;
                dd[mt][r] = h2f((u16)ldw16<HINT>(b[mt][r] + 208));
                continue;
            }
            al[mt][r] = ((size_t)b[mt][r] & 3) == 0;
            dd[mt][r] = h2f((u16)ldw16<HINT>(b[mt][r] + 208));
#pragma unroll
            for (int j = 0; j < 4; ++j) scales[mt][r][j] = load_u32_a<HINT>(b[mt][r] + 192 + 4 * j, al[mt][r]);
        }
}

// Lane t's quant words of weights l = 16·lb + 4t..+3 of half h of Q6_K groups b, for lb = lb0 ..
// lb0 + NLB − 1 (slot j = lb − lb0): ql[..][j][par] holds the low nibbles of runs par and par + 2,
// qh[..][j] the high bit pairs of all four runs. With R (q6_k_repack's layout: a lane's three
// words of (h, lb) at 48t + 24h + 12lb, `al` unused; under Q6K_FIELDS ql[..][j][0], ql[..][j][1]
// and qh[..][j] are its words w0, w1, w2, see q6_k_repack) they come in 8- and 4-byte loads: both
// pairs' six words in three 8-byte loads (WIDE: one 16-byte and one 8-byte load, fewer
// instructions, more aligned registers), one pair's in one 8-byte and one 4-byte load.
template <int MT, int NLB, int HINT, bool R = false, bool WIDE = false>
__device__ __forceinline__ void q6k_words(const u8* const (&b)[MT][2], const bool (&al)[MT][2], int h, int lb0, int t,
                                          u32 (&ql)[MT][2][NLB][2], u32 (&qh)[MT][2][NLB]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (R) {
                const u8* lw = b[mt][r] + 48 * t + 24 * h + 12 * lb0;
                if (NLB == 2) {
                    // 48t is 16-byte aligned: half 0's 24 bytes start aligned, half 1's 8 past.
                    u32 v[6];
                    if (!WIDE) {
                        uint2 a = ldw64<HINT>(lw), c = ldw64<HINT>(lw + 8), e = ldw64<HINT>(lw + 16);
                        v[0] = a.x, v[1] = a.y, v[2] = c.x, v[3] = c.y, v[4] = e.x, v[5] = e.y;
                    } else if (h == 0) {
                        uint4 a = ldw128<HINT>(lw);
                        uint2 c = ldw64<HINT>(lw + 16);
                        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = c.x, v[5] = c.y;
                    } else {
                        uint2 a = ldw64<HINT>(lw);
                        uint4 c = ldw128<HINT>(lw + 8);
                        v[0] = a.x, v[1] = a.y, v[2] = c.x, v[3] = c.y, v[4] = c.z, v[5] = c.w;
                    }
                    ql[mt][r][0][0] = v[0];
                    ql[mt][r][0][1] = v[1];
                    qh[mt][r][0] = v[2];
                    ql[mt][r][NLB - 1][0] = v[3];
                    ql[mt][r][NLB - 1][1] = v[4];
                    qh[mt][r][NLB - 1] = v[5];
                } else if (lb0 == 0) {
                    uint2 w01 = ldw64<HINT>(lw);
                    ql[mt][r][0][0] = w01.x;
                    ql[mt][r][0][1] = w01.y;
                    qh[mt][r][0] = ldw32<HINT>(lw + 8);
                } else {
                    uint2 w12 = ldw64<HINT>(lw + 4);
                    ql[mt][r][0][0] = ldw32<HINT>(lw);
                    ql[mt][r][0][1] = w12.x;
                    qh[mt][r][0] = w12.y;
                }
                continue;
            }
#pragma unroll
            for (int j = 0; j < NLB; ++j) {
                const u8* bb = b[mt][r];
                int lb = lb0 + j;
                ql[mt][r][j][0] = load_u32_a<HINT>(bb + 64 * h + 16 * lb + 4 * t, al[mt][r]);
                ql[mt][r][j][1] = load_u32_a<HINT>(bb + 64 * h + 32 + 16 * lb + 4 * t, al[mt][r]);
                qh[mt][r][j] = load_u32_a<HINT>(bb + 128 + 32 * h + 16 * lb + 4 * t, al[mt][r]);
            }
        }
}

// Q6K_WIDE 1 (the default): the repacked one-tile Q6_K products load a half's quant words in two
// loads (see q6k_group); 0: three words per lb (an A/B knob, `SPECULA_Q6K_WIDE`).
#ifndef Q6K_WIDE
#define Q6K_WIDE 1
#endif
// Q6K_FIELDS 1 (the default): q6_k_repack stores each lane's levels as 6-bit fields where the f16
// A fragments want them (q6k_frag_r: one mask a register for three runs of four); 0: the stored
// low-nibble and high-bit words, rearranged only (q6k_frag: five or six instructions a register).
// An A/B knob, `SPECULA_Q6K_FIELDS`; the same values either way, so the same bits.
#ifndef Q6K_FIELDS
#define Q6K_FIELDS 1
#endif

// Row r's A fragment pair (a[0]: weights 4t, 4t + 2; a[1]: 4t + 1, 4t + 3 of its run) of Q6_K run
// p from lane t's low-nibble word of the run's parity (ql) and its high-bit-pair word (qh), as
// f16x2 of q − 32 (exact).
__device__ __forceinline__ void q6k_frag(u32 ql, u32 qh, int p, u32 (&a)[2]) {
    const u32 offset = 0x64206420u;  // f16x2 (1056, 1056): 1024 + 32
    u32 lo = ql >> (4 * (p >> 1));
    u32 hi = qh >> (2 * p);
    u32 q0 = (lo & 0x000F000Fu) | ((hi << 4) & 0x00300030u) | 0x64006400u;
    u32 q1 = ((lo >> 8) & 0x000F000Fu) | ((hi >> 4) & 0x00300030u) | 0x64006400u;
    a[0] = hsub2(q0, offset);
    a[1] = hsub2(q1, offset);
}

// q6k_frag for q6_k_repack's words w0, w1, w2 of a lane's (h, lb) (see there): the same f16x2 of
// q − 32, a mask and the exponent magic per register for runs 0..2, two for run 3.
__device__ __forceinline__ void q6k_frag_r(u32 w0, u32 w1, u32 w2, int p, u32 (&a)[2]) {
    const u32 offset = 0x64206420u;  // f16x2 (1056, 1056): 1024 + 32
    if (p < 3) {
        u32 w = p == 0 ? w0 : p == 1 ? w1 : w2;
        a[0] = hsub2(and_or<0x003F003Fu, 0x64006400u>(w), offset);
        a[1] = hsub2(and_or<0x003F003Fu, 0x64006400u>(w >> 6), offset);
    } else {
        a[0] = hsub2(and_or<0x000F000Fu, 0x64006400u>(w0 >> 12) | ((w2 >> 8) & 0x00300030u), offset);
        a[1] = hsub2(and_or<0x000F000Fu, 0x64006400u>(w1 >> 12) | ((w2 >> 10) & 0x00300030u), offset);
    }
}

// Sub-block sb's multiplier of a Q6_K group row: d times its int8 scale (scales: four a word).
__device__ __forceinline__ float q6k_scale(float d, const u32 (&scales)[4], int sb) {
    return d * (float)(signed char)(scales[sb >> 2] >> (8 * (sb & 3)));
}

// ---- Q6_K: 210-byte groups (ql[128], qh[64], int8 scales[16], f16 d). Weight i of half h
// (128 each), run p (32 each, i = 128h + 32p + l): low 4 bits from ql[64h + 32(p & 1) + l]
// (nibble p / 2), high 2 bits from qh[32h + l] (bits 2p, 2p + 1); sub-block (16 weights) i / 16.
// One mma covers one sub-block: lane t takes l = 16·lb + 4t .. +3. A = q − 32 (exact); the
// sub-block's d·scale multiplies the f32 partial sum.
// With R the groups are in q6_k_repack's layout (224 bytes, see there): with one activation tile
// (and Q6K_WIDE) a lane's six words of a half are one 16-byte and one 8-byte load, else its three
// words of (h, lb) one 8-byte and one 4-byte load; the scales one 16-byte load; same values, same
// bits. ONE (a batch of one row, NT = 1): only the even-e accumulators (column 2t) are updated;
// odd e feed column 2t + 1 ≥ 1, never written when m = 1.
template <int MT, int NT, bool PREP, bool R = false, bool ONE = false, bool G = false>
__device__ __forceinline__ void q6k_group(const u8* w, const Acts<PREP, G>& A, float (&acc)[MT][NT][4], int row0,
                                          int n, int n_groups, int grp, int m0, int m) {
    int t = threadIdx.x & 3;
    const u8* b[MT][2];
    weight_groups<MT>(w, row0, n, n_groups, grp, R ? 224 : 210, b);
    int tok[NT];
    activation_rows<NT>(m0, m, tok);
    bool al[MT][2];
    float dd[MT][2];
    u32 scales[MT][2][4];
    q6k_scales<MT, SMALL_HINT(NT), R>(b, al, dd, scales);
    // Repacked with one activation tile, a half's words of both lb come in two loads (a 16- and
    // an 8-byte one: H200, see bench/NOTES.md, twentieth session); otherwise each lb's three
    // words load when it is reached (fewer live registers: the two-tile kernels spilled more).
    constexpr int NLB = R && NT == 1 && Q6K_WIDE ? 2 : 1;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int lb0 = 0; lb0 < 2; lb0 += NLB) {
            u32 ql[MT][2][NLB][2], qh[MT][2][NLB];  // [tile][row][lb − lb0][run parity p & 1, or w0 / w1]
            q6k_words<MT, NLB, SMALL_HINT(NT), R, true>(b, al, h, lb0, t, ql, qh);
#pragma unroll
            for (int j = 0; j < NLB; ++j)
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                int lb = lb0 + j;
                int sb = 8 * h + 2 * p + lb;
                XFrag f[NT];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                    f[nt] = A.chunk(tok[nt], grp * 64 + 32 * h + 8 * p + 4 * lb + t);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    u32 a[2][2];
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        if (R && Q6K_FIELDS)
                            q6k_frag_r(ql[mt][r][j][0], ql[mt][r][j][1], qh[mt][r][j], p, a[r]);
                        else
                            q6k_frag(ql[mt][r][j][p & 1], qh[mt][r][j], p, a[r]);
                    }
                    float s0 = q6k_scale(dd[mt][0], scales[mt][0], sb);
                    float s1 = q6k_scale(dd[mt][1], scales[mt][1], sb);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                        mma_split(c, a[0][0], a[1][0], a[0][1], a[1][1], f[nt]);
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            if (!ONE || !(e & 1)) acc[mt][nt][e] = __fmaf_rn(e < 2 ? s0 : s1, c[e], acc[mt][nt][e]);
                    }
                }
            }
        }
}

// Lane t's two quant words (bytes 8t..8t+7 after the f16 scale) of Q8_0 block `blk` at bb, in a
// 4-byte-aligned tensor (the host checks; 272-byte groups keep every group aligned): an odd
// block's quants are 4-byte aligned, an even block's sit 2 bytes past alignment and come from
// three aligned words shifted into place (never past the group: an even block is never its
// last). `blk` is a constant in the unrolled loop, so the choice costs nothing.
template <int HINT>
__device__ __forceinline__ void q80_words(const u8* bb, int blk, int t, u32& q0, u32& q1) {
    if (blk & 1) {
        q0 = ldw32<HINT>(bb + 2 + 8 * t);
        q1 = ldw32<HINT>(bb + 6 + 8 * t);
    } else {
        u32 a = ldw32<HINT>(bb + 8 * t), b = ldw32<HINT>(bb + 8 * t + 4), c = ldw32<HINT>(bb + 8 * t + 8);
        q0 = __byte_perm(a, b, 0x5432);
        q1 = __byte_perm(b, c, 0x5432);
    }
}

// Block `blk` of the groups at b (rows g and g + 8 of each weight tile): its scales d and lane
// t's two quant words (q80_words; with R, groups in q8_0_repack's layout: one 8-byte load).
template <int MT, int HINT, bool R = false>
__device__ __forceinline__ void q80_block(const u8* const (&b)[MT][2], int blk, int t, u32 (&q)[MT][2][2],
                                          float (&d)[MT][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (R) {
                d[mt][r] = h2f((u16)ldw16<HINT>(b[mt][r] + 2 * blk));
                uint2 qw = ldw64<HINT>(b[mt][r] + 16 + 32 * blk + 8 * t);
                q[mt][r][0] = qw.x;
                q[mt][r][1] = qw.y;
            } else {
                const u8* bb = b[mt][r] + 34 * blk;
                d[mt][r] = h2f((u16)ldw16<HINT>(bb));
                q80_words<HINT>(bb, blk, t, q[mt][r][0], q[mt][r][1]);
            }
        }
}

// ---- Q8_0: a group is 8 blocks of 34 bytes (f16 d, 32 int8). Lane t takes weights 8t..8t+3 and
// 8t+4..8t+7 of each block (one mma each); A = q (exact); d multiplies the block's f32 sum. With
// R the groups are in q8_0_repack's layout (same values, same bits). ONE: a batch of one row (see
// q6k_group).
template <int MT, int NT, bool PREP, bool R = false, bool ONE = false, bool G = false>
__device__ __forceinline__ void q80_group(const u8* w, const Acts<PREP, G>& A, float (&acc)[MT][NT][4], int row0,
                                          int n, int n_groups, int grp, int m0, int m) {
    int t = threadIdx.x & 3;
    const u8* b[MT][2];
    weight_groups<MT>(w, row0, n, n_groups, grp, 272, b);
    int tok[NT];
    activation_rows<NT>(m0, m, tok);
    const u32 offset = 0x64806480u;  // f16x2 (1152, 1152): 1024 + 128
    // Four blocks' loads in flight at a time: all eight spill at the 128-register cap.
#pragma unroll 4
    for (int blk = 0; blk < 8; ++blk) {
        u32 q[MT][2][2];
        float d[MT][2];
        q80_block<MT, SMALL_HINT(NT), R>(b, blk, t, q, d);
        XFrag f[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            f[nt][0] = A.chunk(tok[nt], grp * 64 + 8 * blk + 2 * t);
            f[nt][1] = A.chunk(tok[nt], grp * 64 + 8 * blk + 2 * t + 1);
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
                for (int e = 0; e < 4; ++e)
                    if (!ONE || !(e & 1)) acc[mt][nt][e] = __fmaf_rn(d[mt][e >> 1], c[e], acc[mt][nt][e]);
            }
        }
    }
}

// ---- Q8_0 weights × q8 activations (`matmul_q8_0_q8x_*`, graph op MatMulQ8: drafters'
// products, llama.cpp's q8 activations). `q8_quantize_x` writes an m-row input block-major, as
// int8 q [k/32][q8x_mpad(m)][32], then f32 d [k/32][q8x_mpad(m)]: per row and 32 elements
// d = max|x| / 127,
// q = round(x · (1/d)) (ties away from zero; 0 where d is 0 or the product is NaN), as the CPU
// reference. One mma.m16n8k32 (s8 × s8) per block and 8 rows gives the block's exact integer
// dot products, times d_w·d_x in f32. A lane's A words are bytes 8t..8t+3 and 8t+4..8t+7 of its
// rows' block (q80_words) standing for k = 4t.. and 16 + 4t..; its B words are the same bytes of
// its activation row, so the permutation cancels. Block-major, the 8 rows of an activation tile
// are 256 contiguous bytes of a block: a warp's B load touches 2 cache lines rather than 8 (the
// products are bound by L1 wavefronts, bench/NOTES.md).
#define DT_Q8X 108  // a kernel-template tag, not a ggml type
#define DT_Q8R 109  // the same with the weights in q8_0_repack's layout
#define DT_Q8_0R 117  // the split-f16 `_mma_` Q8_0 kernels with the weights in q8_0_repack's layout

// Q8_0 weights rearranged per 256-weight group (272 bytes either way): the 8 blocks' f16 scales
// (16 bytes), then their 8 × 32 quants, so a lane's 8 quant bytes of a block are one aligned
// load (rows of whole groups are 272 = 16 · 17 bytes, so from an aligned base every group is
// 16-byte aligned). A thread per group.
extern "C" __global__ void q8_0_repack(const u8* src, u8* dst, i64 n_groups) {
    pdl_entry();
    i64 gi = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (gi >= n_groups) return;
    const u8* s = src + gi * 272;
    u8* d = dst + gi * 272;
#pragma unroll
    for (int blk = 0; blk < 8; ++blk) {
        d[2 * blk] = s[34 * blk];
        d[2 * blk + 1] = s[34 * blk + 1];
        for (int j = 0; j < 32; ++j) d[16 + 32 * blk + j] = s[34 * blk + 2 + j];
    }
}

__device__ __forceinline__ int q8x_mpad(int m) { return (m + 15) & ~15; }
// The 32 quants of block kb of row r, and the scales, of q8 activations at xs (mp = q8x_mpad(m)).
__device__ __forceinline__ const signed char* q8x_quants(const void* xs, int mp, int kb, int r) {
    return (const signed char*)xs + ((i64)kb * mp + r) * 32;
}
__device__ __forceinline__ const float* q8x_scales(const void* xs, int k, int mp) {
    return (const float*)((const signed char*)xs + (i64)mp * k);
}

// c = A·B for int8 A (s8, 16 × 32) and B (s8, 32 × 8), s32 accumulation from zero.
__device__ __forceinline__ void imma_16832_ss(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}

// q8 activations of an m-row, k-wide input (rows x_stride apart from x_off) into xs: a warp per
// 32-element block, grid (⌈k / 256⌉, min(m, 65535)), rows strided by the grid. The largest |x|
// starts from 0, so NaNs drop out of it (and quantize to 0), as in the CPU reference; a block
// holding an infinity gets d = inf and q = 0, so its products are NaN on both. The scales of the
// padding rows m..q8x_mpad(m) are written 0.
extern "C" __global__ void q8_quantize_x(const float* x, i64 x_off, i64 x_stride, int k, int m, void* xs) {
    pdl_entry();
    int lane = threadIdx.x & 31, blk = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= k / 32) return;
    int mp = q8x_mpad(m);
    signed char* xq = (signed char*)xs + (i64)blk * mp * 32;
    float* scales = (float*)q8x_scales(xs, k, mp) + (i64)blk * mp;
    for (int r = blockIdx.y; r < m; r += gridDim.y) {
        float v = x[x_off + (i64)r * x_stride + 32 * blk + lane];
        float a = fmaxf(fabsf(v), 0.0f);
#pragma unroll
        for (int o = 16; o; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        float d = __fdiv_rn(a, 127.0f);
        float inv = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        float q = roundf(__fmul_rn(v, inv));
        xq[32 * r + lane] = q != q ? 0 : (signed char)fminf(fmaxf(q, -127.0f), 127.0f);
        if (lane == 0) scales[r] = d;
    }
    if (blockIdx.y == 0 && lane < mp - m) scales[m + lane] = 0.0f;
}

// One 256-weight group (8 Q8_0 blocks) of weight rows g and g + 8 of each 16-row tile times NT
// tiles of 8 q8 activation rows. Rows past the batch read row m0's words and the scales'
// padding; their columns are never written.
// With R (`q8_0_repack`'s layout: a group's 8 f16 scales, then its 256 quants), a lane's two
// words of a block are one 8-byte load and four blocks' scales one more, instead of a 2-byte
// scale and two or three words per block: the same values, so the same bits.
template <int MT, int NT, bool R>
__device__ __forceinline__ void q80x_group(const u8* w, const void* xs, int k, int m, float (&acc)[MT][NT][4],
                                           int row0, int n, int n_groups, int grp, int m0) {
    int t = threadIdx.x & 3;
    const u8* b[MT][2];
    weight_groups<MT>(w, row0, n, n_groups, grp, 272, b);
    int tok[NT];
    activation_rows<NT>(m0, m, tok);
    int mp = q8x_mpad(m);
    const float* xd = q8x_scales(xs, k, mp);
    // R: blocks 4h .. 4h + 3 take their scales from one load (sc, four f16).
    uint2 sc[MT][2];
#pragma unroll 4
    for (int blk = 0; blk < 8; ++blk) {
        int kb = grp * 8 + blk;
        u32 q[MT][2][2];
        float d[MT][2];
        if (R) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    if ((blk & 3) == 0) sc[mt][r] = ldw64<SMALL_HINT(NT)>(b[mt][r] + 2 * blk);
                    u32 sw = (blk & 2) ? sc[mt][r].y : sc[mt][r].x;
                    d[mt][r] = h2f((u16)((blk & 1) ? sw >> 16 : sw & 0xffff));
                    uint2 qw = ldw64<SMALL_HINT(NT)>(b[mt][r] + 16 + 32 * blk + 8 * t);
                    q[mt][r][0] = qw.x;
                    q[mt][r][1] = qw.y;
                }
        } else {
            q80_block<MT, SMALL_HINT(NT)>(b, blk, t, q, d);
        }
        uint2 xb[NT];
        float2 dx[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            xb[nt] = *(const uint2*)(q8x_quants(xs, mp, kb, tok[nt]) + 8 * t);
            dx[nt] = *(const float2*)(xd + (i64)kb * mp + m0 + 8 * nt + 2 * t);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                int c[4];
                imma_16832_ss(c, q[mt][0][0], q[mt][1][0], q[mt][0][1], q[mt][1][1], xb[nt].x, xb[nt].y);
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    acc[mt][nt][e] = __fmaf_rn(__fmul_rn(d[mt][e >> 1], (e & 1) ? dx[nt].y : dx[nt].x),
                                               (float)c[e], acc[mt][nt][e]);
            }
    }
}

// matmul_q8_0_q8x without tensor cores: a warp per (weight row, activation row), its lanes
// taking every 32nd block, summed by shuffles.
extern "C" __global__ void matmul_q8_0_q8x_warp(const u8* w, const void* xs, float* y, int k, int n, int m) {
    pdl_entry();
    i64 wi = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wi >= (i64)n * m) return;
    int row = (int)(wi % n), tok = (int)(wi / n), nb = k / 32;
    const u8* wr = w + (i64)row * nb * 34;
    int mp = q8x_mpad(m);
    const float* xd = q8x_scales(xs, k, mp);
    float acc = 0.0f;
    for (int kb = lane; kb < nb; kb += 32) {
        const u8* bb = wr + 34 * kb;
        const signed char* xq = q8x_quants(xs, mp, kb, tok);
        int s = 0;
        for (int j = 0; j < 32; ++j) s += (int)(signed char)bb[2 + j] * (int)xq[j];
        float dw = h2f((u16)(bb[0] | bb[1] << 8));
        acc = __fmaf_rn(__fmul_rn(dw, xd[(i64)kb * mp + tok]), (float)s, acc);
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[(i64)tok * n + row] = acc;
}

// ---- Q6_K weights × q8 activations (`matmul_q6_k_q8x_*`, graph op MatMulQ8 of Q6_K weights:
// the drafters' output heads). The activations come from q8_quantize_x as above; activation
// block kb = 8·grp + 4h + p (32 elements) is run p of half h of Q6_K group grp, whose two
// 16-weight sub-blocks 8h + 2p + lb have their own int8 scales. So one mma.m16n8k16 (s8 × s8)
// per sub-block and 8 rows: lane t's A words hold the levels q − 32 of weights 16·lb + 4t..+3
// of the run (rows g and g + 8), its B word the same four activations of its row. The two exact
// sums join as sc0·s0 + sc1·s1 in int32 (below 2^24 in magnitude, so exact in f32 as well) and
// the block's term is d_w·d_x times that, as the CPU reference adds it.
#define DT_Q6X 114  // a kernel-template tag, not a ggml type
#define DT_Q6R 115  // the same with the weights in q6_k_repack's layout
#define DT_Q6_KR 116  // the split-f16 `_mma_` Q6_K kernels with the weights in q6_k_repack's layout

// Q6_K groups rearranged for the q8 and `_mma_` products: 224 bytes (16-byte aligned) each. Lane
// t of a warp reads the 16 weights l = 16lb + 4t + e (e = 0..3) of runs p = 0..3 of half h, as
// three 4-byte words w0, w1, w2 at 48t + 24h + 12lb (see q6k_words), so a lane's 48 bytes are
// contiguous and 16-byte aligned; then the 16 int8 scales at 192, d at 208 and 14 bytes of zeros.
// Under Q6K_FIELDS (the default) the words hold the 6-bit levels q(p, e) where the f16 A
// fragments want them (q6k_frag_r, q6_levels_r): for runs p = 0, 1, 2 word p holds q(p, 0) at
// bits 0..5, q(p, 1) at 6..11, q(p, 2) at 16..21 and q(p, 3) at 22..27, so a fragment register
// (e = 0, 2 or e = 1, 3) is one mask of the word or of it shifted by 6; run 3 fills the 24 bits
// left: its low nibbles of e = 0, 2 at bits 12..15 and 28..31 of w0, of e = 1, 3 there in w1,
// and its high bit pairs at bits 12..15 and 28..31 of w2 (e = 0, 1 and e = 2, 3). With
// Q6K_FIELDS 0 they are the stored words, rearranged only: the low nibbles of runs 0 / 2 at
// ql[64h + 16lb + 4t], of runs 1 / 3 at ql[64h + 32 + 16lb + 4t], the high bit pairs at
// qh[32h + 16lb + 4t] (q6k_frag, q6_levels). A thread per group.
extern "C" __global__ void q6_k_repack(const u8* src, u8* dst, i64 n_groups) {
    pdl_entry();
    i64 gi = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (gi >= n_groups) return;
    const u8* s = src + gi * 210;
    u8* d = dst + gi * 224;
    for (int h = 0; h < 2; ++h)
        for (int t = 0; t < 4; ++t)
            for (int lb = 0; lb < 2; ++lb) {
                u8* o = d + 48 * t + 24 * h + 12 * lb;
                if (!Q6K_FIELDS) {  // the stored words, rearranged only
                    for (int e = 0; e < 4; ++e) {
                        o[e] = s[64 * h + 16 * lb + 4 * t + e];
                        o[4 + e] = s[64 * h + 32 + 16 * lb + 4 * t + e];
                        o[8 + e] = s[128 + 32 * h + 16 * lb + 4 * t + e];
                    }
                    continue;
                }
                u32 q[4][4], w[3] = {0, 0, 0};  // q[p][e]: the level of weight l of run p
                for (int e = 0; e < 4; ++e) {
                    int l = 16 * lb + 4 * t + e;
                    u32 lo02 = s[64 * h + l], lo13 = s[64 * h + 32 + l], hi = s[128 + 32 * h + l];
                    u32 lo[4] = {lo02 & 15u, lo13 & 15u, lo02 >> 4, lo13 >> 4};
                    for (int p = 0; p < 4; ++p) q[p][e] = lo[p] | ((hi >> (2 * p)) & 3u) << 4;
                }
                for (int p = 0; p < 3; ++p)
                    w[p] = q[p][0] | q[p][1] << 6 | q[p][2] << 16 | q[p][3] << 22;
                w[0] |= (q[3][0] & 15u) << 12 | (q[3][2] & 15u) << 28;
                w[1] |= (q[3][1] & 15u) << 12 | (q[3][3] & 15u) << 28;
                w[2] |= (q[3][0] >> 4) << 12 | (q[3][1] >> 4) << 14 | (q[3][2] >> 4) << 28 | (q[3][3] >> 4) << 30;
                for (int j = 0; j < 3; ++j)
                    for (int b = 0; b < 4; ++b) o[4 * j + b] = (u8)(w[j] >> (8 * b));
            }
    for (int e = 0; e < 18; ++e) d[192 + e] = s[192 + e];
    for (int e = 210; e < 224; ++e) d[e] = 0;
}

// c = A·B for int8 A (s8, 16 × 16) and B (s8, 16 × 8), s32 accumulation from zero.
__device__ __forceinline__ void imma_16816_ss(int (&c)[4], u32 a0, u32 a1, u32 b0) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};\n"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}

// The levels q − 32 (int8) of four Q6_K weights from their low nibbles (bits 0..3 of each byte
// of lo) and high bit pairs (bits 4, 5 of each byte of hi); the other bits are ignored. q + 0x60
// per byte cannot carry (q ≤ 63), and flipping bit 7 then gives q − 32 modulo 256.
__device__ __forceinline__ u32 q6_levels(u32 lo, u32 hi) {
    u32 q = (lo & 0x0F0F0F0Fu) | (hi & 0x30303030u);
    return (q + 0x60606060u) ^ 0x80808080u;
}

// q6_levels for q6_k_repack's words w0, w1, w2 of a lane's (h, lb) (see there): run p's four
// levels, weight e in byte e.
__device__ __forceinline__ u32 q6_levels_r(u32 w0, u32 w1, u32 w2, int p) {
    u32 q;
    if (p < 3) {
        u32 w = p == 0 ? w0 : p == 1 ? w1 : w2;
        q = (w & 0x003F003Fu) | ((w << 2) & 0x3F003F00u);
    } else {
        q = ((w0 >> 12) & 0x000F000Fu) | ((w1 >> 4) & 0x0F000F00u) | ((w2 >> 8) & 0x00300030u) |
            ((w2 >> 2) & 0x30003000u);
    }
    return (q + 0x60606060u) ^ 0x80808080u;
}

// One 256-weight Q6_K group of weight rows g and g + 8 of each 16-row tile times NT tiles of 8
// q8 activation rows. Rows past the batch read row m0's words and the scales' padding; their
// columns are never written.
// With R (`q6_k_repack`'s 224-byte groups), a lane's six quant words of a half are three 8-byte
// loads and the 16 scales one 16-byte load (unhinted, one per group), instead of six 4-byte
// loads per half where the group is 4-byte aligned and twelve 2-byte ones where it is not: the
// same values, so the same bits.
template <int MT, int NT, bool R>
__device__ __forceinline__ void q6kx_group(const u8* w, const void* xs, int k, int m, float (&acc)[MT][NT][4],
                                           int row0, int n, int n_groups, int grp, int m0) {
    int t = threadIdx.x & 3;
    const u8* b[MT][2];
    weight_groups<MT>(w, row0, n, n_groups, grp, R ? 224 : 210, b);
    int tok[NT];
    activation_rows<NT>(m0, m, tok);
    int mp = q8x_mpad(m);
    const float* xd = q8x_scales(xs, k, mp);
    bool al[MT][2];  // (as stored) whether each group is 4-byte aligned
    float dd[MT][2];
    u32 scales[MT][2][4];
    q6k_scales<MT, SMALL_HINT(NT), R>(b, al, dd, scales);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        u32 ql[MT][2][2][2], qh[MT][2][2];  // [tile][row][lb][run parity, or w0 / w1 repacked]
        q6k_words<MT, 2, SMALL_HINT(NT), R>(b, al, h, 0, t, ql, qh);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            int kb = grp * 8 + 4 * h + p, sb = 8 * h + 2 * p;
            u32 xb[NT][2];
            float2 dx[NT];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int lb = 0; lb < 2; ++lb) xb[nt][lb] = *(const u32*)(q8x_quants(xs, mp, kb, tok[nt]) + 16 * lb + 4 * t);
                dx[nt] = *(const float2*)(xd + (i64)kb * mp + m0 + 8 * nt + 2 * t);
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                u32 a[2][2];  // [row][lb]
                int sc[2][2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
#pragma unroll
                    for (int lb = 0; lb < 2; ++lb) {
                        if (R && Q6K_FIELDS) {
                            a[r][lb] = q6_levels_r(ql[mt][r][lb][0], ql[mt][r][lb][1], qh[mt][r][lb], p);
                        } else {
                            u32 lo = ql[mt][r][lb][p & 1] >> (4 * (p >> 1));
                            u32 hi = p < 3 ? qh[mt][r][lb] << (4 - 2 * p) : qh[mt][r][lb] >> 2;
                            a[r][lb] = q6_levels(lo, hi);
                        }
                        sc[r][lb] = (int)(signed char)(scales[mt][r][sb >> 2] >> (8 * ((sb + lb) & 3)));
                    }
                }
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    int c0[4], c1[4];
                    imma_16816_ss(c0, a[0][0], a[1][0], xb[nt][0]);
                    imma_16816_ss(c1, a[0][1], a[1][1], xb[nt][1]);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int s = sc[e >> 1][0] * c0[e] + sc[e >> 1][1] * c1[e];
                        acc[mt][nt][e] = __fmaf_rn(__fmul_rn(dd[mt][e >> 1], (e & 1) ? dx[nt].y : dx[nt].x),
                                                   (float)s, acc[mt][nt][e]);
                    }
                }
            }
        }
    }
}

// matmul_q6_k_q8x without tensor cores: a warp per (weight row, activation row), its lanes
// taking every 32nd activation block (one run of a Q6_K group), summed by shuffles.
extern "C" __global__ void matmul_q6_k_q8x_warp(const u8* w, const void* xs, float* y, int k, int n, int m) {
    pdl_entry();
    i64 wi = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wi >= (i64)n * m) return;
    int row = (int)(wi % n), tok = (int)(wi / n), nb = k / 32;
    const u8* wr = w + (i64)row * (k / 256) * 210;
    int mp = q8x_mpad(m);
    const float* xd = q8x_scales(xs, k, mp);
    float acc = 0.0f;
    for (int kb = lane; kb < nb; kb += 32) {
        const u8* g = wr + 210 * (kb / 8);
        const signed char* xq = q8x_quants(xs, mp, kb, tok);
        int h = (kb % 8) / 4, p = kb % 4;
        int sb = 8 * h + 2 * p, is = 0;
        for (int lb = 0; lb < 2; ++lb) {
            int s = 0;
            for (int l = 16 * lb; l < 16 * lb + 16; ++l) {
                int lo = (g[64 * h + 32 * (p & 1) + l] >> (4 * (p >> 1))) & 0xF;
                int hi = (g[128 + 32 * h + l] >> (2 * p)) & 3;
                s += ((lo | hi << 4) - 32) * (int)xq[l];
            }
            is += (int)(signed char)g[192 + sb + lb] * s;
        }
        float dw = h2f((u16)(g[208] | g[209] << 8));
        acc = __fmaf_rn(__fmul_rn(dw, xd[(i64)kb * mp + tok]), (float)is, acc);
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[(i64)tok * n + row] = acc;
}

// One block: MMV_WARPS / kw warp rows, each MT·16 weight rows, × NT·8 activation rows. The kw
// warps of a warp row split the groups (warp j takes groups j, j + kw, ...) and their partial
// sums are added in a fixed order; up to 16 rows kw (1, 2, 4 or 8) depends only on k, so short
// rows (a 1024-wide drafter layer has 4 groups) keep every warp busy without changing any row's
// arithmetic across batch sizes; prefill products take kw = 1 (each warp its own rows).
template <int DT, int MT, int NT, bool PREP, bool G = false>
__device__ void matvec_mma_body(const u8* w, const Acts<PREP, G> A, float* y, int k, int n, int m, int kw, int plane,
                                int planes, int tile_y) {
    __shared__ float red[MMV_WARPS][MT * NT * 4][32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int warp_rows = MMV_WARPS / kw, wr = warp / kw, wk = warp % kw;
    // Activation tiles along x, weight tiles along y: the blocks of one weight tile run back to
    // back, so a many-row product (a prefill chunk) reads each weight once from DRAM and again
    // from L2.
    int row0 = (tile_y * warp_rows + wr) * MT * 16, m0 = blockIdx.x * NT * 8;
    int n_groups = k / 256;
    // Long rows also split their groups over `planes` blocks (warp j of the block of plane z
    // takes groups j + kw·z, then every kw·planes-th), each writing its partial sums to plane z
    // of y for `mmv_sum_splits`; the split count depends only on k.
    int first = wk + kw * plane, stride = kw * planes;
    y += (i64)plane * m * n;
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
    if (row0 < n) {
        if (DT == DT_Q4_K) q4k_rows<MT, NT, PREP>(w, A, acc, row0, n, n_groups, first, stride, m0, m);
        for (int grp = first; DT != DT_Q4_K && grp < n_groups; grp += stride) {
            if (DT == DT_Q6_K) q6k_group<MT, NT, PREP>(w, A, acc, row0, n, n_groups, grp, m0, m);
            if (DT == DT_Q6_KR) q6k_group<MT, NT, PREP, true>(w, A, acc, row0, n, n_groups, grp, m0, m);
            if (DT == DT_Q8_0) q80_group<MT, NT, PREP>(w, A, acc, row0, n, n_groups, grp, m0, m);
            if (DT == DT_Q8_0R) q80_group<MT, NT, PREP, true>(w, A, acc, row0, n, n_groups, grp, m0, m);
            if (DT == DT_Q8X) q80x_group<MT, NT, false>(w, A.p, k, m, acc, row0, n, n_groups, grp, m0);
            if (DT == DT_Q8R) q80x_group<MT, NT, true>(w, A.p, k, m, acc, row0, n, n_groups, grp, m0);
            if (DT == DT_Q6X) q6kx_group<MT, NT, false>(w, A.p, k, m, acc, row0, n, n_groups, grp, m0);
            if (DT == DT_Q6R) q6kx_group<MT, NT, true>(w, A.p, k, m, acc, row0, n, n_groups, grp, m0);
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
        int row = (tile_y * warp_rows + r) * MT * 16 + mt * 16 + (l >> 2) + (e >= 2 ? 8 : 0);
        int tok = m0 + nt * 8 + 2 * (l & 3) + (e & 1);
        if (row < n && tok < m) y[A.out(tok) * n + row] = s;
    }
}

// One block of matmul_<type>_mma_m1n1[_x]_p / _p1 and matmul_<type>_mma_m2n2[_x]_p (see
// PersistWalk): the one-shot kernels' warps, groups and order, walked persistently, MT weight
// tiles and NT activation tiles a warp. ONE: a batch of one row (the `_p1` kernels; see
// q6k_group, and q4k_group_one for Q4_K under Q4K_HL, without which Q4_K's are its `_p` kernels).
template <int DT, int MT, int NT, bool PREP, bool ONE = false>
__device__ void matvec_mma_persist_body(const u8* w, const Acts<PREP> A, float* y, int k, int n, int m, int kw,
                                        int splits, int pdl) {
    constexpr int ITERS = persist_iters<MT>();
    __shared__ float red[ITERS][MMV_WARPS][MT * NT * 4][32];  // [iteration][row · kw + slice]
    int lane = threadIdx.x & 31, m0 = blockIdx.x * NT * 8;
    PersistWalk W = persist_walk_of<MT>(k, n, kw, splits);
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) zero4(acc[mt][nt]);
    persist_walk<DT, MT>(
        W, w, pdl,
        [&](const Q4KTile(&T)[MT], int grp, int row0) {
            if constexpr (DT == DT_Q4_K && MT == 1 && ONE && NT == 1 && Q4K_HL)
                q4k_group_one<PREP>(T, A, acc, grp);
            else if (DT == DT_Q4_K)
                q4k_group<MT, NT, PREP>(T, A, acc, grp, m0, m);
            if (DT == DT_Q6_K) q6k_group<MT, NT, PREP, false, ONE>(w, A, acc, row0, n, W.n_groups, grp, m0, m);
            if (DT == DT_Q6_KR) q6k_group<MT, NT, PREP, true, ONE>(w, A, acc, row0, n, W.n_groups, grp, m0, m);
            if (DT == DT_Q8_0) q80_group<MT, NT, PREP, false, ONE>(w, A, acc, row0, n, W.n_groups, grp, m0, m);
            if (DT == DT_Q8_0R) q80_group<MT, NT, PREP, true, ONE>(w, A, acc, row0, n, W.n_groups, grp, m0, m);
        },
        [&](int i) {
            float(*r)[32] = red[i][W.wr * kw + W.slice(i)];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        r[(mt * NT + nt) * 4 + e][lane] = acc[mt][nt][e];
                        acc[mt][nt][e] = 0.0f;
                    }
        });
    __syncthreads();
    int per_unit = W.warp_rows * MT * NT * 4 * 32;
    for (int idx = threadIdx.x; idx < ITERS * per_unit; idx += blockDim.x) {
        int it = idx / per_unit, u = W.unit(it);
        if (u < 0) break;
        int z = W.plane(u), j = idx % per_unit;
        int l = j & 31, e4 = (j >> 5) % (MT * NT * 4), r = (j >> 5) / (MT * NT * 4);
        float s = 0.0f;
        for (int v = 0; v < kw; ++v) s += W.first_group(v, z) < W.n_groups ? red[it][r * kw + v][e4][l] : 0.0f;
        int e = e4 & 3, nt = (e4 >> 2) % NT, mt = (e4 >> 2) / NT;
        int row = ((u % W.tiles_y) * W.warp_rows + r) * 16 * MT + mt * 16 + (l >> 2) + (e >= 2 ? 8 : 0);
        int tok = m0 + nt * 8 + 2 * (l & 3) + (e & 1);
        if (row < n && tok < m) y[(i64)z * m * n + (i64)tok * n + row] = s;
    }
}

// y[i] = the sum of its `splits` partial planes (n_out elements each), in plane order, plus res[i]
// after it where res is not null (fuse_plan's SumAdd: the Add of a residual to the product, same bits).
extern "C" __global__ void mmv_sum_splits(const float* part, float* y, int n_out, int splits, const float* res) {
    pdl_entry();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_out) return;
    float s = part[i];
    for (int z = 1; z < splits; ++z) s += part[(i64)z * n_out + i];
    y[i] = res ? res[i] + s : s;
}

// matmul_<type>_mma_m<MT>n<NT> (prepared activations x, see `mmv_prepare_x`) and
// matmul_<type>_mma_m<MT>n<NT>_x (f32 activation rows x_stride apart from x_off): blocks of
// MMV_WARPS warps, grid (⌈m / 8·NT⌉, ⌈n / (16·MT·MMV_WARPS / kw)⌉, splits); with splits > 1, y
// holds `splits` planes of m·n partial sums. `pdl`: the launch's PDL_* mode (common.cuh), as
// for the persistent kernels below.
#define MMV_KERNEL(SUFFIX, DT, MT, NT, MIN_BLOCKS, PREP, TAIL)                                           \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, MIN_BLOCKS)                             \
        matmul_##SUFFIX##_mma_m##MT##n##NT##TAIL(const u8* w, const void* x, float* y, int k, int n, int m, \
                                                 int kw, i64 x_off, i64 x_stride, int pdl) {              \
        pdl_enter(pdl);                                                                                   \
        matvec_mma_body<DT, MT, NT, PREP>(w, Acts<PREP>{x, x_off, x_stride, k, m}, y, k, n, m, kw, blockIdx.z, \
                                          gridDim.z, blockIdx.y);                                         \
        pdl_leave(pdl);                                                                                   \
    }
// Two blocks per SM (at most 128 registers) where that costs at most a few spilled bytes; the
// Q4_K and Q6_K kernels with two weight tiles per warp keep their registers (one block per SM),
// as do the prefill tiles of four activation tiles (source::MMA_PREFILL_TILES). (Q4_K's (2, 2)
// at two blocks per SM spills 52 bytes and made the 31B's 16-row verify 23.45 → 25.3 ms on an
// H200; Q6_K's spilled 28 bytes, 48 repacked, and one block per SM took that verify 22.83 →
// 22.2 ms.)
#define MMV_KERNELS_P(SUFFIX, DT, MIN_BLOCKS_M2, PREP, TAIL)  \
    MMV_KERNEL(SUFFIX, DT, 1, 1, 2, PREP, TAIL)               \
    MMV_KERNEL(SUFFIX, DT, 1, 2, 2, PREP, TAIL)               \
    MMV_KERNEL(SUFFIX, DT, 2, 1, MIN_BLOCKS_M2, PREP, TAIL)   \
    MMV_KERNEL(SUFFIX, DT, 2, 2, MIN_BLOCKS_M2, PREP, TAIL)   \
    MMV_KERNEL(SUFFIX, DT, 1, 4, 1, PREP, TAIL)               \
    MMV_KERNEL(SUFFIX, DT, 2, 4, 1, PREP, TAIL)
#define MMV_KERNELS(SUFFIX, DT, MIN_BLOCKS_M2)          \
    MMV_KERNELS_P(SUFFIX, DT, MIN_BLOCKS_M2, true, )    \
    MMV_KERNELS_P(SUFFIX, DT, MIN_BLOCKS_M2, false, _x)
MMV_KERNELS(q4_k, DT_Q4_K, 1)
MMV_KERNELS(q6_k, DT_Q6_K, 1)
// matmul_q6_kr_mma_* / matmul_q8_0r_mma_*: the Q6_K / Q8_0 kernels reading q6_k_repack's /
// q8_0_repack's layout.
MMV_KERNELS(q6_kr, DT_Q6_KR, 1)
MMV_KERNELS(q8_0r, DT_Q8_0R, 2)
MMV_KERNELS(q8_0, DT_Q8_0, 2)
// matmul_q8_0_q8x_mma_m<MT>n<NT>: Q8_0 weights × q8 activations (xs from q8_quantize_x;
// x_off and x_stride unused).
MMV_KERNEL(q8_0_q8x, DT_Q8X, 1, 1, 2, true, )
MMV_KERNEL(q8_0_q8x, DT_Q8X, 1, 2, 2, true, )
MMV_KERNEL(q8_0_q8x, DT_Q8X, 2, 1, 2, true, )
MMV_KERNEL(q8_0_q8x, DT_Q8X, 2, 2, 2, true, )
// matmul_q8_0r_q8x_mma_m<MT>n<NT>: the same, weights in q8_0_repack's layout.
MMV_KERNEL(q8_0r_q8x, DT_Q8R, 1, 1, 2, true, )
MMV_KERNEL(q8_0r_q8x, DT_Q8R, 1, 2, 2, true, )
MMV_KERNEL(q8_0r_q8x, DT_Q8R, 2, 1, 2, true, )
MMV_KERNEL(q8_0r_q8x, DT_Q8R, 2, 2, 2, true, )
// matmul_q6_k_q8x_mma_m<MT>n<NT>: Q6_K weights × q8 activations (as above).
MMV_KERNEL(q6_k_q8x, DT_Q6X, 1, 1, 2, true, )
MMV_KERNEL(q6_k_q8x, DT_Q6X, 1, 2, 2, true, )
MMV_KERNEL(q6_k_q8x, DT_Q6X, 2, 1, 2, true, )
MMV_KERNEL(q6_k_q8x, DT_Q6X, 2, 2, 2, true, )
// matmul_q6_kr_q8x_mma_m<MT>n<NT>: the same, weights in q6_k_repack's layout.
MMV_KERNEL(q6_kr_q8x, DT_Q6R, 1, 1, 2, true, )
MMV_KERNEL(q6_kr_q8x, DT_Q6R, 1, 2, 2, true, )
MMV_KERNEL(q6_kr_q8x, DT_Q6R, 2, 1, 2, true, )
MMV_KERNEL(q6_kr_q8x, DT_Q6R, 2, 2, 2, true, )

// matmul_<type>_mma_m1n1[_x]_p: matmul_<type>_mma_m1n1[_x] in gridDim.y persistent blocks (grid
// (⌈m / 8⌉, blocks, 1)) over `splits` planes, two an SM; matmul_<type>_mma_m1n1[_x]_p1: the same
// for a batch of one row (m = 1: decode and draft steps), the same bits: Q6_K and Q8_0 with half
// the scale FMAs; Q4_K with half the mma under Q4K_HL, else its `_p` kernel again. (Q4_K's with
// half the FMAs in the alternating order, tried, spilled 40–108 bytes at the 128-register cap;
// NVRTC, sm_90.) matmul_<type>_mma_m2n2[_x]_p: matmul_<type>_mma_m2n2[_x] (9–16 rows: verify
// batches) walked the same way, one block an SM (the default route; `SPECULA_MMA_PERSIST_M2=0`:
// the one-shot ones).
#define MMV_PERSIST_KERNEL(SUFFIX, DT, MT, NT, MIN_BLOCKS, PREP, TAIL, ONE, PT)                             \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, MIN_BLOCKS)                                \
        matmul_##SUFFIX##_mma_m##MT##n##NT##TAIL##PT(const u8* w, const void* x, float* y, int k, int n, int m, \
                                                     int kw, i64 x_off, i64 x_stride, int splits, int pdl) { \
        pdl_enter(pdl);                                                                                     \
        matvec_mma_persist_body<DT, MT, NT, PREP, ONE>(w, Acts<PREP>{x, x_off, x_stride, k, m}, y, k, n, m, kw, \
                                                       splits, pdl);                                        \
        pdl_leave(pdl);                                                                                     \
    }
#define MMV_PERSIST_KERNELS(SUFFIX, DT)                              \
    MMV_PERSIST_KERNEL(SUFFIX, DT, 1, 1, 2, true, , false, _p)       \
    MMV_PERSIST_KERNEL(SUFFIX, DT, 1, 1, 2, false, _x, false, _p)
#define MMV_PERSIST_ONE_KERNELS(SUFFIX, DT)                          \
    MMV_PERSIST_KERNELS(SUFFIX, DT)                                  \
    MMV_PERSIST_KERNEL(SUFFIX, DT, 1, 1, 2, true, , true, _p1)       \
    MMV_PERSIST_KERNEL(SUFFIX, DT, 1, 1, 2, false, _x, true, _p1)
#define MMV_PERSIST_M2_KERNELS(SUFFIX, DT)                           \
    MMV_PERSIST_KERNEL(SUFFIX, DT, 2, 2, 1, true, , false, _p)       \
    MMV_PERSIST_KERNEL(SUFFIX, DT, 2, 2, 1, false, _x, false, _p)
MMV_PERSIST_ONE_KERNELS(q4_k, DT_Q4_K)
MMV_PERSIST_ONE_KERNELS(q6_k, DT_Q6_K)
MMV_PERSIST_ONE_KERNELS(q6_kr, DT_Q6_KR)
MMV_PERSIST_M2_KERNELS(q4_k, DT_Q4_K)
MMV_PERSIST_M2_KERNELS(q6_k, DT_Q6_K)
MMV_PERSIST_M2_KERNELS(q6_kr, DT_Q6_KR)
MMV_PERSIST_ONE_KERNELS(q8_0r, DT_Q8_0R)
MMV_PERSIST_ONE_KERNELS(q8_0, DT_Q8_0)

// matmul_id_tc_<type>: expert-indexed products (MoE routing, graph op MatMulId) on the
// one-shot m1n1 `_x` kernel: block (·, y, pair) multiplies activation row x_slots == 1 ? pair /
// n_used : pair (f32, x_stride apart from x_off, 16-byte aligned: the host checks) by weight
// tile y of expert ids[pair] (of n_expert, each n rows of k) into y[pair·n ..]. Grid (1,
// ⌈n / (16·MMV_WARPS / kw)⌉, pairs), one plane. A pair's output is the one-row product of its
// expert and row, whatever the other pairs of the launch: a verify row gets the decode step's
// bits. An id outside the experts is reported (ERR_EXPERT_ID) and its block writes nothing.
// (The scalar matmul_id kernels, a warp per output row, took 142 µs per 8 experts' gate and up
// products in the 26B-A4B's decode step under ncu: 126 GB/s.)
#define MMV_ID_KERNEL(SUFFIX, DT)                                                                               \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, 2)                                            \
        matmul_id_tc_##SUFFIX(const u8* w, const float* x, const int* ids, float* y, int k, int n,         \
                                   int n_expert, int n_used, int x_slots, i64 x_off, i64 x_stride, int kw,       \
                                   int* err) {                                                                  \
        pdl_entry();                                                                                            \
        int pair = blockIdx.z, e = ids[pair];                                                                   \
        if (e < 0 || e >= n_expert) {                                                                           \
            if (threadIdx.x == 0) report(err, ERR_EXPERT_ID);                                                   \
            return;                                                                                             \
        }                                                                                                       \
        i64 row = pair_x_row(pair, n_used, x_slots);                                                            \
        matvec_mma_body<DT, 1, 1, false>(w + (i64)e * n * row_bytes(DT, k),                                     \
                                         Acts<false>{x, x_off + row * x_stride, x_stride, k, 1}, y + (i64)pair * n, \
                                         k, n, 1, kw, 0, 1, blockIdx.y);                                        \
    }
MMV_ID_KERNEL(q4_k, DT_Q4_K)
MMV_ID_KERNEL(q6_k, DT_Q6_K)
MMV_ID_KERNEL(q8_0, DT_Q8_0)

// matmul_id_tcg_<type>: matmul_id_tc_<type> with the launch's (token, slot) pairs grouped by
// expert (at most MOE_GROUP_MAX pairs; batches of a few tokens: verify). Grid (1, ⌈tiles /
// tiles_per_block⌉, pairs): block (·, y, p) exits unless p is the first pair of its expert, whose
// block multiplies weight tiles y·tiles_per_block.. of the expert in turn by the activation rows
// of every pair of that expert, eight a pass as the columns of one mma tile (matvec_mma_body
// through gathered Acts), so each picked expert's tile is read once a launch, not once a pair, and
// a group's search serves several tiles. A column's arithmetic does not depend on the others:
// every pair's output has the bits matmul_id_tc gives it alone (a verify row has the decode step's).
template <int DT>
__device__ void matmul_id_tcg_body(const u8* w, const float* x, const int* ids, float* y, int k, int n,
                                   int n_expert, int n_used, int x_slots, i64 x_off, i64 x_stride, int kw,
                                   int tiles_per_block, int* err) {
    __shared__ int outs[MOE_GROUP_MAX], xrows[MOE_GROUP_MAX];
    int e, count = lead_expert_group(ids, gridDim.z, blockIdx.z, n_expert, err, outs, e);
    if (count == 0) return;
    for (int j = threadIdx.x; j < count; j += blockDim.x) xrows[j] = pair_x_row(outs[j], n_used, x_slots);
    __syncthreads();
    const u8* we = w + (i64)e * n * row_bytes(DT, k);
    int block_rows = 16 * (MMV_WARPS / kw), tiles = (n + block_rows - 1) / block_rows;
    int t0 = blockIdx.y * tiles_per_block, t1 = t0 + tiles_per_block < tiles ? t0 + tiles_per_block : tiles;
#pragma unroll 1
    for (int ty = t0; ty < t1; ++ty)
        for (int j0 = 0; j0 < count; j0 += 8) {
            int rows = count - j0 < 8 ? count - j0 : 8;
            if (ty > t0 || j0 > 0) __syncthreads();  // the last pass's partial sums are read
            matvec_mma_body<DT, 1, 1, false>(we, Acts<false, true>{x, x_off, x_stride, k, rows, xrows + j0, outs + j0},
                                             y, k, n, rows, kw, 0, 1, ty);
        }
}
#define MMV_ID_GROUP_KERNEL(SUFFIX, DT)                                                                        \
    extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32, 2)                                            \
        matmul_id_tcg_##SUFFIX(const u8* w, const float* x, const int* ids, float* y, int k, int n,        \
                                    int n_expert, int n_used, int x_slots, i64 x_off, i64 x_stride, int kw,      \
                                    int tiles_per_block, int* err) {                                            \
        pdl_entry();                                                                                            \
        matmul_id_tcg_body<DT>(w, x, ids, y, k, n, n_expert, n_used, x_slots, x_off, x_stride, kw,              \
                               tiles_per_block, err);                                                           \
    }
MMV_ID_GROUP_KERNEL(q4_k, DT_Q4_K)
MMV_ID_GROUP_KERNEL(q6_k, DT_Q6_K)
MMV_ID_GROUP_KERNEL(q8_0, DT_Q8_0)
