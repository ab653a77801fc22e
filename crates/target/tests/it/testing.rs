//! Helpers: fixture paths, reference tensors, loading a target on the CPU.

use std::path::PathBuf;
use std::sync::Arc;

use safetensors::SafeTensors;
use target::{Target, TargetOptions};

pub fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: copy it unchanged from ../shared/fixtures",
        path.display()
    );
    path
}

/// The tensors of a `*.ref.safetensors` file.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Reference {
        Reference {
            bytes: std::fs::read(fixture(name)).unwrap(),
        }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Vec<u8>, safetensors::Dtype) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("reference tensor {name}: {e}"));
        (t.shape().to_vec(), t.data().to_vec(), t.dtype())
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data, dtype) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::F32, "{name}");
        (
            shape,
            data.as_chunks::<4>()
                .0
                .iter()
                .map(|c| f32::from_le_bytes(*c))
                .collect(),
        )
    }

    pub fn i32(&self, name: &str) -> Vec<i32> {
        let (_, data, dtype) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::I32, "{name}");
        data.as_chunks::<4>()
            .0
            .iter()
            .map(|c| i32::from_le_bytes(*c))
            .collect()
    }

    pub fn tokens(&self, name: &str) -> Vec<u32> {
        self.i32(name).into_iter().map(|v| v as u32).collect()
    }
}

pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (f64::from(o) - f64::from(r)).powi(2);
        den += f64::from(r).powi(2);
    }
    (num / den).sqrt()
}

pub fn assert_close(what: &str, out: &[f32], reference: &[f32], tol: f64) {
    let err = rel_err(out, reference);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

pub fn load_cpu(name: &str, options: &TargetOptions) -> Target {
    let file = Arc::new(gguf::GgufFile::open(fixture(name)).unwrap());
    Target::load(
        file,
        Box::new(graph::CpuBackend::new()),
        options,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
