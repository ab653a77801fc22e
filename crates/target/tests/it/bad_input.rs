//! Bad input gives a clear error each: wrong architecture, missing tensor, token id outside
//! the vocabulary, context beyond the maximum.

use std::sync::Arc;

use gguf::{GgufFile, GgufWriter};
use target::{LogitRows, Target, TargetOptions};

use crate::testing::{fixture, load_cpu};

fn load(file: GgufFile) -> Result<Target, target::Error> {
    Target::load(
        Arc::new(file),
        Box::new(graph::CpuBackend::new()),
        &TargetOptions::default(),
        &mut |_, _| {},
    )
}

/// `dense.gguf` without the tensor `skip`.
fn without(skip: &str) -> GgufFile {
    let src = GgufFile::open(fixture("dense.gguf")).unwrap();
    let mut w = GgufWriter::new(Vec::new());
    for (key, value) in src.metadata() {
        w.add_metadata(key, value.to_value()).unwrap();
    }
    let kept: Vec<_> = src.tensors().iter().filter(|t| t.name() != skip).collect();
    for info in &kept {
        w.add_tensor(info.name(), info.ggml_type(), info.shape())
            .unwrap();
    }
    let mut data = w.write_header().unwrap();
    for info in &kept {
        data.write_tensor(info.name(), src.tensor_data(info).unwrap())
            .unwrap();
    }
    GgufFile::from_bytes(data.finish().unwrap()).unwrap()
}

#[test]
fn wrong_architecture() {
    let err = load(GgufFile::open(fixture("assistant.gguf")).unwrap())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("architecture is 'gemma4-assistant', expected 'gemma4'"),
        "{err}"
    );
}

#[test]
fn missing_required_tensor_is_named() {
    let err = load(without("blk.3.attn_k.weight")).err().unwrap();
    assert!(
        err.to_string()
            .contains("tensor 'blk.3.attn_k.weight': required tensor is missing"),
        "{err}"
    );
    // attn_v may be absent on a full layer (K=V) but not on a sliding one.
    let err = load(without("blk.2.attn_v.weight")).err().unwrap();
    assert!(
        err.to_string()
            .contains("tensor 'blk.2.attn_v.weight': required tensor is missing"),
        "{err}"
    );
}

#[test]
fn token_id_outside_vocabulary() {
    let mut t = load_cpu(
        "dense.gguf",
        &TargetOptions {
            n_ctx: 64,
            max_batch: 8,
            ..Default::default()
        },
    );
    let err = t
        .forward(&[2, 1024], LogitRows::Last, &[], false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "token id 1024 is outside the vocabulary of 1024 tokens"
    );
    assert_eq!(t.n_past(), 0, "a failed step commits nothing");
}

#[test]
fn context_beyond_the_maximum() {
    let mut t = load_cpu(
        "dense.gguf",
        &TargetOptions {
            n_ctx: 10,
            max_batch: 8,
            ..Default::default()
        },
    );
    t.forward(&[2; 8], LogitRows::Last, &[], false).unwrap();
    let err = t.forward(&[2; 3], LogitRows::Last, &[], false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "context of 11 tokens exceeds the maximum of 10 positions"
    );
    let err = t.forward(&[2; 9], LogitRows::Last, &[], false).unwrap_err();
    assert_eq!(err.to_string(), "a step takes 1 to 8 tokens, got 9");
}

/// A CPU backend that claims to be a device with 1 MiB free.
struct TinyDevice(graph::CpuBackend);

impl graph::Backend for TinyDevice {
    fn name(&self) -> String {
        "tiny device".into()
    }
    fn alloc(&mut self, d: graph::DType, s: graph::Shape) -> graph::Result<graph::BufferId> {
        self.0.alloc(d, s)
    }
    fn upload(
        &mut self,
        d: graph::DType,
        s: graph::Shape,
        b: graph::HostBytes,
    ) -> graph::Result<graph::BufferId> {
        self.0.upload(d, s, b)
    }
    fn write(&mut self, b: graph::BufferId, o: usize, d: graph::HostData<'_>) -> graph::Result<()> {
        self.0.write(b, o, d)
    }
    fn read(&self, b: graph::BufferId) -> graph::Result<graph::TensorData> {
        self.0.read(b)
    }
    fn free(&mut self, b: graph::BufferId) -> graph::Result<()> {
        self.0.free(b)
    }
    fn load(&mut self, g: &graph::Graph, b: &graph::Bindings) -> graph::Result<graph::ExecId> {
        self.0.load(g, b)
    }
    fn buffer_of(&self, e: graph::ExecId, n: graph::NodeId) -> graph::Result<graph::BufferId> {
        self.0.buffer_of(e, n)
    }
    fn run(&mut self, e: graph::ExecId) -> graph::Result<()> {
        self.0.run(e)
    }
    fn unload(&mut self, e: graph::ExecId) -> graph::Result<()> {
        self.0.unload(e)
    }
    fn memory_info(&self) -> Option<(u64, u64)> {
        Some((1 << 20, 1 << 20))
    }
}

#[test]
fn a_model_that_does_not_fit_fails_before_uploading() {
    let file = Arc::new(GgufFile::open(fixture("dense.gguf")).unwrap());
    let err = Target::load(
        file,
        Box::new(TinyDevice(graph::CpuBackend::new())),
        &TargetOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("the model does not fit: needs"), "{msg}");
    assert!(msg.contains("tiny device has 0.00 GiB free"), "{msg}");
}
