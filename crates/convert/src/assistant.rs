//! A Gemma 4 MTP assistant (`Gemma4AssistantForCausalLM`) → GGUF arch `gemma4-assistant`.
//!
//! The text config's keys as for a target, plus `embedding_length_out` (the target's width)
//! and `nextn_predict_layers`; `pre_projection`/`post_projection` become `nextn.*`; the
//! centroid head (`masked_embedding.*`) is left out, as llama.cpp's converter does, so the
//! file always has the dense tied head. Shapes are checked against what specula's assistant
//! loader expects (`drafter_mtp::expected_tensors`).

use drafter_mtp::{AssistantConfig, Layout};

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::gemma4::Gemma4Text;
use crate::gemma4_names::{map_text_tensor, text_tensor_origin, ROPE_FREQS};
use crate::hparams::HParams;
use crate::mapping::{check_tensors, Expect, Mapped};
use crate::plan::Plan;
use crate::target::{gemma4_tensors, Gemma4Tensors};
use crate::types::OutType;

/// The GGUF architecture.
pub(crate) const ARCH: &str = "gemma4-assistant";

/// Plans the conversion of an assistant checkpoint.
pub(crate) fn plan(ck: &Checkpoint, config: &HParams, out: OutType) -> Result<Plan> {
    let merged = config.with_text_config();
    let text = Gemma4Text::parse(&merged)?;
    let n_backbone = merged.usize("backbone_hidden_size")?;
    let Gemma4Tensors {
        tokenizer_kv,
        tensors,
        n_vocab,
    } = gemma4_tensors(ck, &text, map_assistant_tensor, "Gemma 4 assistant")?;
    let expected: Vec<Expect> =
        drafter_mtp::expected_tensors(&runtime_config(&text, n_backbone, n_vocab))
            .into_iter()
            .map(|(name, shape)| {
                // The loader does without these two.
                let required = name != ROPE_FREQS && !name.ends_with("layer_output_scale.weight");
                Expect::new(name, &shape, required)
            })
            .collect();
    check_tensors(
        ck,
        &tensors,
        &expected,
        "Gemma 4 assistant",
        |gguf| match gguf {
            "nextn.pre_projection.weight" => Some("pre_projection.weight".into()),
            "nextn.post_projection.weight" => Some("post_projection.weight".into()),
            other => text_tensor_origin(other),
        },
    )?;
    let mut model_kv = text.model_kv(ARCH, out.file_type());
    model_kv.set_u32(format!("{ARCH}.embedding_length_out"), n_backbone);
    model_kv.set_u32(format!("{ARCH}.nextn_predict_layers"), text.n_layer);
    Ok(Plan {
        arch: ARCH,
        model_kv,
        tokenizer_kv,
        tensors,
        n_expert: 0,
        n_layer: text.n_layer,
    })
}

/// The assistant's names: the text model's, plus the two projections; the centroid head is
/// dropped.
fn map_assistant_tensor(name: &str) -> Mapped {
    if name.contains("masked_embedding") {
        return Mapped::Skip;
    }
    match name {
        "pre_projection.weight" => Mapped::To("nextn.pre_projection.weight".into()),
        "post_projection.weight" => Mapped::To("nextn.post_projection.weight".into()),
        _ => map_text_tensor(name),
    }
}

/// The config specula's assistant loader will read back from the converted file.
fn runtime_config(t: &Gemma4Text, n_backbone: usize, n_vocab: usize) -> AssistantConfig {
    AssistantConfig {
        layout: Layout::LlamaCpp,
        n_layer: t.n_layer,
        n_embd: t.n_embd,
        n_backbone,
        n_head: t.n_head,
        head_dim_full: t.head_dim_full,
        head_dim_swa: t.head_dim,
        is_sliding: t.is_sliding.clone(),
        n_ff: t.n_ff_per_layer(),
        eps: t.eps as f32,
        rope_theta_full: t.rope_theta_full as f32,
        rope_theta_swa: t.rope_theta_swa.unwrap_or(1e4) as f32,
        n_rot_full: t.head_dim_full,
        n_rot_swa: t.n_rot_swa(),
        n_vocab,
        final_logit_softcap: None,
        centroids: None,
    }
}
