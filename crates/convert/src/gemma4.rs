//! What Gemma 4 targets and MTP assistants share: the text hyper-parameters, the metadata
//! keys llama.cpp's converter writes for them (in its order) and `rope_freqs`. Tensor names
//! are in [`crate::gemma4_names`].

use gguf::{Array, Value};

use crate::error::Result;
use crate::hparams::HParams;
use crate::kv::Kv;

/// The hyper-parameters of a Gemma 4 text model (`text_config` laid over the top level).
#[derive(Clone, Debug)]
pub(crate) struct Gemma4Text {
    /// Layers.
    pub n_layer: usize,
    /// Trained context length.
    pub n_ctx: usize,
    /// Hidden width.
    pub n_embd: usize,
    /// Feed-forward width (doubled on KV-shared layers with `use_double_wide_mlp`).
    pub n_ff: usize,
    /// Whether KV-shared layers have a double-wide MLP.
    pub double_wide_mlp: bool,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads of sliding layers.
    pub n_head_kv: usize,
    /// Key/value heads of full layers, when the config sets them apart.
    pub n_head_kv_full: Option<usize>,
    /// Head dimension of sliding layers.
    pub head_dim: usize,
    /// Head dimension of full layers.
    pub head_dim_full: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Per layer: sliding window (else full attention).
    pub is_sliding: Vec<bool>,
    /// Sliding window length.
    pub sliding_window: usize,
    /// The last this many layers reuse earlier layers' K/V.
    pub n_kv_shared: usize,
    /// Width of per-layer embeddings (0: none).
    pub n_embd_per_layer: usize,
    /// RoPE base of full layers.
    pub rope_theta_full: f64,
    /// RoPE base of sliding layers, when given.
    pub rope_theta_swa: Option<f64>,
    /// Fraction of a full layer's head that rotates.
    pub partial_rotary_full: f64,
    /// Fraction of a sliding layer's head that rotates.
    pub partial_rotary_swa: f64,
    /// Final logit soft-capping (absent or 0: none).
    pub softcap: Option<f64>,
    /// Experts per MoE layer.
    pub n_expert: Option<usize>,
    /// Experts used per token.
    pub n_expert_used: Option<usize>,
    /// Hidden width of one expert.
    pub n_ff_expert: Option<usize>,
    /// Whether layers have the MoE block.
    pub moe: bool,
    /// Vocabulary size.
    pub vocab_size: usize,
}

impl Gemma4Text {
    /// Reads and checks the text config.
    pub(crate) fn parse(hp: &HParams) -> Result<Gemma4Text> {
        let n_layer = hp.usize("num_hidden_layers")?;
        let types = hp.strings("layer_types")?;
        if types.len() != n_layer {
            return Err(hp.error(format!(
                "key 'layer_types' has {} entries for {n_layer} layers",
                types.len()
            )));
        }
        let is_sliding = types
            .iter()
            .map(|t| match *t {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(hp.error(format!("key 'layer_types' holds unknown type '{other}'"))),
            })
            .collect::<Result<Vec<bool>>>()?;
        let n_head = hp.usize("num_attention_heads")?;
        let n_head_kv = hp.usize("num_key_value_heads")?;
        let head_dim = hp.usize("head_dim")?;
        let (per_layer_dim, per_layer_kv) =
            per_layer_overrides(hp, &is_sliding, n_head, n_head_kv, head_dim)?;
        let head_dim_full = hp
            .opt_usize("global_head_dim")?
            .or(per_layer_dim)
            .unwrap_or(head_dim);
        let n_head_kv_full = hp.opt_usize("num_global_key_value_heads")?.or(per_layer_kv);

        let rope = hp
            .object("rope_parameters")?
            .ok_or_else(|| hp.error("key 'rope_parameters' is missing"))?;
        let full = rope
            .object("full_attention")?
            .ok_or_else(|| hp.error("key 'rope_parameters.full_attention' is missing"))?;
        let full_type = full.opt_str("rope_type")?.unwrap_or("default");
        if full_type != "proportional" {
            return Err(hp.error(format!(
                "rope_parameters.full_attention.rope_type is '{full_type}'; Gemma 4 uses 'proportional'"
            )));
        }
        let swa = rope.object("sliding_attention")?;
        if let Some(t) = swa
            .as_ref()
            .map(|s| s.opt_str("rope_type"))
            .transpose()?
            .flatten()
        {
            if t != "default" {
                return Err(hp.error(format!(
                    "rope_parameters.sliding_attention.rope_type '{t}' is not supported"
                )));
            }
        }
        let n_kv_shared = hp.opt_usize("num_kv_shared_layers")?.unwrap_or(0);
        if n_kv_shared > n_layer {
            return Err(hp.error(format!(
                "key 'num_kv_shared_layers' = {n_kv_shared} exceeds the {n_layer} layers"
            )));
        }
        let text = Gemma4Text {
            n_layer,
            n_ctx: hp.opt_usize("max_position_embeddings")?.unwrap_or(131_072),
            n_embd: hp.usize("hidden_size")?,
            n_ff: hp.usize("intermediate_size")?,
            double_wide_mlp: hp.opt_bool("use_double_wide_mlp")?.unwrap_or(false),
            n_head,
            n_head_kv,
            n_head_kv_full,
            head_dim,
            head_dim_full,
            eps: hp.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            is_sliding,
            sliding_window: hp.usize("sliding_window")?,
            n_kv_shared,
            n_embd_per_layer: hp.opt_usize("hidden_size_per_layer_input")?.unwrap_or(0),
            rope_theta_full: full.opt_f64("rope_theta")?.unwrap_or(1e6),
            rope_theta_swa: swa
                .as_ref()
                .map(|s| s.opt_f64("rope_theta"))
                .transpose()?
                .flatten(),
            partial_rotary_full: full.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
            partial_rotary_swa: swa
                .as_ref()
                .map(|s| s.opt_f64("partial_rotary_factor"))
                .transpose()?
                .flatten()
                .unwrap_or(1.0),
            softcap: hp.opt_f64("final_logit_softcapping")?.filter(|&c| c != 0.0),
            n_expert: hp.opt_usize("num_experts")?,
            n_expert_used: hp.opt_usize("top_k_experts")?,
            n_ff_expert: hp.opt_usize("moe_intermediate_size")?,
            moe: hp.opt_bool("enable_moe_block")?.unwrap_or(false),
            vocab_size: hp.usize("vocab_size")?,
        };
        text.check(hp)?;
        Ok(text)
    }

    /// Sizes a Gemma 4 model cannot have (checked here so that they fail before writing).
    fn check(&self, hp: &HParams) -> Result<()> {
        let kv_heads = [
            ("num_key_value_heads", Some(self.n_head_kv)),
            ("full layers' key/value heads", self.n_head_kv_full),
        ];
        for (what, kv) in kv_heads {
            if let Some(kv) = kv {
                if kv == 0 || self.n_head == 0 || !self.n_head.is_multiple_of(kv) {
                    return Err(hp.error(format!(
                        "num_attention_heads {} is not a positive multiple of {what} {kv}",
                        self.n_head
                    )));
                }
            }
        }
        for (what, dim) in [
            ("head_dim", self.head_dim),
            ("the full layers' head_dim", self.head_dim_full),
        ] {
            if dim == 0 || !dim.is_multiple_of(2) {
                return Err(hp.error(format!("{what} {dim} is not a positive even number")));
            }
        }
        if self.sliding_window == 0 {
            return Err(hp.error("key 'sliding_window' is 0"));
        }
        if self.moe {
            for (key, value) in [
                ("num_experts", self.n_expert),
                ("top_k_experts", self.n_expert_used),
                ("moe_intermediate_size", self.n_ff_expert),
            ] {
                if value.is_none_or(|v| v == 0) {
                    return Err(hp.error(format!(
                        "enable_moe_block is set but key '{key}' is missing or 0"
                    )));
                }
            }
        }
        Ok(())
    }

    /// First layer that reuses another layer's K/V.
    pub(crate) fn first_kv_shared(&self) -> usize {
        self.n_layer - self.n_kv_shared
    }

    /// Key/value heads per layer.
    pub(crate) fn n_head_kv_per_layer(&self) -> Vec<usize> {
        self.is_sliding
            .iter()
            .map(|&s| {
                if s {
                    self.n_head_kv
                } else {
                    self.n_head_kv_full.unwrap_or(self.n_head_kv)
                }
            })
            .collect()
    }

    /// Feed-forward width per layer.
    pub(crate) fn n_ff_per_layer(&self) -> Vec<usize> {
        (0..self.n_layer)
            .map(|l| {
                if self.double_wide_mlp && l >= self.first_kv_shared() {
                    2 * self.n_ff
                } else {
                    self.n_ff
                }
            })
            .collect()
    }

    /// Dimensions rotated on sliding layers.
    pub(crate) fn n_rot_swa(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_swa) as usize
    }

    /// `rope_freqs`: frequency factors for full layers' proportional RoPE, 1 for the rotated
    /// pairs and 1e30 (no rotation) for the rest.
    pub(crate) fn rope_freqs(&self) -> Vec<f32> {
        let n_pairs = self.head_dim_full / 2;
        let n_rot =
            ((self.head_dim_full as f64 * self.partial_rotary_full / 2.0) as usize).min(n_pairs);
        let mut v = vec![1.0f32; n_rot];
        v.resize(n_pairs, 1e30);
        v
    }

    /// The model keys, in the order llama.cpp's converter sets them (TextModel, then Gemma 3,
    /// then Gemma 4 overrides, each override keeping the key's first position).
    pub(crate) fn model_kv(&self, arch: &str, file_type: u32) -> Kv {
        let k = |s: &str| format!("{arch}.{s}");
        let mut kv = Kv::new();
        kv.set_u32(k("block_count"), self.n_layer);
        kv.set_u32(k("context_length"), self.n_ctx);
        kv.set_u32(k("embedding_length"), self.n_embd);
        kv.set_u32(k("feed_forward_length"), self.n_ff);
        kv.set_u32(k("attention.head_count"), self.n_head);
        kv.set_u32(k("attention.head_count_kv"), self.n_head_kv);
        kv.set_f32(k("rope.freq_base"), self.rope_theta_full);
        if let Some(theta) = self.rope_theta_swa {
            kv.set_f32(k("rope.freq_base_swa"), theta);
        }
        kv.set_f32(k("attention.layer_norm_rms_epsilon"), self.eps);
        if let Some(n) = self.n_expert {
            kv.set_u32(k("expert_count"), n);
        }
        if let Some(n) = self.n_expert_used {
            kv.set_u32(k("expert_used_count"), n);
        }
        kv.set_u32(k("attention.key_length"), self.head_dim);
        kv.set_u32(k("attention.value_length"), self.head_dim);
        kv.set("general.file_type", Value::U32(file_type));
        if let Some(cap) = self.softcap {
            kv.set_f32(k("final_logit_softcapping"), cap);
        }
        kv.set_u32(k("attention.sliding_window"), self.sliding_window);
        kv.set_u32(k("attention.shared_kv_layers"), self.n_kv_shared);
        kv.set_u32(k("embedding_length_per_layer_input"), self.n_embd_per_layer);
        kv.set(
            k("attention.sliding_window_pattern"),
            Value::Array(Array::Bool(self.is_sliding.clone())),
        );
        kv.set_u32(k("attention.key_length"), self.head_dim_full);
        kv.set_u32(k("attention.value_length"), self.head_dim_full);
        kv.set_u32(k("attention.key_length_swa"), self.head_dim);
        kv.set_u32(k("attention.value_length_swa"), self.head_dim);
        if let Some(n) = self.n_ff_expert {
            kv.set_u32(k("expert_feed_forward_length"), n);
        }
        if self.double_wide_mlp {
            kv.set_i32s(k("feed_forward_length"), &self.n_ff_per_layer());
        }
        if self.n_head_kv_full.is_some() {
            kv.set_i32s(k("attention.head_count_kv"), &self.n_head_kv_per_layer());
        }
        kv.set_u32(k("rope.dimension_count"), self.head_dim_full);
        kv.set_u32(k("rope.dimension_count_swa"), self.n_rot_swa());
        kv
    }
}

/// The head dimension and key/value heads that `per_layer_config` gives full layers
/// (transformers ≥ 5.15 stores them there instead of `global_head_dim` and
/// `num_global_key_value_heads`). Overrides GGUF cannot express are errors.
fn per_layer_overrides(
    hp: &HParams,
    is_sliding: &[bool],
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) -> Result<(Option<usize>, Option<usize>)> {
    let Some(per_layer) = hp.object("per_layer_config")? else {
        return Ok((None, None));
    };
    let (mut dim_full, mut kv_full) = (None, None);
    for (l, &sliding) in is_sliding.iter().enumerate() {
        let Some(o) = per_layer.object(&l.to_string())? else {
            continue;
        };
        let key = |k: &str| format!("per_layer_config.{l}.{k}");
        if let Some(h) = o.opt_usize("num_attention_heads")? {
            if h != n_head {
                return Err(hp.error(format!(
                    "{} = {h} differs from num_attention_heads {n_head}",
                    key("num_attention_heads")
                )));
            }
        }
        for (name, value, base, slot) in [
            (
                "head_dim",
                o.opt_usize("head_dim")?,
                head_dim,
                &mut dim_full,
            ),
            (
                "num_key_value_heads",
                o.opt_usize("num_key_value_heads")?,
                n_head_kv,
                &mut kv_full,
            ),
        ] {
            let Some(v) = value else { continue };
            if sliding {
                if v != base {
                    return Err(hp.error(format!(
                        "{} = {v} on a sliding layer differs from the model's {base}",
                        key(name)
                    )));
                }
            } else if slot.is_some_and(|prev| prev != v) {
                return Err(hp.error(format!(
                    "{} = {v} differs from another full layer's {}",
                    key(name),
                    slot.unwrap_or(0)
                )));
            } else {
                *slot = Some(v);
            }
        }
    }
    Ok((dim_full, kv_full))
}
