// Q4_K products of 9–16 activation rows on Hopper's warpgroup mma (wgmma, sm_90a): the verify
// batches' products, with the bits of the rows kernels (matmul_q4_k_mma_m2n2[_p]).
//
// A warpgroup is four warps on 64 consecutive weight rows; warp w unpacks rows 16w..16w+15 into
// A fragments exactly as the rows kernel does (q4k_subnormal_frags). B, the batch's 16 rows'
// prepared hi and lo halves of one group as 18 k16 chunks (8 sub-blocks × 2 k halves, then the
// mins' two halves), sits in shared memory: columns 0..15 of a chunk the rows' hi halves, 16..31
// their lo halves. With Q4K_HL (hi and lo in separate chains) one m64n32k16 chain per sub-block
// gives column j the hi chain and j + 16 the lo chain of row j, folded in by two FMAs with the
// sub-block scale, hi first; without it (the default) a sub-block is one m64n16k16 chain of four,
// hi and lo alternating per k half (the descriptor of a chunk's lo half is 512 bytes on), folded
// in by one FMA — in both cases the rows kernel's operations in its order. Each warpgroup takes
// the rows kernel's k-slices (slice v: groups v + kw·z, then every kw·splits-th, z the plane),
// keeps each slice's sums, and warpgroup 0 adds the slices in slice order, as the rows kernel
// does, so the same bits (GPU test `wgmma_verify_products_equal_the_rows_kernels`).
//
// B comes from an image of every group's B in its shared-memory layout (`q4k_wg_image`, written
// once per prepared input), which a warpgroup copies per group as one contiguous 18 KiB run by
// 16-byte cp.async, together with the 64 rows' weights of that group, two stages deep. The
// Q4K_HL form was measured in bench/probes/wgmma_verify.cu (its fast form; NOTES, twenty-fourth
// and twenty-eighth sessions): 0.84× the persistent (2, 2) kernel's time with the weights from
// memory. (A 2–8-row form on m64n16k16 was slower than the rows kernels: thirty-seventh session.)
//
// Q6_K weights in q6_k_repack's layout take the same walk (matmul_q6_kr_mma_wg): a sub-block is
// one k16 chunk, so a group's B is 16 chunks (`q6k_wg_image`) and a stage holds only that; each
// warp loads its two rows' group from global memory as q6k_group does, before the stage's wait,
// and multiplies sub-block sb as the rows kernel (matmul_q6_kr_mma_m2n2[_p]) does: hi then lo
// chained from zero, folded by d·scale in q6k_group's sub-block order.
//
// Working code only for sm_90a; elsewhere the entry points trap and the host never launches
// them (cuda/wgmma.rs). (nvcc's host pass, which compiles no device code, sees it too, so that
// bench/probes/wgmma_verify.cu can share the helpers.)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
#define WG_VERIFY 1
#else
#define WG_VERIFY 0
#endif

// One group's B: 18 k16 chunks (sub-block s, k half hf at 2s + hf; the mins' halves h at 16 + h)
// of 1 KiB each: [n group 4][k octet 2][n 8][k 8] f16 (8 × 8 core matrices, K-major; hi in n groups
// 0–1, lo in 2–3), so the descriptors' leading byte offset is 128 and their stride byte offset 256.
#define WG_CHUNKS 18
#define WG_CHUNK_BYTES 1024
#define WG_B_BYTES (WG_CHUNKS * WG_CHUNK_BYTES)
// A stage: one group's B, then the 64 rows' 144-byte weight blocks of that group.
#define WG_W_BYTES (64 * 144)
#define WG_STAGE_BYTES (WG_B_BYTES + WG_W_BYTES)
// Warpgroups a block and stages a warpgroup: 4 × 2 × 27 KiB = 216 KiB of dynamic shared memory.
#define WG_GROUPS 4
#define WG_STAGES 2
// 1 (the default): the warpgroup index is read through a shuffle from lane 0, so the compiler
// keeps the stage addresses and the wgmma descriptors in uniform registers; 0 computes it per
// thread (an R2UR before each wgmma; `SPECULA_WG_UNIFORM`, an A/B knob).
#ifndef WG_UNIFORM
#define WG_UNIFORM 1
#endif
// The Q6_K form: a group's B is 16 k16 chunks (one a sub-block) and a stage only that:
// 4 × 2 × 16 KiB = 128 KiB of dynamic shared memory.
#define WG6_CHUNKS 16
#define WG6_B_BYTES (WG6_CHUNKS * WG_CHUNK_BYTES)

#if WG_VERIFY
// A stage's wgmma descriptor: the start address >> 4 and the leading byte offset (128 >> 4) << 16
// in the low word, the stride byte offset 256 >> 4 (no swizzle) in the high one. A chunk's
// descriptor is the stage's plus its offset >> 4 (the address never carries out: shared memory
// is below 256 KiB), as 64-bit values: ptxas then forms each one with a single 64-bit uniform add
// into the wgmma's register pair, where a low word paired with the constant high word took two
// moves and an add (H200: bench/NOTES.md, forty-first session).
__device__ __forceinline__ u64 wg_desc(const void* smem) {
    u32 addr = static_cast<u32>(__cvta_generic_to_shared(smem));
    return (u64)(256 >> 4) << 32 | ((addr >> 4) & 0x3FFF) | ((128 >> 4) << 16);
}

// c (4·NG floats: columns 8j + 2t, 8j + 2t + 1 of rows g, g + 8 for j < NG) = A·B of n = 8·NG
// (n32 or n16), plus c when acc.
template <int NG>
__device__ __forceinline__ void wgmma_f16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u64 desc, int acc);

template <>
__device__ __forceinline__ void wgmma_f16<4>(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u64 desc, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n"
        "}\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]), "+f"(c[4]), "+f"(c[5]), "+f"(c[6]), "+f"(c[7]),
          "+f"(c[8]), "+f"(c[9]), "+f"(c[10]), "+f"(c[11]), "+f"(c[12]), "+f"(c[13]), "+f"(c[14]), "+f"(c[15])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(acc));
}

template <>
__device__ __forceinline__ void wgmma_f16<2>(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u64 desc, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1, 0;\n"
        "}\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]), "+f"(c[4]), "+f"(c[5]), "+f"(c[6]), "+f"(c[7])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(acc));
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

__device__ __forceinline__ void wg_cp16(u8* dst, const u8* src) {
    u32 d = static_cast<u32>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}

// A sub-block's hi and lo products c (16 floats: hi at columns 8j + 2t + (e & 1), lo 16 on, of
// rows g, g + 8; under Q4K_HL two separate chains, else hi and lo alternating in one chain whose
// sums are c[0..7], columns 0..15) from the chunks at descriptor desc (its k half 0) and
// desc + 64 (k half 1), A fragments a[row g / g + 8][k half][pair]. Issued, not waited for.
__device__ __forceinline__ void wg_subblock(float (&c)[16], const u32 (&a)[2][2][2], u64 desc) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        u64 d = desc + 64 * hf;
        if (Q4K_HL) {
            wgmma_f16<4>(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], d, hf);
        } else {
            wgmma_f16<2>(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], d, hf);       // hi
            wgmma_f16<2>(c, a[0][hf][0], a[1][hf][0], a[0][hf][1], a[1][hf][1], d + 32, 1);  // lo
        }
    }
}

// acc += group's share of rows 16w + g, + 8 of the warpgroup's 64 (T: their weights) with the B
// staged at b, in the rows kernel's order: per sub-block its product (wg_subblock) folded by the
// sub-block scale into the even or odd sub-blocks' sums (Q4K_HL: hi, then lo); then the mins' the
// same way by −dmin, and the sums by d·2^24 and d·2^20.
__device__ __forceinline__ void wg_group(const u8* b, const Q4KTile& T, float (&acc)[2][4]) {
    Q4KTile Ts[1] = {T};
    u32 sc[1][2][2], mn[1][2][2];
    q4k_unpack_tiles<1>(Ts, sc, mn);
    const u64 desc = wg_desc(b);
    float tsc[2][2][4];  // [even / odd sub-blocks][j][e]
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int j = 0; j < 2; ++j) zero4(tsc[p][j]);
    float c[16];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        u32 a[2][2][2];
        q4k_subnormal_frags(T, s, a);
        wg_fence();
        wg_subblock(c, a, desc + 64 * 2 * s);
        wg_commit();
        wg_wait0();
        float s0 = byte_f32(sc[0][0][s >> 2], s & 3), s1 = byte_f32(sc[0][1][s >> 2], s & 3);
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float sc_ = e < 2 ? s0 : s1;
                tsc[s & 1][j][e] = __fmaf_rn(sc_, c[4 * j + e], tsc[s & 1][j][e]);
                if (Q4K_HL) tsc[s & 1][j][e] = __fmaf_rn(sc_, c[4 * (j + 2) + e], tsc[s & 1][j][e]);
            }
    }
    // The mins: their two halves' A fragments as the sub-blocks' k halves (chunks 16 and 17).
    u32 am[2][2][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        u32 a[4];
        q4k_min_frag(mn[0][0][h], mn[0][1][h], a);
        am[0][h][0] = a[0];
        am[1][h][0] = a[1];
        am[0][h][1] = a[2];
        am[1][h][1] = a[3];
    }
    wg_fence();
    wg_subblock(c, am, desc + 64 * 16);
    wg_commit();
    wg_wait0();
    float m0 = h2f((u16)(T.dd[0] >> 16)), m1 = h2f((u16)(T.dd[1] >> 16));
#pragma unroll
    for (int half = 0; half < (Q4K_HL ? 2 : 1); ++half)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                acc[j][e] = __fmaf_rn(-(e < 2 ? m0 : m1), c[4 * (j + 2 * half) + e], acc[j][e]);
    float d0 = h2f((u16)(T.dd[0] & 0xffff)), d1 = h2f((u16)(T.dd[1] & 0xffff));
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float d = e < 2 ? d0 : d1;
            acc[j][e] = __fmaf_rn(d * 16777216.0f, tsc[0][j][e], acc[j][e]);
            acc[j][e] = __fmaf_rn(d * 1048576.0f, tsc[1][j][e], acc[j][e]);
        }
}

// A thread's weight copies into a stage, worked out once: the 64 rows × 9 sixteen-byte columns
// are 576 copies, five per thread (the fifth for threads below 64), each a source offset from the
// group's first byte (rows past n repeat row n − 1, as the rows kernel clamps them) and a place
// in the stage.
struct WgStageMap {
    u32 src[5];
    u32 dst[5];
};

__device__ __forceinline__ WgStageMap wg_stage_map(int row_base, int n, int n_groups, int tid) {
    WgStageMap M;
#pragma unroll
    for (int u = 0; u < 5; ++u) {
        int i = tid + 128 * u, r = i / 9, c = i - 9 * r, row = row_base + r < n ? row_base + r : n - 1;
        M.src[u] = (u32)row * (u32)n_groups * 144u + 16u * c;
        M.dst[u] = WG_B_BYTES + 144 * r + 16 * c;
    }
    return M;
}

// Stage st ← group grp's B (B_BYTES a group: WG_B_BYTES, or the Q6_K form's WG6_B_BYTES) from the
// image, B_BYTES / 2048 copies a thread.
template <int B_BYTES>
__device__ __forceinline__ void wg_stage_b(u8* st, const u8* img, int grp, int tid) {
    const u8* src = img + (i64)grp * B_BYTES + 16 * tid;
#pragma unroll
    for (int u = 0; u < B_BYTES / 2048; ++u) wg_cp16(st + 16 * tid + 2048 * u, src + 2048 * u);
}

// Stage st ← group grp's 64 rows' weights (five copies a thread, the fifth below thread 64).
__device__ __forceinline__ void wg_stage_w(u8* st, const u8* w, const WgStageMap& M, int grp, int tid) {
    const u8* wg_ = w + 144 * grp;
#pragma unroll
    for (int u = 0; u < 5; ++u)
        if (u < 4 || tid < 64) wg_cp16(st + M.dst[u], wg_ + M.src[u]);
}

// Stage st ← group grp: its B from the image (9 copies a thread), then the 64 rows' weights.
__device__ __forceinline__ void wg_stage(u8* st, const u8* img, const u8* w, const WgStageMap& M, int grp, int tid) {
    wg_stage_b<WG_B_BYTES>(st, img, grp, tid);
    wg_stage_w(st, w, M, grp, tid);
}

// Rows lr_g and lr_g8 of a stage's 64, read as q4k_load reads them from global memory.
__device__ __forceinline__ void q4k_load_staged(Q4KTile& T, const u8* ws, int lr_g, int lr_g8, int t) {
    const u8* b[2] = {ws + 144 * lr_g, ws + 144 * lr_g8};
    q4k_load_rows<0>(T, b, t);
}

// A warp's Q6_K group of rows g and g + 8 (q6_k_repack's layout) in registers, loaded as
// q6k_group loads them (q6k_scales; q6k_words, a half's six words a row in one 16-byte and one
// 8-byte load): ql[half][0][row][lb][run parity, or w0 / w1 under Q6K_FIELDS],
// qh[half][0][row][lb].
struct Q6Regs {
    float dd[1][2];
    u32 scales[1][2][4];
    u32 ql[2][1][2][2][2];
    u32 qh[2][1][2][2];
};

__device__ __forceinline__ void q6k_load_group(Q6Regs& R, const u8* w, int row0, int n, int n_groups, int grp,
                                               int t) {
    const u8* b[1][2];
    weight_groups<1>(w, row0, n, n_groups, grp, 224, b);
    bool al[1][2];
    q6k_scales<1, 0, true>(b, al, R.dd, R.scales);
#pragma unroll
    for (int h = 0; h < 2; ++h) q6k_words<1, 2, 0, true, true>(b, al, h, 0, t, R.ql[h], R.qh[h]);
}

// acc += a Q6_K group's share of rows 16w + g, + 8 (weights R) with the B staged at b, in
// q6k_group's order: sub-block sb = 8h + 2p + lb for h, lb, p, its hi chunk then its lo chunk
// (512 bytes on) chained from zero and folded by d·scale. The four sub-blocks of an (h, lb) are
// issued together into their own sums and folded in order after one wait.
__device__ __forceinline__ void wg6_group(const u8* b, const Q6Regs& R, float (&acc)[2][4]) {
    const u64 desc = wg_desc(b);
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int lb = 0; lb < 2; ++lb) {
            u32 a[4][2][2];  // [p][row][pair]
#pragma unroll
            for (int p = 0; p < 4; ++p)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    if (Q6K_FIELDS)
                        q6k_frag_r(R.ql[h][0][r][lb][0], R.ql[h][0][r][lb][1], R.qh[h][0][r][lb], p, a[p][r]);
                    else
                        q6k_frag(R.ql[h][0][r][lb][p & 1], R.qh[h][0][r][lb], p, a[p][r]);
                }
            float c[4][8];
            wg_fence();
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                u64 d = desc + 64 * (8 * h + 2 * p + lb);
                wgmma_f16<2>(c[p], a[p][0][0], a[p][1][0], a[p][0][1], a[p][1][1], d, 0);       // hi
                wgmma_f16<2>(c[p], a[p][0][0], a[p][1][0], a[p][0][1], a[p][1][1], d + 32, 1);  // lo
            }
            wg_commit();
            wg_wait0();
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                int sb = 8 * h + 2 * p + lb;
                float s0 = q6k_scale(R.dd[0][0], R.scales[0][0], sb);
                float s1 = q6k_scale(R.dd[0][1], R.scales[0][1], sb);
#pragma unroll
                for (int j = 0; j < 2; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[j][e] = __fmaf_rn(e < 2 ? s0 : s1, c[p][4 * j + e], acc[j][e]);
            }
        }
}

// A warpgroup's (slice, group) walk: slices v = first, first + WG_GROUPS, ... below kw, each's
// groups v + base, then every `step`-th below n_groups; v ≥ kw once done.
struct WgWalk {
    int v, grp, kw, base, step, n_groups;
    __device__ __forceinline__ void skip() {
        while (v < kw && grp >= n_groups) {
            v += WG_GROUPS;
            grp = v + base;
        }
    }
    __device__ __forceinline__ void next() {
        grp += step;
        skip();
    }
};

// A warpgroup's finished slices' sums (at most two: kw ≤ 8 over four warpgroups), kept in
// registers until every warpgroup is done (their shared memory is the stages').
struct WgParked {
    float sums[2][2][4];
    int n;
    __device__ __forceinline__ void park(float (&acc)[2][4]) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
            if (i == n) {
#pragma unroll
                for (int j = 0; j < 2; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sums[i][j][e] = acc[j][e];
            }
        ++n;
#pragma unroll
        for (int j = 0; j < 2; ++j) zero4(acc[j]);
    }
};
#endif

// Group grp's B of an m-row prepared input (m ≤ 16) in its shared-memory layout at out (shared or
// global memory), written by the block's 128 threads: chunk q of row j from the prepared layout.
// A k16 chunk's logical k 2t, 2t + 1 (k octet 0) and 2t + 8, 2t + 9 (k octet 1) are the h0 and
// h1 (hi) or l0 and l1 (lo) words of prepared chunk 8s + 2t + hf (the mins: the sums' chunk), as
// the rows kernel's lane t feeds them to its mma; columns past m repeat row 0 and are never
// stored. Q6: the Q6_K form's 16 chunks, chunk sb from prepared chunk 4sb + t (q6k_group's).
template <bool Q6 = false>
__device__ __forceinline__ void wg_image_group(u8* out, const uint4* xs, int k, int m, int grp) {
#if WG_VERIFY
    for (int p = threadIdx.x; p < (Q6 ? WG6_CHUNKS : WG_CHUNKS) * 16; p += 128) {
        int q = p >> 4, j = p & 15, tok = j < m ? j : 0;
        uint4 v[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            i64 idx = Q6       ? (i64)tok * (k / 4) + grp * 64 + 4 * q + t
                      : q < 16 ? (i64)tok * (k / 4) + grp * 64 + 8 * (q >> 1) + 2 * t + (q & 1)
                               : (i64)m * (k / 4) + (i64)tok * (k / 32) + grp * 8 + 2 * t + (q - 16);
            v[t] = xs[idx];
        }
        u8* base = out + q * WG_CHUNK_BYTES + (j & 7) * 16;
        int ng = j >> 3;  // hi: n groups 0 and 1; lo: 2 and 3
        *(uint4*)(base + ng * 256) = make_uint4(v[0].x, v[1].x, v[2].x, v[3].x);
        *(uint4*)(base + ng * 256 + 128) = make_uint4(v[0].y, v[1].y, v[2].y, v[3].y);
        *(uint4*)(base + (ng + 2) * 256) = make_uint4(v[0].z, v[1].z, v[2].z, v[3].z);
        *(uint4*)(base + (ng + 2) * 256 + 128) = make_uint4(v[0].w, v[1].w, v[2].w, v[3].w);
    }
#else
    __trap();
#endif
}

// Every group's B of an m-row prepared input (m ≤ 16): block grp (128 threads) writes group grp's
// 18 KiB at img + grp·WG_B_BYTES (wg_image_group).
extern "C" __global__ void __launch_bounds__(128) q4k_wg_image(const uint4* xs, u8* img, int k, int m) {
    pdl_entry();
    wg_image_group(img + (i64)blockIdx.x * WG_B_BYTES, xs, k, m, blockIdx.x);
}

// The Q6_K form's image: block grp writes group grp's 16 KiB at img + grp·WG6_B_BYTES.
extern "C" __global__ void __launch_bounds__(128) q6k_wg_image(const uint4* xs, u8* img, int k, int m) {
    pdl_entry();
    wg_image_group<true>(img + (i64)blockIdx.x * WG6_B_BYTES, xs, k, m, blockIdx.x);
}

// matmul_q4_k_mma_wg's body (Q6: matmul_q6_kr_mma_wg's): y (plane z = blockIdx.z of `splits`,
// m·n each) = W·x for m ≤ 16 prepared rows whose B image q4k_wg_image (q6k_wg_image) wrote; kw =
// mma_k_warps(k) slices. Grid (⌈n / 64⌉, 1, splits), WG_GROUPS warpgroups of 128 threads,
// WG_GROUPS · WG_STAGES · WG_STAGE_BYTES (WG6_B_BYTES) of dynamic shared memory. As a late lead
// (pdl PDL_LEAD_LATE) it waits for the kernel before it after its setup and, for Q4_K, once its
// first weights are asked for (the Q6_K form loads its weights in the loop, after the wait).
template <bool Q6>
__device__ __forceinline__ void wg_body(const u8* w, const u8* img, float* y, int k, int n, int m, int kw,
                                        int splits, int pdl) {
#if WG_VERIFY
    extern __shared__ __align__(128) u8 sm[];
    // The warpgroup index as lane 0 gives it: warp-uniform to the compiler, so the stages'
    // addresses and the wgmma descriptors stay in uniform registers (no R2UR before each wgmma).
    int wg = WG_UNIFORM ? __shfl_sync(0xffffffffu, (int)(threadIdx.x >> 7), 0) : (int)(threadIdx.x >> 7),
        tid = threadIdx.x & 127, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    constexpr int STAGE_BYTES = Q6 ? WG6_B_BYTES : WG_STAGE_BYTES;
    u8* stages = sm + wg * WG_STAGES * STAGE_BYTES;
    float* red = (float*)sm;  // [slice][8][tid], over the stages once every warpgroup is done
    int row_base = blockIdx.x * 64, row0 = row_base + warp * 16, z = blockIdx.z;
    int n_groups = k / 256;
    y += (i64)z * m * n;
    WgWalk walk{wg, wg + kw * z, kw, kw * z, kw * splits, n_groups};
    walk.skip();
    WgStageMap M = wg_stage_map(row_base, n, n_groups, tid);
    // Stage 0 filled ahead (its own cp.async group, empty past the end): a Q4_K stage's weights
    // asked for before a late lead's wait (pdl_late: weights are never written in a run), its B,
    // which the image kernel before writes, after it.
    static_assert(WG_STAGES == 2, "one stage filled ahead");
    WgWalk fill = walk;
    if (!Q6 && fill.v < kw) wg_stage_w(stages, w, M, fill.grp, tid);
    pdl_late(pdl);
    if (fill.v < kw) {
        wg_stage_b<Q6 ? WG6_B_BYTES : WG_B_BYTES>(stages, img, fill.grp, tid);
        fill.next();
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    float acc[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) zero4(acc[j]);
    WgParked parked;
    parked.n = 0;
    int slot = 0;
    while (walk.v < kw) {
        // Q6_K: the warp's weights of this group from global memory, in flight over the waits.
        Q6Regs R;
        if (Q6) q6k_load_group(R, w, row0, n, n_groups, walk.grp, t);
        // Every thread of the warpgroup is done with the stage about to be refilled.
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
        int refill = (slot + WG_STAGES - 1) % WG_STAGES;
        if (fill.v < kw) {
            if (Q6)
                wg_stage_b<WG6_B_BYTES>(stages + refill * STAGE_BYTES, img, fill.grp, tid);
            else
                wg_stage(stages + refill * STAGE_BYTES, img, w, M, fill.grp, tid);
            fill.next();
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        asm volatile("cp.async.wait_group %0;\n" ::"n"(WG_STAGES - 1) : "memory");
        // The copies (generic proxy) become visible to the wgmma reads (async proxy).
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
        const u8* st = stages + slot * STAGE_BYTES;
        if (Q6) {
            wg6_group(st, R, acc);
        } else {
            Q4KTile T;
            q4k_load_staged(T, st + WG_B_BYTES, warp * 16 + g, warp * 16 + g + 8, t);
            wg_group(st, T, acc);
        }
        WgWalk after = walk;
        after.next();
        if (after.v != walk.v) parked.park(acc);  // the slice is done: keep its sums
        walk = after;
        slot = (slot + 1) % WG_STAGES;
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    // Each slice's sums (zeros for a slice with no group in this plane) in slice order.
    int i = 0;
    for (int s = wg; s < kw; s += WG_GROUPS) {
        bool has = s + kw * z < n_groups;
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = 0.0f;
#pragma unroll
                for (int p = 0; p < 2; ++p)
                    if (p == i) v = parked.sums[p][j][e];
                red[(s * 8 + 4 * j + e) * 128 + tid] = has ? v : 0.0f;
            }
        i += has;
    }
    __syncthreads();
    if (wg == 0) {
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float s_ = 0.0f;
                for (int u = 0; u < kw; ++u) s_ += red[(u * 8 + 4 * j + e) * 128 + tid];
                int row = row0 + g + (e >= 2 ? 8 : 0), tok = 8 * j + 2 * t + (e & 1);
                if (row < n && tok < m) y[(i64)tok * n + row] = s_;
            }
    }
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(128 * WG_GROUPS, 1)
    matmul_q4_k_mma_wg(const u8* w, const u8* img, float* y, int k, int n, int m, int kw, int splits, int pdl) {
    pdl_enter(pdl);
    wg_body<false>(w, img, y, k, n, m, kw, splits, pdl);
    pdl_leave(pdl);
}

// The Q6_K form: weights in q6_k_repack's layout, B from q6k_wg_image, WG_GROUPS · WG_STAGES ·
// WG6_B_BYTES of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(128 * WG_GROUPS, 1)
    matmul_q6_kr_mma_wg(const u8* w, const u8* img, float* y, int k, int n, int m, int kw, int splits, int pdl) {
    pdl_enter(pdl);
    wg_body<true>(w, img, y, k, n, m, kw, splits, pdl);
    pdl_leave(pdl);
}
