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
    HostData, KvLayout, Layout, MemoryPlan, Node, NodeId, Op, Shape, TensorData, UnaryOp,
};

use crate::attention_plan::{
    self, attention_splits, AttentionConfig, AttentionKernel, AttentionShape, MultiQueryAttention,
};
use crate::branch_plan;
use crate::fuse_plan::{self, FusePlan, Fused};
use crate::mma_plan::{self, uniform_row_stride, MmaConfig, MmaInput, MmaPlan, Q8Input};
use crate::nvrtc;
use crate::source;

mod branch;
mod carveout;
mod exec;
mod fused;
mod gemm;
mod launch;
mod ops;
mod read_ceiling;
mod wgmma;

pub use read_ceiling::READ_MAX_RUNS;

use exec::Exec;
use launch::{code, grid1, repacked_suffix, weight_suffix, Args, Footprint};

type Result<T> = graph::Result<T>;

/// The error for a handle that names no loaded graph.
fn no_exec(exe: ExecId) -> graph::Error {
    graph::Error::Handle(format!("cuda executable #{} does not exist", exe.0))
}

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

/// Runs `f` between a profiler start and stop on device `ordinal`'s primary context (the one
/// every [`CudaBackend`] uses), draining the device before and after, so that
/// `ncu --profile-from-start off` records only the work `f` queues. Without a profiler
/// attached the start and stop do nothing.
pub fn profiled<T, E: From<graph::Error>>(
    ordinal: usize,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if !cuda_available() {
        return Err(
            backend_err("CUDA is not available (driver, libnvrtc or a device missing)").into(),
        );
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("opening the device", e))?;
    let sync = || {
        ctx.bind_to_thread()
            .and_then(|_| ctx.synchronize())
            .map_err(|e| driver_err("synchronising the device", e))
    };
    sync()?;
    #[allow(unsafe_code)]
    // SAFETY: takes no arguments; the context is current on this thread (sync above).
    unsafe { sys::cuProfilerStart() }
        .result()
        .map_err(|e| driver_err("starting the profiler", e))?;
    let out = f();
    let synced = sync();
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe { sys::cuProfilerStop() }
        .result()
        .map_err(|e| driver_err("stopping the profiler", e))?;
    synced?;
    out
}

struct DevBuf {
    ptr: u64,
    dtype: DType,
    shape: Shape,
}

/// `SPECULA_PRODUCTS_AS_READS=1` (see `CudaBackend::set_products_as_reads`), said aloud when on
/// since it makes every output wrong.
fn products_as_reads_from_env() -> bool {
    let on = std::env::var("SPECULA_PRODUCTS_AS_READS").is_ok_and(|v| v == "1");
    if on {
        eprintln!(
            "SPECULA_PRODUCTS_AS_READS=1: weight products only read their weights; every output is wrong (a measurement mode)"
        );
    }
    on
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

/// A tile `MxN` from environment variable `var`, if it parses and `allowed` takes it (tuning
/// knobs; anything else is ignored).
fn tile_from_env(var: &str, allowed: impl Fn((usize, usize)) -> bool) -> Option<(usize, usize)> {
    let v = std::env::var(var).ok()?;
    let (mt, nt) = v.split_once('x')?;
    let tile = (mt.parse().ok()?, nt.parse().ok()?);
    allowed(tile).then_some(tile)
}

/// Elements of a buffer from their little-endian bytes: i32, or floats of `dtype` as f32.
fn decode_elements(dtype: DType, bytes: &[u8]) -> Result<TensorData> {
    Ok(match dtype {
        DType::I32 => TensorData::I32(
            bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|c| i32::from_le_bytes(*c))
                .collect(),
        ),
        dt => TensorData::F32(
            gguf::quant::dequantize_to_vec(dt, bytes).map_err(|e| backend_err(e.to_string()))?,
        ),
    })
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

/// Weight tiles a block of an expert-grouped tensor-core product takes by default: 2, which ran
/// about 2 % faster than 4 for verify batches of 2–8 tokens and the same at 16 (bench/NOTES.md).
pub const MOE_TILES_DEFAULT: usize = 2;

/// Whether the tensor-core matrix-vector kernels run Q4_K/Q6_K/Q8_0 products (up to 16 activation
/// rows, and prefill chunks while `mma_prefill` is on; `SPECULA_MMA=0` turns them off, leaving
/// the f32 vector and tiled kernels: an A/B knob for `cargo xtask bench`).
fn mma_matvec_from_env() -> bool {
    std::env::var("SPECULA_MMA").map_or(true, |v| v != "0")
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    /// The kernel names launched since [`CudaBackend::record_launches`] turned recording on (a
    /// test aid: which kernel a node ran, not only its bits).
    launch_log: std::cell::RefCell<Option<Vec<String>>>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    use_graphs: bool,
    tensor_cores: bool,
    /// Largest activation-row tile of the vector matmul kernels (16, or lower for tuning).
    max_row_tile: usize,
    /// Q4_K/Q6_K/Q8_0 products take the tensor-core `_mma_` kernels (up to 16 rows, and more
    /// while `mma_prefill` is on).
    mma_matvec: bool,
    /// f16 K/V attention of head dim 256/512 that neither the tensor-core nor the multi-query
    /// kernel takes runs on the wide kernel (`SPECULA_WIDE_ATTENTION=0`: the generic one, an A/B
    /// knob).
    wide_attention: bool,
    /// Which batches' attention over f16 K/V rows of 256/512 takes the multi-query kernel (by
    /// default those of more than 16 queries; `SPECULA_MQ_ATTENTION=0|all`, A/B knobs).
    mq_attention: MultiQueryAttention,
    /// Batches of up to 16 queries over f16 K/V rows of 256/512 take the tensor-core attention
    /// (sm_80+; `SPECULA_ATT_TC=0`: the wide kernels, an A/B knob).
    tc_attention: bool,
    /// The device's opt-in shared memory per block (bytes), for the multi-query attention.
    max_smem: usize,
    /// The shared-memory share the launches of step graphs prefer (`carveout.rs`), in per cent;
    /// `None` leaves the driver's choice (`SPECULA_SMEM_CARVEOUT=driver`).
    smem_carveout: Option<i32>,
    /// The preference of the graph being launched (`launch_all`), which `launch_ex` passes on.
    launch_carveout: std::cell::Cell<Option<i32>>,
    /// Expert-indexed products of Q4_K, Q6_K and Q8_0 experts take the tensor-core
    /// `matmul_id_tc_<type>` kernels where their shapes allow (`SPECULA_MMA_ID=0`: the scalar
    /// `matmul_id_<type>` kernels; an A/B and test knob).
    mma_id: bool,
    /// Expert-indexed products of batches of 2 to [`source::MOE_GROUP_MAX_PAIRS`] (token, slot) pairs
    /// group the pairs by expert (`matmul_id_tcg_<type>`, `matmul_id_g_<type>`), so a picked
    /// expert's weights are read once a launch (`SPECULA_MOE_GROUP=0`: a pair a block row, as a
    /// decode step; an A/B and test knob). The same bits either way.
    moe_group: bool,
    /// Weight tiles a block of an expert-grouped tensor-core product (`matmul_id_tcg_<type>`)
    /// takes in turn, so a group's search serves several (`SPECULA_MOE_TILES`, 1 to 16, default
    /// [`MOE_TILES_DEFAULT`]). The same bits for any value.
    moe_tiles: usize,
    /// `write` and a run's error-word reset are queued on the stream, and a run waits once, for
    /// its error word (`SPECULA_QUEUED_WRITES=0`: each waits for the device, as before; an A/B
    /// knob).
    queue_writes: bool,
    /// Host copies of the bytes `write` queued on the stream without waiting, kept until the
    /// stream's next synchronisation (`htod_queued`); then dropped.
    queued_writes: std::cell::RefCell<Vec<Vec<u8>>>,
    /// Most blocks of a tensor-core attention launch (0: a block per unit); eight per
    /// multiprocessor, or `SPECULA_ATT_TC_BLOCKS` (an A/B knob).
    att_tc_blocks: usize,
    /// Q8_0 and Q6_K weights of int8 tensor-core q8 products and of `_mma_` products are read
    /// from a copy in `q8_0_repack`'s or `q6_k_repack`'s layout
    /// (`SPECULA_Q8_REPACK=0` reads them as stored; an A/B and test knob).
    q8_repack: bool,
    /// Those copies, by the index of the weight buffer they copy (made when a graph that needs
    /// one loads, shared by later graphs, freed with the weight buffer).
    q8_repacked: HashMap<usize, BufferId>,
    /// `SPECULA_MMA_MT` (1 or 2): forces the `_mma_` kernels' weight tiles per warp (tuning).
    mma_mt: Option<usize>,
    /// `SPECULA_Q8_SPLITS` (1 to 8): forces the q8 products' split-K blocks (tuning).
    q8_splits: Option<usize>,
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
    /// `SPECULA_MMA_VERIFY_TILE=MxN`: the `_mma_` tile of 9–16-row products (tuning; 1x1, 1x2
    /// or 2x2).
    mma_verify_tile: Option<(usize, usize)>,
    /// Forces every `_mma_` product to prepare its activations (`Some(true)`) or to split them in
    /// place (`Some(false)`) instead of `source::mma_prepares` (tests and A/B runs;
    /// `SPECULA_MMA_PREPARE=0|1`).
    mma_prepare: Option<bool>,
    /// Prepared Q4_K products of at most `source::LIMB_MAX_ROWS` rows take the exact-integer
    /// `matmul_q4_k_limb_n*` kernels (`SPECULA_Q4K_LIMBS=1`; off by default, see `MmaConfig`).
    q4k_limbs: bool,
    /// A measurement mode (`SPECULA_PRODUCTS_AS_READS=1`, `set_products_as_reads`): every
    /// weight product launches the read ceiling's kernel over its weights instead, so a step
    /// shows what its other kernels cost beside products that only read. Outputs are wrong.
    products_as_reads: bool,
    /// One-activation-tile products of up to 8 rows (limbs: 4) take the persistent `_p` kernels,
    /// the same arithmetic walked by two blocks per multiprocessor, and with `mma_persist_m2`
    /// 9–16-row ones the `_m2n2_p` kernels (`SPECULA_MMA_PERSIST=0`: the one-shot kernels for
    /// all, an A/B knob).
    mma_persist: bool,
    /// With `mma_persist`, Q4_K and Q6_K products of 9–16 rows on the (2, 2) tile take the
    /// persistent `_m2n2_p` kernels (`source::persist_two_tiles`), the one-shot kernels' bits
    /// walked by one block per multiprocessor (`SPECULA_MMA_PERSIST_M2=0`: the one-shot ones,
    /// an A/B knob).
    mma_persist_m2: bool,
    /// Persistent products of one activation row (decode and draft steps) take the `_p1`
    /// kernels, the same bits with less work (`source::persist_one_row`;
    /// `SPECULA_MMA_ONE=0`: the `_p` ones, an A/B and test knob).
    mma_one_row: bool,
    /// The device and the module can run the wgmma verify products (`wgmma.rs`): an sm_90a
    /// build and the kernels' shared memory a block (up to 216 KiB).
    wgmma_supported: bool,
    /// Prepared Q4_K and repacked Q6_K products of 9–16 rows take the wgmma kernels where
    /// supported (the default there; `SPECULA_WGMMA_VERIFY=0` keeps the rows kernels, an A/B and
    /// test knob).
    wgmma_verify: bool,
    /// The input whose B image the image buffer holds in this launch sequence and the weight
    /// type whose layout the image has (`wgmma.rs`; compared by `MmaInput::same_input`).
    wg_image_of: std::cell::Cell<Option<(MmaInput, DType)>>,
    /// wgmma verify products that lead a chain do so late (`PDL_LEAD_LATE`: a Q4_K product asks
    /// for its first weights before it waits for the kernel before it; the default, with
    /// `pdl_late`), else as plain leads (`SPECULA_WG_LATE=0`, an A/B knob).
    wg_late: bool,
    /// Attentions of at least this many queries on the wide f16 kernels run a block per two
    /// heads of one K/V group (the `_g2` kernels, same bits) where the group has an even number
    /// of heads; None: a block per head always. `SPECULA_ATT_GROUP=n` sets it, 0 for None (A/B
    /// knob). By default 4: a verify batch of 16 at depth 4K on an H200 took 32.0 ms grouped
    /// against 33.9, but a decode step at 32K 18.8 against 17.9 (half the blocks in flight).
    att_group: Option<usize>,
    /// The device's multiprocessors (the persistent kernels' grid).
    sm_count: usize,
    /// Kernels launch with programmatic stream serialization (sm_90 and later, unless
    /// `SPECULA_PDL=0`): each one's launch overlaps the tail of the kernel before it, which
    /// every kernel waits for on entry (`pdl_entry` in common.cuh) before touching memory, but a
    /// product chain's siblings, which wait at exit (`launch_product`).
    pdl: bool,
    /// Tensor-core products that touch nothing the products launched right before them touch
    /// start at once as those products' siblings (`pdl_enter` in common.cuh), so the q, k and v
    /// products, or gate and up, overlap each other's ramp and tail (with `pdl`; unless
    /// `SPECULA_PDL_SIBLINGS=0`, an A/B knob).
    pdl_siblings: bool,
    /// Persistent products (and, with `wg_late`, wgmma verify products) that lead a chain wait
    /// inside their body, after their setup and first Q4_K weight loads (`PDL_LEAD_LATE`; with
    /// `pdl` and `pdl_siblings`; `SPECULA_PDL_LATE=0`, an A/B knob).
    pdl_late: bool,
    /// The products launched since the last other launch, and what each touches
    /// (`launch_product`).
    pdl_chain: std::cell::RefCell<Vec<launch::Footprint>>,
    /// Products launched as siblings so far (eager launches and captures; tests read it).
    sibling_launches: std::cell::Cell<usize>,
    /// Set while `launch_product` launches: the `_mma_` kernels take a PDL mode argument, so
    /// they launch only through it (`launch_ex` checks).
    launching_product: std::cell::Cell<bool>,
    /// Wide norms of small batches launch as clusters of blocks (`rms_norm_cluster_f32`; sm_90
    /// and later, unless `SPECULA_NORM_CLUSTER=0`).
    cluster_norms: bool,
    /// The device runs thread-block clusters (sm_90 and later).
    has_clusters: bool,
    /// Norms launched as clusters so far (eager launches and captures; tests read it).
    cluster_norm_launches: std::cell::Cell<usize>,
    /// A cuBLAS handle on the stream when libcublas is there (the GEMM route's GEMMs).
    cublas: Option<gemm::Cublas>,
    /// Products of at least `source::GEMM_MIN_ROWS` rows take the GEMM route when cuBLAS is
    /// there (`SPECULA_GEMM=0`: the `_mma_` kernels, an A/B knob).
    gemm_route: bool,
    /// Bytes of the GEMM route's f16 weight scratch (`source::GEMM_WEIGHT_SCRATCH_BYTES`; tests
    /// shrink it to run several row tiles, `set_gemm_weight_bytes`).
    gemm_weight_bytes: usize,
    /// The GEMM route's f16 weight tile, one for every loaded graph (runs are serialised on the
    /// stream), grown when a graph needs a larger one.
    gemm_weights: Option<BufferId>,
    /// Graphs are loaded with the launches `fuse_plan` folds together (`SPECULA_FUSE=0`
    /// launches every node on its own, an A/B knob).
    fusion: bool,
    /// Graphs of up to 16 tokens run their side branches (`branch_plan`: a MoE layer's experts)
    /// on the side stream (`SPECULA_BRANCHES=0` keeps one stream, an A/B knob).
    branches: bool,
    /// The launch after a fork or join keeps programmatic serialization (`SPECULA_BRANCH_PDL=1`,
    /// an A/B knob; off by default, see `after_stream_wait`).
    branch_pdl: bool,
    /// The next kernel launches without programmatic serialization (set after an event wait).
    pdl_off_next: std::cell::Cell<bool>,
    /// The side stream and its events.
    side: branch::Side,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    name: String,
    buffers: Vec<Option<DevBuf>>,
    execs: Vec<Option<Exec>>,
    err_word: u64,
}

// SAFETY: the backend owns its device allocations (raw addresses), the context and the cuBLAS
// handle; every use goes through `&mut self` or `&self` on one thread at a time, and the CUDA
// context is bound to the calling thread before each driver or cuBLAS call.
#[allow(unsafe_code)]
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens device `ordinal`, compiles (or loads from the cache) the kernels for its exact
    /// architecture, and loads every entry point.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Self::with_knobs(ordinal, &[])
    }

    /// As [`CudaBackend::new`], with the kernel knobs `knobs` (a `source::KNOB_DEFINES`
    /// variable and a value it accepts) in place of the environment's: the bench's spread-pick
    /// MoE run (`SPECULA_MOE_SPREAD_IDS`). An unknown knob or refused value is an error.
    pub fn with_knobs(ordinal: usize, knobs: &[(&str, usize)]) -> Result<CudaBackend> {
        let overrides = knobs
            .iter()
            .map(|&(var, value)| source::knob_override(var, value))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(backend_err)?;
        if !cuda_available() {
            return Err(backend_err(
                "no CUDA driver, libnvrtc or device found (run `specula doctor`)",
            ));
        }
        let knob_settings = source::knob_settings(&overrides);
        for warning in source::measurement_warnings(&knob_settings) {
            eprintln!("{warning}");
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating the context", e))?;
        #[allow(unsafe_code)]
        // SAFETY: called right after creating the context, before any allocation (cudarc#555);
        // this backend uses raw allocations and orders its two streams itself (events at a
        // branch's fork and join), so no cross-stream tracking is needed.
        unsafe {
            ctx.disable_event_tracking()
        };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_err("compute capability", e))?;
        let arch: &'static str = Box::leak(nvrtc::arch_for(major, minor).into_boxed_str());
        let mut driver = 0;
        #[allow(unsafe_code)]
        // SAFETY: the driver library is loaded (checked by cuda_available); valid out-pointer.
        unsafe { sys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(|e| driver_err("driver version", e))?;
        let cubin = nvrtc::cubin_cached(&source::source_with(&knob_settings), arch, driver)
            .map_err(backend_err)?;
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
        for route in [256, 512].map(|d| AttentionKernel::MultiQuery { d }) {
            let (bytes, name) = (route.smem_bytes(), route.name());
            if let (Some(f), true) = (funcs.get(name), bytes <= max_smem) {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|e| driver_err(&format!("shared memory of {name}"), e))?;
            }
        }
        // The wgmma verify products take up to 216 KiB of dynamic shared memory (wgmma.rs).
        let wgmma_supported = arch == "sm_90a" && wgmma::allow_shared_memory(&funcs, max_smem)?;
        // The shared-memory share the launches of step graphs prefer (carveout.rs).
        let knob = carveout::Knob::parse(std::env::var("SPECULA_SMEM_CARVEOUT").ok().as_deref())
            .map_err(backend_err)?;
        let smem_carveout = carveout::choose(knob, &ctx, &funcs)?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("multiprocessor count", e))?
            .max(1) as usize;
        let dev_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating a stream", e))?;
        let side = branch::Side::new(&ctx)?;
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        let gemm_route = std::env::var("SPECULA_GEMM").map_or(true, |v| v != "0");
        let cublas = if gemm_route {
            gemm::Cublas::open(&stream).transpose()?
        } else {
            None
        };
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
            tc_attention: major >= 8 && std::env::var("SPECULA_ATT_TC").map_or(true, |v| v != "0"),
            max_smem,
            smem_carveout,
            launch_carveout: std::cell::Cell::new(None),
            mma_id: std::env::var("SPECULA_MMA_ID").map_or(true, |v| v != "0"),
            moe_group: std::env::var("SPECULA_MOE_GROUP").map_or(true, |v| v != "0"),
            moe_tiles: std::env::var("SPECULA_MOE_TILES")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|t| (1..=16).contains(t))
                .unwrap_or(MOE_TILES_DEFAULT),
            queue_writes: std::env::var("SPECULA_QUEUED_WRITES").map_or(true, |v| v != "0"),
            queued_writes: std::cell::RefCell::new(Vec::new()),
            q8_repack: std::env::var("SPECULA_Q8_REPACK").map_or(true, |v| v != "0"),
            q8_repacked: HashMap::new(),
            att_tc_blocks: std::env::var("SPECULA_ATT_TC_BLOCKS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(8 * sm_count),
            mma_mt: std::env::var("SPECULA_MMA_MT")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|mt| [1, 2].contains(mt)),
            q8_splits: std::env::var("SPECULA_Q8_SPLITS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|s| (1..=8).contains(s)),
            mma_prefill: std::env::var("SPECULA_MMA_PREFILL").map_or(true, |v| v != "0"),
            mma_prefill_row_warps: std::env::var("SPECULA_MMA_PREFILL_SPLITK")
                .map_or(true, |v| v != "1"),
            mma_prefill_tile: tile_from_env("SPECULA_MMA_PREFILL_TILE", |t| {
                t == (2, 2) || source::MMA_PREFILL_TILES.contains(&t)
            }),
            mma_verify_tile: tile_from_env("SPECULA_MMA_VERIFY_TILE", |t| {
                [(1, 1), (1, 2), (2, 2)].contains(&t)
            }),
            mma_prepare: match std::env::var("SPECULA_MMA_PREPARE").as_deref() {
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                _ => None,
            },
            q4k_limbs: std::env::var("SPECULA_Q4K_LIMBS").is_ok_and(|v| v == "1"),
            products_as_reads: products_as_reads_from_env(),
            mma_persist: std::env::var("SPECULA_MMA_PERSIST").map_or(true, |v| v != "0"),
            mma_persist_m2: std::env::var("SPECULA_MMA_PERSIST_M2").map_or(true, |v| v != "0"),
            mma_one_row: std::env::var("SPECULA_MMA_ONE").map_or(true, |v| v != "0"),
            wgmma_supported,
            wgmma_verify: wgmma_supported
                && std::env::var("SPECULA_WGMMA_VERIFY").map_or(true, |v| v != "0"),
            wg_image_of: std::cell::Cell::new(None),
            wg_late: std::env::var("SPECULA_WG_LATE").map_or(true, |v| v != "0"),
            sm_count,
            launch_log: std::cell::RefCell::new(None),
            att_group: match std::env::var("SPECULA_ATT_GROUP").map(|v| v.parse::<usize>()) {
                Ok(Ok(0)) => None,
                Ok(Ok(n)) => Some(n),
                _ => Some(4),
            },
            fusion: std::env::var("SPECULA_FUSE").map_or(true, |v| v != "0"),
            branches: std::env::var("SPECULA_BRANCHES").map_or(true, |v| v != "0"),
            branch_pdl: std::env::var("SPECULA_BRANCH_PDL").is_ok_and(|v| v == "1"),
            pdl_off_next: std::cell::Cell::new(false),
            side,
            cublas,
            gemm_route,
            gemm_weight_bytes: source::GEMM_WEIGHT_SCRATCH_BYTES,
            gemm_weights: None,
            pdl: major >= 9 && std::env::var("SPECULA_PDL").map_or(true, |v| v != "0"),
            pdl_siblings: std::env::var("SPECULA_PDL_SIBLINGS").map_or(true, |v| v != "0"),
            pdl_late: std::env::var("SPECULA_PDL_LATE").map_or(true, |v| v != "0"),
            pdl_chain: std::cell::RefCell::new(Vec::new()),
            sibling_launches: std::cell::Cell::new(0),
            launching_product: std::cell::Cell::new(false),
            cluster_norms: major >= 9
                && std::env::var("SPECULA_NORM_CLUSTER").map_or(true, |v| v != "0"),
            has_clusters: major >= 9,
            cluster_norm_launches: std::cell::Cell::new(0),
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
        self.forget_captures();
    }

    /// The loaded graph `exe`.
    fn exec(&self, exe: ExecId) -> Result<&Exec> {
        self.execs
            .get(exe.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| no_exec(exe))
    }

    /// Takes the loaded graph `exe` out of its slot (put it back, or drop it to unload).
    fn take_exec(&mut self, exe: ExecId) -> Result<Exec> {
        self.execs
            .get_mut(exe.0)
            .and_then(Option::take)
            .ok_or_else(|| no_exec(exe))
    }

    /// Drops every captured CUDA graph, so the next runs launch (and capture) with the current
    /// settings.
    fn forget_captures(&mut self) {
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

    /// Whether products in graphs loaded from now on may take the tensor-core `_mma_` kernels
    /// (the default on compute capability 8.0 and later unless `SPECULA_MMA=0`) or only the
    /// vector, tiled and per-warp ones; on an older device they stay off. A test knob.
    pub fn set_mma_matvec(&mut self, on: bool) {
        self.mma_matvec = on && self.tensor_cores;
    }

    /// Weight tiles of 16 rows per warp for the tensor-core products in graphs loaded from now
    /// on (1 or 2, as `SPECULA_MMA_MT`; other values are ignored), or None for each route's own
    /// rule. A test knob (it replaces the variable's setting).
    pub fn set_mma_mt(&mut self, mt: Option<usize>) {
        self.mma_mt = mt.filter(|mt| [1, 2].contains(mt));
    }

    /// Whether prepared Q4_K products of at most `source::LIMB_MAX_ROWS` rows in graphs loaded
    /// from now on take the exact-integer `matmul_q4_k_limb_n*` kernels or the `_mma_` ones
    /// (split-f16 activations; the default). The two differ in the last bits, each within ~1e-6
    /// of the f32 products; either keeps every row's bits whatever its batch.
    pub fn set_q4k_limbs(&mut self, on: bool) {
        self.q4k_limbs = on;
    }

    /// A measurement mode, off by default: with it on, every weight product (the `_mma_` and
    /// q8 products) launches `read_runs_u128` over its weights in its place and leaves its
    /// output unwritten, so a decode step times what its other kernels cost beside products that
    /// only read their bytes (the bench's read ceiling, per product). Every output is wrong while
    /// it is on. Graphs captured before are forgotten.
    pub fn set_products_as_reads(&mut self, on: bool) {
        self.products_as_reads = on;
        self.forget_captures();
    }

    /// From how many queries attentions on the wide f16 kernels take a block per two heads of a
    /// K/V group (by default 4), or None for a block per head always; both give the same bits
    /// (a tuning and test knob).
    pub fn set_attention_groups(&mut self, min_queries: Option<usize>) {
        self.att_group = min_queries;
    }

    /// Whether one-activation-tile products (and, with `set_mma_persist_m2`, 9–16-row ones) take
    /// the persistent `_p` kernels (the default) or the one-shot ones; both give the same bits (a
    /// tuning and test knob).
    pub fn set_mma_persist(&mut self, on: bool) {
        self.mma_persist = on;
    }

    /// Whether prepared Q4_K and repacked Q6_K products of 9–16 rows take the wgmma verify
    /// kernels where the device supports it (`wgmma_verify_supported`; the default there) or the
    /// rows kernels; both give the same bits (a tuning and test knob). Off takes effect at the
    /// next launch sequence of any loaded graph; on only for graphs loaded from then on (the
    /// others have no image buffer).
    pub fn set_wgmma_verify(&mut self, on: bool) {
        self.wgmma_verify = on && self.wgmma_supported;
    }

    /// Whether this backend can run the wgmma verify products: an sm_90a device (9.0).
    pub fn wgmma_verify_supported(&self) -> bool {
        self.wgmma_supported
    }

    /// Whether 9–16-row Q4_K and Q6_K products on the (2, 2) tile take the persistent
    /// `_m2n2_p` kernels (the default, with `set_mma_persist` on) or the one-shot ones; both
    /// give the same bits (a tuning and test knob).
    pub fn set_mma_persist_m2(&mut self, on: bool) {
        self.mma_persist_m2 = on;
    }

    /// Whether persistent products of one activation row take the `_p1` kernels (the default)
    /// or the `_p` ones; both give the same bits (a tuning and test knob).
    pub fn set_mma_one_row(&mut self, on: bool) {
        self.mma_one_row = on;
    }

    /// Whether products of at least `source::GEMM_MIN_ROWS` rows in graphs loaded from now on
    /// take the GEMM route (f16 operands, cuBLAS; on by default where libcublas is there,
    /// `SPECULA_GEMM=0` turns it off) or the `_mma_` / `matmul_tc_` kernels (f32-level accuracy).
    pub fn set_gemm_route(&mut self, on: bool) {
        self.gemm_route = on;
    }

    /// Bytes of the GEMM route's f16 weight scratch for graphs loaded from now on: a product
    /// whose weights would not fit runs as several GEMMs over row tiles (at least 256 rows).
    /// Tests shrink it to exercise the tiling.
    pub fn set_gemm_weight_bytes(&mut self, bytes: usize) {
        self.gemm_weight_bytes = bytes;
    }

    /// Makes the shared GEMM weight scratch hold at least `elems` f16 values. A new, larger one
    /// moves it, so graphs captured with the old address are captured again.
    fn reserve_gemm_weights(&mut self, elems: usize) -> Result<()> {
        let have = match self.gemm_weights {
            Some(b) => self.buf(b)?.shape.n_elems(),
            None => 0,
        };
        if elems <= have {
            return Ok(());
        }
        self.forget_captures();
        if let Some(old) = self.gemm_weights.take() {
            self.free(old)?;
        }
        self.gemm_weights = Some(self.alloc(DType::F16, Shape::new(&[elems])?)?);
        Ok(())
    }

    /// Products of the loaded graph `exe` that take the GEMM route, for tests that must know
    /// the route was taken.
    pub fn gemm_products(&self, exe: ExecId) -> Result<usize> {
        Ok(self.exec(exe)?.mma.gemm.len())
    }

    /// Whether libcublas was found and opened, so that the GEMM route can run.
    pub fn has_cublas(&self) -> bool {
        self.cublas.is_some()
    }

    /// Launches a loaded graph saves by fusion (nodes folded into another node's launch, split
    /// sums done by the norm or residual Add that reads them), for tests that must know a fusion
    /// happened.
    pub fn folded_launches(&self, exe: ExecId) -> Result<usize> {
        let exec = self.exec(exe)?;
        Ok(exec.fuse.skip.len() + exec.fuse.unsummed.len())
    }

    /// Whether graphs loaded from now on launch fused norms (`fuse_plan`; on by default,
    /// `SPECULA_FUSE=0` turns it off). The results are the same bits either way (tested).
    pub fn set_fusion(&mut self, on: bool) {
        self.fusion = on;
    }

    /// Whether wide norms of small batches launch as clusters (`rms_norm_cluster_f32`; on by
    /// default on sm_90 and later, `SPECULA_NORM_CLUSTER=0` turns it off; ignored before sm_90).
    /// The results are the same bits either way (tested). Takes effect at the next launch
    /// (captured graphs are dropped and captured again).
    pub fn set_cluster_norms(&mut self, on: bool) {
        self.cluster_norms = on && self.has_clusters;
        self.forget_captures();
    }

    /// Whether wide norms of small batches launch as clusters now ([`Self::set_cluster_norms`]).
    pub fn cluster_norms(&self) -> bool {
        self.cluster_norms
    }

    /// Norm launches issued as clusters so far (eager runs and graph captures, not replays), for
    /// tests that must know the clustered kernel ran.
    pub fn cluster_norm_launches(&self) -> usize {
        self.cluster_norm_launches.get()
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
            tensor_core: self.tc_attention,
            max_smem: self.max_smem,
        }
    }

    /// Which batches' attention over f16 K/V rows of 256/512 runs on the multi-query kernel;
    /// takes effect at the next run of every graph (captured graphs are captured again). The
    /// split-K counts stay those chosen at load, which any route computes correctly.
    pub fn set_multi_query_attention(&mut self, mode: MultiQueryAttention) {
        self.mq_attention = mode;
        self.forget_captures();
    }

    /// Whether expert-indexed products of Q4_K, Q6_K and Q8_0 experts take the tensor-core
    /// `matmul_id_tc_<type>` kernels where their shapes allow (the default) or the scalar
    /// `matmul_id_<type>` ones (`SPECULA_MMA_ID=0`); takes effect at the next run of every graph.
    pub fn set_mma_id(&mut self, on: bool) {
        self.mma_id = on;
        self.forget_captures();
    }

    /// Whether expert-indexed products of several tokens group their (token, slot) pairs by
    /// expert (the default) or take a pair a block row (`SPECULA_MOE_GROUP=0`); takes effect at
    /// the next run of every graph.
    pub fn set_moe_group(&mut self, on: bool) {
        self.moe_group = on;
        self.forget_captures();
    }

    /// Weight tiles a block of an expert-grouped tensor-core product takes in turn (clamped to
    /// 1..=16, as `SPECULA_MOE_TILES`); takes effect at the next run of every graph.
    pub fn set_moe_tiles(&mut self, tiles: usize) {
        self.moe_tiles = tiles.clamp(1, 16);
        self.forget_captures();
    }

    /// Whether `write` and a run's error-word reset are queued on the stream without waiting
    /// (the default) or each waits for the device (`SPECULA_QUEUED_WRITES=0`; an A/B and test
    /// knob). Either way every write lands before the next launch or copy of the stream.
    pub fn set_queued_writes(&mut self, on: bool) {
        if !on && self.sync("finishing queued writes").is_err() {
            return;
        }
        self.queue_writes = on;
    }

    /// Whether batches of up to 16 queries over f16 K/V rows of 256/512 run on the tensor-core
    /// attention (on by default from sm_80, where alone it can be; `SPECULA_ATT_TC=0` turns it
    /// off); takes effect at the next run of every graph (captured graphs are captured again).
    pub fn set_tensor_core_attention(&mut self, on: bool) {
        self.tc_attention = on && self.tensor_cores;
        self.forget_captures();
    }

    /// Most blocks a tensor-core attention launches (beyond them, each block walks several
    /// splits of its rows), or 0 for a block per (row tile, split); every bound gives the same
    /// bits (a tuning and test knob). Takes effect at the next run of every graph.
    pub fn set_attention_blocks(&mut self, max_blocks: usize) {
        self.att_tc_blocks = max_blocks;
        self.forget_captures();
    }

    /// Records the name of every kernel of ours launched from now on (`true`) or stops recording
    /// (`false`), dropping the record either way. Launches are recorded as they are issued,
    /// eagerly or into a graph capture: a graph captured before recording started and replayed
    /// after it records nothing, and cuBLAS's GEMMs (the GEMM route) are not ours.
    pub fn record_launches(&mut self, on: bool) {
        *self.launch_log.get_mut() = on.then(Vec::new);
    }

    /// The kernel names recorded since recording started or since the last call, in launch order.
    pub fn take_launches(&mut self) -> Vec<String> {
        self.launch_log
            .get_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether tensor-core products in graphs launched from now on may start as siblings of the
    /// products before them where neither touches what the other does (on by default with
    /// programmatic dependent launch; `SPECULA_PDL_SIBLINGS=0` turns it off). Captured graphs
    /// are dropped so the next run records its launches again.
    pub fn set_pdl_siblings(&mut self, on: bool) {
        self.pdl_siblings = on;
        self.forget_captures();
    }

    /// The share of each multiprocessor's unified L1 / shared memory (per cent) that the
    /// launches of step graphs (decode steps, verify batches, drafts) prefer as shared memory,
    /// chosen at load so that the persistent products fit at their occupancy with the rest left
    /// to L1; `None` where `SPECULA_SMEM_CARVEOUT=driver` leaves the choice to the driver.
    pub fn smem_carveout(&self) -> Option<i32> {
        self.smem_carveout
    }

    /// Whether persistent products (and, with [`Self::set_wgmma_late`], wgmma verify products)
    /// that lead a chain wait inside their body, after their setup and first Q4_K weight loads
    /// (on by default where product chains are; `SPECULA_PDL_LATE=0` turns it off). Captured
    /// graphs are dropped so the next run records its launches again.
    pub fn set_pdl_late(&mut self, on: bool) {
        self.pdl_late = on;
        self.forget_captures();
    }

    /// Whether wgmma verify products that lead a chain do so late, as the persistent ones do
    /// under [`Self::set_pdl_late`] (which must be on too): a Q4_K product asks for its first
    /// weights before it waits for the kernel before it (on by default; `SPECULA_WG_LATE=0`
    /// turns it off; the same bits either way). Captured graphs are dropped.
    pub fn set_wgmma_late(&mut self, on: bool) {
        self.wg_late = on;
        self.forget_captures();
    }

    /// Whether kernels launch with programmatic stream serialization (sm_90 and later, unless
    /// `SPECULA_PDL=0`): their launches overlap the kernel before them, and products may start
    /// as siblings.
    pub fn programmatic_launch(&self) -> bool {
        self.pdl
    }

    /// Products launched as siblings so far (eager launches and graph captures).
    pub fn sibling_launches(&self) -> usize {
        self.sibling_launches.get()
    }

    /// The device's multiprocessors.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// The bound [`CudaBackend::set_attention_blocks`] sets.
    pub fn attention_blocks(&self) -> usize {
        self.att_tc_blocks
    }

    /// Whether q8 and `_mma_` products of Q8_0 or Q6_K weights in graphs loaded from now on
    /// read a copy of the weights in `q8_0_repack`'s or `q6_k_repack`'s layout (the default) or
    /// the weights as stored; the same bits either way (a tuning and test knob).
    pub fn set_q8_repack(&mut self, on: bool) {
        self.q8_repack = on;
    }

    /// Repacked weight copies held now, for tests.
    pub fn q8_repacked_copies(&self) -> usize {
        self.q8_repacked.len()
    }

    /// The repacked copy of the Q8_0 or Q6_K weights in `buffer`, made on first use: Q8_0 in
    /// `q8_0_repack`'s layout (272-byte groups, as stored), Q6_K in `q6_k_repack`'s (224-byte
    /// groups for 210). None where the copy would leave less than
    /// [`source::REPACK_HEADROOM_BYTES`] of device memory free (the products then read the
    /// weights as stored: slower, the same bits), so a model that fits without copies still
    /// loads on a smaller card.
    fn q8_repacked_copy(&mut self, buffer: BufferId) -> Result<Option<BufferId>> {
        if let Some(&b) = self.q8_repacked.get(&buffer.0) {
            return Ok(Some(b));
        }
        let (src, dtype, shape) = {
            let b = self.buf(buffer)?;
            (b.ptr, b.dtype, b.shape)
        };
        let bytes = byte_size(dtype, shape)?;
        // The kernel, and a group's bytes as stored and in the copy.
        let layout = match dtype {
            DType::Q8_0 => Some(("q8_0_repack", 272, 272)),
            DType::Q6_K => Some(("q6_k_repack", 210, 224)),
            _ => None,
        };
        let Some((kernel, group, copy_group)) = layout.filter(|l| bytes.is_multiple_of(l.1)) else {
            return Err(backend_err(format!(
                "cannot repack buffer #{} ({dtype} {shape}) for its products",
                buffer.0
            )));
        };
        let groups = bytes / group;
        let free = graph::Backend::memory_info(self).map_or(0, |(free, _)| free as usize);
        if !source::repack_fits(groups * copy_group, free) {
            return Ok(None);
        }
        // Memory taken by someone else since the check: the weights as stored.
        let Ok(copy) = self.alloc(DType::F32, Shape::new(&[groups * copy_group / 4])?) else {
            return Ok(None);
        };
        let dst = self.buf(copy)?.ptr;
        let mut a = Args::default();
        a.ptr(src).ptr(dst).i64(groups as i64);
        self.launch(kernel, grid1(groups, 256), 256, &mut a)?;
        // Waited for here: the products' weight loads may start before their launch's wait
        // on the kernel before them (see the hinted loads in matvec_mma.cu), and a failed
        // repack is reported as one.
        self.stream
            .synchronize()
            .map_err(|e| driver_err("repacking weights", e))?;
        self.q8_repacked.insert(buffer.0, copy);
        Ok(Some(copy))
    }

    /// Attention nodes of a loaded graph that run on the multi-query kernel, for tests that must
    /// know it ran.
    pub fn multi_query_attentions(&self, exe: ExecId) -> Result<usize> {
        Ok(self
            .attention_kernels(exe)?
            .iter()
            .filter(|name| name.starts_with("attention_mq_"))
            .count())
    }

    /// The kernel each attention node of a loaded graph runs on with the current settings (the
    /// `_g2` form of the wide kernels is chosen at launch and listed without its suffix), for
    /// tests that must know which ran.
    pub fn attention_kernels(&self, exe: ExecId) -> Result<Vec<&'static str>> {
        let exec = self.exec(exe)?;
        let g = &exec.graph;
        Ok(g.nodes()
            .iter()
            .filter(|node| matches!(node.op, Op::Attention(_)))
            .map(|node| self.attention_route(g, node).name())
            .collect())
    }

    /// Seconds per run of a loaded graph, averaged over `n` back-to-back runs with one
    /// synchronisation at the end (after one eager and, with replay on, one capturing run).
    pub fn time_runs(&mut self, exe: ExecId, n: usize) -> Result<f64> {
        self.run(exe)?;
        self.run(exe)?;
        let exec = self.exec(exe)?;
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

    /// Waits for the backend's stream; every copy queued before has then finished, so the host
    /// bytes kept for them (`queued_writes`) go. `what` names the work in an error.
    fn sync(&self, what: &str) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err(what, e))?;
        self.queued_writes.borrow_mut().clear();
        Ok(())
    }

    /// Copies host bytes to the device, ordered on the backend's stream, and waits.
    fn htod(&self, dst: u64, bytes: &[u8]) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass a destination with room for `bytes.len()` bytes; the host slice
        // outlives the copy because the stream is synchronised before returning.
        unsafe { cu::memcpy_htod_async(dst, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying to the device", e))?;
        self.sync("copying to the device")
    }

    /// Queues a copy of `bytes` to the device on the backend's stream and returns without
    /// waiting: the copy runs before every later launch and copy of the stream, and the bytes
    /// stay in `queued_writes` until the stream's next synchronisation. A step's inputs are
    /// written this way (a wait per input was a device round trip each, with the device idle).
    /// A failed transfer is reported by the next synchronisation.
    fn htod_queued(&self, dst: u64, bytes: Vec<u8>) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass a destination with room for `bytes.len()` bytes. The heap block
        // of `bytes` does not move when the Vec moves into `queued_writes`, which keeps it until
        // a synchronisation of this stream (`sync`, or Drop's) has seen the copy finish.
        unsafe { cu::memcpy_htod_async(dst, &bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying to the device", e))?;
        self.queued_writes.borrow_mut().push(bytes);
        Ok(())
    }

    /// Copies device bytes to the host, ordered on the backend's stream, and waits.
    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.dtoh_after(dst, src, "copying from the device")
    }

    /// `dtoh`, whose wait also covers the work queued before it: `what` names that in an error.
    fn dtoh_after(&self, dst: &mut [u8], src: u64, what: &str) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass a source holding at least `dst.len()` bytes; `dst` outlives the
        // copy because the stream is synchronised before returning.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying from the device", e))?;
        self.sync(what)
    }

    /// Sets `n` bytes at `ptr` to zero, ordered on the backend's stream, and waits.
    fn zero(&self, ptr: u64, n: usize) -> Result<()> {
        self.zero_queued(ptr, n)?;
        self.sync("zeroing")
    }

    /// Queues the zeroing of `n` bytes at `ptr` on the backend's stream without waiting.
    fn zero_queued(&self, ptr: u64, n: usize) -> Result<()> {
        self.bind()?;
        #[allow(unsafe_code)]
        // SAFETY: callers pass an allocation of at least `n` bytes.
        unsafe { cu::memset_d8_async(ptr, 0, n, self.stream.cu_stream()) }
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
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Captured graphs go first: they reference the buffers freed below.
        self.execs.clear();
        let side_done = self.side.stream.synchronize().is_ok();
        if !side_done || self.bind().is_err() || self.sync("finishing").is_err() {
            // A queued copy may still read its host bytes: leak them rather than free them.
            std::mem::forget(std::mem::take(self.queued_writes.get_mut()));
            return;
        }
        self.cublas = None;
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
        if self.queue_writes {
            self.htod_queued(at, bytes)
        } else {
            self.htod(at, &bytes)
        }
    }

    fn read(&self, buffer: BufferId) -> Result<TensorData> {
        let b = self.buf(buffer)?;
        let mut bytes = vec![0u8; byte_size(b.dtype, b.shape)?];
        self.dtoh(&mut bytes, b.ptr)?;
        decode_elements(b.dtype, &bytes)
    }

    fn read_range(&self, buffer: BufferId, offset: usize, len: usize) -> Result<TensorData> {
        let b = self.buf(buffer)?;
        let width = elem_bytes(b.dtype);
        if width == 0 {
            // Block-quantized buffers are read whole (weights; nothing reads them per run).
            return graph::Backend::read(self, buffer).and_then(|d| d.range(offset, len));
        }
        let n = b.shape.n_elems();
        if offset.checked_add(len).is_none_or(|end| end > n) {
            return Err(graph::Error::Handle(format!(
                "elements {offset}..+{len} of a {n}-element buffer"
            )));
        }
        let mut bytes = vec![0u8; len * width];
        // The range was checked against the buffer's elements above.
        self.dtoh(&mut bytes, b.ptr + (offset * width) as u64)?;
        decode_elements(b.dtype, &bytes)
    }

    fn free(&mut self, buffer: BufferId) -> Result<()> {
        if let Some(copy) = self.q8_repacked.remove(&buffer.0) {
            self.free(copy)?;
        }
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
        let mma = mma_plan::plan(&self.mma_config(), graph);
        let fuse = if self.fusion {
            fuse_plan::plan_for(graph, &mma)
        } else {
            FusePlan::default()
        };
        let branch = if self.branches {
            branch_plan::plan(graph, &mma, &fuse)
        } else {
            branch_plan::BranchPlan::default()
        };
        let mut holds = fuse.holds();
        holds.extend(branch.holds.iter().cloned());
        let (node_buffer, mut owned) =
            MemoryPlan::with_holds(graph, &holds).allocate(graph, bindings, self, |cuda, b| {
                let buf = cuda.buf(b)?;
                Ok((buf.dtype, buf.shape))
            })?;
        let mut node_scratch = HashMap::new();
        // Split attention nodes share one partials buffer, sized for the largest: the launches
        // run in graph order on one stream and each kernel's writes follow its wait on the
        // launch before it, so a node's combine has read the partials before the next attention
        // writes them. (One buffer per node held 10 × 67 MB in a 16-token verify graph of the
        // 31B at 64 splits.)
        let mut split_attention = Vec::new();
        let mut attention_elems = 0;
        for (i, node) in graph.nodes().iter().enumerate() {
            match node.op {
                Op::Attention(_) => {
                    let q = graph.node(node.inputs[0]).shape();
                    let k = graph.node(node.inputs[1]).shape();
                    let d_v = graph.node(node.inputs[2]).shape().ne(0);
                    let route = self.attention_route(graph, node);
                    let n_split = attention_splits(q.ne(1), q.ne(2), route, k.ne(2));
                    if n_split > 1 {
                        split_attention.push((i, n_split));
                        attention_elems =
                            attention_elems.max(q.ne(1) * q.ne(2) * n_split * (d_v + 2));
                    }
                }
                // Rows along grid y: more than 65,535 of them keep one block per row.
                Op::Argmax if graph.node(node.inputs[0]).shape().n_rows() <= 65_535 => {
                    let x = graph.node(node.inputs[0]).shape();
                    let chunks = x.ne(0).div_ceil(source::ARGMAX_CHUNK);
                    if chunks > 1 {
                        // Each chunk's value (f32) and index (i32).
                        let b = self.alloc(DType::F32, Shape::new(&[2 * x.n_rows() * chunks])?)?;
                        owned.push(b);
                        node_scratch.insert(i, (b, chunks));
                    }
                }
                _ => {}
            }
        }
        if !split_attention.is_empty() {
            let b = self.alloc(DType::F32, Shape::new(&[attention_elems])?)?;
            owned.push(b);
            for (i, n_split) in split_attention {
                node_scratch.insert(i, (b, n_split));
            }
        }
        // The repacked weights of the int8 tensor-core q8 products and of the `_mma_` Q6_K and
        // Q8_0 products (source::MMA_REPACKED).
        let mut q8_weights = HashMap::new();
        if self.q8_repack {
            // In node order, so which copies fit under the headroom does not vary run to run.
            for (i, node) in graph.nodes().iter().enumerate() {
                let q8 = mma.q8.get(&i).is_some_and(|qi| qi.tensor_cores);
                let mma_repacked = mma.products.contains_key(&i) && {
                    let dtype = graph.node(node.inputs[0]).dtype;
                    source::MMA_REPACKED.iter().any(|(t, _)| *t == dtype)
                };
                if q8 || mma_repacked {
                    let w = node.inputs[0].index();
                    if let Some(copy) = self.q8_repacked_copy(node_buffer[w])? {
                        q8_weights.insert(i, copy);
                    }
                }
            }
        }
        let mma_scratch = if mma.scratch_bytes > 0 {
            let b = self.alloc(DType::F32, Shape::new(&[mma.scratch_bytes / 4])?)?;
            owned.push(b);
            Some(b)
        } else {
            None
        };
        let wg_image = match self.wg_image_bytes(graph, &mma, &q8_weights) {
            0 => None,
            bytes => {
                let b = self.alloc(DType::F32, Shape::new(&[bytes / 4])?)?;
                owned.push(b);
                Some((b, bytes))
            }
        };
        let mma_partials = if mma.partial_elems > 0 {
            let b = self.alloc(DType::F32, Shape::new(&[mma.partial_elems])?)?;
            owned.push(b);
            Some(b)
        } else {
            None
        };
        let mut f16_scratch = |elems: usize| -> Result<Option<BufferId>> {
            if elems == 0 {
                return Ok(None);
            }
            let b = self.alloc(DType::F16, Shape::new(&[elems])?)?;
            owned.push(b);
            Ok(Some(b))
        };
        let gemm_acts = f16_scratch(mma.gemm_act_elems)?;
        self.reserve_gemm_weights(mma.gemm_weight_elems)?;
        self.execs.push(Some(Exec {
            graph: graph.clone(),
            node_buffer,
            owned,
            runs: 0,
            captured: None,
            node_scratch,
            mma_scratch,
            wg_image,
            mma_partials,
            gemm_acts,
            q8_weights,
            mma,
            fuse,
            branch,
            carveout: if carveout::is_step(graph) {
                self.smem_carveout
            } else {
                None
            },
        }));
        Ok(ExecId(self.execs.len() - 1))
    }

    fn buffer_of(&self, exe: ExecId, node: NodeId) -> Result<BufferId> {
        let exec = self.exec(exe)?;
        exec.node_buffer
            .get(node.index())
            .copied()
            .ok_or(graph::Error::UnknownNode(node.index()))
    }

    fn run(&mut self, exe: ExecId) -> Result<()> {
        let mut exec = self.take_exec(exe)?;
        let result = self.run_exec(&mut exec, exe);
        self.execs[exe.0] = Some(exec);
        result
    }

    fn unload(&mut self, exe: ExecId) -> Result<()> {
        let exec = self.take_exec(exe)?;
        drop(exec.captured);
        for b in exec.owned {
            self.free(b)?;
        }
        Ok(())
    }
}
