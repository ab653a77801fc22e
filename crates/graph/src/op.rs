//! The closed set of ops, with their parameters.
//!
//! Every op is declared once here; the builder infers its output, the memory planner decides
//! its storage, and each backend implements it. Adding an op means a CPU reference, a
//! validation rule in the builder and a test in the same change.

/// Element type of a tensor: the ggml types. Activations are `F32` (or `I32` for ids and
/// positions); weights may be any type the `gguf` crate dequantizes; caches `F32` or `F16`.
pub type DType = gguf::GgmlType;

/// Rotary position embedding parameters (NeoX pairing: dimension `i` with `i + n_rot/2`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Base of the frequencies (`rope.freq_base`).
    pub theta: f32,
    /// Number of leading dimensions rotated (even); the rest pass through.
    pub n_rot: usize,
}

/// Which keys a query sees, by absolute position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnMask {
    /// Every valid key (bidirectional).
    None,
    /// Keys at positions `p ≤ q`.
    Causal,
    /// Keys at positions `q − window < p ≤ q` (the window includes the query itself).
    SlidingWindow {
        /// Window length in positions.
        window: usize,
    },
    /// Every valid key, plus an additive f32 mask input of shape `[kv_capacity, n_queries]`
    /// (−∞ hides a key).
    Explicit,
}

/// How key/value positions map to rows (slots) of the K/V tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Position `p` is stored in row `p`; valid positions are `0..n_kv`.
    Linear,
    /// Position `p` is stored in row `p % capacity`; valid positions are the last
    /// `capacity` of `0..n_kv`.
    Ring,
}

/// Attention parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    /// Multiplier of `q·k` (Gemma 4: 1.0).
    pub scale: f32,
    /// Which keys each query sees.
    pub mask: AttnMask,
    /// How positions map to K/V rows.
    pub kv_layout: KvLayout,
}

/// Element-wise functions of one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `x · s`.
    Scale(f32),
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    Gelu,
    /// SiLU, `x · σ(x)`.
    Silu,
    /// Logit soft-capping: `cap · tanh(x / cap)`.
    Softcap(f32),
}

/// Gated linear units of two inputs `(gate, up)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GluOp {
    /// `gelu_tanh(gate) · up`.
    GeGlu,
    /// `silu(gate) · up`.
    SwiGlu,
}

/// Element-wise functions of two inputs, the second broadcast to the first's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a · b`.
    Mul,
}

/// One operation of the graph. Inputs are listed on each variant, shapes in ggml order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A leaf written by the caller before each run (tokens, positions, slots, masks).
    Input,
    /// A leaf bound to a weight buffer uploaded once.
    Weight,
    /// A leaf bound to a persistent buffer that ops may update in place (a KV cache).
    State,
    /// `[table [ne0, n_rows] (any weight dtype), ids I32 [n]]` → F32 `[ne0, n]`.
    GetRows,
    /// `[w [k, n] (any weight dtype), x F32 [k, m, b2, b3]]` → F32 `[n, m, b2, b3]`.
    MatMul,
    /// `[w [k, n] Q8_0 or Q6_K, x F32 [k, m, b2, b3]]` → F32 `[n, m, b2, b3]`: [`Op::MatMul`]
    /// with the activations quantized like Q8_0 weights first (a drafter's products, as
    /// llama.cpp's q8 activations): per row and 32-element block, `d = max|x| / 127` in f32 (the
    /// maximum over the non-NaN elements, 0 if none), `q = round(x · (1 / d))` (ties away from
    /// zero, clamped to ±127; 0 where `d` is 0 or the product is NaN, so a block holding an
    /// infinity has `d` = inf and all `q` = 0, and its products are NaN); each block's product
    /// is the exact integer `Σ q_w · q_x`, and its term `d_w · d_x · Σ` (the scales' product in
    /// f32) joins an f32 sum with one rounding (a fused multiply-add). A Q8_0 block's integer
    /// weights are its quants and `d_w` its scale; a Q6_K weight's is `scale · (q − 32)` (its
    /// 16-weight sub-block's int8 scale times its level) and `d_w` its 256-weight group's `d`
    /// (|Σ| < 2^24, so the integer is exact in f32 too). The CPU adds the terms block after
    /// block; a backend may group them (CUDA sums per warp and split, then the partial sums),
    /// so results agree within f32 rounding.
    MatMulQ8,
    /// Expert-indexed matmul: `[w [k, n, n_expert], x F32 [k, 1 or n_used, t], ids I32
    /// [n_used, t]]` → F32 `[n, n_used, t]`, slot `j` of token `t` using expert `ids[j, t]`.
    MatMulId,
    /// `[a, b]`, `b` broadcast over `a` (each dimension equal or 1) → `a`'s shape.
    Binary(BinaryOp),
    /// `[x]` → same shape.
    Unary(UnaryOp),
    /// `[gate, up]` of equal shapes → same shape.
    Glu(GluOp),
    /// RMS normalisation over dimension 0: `[x]` or `[x, weight [ne0]]`.
    RmsNorm {
        /// Added to the mean square.
        eps: f32,
    },
    /// `[x F32 [n_dims, n_heads, t], pos I32 [t]]` or with `freq_factors F32 [n_rot/2]`
    /// dividing each frequency.
    Rope(RopeParams),
    /// Softmax over dimension 0.
    Softmax,
    /// `[q F32 [d, n_head, t], k [d, n_head_kv, cap], v [d_v, n_head_kv, cap], q_pos I32 [t],
    /// n_kv I32 [1]]` (+ `mask F32 [cap, t]` for [`AttnMask::Explicit`]) → F32
    /// `[d_v, n_head, t]`.
    Attention(AttnParams),
    /// `[a, b]` joined along one dimension.
    Concat {
        /// The dimension joined along.
        dim: usize,
    },
    /// A strided view of the input's storage (no copy).
    View,
    /// The same contiguous elements with another shape (no copy).
    Reshape,
    /// Dimensions reordered: output dimension `i` is input dimension `axes[i]` (no copy).
    Permute([usize; 4]),
    /// A dense copy of any layout.
    Contiguous,
    /// `[dst (a State) [ne0, rows], src [ne0, n], slots I32 [n]]`: writes row `i` of `src`
    /// into row `slots[i]` of `dst`, in place; the output is `dst` after the write.
    WriteRows,
    /// Index of the largest element along dimension 0: `[x [ne0, a, b, c]]` → I32 `[a, b, c]`.
    Argmax,
    /// Indices of the `k` largest along dimension 0, largest first → I32 `[k, a, b, c]`.
    TopK(usize),
    /// MoE routing weights: `[probs F32 [n_expert, t], ids I32 [k, t]]` (+ `scale F32
    /// [n_expert]`) → F32 `[k, t]`: the chosen probabilities, optionally renormalised to sum
    /// to one, then multiplied by the chosen experts' scales.
    MoeWeights {
        /// Whether to renormalise the chosen probabilities.
        renormalize: bool,
    },
    /// The experts' weighted sum: `[x F32 [h, k, t], w F32 [k, t]]` → F32 `[h, t]`,
    /// `y[i, t] = x[i, 0, t]·w[0, t] + x[i, 1, t]·w[1, t] + …`, each product and each sum rounded
    /// in that order (as a multiply followed by a chain of adds would round them).
    MoeSum,
}

impl Op {
    /// A short name for messages and dumps.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Weight => "weight",
            Op::State => "state",
            Op::GetRows => "get_rows",
            Op::MatMul => "matmul",
            Op::MatMulId => "matmul_id",
            Op::MatMulQ8 => "matmul_q8",
            Op::Binary(BinaryOp::Add) => "add",
            Op::Binary(BinaryOp::Mul) => "mul",
            Op::Unary(UnaryOp::Scale(_)) => "scale",
            Op::Unary(UnaryOp::Gelu) => "gelu",
            Op::Unary(UnaryOp::Silu) => "silu",
            Op::Unary(UnaryOp::Softcap(_)) => "softcap",
            Op::Glu(GluOp::GeGlu) => "geglu",
            Op::Glu(GluOp::SwiGlu) => "swiglu",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Rope(_) => "rope",
            Op::Softmax => "softmax",
            Op::Attention(_) => "attention",
            Op::Concat { .. } => "concat",
            Op::View => "view",
            Op::Reshape => "reshape",
            Op::Permute(_) => "permute",
            Op::Contiguous => "contiguous",
            Op::WriteRows => "write_rows",
            Op::Argmax => "argmax",
            Op::TopK(_) => "top_k",
            Op::MoeWeights { .. } => "moe_weights",
            Op::MoeSum => "moe_sum",
        }
    }

    /// Whether the op is a leaf (has no inputs and is bound or written by the caller).
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input | Op::Weight | Op::State)
    }

    /// Whether the op's output shares its first input's storage (no buffer of its own).
    pub fn is_alias(&self) -> bool {
        matches!(
            self,
            Op::View | Op::Reshape | Op::Permute(_) | Op::WriteRows
        )
    }
}
