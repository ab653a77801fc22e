//! Helpers shared by the integration tests: fixture paths, the dense CPU target, reference
//! tensors and the relative error.

#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;
use std::sync::Arc;

use safetensors::SafeTensors;
use target::{Target, TargetOptions};

/// A file under the repository's `fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// The `dense` fixture target on the CPU backend.
pub fn target(n_ctx: usize, max_batch: usize) -> Target {
    let file = Arc::new(gguf::GgufFile::open(fixture("dense.gguf")).unwrap());
    let options = TargetOptions {
        n_ctx,
        max_batch,
        ..Default::default()
    };
    Target::load(
        file,
        Box::new(graph::CpuBackend::new()),
        &options,
        &mut |_, _| {},
    )
    .unwrap()
}

/// A reference `.safetensors` file of `fixtures/`.
pub struct Ref(Vec<u8>);

impl Ref {
    pub fn open(name: &str) -> Ref {
        Ref(std::fs::read(fixture(name)).unwrap())
    }
    fn raw(&self, name: &str) -> Vec<[u8; 4]> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(name).unwrap().data().as_chunks::<4>().0.to_vec()
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.raw(name).into_iter().map(f32::from_le_bytes).collect()
    }
    /// An int32 tensor as token ids.
    pub fn u32(&self, name: &str) -> Vec<u32> {
        self.raw(name)
            .into_iter()
            .map(|c| i32::from_le_bytes(c) as u32)
            .collect()
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let (mut n, mut d) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        n += (f64::from(x) - f64::from(y)).powi(2);
        d += f64::from(y).powi(2);
    }
    (n / d).sqrt()
}
