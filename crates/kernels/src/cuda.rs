//! [`CudaBackend`]: the graph [`Backend`] on an NVIDIA GPU through the CUDA driver API.
//!
//! Buffers are raw device allocations behind [`BufferId`] handles (addresses stay fixed while
//! a graph is loaded). Kernels come from one NVRTC-compiled module for the device's own
//! architecture. Each op of a graph is one launch on the stream; run-time failures inside
//! kernels (an out-of-range id or slot) set an error word that is checked after the run.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{
    result as cu, sys, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream,
};
use graph::{
    AttnMask, Backend, BinaryOp, Bindings, BufferId, DType, ExecId, GluOp, Graph, HostBytes,
    HostData, KvLayout, Layout, MemoryPlan, Node, NodeId, Op, Shape, Storage, TensorData, UnaryOp,
};

use crate::attention_plan::{
    self, attention_splits, AttentionConfig, AttentionKernel, AttentionShape, MultiQueryAttention,
};
use crate::fuse_plan::{self, FusePlan, Fused};
use crate::mma_plan::{self, uniform_row_stride, MmaConfig, MmaInput, MmaPlan};
use crate::nvrtc;
use crate::source;

type Result<T> = graph::Result<T>;

fn backend_err(message: impl Into<String>) -> graph::Error {
    graph::Error::Backend {
        backend: "cuda".into(),
        message: message.into(),
    }
}

fn driver_err(what: &str, e: cu::DriverError) -> graph::Error {
    backend_err(format!("{what}: {e:?}"))
}

/// Whether a CUDA driver, libnvrtc and at least one device are present. Never panics (the
/// driver bindings panic when a library is missing, so presence is checked first).
pub fn cuda_available() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: only tries to dlopen libcuda by its candidate names; no symbol is called.
    let driver = unsafe { sys::is_culib_present() };
    driver
        && nvrtc::nvrtc_available()
        && cu::init().is_ok()
        && cu::device::get_count().map(|n| n > 0).unwrap_or(false)
}

struct DevBuf {
    ptr: u64,
    dtype: DType,
    shape: Shape,
}

fn elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::I32 => 4,
        DType::F16 | DType::BF16 => 2,
        _ => 0,
    }
}

fn byte_size(dtype: DType, shape: Shape) -> Result<usize> {
    dtype
        .bytes_for(shape.n_elems() as u64)
        .map(|b| b as usize)
        .ok_or_else(|| backend_err(format!("{dtype} {shape} is not a whole number of blocks")))
}

/// Kernel parameters, each in its own 8-byte-aligned heap cell so its address is stable.
#[derive(Default)]
struct Args {
    cells: Vec<Vec<u64>>,
}

impl Args {
    fn ptr(&mut self, p: u64) -> &mut Self {
        self.cells.push(vec![p]);
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.cells.push(vec![v as u32 as u64]);
        self
    }
    fn f32(&mut self, v: f32) -> &mut Self {
        self.cells.push(vec![v.to_bits() as u64]);
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.cells.push(vec![v as u64]);
        self
    }
    /// A `Layout4` by value: dims, strides, offset (nine i64).
    fn layout(&mut self, l: &Layout) -> &mut Self {
        let d = l.shape.dims();
        let mut cell: Vec<u64> = d.iter().map(|&x| x as u64).collect();
        cell.extend(l.strides.iter().map(|&x| x as u64));
        cell.push(l.offset as u64);
        self.cells.push(cell);
        self
    }
}

struct Exec {
    graph: Graph,
    node_buffer: Vec<BufferId>,
    owned: Vec<BufferId>,
    /// Completed runs (the first runs eagerly and validates every launch).
    runs: usize,
    /// The captured launch sequence, replayed on later runs.
    captured: Option<CudaGraph>,
    /// Split-K scratch of attention nodes: (buffer, number of splits).
    attn_scratch: HashMap<usize, (BufferId, usize)>,
    /// Prepared activations of the `_mma_` products (`mmv_prepare_x`), sized for the largest.
    mma_scratch: Option<BufferId>,
    /// Partial sums of `_mma_` products split over blocks along k, sized for the largest.
    mma_partials: Option<BufferId>,
    /// The products the `_mma_` kernels take, which read prepared activations, which find them
    /// ready, which RMSNorm nodes write them (`mma_plan::plan`, with the settings at load time).
    mma: MmaPlan,
    /// Post-norm tails launched as one kernel, and the nodes folded into them
    /// (`fuse_plan::plan`).
    fuse: FusePlan,
}

/// `SPECULA_MAX_ROW_TILE` (1, 2, 4, 8 or 16; default 8): caps the activation-row tile of the
/// vector matmul kernels, so batches above it run as several tiles (a tuning knob for
/// `cargo xtask bench`). Any other value is ignored. On the H100 a 16-token verify of the 31B
/// took 177 ms as two 8-row tiles and 191 ms (4 output rows per warp) or 210 ms (2 rows per
/// warp) as one 16-row tile (bench/NOTES.md).
fn max_row_tile_from_env() -> usize {
    std::env::var("SPECULA_MAX_ROW_TILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|t| source::MATMUL_ROW_TILES.contains(t))
        .unwrap_or(8)
}

/// Whether the tensor-core matrix-vector kernels run Q4_K/Q6_K/Q8_0 products (up to 16 activation
/// rows, and prefill chunks while `mma_prefill` is on; `SPECULA_MMA=0` turns them off, leaving
/// the f32 vector and tiled kernels: an A/B knob for `cargo xtask bench`).
fn mma_matvec_from_env() -> bool {
    std::env::var("SPECULA_MMA").map_or(true, |v| v != "0")
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    use_graphs: bool,
    tensor_cores: bool,
    /// Largest activation-row tile of the vector matmul kernels (16, or lower for tuning).
    max_row_tile: usize,
    /// Q4_K/Q6_K/Q8_0 products take the tensor-core `_mma_` kernels (up to 16 rows, and more
    /// while `mma_prefill` is on).
    mma_matvec: bool,
    /// f16 K/V attention of head dim 256/512 takes the wide kernel (`SPECULA_WIDE_ATTENTION=0`:
    /// the generic one, an A/B knob).
    wide_attention: bool,
    /// Which batches' attention over f16 K/V rows of 256/512 takes the multi-query kernel (by
    /// default those of more than 16 queries; `SPECULA_MQ_ATTENTION=0|all`, A/B knobs).
    mq_attention: MultiQueryAttention,
    /// The device's opt-in shared memory per block (bytes), for the multi-query attention.
    max_smem: usize,
    /// `SPECULA_MMA_MT` (1 or 2): forces the `_mma_` kernels' weight tiles per warp (tuning).
    mma_mt: Option<usize>,
    /// Products of more than 16 activation rows (prefill) also take the `_mma_` kernels, 8·NT
    /// rows per block (`SPECULA_MMA_PREFILL=0`: the tiled `matmul_tc_` kernels, an A/B knob).
    mma_prefill: bool,
    /// Products of more than 16 rows give each warp its own weight rows
    /// (`SPECULA_MMA_PREFILL_SPLITK=1`: split rows' groups between warps as up to 16 rows).
    mma_prefill_row_warps: bool,
    /// `SPECULA_MMA_PREFILL_TILE=MxN`: the `_mma_` tile of products of more than 16 rows
    /// instead of `source::mma_prefill_tile`'s (tuning; 2x2 or one of
    /// `source::MMA_PREFILL_TILES`).
    mma_prefill_tile: Option<(usize, usize)>,
    /// Forces every `_mma_` product to prepare its activations (`Some(true)`) or to split them in
    /// place (`Some(false)`) instead of `source::mma_prepares` (tests and A/B runs;
    /// `SPECULA_MMA_PREPARE=0|1`).
    mma_prepare: Option<bool>,
    /// Kernels launch with programmatic stream serialization (sm_90 and later, unless
    /// `SPECULA_PDL=0`): each one's launch overlaps the tail of the kernel before it, which every
    /// kernel waits for on entry (`pdl_entry` in common.cuh) before touching memory.
    pdl: bool,
    /// Graphs are loaded with the launches `fuse_plan` folds together (`SPECULA_FUSE=0`
    /// launches every node on its own, an A/B knob).
    fusion: bool,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    name: String,
    buffers: Vec<Option<DevBuf>>,
    execs: Vec<Option<Exec>>,
    err_word: u64,
}

// SAFETY: the backend owns its device allocations (raw addresses) and the context; every use
// goes through `&mut self` or `&self` on one thread at a time, and the CUDA context is bound to
// the calling thread before each driver call.
#[allow(unsafe_code)]
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens device `ordinal`, compiles (or loads from the cache) the kernels for its exact
    /// architecture, and loads every entry point.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        if !cuda_available() {
            return Err(backend_err(
                "no CUDA driver, libnvrtc or device found (run `specula doctor`)",
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating the context", e))?;
        #[allow(unsafe_code)]
        // SAFETY: called right after creating the context, before any allocation (cudarc#555);
        // this backend uses one stream and raw allocations, so no cross-stream tracking is needed.
        unsafe {
            ctx.disable_event_tracking()
        };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_err("compute capability", e))?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let mut driver = 0;
        #[allow(unsafe_code)]
        // SAFETY: the driver library is loaded (checked by cuda_available); valid out-pointer.
        unsafe { sys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(|e| driver_err("driver version", e))?;
        let cubin =
            nvrtc::cubin_cached(&source::full_source(), arch, driver).map_err(backend_err)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(|e| driver_err("loading the kernel module", e))?;
        let mut funcs = HashMap::new();
        for name in source::all_kernel_names() {
            let f = module
                .load_function(&name)
                .map_err(|e| driver_err(&format!("kernel {name}"), e))?;
            funcs.insert(name, f);
        }
        let max_smem = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| driver_err("shared memory per block", e))?
            .max(0) as usize;
        // The multi-query attention kernels take more than the default 48 KB of dynamic shared
        // memory; where the device cannot give it, `attention_plan::choose` never picks them.
        for d in [256, 512] {
            let bytes = attention_plan::mq_smem_bytes(d);
            let name = AttentionKernel::MultiQuery { d }.name();
            if let (Some(f), true) = (funcs.get(name), bytes <= max_smem) {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|e| driver_err(&format!("shared memory of {name}"), e))?;
            }
        }
        let dev_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating a stream", e))?;
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        #[allow(unsafe_code)]
        // SAFETY: the context is current; 4 bytes are allocated and freed in Drop.
        let err_word = unsafe { cu::malloc_sync(4) }
            .map_err(|e| driver_err("allocating the error word", e))?;
        Ok(CudaBackend {
            name: format!("cuda:{ordinal} ({dev_name}, {arch})"),
            ctx,
            stream,
            use_graphs: true,
            tensor_cores: major >= 8,
            max_row_tile: max_row_tile_from_env(),
            mma_matvec: major >= 8 && mma_matvec_from_env(),
            wide_attention: std::env::var("SPECULA_WIDE_ATTENTION").map_or(true, |v| v != "0"),
            mq_attention: MultiQueryAttention::from_env(),
            max_smem,
            mma_mt: std::env::var("SPECULA_MMA_MT")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|mt| [1, 2].contains(mt)),
            mma_prefill: std::env::var("SPECULA_MMA_PREFILL").map_or(true, |v| v != "0"),
            mma_prefill_row_warps: std::env::var("SPECULA_MMA_PREFILL_SPLITK")
                .map_or(true, |v| v != "1"),
            mma_prefill_tile: std::env::var("SPECULA_MMA_PREFILL_TILE")
                .ok()
                .and_then(|v| {
                    let (mt, nt) = v.split_once('x')?;
                    let tile = (mt.parse().ok()?, nt.parse().ok()?);
                    (tile == (2, 2) || source::MMA_PREFILL_TILES.contains(&tile)).then_some(tile)
                }),
            mma_prepare: match std::env::var("SPECULA_MMA_PREPARE").as_deref() {
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                _ => None,
            },
            fusion: std::env::var("SPECULA_FUSE").map_or(true, |v| v != "0"),
            pdl: major >= 9 && std::env::var("SPECULA_PDL").map_or(true, |v| v != "0"),
            _module: module,
            funcs,
            buffers: Vec::new(),
            execs: Vec::new(),
            err_word,
        })
    }

    /// Whether loaded graphs are captured as CUDA graphs after their first run and replayed
    /// (on by default; off measures plain launches).
    pub fn set_graph_replay(&mut self, enabled: bool) {
        self.use_graphs = enabled;
        for exec in self.execs.iter_mut().flatten() {
            exec.captured = None;
        }
    }

    /// Forces the tensor-core products loaded from now on to read activations prepared once per
    /// input (`Some(true)`) or to split them in every warp (`Some(false)`); `None` restores the
    /// size rule. The results are the same bits either way (tested).
    pub fn set_mma_prepare(&mut self, mode: Option<bool>) {
        self.mma_prepare = mode;
    }

    /// Launches a loaded graph saves by fusion (nodes folded into another node's launch, split
    /// sums done by the norm that reads them), for tests that must know a fusion happened.
    pub fn folded_launches(&self, exe: ExecId) -> Result<usize> {
        let exec = self
            .execs
            .get(exe.0)
            .and_then(|e| e.as_ref())
            .ok_or_else(|| backend_err(format!("no loaded graph {}", exe.0)))?;
        Ok(exec.fuse.skip.len() + exec.fuse.unsummed.len())
    }

    /// Whether graphs loaded from now on launch fused norms (`fuse_plan`; on by default,
    /// `SPECULA_FUSE=0` turns it off). The results are the same bits either way (tested).
    pub fn set_fusion(&mut self, on: bool) {
        self.fusion = on;
    }

    /// The kernel attention node `node` of `g` runs on with the current settings.
    fn attention_route(&self, g: &Graph, node: &graph::Node) -> AttentionKernel {
        let (q, k, v) = (
            g.node(node.inputs[0]),
            g.node(node.inputs[1]),
            g.node(node.inputs[2]),
        );
        attention_plan::choose(
            &self.attention_config(),
            &AttentionShape {
                k_dtype: k.dtype,
                v_dtype: v.dtype,
                k_layout: &k.layout,
                v_layout: &v.layout,
                d: q.shape().ne(0),
                d_v: v.shape().ne(0),
                n_tok: q.shape().ne(2),
            },
        )
    }

    /// The settings that route attention nodes (`attention_plan::choose`).
    fn attention_config(&self) -> AttentionConfig {
        AttentionConfig {
            wide: self.wide_attention,
            multi_query: self.mq_attention,
            max_smem: self.max_smem,
        }
    }

    /// Which batches' attention over f16 K/V rows of 256/512 runs on the multi-query kernel;
    /// takes effect at the next run of every graph (captured graphs are captured again). The
    /// split-K counts stay those chosen at load, which any route computes correctly.
    pub fn set_multi_query_attention(&mut self, mode: MultiQueryAttention) {
        self.mq_attention = mode;
        for exec in self.execs.iter_mut().flatten() {
            exec.captured = None;
        }
    }

    /// Attention nodes of a loaded graph that run on the multi-query kernel, for tests that must
    /// know it ran.
    pub fn multi_query_attentions(&self, exe: ExecId) -> Result<usize> {
        let exec = self
            .execs
            .get(exe.0)
            .and_then(|e| e.as_ref())
            .ok_or_else(|| backend_err(format!("no loaded graph {}", exe.0)))?;
        let g = &exec.graph;
        Ok(g.nodes()
            .iter()
            .filter(|node| matches!(node.op, Op::Attention(_)))
            .filter(|node| {
                matches!(
                    self.attention_route(g, node),
                    AttentionKernel::MultiQuery { .. }
                )
            })
            .count())
    }

    /// Seconds per run of a loaded graph, averaged over `n` back-to-back runs with one
    /// synchronisation at the end (after one eager and, with replay on, one capturing run).
    pub fn time_runs(&mut self, exe: ExecId, n: usize) -> Result<f64> {
        self.run(exe)?;
        self.run(exe)?;
        let exec = self
            .execs
            .get(exe.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                graph::Error::Handle(format!("cuda executable #{} does not exist", exe.0))
            })?;
        let start = std::time::Instant::now();
        for _ in 0..n {
            self.replay_or_launch(exec)?;
        }
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronising", e))?;
        Ok(start.elapsed().as_secs_f64() / n.max(1) as f64)
    }

    /// Device-to-device copy bandwidth in bytes per second (bytes read plus bytes written), over
    /// `reps` copies of `bytes` bytes.
    pub fn copy_bandwidth(&mut self, bytes: usize, reps: usize) -> Result<f64> {
        let src = self.malloc(bytes)?;
        let dst = self.malloc(bytes)?;
        let copy = |s: &Self| -> Result<()> {
            #[allow(unsafe_code)]
            // SAFETY: both allocations hold `bytes` bytes and are freed after the copies finish.
            unsafe { cu::memcpy_dtod_async(dst, src, bytes, s.stream.cu_stream()) }
                .map_err(|e| driver_err("copying", e))
        };
        copy(self)?;
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronising", e))?;
        let start = std::time::Instant::now();
        for _ in 0..reps {
            copy(self)?;
        }
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronising", e))?;
        let secs = start.elapsed().as_secs_f64();
        #[allow(unsafe_code)]
        // SAFETY: both were allocated above and the stream has finished with them.
        unsafe {
            let _ = cu::free_sync(src);
            let _ = cu::free_sync(dst);
        }
        Ok(2.0 * (bytes * reps) as f64 / secs)
    }

    /// Copies host bytes to the device, ordered on the backend's stream, and waits.
    fn htod(&self, dst: u64, bytes: &[u8]) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass a destination with room for `bytes.len()` bytes; the host slice
        // outlives the copy because the stream is synchronised before returning.
        unsafe { cu::memcpy_htod_async(dst, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying to the device", e))?;
        self.stream
            .synchronize()
            .map_err(|e| driver_err("copying to the device", e))
    }

    /// Copies device bytes to the host, ordered on the backend's stream, and waits.
    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass a source holding at least `dst.len()` bytes; `dst` outlives the
        // copy because the stream is synchronised before returning.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying from the device", e))?;
        self.stream
            .synchronize()
            .map_err(|e| driver_err("copying from the device", e))
    }

    /// Sets `n` bytes at `ptr` to zero, ordered on the backend's stream, and waits.
    fn zero(&self, ptr: u64, n: usize) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass an allocation of at least `n` bytes.
        unsafe { cu::memset_d8_async(ptr, 0, n, self.stream.cu_stream()) }
            .map_err(|e| driver_err("zeroing", e))?;
        self.stream
            .synchronize()
            .map_err(|e| driver_err("zeroing", e))
    }

    /// Number of kernel nodes in `exe`'s captured CUDA graph, if one was captured.
    pub fn captured_nodes(&self, exe: ExecId) -> Option<usize> {
        let g = self.execs.get(exe.0)?.as_ref()?.captured.as_ref()?;
        let mut n = 0usize;
        #[allow(unsafe_code)]
        // SAFETY: the graph is alive; a null node array asks only for the count.
        let r = unsafe { sys::cuGraphGetNodes(g.cu_graph(), std::ptr::null_mut(), &mut n) };
        r.result().ok().map(|()| n)
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))
    }

    fn buf(&self, id: BufferId) -> Result<&DevBuf> {
        self.buffers
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| graph::Error::Handle(format!("cuda buffer #{} does not exist", id.0)))
    }

    fn insert(&mut self, b: DevBuf) -> BufferId {
        self.buffers.push(Some(b));
        BufferId(self.buffers.len() - 1)
    }

    fn malloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: the context is current; the allocation is owned by a DevBuf and freed once.
        let ptr = unsafe { cu::malloc_sync(bytes.max(4)) }.map_err(|e| {
            let (free, total) = cu::mem_get_info().unwrap_or((0, 0));
            driver_err(
                &format!("allocating {bytes} bytes ({free} of {total} bytes free)"),
                e,
            )
        })?;
        self.zero(ptr, bytes.max(4))?;
        Ok(ptr)
    }

    fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &mut Args) -> Result<()> {
        self.launch_smem(name, grid, block, 0, args)
    }

    /// [`Self::launch`] with `smem` bytes of dynamic shared memory (the function's maximum was
    /// raised at load where it exceeds 48 KB).
    fn launch_smem(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut Args,
    ) -> Result<()> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| backend_err(format!("kernel {name} is not loaded")))?;
        let mut params: Vec<*mut c_void> = args
            .cells
            .iter_mut()
            .map(|c| c.as_mut_ptr() as *mut c_void)
            .collect();
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        // Programmatic stream serialization lets the launch overlap the previous kernel's tail;
        // every kernel's `pdl_entry` waits for that kernel's completion before any memory access.
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        #[allow(unsafe_code)]
        // SAFETY: the parameter cells match the kernel's signature (built by the launchers
        // below from validated nodes) and stay alive until the call returns; every pointer
        // argument addresses a live allocation large enough for the node's layout; `config`
        // and its attribute live on this frame for the whole call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| driver_err(&format!("launching {name}"), e))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Captured graphs go first: they reference the buffers freed below.
        self.execs.clear();
        if self.bind().is_err() {
            return;
        }
        for b in self.buffers.iter().flatten() {
            #[allow(unsafe_code)]
            // SAFETY: each DevBuf owns its allocation, freed exactly once here.
            let _ = unsafe { cu::free_sync(b.ptr) };
        }
        #[allow(unsafe_code)]
        // SAFETY: allocated in `new`, freed once here.
        let _ = unsafe { cu::free_sync(self.err_word) };
    }
}

/// The dtype code of the kernels (the ggml type id).
fn code(dtype: DType) -> i32 {
    dtype.id() as i32
}

fn weight_suffix(dtype: DType) -> Result<&'static str> {
    source::WEIGHT_SUFFIXES
        .iter()
        .find(|(t, _)| *t == dtype)
        .map(|(_, s)| *s)
        .ok_or_else(|| backend_err(format!("no CUDA kernels for {dtype} weights")))
}

fn grid1(n: usize, block: usize) -> (u32, u32, u32) {
    (n.div_ceil(block) as u32, 1, 1)
}

impl CudaBackend {
    /// Launches matmul `node` on the tensor-core `_mma_` kernels: the activation preparation
    /// when the plan says this product prepares, the product, and the split sums.
    fn launch_mma(
        &self,
        exec: &Exec,
        id: NodeId,
        node: &Node,
        mi: &MmaInput,
        out: u64,
    ) -> Result<()> {
        let w = exec.graph.node(node.inputs[0]);
        let (k, n, m) = (mi.k, w.shape().ne(1), mi.m);
        let reads_prepared = exec.mma.reads.contains(&id.index());
        let x_base = self.base(exec, node.inputs[1])?;
        let xs = match exec.mma_scratch {
            Some(b) if reads_prepared => self.buf(b)?.ptr,
            None if reads_prepared => {
                return Err(backend_err("no scratch for prepared activations"))
            }
            _ => x_base,
        };
        if reads_prepared && !exec.mma.ready.contains(&id.index()) {
            let mut p = Args::default();
            p.ptr(x_base)
                .i64(mi.offset)
                .i64(mi.stride)
                .i32(k as i32)
                .i32(m as i32)
                .ptr(xs);
            self.launch("mmv_prepare_x", grid1(m * k / 8, 256), 256, &mut p)?;
        }
        let (mt, nt) = mi.tile;
        let kw = mi.k_warps;
        let splits = source::mma_k_splits(k);
        let dst = if splits > 1 {
            self.partials_ptr(exec)?
        } else {
            out
        };
        let mut a = Args::default();
        a.ptr(self.base(exec, node.inputs[0])?)
            .ptr(xs)
            .ptr(dst)
            .i32(k as i32)
            .i32(n as i32)
            .i32(m as i32)
            .i32(kw as i32)
            .i64(mi.offset)
            .i64(mi.stride);
        let tail = if reads_prepared { "" } else { "_x" };
        self.launch(
            &format!("matmul_{}_mma_m{mt}n{nt}{tail}", weight_suffix(w.dtype)?),
            (
                m.div_ceil(8 * nt) as u32,
                n.div_ceil(16 * mt * (8 / kw)) as u32,
                splits as u32,
            ),
            256,
            &mut a,
        )?;
        if splits > 1 && !exec.fuse.unsummed.contains(&id.index()) {
            let mut r = Args::default();
            r.ptr(dst).ptr(out).i32((m * n) as i32).i32(splits as i32);
            self.launch("mmv_sum_splits", grid1(m * n, 256), 256, &mut r)?;
        }
        Ok(())
    }

    /// Launches RMSNorm node `norm` writing `out` (and the prepared layout at `xs` if not 0), or,
    /// with `tail`, the fused post-norm tail: `(residual + norm) · scale` into `out`.
    fn launch_norm(
        &self,
        exec: &Exec,
        norm: NodeId,
        out: u64,
        xs: u64,
        tail: Option<fuse_plan::NormTail>,
    ) -> Result<()> {
        let mut a = self.norm_args(exec, norm, out, xs, tail)?;
        a.ptr(0).ptr(0).i32(0).i32(0).f32(0.0);
        self.cache_write_args(exec, None, &mut a)?;
        self.launch_norm_args(exec, norm, &mut a)
    }

    /// The cache-write arguments of `rms_norm_f32`: the WriteRows node `write` whose store the
    /// launch does (its state, type, offset, rows, slots and the error word), or none.
    fn cache_write_args(&self, exec: &Exec, write: Option<NodeId>, a: &mut Args) -> Result<()> {
        let Some(w) = write else {
            a.ptr(0).i32(0).i64(0).i32(0).ptr(0).ptr(0);
            return Ok(());
        };
        let g = &exec.graph;
        let node = g.node(w);
        let row = g.node(node.inputs[1]).shape().ne(0).max(1);
        a.ptr(self.base(exec, w)?)
            .i32(code(node.dtype))
            .i64(node.layout.offset as i64)
            .i32((node.shape().n_elems() / row) as i32)
            .ptr(self.addr(exec, node.inputs[2])?)
            .ptr(self.err_word);
        Ok(())
    }

    /// Launches the RMSNorm node `norm` fused with the RoPE node `rope` that reads it: the rotated
    /// rows go to `out` (the RoPE node's output), or into a cache for the WriteRows node `write`.
    fn launch_norm_rope(
        &self,
        exec: &Exec,
        norm: NodeId,
        rope: NodeId,
        out: u64,
        write: Option<NodeId>,
    ) -> Result<()> {
        let g = &exec.graph;
        let node = g.node(rope);
        let Op::Rope(p) = node.op else {
            return Err(backend_err(format!(
                "node '{}' is not a RoPE",
                node.label(rope)
            )));
        };
        let d = g.node(node.inputs[0]).shape().dims();
        let ff = match node.inputs.get(2) {
            Some(&f) => self.addr(exec, f)?,
            None => 0,
        };
        let mut a = self.norm_args(exec, norm, out, 0, None)?;
        a.ptr(self.addr(exec, node.inputs[1])?)
            .ptr(ff)
            .i32(d[1] as i32)
            .i32(p.n_rot as i32)
            .f32(p.theta);
        self.cache_write_args(exec, write, &mut a)?;
        self.launch_norm_args(exec, norm, &mut a)
    }

    /// The arguments of `rms_norm_f32` up to its RoPE ones: RMSNorm node `norm` writing `out`,
    /// the prepared layout at `xs` (0 for none) and the fused tail, if any (with the split planes
    /// of its input).
    fn norm_args(
        &self,
        exec: &Exec,
        norm: NodeId,
        out: u64,
        xs: u64,
        tail: Option<fuse_plan::NormTail>,
    ) -> Result<Args> {
        let g = &exec.graph;
        let node = g.node(norm);
        let x = g.node(node.inputs[0]);
        let planes = tail.map_or(1, |t| t.planes);
        let x_ptr = if planes > 1 {
            // The split product's partial planes, left unsummed for this launch.
            self.partials_ptr(exec)?
        } else {
            self.base(exec, node.inputs[0])?
        };
        let mut a = Args::default();
        a.ptr(x_ptr).layout(&x.layout);
        let eps = self.norm_weight_args(exec, norm, &mut a)?;
        a.ptr(out).i32(x.shape().ne(0) as i32).f32(eps).ptr(xs);
        match tail {
            Some(t) => {
                a.ptr(self.addr(exec, t.residual)?);
                match t.scale {
                    Some(s) => a.ptr(self.addr(exec, s)?).i32(code(g.node(s).dtype)),
                    None => a.ptr(0).i32(-1),
                };
            }
            None => {
                a.ptr(0).ptr(0).i32(-1);
            }
        }
        a.i32(planes as i32).i64(x.shape().n_elems() as i64);
        match tail.and_then(|t| t.next) {
            Some(n2) => {
                a.ptr(self.base(exec, n2)?);
                let eps2 = self.norm_weight_args(exec, n2, &mut a)?;
                a.f32(eps2);
            }
            None => {
                a.ptr(0).ptr(0).i32(-1).f32(0.0);
            }
        }
        Ok(a)
    }

    /// Pushes RMSNorm node `norm`'s weight (pointer and type code, or none) and returns its eps.
    fn norm_weight_args(&self, exec: &Exec, norm: NodeId, a: &mut Args) -> Result<f32> {
        let g = &exec.graph;
        let node = g.node(norm);
        let Op::RmsNorm { eps } = node.op else {
            return Err(backend_err(format!(
                "node '{}' is not an RMSNorm",
                node.label(norm)
            )));
        };
        match node.inputs.get(1) {
            Some(&w) => a.ptr(self.base(exec, w)?).i32(code(g.node(w).dtype)),
            None => a.ptr(0).i32(-1),
        };
        Ok(eps)
    }

    /// The split-K partial-sum scratch of the `_mma_` products.
    fn partials_ptr(&self, exec: &Exec) -> Result<u64> {
        let part = exec
            .mma_partials
            .ok_or_else(|| backend_err("no scratch for split partial sums"))?;
        Ok(self.buf(part)?.ptr)
    }

    /// Launches `rms_norm_f32` for RMSNorm node `norm` with its complete arguments.
    fn launch_norm_args(&self, exec: &Exec, norm: NodeId, a: &mut Args) -> Result<()> {
        let x = exec.graph.node(exec.graph.node(norm).inputs[0]);
        // One block per row; wide rows (the 5376-wide hidden state of a decode step is a
        // single row) get 1024 threads so the row is read in few dependent rounds.
        let threads = if x.shape().ne(0) >= 2048 { 1024 } else { 256 };
        self.launch(
            "rms_norm_f32",
            (x.shape().n_rows() as u32, 1, 1),
            threads,
            a,
        )
    }

    /// The `_mma_` route settings now.
    fn mma_config(&self) -> MmaConfig {
        MmaConfig {
            enabled: self.mma_matvec,
            prefill: self.mma_prefill,
            mt: self.mma_mt,
            prefill_row_warps: self.mma_prefill_row_warps,
            prefill_tile: self.mma_prefill_tile,
            force_prepare: self.mma_prepare,
        }
    }

    /// Base address of `node`'s storage and its layout.
    fn base(&self, exec: &Exec, node: NodeId) -> Result<u64> {
        Ok(self.buf(exec.node_buffer[node.index()])?.ptr)
    }

    /// Address of a dense 1-D int array node's first element.
    fn addr(&self, exec: &Exec, node: NodeId) -> Result<u64> {
        let n = exec.graph.node(node);
        Ok(self.base(exec, node)? + (n.layout.offset * elem_bytes(n.dtype).max(1)) as u64)
    }

    fn run_node(&self, exec: &Exec, id: NodeId, node: &Node) -> Result<()> {
        let g = &exec.graph;
        let inp = |k: usize| g.node(node.inputs[k]);
        let out = self.base(exec, id)?;
        let n_out = node.shape().n_elems();
        if exec.fuse.skip.contains(&id.index()) {
            return Ok(());
        }
        match exec.fuse.fused.get(&id.index()) {
            Some(Fused::Tail(t)) => {
                // The next norm's prepared activations, if its products read them.
                let xs = match (t.next, exec.mma_scratch) {
                    (Some(n2), Some(b)) if exec.mma.norms.contains(&n2.index()) => self.buf(b)?.ptr,
                    _ => 0,
                };
                return self.launch_norm(exec, t.norm, out, xs, Some(*t));
            }
            Some(Fused::Rope { norm, write }) => {
                return self.launch_norm_rope(exec, *norm, id, out, *write)
            }
            Some(Fused::NormWrite { write }) => {
                let mut a = self.norm_args(exec, id, out, 0, None)?;
                let heads = node.shape().ne(1);
                a.ptr(0).ptr(0).i32(heads as i32).i32(0).f32(0.0);
                self.cache_write_args(exec, Some(*write), &mut a)?;
                return self.launch_norm_args(exec, id, &mut a);
            }
            None => {}
        }
        let unsupported = |why: String| {
            backend_err(format!(
                "{} (node '{}'): {why}",
                node.op.name(),
                node.label(id)
            ))
        };
        match &node.op {
            Op::Input | Op::Weight | Op::State | Op::View | Op::Reshape | Op::Permute(_) => Ok(()),
            Op::GetRows => {
                let t = inp(0);
                let (k, n_rows) = (t.shape().ne(0), t.shape().ne(1));
                if k % 32 != 0 {
                    return Err(unsupported(format!(
                        "rows of {k} elements (needs a multiple of 32)"
                    )));
                }
                let n_ids = inp(1).shape().n_elems();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .ptr(self.addr(exec, node.inputs[1])?)
                    .ptr(out);
                a.i32(k as i32)
                    .i32(n_rows as i32)
                    .i32(n_ids as i32)
                    .ptr(self.err_word);
                self.launch(
                    &format!("get_rows_{}", weight_suffix(t.dtype)?),
                    grid1(k / 32 * n_ids, 128),
                    128,
                    &mut a,
                )
            }
            Op::MatMul => {
                if let Some(mi) = exec.mma.products.get(&id.index()) {
                    return self.launch_mma(exec, id, node, mi, out);
                }
                let (w, x) = (inp(0), inp(1));
                let (k, n) = (w.shape().ne(0), w.shape().ne(1));
                if k % 32 != 0 {
                    return Err(unsupported(format!(
                        "rows of {k} elements (needs a multiple of 32)"
                    )));
                }
                let stride = uniform_row_stride(&x.layout).ok_or_else(|| {
                    unsupported("activation rows are not uniformly strided".into())
                })?;
                let m = x.shape().n_rows();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .ptr(out);
                a.i32(k as i32)
                    .i32(n as i32)
                    .i32(m as i32)
                    .i64(x.layout.offset as i64)
                    .i64(stride);
                let tile = source::MATMUL_ROW_TILES
                    .iter()
                    .copied()
                    .filter(|&t| t <= self.max_row_tile)
                    .find(|&t| t >= m)
                    .unwrap_or(self.max_row_tile);
                // Q4_K, Q6_K and Q8_0 rows of whole 256-weight groups with 16-byte-aligned
                // activations take the fast kernels.
                let fast = matches!(w.dtype, DType::Q4_K | DType::Q6_K | DType::Q8_0)
                    && k % 256 == 0
                    && x.layout.offset % 4 == 0
                    && stride % 4 == 0;
                if m > source::TENSOR_CORE_MIN_ROWS && self.tensor_cores {
                    return self.launch(
                        &format!("matmul_tc_{}", weight_suffix(w.dtype)?),
                        (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1),
                        128,
                        &mut a,
                    );
                }
                let family = if fast {
                    match w.dtype {
                        DType::Q4_K => "q4_k_fast",
                        DType::Q6_K => "q6_k_fast",
                        _ => "q8_0_fast",
                    }
                } else {
                    weight_suffix(w.dtype)?
                };
                let per_warp = if fast {
                    source::fast_rows_per_warp(tile)
                } else {
                    1
                };
                self.launch(
                    &format!("matmul_{family}_r{tile}"),
                    (n.div_ceil(4 * per_warp) as u32, m.div_ceil(tile) as u32, 1),
                    128,
                    &mut a,
                )
            }
            Op::MatMulId => {
                let (w, x, ids) = (inp(0), inp(1), inp(2));
                let (k, n, n_expert) = (w.shape().ne(0), w.shape().ne(1), w.shape().ne(2));
                if k % 32 != 0 {
                    return Err(unsupported(format!(
                        "rows of {k} elements (needs a multiple of 32)"
                    )));
                }
                let stride = uniform_row_stride(&x.layout).ok_or_else(|| {
                    unsupported("activation rows are not uniformly strided".into())
                })?;
                let (n_used, t) = (ids.shape().ne(0), ids.shape().ne(1));
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .ptr(self.addr(exec, node.inputs[2])?)
                    .ptr(out);
                a.i32(k as i32)
                    .i32(n as i32)
                    .i32(n_expert as i32)
                    .i32(n_used as i32)
                    .i32(x.shape().ne(1) as i32);
                a.i64(x.layout.offset as i64).i64(stride).ptr(self.err_word);
                self.launch(
                    &format!("matmul_id_{}", weight_suffix(w.dtype)?),
                    (n.div_ceil(4) as u32, (n_used * t) as u32, 1),
                    128,
                    &mut a,
                )
            }
            Op::Binary(op) => {
                let (x, y) = (inp(0), inp(1));
                // b broadcast: output dims, zero strides where b has size 1.
                let mut lb = y.layout;
                for i in 0..4 {
                    if y.shape().ne(i) == 1 {
                        lb.strides[i] = 0;
                    }
                }
                lb.shape = node.shape();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .i32(code(y.dtype))
                    .layout(&lb);
                a.ptr(out)
                    .i64(n_out as i64)
                    .i32(if *op == BinaryOp::Add { 0 } else { 1 });
                self.launch("binary_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Unary(op) => {
                let (k, p) = match op {
                    UnaryOp::Scale(s) => (0, *s),
                    UnaryOp::Gelu => (1, 0.0),
                    UnaryOp::Silu => (2, 0.0),
                    UnaryOp::Softcap(c) => (3, *c),
                };
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(out)
                    .i64(n_out as i64)
                    .i32(k)
                    .f32(p);
                self.launch("unary_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Glu(op) => {
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .layout(&inp(1).layout);
                a.ptr(out)
                    .i64(n_out as i64)
                    .i32(if *op == GluOp::GeGlu { 0 } else { 1 });
                self.launch("glu_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Contiguous => {
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(out)
                    .i64(n_out as i64);
                self.launch("copy_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Concat { dim } => {
                let d = node.shape().dims();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .layout(&inp(1).layout)
                    .ptr(out);
                for v in d {
                    a.i64(v as i64);
                }
                a.i32(*dim as i32).i64(inp(0).shape().ne(*dim) as i64);
                self.launch("concat_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::RmsNorm { .. } => {
                let xs = match exec.mma_scratch {
                    Some(b) if exec.mma.norms.contains(&id.index()) => self.buf(b)?.ptr,
                    _ => 0,
                };
                self.launch_norm(exec, id, out, xs, None)
            }
            Op::Rope(p) => {
                let x = inp(0);
                let d = x.shape().dims();
                let ff = match node.inputs.get(2) {
                    Some(&f) => self.addr(exec, f)?,
                    None => 0,
                };
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(self.addr(exec, node.inputs[1])?)
                    .ptr(ff)
                    .ptr(out);
                a.i32(d[0] as i32)
                    .i32(d[1] as i32)
                    .i32((d[1] * d[2]) as i32)
                    .i32(p.n_rot as i32)
                    .f32(p.theta);
                self.launch("rope_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Softmax => {
                let x = inp(0);
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(out)
                    .i32(x.shape().ne(0) as i32);
                self.launch(
                    "softmax_f32",
                    (x.shape().n_rows() as u32, 1, 1),
                    256,
                    &mut a,
                )
            }
            Op::Attention(p) => {
                let (q, k, v) = (inp(0), inp(1), inp(2));
                let (d, d_v) = (q.shape().ne(0), v.shape().ne(0));
                if d > 512 || d_v > 512 {
                    return Err(unsupported(format!("head dims {d}/{d_v} above 512")));
                }
                let mask = match node.inputs.get(5) {
                    Some(&m) => self.base(exec, m)? + (g.node(m).layout.offset * 4) as u64,
                    None => 0,
                };
                let (kind, window) = match p.mask {
                    AttnMask::None | AttnMask::Explicit => (0, 0),
                    AttnMask::Causal => (1, 0),
                    AttnMask::SlidingWindow { window } => (2, window as i32),
                };
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?).layout(&q.layout);
                a.ptr(self.base(exec, node.inputs[1])?)
                    .i32(code(k.dtype))
                    .layout(&k.layout);
                a.ptr(self.base(exec, node.inputs[2])?)
                    .i32(code(v.dtype))
                    .layout(&v.layout);
                a.ptr(self.addr(exec, node.inputs[3])?)
                    .ptr(self.addr(exec, node.inputs[4])?)
                    .ptr(mask)
                    .ptr(out);
                a.i32(d as i32)
                    .i32(d_v as i32)
                    .i32(q.shape().ne(1) as i32)
                    .i32(k.shape().ne(1) as i32)
                    .i32(k.shape().ne(2) as i32);
                a.f32(p.scale)
                    .i32(kind)
                    .i32(window)
                    .i32(i32::from(p.kv_layout == KvLayout::Ring))
                    .ptr(self.err_word);
                let (n_head, n_tok) = (q.shape().ne(1), q.shape().ne(2));
                let (n_split, scratch) = match exec.attn_scratch.get(&id.index()) {
                    Some(&(b, n)) => (n, self.buf(b)?.ptr),
                    None => (1, 0),
                };
                a.i32(n_split as i32).ptr(scratch);
                let route = self.attention_route(g, node);
                self.launch_smem(
                    route.name(),
                    (
                        n_head as u32,
                        route.query_blocks(n_tok) as u32,
                        n_split as u32,
                    ),
                    route.threads(),
                    route.smem_bytes() as u32,
                    &mut a,
                )?;
                if n_split > 1 {
                    let mut c = Args::default();
                    c.ptr(scratch)
                        .ptr(out)
                        .i32(d_v as i32)
                        .i32(n_head as i32)
                        .i32(n_split as i32);
                    self.launch(
                        "attention_combine_f32",
                        (n_head as u32, n_tok as u32, 1),
                        128,
                        &mut c,
                    )?;
                }
                Ok(())
            }
            Op::WriteRows => {
                let src = inp(1);
                let row = src.shape().ne(0);
                let n = src.shape().n_rows();
                let mut a = Args::default();
                a.ptr(out)
                    .i32(code(node.dtype))
                    .i64(node.layout.offset as i64)
                    .i32((n_out / row.max(1)) as i32);
                a.ptr(self.base(exec, node.inputs[1])?)
                    .layout(&src.layout)
                    .ptr(self.addr(exec, node.inputs[2])?);
                a.i32(row as i32).i32(n as i32).ptr(self.err_word);
                self.launch("write_rows", grid1(row * n, 256), 256, &mut a)
            }
            Op::Argmax => {
                let x = inp(0);
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(out)
                    .i32(x.shape().ne(0) as i32);
                // One block per row; a vocabulary-wide row gets 1024 threads (ties resolve to the
                // lowest index whatever the thread count).
                let threads = if x.shape().ne(0) >= 8192 { 1024 } else { 256 };
                self.launch(
                    "argmax_f32",
                    (x.shape().n_rows() as u32, 1, 1),
                    threads,
                    &mut a,
                )
            }
            Op::TopK(k) => {
                let x = inp(0);
                let rows = x.shape().n_rows();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(out)
                    .i32(x.shape().ne(0) as i32)
                    .i32(*k as i32)
                    .i64(rows as i64);
                self.launch("top_k_f32", grid1(rows, 64), 64, &mut a)
            }
            Op::MoeWeights { renormalize } => {
                let (probs, ids) = (inp(0), inp(1));
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&probs.layout)
                    .ptr(self.addr(exec, node.inputs[1])?);
                match node.inputs.get(2) {
                    Some(&s) => a.ptr(self.base(exec, s)?).i32(code(g.node(s).dtype)),
                    None => a.ptr(0).i32(-1),
                };
                let (k, t) = (ids.shape().ne(0), ids.shape().ne(1));
                a.ptr(out)
                    .i32(probs.shape().ne(0) as i32)
                    .i32(k as i32)
                    .i32(t as i32)
                    .i32(i32::from(*renormalize))
                    .ptr(self.err_word);
                self.launch("moe_weights_f32", grid1(t, 64), 64, &mut a)
            }
        }
    }
}

impl CudaBackend {
    /// Replays the captured CUDA graph when there is one (and replay is on), else launches every
    /// op; does not synchronise.
    fn replay_or_launch(&self, exec: &Exec) -> Result<()> {
        match &exec.captured {
            Some(g) if self.use_graphs => {
                g.launch().map_err(|e| driver_err("replaying the graph", e))
            }
            _ => self.launch_all(exec),
        }
    }

    fn launch_all(&self, exec: &Exec) -> Result<()> {
        for (i, node) in exec.graph.nodes().iter().enumerate() {
            self.run_node(exec, NodeId::from_index(i), node)?;
        }
        Ok(())
    }

    fn run_exec(&self, exec: &mut Exec, exe: ExecId) -> Result<()> {
        self.bind()?;
        self.zero(self.err_word, 4)?;
        if self.use_graphs && exec.runs > 0 && exec.captured.is_none() {
            // Record the launch sequence once; every address it uses stays fixed while loaded.
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| driver_err("beginning graph capture", e))?;
            let launched = self.launch_all(exec);
            let captured = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
            launched?;
            exec.captured = captured.map_err(|e| driver_err("instantiating the graph", e))?;
        }
        self.replay_or_launch(exec)?;
        self.stream
            .synchronize()
            .map_err(|e| driver_err("running the graph", e))?;
        exec.runs += 1;
        let mut word = [0u8; 4];
        self.dtoh(&mut word, self.err_word)?;
        let reason = match i32::from_le_bytes(word) {
            0 => return Ok(()),
            1 => "a row id is outside the table",
            2 => "a slot is outside the state",
            3 => "an expert id is outside the experts",
            4 => "n_kv does not fit the K/V rows",
            _ => "unknown kernel error",
        };
        Err(graph::Error::Runtime {
            op: "cuda",
            node: format!("executable #{}", exe.0),
            reason: reason.into(),
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn memory_info(&self) -> Option<(u64, u64)> {
        self.bind().ok()?;
        cu::mem_get_info()
            .ok()
            .map(|(free, total)| (free as u64, total as u64))
    }

    fn alloc(&mut self, dtype: DType, shape: Shape) -> Result<BufferId> {
        let ptr = self.malloc(byte_size(dtype, shape)?)?;
        Ok(self.insert(DevBuf { ptr, dtype, shape }))
    }

    fn upload(&mut self, dtype: DType, shape: Shape, data: HostBytes) -> Result<BufferId> {
        let bytes = byte_size(dtype, shape)?;
        if data.len() != bytes {
            return Err(graph::Error::Handle(format!(
                "upload of {dtype} {shape}: expected {bytes} bytes, got {}",
                data.len()
            )));
        }
        let ptr = self.malloc(bytes)?;
        self.htod(ptr, data.as_slice())?;
        Ok(self.insert(DevBuf { ptr, dtype, shape }))
    }

    fn write(&mut self, buffer: BufferId, offset: usize, data: HostData<'_>) -> Result<()> {
        let b = self.buf(buffer)?;
        let n = b.shape.n_elems();
        if offset.checked_add(data.len()).is_none_or(|end| end > n) {
            return Err(graph::Error::Handle(format!(
                "write of {} elements at {offset} into a {n}-element buffer",
                data.len()
            )));
        }
        let bytes: Vec<u8> = match (b.dtype, data) {
            (DType::F32, HostData::F32(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (DType::F16, HostData::F32(v)) => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            (DType::I32, HostData::I32(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (dt, _) => {
                return Err(graph::Error::Handle(format!(
                    "cannot write that data into a {dt} buffer"
                )))
            }
        };
        let at = b.ptr + (offset * elem_bytes(b.dtype)) as u64;
        // The range [offset, offset + len) was checked against the buffer's size above.
        self.htod(at, &bytes)
    }

    fn read(&self, buffer: BufferId) -> Result<TensorData> {
        let b = self.buf(buffer)?;
        let mut bytes = vec![0u8; byte_size(b.dtype, b.shape)?];
        self.dtoh(&mut bytes, b.ptr)?;
        Ok(match b.dtype {
            DType::I32 => TensorData::I32(
                bytes
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|c| i32::from_le_bytes(*c))
                    .collect(),
            ),
            dt => TensorData::F32(
                gguf::quant::dequantize_to_vec(dt, &bytes)
                    .map_err(|e| backend_err(e.to_string()))?,
            ),
        })
    }

    fn free(&mut self, buffer: BufferId) -> Result<()> {
        let b = self.buf(buffer)?;
        let ptr = b.ptr;
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: the buffer is removed from the table below, so it is freed once.
        unsafe { cu::free_sync(ptr) }.map_err(|e| driver_err("freeing", e))?;
        self.buffers[buffer.0] = None;
        Ok(())
    }

    fn load(&mut self, graph: &Graph, bindings: &Bindings) -> Result<ExecId> {
        let plan = MemoryPlan::new(graph);
        let mut owned = Vec::new();
        let mut slot_buffers = Vec::new();
        for slot in &plan.slots {
            let id = self.alloc(slot.dtype, Shape::new(&[slot.n_elems])?)?;
            owned.push(id);
            slot_buffers.push(id);
        }
        let mut attn_scratch = HashMap::new();
        for (i, node) in graph.nodes().iter().enumerate() {
            if let Op::Attention(_) = node.op {
                let q = graph.node(node.inputs[0]).shape();
                let k = graph.node(node.inputs[1]).shape();
                let d_v = graph.node(node.inputs[2]).shape().ne(0);
                let blocks = self.attention_route(graph, node).query_blocks(q.ne(2));
                let n_split = attention_splits(q.ne(1), q.ne(2), blocks, k.ne(2));
                if n_split > 1 {
                    let elems = q.ne(1) * q.ne(2) * n_split * (d_v + 2);
                    let b = self.alloc(DType::F32, Shape::new(&[elems])?)?;
                    owned.push(b);
                    attn_scratch.insert(i, (b, n_split));
                }
            }
        }
        let mma = mma_plan::plan(&self.mma_config(), graph);
        let fuse = if self.fusion {
            fuse_plan::plan_for(graph, &mma)
        } else {
            FusePlan::default()
        };
        let mma_scratch = if mma.scratch_bytes > 0 {
            let b = self.alloc(DType::F32, Shape::new(&[mma.scratch_bytes / 4])?)?;
            owned.push(b);
            Some(b)
        } else {
            None
        };
        let mma_partials = if mma.partial_elems > 0 {
            let b = self.alloc(DType::F32, Shape::new(&[mma.partial_elems])?)?;
            owned.push(b);
            Some(b)
        } else {
            None
        };
        let mut node_buffer: Vec<BufferId> = Vec::with_capacity(graph.nodes().len());
        for (i, node) in graph.nodes().iter().enumerate() {
            let id = NodeId::from_index(i);
            let buffer = match &plan.storage[i] {
                Storage::Slot(k) => slot_buffers[*k],
                Storage::Alias(root) => node_buffer[root.index()],
                Storage::Leaf => match (bindings.get(id), &node.op) {
                    (Some(b), _) => {
                        let buf = self.buf(b)?;
                        if buf.dtype != node.dtype || buf.shape != node.shape() {
                            return Err(graph::Error::Binding {
                                node: node.label(id),
                                reason: format!(
                                    "leaf is {} {}, buffer is {} {}",
                                    node.dtype,
                                    node.shape(),
                                    buf.dtype,
                                    buf.shape
                                ),
                            });
                        }
                        b
                    }
                    (None, Op::Input) => {
                        let b = self.alloc(node.dtype, node.shape())?;
                        owned.push(b);
                        b
                    }
                    (None, _) => {
                        return Err(graph::Error::Binding {
                            node: node.label(id),
                            reason: format!("{} leaf is not bound to a buffer", node.op.name()),
                        })
                    }
                },
            };
            node_buffer.push(buffer);
        }
        self.execs.push(Some(Exec {
            graph: graph.clone(),
            node_buffer,
            owned,
            runs: 0,
            captured: None,
            attn_scratch,
            mma_scratch,
            mma_partials,
            mma,
            fuse,
        }));
        Ok(ExecId(self.execs.len() - 1))
    }

    fn buffer_of(&self, exe: ExecId, node: NodeId) -> Result<BufferId> {
        let exec = self
            .execs
            .get(exe.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                graph::Error::Handle(format!("cuda executable #{} does not exist", exe.0))
            })?;
        exec.node_buffer
            .get(node.index())
            .copied()
            .ok_or(graph::Error::UnknownNode(node.index()))
    }

    fn run(&mut self, exe: ExecId) -> Result<()> {
        let mut exec = self
            .execs
            .get_mut(exe.0)
            .and_then(Option::take)
            .ok_or_else(|| {
                graph::Error::Handle(format!("cuda executable #{} does not exist", exe.0))
            })?;
        let result = self.run_exec(&mut exec, exe);
        self.execs[exe.0] = Some(exec);
        result
    }

    fn unload(&mut self, exe: ExecId) -> Result<()> {
        let exec = self
            .execs
            .get_mut(exe.0)
            .and_then(Option::take)
            .ok_or_else(|| {
                graph::Error::Handle(format!("cuda executable #{} does not exist", exe.0))
            })?;
        drop(exec.captured);
        for b in exec.owned {
            self.free(b)?;
        }
        Ok(())
    }
}
