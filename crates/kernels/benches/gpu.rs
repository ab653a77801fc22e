//! GPU measurements in one run, printed as a table: device-to-device copy bandwidth (the
//! ceiling), the Q4_K/Q6_K matmuls of the 31B's FFN shapes (5376 × 21504 and 21504 × 5376) at
//! 1–16 activation rows and the MTP assistant's Q8_0 shapes at one row, as weight bytes per
//! second and as a fraction of the copy bandwidth, and one decode step of the dense fixture
//! model with and without CUDA graph replay. Skips without CUDA. With
//! `SPECULA_BENCH_WAVES=k:n1,n2,...` it times one-row Q4_K products of those shapes instead
//! ([`wave_probe`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use graph::{
    Backend, Bindings, BufferId, DType, ExecId, Graph, GraphBuilder, HostBytes, HostData, NodeId,
    Shape,
};
use kernels::CudaBackend;
use target::{LogitRows, Target, TargetOptions};

/// Random Q4_K, Q6_K or Q8_0 blocks with small f16 scales (d, and dmin for Q4_K).
fn weight(ty: DType, k: usize, n: usize) -> Vec<u8> {
    let (block, elems, scales): (usize, usize, &[usize]) = match ty {
        DType::Q4_K => (144, 256, &[0, 2]),
        DType::Q8_0 => (34, 32, &[0]),
        _ => (210, 256, &[208]),
    };
    let n_blocks = k * n / elems;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut bytes = vec![0u8; n_blocks * block];
    for b in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = state.to_le_bytes();
        b.copy_from_slice(&x[..b.len()]);
    }
    for blk in bytes.chunks_mut(block) {
        for (i, &off) in scales.iter().enumerate() {
            let v = if i == 0 { 0.01 } else { 0.002 };
            blk[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

/// Loads `y = w · x` for the uploaded weight `wb` ([k, n] of `ty`) and `m` activation rows, with
/// the rows filled: the graph, its output node and the executable.
fn load_product(
    cuda: &mut CudaBackend,
    ty: DType,
    wb: BufferId,
    k: usize,
    n: usize,
    m: usize,
) -> (Graph, NodeId, ExecId) {
    let mut g = GraphBuilder::new();
    let w = g.weight("w", ty, Shape::new(&[k, n]).unwrap()).unwrap();
    let x = g
        .input("x", DType::F32, Shape::new(&[k, m]).unwrap())
        .unwrap();
    let y = g.matmul(w, x).unwrap();
    let graph = g.finish(&[y]).unwrap();
    let mut b = Bindings::new();
    b.bind(w, wb);
    let exe = cuda.load(&graph, &b).expect("load");
    let xs: Vec<f32> = (0..k * m).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    cuda.write(cuda.buffer_of(exe, x).unwrap(), 0, HostData::F32(&xs))
        .unwrap();
    (graph, y, exe)
}

fn decode_step_secs(backend: CudaBackend, steps: usize) -> f64 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/dense.gguf");
    let path = if path.exists() {
        path
    } else {
        PathBuf::from("fixtures/dense.gguf")
    };
    let file = Arc::new(gguf::GgufFile::open(path).expect("dense fixture"));
    let options = TargetOptions {
        n_ctx: 256,
        max_batch: 16,
        ..Default::default()
    };
    let mut t = Target::load(file, Box::new(backend), &options, &mut |_, _| {}).expect("load");
    let prompt: Vec<u32> = (0..36).map(|i| 20 + i * 7).collect();
    for chunk in prompt.chunks(16) {
        t.forward(chunk, LogitRows::Last, &[], false)
            .expect("prefill");
    }
    let n = t.n_past();
    for _ in 0..5 {
        t.forward(&[42], LogitRows::Last, &[], false)
            .expect("warm-up");
        t.truncate(n).expect("truncate");
    }
    let start = Instant::now();
    for _ in 0..steps {
        t.forward(&[42], LogitRows::Last, &[], false).expect("step");
        t.truncate(n).expect("truncate");
    }
    start.elapsed().as_secs_f64() / steps as f64
}

/// One-row Q4_K products of width `k` and each output row count of `spec` (`k:n1,n2,...`), timed
/// one after another (`SPECULA_BENCH_WAVES`): whether a product's time follows its bytes or
/// the rounds of units (a row tile of a k-split plane) its persistent blocks walk, two blocks per
/// multiprocessor (while a block takes at most `source::PERSIST_ITERS` units). Each run also
/// prepares its activations (`mmv_prepare_x`) and, with k-splits, sums the planes.
fn wave_probe(cuda: &mut CudaBackend, spec: &str, copy: f64) {
    let (k, ns) = spec
        .split_once(':')
        .expect("SPECULA_BENCH_WAVES=k:n1,n2,...");
    let k: usize = k.parse().expect("k");
    let slots = 2 * cuda.sm_count();
    for n in ns.split(',').map(|n| n.parse::<usize>().expect("n")) {
        let bytes = weight(DType::Q4_K, k, n);
        let w_bytes = bytes.len() as f64;
        let wb = cuda
            .upload(
                DType::Q4_K,
                Shape::new(&[k, n]).unwrap(),
                HostBytes::from_vec(bytes),
            )
            .expect("upload");
        let (_, _, exe) = load_product(cuda, DType::Q4_K, wb, k, n, 1);
        let secs = cuda.time_runs(exe, 300).expect("time");
        let tile_rows = 16 * (8 / kernels::source::mma_k_warps(k));
        let units = n.div_ceil(tile_rows) * kernels::source::mma_k_splits(k);
        println!(
            "Q4_K {k}x{n}: {:8.2} us  {:.3} of copy  units {units} = {:.2} rounds of {slots}",
            secs * 1e6,
            w_bytes / secs / copy,
            units as f64 / slots as f64
        );
        cuda.unload(exe).unwrap();
        cuda.free(wb).unwrap();
    }
}

fn main() {
    if !kernels::cuda_available() {
        println!("skipped: no CUDA");
        return;
    }
    let mut cuda = CudaBackend::new(0).expect("cuda backend");
    let card = cuda.name();
    let copy = cuda.copy_bandwidth(1 << 30, 20).expect("copy");
    println!("device: {card}");
    println!("{:<44} {:>12} {:>10}", "measurement", "value", "vs copy");
    println!(
        "{:<44} {:>9.0} GB/s {:>10}",
        "device-to-device copy (read + write)",
        copy / 1e9,
        "1.00"
    );

    if let Ok(spec) = std::env::var("SPECULA_BENCH_WAVES") {
        wave_probe(&mut cuda, &spec, copy);
        return;
    }

    // The FFN gate/up shape and the FFN down shape of the 31B (its down matrices are Q4_K or
    // Q6_K), then the 31B MTP assistant's Q8_0 shapes at one row: q/gate/up, output/down and
    // its 262,144-row head.
    let verify_rows: &[usize] = &[1, 2, 4, 8, 9, 16];
    for (ty, k, n, rows) in [
        (DType::Q4_K, 5376, 21504, verify_rows),
        (DType::Q4_K, 21504, 5376, verify_rows),
        (DType::Q6_K, 21504, 5376, verify_rows),
        (DType::Q8_0, 1024, 8192, &[1][..]),
        (DType::Q8_0, 8192, 1024, &[1][..]),
        (DType::Q8_0, 1024, 262144, &[1][..]),
    ] {
        let bytes = weight(ty, k, n);
        let w_bytes = bytes.len() as f64;
        let wb = cuda
            .upload(ty, Shape::new(&[k, n]).unwrap(), HostBytes::from_vec(bytes))
            .expect("upload");
        let mut one_row = 0.0;
        for &m in rows {
            let (graph, y, exe) = load_product(&mut cuda, ty, wb, k, n, m);
            let secs = cuda.time_runs(exe, 200).expect("time");
            let nodes = cuda.captured_nodes(exe);
            let replayed = cuda.read_node(exe, &graph, y).unwrap().into_f32().unwrap();
            cuda.set_graph_replay(false);
            cuda.run(exe).unwrap();
            let eager = cuda.read_node(exe, &graph, y).unwrap().into_f32().unwrap();
            let plain_secs = cuda.time_runs(exe, 50).expect("time");
            cuda.set_graph_replay(true);
            assert_eq!(replayed, eager, "graph replay and plain launches disagree");
            assert!(
                eager.iter().any(|&v| v != 0.0),
                "matmul output is all zeros"
            );
            println!(
                "  (captured graph nodes: {nodes:?}; plain launches: {:.1} us per run)",
                plain_secs * 1e6
            );
            if m == 1 {
                one_row = secs;
            }
            let rate = w_bytes / secs;
            println!(
                "{:<44} {:>9.0} GB/s {:>10.2}   t({m})/t(1) = {:.2}",
                format!("{ty} matmul {k}x{n}, {m} row(s)"),
                rate / 1e9,
                rate / copy,
                secs / one_row
            );
            cuda.unload(exe).unwrap();
        }
        for m in [64usize, 512]
            .into_iter()
            .filter(|_| (ty == DType::Q4_K && n > k) || ty == DType::Q6_K)
        {
            // The GEMM route (where cuBLAS is there), then the `_mma_` kernels.
            for (route, gemm) in [("GEMM route", true), ("tensor-core", false)] {
                if gemm && !cuda.has_cublas() {
                    continue;
                }
                cuda.set_gemm_route(gemm);
                let (_, _, exe) = load_product(&mut cuda, ty, wb, k, n, m);
                let secs = cuda.time_runs(exe, 20).expect("time");
                let tflops = 2.0 * (k * n * m) as f64 / secs / 1e12;
                println!(
                    "{:<44} {:>9.1} us   {:.1} TFLOP/s, {:.0} tok/s for this matmul",
                    format!("{ty} {route} matmul, {m} rows"),
                    secs * 1e6,
                    tflops,
                    m as f64 / secs
                );
                cuda.unload(exe).unwrap();
            }
            cuda.set_gemm_route(true);
        }
    }
    drop(cuda);

    let with_graphs = decode_step_secs(CudaBackend::new(0).expect("cuda"), 300);
    let mut plain = CudaBackend::new(0).expect("cuda");
    plain.set_graph_replay(false);
    let without = decode_step_secs(plain, 300);
    println!(
        "{:<44} {:>9.1} us",
        "dense fixture decode step, graph replay",
        with_graphs * 1e6
    );
    println!(
        "{:<44} {:>9.1} us   no-graph / graph = {:.2}",
        "dense fixture decode step, plain launches",
        without * 1e6,
        without / with_graphs
    );
}
