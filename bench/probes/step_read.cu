// What a decode step could reach if every weight product were only a read of its bytes.
//
// The 31B Q4_K_M target's quantized tensors (sizes from `shapes/gemma4-31b.q4_k_m.tsv`, the
// layout llama.cpp loaded) are placed in one device arena, and one pass — every tensor a decode
// step reads, the tied head whole — is timed in several launch shapes, each captured in a CUDA
// graph as the runtime's step is:
//
// * `arena`: one kernel streams the whole arena (the single-stream ideal);
// * `per-tensor`: one kernel per tensor, in the step's order (what a runtime with one launch per
//   product could reach at best, with no arithmetic and nothing else between the products);
// * `siblings`: the layer's q, k and v as one launch and gate and up as one (the runtime runs
//   these as siblings);
//
// * `chain` (after the launch table): the same launches' reads as one persistent kernel whose
//   resident blocks walk them in order and hand each on through a counter in global memory, as a
//   persistent step kernel would (waiting before reading, after reading, or after staging 32 KiB
//   a block);
//
// each with a persistent grid (1, 2 or 4 blocks of 512 threads an SM, or 2 of 256 as the runtime's
// `_p` products; grid-stride) and a one-shot grid (a block per 64 KB), and with programmatic dependent launch off, as the runtime's plain kernels use it (wait,
// then read) and with every read before the wait (the most any overlap of products could give). Bandwidth is reported as a fraction of the device-to-device copy rate measured as the
// bench does (2 × bytes / time over 20 copies of 1 GiB), so the figures compare with the bench's
// `decode_bw_fraction`.
//
// Build: nvcc -O3 -gencode arch=compute_90a,code=sm_90a -o step_read bench/probes/step_read.cu
// Run:   step_read xtask/shapes/gemma4-31b.q4_k_m.tsv
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "probe_host.h"

// One contiguous run of bytes a launch reads (16-byte units).
struct Seg {
    const uint4* p;
    size_t n16;
};

// Up to three segments read by one launch; segment s takes blocks [first[s], first[s + 1]).
struct Segs {
    Seg s[3];
    int first[4];
    int count;
};

// How a read kernel takes part in programmatic dependent launch (the graph's edges then carry
// the PDL attribute): not at all; as the runtime's plain kernels (let the next kernel launch, then
// wait for the one before, then read); or reading before the wait (as if a product could take all
// its weights before the kernel before it has finished; the wait at the end keeps the chain).
enum Pdl { PDL_OFF = 0, PDL_WAIT_FIRST = 1, PDL_READ_FIRST = 2 };

// XORs words i, i + stride, ... below n of p into acc, four loads in flight (streaming: `__ldcs`).
__device__ __forceinline__ void stream_read(const uint4* p, size_t i, size_t n, size_t stride, unsigned& acc) {
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
              d = __ldcs(p + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = __ldcs(p + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
}

// Streams each segment with 16-byte non-coherent loads, four in flight per thread, XORs what it
// read and stores it only if it equals a value the fill does not produce, so the loads stay.
template <int PDL>
__global__ void __launch_bounds__(512) read_segs(Segs g, unsigned* sink) {
    if (PDL != PDL_OFF) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (PDL == PDL_WAIT_FIRST) asm volatile("griddepcontrol.wait;" ::: "memory");
    // Constant indices only: indexing the by-value parameter with a variable made every thread
    // copy it to a 72-byte stack frame first, which cost each block's start (a first version did,
    // and its passes of many launches read ~9 % slower than the runtime's own read kernel).
    int b = blockIdx.x, first = 0, last = g.first[1];
    const uint4* p = g.s[0].p;
    size_t n = g.s[0].n16;
    if (g.count > 2 && b >= g.first[2]) {
        p = g.s[2].p, n = g.s[2].n16, first = g.first[2], last = g.first[3];
    } else if (g.count > 1 && b >= g.first[1]) {
        p = g.s[1].p, n = g.s[1].n16, first = g.first[1], last = g.first[2];
    }
    size_t blocks = (size_t)(last - first);
    size_t stride = blocks * blockDim.x;
    unsigned acc = 0;
    stream_read(p, (size_t)(b - first) * blockDim.x + threadIdx.x, n, stride, acc);
    if (PDL == PDL_READ_FIRST) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

// ---- The persistent chain: the same launches' reads as one kernel whose blocks (all resident at
// once) walk the launches in order and hand each on through a counter in global memory, as a
// persistent step kernel would hand a product's output to the next product.

// One launch of the chain: up to three segments, every block reading its grid-stride share of
// each.
struct ChainLink {
    Seg s[3];
    int count;
};

// How a block of the chain waits for the link before: before reading (a product that needs its
// input first), after reading all of its share (the most overlap a read can have), or after
// issuing its first CHAIN_PREFETCH_WORDS words a thread (a product that stages its first weights before the
// wait, as the runtime's `PDL_LEAD_LATE` products do).
enum ChainWait { CHAIN_WAIT_FIRST = 0, CHAIN_READ_FIRST = 1, CHAIN_PREFETCH = 2 };
#define CHAIN_PREFETCH_WORDS 4  // 16-byte words a thread stages before the wait: 32 KiB a 512-thread block

__device__ __forceinline__ void chain_wait(const unsigned* done, int link, unsigned blocks) {
    if (link > 0 && threadIdx.x == 0) {
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(done + link - 1) : "memory");
        } while (v < blocks);
    }
    __syncthreads();
}

template <int WAIT>
__global__ void __launch_bounds__(512) read_chain(const ChainLink* links, int n_links, unsigned* done,
                                                  unsigned* sink) {
    const unsigned blocks = gridDim.x;
    const size_t stride = (size_t)blocks * blockDim.x, first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (int l = 0; l < n_links; ++l) {
        const ChainLink L = links[l];
        if (WAIT == CHAIN_WAIT_FIRST) chain_wait(done, l, blocks);
        // CHAIN_PREFETCH: the first segment's first words of this thread, loaded before the wait;
        // its reading then starts past them.
        size_t skip = 0;
        if (WAIT == CHAIN_PREFETCH) {
            uint4 w[CHAIN_PREFETCH_WORDS];
#pragma unroll
            for (int k = 0; k < CHAIN_PREFETCH_WORDS; ++k)
                w[k] = first + k * stride < L.s[0].n16 ? __ldcs(L.s[0].p + first + k * stride)
                                                       : make_uint4(0, 0, 0, 0);
            chain_wait(done, l, blocks);
#pragma unroll
            for (int k = 0; k < CHAIN_PREFETCH_WORDS; ++k) acc ^= w[k].x ^ w[k].y ^ w[k].z ^ w[k].w;
            skip = CHAIN_PREFETCH_WORDS * stride;
        }
        // Constant indices only (a variable one puts L on the stack; see read_segs).
#pragma unroll
        for (int s = 0; s < 3; ++s)
            if (s < L.count) stream_read(L.s[s].p, first + (s == 0 ? skip : 0), L.s[s].n16, stride, acc);
        if (WAIT == CHAIN_READ_FIRST) chain_wait(done, l, blocks);
        // This block's share is read: count it (a product would have written its output first).
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(done + l, 1u);
        }
    }
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

// A tensor of the step: its name, its role in a layer (or "head") and its place in the arena.
struct Tensor {
    std::string name, role;
    int layer;
    size_t off, bytes;
};

// The step's reading order within a layer.
static int role_rank(const std::string& r) {
    static const char* order[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    for (int i = 0; i < 7; ++i)
        if (r == order[i]) return i;
    return 99;
}

static std::vector<Tensor> load_tensors(const char* path, size_t& total) {
    std::ifstream f(path);
    if (!f) {
        std::fprintf(stderr, "cannot open %s\n", path);
        std::exit(1);
    }
    std::string line;
    std::getline(f, line);  // header
    std::vector<Tensor> ts;
    while (std::getline(f, line)) {
        std::stringstream ss(line);
        std::string name, type, shape, bytes;
        std::getline(ss, name, '\t');
        std::getline(ss, type, '\t');
        std::getline(ss, shape, '\t');
        std::getline(ss, bytes, '\t');
        if (type == "F32" || type == "F16" || bytes.empty()) continue;  // norms and scales: not products
        Tensor t;
        t.name = name;
        t.bytes = std::stoull(bytes);
        if (name.rfind("blk.", 0) == 0) {
            size_t a = name.find('.', 4), b = name.find('.', a + 1);
            t.layer = std::stoi(name.substr(4, a - 4));
            t.role = name.substr(a + 1, b - a - 1);
        } else {
            t.layer = 1 << 20;  // after every layer: the tied output head
            t.role = "head";
        }
        ts.push_back(t);
    }
    std::stable_sort(ts.begin(), ts.end(), [](const Tensor& a, const Tensor& b) {
        return a.layer != b.layer ? a.layer < b.layer : role_rank(a.role) < role_rank(b.role);
    });
    total = 0;
    for (auto& t : ts) {
        t.off = total;
        total += (t.bytes + 255) / 256 * 256;
    }
    return ts;
}

// A launch of the pass: the tensors it reads together.
using Launch = std::vector<const Tensor*>;

static std::vector<Launch> group(const std::vector<Tensor>& ts, bool siblings) {
    std::vector<Launch> ls;
    for (size_t i = 0; i < ts.size(); ++i) {
        const Tensor& t = ts[i];
        bool join = false;
        if (siblings && !ls.empty()) {
            const Tensor* prev = ls.back().back();
            bool qkv = (t.role == "attn_k" || t.role == "attn_v") && prev->layer == t.layer &&
                       (prev->role == "attn_q" || prev->role == "attn_k");
            bool glu = t.role == "ffn_up" && prev->layer == t.layer && prev->role == "ffn_gate";
            join = qkv || glu;
        }
        if (join)
            ls.back().push_back(&t);
        else
            ls.push_back({&t});
    }
    return ls;
}

// Blocks for a launch of `bytes`: `per_sm` blocks an SM (grid-stride), or with per_sm = 0 one
// block a 64 KB. Fewer than four 512-thread blocks an SM leave room for the next kernel's blocks
// to start beside this one's.
static int blocks_for(size_t bytes, int per_sm, int sms) {
    if (per_sm > 0) return sms * per_sm;
    return (int)std::max<size_t>(1, (bytes + 65535) / 65536);
}

static void launch(const Launch& l, const unsigned char* arena, int per_sm, int threads, int pdl, int sms,
                   unsigned* sink, cudaStream_t st) {
    Segs g{};
    size_t total = 0;
    for (auto* t : l) total += t->bytes;
    int blocks = blocks_for(total, per_sm, sms);
    g.count = (int)l.size();
    int at = 0;
    for (int s = 0; s < g.count; ++s) {
        const Tensor* t = l[s];
        g.s[s] = {(const uint4*)(arena + t->off), t->bytes / 16};
        g.first[s] = at;
        int share = s + 1 == g.count ? blocks - at
                                     : std::max(1, (int)((double)blocks * t->bytes / total + 0.5));
        at += share;
    }
    g.first[g.count] = at;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(at);
    cfg.blockDim = dim3(threads);
    cfg.stream = st;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl != PDL_OFF ? 1 : 0;
    if (pdl == PDL_OFF)
        CHECK(cudaLaunchKernelEx(&cfg, read_segs<PDL_OFF>, g, sink));
    else if (pdl == PDL_WAIT_FIRST)
        CHECK(cudaLaunchKernelEx(&cfg, read_segs<PDL_WAIT_FIRST>, g, sink));
    else
        CHECK(cudaLaunchKernelEx(&cfg, read_segs<PDL_READ_FIRST>, g, sink));
}

// Milliseconds per replay of what `capture` issues on the stream it is given, captured as a CUDA
// graph: the median of 7 replays after 2 warm-ups.
template <class F>
static double captured_ms(F capture) {
    cudaStream_t st;
    CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    capture(st);
    CHECK(cudaStreamEndCapture(st, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    std::vector<float> ms;
    for (int r = 0; r < 9; ++r) {
        CHECK(cudaEventRecord(a, st));
        CHECK(cudaGraphLaunch(exec, st));
        CHECK(cudaEventRecord(b, st));
        CHECK(cudaEventSynchronize(b));
        float m = 0;
        CHECK(cudaEventElapsedTime(&m, a, b));
        if (r >= 2) ms.push_back(m);
    }
    std::sort(ms.begin(), ms.end());
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    CHECK(cudaStreamDestroy(st));
    return ms[ms.size() / 2];
}

// Milliseconds per replay of a graph holding `launches` (captured_ms).
static double time_pass(const std::vector<Launch>& launches, const unsigned char* arena, int per_sm,
                        int threads, int pdl, int sms, unsigned* sink) {
    return captured_ms([&](cudaStream_t st) {
        for (auto& l : launches) launch(l, arena, per_sm, threads, pdl, sms, sink, st);
    });
}

// Milliseconds per replay of the chain (the counters' reset and the one launch; captured_ms); 0
// where `per_sm` blocks of `threads` cannot all be
// resident (the chain would deadlock).
static double time_chain(const std::vector<Launch>& launches, const unsigned char* arena, int per_sm, int threads,
                         int wait, int sms, unsigned* sink) {
    const void* fn = wait == CHAIN_WAIT_FIRST ? (const void*)read_chain<CHAIN_WAIT_FIRST>
                     : wait == CHAIN_READ_FIRST ? (const void*)read_chain<CHAIN_READ_FIRST>
                                                : (const void*)read_chain<CHAIN_PREFETCH>;
    int resident = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, fn, threads, 0));
    if (resident < per_sm) return 0.0;
    std::vector<ChainLink> host;
    for (auto& l : launches) {
        ChainLink c{};
        c.count = (int)l.size();
        for (int s = 0; s < c.count; ++s) c.s[s] = {(const uint4*)(arena + l[s]->off), l[s]->bytes / 16};
        host.push_back(c);
    }
    ChainLink* links;
    unsigned* done;
    CHECK(cudaMalloc(&links, host.size() * sizeof(ChainLink)));
    CHECK(cudaMalloc(&done, host.size() * sizeof(unsigned)));
    CHECK(cudaMemcpy(links, host.data(), host.size() * sizeof(ChainLink), cudaMemcpyHostToDevice));
    int n = (int)host.size();
    void* args[] = {&links, &n, &done, &sink};
    double ms = captured_ms([&](cudaStream_t st) {
        CHECK(cudaMemsetAsync(done, 0, host.size() * sizeof(unsigned), st));
        CHECK(cudaLaunchKernel(fn, dim3(sms * per_sm), dim3(threads), args, 0, st));
    });
    // Every link was counted by every block (a wrong count would have hung the replay instead).
    std::vector<unsigned> counted(host.size());
    CHECK(cudaMemcpy(counted.data(), done, host.size() * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (unsigned c : counted)
        if (c != (unsigned)(sms * per_sm)) {
            std::fprintf(stderr, "chain: a link counted %u blocks of %d\n", c, sms * per_sm);
            std::exit(1);
        }
    CHECK(cudaFree(links));
    CHECK(cudaFree(done));
    return ms;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s SHAPES.tsv\n", argv[0]);
        return 2;
    }
    size_t arena_bytes = 0;
    std::vector<Tensor> ts = load_tensors(argv[1], arena_bytes);
    size_t step_bytes = 0;
    for (auto& t : ts) step_bytes += t.bytes;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    int sms = prop.multiProcessorCount;
    std::printf("device %s, %d SMs; %zu tensors, %.3f GB a step\n", prop.name, sms, ts.size(), step_bytes / 1e9);

    unsigned char* arena;
    unsigned* sink;
    CHECK(cudaMalloc(&arena, arena_bytes));
    CHECK(cudaMalloc(&sink, 1 << 24));
    // The arena's bytes: STEP_READ_FILL=random (the default: pseudo-random, as weights are),
    // 5a (every byte 0x5a) or zero, to see whether what is read changes how fast.
    const char* fill = std::getenv("STEP_READ_FILL") ? std::getenv("STEP_READ_FILL") : "random";
    if (std::strcmp(fill, "zero") == 0) {
        CHECK(cudaMemset(arena, 0, arena_bytes));
    } else if (std::strcmp(fill, "5a") == 0) {
        CHECK(cudaMemset(arena, 0x5a, arena_bytes));
    } else {
        size_t chunk = std::min<size_t>(arena_bytes, 16u << 20);
        std::vector<unsigned char> pattern(chunk);
        ProbeRng rng{0x2545f4914f6cdd1dull};
        for (auto& b : pattern) b = (unsigned char)rng.next_u32();
        CHECK(cudaMemcpy(arena, pattern.data(), chunk, cudaMemcpyHostToDevice));
        for (size_t at = chunk; at < arena_bytes; at += chunk)
            CHECK(cudaMemcpy(arena + at, arena, std::min(chunk, arena_bytes - at), cudaMemcpyDeviceToDevice));
    }
    std::printf("arena filled: %s\n", fill);
    double copy = probe_copy_gbs(20);
    std::printf("copy %.0f GB/s (2 x bytes / time, as the bench)\n\n", copy);

    Tensor whole{"arena", "arena", 0, 0, step_bytes};
    std::vector<Launch> one = {{&whole}};
    std::vector<Launch> per = group(ts, false), sib = group(ts, true);
    std::printf("| pass | launches | grid | PDL | ms | GB/s | / copy | tok/s ceiling |\n|---|---:|---|---|---:|---:|---:|---:|\n");
    const char* pdl_names[] = {"off", "wait, then read", "read, then wait"};
    struct Mode {
        const char* name;
        const std::vector<Launch>* l;
    } modes[] = {{"arena", &one}, {"per-tensor", &per}, {"siblings", &sib}};
    for (auto& m : modes)
        for (int pdl = 0; pdl < (m.l->size() > 1 ? 3 : 1); ++pdl)
            for (auto [per_sm, threads] : {std::pair{1, 512}, {2, 256}, {2, 512}, {4, 512}, {0, 512}}) {
                double ms = time_pass(*m.l, arena, per_sm, threads, pdl, sms, sink);
                double gbs = step_bytes / (ms * 1e-3) / 1e9;
                char grid[48];
                if (per_sm)
                    std::snprintf(grid, sizeof grid, "SMs x %d, %d threads", per_sm, threads);
                else
                    std::snprintf(grid, sizeof grid, "64 KB a block, %d threads", threads);
                std::printf("| %s | %zu | %s | %s | %.3f | %.0f | %.3f | %.1f |\n", m.name, m.l->size(), grid,
                            pdl_names[pdl], ms, gbs, gbs / copy, 1e3 / ms);
            }

    // The same launches as one persistent kernel handing each on through a counter.
    std::printf("\n| chain of | links | grid | wait | ms | GB/s | / copy | tok/s ceiling |\n|---|---:|---|---|---:|---:|---:|---:|\n");
    const char* wait_names[] = {"wait, then read", "read, then wait", "32 KiB a block, then wait"};
    for (auto& m : modes) {
        if (m.l->size() < 2) continue;
        for (int wait = 0; wait < 3; ++wait)
            for (auto [per_sm, threads] : {std::pair{1, 512}, {2, 256}, {2, 512}, {4, 512}}) {
                double ms = time_chain(*m.l, arena, per_sm, threads, wait, sms, sink);
                if (ms == 0.0) continue;
                double gbs = step_bytes / (ms * 1e-3) / 1e9;
                std::printf("| %s | %zu | SMs x %d, %d threads | %s | %.3f | %.0f | %.3f | %.1f |\n", m.name,
                            m.l->size(), per_sm, threads, wait_names[wait], ms, gbs, gbs / copy, 1e3 / ms);
            }
    }

    // Each role's tensors alone, one launch each, over all layers (so no tensor is read from L2).
    std::printf("\n| role | tensors | MB each | µs each (one launch a tensor, SMs x 1 of 512 threads, no PDL) | / copy |\n|---|---:|---:|---:|---:|\n");
    std::map<std::string, std::vector<Launch>> by_role;
    for (auto& t : ts) by_role[t.role].push_back({&t});
    for (auto& [role, ls] : by_role) {
        size_t bytes = 0;
        for (auto& l : ls) bytes += l[0]->bytes;
        double ms = time_pass(ls, arena, 1, 512, PDL_OFF, sms, sink);
        double gbs = bytes / (ms * 1e-3) / 1e9;
        std::printf("| %s | %zu | %.1f | %.1f | %.3f |\n", role.c_str(), ls.size(), bytes / 1e6 / ls.size(),
                    1e3 * ms / ls.size(), gbs / copy);
    }
    CHECK(cudaFree(arena));
    CHECK(cudaFree(sink));
    return 0;
}
