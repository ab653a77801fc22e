//! A Gemma 4 target (`Gemma4ForCausalLM`, or the text model of
//! `Gemma4ForConditionalGeneration`) → GGUF arch `gemma4`.
//!
//! Tensors keep their values (Gemma 4's norms multiply by `w`, so no `+1` shift); the
//! embedding loses rows beyond the tokenizer's vocabulary; `rope_freqs` is generated first.
//! The set of tensors and every shape are checked against what specula's own loader expects
//! for the config (`target::weights::expected_tensors`).

use target::config::MoeConfig;
use target::Gemma4Config;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::gemma4::Gemma4Text;
use crate::gemma4_names::{map_text_tensor, text_tensor_origin, ROPE_FREQS};
use crate::hparams::HParams;
use crate::kv::Kv;
use crate::mapping::{check_tensors, map_tensors, Expect, Mapped};
use crate::plan::{Plan, PlannedTensor, TensorSource};
use crate::tokenizer::TokenizerFiles;
use crate::types::OutType;

/// The GGUF architecture.
pub(crate) const ARCH: &str = "gemma4";

/// Plans the conversion of a Gemma 4 target checkpoint.
pub(crate) fn plan(ck: &Checkpoint, config: &HParams, out: OutType) -> Result<Plan> {
    let text = Gemma4Text::parse(&config.with_text_config())?;
    let Gemma4Tensors {
        tokenizer_kv,
        tensors,
        n_vocab,
    } = gemma4_tensors(ck, &text, map_text_tensor, "Gemma 4 text model")?;
    let expected: Vec<Expect> = target::weights::expected_tensors(&runtime_config(&text, n_vocab))
        .into_iter()
        .map(|e| Expect::new(e.name, &e.shape, e.required))
        .collect();
    check_tensors(
        ck,
        &tensors,
        &expected,
        "Gemma 4 target",
        text_tensor_origin,
    )?;
    Ok(Plan {
        arch: ARCH,
        model_kv: text.model_kv(ARCH, out.file_type()),
        tokenizer_kv,
        tensors,
        n_expert: if text.moe {
            text.n_expert.unwrap_or(0)
        } else {
            0
        },
        n_layer: text.n_layer,
    })
}

/// What a Gemma 4 target and its MTP assistant share: the tokenizer's keys, the generated
/// `rope_freqs` (first), the checkpoint's tensors named by `map` (the embedding cut to the
/// tokenizer's rows) and the vocabulary size the embedding gives.
pub(crate) struct Gemma4Tensors {
    pub tokenizer_kv: Kv,
    pub tensors: Vec<PlannedTensor>,
    pub n_vocab: usize,
}

/// Builds [`Gemma4Tensors`] for a checkpoint whose text config is `text`; `what` names the model
/// in errors.
pub(crate) fn gemma4_tensors(
    ck: &Checkpoint,
    text: &Gemma4Text,
    map: impl Fn(&str) -> Mapped,
    what: &str,
) -> Result<Gemma4Tensors> {
    let tokenizer = TokenizerFiles::load(ck.dir())?;
    let tokenizer_kv = tokenizer.gemma4_kv()?;
    let rows = tokenizer.embedding_rows()?;
    let mut tensors = vec![PlannedTensor::new(
        ROPE_FREQS,
        vec![(text.head_dim_full / 2) as u64],
        TensorSource::Values(text.rope_freqs()),
    )];
    tensors.extend(map_tensors(ck, map, what, Some(rows))?);
    let n_vocab = tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .and_then(|t| t.shape.get(1))
        .map_or(text.vocab_size, |&v| v as usize);
    Ok(Gemma4Tensors {
        tokenizer_kv,
        tensors,
        n_vocab,
    })
}

/// The config specula's loader will read back from the converted file.
fn runtime_config(t: &Gemma4Text, n_vocab: usize) -> Gemma4Config {
    Gemma4Config {
        n_layer: t.n_layer,
        n_embd: t.n_embd,
        n_vocab,
        n_ctx_train: t.n_ctx,
        n_head: t.n_head,
        n_head_kv: t.n_head_kv_per_layer(),
        head_dim_full: t.head_dim_full,
        head_dim_swa: t.head_dim,
        n_ff: t.n_ff_per_layer(),
        eps: t.eps as f32,
        sliding_window: t.sliding_window,
        is_sliding: t.is_sliding.clone(),
        n_kv_shared: t.n_kv_shared,
        rope_theta_full: t.rope_theta_full as f32,
        rope_theta_swa: t.rope_theta_swa.unwrap_or(1e4) as f32,
        n_rot_full: t.head_dim_full,
        n_rot_swa: t.n_rot_swa(),
        final_logit_softcap: t.softcap.map(|c| c as f32),
        n_embd_per_layer: t.n_embd_per_layer,
        moe: t.moe.then(|| MoeConfig {
            n_expert: t.n_expert.unwrap_or(0),
            n_expert_used: t.n_expert_used.unwrap_or(0),
            n_ff_expert: t.n_ff_expert.unwrap_or(0),
        }),
    }
}
