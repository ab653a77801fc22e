// Element-wise ops, copies, norms, RoPE, softmax, row writes and selections.

// out[i] = a[i] op b[bcast(i)], out dense; b may be an f16/bf16 weight.
extern "C" __global__ void binary_f32(const float* a, Layout4 la, const void* b, int b_dt, Layout4 lb,
                                      float* out, i64 n, int op) {
    pdl_entry();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = a[layout_index(la, i)];
    float y = load_float(b, b_dt, layout_index(lb, i));
    out[i] = op == 0 ? x + y : x * y;
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// op: 0 scale, 1 gelu, 2 silu, 3 softcap (param = scale or cap).
extern "C" __global__ void unary_f32(const float* x, Layout4 lx, float* out, i64 n, int op, float param) {
    pdl_entry();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[layout_index(lx, i)];
    float r;
    switch (op) {
        case 0: r = v * param; break;
        case 1: r = gelu_tanh(v); break;
        case 2: r = silu(v); break;
        default: r = param * tanhf(v / param); break;
    }
    out[i] = r;
}

__device__ __forceinline__ float glu1(float g, float u, int op) { return (op == 0 ? gelu_tanh(g) : silu(g)) * u; }

// op: 0 geglu, 1 swiglu. With `dense4` (both inputs dense from 16-byte-aligned offsets, n a
// multiple of 4) each thread takes 4 consecutive elements in 16-byte loads and stores, with no
// index arithmetic: a prefill chunk's 512 × 21504 GLU is bandwidth-bound only that way. Each
// element's arithmetic is the same either way.
extern "C" __global__ void glu_f32(const float* g, Layout4 lg, const float* u, Layout4 lu, float* out, i64 n, int op,
                                   int dense4) {
    pdl_entry();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (dense4) {
        if (4 * i >= n) return;
        float4 a = *(const float4*)(g + lg.off + 4 * i), b = *(const float4*)(u + lu.off + 4 * i);
        *(float4*)(out + 4 * i) = make_float4(glu1(a.x, b.x, op), glu1(a.y, b.y, op), glu1(a.z, b.z, op),
                                              glu1(a.w, b.w, op));
        return;
    }
    if (i >= n) return;
    out[i] = glu1(g[layout_index(lg, i)], u[layout_index(lu, i)], op);
}

extern "C" __global__ void copy_f32(const float* x, Layout4 lx, float* out, i64 n) {
    pdl_entry();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = x[layout_index(lx, i)];
}

// Output dims d0..d3 (dense); elements with index[dim] < split come from a, the rest from b.
extern "C" __global__ void concat_f32(const float* a, Layout4 la, const float* b, Layout4 lb, float* out,
                                      i64 d0, i64 d1, i64 d2, i64 d3, int dim, i64 split) {
    pdl_entry();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 n = d0 * d1 * d2 * d3;
    if (i >= n) return;
    i64 idx[4];
    i64 r = i;
    idx[0] = r % d0; r /= d0;
    idx[1] = r % d1; r /= d1;
    idx[2] = r % d2; idx[3] = r / d2;
    if (idx[dim] < split) {
        out[i] = a[la.off + idx[0] * la.s0 + idx[1] * la.s1 + idx[2] * la.s2 + idx[3] * la.s3];
    } else {
        idx[dim] -= split;
        out[i] = b[lb.off + idx[0] * lb.s0 + idx[1] * lb.s1 + idx[2] * lb.s2 + idx[3] * lb.s3];
    }
}

// RMSNorm, one block per row (rows dense in dim 0). With xs, the block also writes its normed row
// in the prepared layout of the `_mma_` products that read it (`mmv_prepare_x`'s layout, one
// launch fewer; n a multiple of 256, gridDim.x rows). Rows of up to RN_CHUNKS · blockDim.x
// chunks of 8 (n a multiple of 8, 16-byte-aligned rows) stay in registers: the row, its weights,
// the residual and the next norm's weights are loaded in one round, and the normed row and its
// prepared form are written from registers. A decode step's 5376-wide row is one block, so the
// kernel is a chain of memory latencies; this path has two (loads, stores) where the general one
// below has four (loads, weight loads and stores, re-reads for xs, xs stores). One chunk per
// thread (rows up to 8,192 at 1,024 threads; Gemma 4's widest is 5,376) keeps the prefetched
// operands within the 64 registers of a 1,024-thread block.
#define RN_CHUNKS 1

// Norm weights i..i+3 as f32: one 16-byte load where they are aligned f32 (the GGUF's norm
// weights are), else element by element.
__device__ __forceinline__ float4 rn_weight4(const void* w, int w_dt, i64 i) {
    const float* wf = (const float*)w + i;
    if (w_dt == DT_F32 && ((size_t)wf & 15) == 0) return *(const float4*)wf;
    return make_float4(load_float(w, w_dt, i), load_float(w, w_dt, i + 1), load_float(w, w_dt, i + 2),
                       load_float(w, w_dt, i + 3));
}

__device__ __forceinline__ float4 rn_scale4(float4 v, float inv, float4 wv) {
    return make_float4(v.x * inv * wv.x, v.y * inv * wv.y, v.z * inv * wv.z, v.w * inv * wv.w);
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// Element i of a row whose split product's planes are summed on the fly (plane order).
__device__ __forceinline__ float rn_x(const float* xr, i64 i, int planes, i64 plane_stride) {
    float v = xr[i];
    for (int q = 1; q < planes; ++q) v += xr[i + q * plane_stride];
    return v;
}

__device__ __forceinline__ float rn_sq4(float4 v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }

// Rounded separately (no FMA with the norm's product), as the separate add and mul kernels do.
__device__ __forceinline__ float rn_tail(float v, const float* res, i64 i, float sc, bool has_sc) {
    if (res) v = __fadd_rn(res[i], v);
    return has_sc ? __fmul_rn(v, sc) : v;
}

// rn_tail of four elements whose residuals were loaded beforehand (rv, when has_res).
__device__ __forceinline__ float4 rn_tail4(float4 v, float4 rv, bool has_res, float sc, bool has_sc) {
    if (has_res) v = make_float4(__fadd_rn(rv.x, v.x), __fadd_rn(rv.y, v.y), __fadd_rn(rv.z, v.z), __fadd_rn(rv.w, v.w));
    if (has_sc) v = make_float4(__fmul_rn(v.x, sc), __fmul_rn(v.y, sc), __fmul_rn(v.z, sc), __fmul_rn(v.w, sc));
    return v;
}

// RoPE of element i of a normed row held in `row` (rope_f32's arithmetic exactly; p = position).
__device__ __forceinline__ float rope_at(const float* row, int i, int n_rot, float theta, const float* ff, int p) {
    int half = n_rot / 2;
    if (i >= n_rot) return row[i];
    int j = i < half ? i : i - half;
    float f = 1.0f / powf(theta, (float)(2 * j) / (float)n_rot);
    if (ff) f /= ff[j];
    float a = (float)p * f;
    float s, c;
    sincosf(a, &s, &c);
    float x0 = row[j], x1 = row[j + half];
    return i < half ? x0 * c - x1 * s : x0 * s + x1 * c;
}

// Rows a fused norm + RoPE holds in shared memory (a head: 256 or 512 in Gemma 4).
#define RN_ROPE_MAX 1024

// A staged fused norm's token position and cache slot, loaded while the row loads (after the
// row's sum, they were a memory round trip of their own) and kept in shared memory for
// rn_epilogue (in registers across the sum, they spilled at the 64-register cap). The block's
// last thread loads them: its warp holds no chunk of a staged row (at most 128 chunks, 256
// threads), so the wait for them delays none of the row's loads.
struct RnStage {
    int p, slot;
};

__device__ __forceinline__ void rn_stage(RnStage& st, i64 r, bool rope, int n_heads, const int* pos, const void* dst,
                                         const int* slots) {
    if ((!rope && !dst) || threadIdx.x != blockDim.x - 1) return;
    i64 tok = r / n_heads;
    st.p = rope ? pos[tok] : 0;
    st.slot = dst ? slots[tok] : 0;
}

// The end of a staged fused norm: row r (normed, in `row`) rotated if `rope`, then written to
// `orow`, or with dst to its cache row instead (write_rows's semantics: token r / n_heads goes to
// slot slots[token], head r % n_heads within it; out-of-range slots are reported, not written).
__device__ __forceinline__ void rn_epilogue(const float* row, float* orow, i64 r, int n, bool rope, int n_heads,
                                            int n_rot, float theta, const RnStage& st, const float* ff, void* dst,
                                            int dst_dt, i64 dst_off, int dst_rows, int* err) {
    __syncthreads();  // the staged row and `st` are complete
    int s = st.slot;
    if (dst && (s < 0 || s >= dst_rows)) {
        if (threadIdx.x == 0) report(err, ERR_SLOT);
        return;
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = rope ? rope_at(row, i, n_rot, theta, ff, st.p) : row[i];
        if (!dst) {
            orow[i] = v;
            continue;
        }
        i64 at = dst_off + (i64)s * n * n_heads + (r % n_heads) * n + i;
        if (dst_dt == DT_F32)
            ((float*)dst)[at] = v;
        else
            ((u16*)dst)[at] = f2h(v);
    }
}

// The prepared layout of a row held in registers (chunk c = tid + j·size in v[j],
// nc chunks, a multiple of 32) and, with `limbs`, its limbs (a warp's chunks are one group).
__device__ void rn_prepare_regs(uint4* xs, int n, int m, int r, int nc, const float4 (&v)[RN_CHUNKS][2], bool limbs,
                                int tid, int size) {
#pragma unroll
    for (int j = 0; j < RN_CHUNKS; ++j) {
        int c = tid + j * size;
        if (c >= nc) continue;
        prepare_chunk8(xs, n, m, r, c, v[j][0], v[j][1]);
        if (limbs) prepare_limbs8(xs, n, m, r, c, v[j][0], v[j][1]);
    }
}

// A thread's index among its row's threads and their number: the block's, or (CLUSTER) the
// cluster's blocks' in rank order.
template <bool CLUSTER>
__device__ __forceinline__ int rn_tid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (CLUSTER) return cluster_rank() * (int)blockDim.x + (int)threadIdx.x;
#endif
    return threadIdx.x;
}

template <bool CLUSTER>
__device__ __forceinline__ int rn_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (CLUSTER) return cluster_blocks() * (int)blockDim.x;
#endif
    return blockDim.x;
}

// The sum of v over a row's threads, in block_sum's order over a block of `size` threads: over
// the threads of the block, or (CLUSTER) of the cluster's blocks, whose warps' partial sums meet
// in shared memory `part` (32 floats; a fresh one per call) through distributed shared memory.
// Every block of the cluster gets the same bits, the same as one block of size threads.
template <bool CLUSTER>
__device__ __forceinline__ float rn_sum(float v, float* part) {
    if (!CLUSTER) return block_sum(v);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, per_block = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncwarp();  // the cluster barrier is .aligned: the whole warp executes it together
    cluster_sync();
    int n = cluster_blocks() * per_block;
    v = lane < n ? ld_cluster_f32(part + lane % per_block, lane / per_block) : 0.0f;
    return warp_sum(v);
#else
    return 0.0f;  // not launched before sm_90 (no clusters)
#endif
}

// Chunk c's operands: its norm weights, residual and next norm's weights (ones where absent).
__device__ __forceinline__ void rn_operands(float4 (&wv)[2], float4 (&rv)[2], float4 (&w2v)[2], const void* w, int w_dt,
                                            const float* rrow, const void* w2, int w2_dt, int c) {
    const float4 one = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    wv[0] = w_dt >= 0 ? rn_weight4(w, w_dt, 8 * c) : one;
    wv[1] = w_dt >= 0 ? rn_weight4(w, w_dt, 8 * c + 4) : one;
    rv[0] = rrow ? ((const float4*)rrow)[2 * c] : one;
    rv[1] = rrow ? ((const float4*)rrow)[2 * c + 1] : one;
    w2v[0] = w2 && w2_dt >= 0 ? rn_weight4(w2, w2_dt, 8 * c) : one;
    w2v[1] = w2 && w2_dt >= 0 ? rn_weight4(w2, w2_dt, 8 * c + 4) : one;
}

// rms_norm_f32's register path for row r of m, the thread being rn_tid of rn_size (chunk c = tid +
// j·size): the row's loads, norm, tail and next norm, writing out, out2 and the prepared layout
// xs. With `stage` (staged rows: a block, no tail) the normed row goes to `rowbuf` instead and
// true is returned: the caller runs rn_epilogue. `parts`: two fresh 32-float sums for CLUSTER.
template <bool CLUSTER>
__device__ __forceinline__ bool rn_row_regs(const float* xr, float* orow, const void* w, int w_dt, int n, float eps,
                                            uint4* xs, const float* rrow, float sc, bool has_sc, int planes,
                                            i64 plane_stride, float* out2, const void* w2, int w2_dt, float eps2,
                                            int limbs, i64 r, int m, bool stage, float* rowbuf,
                                            float (*parts)[32]) {
    int nc = n / 8;
    int tid = rn_tid<CLUSTER>(), size = rn_size<CLUSTER>();
    bool staged = !CLUSTER && stage;
    // The row, its weights, its residual and the next norm's weights, all loaded up front.
    float4 v[RN_CHUNKS][2], wv[RN_CHUNKS][2], rv[RN_CHUNKS][2], w2v[RN_CHUNKS][2];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < RN_CHUNKS; ++j) {
        int c = tid + j * size;
        if (c < nc) {
            // The cluster kernel issues the operands' loads first: after the planes' additions,
            // whose loads a warp waits on, they cost a second memory round trip. (The one-block
            // kernel keeps them after: first, they spill at its 64-register cap on sm_86+.)
            if (CLUSTER) rn_operands(wv[j], rv[j], w2v[j], w, w_dt, rrow, out2 ? w2 : nullptr, w2_dt, c);
            v[j][0] = ((const float4*)xr)[2 * c];
            v[j][1] = ((const float4*)xr)[2 * c + 1];
            // A split product's planes, added in plane order as mmv_sum_splits does.
            for (int q = 1; q < planes; ++q) {
                const float4* pq = (const float4*)(xr + q * plane_stride);
                v[j][0] = add4(v[j][0], pq[2 * c]);
                v[j][1] = add4(v[j][1], pq[2 * c + 1]);
            }
            if (!CLUSTER) rn_operands(wv[j], rv[j], w2v[j], w, w_dt, rrow, out2 ? w2 : nullptr, w2_dt, c);
        }
    }
#pragma unroll
    for (int j = 0; j < RN_CHUNKS; ++j)
        if (tid + j * size < nc) s += rn_sq4(v[j][0]) + rn_sq4(v[j][1]);
    s = rn_sum<CLUSTER>(s, CLUSTER ? parts[0] : nullptr);
    float inv = rsqrtf(s / (float)n + eps);
#pragma unroll
    for (int j = 0; j < RN_CHUNKS; ++j) {
        int c = tid + j * size;
        if (c < nc) {
            float4 o0 = rn_scale4(v[j][0], inv, wv[j][0]), o1 = rn_scale4(v[j][1], inv, wv[j][1]);
            o0 = rn_tail4(o0, rv[j][0], rrow != nullptr, sc, has_sc);
            o1 = rn_tail4(o1, rv[j][1], rrow != nullptr, sc, has_sc);
            if (staged) {
                *(float4*)&rowbuf[8 * c] = o0;
                *(float4*)&rowbuf[8 * c + 4] = o1;
                continue;
            }
            ((float4*)orow)[2 * c] = o0;
            ((float4*)orow)[2 * c + 1] = o1;
            v[j][0] = o0;
            v[j][1] = o1;
        }
    }
    if (staged) return true;
    if (!out2) {
        if (xs) rn_prepare_regs(xs, n, m, (int)r, nc, v, limbs, tid, size);
        return false;
    }
    // The next norm of the row just written (its sum over the same chunks in the same order
    // as its own launch would take them), with the prepared layout at xs.
    float s2 = 0.0f;
#pragma unroll
    for (int j = 0; j < RN_CHUNKS; ++j)
        if (tid + j * size < nc) s2 += rn_sq4(v[j][0]) + rn_sq4(v[j][1]);
    s2 = rn_sum<CLUSTER>(s2, CLUSTER ? parts[1] : nullptr);
    float inv2 = rsqrtf(s2 / (float)n + eps2);
    float* orow2 = out2 + r * n;
#pragma unroll
    for (int j = 0; j < RN_CHUNKS; ++j) {
        int c = tid + j * size;
        if (c < nc) {
            float4 z0 = rn_scale4(v[j][0], inv2, w2v[j][0]);
            float4 z1 = rn_scale4(v[j][1], inv2, w2v[j][1]);
            ((float4*)orow2)[2 * c] = z0;
            ((float4*)orow2)[2 * c + 1] = z1;
            v[j][0] = z0;
            v[j][1] = z1;
        }
    }
    if (xs) rn_prepare_regs(xs, n, m, (int)r, nc, v, limbs, tid, size);
    return false;
}

// RMSNorm of each row into out, times w if w_dt >= 0; with xs also in the prepared layout. The
// fused launches of `fuse_plan`, each with the separate kernels'
// arithmetic in their order (the same bits):
// - res (dense rows of n): out = res + norm(x) · w, times scale if scale_dt >= 0 (one element):
//   a Gemma 4 layer's post-norm, residual add and layer scale;
// - planes > 1: x is a split product's partial planes (plane_stride apart), summed here;
// - out2: the next RMSNorm of the written row (w2, eps2; the FFN norm, the next layer's attention
//   norm or the output norm) follows, and xs then holds its prepared layout;
// - pos (rows of n ≤ RN_ROPE_MAX, n_heads rows per token): the normed row is rotated (rope_f32
//   with n_rot, theta, ff) before it is written: a head's q/k norm and its RoPE;
// - dst: the rows go to a K or V cache (write_rows with dst_off, dst_rows, slots, err) instead
//   of out;
// - limbs: xs also gets the limbs of `prepare_limbs8` (a Q4_K limb product reads them).
// Row r of m of one rms_norm_f32 launch (its block).
__device__ __forceinline__ void rms_norm_row(const float* x, Layout4 lx, const void* w, int w_dt, float* out, int n,
                                             float eps, uint4* xs, const float* res, const void* scale, int scale_dt,
                                             int planes, i64 plane_stride, float* out2, const void* w2, int w2_dt,
                                             float eps2, const int* pos, const float* ff, int n_heads, int n_rot,
                                             float theta, void* dst, int dst_dt, i64 dst_off, int dst_rows,
                                             const int* slots, int* err, int limbs, i64 r, int m) {
    __shared__ __align__(16) float rowbuf[RN_ROPE_MAX];
    bool rope = pos != nullptr;
    // Rotated or cache-bound rows (n <= RN_ROPE_MAX) are staged in shared memory first.
    bool staged = rope || dst != nullptr;
    __shared__ RnStage st;
    rn_stage(st, r, rope, n_heads, pos, dst, slots);
    const float* xr = x + row_index(lx, r);
    float* orow = out + r * n;
    int nc = n / 8;
    bool has_sc = scale_dt >= 0;
    float sc = has_sc ? load_float(scale, scale_dt, 0) : 1.0f;
    // res is a dense node buffer from offset 0 (fuse_plan), as aligned as any allocation; a
    // misaligned one would take the general path, whose sums run in another order.
    bool aligned = ((size_t)xr & 15) == 0 && ((size_t)orow & 15) == 0 && (planes == 1 || plane_stride % 4 == 0) &&
                   ((size_t)res & 15) == 0;
    if (n % 8 == 0 && nc <= RN_CHUNKS * (int)blockDim.x && aligned) {
        const float* rrow = res ? res + r * n : nullptr;
        bool epilogue = rn_row_regs<false>(xr, orow, w, w_dt, n, eps, xs, rrow, sc, has_sc, planes, plane_stride, out2,
                                           w2, w2_dt, eps2, limbs, r, m, staged, rowbuf, nullptr);
        if (epilogue)
            rn_epilogue(rowbuf, orow, r, n, rope, n_heads, n_rot, theta, st, ff, dst, dst_dt, dst_off, dst_rows,
                        err);
        return;
    }
    float s = 0.0f;
    // Unrolled so a thread's loads are in flight together (a 5376-wide row is one block).
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float xi = rn_x(xr, i, planes, plane_stride);
        s += xi * xi;
    }
    s = block_sum(s);
    float inv = rsqrtf(s / (float)n + eps);
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = rn_x(xr, i, planes, plane_stride) * inv;
        if (w_dt >= 0) v *= load_float(w, w_dt, i);
        v = rn_tail(v, res, r * n + i, sc, has_sc);
        if (staged)
            rowbuf[i] = v;
        else
            out[r * n + i] = v;
    }
    if (staged) {
        rn_epilogue(rowbuf, orow, r, n, rope, n_heads, n_rot, theta, st, ff, dst, dst_dt, dst_off, dst_rows, err);
        return;
    }
    __syncthreads();  // the row's outputs, written by every thread, are visible to the block
    if (out2) {
        // The next norm of the row just written, summed in the order its own launch would use:
        // by chunks of 8 where that launch takes the register path, else element by element.
        float s2 = 0.0f;
        float* orow2 = out2 + r * n;
        bool chunked = n % 8 == 0 && nc <= RN_CHUNKS * (int)blockDim.x && ((size_t)orow & 15) == 0 &&
                       ((size_t)orow2 & 15) == 0;
        if (chunked) {
            for (int j = 0; j < RN_CHUNKS; ++j) {
                int c = threadIdx.x + j * blockDim.x;
                if (c < nc) s2 += rn_sq4(((const float4*)orow)[2 * c]) + rn_sq4(((const float4*)orow)[2 * c + 1]);
            }
        } else {
#pragma unroll 4
            for (int i = threadIdx.x; i < n; i += blockDim.x) s2 += orow[i] * orow[i];
        }
        s2 = block_sum(s2);
        float inv2 = rsqrtf(s2 / (float)n + eps2);
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float z = orow[i] * inv2;
            if (w2_dt >= 0) z *= load_float(w2, w2_dt, i);
            orow2[i] = z;
        }
        __syncthreads();
        orow = orow2;  // the prepared layout below is the next norm's
    }
    if (!xs) return;
    for (int c = threadIdx.x; c < n / 8; c += blockDim.x) {
        const float* o = orow + 8 * c;
        float4 o0 = *(const float4*)o, o1 = *(const float4*)(o + 4);
        prepare_chunk8(xs, n, m, (int)r, c, o0, o1);
        if (limbs) prepare_limbs8(xs, n, m, (int)r, c, o0, o1);
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    rms_norm_f32(const float* x, Layout4 lx, const void* w, int w_dt, float* out, int n, float eps, uint4* xs,
                 const float* res, const void* scale, int scale_dt, int planes, i64 plane_stride, float* out2,
                 const void* w2, int w2_dt, float eps2, const int* pos,
                 const float* ff, int n_heads, int n_rot, float theta, void* dst, int dst_dt, i64 dst_off,
                 int dst_rows, const int* slots, int* err, int limbs) {
    pdl_entry();
    rms_norm_row(x, lx, w, w_dt, out, n, eps, xs, res, scale, scale_dt, planes, plane_stride, out2, w2, w2_dt, eps2, pos,
                 ff, n_heads, n_rot, theta, dst, dst_dt, dst_off, dst_rows, slots, err, limbs, blockIdx.x, gridDim.x);
}

// Up to RN_MAX_JOBS rms_norm_f32 launches of independent nodes as one (a layer's q, k and v head
// norms with their RoPE and cache writes, `fuse_plan`'s groups), same block size: job j's
// arguments are rms_norm_f32's, each in one 8-byte slot in their order (Layout4: nine), and it
// takes rows[j] blocks after the jobs before it. Every row gets its own launch's bits.
#define RN_MAX_JOBS 3
#define RN_JOB_SLOTS 37
struct RnJobs {
    u64 slot[RN_MAX_JOBS][RN_JOB_SLOTS];
    u64 rows[RN_MAX_JOBS];
};

extern "C" __global__ void __launch_bounds__(1024) rms_norm_jobs_f32(RnJobs J) {
    pdl_entry();
    int b = blockIdx.x, j = 0;
    while (j + 1 < RN_MAX_JOBS && b >= (int)J.rows[j]) {
        b -= (int)J.rows[j];
        ++j;
    }
    // Slot k of job j, from the parameter space at constant offsets (no indexed copy).
    auto sl = [&](int k) -> u64 { return j == 0 ? J.slot[0][k] : j == 1 ? J.slot[1][k] : J.slot[2][k]; };
    auto ptr = [&](int k) { return (void*)sl(k); };
    auto i32 = [&](int k) { return (int)(u32)sl(k); };
    auto f32 = [&](int k) { return __int_as_float(i32(k)); };
    Layout4 lx;
    lx.d0 = (i64)sl(1), lx.d1 = (i64)sl(2), lx.d2 = (i64)sl(3), lx.d3 = (i64)sl(4);
    lx.s0 = (i64)sl(5), lx.s1 = (i64)sl(6), lx.s2 = (i64)sl(7), lx.s3 = (i64)sl(8);
    lx.off = (i64)sl(9);
    rms_norm_row((const float*)ptr(0), lx, ptr(10), i32(11), (float*)ptr(12), i32(13), f32(14), (uint4*)ptr(15),
                 (const float*)ptr(16), ptr(17), i32(18), i32(19), (i64)sl(20), (float*)ptr(21), ptr(22), i32(23),
                 f32(24), (const int*)ptr(25), (const float*)ptr(26), i32(27), i32(28), f32(29), ptr(30), i32(31),
                 (i64)sl(32), i32(33), (const int*)ptr(34), (int*)ptr(35), i32(36), b, (int)J.rows[j]);
}

// Threads per block of rms_norm_cluster_f32 (RN_CLUSTER_THREADS in source.rs).
#define RN_CLUSTER_THREADS 128

// rms_norm_f32's register path for rows whose one block would be a long chain on one SM (a
// decode step's 5,376-wide hidden row): each row is a cluster of gridDim.x / rows blocks (sm_90),
// thread t of cluster block b standing for thread b·blockDim.x + t of one block, so every output
// has rms_norm_f32's bits (the sums' partials meet through distributed shared memory). Same
// arguments as rms_norm_f32; no RoPE or cache write (those launches stay there). The host takes
// this kernel only where rms_norm_f32 would take its register path (n a multiple of 8, n / 8 up
// to the cluster's threads, 16-byte-aligned rows, residual and planes); elsewhere it reports
// ERR_NORM_SHAPE and writes nothing.
extern "C" __global__ void __launch_bounds__(RN_CLUSTER_THREADS)
    rms_norm_cluster_f32(const float* x, Layout4 lx, const void* w, int w_dt, float* out, int n, float eps, uint4* xs,
                         const float* res, const void* scale, int scale_dt, int planes, i64 plane_stride,
                         float* out2, const void* w2, int w2_dt, float eps2, const int* pos, const float* ff,
                         int n_heads, int n_rot, float theta, void* dst, int dst_dt, i64 dst_off, int dst_rows,
                         const int* slots, int* err, int limbs) {
    pdl_entry();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    __shared__ float parts[2][32];
    int blocks = cluster_blocks(), rank = cluster_rank();
    i64 r = blockIdx.x / blocks;
    const float* xr = x + row_index(lx, r);
    float* orow = out + r * n;
    bool aligned = ((size_t)xr & 15) == 0 && ((size_t)orow & 15) == 0 && (planes == 1 || plane_stride % 4 == 0) &&
                   ((size_t)res & 15) == 0;
    int size = blocks * (int)blockDim.x;
    // Uniform over the cluster: every block returns here or none does.
    if (n % 8 != 0 || n / 8 > size || size > 1024 || !aligned || pos != nullptr || dst != nullptr) {
        if (rank == 0 && threadIdx.x == 0) report(err, ERR_NORM_SHAPE);
        return;
    }
    bool has_sc = scale_dt >= 0;
    float sc = has_sc ? load_float(scale, scale_dt, 0) : 1.0f;
    const float* rrow = res ? res + r * n : nullptr;
    rn_row_regs<true>(xr, orow, w, w_dt, n, eps, xs, rrow, sc, has_sc, planes, plane_stride, out2, w2, w2_dt, eps2,
                      limbs, r, gridDim.x / blocks, false, nullptr, parts);
    // The other blocks may still read this block's partials: it leaves with them.
    cluster_sync();
#else
    if (threadIdx.x == 0) report(err, ERR_NORM_SHAPE);
#endif
}

// x [n_dims, n_heads, t] (rows dense); one thread per (row, dim).
extern "C" __global__ void rope_f32(const float* x, Layout4 lx, const int* pos, const float* ff, float* out,
                                    int n_dims, int n_heads, int n_rows, int n_rot, float theta) {
    pdl_entry();
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n_rows * n_dims) return;
    int r = (int)(idx / n_dims), i = (int)(idx % n_dims);
    const float* xr = x + row_index(lx, r);
    out[(i64)r * n_dims + i] = rope_at(xr, i, n_rot, theta, ff, pos[r / n_heads]);
}

// One row's softmax by a block (its bits depend on the block size: the host launches
// source::SOFTMAX_THREADS for softmax_f32 and moe_route_f32 alike).
__device__ __forceinline__ void softmax_row(const float* xr, float* o, int n) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += expf(xr[i] - m);
    s = block_sum(s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = expf(xr[i] - m) / s;
}

extern "C" __global__ void softmax_f32(const float* x, Layout4 lx, float* out, int n) {
    pdl_entry();
    i64 r = blockIdx.x;
    softmax_row(x + row_index(lx, r), out + r * n, n);
}

// dst rows of `row` elements (f32 or f16); src rows dense in dim 0.
extern "C" __global__ void write_rows(void* dst, int dst_dt, i64 dst_off, int dst_rows, const float* src, Layout4 ls,
                                      const int* slots, int row, int n, int* err) {
    pdl_entry();
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * row) return;
    int i = (int)(idx / row), e = (int)(idx % row);
    int s = slots[i];
    if (s < 0 || s >= dst_rows) {
        report(err, ERR_SLOT);
        return;
    }
    float v = src[row_index(ls, i) + e];
    i64 at = dst_off + (i64)s * row + e;
    if (dst_dt == DT_F32) ((float*)dst)[at] = v;
    else ((u16*)dst)[at] = f2h(v);
}

// Argmax along each row: the lowest index holding the largest non-NaN value (0 when there is
// none), whatever the reduction order. Rows of more than ARGMAX_CHUNK elements (a vocabulary of
// logits) are spread over blocks: argmax_chunks_f32 finds each chunk's best (value, index),
// argmax_pick_f32 the best of a row's chunks, the same result as argmax_f32's one block per row.
#define ARGMAX_CHUNK 4096
#define ARGMAX_THREADS 256

// The better of (v, i) and the candidate (ov, oi): larger value, then lower index.
__device__ __forceinline__ void argmax_take(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

// Tree reduction of the block's candidates (blockDim.x a power of two) in shared memory; thread
// 0 ends with the best at sv[0], si[0].
__device__ __forceinline__ void argmax_block(float* sv, int* si, float bv, int bi) {
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = sv[threadIdx.x];
            int i = si[threadIdx.x];
            argmax_take(v, i, sv[threadIdx.x + s], si[threadIdx.x + s]);
            sv[threadIdx.x] = v;
            si[threadIdx.x] = i;
        }
        __syncthreads();
    }
}

// One block (up to 1024 threads) per row.
extern "C" __global__ void argmax_f32(const float* x, Layout4 lx, int* out, int n) {
    pdl_entry();
    __shared__ float sv[1024];
    __shared__ int si[1024];
    i64 r = blockIdx.x;
    const float* xr = x + row_index(lx, r);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) argmax_take(bv, bi, xr[i], i);
    argmax_block(sv, si, bv, bi);
    if (threadIdx.x == 0) out[r] = si[0] == 0x7fffffff ? 0 : si[0];
}

// Grid (chunks, rows), ARGMAX_THREADS threads: chunk c of row r to pv/pi[r · chunks + c].
extern "C" __global__ void argmax_chunks_f32(const float* x, Layout4 lx, int n, int chunks, float* pv, int* pi) {
    pdl_entry();
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ int si[ARGMAX_THREADS];
    i64 r = blockIdx.y;
    const float* xr = x + row_index(lx, r);
    int base = blockIdx.x * ARGMAX_CHUNK + threadIdx.x;
    constexpr int PER = ARGMAX_CHUNK / ARGMAX_THREADS;
    float v[PER];  // every load issued before the first comparison
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        int i = base + j * ARGMAX_THREADS;
        v[j] = i < n ? xr[i] : __int_as_float(0x7fc00000);  // NaN: never taken
    }
    float bv = -INFINITY;
    int bi = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < PER; ++j) argmax_take(bv, bi, v[j], base + j * ARGMAX_THREADS);
    argmax_block(sv, si, bv, bi);
    if (threadIdx.x == 0) {
        pv[r * chunks + blockIdx.x] = sv[0];
        pi[r * chunks + blockIdx.x] = si[0];
    }
}

// One block of ARGMAX_THREADS per row: the best of the row's chunk results.
extern "C" __global__ void argmax_pick_f32(const float* pv, const int* pi, int chunks, int* out) {
    pdl_entry();
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ int si[ARGMAX_THREADS];
    i64 r = blockIdx.x;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) argmax_take(bv, bi, pv[r * chunks + c], pi[r * chunks + c]);
    argmax_block(sv, si, bv, bi);
    if (threadIdx.x == 0) out[r] = si[0] == 0x7fffffff ? 0 : si[0];
}

// x's bits as an int ordered as Rust's f32::total_cmp orders floats (−NaN < −inf < … < −0 < +0 <
// … < +inf < +NaN): negative values have their 31 low bits flipped.
__device__ __forceinline__ int total_order_key(float v) {
    int b = __float_as_int(v);
    return b ^ ((b >> 31) & 0x7fffffff);
}

// Whether (ka, ia) comes before (kb, ib) in top_k's order: larger key first, then lower index.
__device__ __forceinline__ bool top_k_before(int ka, int ia, int kb, int ib) { return ka > kb || (ka == kb && ia < ib); }

// One row's top k by a warp (top_k_f32, moe_route_f32): lane 0 writes them to picks[0..k].
__device__ __forceinline__ void top_k_row(const float* xr, int* picks, int n, int k, int lane) {
    int pk = 0, pi = -1;  // the previous pick (none before pass 0)
    for (int j = 0; j < k; ++j) {
        int bk = 0, bi = 0x7fffffff;  // none yet
        for (int i = lane; i < n; i += 32) {
            int key = total_order_key(xr[i]);
            bool after = j == 0 || top_k_before(pk, pi, key, i);
            if (after && (bi == 0x7fffffff || top_k_before(key, i, bk, bi))) bk = key, bi = i;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            int ok = __shfl_xor_sync(0xffffffffu, bk, o), oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi != 0x7fffffff && (bi == 0x7fffffff || top_k_before(ok, oi, bk, bi))) bk = ok, bi = oi;
        }
        if (lane == 0) picks[j] = bi;
        pk = bk;
        pi = bi;
    }
}

// The k largest of each row of n, in order (as the CPU's top_k: f32::total_cmp descending, ties
// by lower index; MoE routing). A warp per row (TOP_K_WARPS rows a block): pass j takes the
// first element in that order after pass j − 1's pick, each lane over its elements i ≡ lane
// (mod 32), then a butterfly over the lanes; the order is total over (value, index), so every
// lane ends with the same pick. (One thread per row, rescanning its picks from global memory for
// every element, took 197 µs a launch in the 26B-A4B's decode step under ncu.)
#define TOP_K_WARPS 4
extern "C" __global__ void __launch_bounds__(TOP_K_WARPS * 32)
    top_k_f32(const float* x, Layout4 lx, int* out, int n, int k, i64 n_rows) {
    pdl_entry();
    int lane = threadIdx.x & 31;
    i64 r = (i64)blockIdx.x * TOP_K_WARPS + (threadIdx.x >> 5);
    if (r >= n_rows) return;
    top_k_row(x + row_index(lx, r), out + r * k, n, k, lane);
}

// The routing weights of one token's chosen experts by a warp (moe_weights_f32, moe_route_f32):
// lane j takes slot j (and j + 32, … for more than 32 slots). The sum runs over the slots in
// order (every lane adds the same shuffled values, so every lane has it), then each lane divides
// and scales its own: the rounding of one thread per token that read, summed and rewrote its
// slots one after another, without its chain of dependent global reads and writes (8 µs a
// 26B-A4B layer under ncu). pr: the token's probabilities; ids, o: its k slots.
__device__ __forceinline__ void moe_weights_row(const float* pr, const int* ids, const void* scale, int scale_dt,
                                                float* o, int n_expert, int k, int renormalize, int* err,
                                                int lane) {
    bool bad = false;
    for (int j = lane; j < k; j += 32) {
        int e = ids[j];
        bad |= e < 0 || e >= n_expert;
    }
    if (__any_sync(0xffffffffu, bad)) {
        if (lane == 0) report(err, ERR_EXPERT_ID);
        return;
    }
    float sum = 0.0f;
    for (int j0 = 0; j0 < k; j0 += 32) {
        float p = j0 + lane < k ? pr[ids[j0 + lane]] : 0.0f;
        int used = k - j0 < 32 ? k - j0 : 32;
        for (int j = 0; j < used; ++j) sum += __shfl_sync(0xffffffffu, p, j);
    }
    for (int j = lane; j < k; j += 32) {
        int e = ids[j];
        float v = pr[e];
        if (renormalize && sum > 0.0f) v /= sum;
        if (scale_dt >= 0) v *= load_float(scale, scale_dt, e);
        o[j] = v;
    }
}

// A warp per token, MOE_WEIGHTS_WARPS a block (mirrored in source.rs).
#define MOE_WEIGHTS_WARPS 4
extern "C" __global__ void moe_weights_f32(const float* probs, Layout4 lp, const int* ids, const void* scale, int scale_dt,
                                           float* out, int n_expert, int k, int n_tok, int renormalize, int* err) {
    pdl_entry();
    int t = blockIdx.x * MOE_WEIGHTS_WARPS + (threadIdx.x >> 5);
    if (t >= n_tok) return;
    moe_weights_row(probs + row_index(lp, t), ids + t * k, scale, scale_dt, out + t * k, n_expert, k, renormalize,
                    err, threadIdx.x & 31);
}

// MOE_SPREAD_IDS 1 (SPECULA_MOE_SPREAD_IDS; a measurement mode, every MoE output wrong):
// moe_route_f32 replaces a token's k picks by k distinct pseudo-random experts of n, seeded by
// its row and its top probability's bits, so they differ by token and layer. A trained router
// spreads a verify batch's tokens over many experts; a random-weight model's picked a median of
// 15 distinct experts a layer for 16 tokens (128 picks) in the bench (bench/NOTES.md, thirty-fifth
// session), which flatters the expert-grouped products. Lane 0 runs it.
#ifndef MOE_SPREAD_IDS
#define MOE_SPREAD_IDS 0
#endif
__device__ void spread_ids(int* ids, int k, int n, unsigned seed) {
    if (k > n) return;
    for (int j = 0; j < k; ++j) {
        int e;
        bool taken;
        do {
            seed = seed * 1664525u + 1013904223u;
            e = (int)((seed >> 8) % (unsigned)n);
            taken = false;
            for (int i = 0; i < j; ++i) taken |= ids[i] == e;
        } while (taken);
        ids[j] = e;
    }
}

// A token's MoE routing in one launch, a block per token (the fuse plan's Fused::Route: Softmax,
// TopK and MoeWeights of the router's logits): softmax_f32's block arithmetic with its block
// size (the same bits), the probabilities written as softmax_f32 writes them, then warp 0 runs
// top_k_f32's and moe_weights_f32's row functions on them. Two launches fewer a MoE layer.
extern "C" __global__ void moe_route_f32(const float* x, Layout4 lx, float* probs, int n, int* ids, int k,
                                         const void* scale, int scale_dt, float* out, int renormalize, int* err) {
    pdl_entry();
    i64 t = blockIdx.x;
    float* pr = probs + t * n;
    softmax_row(x + row_index(lx, t), pr, n);
    __syncthreads();  // the block's probability writes are visible to warp 0
    if (threadIdx.x >= 32) return;
    int lane = threadIdx.x;
    top_k_row(pr, ids + t * k, n, k, lane);
    __syncwarp();  // lane 0's picks are visible to the warp
    if (MOE_SPREAD_IDS) {
        if (lane == 0) spread_ids(ids + t * k, k, n, __float_as_uint(pr[ids[t * k]]) ^ ((unsigned)t * 0x9E3779B9u));
        __syncwarp();
    }
    moe_weights_row(pr, ids + t * k, scale, scale_dt, out + t * k, n, k, renormalize, err, lane);
}

// The experts' weighted sum (graph op MoeSum): out[i, t] = x[i, 0, t]·w[0, t] + x[i, 1, t]·w[1, t]
// + …, each product and sum rounded in that order, as the multiply and chain of adds it replaces
// (eight launches a MoE layer) rounded them. x [h, k, t], w [k, t], out dense [h, t]; a thread
// per output.
extern "C" __global__ void moe_sum_f32(const float* x, Layout4 lx, const float* w, Layout4 lw, float* out, int h,
                                       int k, int n_tok) {
    pdl_entry();
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)h * n_tok) return;
    int i = (int)(idx % h), t = (int)(idx / h);
    const float* xr = x + lx.off + i * lx.s0 + t * lx.s2;
    const float* wr = w + lw.off + t * lw.s1;
    float s = __fmul_rn(xr[0], wr[0]);
    for (int j = 1; j < k; ++j) s = __fadd_rn(s, __fmul_rn(xr[j * lx.s1], wr[j * lw.s0]));
    out[idx] = s;
}

// A streaming read of up to three runs of 16-byte words, with no arithmetic to speak of: what a
// pass of a decode step's products would take if they only read their weights (the bench's read
// ceiling, `CudaBackend::read_pass_seconds`). Run s takes blocks [first_s, first_{s+1})
// (first_0 = 0, first_3 = gridDim.x) and reads its n_s words grid-stride over them, four loads
// in flight a thread (evict-first, as weights are read once); out[block] = the wrapping sum of
// the 32-bit words the block read, so a test can check that every word is read exactly once
// (out may be null: nothing written, as when it stands in for a product,
// `CudaBackend::set_products_as_reads`).
extern "C" __global__ void read_runs_u128(const uint4* p0, i64 n0, const uint4* p1, i64 n1, const uint4* p2, i64 n2,
                                          int first1, int first2, unsigned* out) {
    pdl_entry();
    __shared__ unsigned warp_sum[32];
    int b = blockIdx.x;
    const uint4* p = p0;
    i64 n = n0;
    int first = 0, last = first1;
    if (b >= first2) {
        p = p2, n = n2, first = first2, last = gridDim.x;
    } else if (b >= first1) {
        p = p1, n = n1, first = first1, last = first2;
    }
    i64 stride = (i64)(last - first) * blockDim.x;
    i64 i = (i64)(b - first) * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = __ldcs(p + i), c = __ldcs(p + i + stride), d = __ldcs(p + i + 2 * stride),
              e = __ldcs(p + i + 3 * stride);
        acc += a.x + a.y + a.z + a.w + c.x + c.y + c.z + c.w + d.x + d.y + d.z + d.w + e.x + e.y + e.z + e.w;
    }
    for (; i < n; i += stride) {
        uint4 a = __ldcs(p + i);
        acc += a.x + a.y + a.z + a.w;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0 && out) {
        unsigned x = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) x += warp_sum[w];
        out[b] = x;
    }
}
