//! A DFlash drafter in z-lab's layout (`config.json` with `dflash_config`, top-level
//! `fc`/`hidden_norm`/`layers.*`/`norm` tensors) → GGUF arch `dflash`.
//!
//! The drafter shares its target's tokenizer, so the target's checkpoint folder supplies the
//! `tokenizer.*` keys (Gemma 4 targets only). Keys: the Qwen3-style body's hyper-parameters,
//! then `block_size`, `final_logit_softcapping` and `embedding_scale` (from `dflash_config`,
//! else the target's soft-cap and `sqrt(hidden)`, which Gemma's scaled embedding implies), and
//! `target_layers`, the target layer ids plus one (llama.cpp counts the embedding as layer 0).
//! Sliding-window drafters also get `attention.sliding_window` and its per-layer pattern.

use std::path::Path;

use gguf::{Array, Value};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::hparams::HParams;
use crate::kv::Kv;
use crate::mapping::{check_tensors, map_tensors, Expect, Mapped};
use crate::plan::Plan;
use crate::tokenizer::TokenizerFiles;
use crate::types::OutType;

/// The GGUF architecture.
pub(crate) const ARCH: &str = "dflash";

/// Per-layer suffixes: z-lab (Qwen3) → llama.cpp. `post_attention_layernorm` is Qwen3's
/// pre-MLP norm.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// Whole-model names: z-lab → llama.cpp.
const MODEL_NAMES: &[(&str, &str)] = &[
    ("fc.weight", "fc.weight"),
    ("hidden_norm.weight", "enc.output_norm.weight"),
    ("norm.weight", "output_norm.weight"),
    ("embed_tokens.weight", "token_embd.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Plans the conversion of a DFlash checkpoint whose target's checkpoint folder is
/// `target_dir`.
pub(crate) fn plan(
    ck: &Checkpoint,
    config: &HParams,
    target_dir: &Path,
    out: OutType,
) -> Result<Plan> {
    let dc = config
        .object("dflash_config")?
        .ok_or_else(|| config.error("key 'dflash_config' is missing: not a DFlash checkpoint"))?;
    let target = HParams::load(target_dir)?;
    let is_gemma4 = matches!(
        target.opt_str("model_type")?,
        Some("gemma4" | "gemma4_text")
    );
    if !is_gemma4 {
        return Err(target.error(
            "not a Gemma 4 checkpoint (model_type 'gemma4'): specula converts DFlash drafters for Gemma 4 targets",
        ));
    }
    let target_text = target.with_text_config();
    let target_hidden = config
        .opt_usize("target_hidden_size")?
        .map_or_else(|| target_text.usize("hidden_size"), Ok)?;
    let target_layers = target_text.usize("num_hidden_layers")?;
    let ids = dc
        .opt_usizes("target_layer_ids")?
        .ok_or_else(|| config.error("key 'dflash_config.target_layer_ids' is missing"))?;
    if let Some(&bad) = ids.iter().find(|&&id| id >= target_layers) {
        return Err(config.error(format!(
            "dflash_config.target_layer_ids holds {bad}, past the target's last layer {}",
            target_layers - 1
        )));
    }

    let n_layer = config.usize("num_hidden_layers")?;
    let n_embd = config.usize("hidden_size")?;
    let n_ff = config.usize("intermediate_size")?;
    let n_head = config.usize("num_attention_heads")?;
    let n_head_kv = config.usize("num_key_value_heads")?;
    let head_dim = config.usize("head_dim")?;
    let is_sliding = sliding_pattern(config, n_layer)?;

    let tokenizer_kv = TokenizerFiles::load(target_dir)?.gemma4_kv()?;
    let tensors = map_tensors(ck, map_dflash_tensor, "DFlash drafter", None)?;
    let vocab = config
        .opt_usize("vocab_size")?
        .map_or_else(|| target_text.usize("vocab_size"), Ok)?;
    let mut expected = vec![
        Expect::new("fc.weight", &[ids.len() * target_hidden, n_embd], true),
        Expect::new("enc.output_norm.weight", &[n_embd], true),
        Expect::new("output_norm.weight", &[n_embd], true),
        Expect::new("token_embd.weight", &[n_embd, vocab], false),
        Expect::new("output.weight", &[n_embd, vocab], false),
    ];
    let (q, kv) = (n_head * head_dim, n_head_kv * head_dim);
    for l in 0..n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        for (name, shape) in [
            ("attn_norm.weight", vec![n_embd]),
            ("attn_q.weight", vec![n_embd, q]),
            ("attn_k.weight", vec![n_embd, kv]),
            ("attn_v.weight", vec![n_embd, kv]),
            ("attn_output.weight", vec![q, n_embd]),
            ("attn_q_norm.weight", vec![head_dim]),
            ("attn_k_norm.weight", vec![head_dim]),
            ("ffn_norm.weight", vec![n_embd]),
            ("ffn_gate.weight", vec![n_embd, n_ff]),
            ("ffn_up.weight", vec![n_embd, n_ff]),
            ("ffn_down.weight", vec![n_ff, n_embd]),
        ] {
            expected.push(Expect::new(b(name), &shape, true));
        }
    }
    check_tensors(ck, &tensors, &expected, "DFlash drafter", origin)?;

    let k = |s: &str| format!("{ARCH}.{s}");
    let mut kv_out = Kv::new();
    kv_out.set_u32(k("block_count"), n_layer);
    if let Some(n_ctx) = config.opt_usize("max_position_embeddings")? {
        kv_out.set_u32(k("context_length"), n_ctx);
    }
    kv_out.set_u32(k("embedding_length"), n_embd);
    kv_out.set_u32(k("feed_forward_length"), n_ff);
    kv_out.set_u32(k("attention.head_count"), n_head);
    kv_out.set_u32(k("attention.head_count_kv"), n_head_kv);
    kv_out.set_f32(k("rope.freq_base"), rope_theta(config)?);
    kv_out.set_f32(
        k("attention.layer_norm_rms_epsilon"),
        config.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
    );
    kv_out.set_u32(k("attention.key_length"), head_dim);
    kv_out.set_u32(k("attention.value_length"), head_dim);
    kv_out.set("general.file_type", Value::U32(out.file_type()));
    let block_size = dc
        .opt_usize("block_size")?
        .or(config.opt_usize("block_size")?)
        .unwrap_or(16);
    kv_out.set_u32(k("block_size"), block_size);
    let softcap = match dc.opt_f64("final_logit_softcapping")? {
        Some(c) => Some(c),
        None => target_text.opt_f64("final_logit_softcapping")?,
    };
    if let Some(cap) = softcap.filter(|&c| c != 0.0) {
        kv_out.set_f32(k("final_logit_softcapping"), cap);
    }
    let scale = match dc.opt_f64("input_embedding_scale")? {
        Some(s) => s,
        None => (target_hidden as f64).sqrt(),
    };
    kv_out.set_f32(k("embedding_scale"), scale);
    let layers: Vec<usize> = ids.iter().map(|&id| id + 1).collect();
    kv_out.set_i32s(k("target_layers"), &layers);
    if is_sliding.iter().any(|&s| s) {
        kv_out.set_u32(
            k("attention.sliding_window"),
            config.usize("sliding_window")?,
        );
        kv_out.set(
            k("attention.sliding_window_pattern"),
            Value::Array(Array::Bool(is_sliding)),
        );
    }
    Ok(Plan {
        arch: ARCH,
        model_kv: kv_out,
        tokenizer_kv,
        tensors,
        n_expert: 0,
        n_layer,
    })
}

/// The RoPE base: `rope_parameters.rope_theta` or `rope_theta`; scaled RoPE is refused.
fn rope_theta(config: &HParams) -> Result<f64> {
    let rope = match config.object("rope_parameters")? {
        Some(r) => Some(r),
        None => config.object("rope_scaling")?,
    };
    if let Some(r) = &rope {
        let kind = r
            .opt_str("rope_type")?
            .or(r.opt_str("type")?)
            .unwrap_or("default");
        if kind != "default" {
            return Err(config.error(format!("RoPE scaling '{kind}' is not supported")));
        }
        if let Some(theta) = r.opt_f64("rope_theta")? {
            return Ok(theta);
        }
    }
    config.f64("rope_theta")
}

/// Per layer: sliding window (from `layer_types`; all full when absent).
fn sliding_pattern(config: &HParams, n_layer: usize) -> Result<Vec<bool>> {
    if config.get("layer_types").is_none() {
        return Ok(vec![false; n_layer]);
    }
    let types = config.strings("layer_types")?;
    if types.len() != n_layer {
        return Err(config.error(format!(
            "key 'layer_types' has {} entries for {n_layer} layers",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match *t {
            "sliding_attention" => Ok(true),
            "full_attention" => Ok(false),
            other => Err(config.error(format!("key 'layer_types' holds unknown type '{other}'"))),
        })
        .collect()
}

/// llama.cpp's name of a z-lab DFlash tensor (a `model.` prefix is accepted).
fn map_dflash_tensor(name: &str) -> Mapped {
    if matches!(name, "d2t" | "t2d") {
        return Mapped::Skip;
    }
    let local = name.strip_prefix("model.").unwrap_or(name);
    if let Some((_, to)) = MODEL_NAMES.iter().find(|(from, _)| *from == local) {
        return Mapped::To((*to).to_string());
    }
    let Some((idx, suffix)) = local
        .strip_prefix("layers.")
        .and_then(|r| r.split_once('.'))
    else {
        return Mapped::Unknown;
    };
    if idx.parse::<usize>().is_err() {
        return Mapped::Unknown;
    }
    LAYER_NAMES
        .iter()
        .find(|(from, _)| *from == suffix)
        .map_or(Mapped::Unknown, |(_, to)| {
            Mapped::To(format!("blk.{idx}.{to}"))
        })
}

/// The z-lab name a GGUF name comes from (for messages).
fn origin(gguf: &str) -> Option<String> {
    if let Some((from, _)) = MODEL_NAMES.iter().find(|(_, to)| *to == gguf) {
        return Some((*from).to_string());
    }
    let (idx, suffix) = gguf.strip_prefix("blk.")?.split_once('.')?;
    LAYER_NAMES
        .iter()
        .find(|(_, to)| *to == suffix)
        .map(|(from, _)| format!("layers.{idx}.{from}"))
}

/// An error for a DFlash conversion without the target's folder.
pub(crate) fn needs_target(dir: &Path) -> Error {
    Error::invalid(
        dir,
        "a DFlash drafter shares its target's tokenizer: give the target's checkpoint folder (--target-dir)",
    )
}
