//! The lucebox naming of the assistant (arch `gemma4_assistant`, `mtp.*` tensors) loads and
//! drafts exactly like llama.cpp's; the centroid head keeps only the candidates of the top
//! centroids.

use std::path::PathBuf;
use std::sync::Arc;

use drafter_mtp::{centroid_logits, MtpDrafter};
use gguf::{GgmlType, GgufFile, GgufWriter, Value};
use target::{LogitRows, Target, TargetOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// Rewrites `src` with keys and tensors renamed, plus extra tensors.
fn rewrite(
    src: &GgufFile,
    key: impl Fn(&str) -> String,
    tensor: impl Fn(&str) -> String,
    extra_meta: Vec<(String, Value)>,
    extra: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
) -> GgufFile {
    let mut w = GgufWriter::new(Vec::new());
    for (k, v) in src.metadata() {
        let mut v = v.to_value();
        if k == "general.architecture" {
            v = Value::String(key("gemma4-assistant"));
        }
        w.add_metadata(key(k), v).unwrap();
    }
    for (k, v) in extra_meta {
        w.add_metadata(k, v).unwrap();
    }
    for t in src.tensors() {
        w.add_tensor(tensor(t.name()), t.ggml_type(), t.shape())
            .unwrap();
    }
    for (name, ty, shape, _) in &extra {
        w.add_tensor(name.clone(), *ty, shape).unwrap();
    }
    let mut data = w.write_header().unwrap();
    for t in src.tensors() {
        data.write_tensor(&tensor(t.name()), src.tensor_data(t).unwrap())
            .unwrap();
    }
    for (name, _, _, bytes) in &extra {
        data.write_tensor(name, bytes).unwrap();
    }
    GgufFile::from_bytes(data.finish().unwrap()).unwrap()
}

fn target() -> Target {
    let file = Arc::new(GgufFile::open(fixture("dense.gguf")).unwrap());
    let mut t = Target::load(
        file,
        Box::new(graph::CpuBackend::new()),
        &TargetOptions {
            n_ctx: 64,
            max_batch: 32,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| 20 + i * 13).collect();
    t.forward(&prompt, LogitRows::Last, &[], false).unwrap();
    t
}

fn step(file: GgufFile) -> (Vec<f32>, Vec<f32>, u32) {
    let mut t = target();
    let mut d = MtpDrafter::load(Arc::new(file), &mut t).unwrap();
    let h: Vec<f32> = (0..256)
        .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
        .collect();
    d.step(&mut t, 77, &h, 20).unwrap()
}

#[test]
fn lucebox_layout_drafts_like_llama_cpp() {
    let src = GgufFile::open(fixture("assistant.gguf")).unwrap();
    let lucebox = rewrite(
        &src,
        |k| k.replace("gemma4-assistant", "gemma4_assistant"),
        |t| t.replace("nextn.", "mtp."),
        vec![],
        vec![],
    );
    assert_eq!(lucebox.architecture().unwrap(), "gemma4_assistant");
    assert!(lucebox.tensor("mtp.pre_projection.weight").is_some());
    let a = step(GgufFile::open(fixture("assistant.gguf")).unwrap());
    let b = step(lucebox);
    assert_eq!(a, b);
}

#[test]
fn centroid_head_keeps_the_top_centroids_candidates() {
    let src = GgufFile::open(fixture("assistant.gguf")).unwrap();
    let (n_c, vocab, top_k) = (16usize, 1024usize, 4usize);
    let mut state = 99u64;
    let centroids: Vec<u8> = (0..128 * n_c)
        .flat_map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5).to_le_bytes()
        })
        .collect();
    // A permutation: token i at slot (i * 389) % 1024.
    let mut ordering = vec![0i32; vocab];
    for i in 0..vocab {
        ordering[(i * 389) % vocab] = i as i32;
    }
    let ordering_bytes: Vec<u8> = ordering.iter().flat_map(|v| v.to_le_bytes()).collect();
    let with_head = rewrite(
        &src,
        |k| k.to_string(),
        |t| t.to_string(),
        vec![(
            "gemma4-assistant.centroid_top_k".into(),
            Value::U32(top_k as u32),
        )],
        vec![
            (
                "masked_embd_centroids.weight".into(),
                GgmlType::F32,
                vec![128, n_c as u64],
                centroids,
            ),
            (
                "masked_embd_ordering.weight".into(),
                GgmlType::I32,
                vec![vocab as u64],
                ordering_bytes,
            ),
        ],
    );
    let (dense, h_dense, _) = step(GgufFile::open(fixture("assistant.gguf")).unwrap());
    let (masked, h_masked, arg) = step(with_head);
    assert_eq!(
        h_dense, h_masked,
        "the head does not change the next hidden state"
    );
    let kept: Vec<usize> = (0..vocab).filter(|&i| masked[i] == dense[i]).collect();
    let floor = kept.iter().map(|&i| dense[i]).fold(f32::INFINITY, f32::min) - 1.0;
    assert_eq!(
        kept.len(),
        top_k * vocab / n_c,
        "top {top_k} centroids of {n_c} keep {} tokens",
        top_k * vocab / n_c
    );
    assert!((0..vocab)
        .filter(|i| !kept.contains(i))
        .all(|i| masked[i] == floor));
    assert!(kept.contains(&(arg as usize)));
    // centroid_logits by hand: two centroids, four tokens, keep the better centroid.
    let out = centroid_logits(&[1.0, 5.0, 3.0, 2.0], &[0.1, 0.9], &[2, 0, 1, 3], 1);
    // Centroid 1 owns slots 2..4 = tokens 1 and 3; the rest get min(5, 2) - 1.
    assert_eq!(out, [1.0, 5.0, 1.0, 2.0]);
}

/// Greedy drafting reads back only the hidden state and the argmax: the same as a full step's.
#[test]
fn greedy_step_matches_the_full_step() {
    let mut t = target();
    let file = Arc::new(GgufFile::open(fixture("assistant.gguf")).unwrap());
    let mut d = MtpDrafter::load(file, &mut t).unwrap();
    let h: Vec<f32> = (0..256)
        .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
        .collect();
    for (token, pos) in [(77, 20), (5, 20), (300, 12)] {
        let (_, h_full, arg_full) = d.step(&mut t, token, &h, pos).unwrap();
        let (h_greedy, arg_greedy) = d.step_greedy(&mut t, token, &h, pos).unwrap();
        assert_eq!(
            (h_greedy, arg_greedy),
            (h_full, arg_full),
            "token {token} at {pos}"
        );
    }
}
