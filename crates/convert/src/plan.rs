//! What a conversion will write, decided and checked before a byte is written: the metadata
//! and, per tensor, its GGUF name, shape, type and where its values come from.

use gguf::GgmlType;

use crate::kv::Kv;

/// Where a tensor's values come from.
#[derive(Clone, Debug)]
pub(crate) enum TensorSource {
    /// The first `n_elems` elements of checkpoint tensor number `index` (fewer than all of them
    /// when an embedding's rows beyond the tokenizer's vocabulary are dropped).
    Checkpoint {
        /// Index into the checkpoint's tensor list.
        index: usize,
        /// Elements kept, from the start.
        n_elems: u64,
    },
    /// Values the converter computes (`rope_freqs`).
    Values(Vec<f32>),
}

/// One tensor of the output.
#[derive(Clone, Debug)]
pub(crate) struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// Shape, ggml order (ne0 innermost).
    pub shape: Vec<u64>,
    /// Output type, set by [`crate::types::assign_types`].
    pub ggml_type: GgmlType,
    /// Where the values come from.
    pub source: TensorSource,
}

impl PlannedTensor {
    /// A tensor whose type is decided later.
    pub(crate) fn new(name: impl Into<String>, shape: Vec<u64>, source: TensorSource) -> Self {
        PlannedTensor {
            name: name.into(),
            shape,
            ggml_type: GgmlType::F32,
            source,
        }
    }

    /// Number of elements.
    pub(crate) fn n_elems(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Number of dimensions.
    pub(crate) fn n_dims(&self) -> usize {
        self.shape.len()
    }
}

/// A conversion, ready to write.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// `general.architecture`.
    pub arch: &'static str,
    /// The model's hyper-parameter keys, in the converter's order (including
    /// `general.file_type`, which it writes among them).
    pub model_kv: Kv,
    /// The `tokenizer.*` keys.
    pub tokenizer_kv: Kv,
    /// The tensors, in file order.
    pub tensors: Vec<PlannedTensor>,
    /// Experts per MoE layer (0 for dense models), for the Q4_K_M rule.
    pub n_expert: usize,
    /// Layers, for the Q4_K_M rule.
    pub n_layer: usize,
}
