//! Greedy speculative decoding at the 31B's attention head dims (256 on sliding layers, 512 on
//! full ones), where CUDA decode steps, MTP draft steps and verify batches take the tensor-core
//! attention (and, with it off, the wide per-query kernels): token-identical to plain greedy
//! decoding on the same backend, with the n-gram drafter, an MTP assistant and a DFlash drafter
//! (at the real DFlash drafter's head dim of 128, whose f16 K/V take `attention_tc_d128`). The
//! fixture models have head dims of 32/64, which take the generic kernel; here they are widened.

use std::sync::Arc;

use gguf::{GgmlType, GgufFile, GgufWriter, Value};
use target::{LogitRows, Sampler, SamplingParams, Target, TargetOptions};

/// Head dims of the full and sliding layers (the 31B's), against the fixture's 64 and 32.
const D_FULL: u32 = 512;
const D_SWA: u32 = 256;
/// Every attention tensor dimension of the target and the assistant that counts head dims grows
/// by this factor.
const WIDEN: u64 = 8;
/// The DFlash drafter's head dim (the 31B drafter's), against the fixture's 32.
const D_DFLASH: u32 = 128;

/// Deterministic values uniform in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The new shape of `name` (which dimension, if any, counts head dims, grown `widen` times).
fn widened(name: &str, shape: &[u64], widen: u64) -> Vec<u64> {
    let mut s = shape.to_vec();
    let axis = if name.ends_with("attn_q.weight")
        || name.ends_with("attn_k.weight")
        || name.ends_with("attn_v.weight")
    {
        Some(1)
    } else if name.ends_with("attn_output.weight")
        || name.ends_with("attn_q_norm.weight")
        || name.ends_with("attn_k_norm.weight")
        || name == "rope_freqs.weight"
    {
        Some(0)
    } else {
        None
    };
    if let Some(a) = axis {
        s[a] *= widen;
    }
    s
}

/// Fixture `name` (architecture `arch`) with head dims 512 / 256 (a DFlash drafter's: 128): the
/// widened tensors are new deterministic values of the originals' RMS (the output projection's
/// scaled for its wider input; the q/k norm weights the originals repeated; the rotary factors 1
/// on the first quarter of the pairs, as the fixture's), everything else as in the fixture. A
/// DFlash drafter's matrices are written as Q8_0, as the real one's, so its products take
/// `matmul_q8`.
fn widened_model(name: &str, arch: &str) -> Arc<GgufFile> {
    let src = GgufFile::open(crate::fixture(name)).unwrap();
    let (d_full, widen) = if arch == "dflash" {
        let d: u32 = src.get_as("dflash.attention.key_length").unwrap();
        (D_DFLASH, u64::from(D_DFLASH / d))
    } else {
        (D_FULL, WIDEN)
    };
    let mut w = GgufWriter::new(Vec::new());
    for (key, value) in src.metadata() {
        let v = match key.strip_prefix(arch) {
            Some(".attention.key_length" | ".attention.value_length" | ".rope.dimension_count") => {
                Value::U32(d_full)
            }
            Some(
                ".attention.key_length_swa"
                | ".attention.value_length_swa"
                | ".rope.dimension_count_swa",
            ) => Value::U32(D_SWA),
            _ => value.to_value(),
        };
        w.add_metadata(key, v).unwrap();
    }
    let q8 = |name: &str, shape: &[u64]| {
        arch == "dflash"
            && shape.len() == 2
            && shape[0].is_multiple_of(32)
            && !name.contains("norm")
    };
    for info in src.tensors() {
        let shape = widened(info.name(), info.shape(), widen);
        let ty = if q8(info.name(), &shape) {
            GgmlType::Q8_0
        } else {
            GgmlType::F32
        };
        w.add_tensor(info.name(), ty, &shape).unwrap();
    }
    let mut data = w.write_header().unwrap();
    let mut rng = Lcg(7);
    for info in src.tensors() {
        let name = info.name();
        let old = src.tensor_f32(name).unwrap();
        let n: u64 = widened(name, info.shape(), widen).iter().product();
        let values: Vec<f32> = if n == old.len() as u64 {
            old
        } else if name == "rope_freqs.weight" {
            (0..n).map(|i| if i < n / 4 { 1.0 } else { 1e30 }).collect()
        } else if name.ends_with("_norm.weight") {
            (0..n as usize).map(|i| old[i % old.len()]).collect()
        } else {
            let rms = (old.iter().map(|v| v * v).sum::<f32>() / old.len() as f32).sqrt();
            let scale = if name.ends_with("attn_output.weight") {
                rms * 3f32.sqrt() / (widen as f32).sqrt()
            } else {
                rms * 3f32.sqrt()
            };
            (0..n).map(|_| rng.next() * scale).collect()
        };
        let bytes: Vec<u8> = if q8(name, &widened(name, info.shape(), widen)) {
            gguf::quant::quantize(GgmlType::Q8_0, &values).unwrap()
        } else {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        data.write_tensor(name, &bytes).unwrap();
    }
    Arc::new(GgufFile::from_bytes(data.finish().unwrap()).unwrap())
}

fn options() -> TargetOptions {
    TargetOptions {
        n_ctx: 512,
        max_batch: 16,
        kv_dtype: graph::DType::F16,
    }
}

/// Plain greedy decoding of `n` tokens after `prompt`.
fn plain(t: &mut Target, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut logits = Vec::new();
    for chunk in prompt.chunks(t.max_batch()) {
        logits = t
            .forward(chunk, LogitRows::Last, &[], false)
            .unwrap()
            .logits;
    }
    let mut out = vec![target::sampling::argmax(&logits)];
    while out.len() < n {
        let last = *out.last().unwrap();
        let step = t.forward(&[last], LogitRows::Last, &[], false).unwrap();
        out.push(target::sampling::argmax(&step.logits));
    }
    out
}

/// Greedy speculative decoding with drafter `d` drafting `gamma` tokens per round: the tokens
/// and the mean tokens per verify.
fn speculative(
    t: &mut Target,
    d: &mut dyn target::ExternalDrafter,
    gamma: usize,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, f64) {
    let mut s = Sampler::new(SamplingParams::default());
    let out =
        target::generate_speculative(t, d, prompt, &mut s, n, gamma, &|_| false, &mut |_| Ok(()))
            .unwrap();
    let acceptance = out.acceptance_length();
    (out.tokens, acceptance)
}

/// A prompt that repeats, so the n-gram drafter drafts from the first round, longer than the
/// sliding window (32) and the prefill chunk.
fn prompt() -> Vec<u32> {
    (0..150u32).map(|i| 2 + (i % 23) * 41 % 1000).collect()
}

/// Plain greedy decoding, then speculative decoding with the n-gram drafter (up to 8 drafts a
/// round), the widened MTP assistant (4) and the widened DFlash drafter (its block of 8), on
/// targets from `load`.
fn check(what: &str, load: &dyn Fn() -> Target) {
    let (prompt, n) = (prompt(), 48);
    let want = plain(&mut load(), &prompt, n);
    let mut ngram = drafter_ngram::NgramDrafter::new(3, 1, 8);
    let (got, acceptance) = speculative(&mut load(), &mut ngram, 8, &prompt, n);
    eprintln!("{what}: n-gram {acceptance:.2} tokens per verify; plain {want:?}");
    assert_eq!(
        got, want,
        "{what}: n-gram speculative output differs from plain greedy"
    );
    let mut t = load();
    let assistant = widened_model("assistant_tuned.gguf", "gemma4-assistant");
    let mut mtp = drafter_mtp::MtpDrafter::load(assistant, &mut t).unwrap();
    let (got, acceptance) = speculative(&mut t, &mut mtp, 4, &prompt, n);
    eprintln!("{what}: MTP {acceptance:.2} tokens per verify");
    assert_eq!(
        got, want,
        "{what}: MTP speculative output differs from plain greedy"
    );
    let mut t = load();
    let dflash = widened_model("dflash_tuned.gguf", "dflash");
    let src = drafter_dflash::Source::from_gguf(dflash).unwrap();
    let mut d = drafter_dflash::DflashDrafter::load(src, &mut t, None).unwrap();
    let (got, acceptance) = speculative(&mut t, &mut d, 7, &prompt, n);
    eprintln!("{what}: DFlash {acceptance:.2} tokens per verify");
    assert_eq!(
        got, want,
        "{what}: DFlash speculative output differs from plain greedy"
    );
}

/// On the CPU reference (any machine): the widened models and the check itself.
#[test]
fn real_head_dims_speculative_equals_plain_on_the_cpu() {
    let file = widened_model("dense.gguf", "gemma4");
    check("CPU, head dims 512/256", &|| {
        Target::load(
            file.clone(),
            Box::new(graph::CpuBackend::new()),
            &options(),
            &mut |_, _| {},
        )
        .unwrap()
    });
}

/// On CUDA, with the tensor-core attention (the default) and with the wide per-query kernels.
#[test]
fn real_head_dims_speculative_equals_plain_on_cuda() {
    if crate::cuda().is_none() {
        return;
    }
    let file = widened_model("dense.gguf", "gemma4");
    for tc in [true, false] {
        check(
            &format!("CUDA, head dims 512/256, tensor-core attention {tc}"),
            &|| {
                let mut cuda = crate::cuda().unwrap();
                cuda.set_tensor_core_attention(tc);
                Target::load(file.clone(), Box::new(cuda), &options(), &mut |_, _| {}).unwrap()
            },
        );
    }
}
