//! Gemma 4 tensor names: transformers → llama.cpp, for targets (`model.` or, in multimodal
//! checkpoints, `model.language_model.` prefix) and the assistant's shared part. Vision and
//! audio towers are left out, as the converter's multimodal filter does.

use crate::mapping::Mapped;

/// Per-layer suffixes: transformers → llama.cpp.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("layer_scalar", "layer_output_scale.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    (
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
    ),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    (
        "post_feedforward_layernorm_1.weight",
        "post_ffw_norm_1.weight",
    ),
    (
        "post_feedforward_layernorm_2.weight",
        "post_ffw_norm_2.weight",
    ),
    (
        "pre_feedforward_layernorm_2.weight",
        "pre_ffw_norm_2.weight",
    ),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("per_layer_input_gate.weight", "inp_gate.weight"),
    ("per_layer_projection.weight", "proj.weight"),
    ("post_per_layer_input_norm.weight", "post_norm.weight"),
    ("experts.gate_up_proj", "ffn_gate_up_exps.weight"),
    ("experts.gate_proj", "ffn_gate_exps.weight"),
    ("experts.up_proj", "ffn_up_exps.weight"),
    ("experts.down_proj", "ffn_down_exps.weight"),
    ("router.proj.weight", "ffn_gate_inp.weight"),
    ("router.scale", "ffn_gate_inp.scale"),
    ("router.per_expert_scale", "ffn_down_exps.scale"),
];

/// Whole-model names (after the `model.` prefix): transformers → llama.cpp.
const MODEL_NAMES: &[(&str, &str)] = &[
    ("embed_tokens.weight", "token_embd.weight"),
    (
        "embed_tokens_per_layer.weight",
        "per_layer_token_embd.weight",
    ),
    (
        "per_layer_model_projection.weight",
        "per_layer_model_proj.weight",
    ),
    (
        "per_layer_projection_norm.weight",
        "per_layer_proj_norm.weight",
    ),
    ("norm.weight", "output_norm.weight"),
];

/// The llama.cpp name of a Gemma 4 language-model tensor (`model.` or
/// `model.language_model.` prefix).
pub(crate) fn map_text_tensor(name: &str) -> Mapped {
    if is_multimodal(name) || name.ends_with(".rotary_emb.inv_freq") {
        return Mapped::Skip;
    }
    if name == "lm_head.weight" {
        return Mapped::To("output.weight".into());
    }
    let Some(local) = name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("model."))
    else {
        return Mapped::Unknown;
    };
    if let Some((_, to)) = MODEL_NAMES.iter().find(|(from, _)| *from == local) {
        return Mapped::To((*to).to_string());
    }
    let Some(rest) = local.strip_prefix("layers.") else {
        return Mapped::Unknown;
    };
    let Some((idx, suffix)) = rest.split_once('.') else {
        return Mapped::Unknown;
    };
    if idx.parse::<usize>().is_err() {
        return Mapped::Unknown;
    }
    // Expert tensors are stored with or without a `.weight` suffix.
    let bare = if suffix.starts_with("experts.") {
        suffix.strip_suffix(".weight").unwrap_or(suffix)
    } else {
        suffix
    };
    match LAYER_NAMES.iter().find(|(from, _)| *from == bare) {
        Some((_, to)) => Mapped::To(format!("blk.{idx}.{to}")),
        None => Mapped::Unknown,
    }
}

/// The tensor the converter derives from `config.json` (proportional RoPE's frequency factors)
/// rather than copies from the checkpoint.
pub(crate) const ROPE_FREQS: &str = "rope_freqs.weight";

/// The transformers name llama.cpp's `gguf` name comes from (the inverse of
/// [`map_text_tensor`]; for messages and the export back), with the `model.` prefix.
pub(crate) fn text_tensor_origin(gguf: &str) -> Option<String> {
    if gguf == "output.weight" {
        return Some("lm_head.weight".into());
    }
    if let Some((from, _)) = MODEL_NAMES.iter().find(|(_, to)| *to == gguf) {
        return Some(format!("model.{from}"));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    LAYER_NAMES
        .iter()
        .find(|(_, to)| *to == suffix)
        .map(|(from, _)| format!("model.layers.{idx}.{from}"))
}

/// Tensors of vision and audio towers, which a text conversion leaves out (the converter's
/// multimodal filter).
fn is_multimodal(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "mlp",
        "vit.",
        "vpm.",
        "siglip2.",
        "conformer.",
        "merger.",
        "resampler.",
        "sound_encoder.",
        "sound_projection.",
        "speech_embeddings.",
    ];
    const PARTS: [&str; 19] = [
        "visual.",
        "vision.",
        "audio.",
        "talker.",
        "vision_",
        "audio_",
        "sam_model",
        "token2wav.",
        "code2wav.",
        "projector.",
        "pre_mm_projector_norm",
        "image_newline",
        "view_seperator",
        "patch_embed",
        "patch_embedding",
        "patch_merger.",
        "model.connector.",
        "embed_vision",
        "embed_audio",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || PARTS.iter().any(|p| name.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.language_model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            (
                "model.layers.0.layer_scalar",
                "blk.0.layer_output_scale.weight",
            ),
            (
                "model.layers.1.experts.gate_up_proj",
                "blk.1.ffn_gate_up_exps.weight",
            ),
            (
                "model.layers.1.router.per_expert_scale",
                "blk.1.ffn_down_exps.scale",
            ),
        ] {
            assert_eq!(map_text_tensor(hf), Mapped::To(gguf.to_string()));
        }
        assert_eq!(
            text_tensor_origin("blk.7.ffn_down.weight").as_deref(),
            Some("model.layers.7.mlp.down_proj.weight")
        );
        assert_eq!(
            text_tensor_origin("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(
            map_text_tensor("model.vision_tower.encoder.x.weight"),
            Mapped::Skip
        );
        assert_eq!(
            map_text_tensor("model.layers.x.mlp.down_proj.weight"),
            Mapped::Unknown
        );
        assert_eq!(
            map_text_tensor("model.layers.0.self_attn.qkv.weight"),
            Mapped::Unknown
        );
    }
}
