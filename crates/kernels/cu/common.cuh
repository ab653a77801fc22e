// Shared definitions for every kernel family. No toolkit headers: a machine with only the
// driver and libnvrtc compiles these sources.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ i64 imax(i64 a, i64 b) { return a > b ? a : b; }
__device__ __forceinline__ i64 imin(i64 a, i64 b) { return a < b ? a : b; }

// Element type codes, shared with the host (kernels::dtype_code).
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 30
#define DT_Q4_0 2
#define DT_Q4_1 3
#define DT_Q5_0 6
#define DT_Q5_1 7
#define DT_Q8_0 8
#define DT_Q2_K 10
#define DT_Q3_K 11
#define DT_Q4_K 12
#define DT_Q5_K 13
#define DT_Q6_K 14

// Error codes written to the error word (first error wins).
#define ERR_ROW_ID 1
#define ERR_SLOT 2
#define ERR_EXPERT_ID 3
#define ERR_N_KV 4
#define ERR_NORM_SHAPE 5

__device__ __forceinline__ void report(int* err, int code) { atomicCAS(err, 0, code); }

// Programmatic dependent launch (sm_90 and later). Every kernel but the tensor-core products
// (which take a mode, pdl_enter below) begins with this: it lets the next kernel of the stream
// start launching its blocks onto free SM slots, then waits until the kernel before it has
// finished and its writes are visible. So such a kernel reads or writes global memory only after
// its predecessor is done, exactly as with plain stream order, but the launch and block
// scheduling of each kernel overlap its predecessor's tail. Without the launch attribute (older
// cards, SPECULA_PDL=0) both instructions return at once.
__device__ __forceinline__ void pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// How a tensor-core product kernel (the `_mma_` kernels' `pdl` argument) orders its launch
// trigger and its wait, so that products that neither read nor write what each other touch can
// overlap (the backend's product chains, cuda/launch.rs):
// - PDL_PLAIN: as pdl_entry.
// - PDL_LEAD: wait, then let the next kernel launch. The next kernel therefore launches only
//   after everything before this one has finished, so a following sibling may skip its wait.
// - PDL_SIBLING: let the next kernel launch and start at once. This kernel launched after a
//   lead or sibling of its chain had passed that point, so every kernel before the chain has
//   finished, and the host's footprint check (launch.rs) makes sure no chain member writes what
//   it reads or reads or writes what it writes. It waits for the kernel before it at exit
//   (pdl_leave), so its completion implies the whole chain's, as the next kernel's wait expects.
//   (PTX promises a finished grid's writes to the grids that execute griddepcontrol.wait; a
//   sibling reads them without one, relying, as any kernel that reads the output of a grid two
//   launches back does, on a finished grid's writes being in global memory.)
// - PDL_LEAD_LATE: a lead whose wait (and then launch trigger) the kernel body makes itself, once
//   it has set up and, for Q4_K, asked for its first weights (pdl_late in persist_walk and in the
//   wgmma verify kernels' wg_body; only those take this mode): weights are never written by a
//   kernel of a run, so only activations and outputs must come after the wait.
#define PDL_PLAIN 0
#define PDL_LEAD 1
#define PDL_SIBLING 2
#define PDL_LEAD_LATE 3

__device__ __forceinline__ void pdl_enter(int mode) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (mode == PDL_LEAD) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    } else if (mode == PDL_SIBLING) {
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    } else if (mode == PDL_LEAD_LATE) {
        // The body waits (pdl_late) before it touches anything but weights.
    } else {
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
        asm volatile("griddepcontrol.wait;" ::: "memory");
    }
#endif
}

// A PDL_LEAD_LATE kernel's wait, then its launch trigger, which every thread of it executes
// once before any access to memory other than weights; nothing for the other modes.
__device__ __forceinline__ void pdl_late(int mode) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (mode == PDL_LEAD_LATE) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
#endif
}

// The end of a kernel that began with pdl_enter(mode): a sibling waits here for the kernel
// before it.
__device__ __forceinline__ void pdl_leave(int mode) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (mode == PDL_SIBLING) asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Thread-block clusters (sm_90): the blocks of the calling block's cluster, its rank among them,
// a barrier of all their threads (release/acquire: shared-memory writes before it are visible to
// every block of the cluster after it), and a float of another block's shared memory (`p`: the
// same variable in the calling block, `rank`: the block whose copy is read).
__device__ __forceinline__ int cluster_blocks() {
    u32 n;
    asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    return (int)n;
}

__device__ __forceinline__ int cluster_rank() {
    u32 r;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return (int)r;
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ float ld_cluster_f32(const float* p, int rank) {
    u32 local = (u32)__cvta_generic_to_shared(p), remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
#endif

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Little-endian f16 at a 2-byte-aligned byte address.
__device__ __forceinline__ float ldh(const u8* p) { return h2f(*(const u16*)p); }

// Element i of a float tensor of dtype dt (F32, F16 or BF16).
__device__ __forceinline__ float load_float(const void* p, int dt, i64 i) {
    if (dt == DT_F32) return ((const float*)p)[i];
    if (dt == DT_F16) return h2f(((const u16*)p)[i]);
    return bf2f(((const u16*)p)[i]);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int n = blockDim.x >> 5;
    v = lane < n ? part[lane] : 0.0f;
    return warp_sum(v);
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int n = blockDim.x >> 5;
    v = lane < n ? part[lane] : -INFINITY;
    return warp_max(v);
}

// A 4-D strided layout (elements): index of logical element `i` of a dense order.
struct Layout4 {
    i64 d0, d1, d2, d3;
    i64 s0, s1, s2, s3;
    i64 off;
};

__device__ __forceinline__ i64 layout_index(const Layout4& l, i64 i) {
    i64 i0 = i % l.d0; i /= l.d0;
    i64 i1 = i % l.d1; i /= l.d1;
    i64 i2 = i % l.d2; i64 i3 = i / l.d2;
    return l.off + i0 * l.s0 + i1 * l.s1 + i2 * l.s2 + i3 * l.s3;
}

// Offset of row r (dims 1..3) of a layout.
__device__ __forceinline__ i64 row_index(const Layout4& l, i64 r) {
    i64 i1 = r % l.d1; r /= l.d1;
    i64 i2 = r % l.d2; i64 i3 = r / l.d2;
    return l.off + i1 * l.s1 + i2 * l.s2 + i3 * l.s3;
}
