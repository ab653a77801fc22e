//! Each op on CUDA against the CPU reference on random inputs (never zeros), with outputs
//! poisoned with NaN before the run so an unwritten element fails the comparison.

use graph::{
    AttnMask, AttnParams, Backend, Bindings, CpuBackend, DType, GluOp, Graph, GraphBuilder,
    HostBytes, HostData, KvLayout, NodeId, RopeParams, Shape, UnaryOp,
};
use kernels::source::GEMM_MIN_ROWS;
use kernels::MultiQueryAttention;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn sym(&mut self) -> f32 {
        let v = ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        if v == 0.0 {
            0.25
        } else {
            v
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sym()).collect()
    }
}

fn scale_fields(ty: DType) -> &'static [usize] {
    match ty {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

fn random_weight(rng: &mut Rng, ty: DType, n: usize) -> Vec<u8> {
    match ty {
        DType::F32 => rng.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => rng
            .vec(n)
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => rng
            .vec(n)
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        q => {
            let bb = q.block_bytes() as usize;
            let n_blocks = n / q.block_elems() as usize;
            let mut bytes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next() as u8).collect();
            for b in 0..n_blocks {
                for &off in scale_fields(q) {
                    bytes[b * bb + off..b * bb + off + 2]
                        .copy_from_slice(&half::f16::from_f32(0.02 * rng.sym()).to_le_bytes());
                }
            }
            bytes
        }
    }
}

enum Leaf {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Weight(DType, Vec<u8>),
    State(DType, Vec<f32>),
}

/// A graph and the values of its leaves.
struct Case {
    g: GraphBuilder,
    leaves: Vec<(NodeId, Leaf)>,
}

impl Case {
    fn new() -> Case {
        Case {
            g: GraphBuilder::new(),
            leaves: Vec::new(),
        }
    }
    fn f32(&mut self, dims: &[usize], v: Vec<f32>) -> NodeId {
        let id = self
            .g
            .input(
                &format!("in{}", self.leaves.len()),
                DType::F32,
                Shape::new(dims).unwrap(),
            )
            .unwrap();
        self.leaves.push((id, Leaf::F32(v)));
        id
    }
    fn i32(&mut self, dims: &[usize], v: Vec<i32>) -> NodeId {
        let id = self
            .g
            .input(
                &format!("in{}", self.leaves.len()),
                DType::I32,
                Shape::new(dims).unwrap(),
            )
            .unwrap();
        self.leaves.push((id, Leaf::I32(v)));
        id
    }
    /// A `[k, n]` weight leaf of `ty` filled with random finite blocks.
    fn random_weight(&mut self, rng: &mut Rng, ty: DType, k: usize, n: usize) -> NodeId {
        self.weight(ty, &[k, n], random_weight(rng, ty, k * n))
    }

    /// Products of `x` (k wide) by random `[k, n]` weights of each `(type, n)`, in order:
    /// `matmul`, or with `q8` `matmul_q8`.
    fn random_products(
        &mut self,
        rng: &mut Rng,
        x: NodeId,
        k: usize,
        weights: &[(DType, usize)],
        q8: bool,
    ) -> Vec<NodeId> {
        let mut outs = Vec::new();
        for &(ty, n) in weights {
            let w = self.random_weight(rng, ty, k, n);
            let y = if q8 {
                self.g.matmul_q8(w, x)
            } else {
                self.g.matmul(w, x)
            };
            outs.push(y.unwrap());
        }
        outs
    }

    fn weight(&mut self, ty: DType, dims: &[usize], bytes: Vec<u8>) -> NodeId {
        let id = self
            .g
            .weight(
                &format!("w{}", self.leaves.len()),
                ty,
                Shape::new(dims).unwrap(),
            )
            .unwrap();
        self.leaves.push((id, Leaf::Weight(ty, bytes)));
        id
    }
    /// Random f32 rows of n, `rows` of them, starting `offset` elements into their input (a view:
    /// rows that are not 16-byte aligned for an offset not a multiple of 4).
    fn f32_rows_at(&mut self, rng: &mut Rng, n: usize, rows: usize, offset: usize) -> NodeId {
        let total = n * rows + offset;
        let base = self.f32(&[total], rng.vec(total));
        let shape = Shape::new(&[n, rows]).unwrap();
        self.g
            .view(base, shape, [1, n, n * rows, n * rows], offset)
            .unwrap()
    }
    fn state(&mut self, ty: DType, dims: &[usize], v: Vec<f32>) -> NodeId {
        let id = self
            .g
            .state(
                &format!("s{}", self.leaves.len()),
                ty,
                Shape::new(dims).unwrap(),
            )
            .unwrap();
        self.leaves.push((id, Leaf::State(ty, v)));
        id
    }
}

/// Buffers for a case's weights and states (with their values); inputs are the loaded graph's
/// own.
fn bind_leaves(backend: &mut dyn Backend, graph: &Graph, leaves: &[(NodeId, Leaf)]) -> Bindings {
    let mut bindings = Bindings::new();
    for (id, leaf) in leaves {
        let shape = graph.node(*id).shape();
        let b = match leaf {
            Leaf::Weight(ty, bytes) => backend
                .upload(*ty, shape, HostBytes::from_vec(bytes.clone()))
                .unwrap(),
            Leaf::State(ty, v) => {
                let b = backend.alloc(*ty, shape).unwrap();
                backend.write(b, 0, HostData::F32(v)).unwrap();
                b
            }
            _ => continue,
        };
        bindings.bind(*id, b);
    }
    bindings
}

fn run_on(
    backend: &mut dyn Backend,
    graph: &Graph,
    leaves: &[(NodeId, Leaf)],
    outputs: &[NodeId],
) -> Vec<Vec<f32>> {
    run_on_times(backend, graph, leaves, outputs, &[Vec::new()]).remove(0)
}

/// Loads `graph`, writes its leaves and runs it once per entry of `runs` (the first eagerly,
/// later ones by graph replay where the backend captures), first writing that entry's f32
/// inputs over the leaves' and poisoning every f32 output that is not a state with NaN; the
/// outputs of each run.
fn run_on_times(
    backend: &mut dyn Backend,
    graph: &Graph,
    leaves: &[(NodeId, Leaf)],
    outputs: &[NodeId],
    runs: &[Vec<(NodeId, Vec<f32>)>],
) -> Vec<Vec<Vec<f32>>> {
    let bindings = bind_leaves(backend, graph, leaves);
    let exe = backend.load(graph, &bindings).unwrap();
    for (id, leaf) in leaves {
        let b = backend.buffer_of(exe, *id).unwrap();
        match leaf {
            Leaf::F32(v) => backend.write(b, 0, HostData::F32(v)).unwrap(),
            Leaf::I32(v) => backend.write(b, 0, HostData::I32(v)).unwrap(),
            _ => {}
        }
    }
    let mut results = Vec::new();
    for inputs in runs {
        for (id, v) in inputs {
            let b = backend.buffer_of(exe, *id).unwrap();
            backend.write(b, 0, HostData::F32(v)).unwrap();
        }
        for &o in outputs {
            let node = graph.node(o);
            if node.dtype == DType::F32
                && !matches!(
                    graph.node(node.root).op,
                    graph::Op::State | graph::Op::Input
                )
            {
                let b = backend.buffer_of(exe, o).unwrap();
                let n = match backend.read(b).unwrap() {
                    graph::TensorData::F32(v) => v.len(),
                    graph::TensorData::I32(v) => v.len(),
                };
                backend
                    .write(b, 0, HostData::F32(&vec![f32::NAN; n]))
                    .unwrap();
            }
        }
        backend.run(exe).unwrap();
        results.push(
            outputs
                .iter()
                .map(|&o| match backend.read_node(exe, graph, o).unwrap() {
                    graph::TensorData::F32(v) => v,
                    graph::TensorData::I32(v) => v.into_iter().map(|x| x as f32).collect(),
                })
                .collect(),
        );
    }
    results
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Whether two outputs are equal bit for bit.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs the case on CPU and CUDA; every output within `tol` relative L2 error.
fn check(name: &str, case: Case, outputs: &[NodeId], tol: f64) {
    check_with(name, case, outputs, tol, |_| {});
}

/// [`check`] on a CUDA backend that `setup` configured first.
fn check_with(
    name: &str,
    case: Case,
    outputs: &[NodeId],
    tol: f64,
    setup: impl FnOnce(&mut kernels::CudaBackend),
) {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    setup(&mut cuda);
    let graph = case.g.finish(outputs).unwrap();
    let want = run_on(&mut CpuBackend::new(), &graph, &case.leaves, outputs);
    let got = run_on(&mut cuda, &graph, &case.leaves, outputs);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.iter().all(|v| !v.is_nan()),
            "{name} output {k}: NaN (unwritten or invalid)"
        );
        let err = rel_err(g, w);
        assert!(
            err <= tol,
            "{name} output {k}: relative error {err:e} > {tol:e}"
        );
        eprintln!("{name} output {k}: rel err {err:.2e}");
    }
}

const WEIGHT_TYPES: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

#[test]
fn matmul_and_get_rows_every_weight_type() {
    let mut rng = Rng(1);
    for &ty in WEIGHT_TYPES {
        // Up to 16 rows: the f32 vector kernels; more: the tensor-core kernels (split-f16 products,
        // f32-level accuracy).
        for (k, n, m) in [
            (512, 37, 1),
            (256, 41, 2),
            (512, 9, 3),
            (256, 33, 5),
            (768, 12, 8),
            (256, 70, 16),
            (768, 5, 21),
            (512, 130, 100),
        ] {
            let mut c = Case::new();
            let w = c.random_weight(&mut rng, ty, k, n);
            let x = c.f32(&[k, m], rng.vec(k * m));
            let y = c.g.matmul(w, x).unwrap();
            let ids = c.i32(&[3], vec![4, 0, (n - 1) as i32]);
            let r = c.g.get_rows(w, ids).unwrap();
            let tol = if m > 16 { 2e-5 } else { 1e-5 };
            // The f32-accurate kernels, with the GEMM route off (below, at its own precision).
            check_with(
                &format!("matmul/get_rows {ty} k{k} n{n} m{m}"),
                c,
                &[y, r],
                tol,
                |cuda| cuda.set_gemm_route(false),
            );
        }
    }
}

/// The scalar vector kernels (`matmul_<type>_r<R>`: rows the `_mma_` kernels do not take, such
/// as the 26B-A4B's 2,112-wide Q8_0 and Q5_0 FFN downs) give a row the same bits in a batch of
/// 1, 2, 3, 5, 9 or 16 rows, within 1e-5 of the CPU: Q8_0 and Q5_0 take four chunks a pass (two
/// rows and more in `matmul_<type>_quad`, four output rows a warp, the launch checked), the rest
/// a chunk a pass (the `_r<tile>` kernels, tiles by `scalar_row_tile`); f32 and Q4_0 as controls.
#[test]
fn scalar_products_are_batch_invariant() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(41);
    for ty in [DType::Q8_0, DType::Q5_0, DType::F32, DType::Q4_0] {
        let (k, n) = (2112, 44);
        let wbytes = random_weight(&mut rng, ty, k * n);
        let x16 = rng.vec(k * 16);
        let mut first: Option<Vec<f32>> = None;
        for m in [16, 1, 2, 3, 5, 9] {
            let mut c = Case::new();
            let w = c.weight(ty, &[k, n], wbytes.clone());
            let x = c.f32(&[k, m], x16[..k * m].to_vec());
            let y = c.g.matmul(w, x).unwrap();
            let graph = c.g.finish(&[y]).unwrap();
            let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
            cuda.record_launches(true);
            let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
            let log = cuda.take_launches();
            cuda.record_launches(false);
            if matches!(ty, DType::Q8_0 | DType::Q5_0) && m >= 2 {
                let quad = format!("matmul_{}_quad", ty.to_string().to_lowercase());
                assert!(
                    log.contains(&quad),
                    "{ty} k{k} m{m}: launched {log:?}, not {quad}"
                );
            }
            let err = rel_err(&got, &want);
            assert!(err <= 1e-5, "{ty} k{k} m{m}: relative error {err:e}");
            match &first {
                None => first = Some(got),
                Some(f) => assert!(
                    same_bits(&got, &f[..n * m]),
                    "{ty} k{k}: {m} rows differ from the same rows in a batch of 16"
                ),
            }
        }
    }
}

/// The GEMM route (cuBLAS, at least `GEMM_MIN_ROWS` activation rows, quantized or f16 weights):
/// both operands are rounded to f16 once (unit roundoff u = 2^-11 each) and accumulated in f32,
/// so a dot product of random-sign terms is off by about u·√(2/3) ≈ 4e-4 of its size; the bound
/// is 1e-3 (the `_mma_` kernels' split-f16 products stay within 2e-5, tested above). Against the
/// CPU rounding the same operands to f16 (`CpuBackend::set_f16_products`) only the f32
/// accumulation differs: within 2e-5 (an H200 gave ≤ 7e-7). Covers
/// every weight type it takes, weights in two row tiles (a shrunken scratch; the second tile
/// partial), 64 and 100 rows, strided activation rows (every other row of a
/// taller input, from the second), products sharing one conversion of their activations, and
/// that f32 and bf16 weights stay off the route at f32-level accuracy.
#[test]
fn gemm_route_matches_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    if !cuda.has_cublas() {
        assert!(
            !kernels::gpu_required(),
            "REQUIRE_GPU=1 but libcublas was not found (the GEMM route is off)"
        );
        eprintln!("skipped: no libcublas");
        return;
    }
    // Weight tiles of 256 rows at k = 512 (two GEMMs for n = 300, the second of 44 rows); one
    // tile at k = 768.
    cuda.set_gemm_weight_bytes(256 * 512 * 2);
    let mut rng = Rng(11);
    for &ty in WEIGHT_TYPES {
        for (k, n, m) in [(512, 300, 64), (768, 130, 100)] {
            let mut c = Case::new();
            let w = c.random_weight(&mut rng, ty, k, n);
            let x = c.f32(&[k, 2 * m], rng.vec(k * 2 * m));
            let every_other = [1, 2 * k, 2 * k * m, 2 * k * m];
            let rows =
                c.g.view(x, Shape::new(&[k, m]).unwrap(), every_other, k)
                    .unwrap();
            let y = c.g.matmul(w, rows).unwrap();
            let f32_level = matches!(ty, DType::F32 | DType::BF16);
            let graph = c.g.finish(&[y]).unwrap();
            let bindings = bind_leaves(&mut cuda, &graph, &c.leaves);
            let exe = cuda.load(&graph, &bindings).unwrap();
            let routed = cuda.gemm_products(exe).unwrap();
            assert_eq!(routed, usize::from(!f32_level), "{ty}: GEMM-route products");
            cuda.unload(exe).unwrap();
            let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
            let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
            // The CPU rounding the same operands to f16: only the f32 accumulation differs.
            let mut emulated = CpuBackend::new();
            emulated.set_f16_products(Some(1));
            let same_operands = run_on(&mut emulated, &graph, &c.leaves, &[y]).remove(0);
            let f16_err = rel_err(&got, &same_operands);
            eprintln!(
                "gemm {ty} k{k} n{n} m{m}: rel err {f16_err:.2e} against f16 operands on the CPU"
            );
            assert!(
                f16_err <= 2e-5,
                "gemm {ty} k{k} n{n} m{m}: {f16_err:e} from the CPU's f16 operands"
            );
            let err = rel_err(&got, &want);
            let tol = if f32_level { 2e-5 } else { 1e-3 };
            assert!(
                err <= tol,
                "gemm {ty} k{k} n{n} m{m}: relative error {err:e} > {tol:e}"
            );
            eprintln!("gemm {ty} k{k} n{n} m{m}: rel err {err:.2e}");
        }
    }
    // Activation rows past the f16 range (a GLU output can reach them): each row is scaled by a
    // power of two before rounding and its products scaled back; finite, within 1e-3 of the f32
    // CPU and within 2e-5 of the CPU doing the same.
    let (k, n, m) = (512, 80, 64);
    let mut c = Case::new();
    let big: Vec<f32> = rng
        .vec(k * m)
        .iter()
        .enumerate()
        .map(|(i, v)| v * [1.0, 7e4, 3e6, 0.25][(i / k) % 4])
        .collect();
    let x = c.f32(&[k, m], big);
    let w = c.weight(
        DType::Q4_K,
        &[k, n],
        random_weight(&mut rng, DType::Q4_K, k * n),
    );
    let y = c.g.matmul(w, x).unwrap();
    let graph = c.g.finish(&[y]).unwrap();
    let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
    let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
    let mut emulated = CpuBackend::new();
    emulated.set_f16_products(Some(1));
    let same_operands = run_on(&mut emulated, &graph, &c.leaves, &[y]).remove(0);
    assert!(got.iter().all(|v| v.is_finite()), "large rows: not finite");
    let (err, f16_err) = (rel_err(&got, &want), rel_err(&got, &same_operands));
    eprintln!("gemm, rows up to 3e6: rel err {err:.2e}, {f16_err:.2e} against f16 operands");
    assert!(
        err <= 1e-3 && f16_err <= 2e-5,
        "large rows: {err:e}, {f16_err:e}"
    );
    // Products sharing converted activations: x, then z (converts over x's), then x twice (the
    // last finds x's f16 rows in the scratch).
    let (k, n, m) = (512, 96, 64);
    let mut c = Case::new();
    let x = c.f32(&[k, m], rng.vec(k * m));
    let z = c.f32(&[k, m], rng.vec(k * m));
    let mut ys = Vec::new();
    for (input, ty) in
        [x, z, x, x]
            .into_iter()
            .zip([DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q4_K])
    {
        let w = c.random_weight(&mut rng, ty, k, n);
        ys.push(c.g.matmul(w, input).unwrap());
    }
    check("shared f16 activations", c, &ys, 1e-3);
}

/// The tensor-core matrix-vector kernels (Q4_K, Q6_K, Q8_0; 1–16 rows and a 40-row prefill
/// chunk): within 1e-5 of the CPU, and up to 16 rows every activation row's output
/// bit-identical whatever the batch around it (rows of every such batch against the 16-row one),
/// so a speculative verify row equals the decode step's value; and the same bits whether the
/// activations were prepared once (`mmv_prepare_x`) or split by every warp, except prepared Q4_K
/// products of up to 16 rows, which take the exact-integer limb kernels (checked against the CPU
/// and for batch invariance like the rest; with limbs off they give the split-f16 bits). k = 256, 768, 1024,
/// 2048 split each row over 1, 2, 4 and 8 warps, k = 8192 and 16384 also over 2 and 4 blocks;
/// n = 8200 takes two weight tiles per warp and a partial last tile; 40 rows take the prefill
/// route (the type's prefill tile, two or three activation blocks per weight tile, each warp on
/// its own weight rows). Q6_K and Q8_0 products of up to 16 rows run the kernels of the repacked
/// copy (the launches are recorded), with the stored weights' bits.
#[test]
fn mma_matvec_matches_the_cpu_and_is_batch_invariant() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(7);
    // Repacked copies on whatever SPECULA_Q8_REPACK says (checked below).
    cuda.set_q8_repack(true);
    for ty in [DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        for (k, n) in [
            (256, 40),
            (768, 100),
            (1024, 8200),
            (2048, 300),
            (8192, 72),
            (16384, 40),
            // An output head's shape class (n ≥ 2^16: 4,097 16-row tiles, 2,049 two-tile warps at 9–16 rows).
            (512, 65_552),
        ] {
            let wbytes = random_weight(&mut rng, ty, k * n);
            let x40 = rng.vec(k * 40);
            let mut full: Vec<Vec<f32>> = Vec::new();
            for m in [16, 1, 3, 8, 9, 40] {
                let mut c = Case::new();
                let w = c.weight(ty, &[k, n], wbytes.clone());
                let x = c.f32(&[k, m], x40[..k * m].to_vec());
                let y = c.g.matmul(w, x).unwrap();
                let graph = c.g.finish(&[y]).unwrap();
                let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
                // Prepared with limbs (Q4_K up to 16 rows: the exact-integer kernels), prepared
                // without, split in place.
                let mut by_mode = Vec::new();
                let copies = cuda.q8_repacked_copies();
                for (prepare, limbs) in [(true, true), (true, false), (false, true)] {
                    cuda.set_mma_prepare(Some(prepare));
                    cuda.set_q4k_limbs(limbs);
                    let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
                    let err = rel_err(&got, &want);
                    assert!(
                        err <= 1e-5,
                        "{ty} k{k} n{n} m{m} prepared {prepare} limbs {limbs}: relative error {err:e}"
                    );
                    by_mode.push(got);
                }
                cuda.set_mma_prepare(None);
                cuda.set_q4k_limbs(false);
                assert!(
                    same_bits(&by_mode[1], &by_mode[2]),
                    "{ty} k{k} n{n} m{m}: prepared and in-place activations differ"
                );
                // Q6_K and Q8_0 products read a copy in q6_k_repack's / q8_0_repack's
                // layout; the weights as stored give the same bits.
                assert_eq!(
                    cuda.q8_repacked_copies() > copies,
                    ty != DType::Q4_K,
                    "{ty} k{k} n{n} m{m}: a repacked copy for Q6_K and Q8_0 only"
                );
                if ty != DType::Q4_K {
                    // Up to 16 rows, which kernels ran: the `_mma_` kernels of the repacked
                    // layout, and of the stored one with repacking off.
                    let recorded = m <= 16;
                    cuda.record_launches(recorded);
                    if recorded {
                        let again = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
                        assert!(same_bits(&again, &by_mode[1]), "{ty} k{k} n{n} m{m}: rerun");
                    }
                    let repacked = cuda.take_launches();
                    cuda.set_q8_repack(false);
                    let stored = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
                    let as_stored = cuda.take_launches();
                    cuda.record_launches(false);
                    cuda.set_q8_repack(true);
                    assert!(
                        same_bits(&stored, &by_mode[1]),
                        "{ty} k{k} n{n} m{m}: the repacked weights change the bits"
                    );
                    let (r, plain) = if ty == DType::Q6_K {
                        ("matmul_q6_kr_mma_", "matmul_q6_k_mma_")
                    } else {
                        ("matmul_q8_0r_mma_", "matmul_q8_0_mma_")
                    };
                    let ran =
                        |log: &[String], prefix: &str| log.iter().any(|n| n.starts_with(prefix));
                    if recorded {
                        assert!(
                            ran(&repacked, r) && !ran(&repacked, plain),
                            "{ty} k{k} n{n} m{m}: launched {repacked:?}, not {r}*"
                        );
                        assert!(
                            ran(&as_stored, plain) && !ran(&as_stored, r),
                            "{ty} k{k} n{n} m{m}: with repacking off launched {as_stored:?}"
                        );
                    }
                }
                if ty != DType::Q4_K || m > 16 {
                    assert!(
                        same_bits(&by_mode[0], &by_mode[1]),
                        "{ty} k{k} n{n} m{m}: the limb setting changed a product without limbs"
                    );
                } else {
                    eprintln!(
                        "mma {ty} k{k} n{n} m{m}: split-f16 rel err {:.2e}",
                        rel_err(&by_mode[1], &want)
                    );
                }
                eprintln!(
                    "mma {ty} k{k} n{n} m{m}: rel err {:.2e}",
                    rel_err(&by_mode[0], &want)
                );
                // Up to 16 rows (decode steps, verify batches) a row's bits never depend on
                // its batch, with limbs (mode 0) and with the split-f16 kernels (mode 1);
                // longer batches (prefill) may add in another order.
                if m == 16 {
                    full = by_mode;
                } else if m < 16 {
                    for (mode, (got, all)) in by_mode.iter().zip(&full).enumerate().take(2) {
                        assert!(
                            same_bits(&got[..n * m], &all[..n * m]),
                            "{ty} k{k} n{n} mode {mode}: rows of a {m}-row batch differ from a 16-row one"
                        );
                    }
                }
            }
        }
    }
}

/// `matmul_q8` (Q8_0 weights × 8-bit activations, the DFlash drafter's products) on the int8
/// tensor-core kernels — 1–8 rows one activation tile, 9–16 two, 40 rows three blocks of two;
/// one weight tile per warp and two (forced); k split over 1, 2, 4 and 8 warps and over 2, 3 and
/// 4 blocks (`source::q8_tiling`'s choices) — and, for rows not of whole 256-weight groups, the
/// per-warp kernel: within 1e-5 of the CPU (each block's sum is an exact integer on both; only
/// the order of the f32 sums differs). A second product of the same input after a prepared
/// split-f16 product of another input (which overwrites the scratch the first quantized into)
/// must quantize again: the same bits as the first. Blocks of NaN, zeros and an infinity give
/// the CPU's values (dropped, zero, NaN rows).
#[test]
fn q8_products_match_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(31);
    let wq4 = random_weight(&mut rng, DType::Q4_K, 2048 * 512);
    for (k, n) in [
        (256, 40),
        (512, 300),
        (1024, 8200),
        (2048, 300),
        (8192, 72),
        (8192, 4096),
        (16384, 40),
        (5376, 1024),
        (8192, 2048),
        (800, 70),
    ] {
        let wbytes = random_weight(&mut rng, DType::Q8_0, k * n);
        for m in [1, 3, 8, 9, 16, 40] {
            let mut c = Case::new();
            let w = c.weight(DType::Q8_0, &[k, n], wbytes.clone());
            let x = c.f32(&[k, m], rng.vec(k * m));
            let y = c.g.matmul_q8(w, x).unwrap();
            let w4 = c.weight(DType::Q4_K, &[2048, 512], wq4.clone());
            let x4 = c.f32(&[2048, m], rng.vec(2048 * m));
            let z = c.g.matmul(w4, x4).unwrap();
            let y2 = c.g.matmul_q8(w, x).unwrap();
            let graph = c.g.finish(&[y, z, y2]).unwrap();
            let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y, z]);
            cuda.set_mma_prepare(Some(true));
            let got = run_on(&mut cuda, &graph, &c.leaves, &[y, z, y2]);
            cuda.set_mma_prepare(None);
            let err = rel_err(&got[0], &want[0]);
            let name = format!("q8 k{k} n{n} m{m}");
            assert!(err <= 1e-5, "{name}: rel err {err:e}");
            // Weights read as stored give the repacked copy's bits (a copy was made for every
            // tensor-core product: each run uploads its weights afresh).
            let copies = cuda.q8_repacked_copies();
            let again = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
            assert_eq!(
                cuda.q8_repacked_copies() > copies,
                k % 256 == 0,
                "{name}: a repacked copy for the tensor-core products"
            );
            cuda.set_q8_repack(false);
            let stored = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
            cuda.set_q8_repack(true);
            assert!(
                same_bits(&again, &stored) && same_bits(&got[0], &stored),
                "{name}: the repacked weights change the bits"
            );
            assert!(got[0].iter().all(|v| v.is_finite()), "{name}: non-finite");
            let err_z = rel_err(&got[1], &want[1]);
            assert!(
                err_z <= 1e-5,
                "{name}: the Q4_K product between, rel err {err_z:e}"
            );
            assert!(
                same_bits(&got[0], &got[2]),
                "{name}: the product after the Q4_K one differs"
            );
            cuda.set_mma_mt(Some(2));
            let two = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
            cuda.set_mma_mt(None);
            let err2 = rel_err(&two, &want[0]);
            assert!(err2 <= 1e-5, "{name} two tiles: rel err {err2:e}");
            eprintln!("{name}: rel err {err:.2e}, two tiles {err2:.2e}");
        }
    }
    // Special values: row 0 has a block of NaN, row 1 a block of zeros, row 2 an infinity.
    for (k, n) in [(512, 300), (800, 70)] {
        let wbytes = random_weight(&mut rng, DType::Q8_0, k * n);
        let mut xv = rng.vec(k * 3);
        xv[32..64].fill(f32::NAN);
        xv[k + 64..k + 96].fill(0.0);
        xv[2 * k + 5] = f32::INFINITY;
        let mut c = Case::new();
        let w = c.weight(DType::Q8_0, &[k, n], wbytes);
        let x = c.f32(&[k, 3], xv);
        let y = c.g.matmul_q8(w, x).unwrap();
        let graph = c.g.finish(&[y]).unwrap();
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
        let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
        let err = rel_err(&got[..2 * n], &want[..2 * n]);
        assert!(err <= 1e-5, "q8 k{k} special values: rel err {err:e}");
        assert!(
            got[2 * n..]
                .iter()
                .chain(&want[2 * n..])
                .all(|v| v.is_nan()),
            "q8 k{k}: a block holding an infinity must make its row NaN on both"
        );
    }
}

/// The repacked copy of a q8 product's Q8_0 or Q6_K weights is made once when a graph needing
/// it loads, shared by a second graph, and freed with the weight buffer; none is made with
/// repacking off.
#[test]
fn repacked_q8_weights_live_as_long_as_their_buffer() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(47);
    let mut c = Case::new();
    let w = c.weight(
        DType::Q8_0,
        &[1024, 256],
        random_weight(&mut rng, DType::Q8_0, 1024 * 256),
    );
    let w6 = c.weight(
        DType::Q6_K,
        &[1024, 64],
        random_weight(&mut rng, DType::Q6_K, 1024 * 64),
    );
    let x = c.f32(&[1024, 4], rng.vec(1024 * 4));
    let y = c.g.matmul_q8(w, x).unwrap();
    let y6 = c.g.matmul_q8(w6, x).unwrap();
    let graph = c.g.finish(&[y, y6]).unwrap();
    let before = cuda.q8_repacked_copies();
    let bindings = bind_leaves(&mut cuda, &graph, &c.leaves);
    cuda.set_q8_repack(false);
    let plain = cuda.load(&graph, &bindings).unwrap();
    assert_eq!(cuda.q8_repacked_copies(), before, "repacking off");
    cuda.set_q8_repack(true);
    let one = cuda.load(&graph, &bindings).unwrap();
    let two = cuda.load(&graph, &bindings).unwrap();
    assert_eq!(
        cuda.q8_repacked_copies(),
        before + 2,
        "a copy per weight, shared"
    );
    for exe in [plain, one, two] {
        cuda.unload(exe).unwrap();
    }
    assert_eq!(
        cuda.q8_repacked_copies(),
        before + 2,
        "kept for later graphs"
    );
    cuda.free(bindings.get(w).unwrap()).unwrap();
    assert_eq!(
        cuda.q8_repacked_copies(),
        before + 1,
        "freed with the weights"
    );
    cuda.free(bindings.get(w6).unwrap()).unwrap();
    assert_eq!(cuda.q8_repacked_copies(), before);
}

/// A residual added to a split q8 product right after it (a DFlash layer's attention output
/// and FFN down, the product on either side of the Add, the residual dying there so the sum may
/// take its buffer) is added by the launch that sums the product's planes, and a post-norm tail
/// over a split q8 product sums its planes: the same bits as the separate launches (fusion
/// off), within 1e-5 of the CPU, at one row and sixteen, over 2 and 3 planes.
#[test]
fn split_q8_products_take_their_residual_add_into_the_sum() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(37);
    for (k, n) in [(8192, 1024), (12288, 2048)] {
        let wbytes = random_weight(&mut rng, DType::Q8_0, k * n);
        for m in [1, 16] {
            let mut c = Case::new();
            let w = c.weight(DType::Q8_0, &[k, n], wbytes.clone());
            let hin = c.f32(&[n, m], rng.vec(n * m));
            let xs: Vec<NodeId> = (0..3).map(|_| c.f32(&[k, m], rng.vec(k * m))).collect();
            let h = c.g.scale(hin, 0.5).unwrap(); // read by the first Add only
            let o = c.g.matmul_q8(w, xs[0]).unwrap();
            let h1 = c.g.add(h, o).unwrap();
            let o2 = c.g.matmul_q8(w, xs[1]).unwrap();
            let h2 = c.g.add(o2, h1).unwrap();
            let o3 = c.g.matmul_q8(w, xs[2]).unwrap();
            let post = c.g.rms_norm(o3, None, 1e-6).unwrap();
            let h3 = c.g.add(h2, post).unwrap();
            let graph = c.g.finish(&[h1, h3]).unwrap();
            let name = format!("q8 + residual k{k} n{n} m{m}");
            let bindings = bind_leaves(&mut cuda, &graph, &c.leaves);
            let exe = cuda.load(&graph, &bindings).unwrap();
            // Two sums with their adds, a norm tail with its sum (and the norm it skips).
            let folded = cuda.folded_launches(exe).unwrap();
            cuda.unload(exe).unwrap();
            assert_eq!(folded, 4, "{name}: the three sums fold");
            let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[h1, h3]);
            let got = run_on(&mut cuda, &graph, &c.leaves, &[h1, h3]);
            cuda.set_fusion(false);
            let apart = run_on(&mut cuda, &graph, &c.leaves, &[h1, h3]);
            cuda.set_fusion(true);
            for r in 0..2 {
                assert!(
                    same_bits(&got[r], &apart[r]),
                    "{name}: output {r} differs from the separate launches"
                );
                let err = rel_err(&got[r], &want[r]);
                assert!(
                    err <= 1e-5,
                    "{name}: output {r} rel err {err:e} against the CPU"
                );
            }
            eprintln!("{name}: the same bits as apart, within 1e-5 of the CPU");
        }
    }
}

/// `matmul_q8` of Q6_K weights (the DFlash drafter's tied head) on the int8 tensor-core kernels
/// — 1–8 rows one activation tile, 9–16 two, 40 rows three blocks; one and two weight tiles per
/// warp (by size, and forced); k split over 1, 2 and 8 warps and over 3 and 4 blocks, rows
/// starting 2- and 4-byte aligned (an odd number of groups per row) — and on the per-warp kernel
/// (the tensor-core route off): within 1e-5 of the CPU, whose per-block integer sums and
/// terms are the same; only the order of the f32 sums differs.
#[test]
fn q6_k_q8_products_match_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(37);
    for (k, n) in [
        (256, 40),
        (768, 300),
        (2048, 4100),
        (5376, 1030),
        (16384, 40),
    ] {
        let wbytes = random_weight(&mut rng, DType::Q6_K, k * n);
        for m in [1, 3, 8, 9, 16, 40] {
            let mut c = Case::new();
            let w = c.weight(DType::Q6_K, &[k, n], wbytes.clone());
            let x = c.f32(&[k, m], rng.vec(k * m));
            let y = c.g.matmul_q8(w, x).unwrap();
            let graph = c.g.finish(&[y]).unwrap();
            let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
            let routes: [(&str, bool, Option<usize>); 3] = [
                ("one tile", true, None),
                ("two tiles", true, Some(2)),
                ("per warp", false, None),
            ];
            for (route, mma, mt) in routes {
                if !mma && (k > 2048 || m > 9) {
                    continue; // the per-warp kernel is slow; small shapes cover it
                }
                cuda.set_mma_matvec(mma);
                cuda.set_mma_mt(mt);
                let copies = cuda.q8_repacked_copies();
                let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
                assert_eq!(
                    cuda.q8_repacked_copies() > copies,
                    mma,
                    "q6_k q8 k{k} n{n} m{m} {route}: a repacked copy on tensor cores only"
                );
                // Weights read as stored give the repacked copy's bits.
                cuda.set_q8_repack(false);
                let stored = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
                cuda.set_q8_repack(true);
                cuda.set_mma_matvec(true);
                cuda.set_mma_mt(None);
                let err = rel_err(&got, &want);
                let name = format!("q6_k q8 k{k} n{n} m{m} {route}");
                assert!(
                    same_bits(&got, &stored),
                    "{name}: the repacked weights change the bits"
                );
                assert!(err <= 1e-5, "{name}: rel err {err:e}");
                assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite");
                eprintln!("{name}: rel err {err:.2e}");
            }
        }
    }
}

/// The persistent `_p` kernels (one-tile products up to 8 rows, limbs up to 4, Q4_K and Q6_K
/// products of 9–16 rows on the (2, 2) tile) walk the one-shot kernels' arithmetic in fewer
/// blocks: the same bits with the knob on and off, on shapes where a block walks several units
/// (up to `PERSIST_ITERS`, `PERSIST_ITERS_M2`), warps split 9 groups unevenly, rows split over 2
/// and 4 planes, 2, 4 and 8 warp rows share a block (k = 1024, 512, 256) and the last tile is
/// partial. One-row products of Q4_K (but not on limbs), Q6_K and Q8_0 weights run the
/// `_p1` kernels (recorded), with the `_p` kernels' bits; no other product does.
#[test]
fn persistent_products_equal_the_one_shot_kernels() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(23);
    cuda.set_mma_persist_m2(true);
    // The rows kernels themselves (the wgmma route has its own tests against them).
    cuda.set_wgmma_verify(false);
    for ty in [DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        for (k, n) in [
            (2304, 32_000),
            (16_384, 4001),
            (8192, 9000),
            (1024, 20_000),
            (512, 50_000),
            (256, 40_000),
        ] {
            let wbytes = random_weight(&mut rng, ty, k * n);
            let x8 = rng.vec(k * 16);
            for m in [1, 2, 4, 8, 12, 16] {
                let mut c = Case::new();
                let w = c.weight(ty, &[k, n], wbytes.clone());
                let x = c.f32(&[k, m], x8[..k * m].to_vec());
                let y = c.g.matmul(w, x).unwrap();
                let graph = c.g.finish(&[y]).unwrap();
                for (prepare, limbs) in [(true, true), (true, false), (false, false)] {
                    cuda.set_mma_prepare(Some(prepare));
                    cuda.set_q4k_limbs(limbs);
                    let mut by_knob = Vec::new();
                    for (persist, one_row) in [(true, true), (true, false), (false, true)] {
                        cuda.set_mma_persist(persist);
                        cuda.set_mma_one_row(one_row);
                        cuda.record_launches(true);
                        by_knob.push(run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0));
                        let log = cuda.take_launches();
                        cuda.record_launches(false);
                        let want_p1 = persist && one_row && m == 1 && !(limbs && ty == DType::Q4_K);
                        assert_eq!(
                            log.iter().any(|n| n.ends_with("_p1")),
                            want_p1,
                            "{ty} k{k} n{n} m{m} prepared {prepare} persist {persist} one-row {one_row}: launched {log:?}"
                        );
                        let want_m2 =
                            persist && m > 8 && ty != DType::Q8_0 && !(limbs && ty == DType::Q4_K);
                        assert_eq!(
                            log.iter().any(|n| n.contains("_mma_m2n2") && n.ends_with("_p")),
                            want_m2,
                            "{ty} k{k} n{n} m{m} prepared {prepare} persist {persist}: launched {log:?}"
                        );
                    }
                    assert!(
                        by_knob[0].iter().all(|v| v.is_finite()),
                        "{ty} k{k} n{n} m{m} prepared {prepare} limbs {limbs}: not finite"
                    );
                    assert!(
                        same_bits(&by_knob[0], &by_knob[1]) && same_bits(&by_knob[0], &by_knob[2]),
                        "{ty} k{k} n{n} m{m} prepared {prepare} limbs {limbs}: one-row, persistent and one-shot kernels differ"
                    );
                }
            }
        }
    }
    cuda.set_mma_prepare(None);
    cuda.set_q4k_limbs(false);
    cuda.set_mma_persist(true);
    cuda.set_mma_one_row(true);
}

/// Products launched back to back that touch nothing of each other's (q, k and v of one norm,
/// gate and up, a drafter's 8-bit-activation products) start as siblings, overlapping one
/// another, and give the same bits as launched one after another: eagerly and under graph
/// replay, with prepared and in-place activations, for decode and verify batches, with
/// persistent leads waiting late or on entry, with new inputs every run (a sibling or late lead
/// that read before its inputs were written would read the last run's). A product that reads the
/// product before it (`d` of q's output, in place) must not start as its sibling: it would read
/// NaN poison.
#[test]
fn sibling_products_equal_serial_ones() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    // Siblings are `_mma_` products; the limb kernels end chains. The wgmma route and repacked
    // copies as by default, whatever the environment says (they decide who leads below).
    cuda.set_mma_matvec(true);
    cuda.set_q4k_limbs(false);
    cuda.set_q8_repack(true);
    cuda.set_wgmma_verify(true);
    let k = 2048;
    for m in [1, 3, 8, 16] {
        for prepare in [true, false] {
            let mut rng = Rng(61 + m as u64);
            let mut c = Case::new();
            let x = c.f32(&[k, m], rng.vec(k * m));
            let x2 = c.f32(&[k, m], rng.vec(k * m));
            let wn = c.f32(&[k], rng.vec(k));
            let h = c.g.rms_norm(x, Some(wn), 1e-6).unwrap();
            let qkv = [
                (DType::Q4_K, 4096),
                (DType::Q4_K, 1024),
                (DType::Q6_K, 1024),
            ];
            let mut outs = c.random_products(&mut rng, h, k, &qkv, false);
            outs.extend(c.random_products(&mut rng, outs[0], 4096, &[(DType::Q4_K, 512)], false));
            let h2 = c.g.rms_norm(x2, None, 1e-6).unwrap();
            outs.extend(c.random_products(&mut rng, h2, k, &[(DType::Q4_K, 2048); 2], false));
            // A drafter's products on 8-bit activations (`launch_q8`), one quantization for all.
            let h3 = c.g.rms_norm(x, None, 1e-6).unwrap();
            let drafter = [
                (DType::Q8_0, 1024),
                (DType::Q6_K, 1024),
                (DType::Q8_0, 2048),
            ];
            outs.extend(c.random_products(&mut rng, h3, k, &drafter, true));
            let graph = c.g.finish(&outs).unwrap();
            let runs: Vec<_> = (0..3)
                .map(|_| vec![(x, rng.vec(k * m)), (x2, rng.vec(k * m))])
                .collect();
            cuda.set_mma_prepare(Some(prepare));
            let mut by_mode = Vec::new();
            // Serial launches, then chains whose persistent leads wait late (the default), then
            // chains whose leads wait on entry.
            for (siblings, late) in [(false, true), (true, true), (true, false)] {
                cuda.set_pdl_siblings(siblings);
                cuda.set_pdl_late(late);
                let before = cuda.sibling_launches();
                by_mode.push(run_on_times(&mut cuda, &graph, &c.leaves, &outs, &runs));
                // k and v after q, up after gate, the second and third q8 products after the
                // first: once eagerly and once into the capture. On an sm_90a device a prepared
                // 9–16-row v (Q6_K) takes the wgmma kernel, whose image launch (its layout is
                // not q's) ends the chain first, so v leads a new one.
                let v_leads = m > 8 && prepare && cuda.wgmma_verify_supported();
                let want = match (siblings && cuda.programmatic_launch(), v_leads) {
                    (false, _) => 0,
                    (true, false) => 10,
                    (true, true) => 8,
                };
                assert_eq!(
                    cuda.sibling_launches() - before,
                    want,
                    "m{m} prepared {prepare} siblings {siblings} late {late}: sibling launches"
                );
            }
            for (mode, chained) in by_mode[1..].iter().enumerate() {
                for (run, (got, serial)) in chained.iter().zip(&by_mode[0]).enumerate() {
                    for (i, (g, w)) in got.iter().zip(serial).enumerate() {
                        assert!(
                            w.iter().all(|v| v.is_finite()),
                            "m{m} prepared {prepare} output {i}: not finite"
                        );
                        assert!(
                            same_bits(g, w),
                            "m{m} prepared {prepare} chain mode {mode} run {run} output {i}: \
                             siblings differ from serial launches"
                        );
                    }
                }
            }
        }
    }
    cuda.set_mma_prepare(None);
    cuda.set_pdl_siblings(true);
    cuda.set_pdl_late(true);
}

/// Products that read one activation input share its prepared (hi/lo f16) form: an input
/// prepared for one weight type must serve the others, a product of another input in between
/// must not leave its activations behind for the next product of the first, and a product of a
/// product's output (another width) prepares afresh. An RMSNorm output is prepared by the norm
/// kernel itself, unless a product of another input runs between the norm and its readers.
/// Preparation is forced on: at these sizes the size rule would split in place.
#[test]
fn mma_products_share_prepared_activations() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    cuda.set_mma_prepare(Some(true));
    let k = 512;
    // Also with the Q4_K limb kernels: a preparation made for a Q6_K or Q8_0 product (or a norm
    // serving one) must carry limbs when a later Q4_K product reuses it.
    for (m, limbs) in [
        (1, false),
        (5, false),
        (12, false),
        (1, true),
        (5, true),
        (12, true),
    ] {
        let mut rng = Rng(11 + m as u64);
        cuda.set_q4k_limbs(limbs);
        let mut c = Case::new();
        let x = c.f32(&[k, m], rng.vec(k * m));
        let x2 = c.f32(&[k, m], rng.vec(k * m));
        let mut outs = Vec::new();
        for (ty, input, n) in [
            (DType::Q4_K, x, 48),
            (DType::Q6_K, x, 32),
            (DType::Q8_0, x, 256),
            (DType::Q4_K, x2, 48),
            (DType::Q6_K, x, 64),
        ] {
            let w = c.random_weight(&mut rng, ty, k, n);
            outs.push(c.g.matmul(w, input).unwrap());
        }
        let w = c.random_weight(&mut rng, DType::Q4_K, 256, 40);
        outs.push(c.g.matmul(w, outs[2]).unwrap());
        // Normed rows: read by two products right away (the norm prepares them), and a second
        // norm whose reader comes after a product of x (it must prepare afresh).
        let wn = c.f32(&[k], rng.vec(k));
        let h = c.g.rms_norm(x2, Some(wn), 1e-6).unwrap();
        let h2 = c.g.rms_norm(x, None, 1e-6).unwrap();
        for (ty, input, n) in [
            (DType::Q4_K, h, 48),
            (DType::Q6_K, h, 32),
            (DType::Q8_0, x, 64),
            (DType::Q4_K, h2, 40),
        ] {
            let w = c.random_weight(&mut rng, ty, k, n);
            outs.push(c.g.matmul(w, input).unwrap());
        }
        let graph = c.g.finish(&outs).unwrap();
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &outs);
        let got = run_on(&mut cuda, &graph, &c.leaves, &outs);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = rel_err(g, w);
            assert!(
                err <= 1e-5,
                "shared prepared activations m{m} limbs {limbs} output {i}: {err:e}"
            );
            eprintln!(
                "shared prepared activations m{m} limbs {limbs} output {i}: rel err {err:.2e}"
            );
        }
    }
    cuda.set_q4k_limbs(false);
}

/// The limb kernels' activation range: a row holding a NaN gives NaN outputs (its groups'
/// scales are NaN) without touching the other rows; rows far beyond the f16 range (1e6, where
/// the split-f16 kernels cannot go) match the CPU like ordinary ones, and tiny rows (1e-30,
/// below the 2^-94 where the limbs' step stops shrinking, ~4e-7 of the row's largest value)
/// still within 1e-5.
#[test]
fn limb_products_keep_nan_rows_and_wide_ranges() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(19);
    let (k, n, m) = (1024, 96, 4);
    let mut x = rng.vec(k * m);
    x[3] = f32::NAN;
    for v in &mut x[k..2 * k] {
        *v *= 1e6;
    }
    for v in &mut x[2 * k..3 * k] {
        *v *= 1e-30;
    }
    let mut c = Case::new();
    let w = c.weight(
        DType::Q4_K,
        &[k, n],
        random_weight(&mut rng, DType::Q4_K, k * n),
    );
    let xn = c.f32(&[k, m], x);
    let y = c.g.matmul(w, xn).unwrap();
    let graph = c.g.finish(&[y]).unwrap();
    let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
    cuda.set_mma_prepare(Some(true));
    cuda.set_q4k_limbs(true);
    let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
    cuda.set_mma_prepare(None);
    cuda.set_q4k_limbs(false);
    assert!(got[..n].iter().all(|v| v.is_nan()), "the NaN row's outputs");
    for r in 1..m {
        let err = rel_err(&got[r * n..(r + 1) * n], &want[r * n..(r + 1) * n]);
        assert!(err <= 1e-5, "row {r}: relative error {err:e}");
    }
}

/// With the size rule (no override), a small product of an input that a large product just
/// prepared reads the prepared form too (k and v after q), with the same bits as splitting in
/// place; also with the Q4_K limb kernels on, where the large Q4_K product itself takes them
/// (within 1e-5 of the CPU, other last bits) and its preparation still serves the others.
#[test]
fn small_products_reuse_a_large_products_preparation() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(17);
    let (k, m) = (2048, 3);
    let mut c = Case::new();
    let x = c.f32(&[k, m], rng.vec(k * m));
    let mut outs = Vec::new();
    // 16384 rows: 1024 tiles × 2048 activations, above the rule's 2^21; then 64 rows, below.
    for (ty, n) in [(DType::Q4_K, 16384), (DType::Q6_K, 64), (DType::Q8_0, 96)] {
        let w = c.random_weight(&mut rng, ty, k, n);
        outs.push(c.g.matmul(w, x).unwrap());
    }
    let graph = c.g.finish(&outs).unwrap();
    let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &outs);
    for limbs in [false, true] {
        cuda.set_q4k_limbs(limbs);
        let by_rule = run_on(&mut cuda, &graph, &c.leaves, &outs);
        cuda.set_mma_prepare(Some(false));
        let in_place = run_on(&mut cuda, &graph, &c.leaves, &outs);
        cuda.set_mma_prepare(None);
        for (i, ((g, p), w)) in by_rule.iter().zip(&in_place).zip(&want).enumerate() {
            for (what, got) in [("prepared", g), ("in place", p)] {
                let err = rel_err(got, w);
                assert!(
                    err <= 1e-5,
                    "limbs {limbs} output {i} {what}: relative error {err:e}"
                );
            }
            if !(limbs && i == 0) {
                assert!(
                    same_bits(g, p),
                    "limbs {limbs} output {i}: prepared and in-place bits differ"
                );
            }
        }
    }
    cuda.set_q4k_limbs(false);
}

/// Products of rows split over several blocks (k = 8192: 2, k = 16384: 4) one after another in
/// one graph, run three times (the later runs replay the captured CUDA graph): the partial-sum
/// scratch they share must serve each product and each run afresh.
#[test]
fn mma_split_products_repeat_exactly() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(13);
    for prepare in [true, false] {
        cuda.set_mma_prepare(Some(prepare));
        let m = 3;
        let mut c = Case::new();
        let x = c.f32(&[8192, m], rng.vec(8192 * m));
        let x2 = c.f32(&[16384, m], rng.vec(16384 * m));
        let mut outs = Vec::new();
        for (ty, input, k, n) in [
            (DType::Q4_K, x, 8192, 48),
            (DType::Q6_K, x, 8192, 40),
            (DType::Q8_0, x2, 16384, 64),
            (DType::Q4_K, x2, 16384, 32),
        ] {
            let w = c.random_weight(&mut rng, ty, k, n);
            outs.push(c.g.matmul(w, input).unwrap());
        }
        let graph = c.g.finish(&outs).unwrap();
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &outs);
        let mut bindings = Bindings::new();
        for (id, leaf) in &c.leaves {
            if let Leaf::Weight(ty, bytes) = leaf {
                let shape = graph.node(*id).shape();
                let b = cuda
                    .upload(*ty, shape, HostBytes::from_vec(bytes.clone()))
                    .unwrap();
                bindings.bind(*id, b);
            }
        }
        let exe = cuda.load(&graph, &bindings).unwrap();
        for (id, leaf) in &c.leaves {
            if let Leaf::F32(v) = leaf {
                let b = cuda.buffer_of(exe, *id).unwrap();
                cuda.write(b, 0, HostData::F32(v)).unwrap();
            }
        }
        for run in 0..3 {
            cuda.run(exe).unwrap();
            for (i, (&o, w)) in outs.iter().zip(&want).enumerate() {
                let got = cuda.read_node(exe, &graph, o).unwrap().into_f32().unwrap();
                let err = rel_err(&got, w);
                assert!(
                    err <= 1e-5,
                    "split products (prepared {prepare}) run {run} output {i}: {err:e}"
                );
            }
        }
        cuda.unload(exe).unwrap();
    }
    cuda.set_mma_prepare(None);
}

#[test]
fn matmul_strided_rows_and_matmul_id() {
    let mut rng = Rng(2);
    let (k, n, m) = (256, 9, 3);
    // Q4_K with an aligned view takes the fast kernel, with an offset of 1 the generic one.
    for (ty, offset) in [(DType::Q8_0, k), (DType::Q4_K, k), (DType::Q4_K, 1)] {
        let mut c = Case::new();
        let w = c.random_weight(&mut rng, ty, k, n);
        let x = c.f32(&[k, 2 * m], rng.vec(2 * k * m));
        let v =
            c.g.view(
                x,
                Shape::new(&[k, m]).unwrap(),
                [1, 2 * k, 2 * k * m, 2 * k * m],
                offset,
            )
            .unwrap();
        let y = c.g.matmul(w, v).unwrap();
        check(
            &format!("strided matmul {ty} offset {offset}"),
            c,
            &[y],
            1e-5,
        );
    }
    for ty in [DType::F16, DType::Q4_K, DType::Q6_K] {
        for x_slots in [1, 2] {
            let (k, n, e, used, t) = (256, 12, 4, 2, 3);
            let mut c = Case::new();
            let w = c.weight(ty, &[k, n, e], random_weight(&mut rng, ty, k * n * e));
            let x = c.f32(&[k, x_slots, t], rng.vec(k * x_slots * t));
            let ids = c.i32(&[used, t], vec![3, 0, 1, 1, 2, 3]);
            let y = c.g.matmul_id(w, x, ids).unwrap();
            check(&format!("matmul_id {ty} x_slots {x_slots}"), c, &[y], 1e-5);
        }
    }
    // Rows of 22 blocks (the 26B-A4B's expert downs, Q8_0 or Q5_0): the scalar kernel, which
    // takes these types four chunks a pass (a lane a word of quants). Also rows of 3 chunks
    // (lanes without a chunk) over activations one element off 16-byte alignment, one row a
    // token for all its slots.
    for ty in [DType::Q8_0, DType::Q5_0] {
        let (k, n, e, used, t) = (704, 20, 5, 3, 2);
        let mut c = Case::new();
        let w = c.weight(ty, &[k, n, e], random_weight(&mut rng, ty, k * n * e));
        let x = c.f32(&[k, used, t], rng.vec(k * used * t));
        let ids = c.i32(&[used, t], vec![4, 0, 2, 1, 3, 4]);
        let y = c.g.matmul_id(w, x, ids).unwrap();
        check(&format!("matmul_id {ty} k {k}"), c, &[y], 1e-5);
        let (k, n, e, used, t) = (96, 7, 4, 2, 3);
        let mut c = Case::new();
        let w = c.weight(ty, &[k, n, e], random_weight(&mut rng, ty, k * n * e));
        let x = c.f32(&[k * t + 1], rng.vec(k * t + 1));
        let v =
            c.g.view(x, Shape::new(&[k, 1, t]).unwrap(), [1, k, k, k * t], 1)
                .unwrap();
        let ids = c.i32(&[used, t], vec![3, 0, 1, 1, 2, 3]);
        let y = c.g.matmul_id(w, v, ids).unwrap();
        check(&format!("matmul_id {ty} k {k} unaligned"), c, &[y], 1e-5);
    }
}

/// Expert products of Q4_K, Q6_K and Q8_0 experts of whole 256-weight groups take the
/// tensor-core `matmul_id_tc_*` kernels (the scalar `matmul_id_*` with `set_mma_id(false)`):
/// within 1e-5 of the CPU for rows of 11 groups (a block's 8 warps take 2 or 1 each) and 40
/// outputs (a partial 16-row tile), shared and per-slot activation rows, and each (token, slot)
/// pair's outputs are the bits of that pair launched alone (a verify row gets the decode step's;
/// the batch's pairs grouped by expert, `matmul_id_tcg_*`, the single token's not).
#[test]
fn expert_products_on_tensor_cores() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(33);
    let (k, n, e, used) = (2816, 40, 6, 3);
    for ty in [DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        let wb = random_weight(&mut rng, ty, k * n * e);
        for x_slots in [1, used] {
            let t = 4;
            let xv = rng.vec(k * x_slots * t);
            let idv: Vec<i32> = (0..used * t).map(|i| ((i * 5 + 1) % e) as i32).collect();
            // The product of tokens `toks` (of the t above) as a graph.
            let build = |toks: &[usize]| {
                let mut c = Case::new();
                let w = c.weight(ty, &[k, n, e], wb.clone());
                let mut xs = Vec::new();
                let mut ids = Vec::new();
                for &tk in toks {
                    xs.extend_from_slice(&xv[tk * k * x_slots..(tk + 1) * k * x_slots]);
                    ids.extend_from_slice(&idv[tk * used..(tk + 1) * used]);
                }
                let x = c.f32(&[k, x_slots, toks.len()], xs);
                let ids = c.i32(&[used, toks.len()], ids);
                let y = c.g.matmul_id(w, x, ids).unwrap();
                let graph = c.g.finish(&[y]).unwrap();
                (graph, c.leaves, y)
            };
            let name = format!("matmul_id {ty} k{k} n{n} x_slots {x_slots}");
            let all: Vec<usize> = (0..t).collect();
            let (graph, leaves, y) = build(&all);
            cuda.record_launches(true);
            let got = run_on(&mut cuda, &graph, &leaves, &[y]).remove(0);
            let log = cuda.take_launches();
            cuda.record_launches(false);
            let suffix = match ty {
                DType::Q4_K => "q4_k",
                DType::Q6_K => "q6_k",
                _ => "q8_0",
            };
            // A batch of four tokens groups its pairs by expert.
            let tc = format!("matmul_id_tcg_{suffix}");
            assert!(log.contains(&tc), "{name}: launched {log:?}, not {tc}");
            let want = run_on(&mut CpuBackend::new(), &graph, &leaves, &[y]).remove(0);
            let err = rel_err(&got, &want);
            assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
            cuda.set_mma_id(false);
            let scalar = run_on(&mut cuda, &graph, &leaves, &[y]).remove(0);
            cuda.set_mma_id(true);
            let err_s = rel_err(&got, &scalar);
            assert!(
                err_s <= 1e-5,
                "{name}: rel err {err_s:e} against the scalar kernel"
            );
            for tk in 0..t {
                let (g1, l1, y1) = build(&[tk]);
                let alone = run_on(&mut cuda, &g1, &l1, &[y1]).remove(0);
                let row = n * used;
                assert!(
                    same_bits(&alone, &got[tk * row..(tk + 1) * row]),
                    "{name}: token {tk} alone differs from its rows in the batch"
                );
            }
            eprintln!("{name}: rel err {err:.2e} (CPU), {err_s:.2e} (scalar kernel)");
        }
    }
}

/// Expert products of several tokens group their (token, slot) pairs by expert: the tensor-core
/// `matmul_id_tcg_*` kernels (Q4_K, Q6_K, Q8_0 rows of whole groups) and the scalar
/// `matmul_id_g_*` (the 26B-A4B's 704-wide Q8_0 and Q5_0 downs). A group of 12 pairs (two passes
/// of eight), groups of 6, 4 and 1, shared and per-slot activation rows, a last block and warp
/// with fewer rows (45 outputs of 704-wide rows), 1, 2 and 4 weight tiles a grouped tensor-core
/// block: every output has the bits of the pair-a-row kernels (`set_moe_group(false)`), within
/// 1e-5 of the CPU; an expert id past the experts is still reported.
#[test]
fn expert_grouped_products_equal_a_pair_a_row() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(34);
    let (e, used, t) = (9, 3, 12);
    // Token tk picks expert 0 (all 12 tokens), 1 + tk % 2 (6 each) and 3 + tk % 3 (4 each),
    // in an order that varies by token; token 11's last slot picks expert 8 alone.
    let idv: Vec<i32> = (0..t)
        .flat_map(|tk| {
            let last = if tk == t - 1 { 8 } else { 3 + tk % 3 };
            let picks = [0, 1 + tk % 2, last];
            (0..used).map(move |j| picks[(j + tk) % used] as i32)
        })
        .collect();
    let cases = [
        (
            DType::Q4_K,
            2816,
            40,
            "matmul_id_tcg_q4_k",
            "matmul_id_tc_q4_k",
        ),
        (
            DType::Q6_K,
            2816,
            40,
            "matmul_id_tcg_q6_k",
            "matmul_id_tc_q6_k",
        ),
        (
            DType::Q8_0,
            2816,
            40,
            "matmul_id_tcg_q8_0",
            "matmul_id_tc_q8_0",
        ),
        (DType::Q8_0, 704, 45, "matmul_id_g_q8_0", "matmul_id_q8_0"),
        (DType::Q5_0, 704, 45, "matmul_id_g_q5_0", "matmul_id_q5_0"),
    ];
    for (ty, k, n, grouped, pair_rows) in cases {
        let wb = random_weight(&mut rng, ty, k * n * e);
        for x_slots in [1, used] {
            let xv = rng.vec(k * x_slots * t);
            let mut c = Case::new();
            let w = c.weight(ty, &[k, n, e], wb.clone());
            let x = c.f32(&[k, x_slots, t], xv);
            let ids = c.i32(&[used, t], idv.clone());
            let y = c.g.matmul_id(w, x, ids).unwrap();
            let graph = c.g.finish(&[y]).unwrap();
            let name = format!("matmul_id {ty} k{k} n{n} x_slots {x_slots}");
            let mut outputs = Vec::new();
            // Grouped with 1, 2 and 4 weight tiles a block (n = 40: three tiles of 16 rows), then
            // a pair a row.
            for (group, tiles, kernel) in [
                (true, 1, grouped),
                (true, 2, grouped),
                (true, 4, grouped),
                (false, 1, pair_rows),
            ] {
                cuda.set_moe_group(group);
                cuda.set_moe_tiles(tiles);
                cuda.record_launches(true);
                outputs.push(run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0));
                let log = cuda.take_launches();
                cuda.record_launches(false);
                assert!(
                    log.iter().any(|l| l == kernel),
                    "{name}: launched {log:?}, not {kernel}"
                );
            }
            cuda.set_moe_group(true);
            cuda.set_moe_tiles(kernels::MOE_TILES_DEFAULT);
            for (i, out) in outputs[..3].iter().enumerate() {
                assert!(
                    same_bits(out, &outputs[3]),
                    "{name}: grouped by expert ({} tiles a block) differs from a pair a row",
                    [1, 2, 4][i]
                );
            }
            let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
            let err = rel_err(&outputs[0], &want);
            assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
            eprintln!("{name}: grouped = a pair a row, rel err {err:.2e} (CPU)");
            // An expert id past the experts is reported by the grouped kernel too.
            let bindings = bind_leaves(&mut cuda, &graph, &c.leaves);
            let exe = cuda.load(&graph, &bindings).unwrap();
            let mut bad = idv.clone();
            bad[5] = e as i32;
            cuda.write(cuda.buffer_of(exe, ids).unwrap(), 0, HostData::I32(&bad))
                .unwrap();
            let err = cuda.run(exe).unwrap_err();
            assert!(err.to_string().contains("expert"), "{name}: {err}");
        }
    }
}

#[test]
fn elementwise_norm_rope_softmax_concat() {
    let mut rng = Rng(3);
    let mut c = Case::new();
    let a = c.f32(&[64, 3, 2], rng.vec(384));
    let b = c.f32(&[64, 1, 2], rng.vec(128));
    let wf16 = c.weight(DType::F16, &[64], random_weight(&mut rng, DType::F16, 64));
    let add = c.g.add(a, b).unwrap();
    let mul = c.g.mul(a, wf16).unwrap();
    let mut outs = vec![add, mul];
    for op in [
        UnaryOp::Scale(0.3),
        UnaryOp::Gelu,
        UnaryOp::Silu,
        UnaryOp::Softcap(0.7),
    ] {
        outs.push(c.g.unary(op, a).unwrap());
    }
    let up = c.f32(&[64, 3, 2], rng.vec(384));
    outs.push(c.g.glu(GluOp::GeGlu, a, up).unwrap());
    outs.push(c.g.glu(GluOp::SwiGlu, a, up).unwrap());
    // GLU off the 4-wide path: strided views, and dense rows of an odd element count.
    let (pa, pu) = (
        c.g.permute(a, [1, 0, 2, 3]).unwrap(),
        c.g.permute(up, [1, 0, 2, 3]).unwrap(),
    );
    outs.push(c.g.glu(GluOp::GeGlu, pa, pu).unwrap());
    let (odd_g, odd_u) = (c.f32(&[7, 3], rng.vec(21)), c.f32(&[7, 3], rng.vec(21)));
    outs.push(c.g.glu(GluOp::SwiGlu, odd_g, odd_u).unwrap());
    let p = c.g.permute(a, [1, 0, 2, 3]).unwrap();
    outs.push(c.g.contiguous(p).unwrap());
    outs.push(c.g.concat(a, b, 1).unwrap());
    outs.push(c.g.rms_norm(a, None, 1e-6).unwrap());
    outs.push(c.g.rms_norm(a, Some(wf16), 1e-6).unwrap());
    outs.push(c.g.softmax(a).unwrap());
    let pos = c.i32(&[2], vec![3, 1000]);
    let ff = c.f32(
        &[16],
        (0..16).map(|i| if i < 4 { 1.0 } else { 1e30 }).collect(),
    );
    outs.push(
        c.g.rope(
            a,
            pos,
            RopeParams {
                theta: 10000.0,
                n_rot: 64,
            },
            None,
        )
        .unwrap(),
    );
    outs.push(
        c.g.rope(
            a,
            pos,
            RopeParams {
                theta: 1e6,
                n_rot: 32,
            },
            Some(ff),
        )
        .unwrap(),
    );
    check("elementwise, norms, rope, softmax, concat", c, &outs, 2e-6);
}

/// RMSNorm rows of up to 1024 chunks of 8 stay in registers (the decode step's 5376-wide row,
/// 8192 at the limit); wider or odd rows, and rows not 16-byte aligned (a view starting one
/// element in), take the general path. Both against the CPU, with and without weights.
#[test]
fn rms_norm_register_and_general_rows() {
    let mut rng = Rng(31);
    for (n, rows, offset) in [
        (64, 3, 0),
        (5376, 1, 0),
        (5376, 4, 0),
        (8192, 2, 0),
        (16384, 2, 0),
        (16392, 2, 0),
        (100, 3, 0),
        (5376, 2, 1),
        (5376, 40, 0),
        (2048, 33, 0),
        (16384, 17, 0),
    ] {
        let mut c = Case::new();
        let x = c.f32_rows_at(&mut rng, n, rows, offset);
        let wf = c.weight(DType::F32, &[n], random_weight(&mut rng, DType::F32, n));
        let wh = c.weight(DType::F16, &[n], random_weight(&mut rng, DType::F16, n));
        let outs = [
            c.g.rms_norm(x, None, 1e-6).unwrap(),
            c.g.rms_norm(x, Some(wf), 1e-6).unwrap(),
            c.g.rms_norm(x, Some(wh), 1e-6).unwrap(),
        ];
        check(
            &format!("rms_norm n{n} rows{rows} offset{offset}"),
            c,
            &outs,
            2e-6,
        );
    }
    // A layer's tail, which the backend launches as one fused norm: (residual + norm(o) · w) · s,
    // also without the scale, and with the residual read by a later node.
    for (n, rows) in [(64, 3), (5376, 1), (5376, 4), (100, 2)] {
        let mut c = Case::new();
        let res = c.f32(&[n, rows], rng.vec(n * rows));
        let o = c.f32(&[n, rows], rng.vec(n * rows));
        let w = c.weight(DType::F32, &[n], random_weight(&mut rng, DType::F32, n));
        let s = c.weight(DType::F32, &[1], vec![0x00, 0x00, 0xc0, 0x3f]); // 1.5
        let normed = c.g.rms_norm(o, Some(w), 1e-6).unwrap();
        let sum = c.g.add(res, normed).unwrap();
        let scaled = c.g.mul(sum, s).unwrap();
        let normed2 = c.g.rms_norm(scaled, Some(w), 1e-6).unwrap();
        let sum2 = c.g.add(res, normed2).unwrap();
        check(
            &format!("norm tail n{n} rows{rows}"),
            c,
            &[scaled, sum2],
            2e-6,
        );
    }
    // A head's norm and its RoPE, which the backend launches as one fused norm: full and partial
    // rotation, with and without frequency factors, one and three tokens.
    for (hd, heads, t, n_rot, with_ff) in [
        (256, 4, 1, 256, false),
        (512, 2, 3, 128, true),
        (100, 3, 2, 64, false),
    ] {
        let mut c = Case::new();
        let q = c.f32(&[hd, heads, t], rng.vec(hd * heads * t));
        let w = c.weight(DType::F32, &[hd], random_weight(&mut rng, DType::F32, hd));
        let pos = c.i32(&[t], (0..t as i32).map(|i| 7 + 1000 * i).collect());
        let ff = with_ff.then(|| {
            c.f32(
                &[n_rot / 2],
                (0..n_rot / 2).map(|i| 1.0 + i as f32 / 8.0).collect(),
            )
        });
        let normed = c.g.rms_norm(q, Some(w), 1e-6).unwrap();
        let params = RopeParams { theta: 1e4, n_rot };
        let rotated = c.g.rope(normed, pos, params, ff).unwrap();
        check(
            &format!("norm + rope hd{hd} heads{heads} t{t} n_rot{n_rot}"),
            c,
            &[rotated],
            2e-6,
        );
    }
}

/// On sm_90, wide norms of small batches run as clusters of blocks (`rms_norm_cluster_f32`):
/// the same bits as one block per row, plain and as a layer's fused tail with the next norm;
/// rows that are misaligned, too wide or narrow, or in larger batches keep one block per row.
/// Against the CPU too.
#[test]
fn clustered_norms_equal_one_block_norms() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    if !cuda.cluster_norms() {
        eprintln!("skipped: clustered norms are off (before sm_90, or SPECULA_NORM_CLUSTER=0)");
        return;
    }
    let mut rng = Rng(34);
    // (n, rows, offset, clustered launches where clusters are on): rows 2,048 up to 8,192 wide,
    // batches up to RN_CLUSTER_MAX_ROWS, aligned; with x misaligned, only the next norm (of the
    // tail's aligned rows) clusters.
    let max = kernels::source::RN_CLUSTER_MAX_ROWS;
    for (n, rows, offset, clustered) in [
        (5376, 1, 0, 2),
        (5376, max, 0, 2),
        (8192, 2, 0, 2),
        (2048, max, 0, 2),
        (5376, max + 1, 0, 0),
        (5376, 2, 1, 1),
        (16384, 1, 0, 0),
        (1024, 1, 0, 0),
    ] {
        let mut c = Case::new();
        let x = c.f32_rows_at(&mut rng, n, rows, offset);
        let res = c.f32(&[n, rows], rng.vec(n * rows));
        let w = c.weight(DType::F32, &[n], random_weight(&mut rng, DType::F32, n));
        let w2 = c.weight(DType::F32, &[n], random_weight(&mut rng, DType::F32, n));
        let plain = c.g.rms_norm(x, Some(w), 1e-6).unwrap();
        // A layer's tail and the next norm, one fused launch.
        let normed = c.g.rms_norm(x, Some(w), 1e-6).unwrap();
        let tail = c.g.add(res, normed).unwrap();
        let next = c.g.rms_norm(tail, Some(w2), 1e-6).unwrap();
        let outs = [plain, tail, next];
        let graph = c.g.finish(&outs).unwrap();
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &outs);
        let before = cuda.cluster_norm_launches();
        let got = run_on(&mut cuda, &graph, &c.leaves, &outs);
        let launched = cuda.cluster_norm_launches() - before;
        assert_eq!(
            launched, clustered,
            "n{n} rows{rows} offset{offset}: clustered launches"
        );
        cuda.set_cluster_norms(false);
        let one_block = run_on(&mut cuda, &graph, &c.leaves, &outs);
        cuda.set_cluster_norms(true);
        for (i, g) in got.iter().enumerate() {
            assert!(
                same_bits(g, &one_block[i]),
                "n{n} rows{rows} offset{offset} output {i}: clustered and one-block norms differ"
            );
            let err = rel_err(g, &want[i]);
            assert!(
                err <= 2e-6,
                "n{n} rows{rows} offset{offset} output {i}: rel err {err:e}"
            );
        }
        eprintln!("norms n{n} rows{rows} offset{offset}: {launched} clustered launches, same bits");
    }
}

/// Runs `graph` with fused launches and with separate kernels: every output must have the same
/// bits both ways and be within `tol` of the CPU's. With `clusters` (a graph with a wide norm of
/// a small batch) and clustered norms on, the fused run must launch some as clusters, and its
/// outputs must also equal those of one block per row.
fn fused_matches_separate(
    cuda: &mut kernels::CudaBackend,
    name: &str,
    graph: &Graph,
    leaves: &[(NodeId, Leaf)],
    outs: &[NodeId],
    tol: f64,
    clusters: bool,
) {
    let want = run_on(&mut CpuBackend::new(), graph, leaves, outs);
    let on = cuda.cluster_norms();
    // Also with the Q4_K limb kernels, whose limbs the fused norms write too.
    for limbs in [false, true] {
        cuda.set_q4k_limbs(limbs);
        let before = cuda.cluster_norm_launches();
        let fused = run_on(cuda, graph, leaves, outs);
        assert_eq!(
            cuda.cluster_norm_launches() > before,
            on && clusters,
            "{name} (limbs {limbs}): clustered norm launches"
        );
        cuda.set_fusion(false);
        let separate = run_on(cuda, graph, leaves, outs);
        cuda.set_fusion(true);
        // And with every norm one block per row (where clusters were on).
        cuda.set_cluster_norms(false);
        let one_block = run_on(cuda, graph, leaves, outs);
        cuda.set_cluster_norms(on);
        for (i, (f, s)) in fused.iter().zip(&separate).enumerate() {
            assert!(
                same_bits(f, s),
                "{name} (limbs {limbs}) output {i}: fused and separate kernels differ"
            );
            assert!(
                same_bits(f, &one_block[i]),
                "{name} (limbs {limbs}) output {i}: clustered and one-block norms differ"
            );
            let err = rel_err(f, &want[i]);
            assert!(
                err <= tol,
                "{name} (limbs {limbs}) output {i}: rel err {err:e}"
            );
            eprintln!(
                "fused {name} (limbs {limbs}) output {i}: rel err {err:.2e}, same bits as separate"
            );
        }
    }
    cuda.set_q4k_limbs(false);
}

/// The fused norms (post-norm tails, split-product planes summed by the tail, the next norm and
/// its prepared activations, head norm + RoPE) give the same bits as the separate kernels, and
/// match the CPU.
#[test]
fn fused_norms_equal_the_separate_kernels() {
    // The graphs are built (and checked) everywhere; the GPU runs only where there is one.
    let mut cuda = crate::cuda();
    let mut rng = Rng(32);
    // k 8192 and 21504: products split over 2 and 4 blocks (mma_k_splits).
    for (k, ty) in [
        (8192, DType::Q4_K),
        (21504, DType::Q6_K),
        (2048, DType::Q4_K),
    ] {
        let n = 5376;
        let mut c = Case::new();
        let a = c.f32(&[k, 1], rng.vec(k));
        let res = c.f32(&[n, 1], rng.vec(n));
        let wo = c.random_weight(&mut rng, ty, k, n);
        let w = c.weight(DType::F32, &[n], random_weight(&mut rng, DType::F32, n));
        let s = c.weight(DType::F32, &[1], vec![0x00, 0x00, 0xc0, 0x3f]); // 1.5
        let o = c.g.matmul(wo, a).unwrap();
        let normed = c.g.rms_norm(o, Some(w), 1e-6).unwrap();
        let sum = c.g.add(res, normed).unwrap();
        let scaled = c.g.mul(sum, s).unwrap();
        // The next layer's attention norm, whose products read prepared activations (8192 rows
        // of 5376: above the size rule), done by the tail's launch.
        let next = c.g.rms_norm(scaled, Some(w), 1e-6).unwrap();
        let wq4 = c.weight(
            DType::Q4_K,
            &[n, 8192],
            random_weight(&mut rng, DType::Q4_K, n * 8192),
        );
        let proj = c.g.matmul(wq4, next).unwrap();
        let q = c.f32(&[256, 8, 1], rng.vec(2048));
        let pos = c.i32(&[1], vec![4321]);
        let wq = c.weight(DType::F32, &[256], random_weight(&mut rng, DType::F32, 256));
        let qn = c.g.rms_norm(q, Some(wq), 1e-6).unwrap();
        let qr =
            c.g.rope(
                qn,
                pos,
                RopeParams {
                    theta: 1e4,
                    n_rot: 256,
                },
                None,
            )
            .unwrap();
        let outs = [scaled, qr, next, proj];
        let graph = c.g.finish(&outs).unwrap();
        let Some(cuda) = cuda.as_mut() else {
            continue;
        };
        // Folded: the tail's norm and add, the next norm, the q norm; and the split sum where
        // k splits (8192 and 21504).
        let bindings = bind_leaves(cuda, &graph, &c.leaves);
        let exe = cuda.load(&graph, &bindings).unwrap();
        let expected = if k >= 8192 { 5 } else { 4 };
        assert_eq!(
            cuda.folded_launches(exe).unwrap(),
            expected,
            "{ty} k{k}: folds"
        );
        cuda.unload(exe).unwrap();
        fused_matches_separate(
            cuda,
            &format!("{ty} k{k}"),
            &graph,
            &c.leaves,
            &outs,
            1e-5,
            true,
        );
    }
}

/// K (head norm + RoPE) and V (head norm) rows written to f16 and f32 caches, which the backend
/// stores from the fused norm itself (K's and V's launches run as one, `rms_norm_jobs_f32`): the
/// same bits as the separate kernels, the CPU's values, and an out-of-range slot is still
/// reported.
#[test]
fn fused_cache_writes_equal_the_separate_kernels() {
    let mut cuda = crate::cuda();
    let mut rng = Rng(33);
    for (cache_ty, hd, heads, t) in [(DType::F16, 256, 2, 1), (DType::F32, 512, 1, 3)] {
        let mut c = Case::new();
        let k_raw = c.f32(&[hd, heads, t], rng.vec(hd * heads * t));
        let w = c.weight(DType::F32, &[hd], random_weight(&mut rng, DType::F32, hd));
        let pos = c.i32(&[t], (0..t as i32).map(|i| 40 + i).collect());
        let slots = c.i32(&[t], (0..t as i32).map(|i| 5 - i).collect());
        let kn = c.g.rms_norm(k_raw, Some(w), 1e-6).unwrap();
        let params = RopeParams {
            theta: 1e4,
            n_rot: hd,
        };
        let k = c.g.rope(kn, pos, params, None).unwrap();
        let v = c.g.rms_norm(k_raw, None, 1e-6).unwrap();
        let row = hd * heads;
        let ks = c.state(cache_ty, &[row, 6], rng.vec(row * 6));
        let vs = c.state(cache_ty, &[row, 6], rng.vec(row * 6));
        let k_rows = c.g.reshape(k, Shape::new(&[row, t]).unwrap()).unwrap();
        let v_rows = c.g.reshape(v, Shape::new(&[row, t]).unwrap()).unwrap();
        let kw = c.g.write_rows(ks, k_rows, slots).unwrap();
        let vw = c.g.write_rows(vs, v_rows, slots).unwrap();
        let outs = [kw, vw];
        let graph = c.g.finish(&outs).unwrap();
        let Some(cuda) = cuda.as_mut() else {
            continue;
        };
        let name = format!("cache {cache_ty} hd{hd}");
        fused_matches_separate(cuda, &name, &graph, &c.leaves, &outs, 2e-3, false);
        // A slot past the cache is reported by the fused write as by write_rows.
        let bindings = bind_leaves(cuda, &graph, &c.leaves);
        let exe = cuda.load(&graph, &bindings).unwrap();
        assert_eq!(
            cuda.folded_launches(exe).unwrap(),
            4,
            "K's norm, both cache writes and V's launch (run with K's) fold into other launches"
        );
        let bad_slots = vec![9; t]; // the caches have 6 rows
        for (id, leaf) in &c.leaves {
            let data = match leaf {
                Leaf::I32(_) if *id == slots => HostData::I32(&bad_slots),
                Leaf::I32(v) => HostData::I32(v),
                Leaf::F32(v) => HostData::F32(v),
                _ => continue,
            };
            cuda.write(cuda.buffer_of(exe, *id).unwrap(), 0, data)
                .unwrap();
        }
        let err = cuda.run(exe).unwrap_err();
        assert!(err.to_string().contains("slot"), "{err}");
        cuda.unload(exe).unwrap();
    }
}

#[test]
fn selection_moe_and_write_rows() {
    let mut rng = Rng(4);
    let mut c = Case::new();
    let x = c.f32(&[300, 4], rng.vec(1200));
    let am = c.g.argmax(x).unwrap();
    let probs_in = c.f32(&[8, 5], rng.vec(40));
    let probs = c.g.softmax(probs_in).unwrap();
    let top = c.g.top_k(probs, 3).unwrap();
    let scale = c.weight(DType::F32, &[8], random_weight(&mut rng, DType::F32, 8));
    let w = c.g.moe_weights(probs, top, Some(scale), true).unwrap();
    check("argmax, top_k, moe_weights", c, &[am, top, w], 1e-6);
    // More slots than a warp's lanes (a warp per token takes slots j, j + 32, …), with the
    // sum and scale, and as a plain gather (exact).
    for (scaled, tol) in [(true, 1e-6), (false, 0.0)] {
        let mut c = Case::new();
        let (n_expert, k, t) = (64, 40, 5);
        let probs = c.f32(&[n_expert, t], rng.vec(n_expert * t));
        let top = c.g.top_k(probs, k).unwrap();
        let scale = scaled.then(|| {
            c.weight(
                DType::F32,
                &[n_expert],
                random_weight(&mut rng, DType::F32, n_expert),
            )
        });
        let w = c.g.moe_weights(probs, top, scale, scaled).unwrap();
        check(&format!("moe_weights of {k} slots"), c, &[top, w], tol);
    }
    // The experts' weighted sum: the CPU's bits (a product, then adds in slot order).
    let mut c = Case::new();
    let (hd, k, t) = (2816, 8, 3);
    let x = c.f32(&[hd, k, t], rng.vec(hd * k * t));
    let wts = c.f32(&[k, t], rng.vec(k * t));
    let s = c.g.moe_sum(x, wts).unwrap();
    check("moe_sum", c, &[s], 0.0);
    for ty in [DType::F32, DType::F16] {
        let mut c = Case::new();
        let st = c.state(ty, &[16, 6], rng.vec(96));
        let src = c.f32(&[16, 2], rng.vec(32));
        let slots = c.i32(&[2], vec![5, 2]);
        let wr = c.g.write_rows(st, src, slots).unwrap();
        check(&format!("write_rows {ty}"), c, &[wr], 1e-7);
    }
}

/// A MoE router's softmax, top-k and routing weights as one `moe_route_f32` launch (the fuse
/// plan's route): the same bits as the three kernels for probabilities, picks and weights, with and
/// without the per-expert scale and the renormalisation, over logits read through a strided view
/// (the softmax's layout), 128 experts and 8 slots (the 26B-A4B's) and 40 of 64 (past a warp).
#[test]
fn fused_routing_equals_the_separate_kernels() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(43);
    for (n, k, t, scaled) in [(128, 8, 1, true), (128, 8, 5, false), (64, 40, 3, true)] {
        let mut c = Case::new();
        let x = c.f32(&[n, 2 * t], rng.vec(2 * n * t));
        let logits =
            c.g.view(
                x,
                Shape::new(&[n, t]).unwrap(),
                [1, 2 * n, 2 * n * t, 2 * n * t],
                n,
            )
            .unwrap();
        let probs = c.g.softmax(logits).unwrap();
        let ids = c.g.top_k(probs, k).unwrap();
        let scale =
            scaled.then(|| c.weight(DType::F32, &[n], random_weight(&mut rng, DType::F32, n)));
        let w = c.g.moe_weights(probs, ids, scale, scaled).unwrap();
        let outs = [w, ids];
        let graph = c.g.finish(&outs).unwrap();
        let name = format!("route n{n} k{k} t{t} scaled {scaled}");
        cuda.record_launches(true);
        fused_matches_separate(&mut cuda, &name, &graph, &c.leaves, &outs, 1e-6, false);
        let log = cuda.take_launches();
        cuda.record_launches(false);
        for kernel in [
            "moe_route_f32",
            "softmax_f32",
            "top_k_f32",
            "moe_weights_f32",
        ] {
            assert!(log.iter().any(|l| l == kernel), "{name}: {kernel} ran");
        }
    }
}

/// `top_k` picks the CPU's indices in the CPU's order (f32::total_cmp descending, ties by lower
/// index) for rows of 1 to 300 elements and k from 1 to the whole row: repeated values, −0 and
/// +0, ±∞ and NaNs of either sign among random ones, several rows a launch.
#[test]
fn top_k_matches_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(32);
    for (n, k, rows) in [
        (1, 1, 3),
        (8, 3, 5),
        (37, 8, 9),
        (128, 8, 6),
        (128, 128, 2),
        (300, 20, 7),
    ] {
        let mut x = rng.vec(n * rows);
        for (i, v) in x.iter_mut().enumerate() {
            *v = match i % 11 {
                0 => 0.5,
                1 => -0.0,
                2 => 0.0,
                3 if i % 3 == 0 => f32::NAN,
                4 if i % 5 == 0 => -f32::NAN,
                5 if i % 7 == 0 => f32::INFINITY,
                6 if i % 7 == 0 => f32::NEG_INFINITY,
                _ => *v,
            };
        }
        let mut c = Case::new();
        let xi = c.f32(&[n, rows], x);
        let top = c.g.top_k(xi, k).unwrap();
        let graph = c.g.finish(&[top]).unwrap();
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[top]);
        let got = run_on(&mut cuda, &graph, &c.leaves, &[top]);
        assert_eq!(got, want, "top_k of {rows} rows of {n}, k {k}");
    }
}

/// Rows longer than `source::ARGMAX_CHUNK` take the chunked argmax (a block per chunk, then a
/// pick): the same index as the CPU for ties across chunks, NaNs (ignored), a maximum in the last
/// partial chunk, a row of −∞ and a row of NaN (both index 0).
#[test]
fn wide_argmax_rows_match_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(31);
    let n = 262_144 + 37;
    let rows = 6;
    let mut x = rng.vec(n * rows);
    fn row(x: &mut [f32], r: usize) -> &mut [f32] {
        let n = x.len() / 6;
        &mut x[r * n..(r + 1) * n]
    }
    // Row 0: the maximum twice, in chunks 3 and 40: the lower index wins.
    row(&mut x, 0)[40 * 4096 + 5] = 9.0;
    row(&mut x, 0)[3 * 4096 + 100] = 9.0;
    // Row 1: NaNs first and around a maximum.
    for i in [0, 1, 7000, 7002, n - 1] {
        row(&mut x, 1)[i] = f32::NAN;
    }
    row(&mut x, 1)[7001] = 5.0;
    // Row 2: the maximum in the last, partial chunk.
    row(&mut x, 2)[n - 2] = 7.0;
    // Row 3: −∞ everywhere; row 4: NaN everywhere.
    row(&mut x, 3).fill(f32::NEG_INFINITY);
    row(&mut x, 4).fill(f32::NAN);
    // Row 5: random values only.
    let want: Vec<f32> = vec![(3 * 4096 + 100) as f32, 7001.0, (n - 2) as f32, 0.0, 0.0];
    let mut c = Case::new();
    let xn = c.f32(&[n, rows], x);
    let am = c.g.argmax(xn).unwrap();
    let graph = c.g.finish(&[am]).unwrap();
    let got = run_on(&mut cuda, &graph, &c.leaves, &[am]).remove(0);
    let cpu = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[am]).remove(0);
    assert_eq!(&got[..5], &want[..], "planted rows");
    assert_eq!(got, cpu, "against the CPU");
    eprintln!("wide argmax: {rows} rows of {n}: {got:?}, as the CPU");
}

/// An explicit attention mask of `n` entries: every fifth −∞, the rest random.
fn explicit_mask(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                f32::NEG_INFINITY
            } else {
                rng.sym()
            }
        })
        .collect()
}

/// Attention nodes of `graph` the CUDA backend runs on the multi-query kernel when loaded now.
fn multi_query_attentions(
    cuda: &mut kernels::CudaBackend,
    graph: &Graph,
    leaves: &[(NodeId, Leaf)],
) -> usize {
    let bindings = bind_leaves(cuda, graph, leaves);
    let exe = cuda.load(graph, &bindings).unwrap();
    let n = cuda.multi_query_attentions(exe).unwrap();
    cuda.unload(exe).unwrap();
    n
}

#[test]
fn attention_gqa_ring_window_masks_f16() {
    let mut rng = Rng(5);
    let cases = [
        (
            256,
            4,
            2,
            40,
            20,
            vec![17, 18, 19],
            AttnMask::Causal,
            KvLayout::Linear,
            DType::F32,
        ),
        (
            512,
            4,
            1,
            40,
            20,
            vec![19],
            AttnMask::Causal,
            KvLayout::Linear,
            DType::F32,
        ),
        (
            32,
            4,
            2,
            8,
            30,
            vec![27, 28, 29],
            AttnMask::SlidingWindow { window: 5 },
            KvLayout::Ring,
            DType::F32,
        ),
        (
            64,
            6,
            3,
            24,
            21,
            vec![14, 20, 3],
            AttnMask::None,
            KvLayout::Linear,
            DType::F16,
        ),
        (
            64,
            6,
            3,
            24,
            21,
            vec![14, 20, 3],
            AttnMask::Explicit,
            KvLayout::Linear,
            DType::F32,
        ),
        (
            256,
            8,
            2,
            64,
            64,
            (48..64).collect(),
            AttnMask::SlidingWindow { window: 32 },
            KvLayout::Ring,
            DType::F16,
        ),
        // f16 rows of 256 and 512 (the wide kernel), long enough for many splits.
        (
            256,
            8,
            2,
            4096,
            3001,
            vec![2990, 2995, 3000],
            AttnMask::Causal,
            KvLayout::Linear,
            DType::F16,
        ),
        (
            512,
            8,
            1,
            2048,
            1203,
            (1190..1203).collect(),
            AttnMask::Explicit,
            KvLayout::Linear,
            DType::F16,
        ),
        // Long K/V: split-K blocks and the combine kernel.
        (
            128,
            8,
            2,
            4096,
            3000,
            vec![2997, 2998, 2999],
            AttnMask::Causal,
            KvLayout::Linear,
            DType::F16,
        ),
        (
            256,
            16,
            8,
            2048,
            5000,
            vec![4999],
            AttnMask::SlidingWindow { window: 1024 },
            KvLayout::Ring,
            DType::F32,
        ),
        (
            64,
            4,
            4,
            1024,
            1000,
            vec![999],
            AttnMask::SlidingWindow { window: 16 },
            KvLayout::Linear,
            DType::F32,
        ),
        (
            64,
            4,
            4,
            1024,
            0,
            vec![0],
            AttnMask::Causal,
            KvLayout::Linear,
            DType::F32,
        ),
    ];
    for (d, nh, nkv, cap, n_kv, q_pos, mask, layout, kv_ty) in cases {
        let t = q_pos.len();
        let mut c = Case::new();
        let q = c.f32(&[d, nh, t], rng.vec(d * nh * t));
        let k = c.state(kv_ty, &[d, nkv, cap], rng.vec(d * nkv * cap));
        let v = c.state(kv_ty, &[d, nkv, cap], rng.vec(d * nkv * cap));
        let p = c.i32(&[t], q_pos.clone());
        let n = c.i32(&[1], vec![n_kv]);
        let m = (mask == AttnMask::Explicit)
            .then(|| c.f32(&[cap, t], explicit_mask(&mut rng, cap * t)));
        let y =
            c.g.attention(
                q,
                k,
                v,
                p,
                n,
                m,
                AttnParams {
                    scale: 0.125,
                    mask,
                    kv_layout: layout,
                },
            )
            .unwrap();
        check(
            &format!("attention d{d} heads {nh}/{nkv} {mask:?} {layout:?} {kv_ty}"),
            c,
            &[y],
            1e-5,
        );
    }
}

/// (head dim, heads, K/V heads, cache rows, cached positions, query positions, mask, layout).
type MqCase = (
    usize,
    usize,
    usize,
    usize,
    i32,
    Vec<i32>,
    AttnMask,
    KvLayout,
);

/// Attention of more than 16 queries (prefill chunks) over f16 K/V rows of 256 and 512 runs on
/// the multi-query kernel: within 1e-5 of the CPU and of the per-query kernels, with causal,
/// sliding-window, explicit and no masks, ring caches, split-K blocks, queries past the cached
/// positions and unordered positions.
#[test]
fn multi_query_attention_matches_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(11);
    let cases: [MqCase; 7] = [
        (
            256,
            4,
            2,
            256,
            140,
            (100..140).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            512,
            8,
            1,
            256,
            203,
            (180..203).collect(),
            AttnMask::Explicit,
            KvLayout::Linear,
        ),
        (
            256,
            4,
            2,
            128,
            300,
            (250..300).collect(),
            AttnMask::SlidingWindow { window: 64 },
            KvLayout::Ring,
        ),
        // Few blocks over a long cache: 8 split-K blocks per (head, 16 queries).
        (
            256,
            2,
            1,
            4096,
            3100,
            (3060..3100).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            512,
            2,
            2,
            2048,
            1500,
            (1460..1500).collect(),
            AttnMask::SlidingWindow { window: 1024 },
            KvLayout::Linear,
        ),
        (
            256,
            4,
            2,
            128,
            10,
            (0..40).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            256,
            4,
            4,
            128,
            64,
            (0..64).rev().collect(),
            AttnMask::None,
            KvLayout::Linear,
        ),
    ];
    for (d, nh, nkv, cap, n_kv, q_pos, mask, layout) in cases {
        let t = q_pos.len();
        let mut c = Case::new();
        let q = c.f32(&[d, nh, t], rng.vec(d * nh * t));
        let k = c.state(DType::F16, &[d, nkv, cap], rng.vec(d * nkv * cap));
        let v = c.state(DType::F16, &[d, nkv, cap], rng.vec(d * nkv * cap));
        let p = c.i32(&[t], q_pos);
        let n = c.i32(&[1], vec![n_kv]);
        let m = (mask == AttnMask::Explicit)
            .then(|| c.f32(&[cap, t], explicit_mask(&mut rng, cap * t)));
        let params = AttnParams {
            scale: 0.0625,
            mask,
            kv_layout: layout,
        };
        let y = c.g.attention(q, k, v, p, n, m, params).unwrap();
        let graph = c.g.finish(&[y]).unwrap();
        let name = format!("attention d{d} heads {nh}/{nkv} t{t} {mask:?} {layout:?}");
        assert_eq!(
            multi_query_attentions(&mut cuda, &graph, &c.leaves),
            1,
            "{name}: not on the multi-query kernel"
        );
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]);
        let multi = run_on(&mut cuda, &graph, &c.leaves, &[y]);
        cuda.set_multi_query_attention(MultiQueryAttention::Off);
        let per_query = run_on(&mut cuda, &graph, &c.leaves, &[y]);
        cuda.set_multi_query_attention(MultiQueryAttention::LongBatches);
        let (err, err_pq) = (
            rel_err(&multi[0], &want[0]),
            rel_err(&multi[0], &per_query[0]),
        );
        assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
        assert!(
            err_pq <= 1e-5,
            "{name}: rel err {err_pq:e} against the per-query kernel"
        );
        eprintln!("multi-query {name}: rel err {err:.2e} (CPU), {err_pq:.2e} (per-query kernel)");
    }
}

/// Each row of a 16-query and of a 5-query batch has the bits of that query run alone (a verify
/// row equals the decode step), split-K and ring caches included, and the batches stay within
/// 1e-5 of the CPU: for the per-query kernels that decode steps and verify batches run, and for
/// the multi-query kernel on every batch.
#[test]
fn attention_is_batch_invariant() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(12);
    // The first three use every split the cache's capacity plans; the next three leave most
    // unused (a split takes at least 16 positions), and in the fifth the batch's queries use
    // 2 or 3 of the 16 splits. In the sixth, a query's split alone lies within one 32-position
    // step of the tensor-core kernel while the batch's union of that split spans two. In the
    // seventh, 3 heads per K/V group: the tensor-core kernel's units mix queries. In the last,
    // long ranges take one split per 512 positions past 32 splits: on tensor cores the batch's
    // queries use 33 or 34 of the 64 planned; the per-query kernels plan and use 32. In the
    // ninth, the first 12 queries see at most 16 positions, so they use one split and their
    // split's block writes their output rows (no combine), while the last 4 use two.
    let cases: [MqCase; 9] = [
        (
            256,
            4,
            2,
            4096,
            3100,
            (3084..3100).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            256,
            4,
            2,
            1040,
            3000,
            (2984..3000).collect(),
            AttnMask::SlidingWindow { window: 1024 },
            KvLayout::Ring,
        ),
        (
            512,
            4,
            1,
            2048,
            1203,
            (1187..1203).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            256,
            4,
            2,
            4096,
            267,
            (251..267).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            512,
            4,
            1,
            2048,
            40,
            (24..40).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            256,
            4,
            2,
            4096,
            100,
            (84..100).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            512,
            6,
            2,
            2048,
            1203,
            (1187..1203).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            512,
            4,
            1,
            20480,
            16906,
            (16890..16906).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
        (
            256,
            4,
            2,
            4096,
            20,
            (4..20).collect(),
            AttnMask::Causal,
            KvLayout::Linear,
        ),
    ];
    // f32 K/V take the generic per-query kernel (the DFlash drafter's cache); f16 the
    // tensor-core one (the default), the wide one, or the multi-query kernel.
    for (kv_dt, mode, tc, mq) in [
        (DType::F16, MultiQueryAttention::LongBatches, true, 0),
        (DType::F16, MultiQueryAttention::LongBatches, false, 0),
        (DType::F16, MultiQueryAttention::Every, true, 1),
        (DType::F32, MultiQueryAttention::LongBatches, true, 0),
    ] {
        cuda.set_multi_query_attention(mode);
        cuda.set_tensor_core_attention(tc);
        for (d, nh, nkv, cap, n_kv, q_pos, mask, layout) in cases.clone() {
            let t = q_pos.len();
            let (qv, kv, vv) = (
                rng.vec(d * nh * t),
                rng.vec(d * nkv * cap),
                rng.vec(d * nkv * cap),
            );
            let params = AttnParams {
                scale: 0.0625,
                mask,
                kv_layout: layout,
            };
            // The batch of `rows` (query indices) as a graph.
            let build = |rows: &[usize]| {
                let mut c = Case::new();
                let mut q = Vec::new();
                for &r in rows {
                    for h in 0..nh {
                        q.extend_from_slice(&qv[(r * nh + h) * d..(r * nh + h + 1) * d]);
                    }
                }
                let qn = c.f32(&[d, nh, rows.len()], q);
                let k = c.state(kv_dt, &[d, nkv, cap], kv.clone());
                let v = c.state(kv_dt, &[d, nkv, cap], vv.clone());
                let p = c.i32(&[rows.len()], rows.iter().map(|&r| q_pos[r]).collect());
                let n = c.i32(&[1], vec![n_kv]);
                let y = c.g.attention(qn, k, v, p, n, None, params).unwrap();
                let graph = c.g.finish(&[y]).unwrap();
                (graph, c.leaves, y)
            };
            let name = format!(
                "attention {kv_dt:?} {mode:?} tc {tc} d{d} heads {nh}/{nkv} n_kv {n_kv} {mask:?} {layout:?}"
            );
            let row = nh * d;
            let alone: Vec<Vec<f32>> = (0..t)
                .map(|r| {
                    let (graph, leaves, y) = build(&[r]);
                    run_on(&mut cuda, &graph, &leaves, &[y]).remove(0)
                })
                .collect();
            for rows in [t, 5] {
                let batch_rows: Vec<usize> = (0..rows).collect();
                let (graph, leaves, y) = build(&batch_rows);
                assert_eq!(
                    multi_query_attentions(&mut cuda, &graph, &leaves),
                    mq,
                    "{name}"
                );
                let batch = run_on(&mut cuda, &graph, &leaves, &[y]).remove(0);
                let want = run_on(&mut CpuBackend::new(), &graph, &leaves, &[y]).remove(0);
                let err = rel_err(&batch, &want);
                assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
                for r in 0..rows {
                    assert!(
                        same_bits(&alone[r], &batch[r * row..(r + 1) * row]),
                        "{name}: query {r} alone differs from its row in a {rows}-query batch"
                    );
                }
                eprintln!("{name}: {rows} rows equal the queries alone; rel err {err:.2e} (CPU)");
            }
        }
    }
    cuda.set_multi_query_attention(MultiQueryAttention::LongBatches);
    cuda.set_tensor_core_attention(true);
}

/// (head dim, heads, K/V heads, cache rows, cached positions, mask, layout).
type LastQueriesCase = (usize, usize, usize, usize, i32, AttnMask, KvLayout);

/// Attention of `t` queries at the last cached positions (clamped at 0) over random f16 K/V of
/// `case`, scale 1/16, an explicit mask where the case asks: the graph, its leaves, its output.
fn last_queries_attention(
    rng: &mut Rng,
    (d, nh, nkv, cap, n_kv, mask, layout): LastQueriesCase,
    t: usize,
) -> (Graph, Vec<(NodeId, Leaf)>, NodeId) {
    let mut c = Case::new();
    let q = c.f32(&[d, nh, t], rng.vec(d * nh * t));
    let k = c.state(DType::F16, &[d, nkv, cap], rng.vec(d * nkv * cap));
    let v = c.state(DType::F16, &[d, nkv, cap], rng.vec(d * nkv * cap));
    let pos: Vec<i32> = (n_kv - t as i32..n_kv).map(|p| p.max(0)).collect();
    let p = c.i32(&[t], pos);
    let n = c.i32(&[1], vec![n_kv]);
    let m = (mask == AttnMask::Explicit).then(|| c.f32(&[cap, t], explicit_mask(rng, cap * t)));
    let params = AttnParams {
        scale: 0.0625,
        mask,
        kv_layout: layout,
    };
    let y = c.g.attention(q, k, v, p, n, m, params).unwrap();
    (c.g.finish(&[y]).unwrap(), c.leaves, y)
}

/// Attention of up to 16 queries over f16 K/V rows of 128, 256 and 512 runs on the tensor-core
/// kernel by default: within 1e-5 of the CPU and of the wide per-query kernel (the generic one at
/// 128: the DFlash drafter's shape, 8 heads per group with no mask or a window, and a causal
/// ring of 3 heads per group), for 1, 2, 3 and 8 heads
/// per K/V group (rows of one unit from several queries, and padding rows), causal,
/// sliding-window, explicit and no masks, ring and linear caches, one split and many, ranges
/// shorter than a step, an empty cache and a query that sees one position; with the same bits
/// when a row tile's blocks walk all its splits (one slot) or half of them (two), and with a
/// block per split.
#[test]
fn tensor_core_attention_matches_the_cpu() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(41);
    let default_blocks = cuda.attention_blocks();
    let cases: [LastQueriesCase; 13] = [
        (128, 64, 8, 2048, 81, AttnMask::None, KvLayout::Linear),
        (
            128,
            64,
            8,
            4096,
            2500,
            AttnMask::SlidingWindow { window: 2048 },
            KvLayout::Linear,
        ),
        (128, 12, 4, 1040, 1500, AttnMask::Causal, KvLayout::Ring),
        (
            256,
            32,
            16,
            1040,
            3000,
            AttnMask::SlidingWindow { window: 1024 },
            KvLayout::Ring,
        ),
        (512, 32, 4, 4096, 3001, AttnMask::Causal, KvLayout::Linear),
        (256, 4, 4, 600, 517, AttnMask::Explicit, KvLayout::Linear),
        (512, 6, 2, 2048, 1203, AttnMask::Causal, KvLayout::Linear),
        (256, 8, 4, 256, 40, AttnMask::None, KvLayout::Linear),
        (
            256,
            16,
            2,
            128,
            300,
            AttnMask::SlidingWindow { window: 64 },
            KvLayout::Ring,
        ),
        (512, 8, 1, 64, 20, AttnMask::Causal, KvLayout::Linear),
        (512, 8, 1, 20480, 17000, AttnMask::Causal, KvLayout::Linear),
        (256, 4, 2, 64, 1, AttnMask::Causal, KvLayout::Linear),
        (256, 4, 2, 64, 0, AttnMask::Causal, KvLayout::Linear),
    ];
    for case in cases {
        let (d, nh, nkv, _, n_kv, mask, layout) = case;
        for t in [1usize, 2, 5, 16] {
            let t = t.min(n_kv.max(1) as usize);
            let (graph, leaves, y) = last_queries_attention(&mut rng, case, t);
            let name = format!(
                "attention d{d} heads {nh}/{nkv} n_kv {n_kv} {t} queries {mask:?} {layout:?}"
            );
            let bindings = bind_leaves(&mut cuda, &graph, &leaves);
            let exe = cuda.load(&graph, &bindings).unwrap();
            let kernels = cuda.attention_kernels(exe).unwrap();
            cuda.unload(exe).unwrap();
            assert_eq!(kernels, [format!("attention_tc_d{d}")], "{name}");
            let want = run_on(&mut CpuBackend::new(), &graph, &leaves, &[y]).remove(0);
            let got = run_on(&mut cuda, &graph, &leaves, &[y]).remove(0);
            // Blocks walking all the splits of their row tile (one slot), walking half of them
            // (two slots) and a block per unit give the same bits.
            for bound in [1, 2 * nkv * (t * nh / nkv).div_ceil(8), 0] {
                cuda.set_attention_blocks(bound);
                let walked = run_on(&mut cuda, &graph, &leaves, &[y]).remove(0);
                assert!(
                    same_bits(&walked, &got),
                    "{name}: at most {bound} blocks changes the bits"
                );
            }
            cuda.set_attention_blocks(default_blocks);
            cuda.set_tensor_core_attention(false);
            let wide = run_on(&mut cuda, &graph, &leaves, &[y]).remove(0);
            cuda.set_tensor_core_attention(true);
            let (err, err_wide) = (rel_err(&got, &want), rel_err(&got, &wide));
            assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
            assert!(
                err_wide <= 1e-5,
                "{name}: rel err {err_wide:e} against the wide kernel"
            );
            assert!(
                got.iter().all(|x| x.is_finite()),
                "{name}: non-finite output"
            );
            eprintln!("tensor-core {name}: rel err {err:.2e} (CPU), {err_wide:.2e} (wide kernel)");
        }
    }
}

/// A block per two heads of one K/V group (the wide kernels' `_g2` form, by default for batches of
/// 4 queries or more) gives every head the bits of a block per head: decode steps and 5- and 16-query verify batches, linear and
/// ring caches, head dims 256 and 512, 2 and 4 heads per group, one and several splits.
#[test]
fn grouped_attention_equals_a_block_per_head() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(31);
    // The grouping is a form of the wide kernels, which the tensor-core kernel replaces by default.
    cuda.set_tensor_core_attention(false);
    let cases: [LastQueriesCase; 5] = [
        (256, 4, 2, 4096, 3100, AttnMask::Causal, KvLayout::Linear),
        (256, 4, 2, 600, 500, AttnMask::Explicit, KvLayout::Linear),
        (
            256,
            8,
            4,
            1040,
            3000,
            AttnMask::SlidingWindow { window: 1024 },
            KvLayout::Ring,
        ),
        (512, 8, 2, 2048, 1203, AttnMask::Causal, KvLayout::Linear),
        (512, 4, 1, 2048, 40, AttnMask::Causal, KvLayout::Linear),
    ];
    for case in cases {
        let (d, nh, nkv, _, _, mask, layout) = case;
        for t in [1usize, 5, 16] {
            let (graph, leaves, y) = last_queries_attention(&mut rng, case, t);
            let mut by_knob = Vec::new();
            for grouped in [Some(1), None] {
                cuda.set_attention_groups(grouped);
                by_knob.push(run_on(&mut cuda, &graph, &leaves, &[y]).remove(0));
            }
            let want = run_on(&mut CpuBackend::new(), &graph, &leaves, &[y]).remove(0);
            let err = rel_err(&by_knob[0], &want);
            let name = format!("attention d{d} heads {nh}/{nkv} {t} queries {mask:?} {layout:?}");
            assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
            assert!(
                same_bits(&by_knob[0], &by_knob[1]),
                "{name}: grouped and per-head blocks differ"
            );
            eprintln!("{name}: grouped = per head; rel err {err:.2e} (CPU)");
        }
    }
    cuda.set_attention_groups(Some(4));
    cuda.set_tensor_core_attention(true);
}

#[test]
fn kernel_errors_are_reported() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut c = Case::new();
    let mut rng = Rng(6);
    let w = c.weight(
        DType::Q8_0,
        &[32, 4],
        random_weight(&mut rng, DType::Q8_0, 128),
    );
    let ids = c.i32(&[2], vec![1, 4]);
    let y = c.g.get_rows(w, ids).unwrap();
    let graph = c.g.finish(&[y]).unwrap();
    let bindings = bind_leaves(&mut cuda, &graph, &c.leaves);
    let exe = cuda.load(&graph, &bindings).unwrap();
    cuda.write(cuda.buffer_of(exe, ids).unwrap(), 0, HostData::I32(&[1, 4]))
        .unwrap();
    let err = cuda.run(exe).unwrap_err();
    assert!(
        err.to_string().contains("a row id is outside the table"),
        "{err}"
    );
}

#[test]
fn replayed_graphs_follow_new_inputs() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(7);
    // One row (the `_mma_` kernels), then 64 rows whose two products take the GEMM route and
    // share one conversion of x (the CPU rounds the same operands); for the GEMM graph a second,
    // wider graph loaded halfway grows the shared weight scratch, which must re-capture the
    // first graph with its new address.
    for rows in [1, 64] {
        let (k, n) = (256, 33);
        let mut g = GraphBuilder::new();
        let w = g
            .weight("w", DType::Q4_K, Shape::new(&[k, n]).unwrap())
            .unwrap();
        let x = g
            .input("x", DType::F32, Shape::new(&[k, rows]).unwrap())
            .unwrap();
        let y = g.matmul(w, x).unwrap();
        let y2 = g.matmul(w, x).unwrap();
        let z = g.unary(UnaryOp::Gelu, y).unwrap();
        let z = g.add(z, y2).unwrap();
        let graph = g.finish(&[z]).unwrap();
        let bytes = random_weight(&mut rng, DType::Q4_K, k * n);
        let gemm = usize::from(rows >= GEMM_MIN_ROWS && cuda.has_cublas());
        let mut cpu = CpuBackend::new();
        cpu.set_f16_products((gemm == 1).then_some(GEMM_MIN_ROWS));
        let shape = Shape::new(&[k, n]).unwrap();
        let (mut bc, mut bg) = (Bindings::new(), Bindings::new());
        let upload = |b: &mut dyn Backend| {
            b.upload(DType::Q4_K, shape, HostBytes::from_vec(bytes.clone()))
                .unwrap()
        };
        bc.bind(w, upload(&mut cpu));
        bg.bind(w, upload(&mut cuda));
        let (ec, eg) = (
            cpu.load(&graph, &bc).unwrap(),
            cuda.load(&graph, &bg).unwrap(),
        );
        assert_eq!(cuda.gemm_products(eg).unwrap(), 2 * gemm);
        // Run 1 is eager, run 2 captures, later runs replay the captured graph.
        for run in 0..6 {
            if run == 3 && gemm == 1 {
                let mut g2 = GraphBuilder::new();
                let wide = Shape::new(&[4096, 512]).unwrap();
                let w2 = g2.weight("w2", DType::Q4_K, wide).unwrap();
                let x2 = g2
                    .input("x2", DType::F32, Shape::new(&[4096, 64]).unwrap())
                    .unwrap();
                let y3 = g2.matmul(w2, x2).unwrap();
                let graph2 = g2.finish(&[y3]).unwrap();
                let mut b2 = Bindings::new();
                let wb = random_weight(&mut rng, DType::Q4_K, 4096 * 512);
                b2.bind(
                    w2,
                    cuda.upload(DType::Q4_K, wide, HostBytes::from_vec(wb))
                        .unwrap(),
                );
                let e2 = cuda.load(&graph2, &b2).unwrap();
                cuda.run(e2).unwrap();
            }
            let xs = rng.vec(k * rows);
            cpu.write(cpu.buffer_of(ec, x).unwrap(), 0, HostData::F32(&xs))
                .unwrap();
            cuda.write(cuda.buffer_of(eg, x).unwrap(), 0, HostData::F32(&xs))
                .unwrap();
            cpu.run(ec).unwrap();
            cuda.run(eg).unwrap();
            let want = cpu.read_node(ec, &graph, z).unwrap().into_f32().unwrap();
            let got = cuda.read_node(eg, &graph, z).unwrap().into_f32().unwrap();
            let err = rel_err(&got, &want);
            assert!(err < 2e-5, "{rows} rows, run {run}: relative error {err:e}");
        }
        assert!(
            cuda.captured_nodes(eg).is_some(),
            "{rows} rows: no graph was captured"
        );
    }
}

/// A step's inputs written without waiting for the device (the default) reach the run that
/// follows in order, as with a wait per write: of two writes to one buffer the later wins, a
/// write at an offset lands there, and every run (eager, capturing, replayed) sees the inputs
/// written just before it, never an earlier run's.
#[test]
fn queued_writes_reach_the_next_run() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let n = 70_000;
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, Shape::new(&[n]).unwrap()).unwrap();
    let y = g.scale(x, 2.0).unwrap();
    let graph = g.finish(&[y]).unwrap();
    let mut rng = Rng(31);
    for queued in [true, false] {
        cuda.set_queued_writes(queued);
        let exe = cuda.load(&graph, &Bindings::new()).unwrap();
        let xb = cuda.buffer_of(exe, x).unwrap();
        for run in 0..6 {
            let first = rng.vec(n);
            let mut last = rng.vec(n);
            cuda.write(xb, 0, HostData::F32(&first)).unwrap();
            cuda.write(xb, 0, HostData::F32(&last)).unwrap();
            let tail = rng.vec(1000);
            cuda.write(xb, n - 1000, HostData::F32(&tail)).unwrap();
            last[n - 1000..].copy_from_slice(&tail);
            cuda.run(exe).unwrap();
            let got = cuda.read_node(exe, &graph, y).unwrap().into_f32().unwrap();
            let want: Vec<f32> = last.iter().map(|v| v * 2.0).collect();
            assert!(
                same_bits(&got, &want),
                "queued {queued}, run {run}: the run did not see the last writes"
            );
        }
        cuda.unload(exe).unwrap();
    }
    cuda.set_queued_writes(true);
}

/// The bench's read ceiling kernel reads every 32-bit word of its runs exactly once: its
/// per-block wrapping sums add up to the CPU's sum of random runs of many sizes (a run of more
/// words than the grid's threads take in one round, runs of fewer words than one block's
/// threads, three runs sharing a launch), and the timed pass gives a figure and refuses
/// malformed launches.
#[test]
fn read_pass_reads_every_word_once() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(26);
    for sizes in [
        vec![16 << 20],
        vec![3 << 20, 16, 12_345 * 16],
        vec![4096, 65_536],
        vec![48],
    ] {
        let runs: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|_| rng.next() as u8).collect())
            .collect();
        let want = runs
            .iter()
            .flat_map(|r| r.chunks_exact(4))
            .fold(0u32, |x, w| {
                x.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            });
        let refs: Vec<&[u8]> = runs.iter().map(Vec::as_slice).collect();
        let got = cuda.read_runs_sum(&refs).expect("read kernel");
        assert_eq!(got, want, "runs of {sizes:?} bytes");
    }
    let secs = cuda
        .read_pass_seconds(&[vec![1 << 20, 4096, 1 << 22], vec![8 << 20], vec![100]], 3)
        .expect("read pass");
    assert!(secs > 0.0 && secs < 1.0, "read pass took {secs} s");
    assert!(cuda.read_runs_sum(&[&[1u8; 17]]).is_err());
    assert!(cuda.read_runs_sum(&[]).is_err());
    assert!(cuda.read_pass_seconds(&[vec![]], 1).is_err());
    assert!(cuda.read_pass_seconds(&[vec![16, 16, 16, 16]], 1).is_err());
    assert!(cuda.read_pass_seconds(&[vec![0]], 1).is_err());
}

/// The measurement mode `set_products_as_reads`: each weight product launches the read kernel
/// in its place (and no product kernel), and turned off again the same graph's product matches
/// the CPU's.
#[test]
fn products_as_reads_replace_only_the_products() {
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    let mut rng = Rng(27);
    for ty in [DType::Q4_K, DType::Q6_K] {
        let (k, n, m) = (512, 300, 1);
        let mut c = Case::new();
        let w = c.weight(ty, &[k, n], random_weight(&mut rng, ty, k * n));
        let x = c.f32(&[k, m], rng.vec(k * m));
        let y = c.g.matmul(w, x).unwrap();
        let graph = c.g.finish(&[y]).unwrap();
        let want = run_on(&mut CpuBackend::new(), &graph, &c.leaves, &[y]).remove(0);
        cuda.set_products_as_reads(true);
        cuda.record_launches(true);
        run_on(&mut cuda, &graph, &c.leaves, &[y]);
        let log = cuda.take_launches();
        cuda.record_launches(false);
        cuda.set_products_as_reads(false);
        assert!(
            log.iter().any(|n| n == "read_runs_u128") && !log.iter().any(|n| n.contains("_mma_")),
            "{ty}: launched {log:?}"
        );
        let got = run_on(&mut cuda, &graph, &c.leaves, &[y]).remove(0);
        let err = rel_err(&got, &want);
        assert!(err <= 1e-5, "{ty}: relative error {err:e} after the mode");
    }
}

/// The shared-memory share the launches of step graphs prefer (`CudaBackend::smem_carveout`)
/// holds the persistent products at their occupancy — two blocks of 24 KiB of partial sums for
/// batches of up to 8 rows (`PERSIST_ITERS` iterations × 8 warps × 4 accumulators × 32 lanes ×
/// 4 bytes), the most; one (2, 2) block of 48 KiB needs one reserve less — and leaves most of
/// the unified memory to L1.
#[test]
fn the_carveout_holds_the_persistent_products() {
    use cudarc::driver::{sys::CUdevice_attribute as A, CudaContext};
    let Some(cuda) = crate::cuda() else {
        return;
    };
    let ctx = CudaContext::new(0).expect("opening the device");
    let (major, _) = ctx.compute_capability().expect("compute capability");
    let Some(percent) = cuda.smem_carveout() else {
        panic!("no carveout chosen (is SPECULA_SMEM_CARVEOUT=driver set?)");
    };
    if major < 8 {
        return;
    }
    let attr = |a| ctx.attribute(a).expect("device attribute") as usize;
    let per_sm = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR);
    let reserved = attr(A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK);
    let one_tile_block = kernels::source::PERSIST_ITERS * 8 * 4 * 32 * 4;
    let need = 2 * (one_tile_block + reserved);
    let share = percent as usize * per_sm / 100;
    assert!(
        share >= need && percent < 50,
        "{percent} % of {per_sm} bytes = {share}, for products needing {need}"
    );
}

/// One MoE FFN of a step (`h`-wide rows of `t` tokens) on `x`: a norm's tail, the dense MLP on
/// Q4_K tensor-core products, the routed experts on Q8_0 and Q5_0 `matmul_id`, their post-norms
/// and sum, added to the residual.
fn moe_ffn_layer(c: &mut Case, rng: &mut Rng, x: NodeId, h: usize, t: usize) -> NodeId {
    let (f, n_exp, k, i) = (2048, 16, 4, 256);
    let norm_w =
        |c: &mut Case, rng: &mut Rng| c.weight(DType::F32, &[h], random_weight(rng, DType::F32, h));
    let w0 = norm_w(c, rng);
    let r = c.g.rms_norm(x, Some(w0), 1e-6).unwrap();
    let r = c.g.add(x, r).unwrap();
    // The dense MLP.
    let w1 = norm_w(c, rng);
    let m_in = c.g.rms_norm(r, Some(w1), 1e-6).unwrap();
    let gu = c.random_products(rng, m_in, h, &[(DType::Q4_K, f), (DType::Q4_K, f)], false);
    let act = c.g.glu(GluOp::GeGlu, gu[0], gu[1]).unwrap();
    // Random weights make the GLU's outputs ~1e5, past the f16 range the tensor-core products'
    // activations must stay in (matvec_mma.cu): scaled back as a trained model's are.
    let act = c.g.scale(act, 1.0 / 1024.0).unwrap();
    let down = c.random_products(rng, act, f, &[(DType::Q4_K, h)], false)[0];
    let w2 = norm_w(c, rng);
    let m = c.g.rms_norm(down, Some(w2), 1e-6).unwrap();
    // The routed experts.
    let w3 = norm_w(c, rng);
    let rn = c.g.rms_norm(r, Some(w3), 1e-6).unwrap();
    let rn = c.g.scale(rn, 1.0 / (h as f32).sqrt()).unwrap();
    let logits = c.random_products(rng, rn, h, &[(DType::F32, n_exp)], false)[0];
    let probs = c.g.softmax(logits).unwrap();
    let ids = c.g.top_k(probs, k).unwrap();
    let es = c.weight(DType::F32, &[n_exp], random_weight(rng, DType::F32, n_exp));
    let weights = c.g.moe_weights(probs, ids, Some(es), true).unwrap();
    let w4 = norm_w(c, rng);
    let xin = c.g.rms_norm(r, Some(w4), 1e-6).unwrap();
    let xin = c.g.reshape(xin, Shape::new(&[h, 1, t]).unwrap()).unwrap();
    let mut exps = Vec::new();
    for (ty, kk, n) in [
        (DType::Q8_0, h, i),
        (DType::Q8_0, h, i),
        (DType::Q5_0, i, h),
    ] {
        exps.push(c.weight(ty, &[kk, n, n_exp], random_weight(rng, ty, kk * n * n_exp)));
    }
    let eg = c.g.matmul_id(exps[0], xin, ids).unwrap();
    let eu = c.g.matmul_id(exps[1], xin, ids).unwrap();
    let ea = c.g.glu(GluOp::GeGlu, eg, eu).unwrap();
    let eo = c.g.matmul_id(exps[2], ea, ids).unwrap();
    let e = c.g.moe_sum(eo, weights).unwrap();
    let w5 = norm_w(c, rng);
    let e = c.g.rms_norm(e, Some(w5), 1e-6).unwrap();
    let sum = c.g.add(m, e).unwrap();
    let w6 = norm_w(c, rng);
    let sum = c.g.rms_norm(sum, Some(w6), 1e-6).unwrap();
    c.g.add(r, sum).unwrap()
}

/// Two MoE FFN layers of a five-token verify batch: each layer's experts run on the side stream
/// beside its dense MLP (`branch_plan`), eagerly and replayed from a captured graph, with the same bits as on one
/// stream, and match the CPU. Every run gets other inputs, so a replay that read a side value
/// before the side wrote it would show the previous run's.
#[test]
fn moe_experts_on_the_side_stream_equal_one_stream() {
    let mut rng = Rng(51);
    // Five tokens: a verify batch whose expert products have 20 rows.
    let (h, t) = (1024, 5);
    let mut c = Case::new();
    let x = c.f32(&[h, t], rng.vec(h * t));
    let l1 = moe_ffn_layer(&mut c, &mut rng, x, h, t);
    let out = moe_ffn_layer(&mut c, &mut rng, l1, h, t);
    // (The picks are no output: an output stays on the main stream, and with it the routing.)
    let outs = [out];
    let graph = c.g.finish(&outs).unwrap();
    // The plan is checked everywhere; the GPU runs only where there is one.
    assert_eq!(
        kernels::planned_branches(&graph),
        2,
        "each layer's experts fork"
    );
    let Some(mut cuda) = crate::cuda() else {
        return;
    };
    // An eager run, then a captured graph replayed twice, each on new inputs.
    let runs: Vec<Vec<(NodeId, Vec<f32>)>> = (0..3)
        .map(|n| {
            if n == 0 {
                vec![]
            } else {
                vec![(x, rng.vec(h * t))]
            }
        })
        .collect();
    let want = run_on_times(&mut CpuBackend::new(), &graph, &c.leaves, &outs, &runs);
    cuda.set_branches(false);
    let before = cuda.side_branches_launched();
    let one = run_on_times(&mut cuda, &graph, &c.leaves, &outs, &runs);
    assert_eq!(
        cuda.side_branches_launched(),
        before,
        "no branch with branches off"
    );
    cuda.set_branches(true);
    let two = run_on_times(&mut cuda, &graph, &c.leaves, &outs, &runs);
    assert_eq!(
        cuda.side_branches_launched(),
        before + 4,
        "the eager run and the capture fork each layer"
    );
    for (n, ((a, b), w)) in two.iter().zip(&one).zip(&want).enumerate() {
        assert!(
            !same_bits(&a[0], &one[(n + 1) % 3][0]),
            "run {n}: inputs differ"
        );
        assert!(
            same_bits(&a[0], &b[0]),
            "run {n}: two streams and one differ"
        );
        let err = rel_err(&b[0], &w[0]);
        eprintln!(
            "moe ffn run {n} on two streams: same bits as one; rel err against the CPU {err:.2e}"
        );
        assert!(err <= 1e-5, "run {n}: rel err {err:e}");
    }
}

/// The backends the wgmma verify kernels run on: the default one and one built with
/// `SPECULA_Q4K_HL=1` (the other summation order), both with repacked copies on (the Q6_K form
/// reads them) whatever the environment says, on an sm_90a device; none (the tests skip)
/// elsewhere.
fn wgmma_backends() -> Vec<(&'static str, kernels::CudaBackend)> {
    let Some(mut cuda) = crate::cuda() else {
        return Vec::new();
    };
    if !cuda.wgmma_verify_supported() {
        eprintln!("skipped: the wgmma verify kernels need an sm_90a (9.0) device");
        return Vec::new();
    }
    let mut hl = kernels::CudaBackend::with_knobs(0, &[("SPECULA_Q4K_HL", 1)])
        .expect("creating the Q4K_HL backend");
    assert!(hl.wgmma_verify_supported());
    cuda.set_q8_repack(true);
    hl.set_q8_repack(true);
    vec![("default order", cuda), ("Q4K_HL", hl)]
}

/// On an sm_90a device, prepared Q4_K products of 9–16 rows take `matmul_q4_k_mma_wg` after
/// `q4k_wg_image`, and Q6_K ones (repacked) `matmul_q6_kr_mma_wg` after `q6k_wg_image`
/// (recorded), and give the (2, 2) rows kernels' bits, within 1e-5 of the CPU, in both Q4_K
/// summation orders (`Q4K_HL` 0 and 1): one plane and 2 and 4 split planes (k 8,192, 16,384),
/// 8, 4, 2 and 1 slices (k 512 and 256 leave warpgroups without one), 9 groups over 8 slices,
/// partial last blocks of 64 rows; eagerly and under graph replay with new inputs each run.
/// Products of 1–8 rows and in-place ones keep the rows kernels.
#[test]
fn wgmma_verify_products_equal_the_rows_kernels() {
    for (order, mut cuda) in wgmma_backends() {
        let mut rng = Rng(71);
        for (dtype, kernel, image) in [
            (DType::Q4_K, "matmul_q4_k_mma_wg", "q4k_wg_image"),
            (DType::Q6_K, "matmul_q6_kr_mma_wg", "q6k_wg_image"),
        ] {
            for (k, n) in [
                (5376, 1100),
                (8192, 1000),
                (16_384, 300),
                (2304, 777),
                (1024, 130),
                (512, 200),
                (256, 64),
            ] {
                let wbytes = random_weight(&mut rng, dtype, k * n);
                for m in [1, 8, 9, 12, 16] {
                    let mut c = Case::new();
                    let w = c.weight(dtype, &[k, n], wbytes.clone());
                    let x = c.f32(&[k, m], rng.vec(k * m));
                    let y = c.g.matmul(w, x).unwrap();
                    let graph = c.g.finish(&[y]).unwrap();
                    let runs: Vec<_> = (0..2).map(|_| vec![(x, rng.vec(k * m))]).collect();
                    let want = run_on_times(&mut CpuBackend::new(), &graph, &c.leaves, &[y], &runs);
                    for prepare in [true, false] {
                        cuda.set_mma_prepare(Some(prepare));
                        let mut by_route = Vec::new();
                        for wgmma in [true, false] {
                            cuda.set_wgmma_verify(wgmma);
                            cuda.record_launches(true);
                            by_route.push(run_on_times(&mut cuda, &graph, &c.leaves, &[y], &runs));
                            let log = cuda.take_launches();
                            cuda.record_launches(false);
                            let name = format!(
                                "{order} {dtype} k{k} n{n} m{m} prepared {prepare} wgmma {wgmma}"
                            );
                            let count = |name: &str| log.iter().filter(|l| *l == name).count();
                            let takes = wgmma && prepare && m > 8;
                            assert_eq!(count(kernel) > 0, takes, "{name}: launched {log:?}");
                            assert_eq!(
                                count(image),
                                count(kernel),
                                "{name}: one image a product here: {log:?}"
                            );
                        }
                        for run in 0..runs.len() {
                            let (got, rows) = (&by_route[0][run][0], &by_route[1][run][0]);
                            let name = format!(
                                "{order} {dtype} k{k} n{n} m{m} prepared {prepare} run {run}"
                            );
                            assert!(
                                same_bits(got, rows),
                                "{name}: the wgmma kernel's bits differ from the rows kernels'"
                            );
                            let err = rel_err(got, &want[run][0]);
                            assert!(err <= 1e-5, "{name}: rel err {err:e} against the CPU");
                        }
                    }
                }
            }
        }
        cuda.set_mma_prepare(None);
    }
}

/// The wgmma verify products of one prepared input share its image (with every product made to
/// prepare: q and k of one norm, gate and up of another — two Q4_K images, four Q4_K wgmma
/// launches a launch sequence), a Q6_K product of the same input writes its own image in its
/// layout (over the Q4_K one), and the outputs are the same bits with sibling chains on and off
/// and on the rows kernels, and with the wgmma products leading their chains late (the default)
/// or not: 9 and 16 rows, both summation orders, three runs with new inputs (eager, capture,
/// replay).
#[test]
fn wgmma_verify_products_share_an_image() {
    for (order, mut cuda) in wgmma_backends() {
        let k = 2048;
        for m in [9, 16] {
            let mut rng = Rng(83 + m as u64);
            let mut c = Case::new();
            let x = c.f32(&[k, m], rng.vec(k * m));
            let x2 = c.f32(&[k, m], rng.vec(k * m));
            let h = c.g.rms_norm(x, None, 1e-6).unwrap();
            let qkv = [
                (DType::Q4_K, 4096),
                (DType::Q4_K, 1024),
                (DType::Q6_K, 1024),
            ];
            let mut outs = c.random_products(&mut rng, h, k, &qkv, false);
            let h2 = c.g.rms_norm(x2, None, 1e-6).unwrap();
            outs.extend(c.random_products(&mut rng, h2, k, &[(DType::Q4_K, 2048); 2], false));
            let graph = c.g.finish(&outs).unwrap();
            let runs: Vec<_> = (0..3)
                .map(|_| vec![(x, rng.vec(k * m)), (x2, rng.vec(k * m))])
                .collect();
            cuda.set_mma_prepare(Some(true));
            let mut by_mode = Vec::new();
            for (wgmma, siblings, late) in [
                (true, true, true),
                (true, false, true),
                (false, true, true),
                (true, true, false),
            ] {
                cuda.set_wgmma_verify(wgmma);
                cuda.set_pdl_siblings(siblings);
                cuda.set_wgmma_late(late);
                cuda.record_launches(true);
                by_mode.push(run_on_times(&mut cuda, &graph, &c.leaves, &outs, &runs));
                let log = cuda.take_launches();
                cuda.record_launches(false);
                let count = |name: &str| log.iter().filter(|l| *l == name).count();
                let images = count("q4k_wg_image");
                let products = count("matmul_q4_k_mma_wg");
                let name = format!("{order} m{m} wgmma {wgmma} siblings {siblings} late {late}");
                assert_eq!(products, 2 * images, "{name}: {log:?}");
                assert_eq!(products > 0, wgmma, "{name}: {log:?}");
                let q6 = count("matmul_q6_kr_mma_wg");
                assert_eq!(q6, count("q6k_wg_image"), "{name}: {log:?}");
                assert_eq!(q6 > 0, wgmma, "{name}: {log:?}");
            }
            for (mode, other) in by_mode[1..].iter().enumerate() {
                for run in 0..runs.len() {
                    for (o, (a, b)) in by_mode[0][run].iter().zip(&other[run]).enumerate() {
                        assert!(
                            same_bits(a, b),
                            "{order} m{m} run {run} output {o}: the wgmma route with siblings and late leads differs from mode {}",
                            mode + 1
                        );
                    }
                }
            }
        }
        cuda.set_mma_prepare(None);
        cuda.set_pdl_siblings(true);
        cuda.set_wgmma_late(true);
    }
}
