//! Converted files load in specula: the target gives the fixture's logits, the assistant and
//! the DFlash drafter attach to it, a `q4_k_m` target runs.

use std::path::Path;
use std::sync::Arc;

use convert::OutType;
use target::{LogitRows, Target, TargetOptions};

use crate::testing::{convert_to_temp, fixture};

/// The tokenization of "def main(args):\n    return 0\n" (fixtures/README.md), BOS first.
const TOKENS: [u32; 11] = [2, 438, 488, 370, 278, 464, 870, 270, 934, 286, 270];

fn load(path: &Path) -> Target {
    let file = Arc::new(gguf::GgufFile::open(path).unwrap());
    let options = TargetOptions {
        n_ctx: 64,
        max_batch: 16,
        ..TargetOptions::default()
    };
    Target::load(
        file,
        Box::new(graph::CpuBackend::new()),
        &options,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn logits(target: &mut Target) -> Vec<f32> {
    target
        .forward(&TOKENS, LogitRows::All, &[], false)
        .unwrap()
        .logits
}

#[test]
fn converted_target_gives_the_fixtures_logits() {
    let out = convert_to_temp(&fixture("hf/dense"), OutType::F32, None);
    let ours = logits(&mut load(&out.path));
    let theirs = logits(&mut load(&fixture("dense.gguf")));
    assert_eq!(ours.len(), TOKENS.len() * 1024);
    assert!(ours == theirs, "logits differ");
}

#[test]
fn converted_drafters_attach_to_the_converted_target() {
    let target_file = convert_to_temp(&fixture("hf/dense"), OutType::F32, None);
    let mut target = load(&target_file.path);
    let assistant = convert_to_temp(&fixture("hf/assistant"), OutType::F32, None);
    let file = Arc::new(gguf::GgufFile::open(&assistant.path).unwrap());
    drafter_mtp::MtpDrafter::load(file, &mut target).unwrap_or_else(|e| panic!("{e}"));
    let dflash = convert_to_temp(
        &fixture("hf/dflash"),
        OutType::F32,
        Some(&fixture("hf/dense")),
    );
    drafter_dflash::DflashDrafter::open(&dflash.path, &mut target, None)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn q4_k_m_target_runs() {
    let out = convert_to_temp(&fixture("hf/dense"), OutType::Q4KM, None);
    let values = logits(&mut load(&out.path));
    assert_eq!(values.len(), TOKENS.len() * 1024);
    assert!(values.iter().all(|v| v.is_finite()));
    // Soft-capped at 30.
    assert!(values.iter().all(|v| v.abs() <= 30.0));
}
