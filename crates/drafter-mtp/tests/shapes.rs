//! The MTP step over random target and assistant configurations, written as GGUF files in
//! memory: the step graph builds, runs, and returns logits of the vocabulary size and a next
//! hidden state of the target's width; mismatched pairs are refused with a clear error.

use std::sync::Arc;

use drafter_mtp::{expected_tensors, AssistantConfig, Layout, MtpDrafter};
use gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};
use proptest::prelude::*;
use target::{Gemma4Config, LogitRows, Target, TargetOptions};

fn write(meta: Vec<(String, Value)>, tensors: Vec<(String, Vec<usize>)>, seed: u64) -> GgufFile {
    let mut w = GgufWriter::new(Vec::new());
    for (k, v) in meta {
        w.add_metadata(k, v).unwrap();
    }
    for (name, shape) in &tensors {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        w.add_tensor(name.clone(), GgmlType::F32, &shape).unwrap();
    }
    let mut data = w.write_header().unwrap();
    let mut state = seed | 1;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Norm-like tensors near 1, others small.
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let v = if name.contains("norm") || name.contains("scale") {
                    1.0 + 0.2 * u
                } else {
                    0.2 * u
                };
                v.to_le_bytes()
            })
            .collect();
        data.write_tensor(name, &bytes).unwrap();
    }
    GgufFile::from_bytes(data.finish().unwrap()).unwrap()
}

fn target_file(c: &Gemma4Config, seed: u64) -> GgufFile {
    let k = |s: &str| format!("gemma4.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let mut tokens: Vec<String> = (0..c.n_vocab).map(|i| format!("t{i}")).collect();
    tokens[0] = "<pad>".into();
    let meta = vec![
        ("general.architecture".into(), "gemma4".into()),
        (k("block_count"), u(c.n_layer)),
        (k("context_length"), u(c.n_ctx_train)),
        (k("embedding_length"), u(c.n_embd)),
        (k("feed_forward_length"), u(c.n_ff[0])),
        (k("attention.head_count"), u(c.n_head)),
        (
            k("attention.head_count_kv"),
            Value::Array(Array::I32(c.n_head_kv.iter().map(|&x| x as i32).collect())),
        ),
        (k("attention.key_length"), u(c.head_dim_full)),
        (k("attention.value_length"), u(c.head_dim_full)),
        (k("attention.key_length_swa"), u(c.head_dim_swa)),
        (k("attention.value_length_swa"), u(c.head_dim_swa)),
        (k("attention.sliding_window"), u(c.sliding_window)),
        (
            k("attention.sliding_window_pattern"),
            Value::Array(Array::Bool(c.is_sliding.clone())),
        ),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(c.eps)),
        (k("rope.freq_base"), Value::F32(c.rope_theta_full)),
        (k("rope.freq_base_swa"), Value::F32(c.rope_theta_swa)),
        (k("rope.dimension_count"), u(c.n_rot_full)),
        (k("rope.dimension_count_swa"), u(c.n_rot_swa)),
        (k("final_logit_softcapping"), Value::F32(30.0)),
        ("tokenizer.ggml.model".into(), "gemma4".into()),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
    ];
    let tensors = target::weights::expected_tensors(c)
        .into_iter()
        .map(|e| (e.name, e.shape))
        .collect();
    write(meta, tensors, seed)
}

fn assistant_file(a: &AssistantConfig, n_head_kv: &[usize], seed: u64) -> GgufFile {
    let k = |s: &str| format!("gemma4-assistant.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let meta = vec![
        ("general.architecture".into(), "gemma4-assistant".into()),
        (k("block_count"), u(a.n_layer)),
        (k("embedding_length"), u(a.n_embd)),
        (k("embedding_length_out"), u(a.n_backbone)),
        (k("feed_forward_length"), u(a.n_ff[0])),
        (k("attention.head_count"), u(a.n_head)),
        (
            k("attention.head_count_kv"),
            Value::Array(Array::I32(n_head_kv.iter().map(|&x| x as i32).collect())),
        ),
        (k("attention.key_length"), u(a.head_dim_full)),
        (k("attention.key_length_swa"), u(a.head_dim_swa)),
        (
            k("attention.sliding_window_pattern"),
            Value::Array(Array::Bool(a.is_sliding.clone())),
        ),
        (k("rope.dimension_count"), u(a.n_rot_full)),
        (k("rope.dimension_count_swa"), u(a.n_rot_swa)),
    ];
    write(meta, expected_tensors(a), seed)
}

#[allow(clippy::too_many_arguments)]
fn configs(
    n_layer: usize,
    period: usize,
    embd: usize,
    heads: usize,
    kv: usize,
    hd_swa: usize,
    a_embd: usize,
    a_layers: usize,
    vocab: usize,
) -> (Gemma4Config, AssistantConfig) {
    let mut is_sliding: Vec<bool> = (0..n_layer).map(|l| (l + 1) % period != 0).collect();
    *is_sliding.last_mut().unwrap() = false;
    let t = Gemma4Config {
        n_layer,
        n_embd: embd,
        n_vocab: vocab,
        n_ctx_train: 256,
        n_head: heads,
        n_head_kv: vec![kv; n_layer],
        head_dim_full: 2 * hd_swa,
        head_dim_swa: hd_swa,
        n_ff: vec![2 * embd; n_layer],
        eps: 1e-6,
        sliding_window: 8,
        is_sliding,
        n_kv_shared: 0,
        rope_theta_full: 1e6,
        rope_theta_swa: 1e4,
        n_rot_full: 2 * hd_swa,
        n_rot_swa: hd_swa,
        final_logit_softcap: Some(30.0),
        n_embd_per_layer: 0,
        moe: None,
    };
    let mut a_sliding = vec![true; a_layers];
    *a_sliding.last_mut().unwrap() = false;
    let a = AssistantConfig {
        layout: Layout::LlamaCpp,
        n_layer: a_layers,
        n_embd: a_embd,
        n_backbone: embd,
        n_head: heads,
        head_dim_full: 2 * hd_swa,
        head_dim_swa: hd_swa,
        is_sliding: a_sliding,
        n_ff: vec![2 * a_embd; a_layers],
        eps: 1e-6,
        rope_theta_full: 1e6,
        rope_theta_swa: 1e4,
        n_rot_full: 2 * hd_swa,
        n_rot_swa: hd_swa,
        n_vocab: vocab,
        final_logit_softcap: None,
        centroids: None,
    };
    (t, a)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn step_shapes_over_random_configs(
        n_layer in 2usize..7, period in 2usize..5, embd in prop::sample::select(vec![32usize, 64, 96]),
        heads in prop::sample::select(vec![2usize, 4]), kv_div in prop::sample::select(vec![1usize, 2]),
        hd_swa in prop::sample::select(vec![16usize, 32]), a_embd in prop::sample::select(vec![32usize, 64]),
        a_layers in 1usize..5, seed in any::<u64>(),
    ) {
        let vocab = 64;
        let kv = heads / kv_div;
        let (tc, ac) = configs(n_layer, period, embd, heads, kv, hd_swa, a_embd, a_layers, vocab);
        let tf = Arc::new(target_file(&tc, seed));
        let options = TargetOptions { n_ctx: 64, max_batch: 8, ..Default::default() };
        let mut t = Target::load(tf, Box::new(graph::CpuBackend::new()), &options, &mut |_, _| {}).unwrap();
        let prompt: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % vocab as u32).collect();
        let out = t.forward(&prompt[..8], LogitRows::Last, &[], false).unwrap();
        t.forward(&prompt[8..], LogitRows::Last, &[], false).unwrap();
        let af = Arc::new(assistant_file(&ac, &vec![kv; a_layers], seed ^ 7));
        let mut d = MtpDrafter::load(af, &mut t).unwrap();
        let h = &out.hidden[out.hidden.len() - embd..];
        let pos = t.n_past();
        let (logits, h_next, arg) = d.step(&mut t, 3, h, pos).unwrap();
        prop_assert_eq!(logits.len(), vocab);
        prop_assert_eq!(h_next.len(), embd);
        prop_assert!((arg as usize) < vocab);
        prop_assert!(logits.iter().chain(&h_next).all(|v| v.is_finite()));
    }
}

#[test]
fn an_assistant_for_another_target_is_refused() {
    let (tc, _) = configs(3, 3, 64, 4, 2, 16, 32, 2, 64);
    let (_, other) = configs(3, 3, 96, 4, 2, 16, 32, 2, 64);
    let mut t = Target::load(
        Arc::new(target_file(&tc, 1)),
        Box::new(graph::CpuBackend::new()),
        &TargetOptions {
            n_ctx: 32,
            max_batch: 4,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    let err = MtpDrafter::load(Arc::new(assistant_file(&other, &[2, 2], 2)), &mut t)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("built for a target of width 96, the target has 64"),
        "{err}"
    );
    // Head dimensions that do not match the donors.
    let (_, mut wrong_hd) = configs(3, 3, 64, 4, 2, 16, 32, 2, 64);
    wrong_hd.head_dim_swa = 32;
    wrong_hd.n_rot_swa = 32;
    let err = MtpDrafter::load(Arc::new(assistant_file(&wrong_hd, &[2, 2], 3)), &mut t)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("layer 0 has head dimension 32, its donor target layer 1 has 16"),
        "{err}"
    );
}
