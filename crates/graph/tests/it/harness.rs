//! Test helpers: a deterministic RNG, relative error, random weights of every type, and a
//! harness that builds, loads and runs a graph on the CPU backend.

use graph::{
    Backend, Bindings, CpuBackend, DType, GraphBuilder, HostBytes, HostData, NodeId, Result, Shape,
    TensorData,
};

/// splitmix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1), never exactly zero.
    pub fn sym(&mut self) -> f32 {
        let v = 2.0 * self.uniform() - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sym()).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// ‖out − ref‖ / ‖ref‖.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (f64::from(o) - f64::from(r)).powi(2);
        den += f64::from(r).powi(2);
    }
    assert!(den > 0.0, "reference is all zeros");
    (num / den).sqrt()
}

pub fn assert_close(what: &str, out: &[f32], reference: &[f32], tol: f64) {
    let err = rel_err(out, reference);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// Byte offsets of the f16 scale fields in one block of each quantized type.
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

/// Random weight bytes of `ty` for `n_elems` elements: random floats for float types, random
/// blocks with small finite scales for quantized ones.
pub fn random_weight(rng: &mut Rng, ty: DType, n_elems: usize) -> Vec<u8> {
    match ty {
        DType::F32 => rng
            .vec(n_elems)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => rng
            .vec(n_elems)
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => rng
            .vec(n_elems)
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        q => {
            let n_blocks = n_elems / q.block_elems() as usize;
            let bb = q.block_bytes() as usize;
            let mut bytes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next_u64() as u8).collect();
            for b in 0..n_blocks {
                for &off in scale_fields(q) {
                    let s = half::f16::from_f32(0.02 * rng.sym());
                    bytes[b * bb + off..b * bb + off + 2].copy_from_slice(&s.to_le_bytes());
                }
            }
            bytes
        }
    }
}

pub fn dequant(ty: DType, bytes: &[u8]) -> Vec<f32> {
    gguf::quant::dequantize_to_vec(ty, bytes).unwrap()
}

enum Init {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// Builds a graph with inputs, weights and states given by value, then runs it on the CPU.
#[derive(Default)]
pub struct Harness {
    pub g: GraphBuilder,
    /// Applied with `CpuBackend::set_f16_products` before the run.
    pub f16_products: Option<usize>,
    inputs: Vec<(NodeId, Init)>,
    weights: Vec<(NodeId, DType, Shape, Vec<u8>)>,
    states: Vec<(NodeId, DType, Shape, Vec<f32>)>,
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn input_f32(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> NodeId {
        let id = self
            .g
            .input(name, DType::F32, Shape::new(dims).unwrap())
            .unwrap();
        self.inputs.push((id, Init::F32(data)));
        id
    }

    pub fn input_i32(&mut self, name: &str, dims: &[usize], data: Vec<i32>) -> NodeId {
        let id = self
            .g
            .input(name, DType::I32, Shape::new(dims).unwrap())
            .unwrap();
        self.inputs.push((id, Init::I32(data)));
        id
    }

    pub fn weight(&mut self, name: &str, ty: DType, dims: &[usize], bytes: Vec<u8>) -> NodeId {
        let shape = Shape::new(dims).unwrap();
        let id = self.g.weight(name, ty, shape).unwrap();
        self.weights.push((id, ty, shape, bytes));
        id
    }

    pub fn state(&mut self, name: &str, ty: DType, dims: &[usize], init: Vec<f32>) -> NodeId {
        let shape = Shape::new(dims).unwrap();
        let id = self.g.state(name, ty, shape).unwrap();
        self.states.push((id, ty, shape, init));
        id
    }

    /// Runs the graph once; returns the outputs, then the final states.
    pub fn run(self, outputs: &[NodeId]) -> Result<(Vec<TensorData>, Vec<TensorData>)> {
        let graph = self.g.finish(outputs)?;
        let mut cpu = CpuBackend::new();
        cpu.set_f16_products(self.f16_products);
        let mut bindings = Bindings::new();
        for (id, ty, shape, bytes) in self.weights {
            let b = cpu.upload(ty, shape, HostBytes::from_vec(bytes))?;
            bindings.bind(id, b);
        }
        let mut state_buffers = Vec::new();
        for (id, ty, shape, init) in self.states {
            let b = cpu.alloc(ty, shape)?;
            cpu.write(b, 0, HostData::F32(&init))?;
            bindings.bind(id, b);
            state_buffers.push(b);
        }
        let exe = cpu.load(&graph, &bindings)?;
        for (id, init) in &self.inputs {
            let b = cpu.buffer_of(exe, *id)?;
            match init {
                Init::F32(v) => cpu.write(b, 0, HostData::F32(v))?,
                Init::I32(v) => cpu.write(b, 0, HostData::I32(v))?,
            }
        }
        cpu.run(exe)?;
        let outs = outputs
            .iter()
            .map(|&o| cpu.read_node(exe, &graph, o))
            .collect::<Result<Vec<_>>>()?;
        let states = state_buffers
            .iter()
            .map(|&b| cpu.read(b))
            .collect::<Result<Vec<_>>>()?;
        Ok((outs, states))
    }

    /// Runs and returns the single output as f32.
    pub fn run_f32(self, output: NodeId) -> Vec<f32> {
        self.run(&[output]).unwrap().0.remove(0).into_f32().unwrap()
    }
}
