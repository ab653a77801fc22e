//! The CUDA C++ sources, embedded in the binary, and the list of every kernel entry point.

/// Shared definitions (types, dtype codes, conversions, reductions, layouts).
pub const COMMON: &str = include_str!("../cu/common.cuh");
/// Per-type dequantization of 32-element chunks.
pub const DEQUANT: &str = include_str!("../cu/dequant.cuh");
/// Matmul, expert matmul and row gathers for every weight type.
pub const MATMUL: &str = include_str!("../cu/matmul.cu");
/// Tensor-core products of Q4_K, Q6_K and Q8_0 weights with any number of activation rows.
pub const MATVEC_MMA: &str = include_str!("../cu/matvec_mma.cu");
/// Q4_K and repacked Q6_K verify products of 9–16 rows on wgmma (sm_90a).
pub const WGMMA_VERIFY: &str = include_str!("../cu/wgmma_verify.cu");
/// Element-wise ops, norms, RoPE, softmax, row writes, selections.
pub const OPS: &str = include_str!("../cu/ops.cu");
/// Attention.
pub const ATTENTION: &str = include_str!("../cu/attention.cu");
/// Attention of up to 16 queries on tensor cores (decode steps and verify batches).
pub const ATTENTION_TC: &str = include_str!("../cu/attention_tc.cu");

/// The whole translation unit compiled by NVRTC, with the A/B knobs' defines ([`KNOB_DEFINES`])
/// set in the environment in front.
pub fn full_source() -> String {
    source_with(&knob_settings(&[]))
}

/// The knobs set in the environment to values they accept, with `overrides` in place of the
/// environment's value of the same knob (a second backend compiled with other knobs: the bench's
/// spread-pick MoE run); [`source_with`] puts them in front of the kernels.
pub fn knob_settings(
    overrides: &[(&'static KnobDefine, usize)],
) -> Vec<(&'static KnobDefine, usize)> {
    KNOB_DEFINES
        .iter()
        .filter_map(|knob| {
            if let Some(&(_, value)) = overrides.iter().find(|(o, _)| o.var == knob.var) {
                return Some((knob, value));
            }
            let value = std::env::var(knob.var).ok()?.parse::<usize>().ok()?;
            (knob.accepts)(value).then_some((knob, value))
        })
        .collect()
}

/// The knob of environment variable `var` set to `value`, checked: an unknown variable or a
/// value the knob does not accept is an error naming both.
pub fn knob_override(var: &str, value: usize) -> Result<(&'static KnobDefine, usize), String> {
    let knob = KNOB_DEFINES
        .iter()
        .find(|k| k.var == var)
        .ok_or_else(|| format!("{var} is not a kernel knob (source::KNOB_DEFINES)"))?;
    if !(knob.accepts)(value) {
        return Err(format!("{var} does not take {value}"));
    }
    Ok((knob, value))
}

/// The translation unit with `knobs` defined as the given values (no environment read), as
/// `cargo xtask kernels --knobs` compiles each knob's [`KnobDefine::variants`].
pub fn source_with(knobs: &[(&KnobDefine, usize)]) -> String {
    let mut parts = String::new();
    for (knob, n) in knobs {
        parts.push_str(&format!("#define {} {n}\n", knob.name));
    }
    parts.push_str(
        &[
            COMMON,
            DEQUANT,
            MATMUL,
            MATVEC_MMA,
            WGMMA_VERIFY,
            OPS,
            ATTENTION,
            ATTENTION_TC,
        ]
        .join("\n"),
    );
    parts
}

/// An A/B knob of the kernels: `var=n` in the environment defines macro `name` as `n` where
/// `accepts(n)`; unset or other values leave the kernels' default.
#[derive(Debug)]
pub struct KnobDefine {
    /// The environment variable.
    pub var: &'static str,
    /// The macro it defines.
    pub name: &'static str,
    /// The values the macro takes.
    pub accepts: fn(usize) -> bool,
    /// Values other than the kernels' default that `cargo xtask kernels --knobs` (and CI)
    /// compiles, so an A/B run never finds its knob broken on the GPU machine.
    pub variants: &'static [usize],
    /// For a measurement mode, the value that makes outputs wrong and what a backend compiled
    /// with it says at start ([`measurement_warnings`]); `None` for knobs that keep outputs right.
    pub wrong_outputs: Option<(usize, &'static str)>,
}

/// What the measurement modes among `knobs` say at start: one line for each knob set to the
/// value that makes outputs wrong ([`KnobDefine::wrong_outputs`]).
pub fn measurement_warnings(knobs: &[(&KnobDefine, usize)]) -> Vec<String> {
    knobs
        .iter()
        .filter_map(|&(knob, value)| match knob.wrong_outputs {
            Some((wrong, what)) if wrong == value => {
                Some(format!("{}={value}: {what} (a measurement mode)", knob.var))
            }
            _ => None,
        })
        .collect()
}

/// The kernels' A/B knobs ([`KnobDefine`]):
/// - `SPECULA_ATT_MIN_SPLIT` → `ATT_MIN_SPLIT` (`attention.cu`): the fewest cached positions an
///   attention split takes, any n > 0.
/// - `SPECULA_WEIGHT_L1` → `WEIGHT_L1` (`matvec_mma.cu`): the `_mma_` and limb kernels' weight
///   loads, 0 plain, 2 first evicted from L1 (the default).
/// - `SPECULA_Q4K_HEAD16` → `Q4K_HEAD16` (`matvec_mma.cu`): 1 (the default) loads a Q4_K group's
///   16 header bytes in one load, 0 in four.
/// - `SPECULA_Q6K_WIDE` → `Q6K_WIDE` (`matvec_mma.cu`): 1 (the default) loads a lane's repacked
///   Q6_K quant words of a half group in one 16-byte and one 8-byte load in the one-tile
///   kernels, 0 in four smaller ones.
/// - `SPECULA_Q6K_FIELDS` → `Q6K_FIELDS` (`matvec_mma.cu`, `wgmma_verify.cu`): 1 (the default)
///   repacks Q6_K levels as 6-bit fields where the f16 A fragments want them, 0 rearranges the
///   stored low-nibble and high-bit words only. The same bits either way.
/// - `SPECULA_WALK_FAST` → `WALK_FAST` (`matvec_mma.cu`): 1 (the default) lets the persistent
///   products' walks find their next unit without dividing where they can, 0 divides.
/// - `SPECULA_Q4K_HL` → `Q4K_HL` (`matvec_mma.cu`, `wgmma_verify.cu`): 1 sums the Q4_K decode
///   and verify kernels' hi and lo activation halves in separate chains (a decode step's `_p1`
///   kernel then takes them as two columns of one mma, the wgmma verify kernel as the two
///   halves of one m64n32k16), 0 (the default) in one alternating chain.
/// - `SPECULA_WG_UNIFORM` → `WG_UNIFORM` (`wgmma_verify.cu`): 1 (the default) keeps the wgmma
///   verify kernels' descriptors in uniform registers, 0 builds them per thread.
/// - `SPECULA_ATT_ONE_DIRECT` → `ATT_ONE_DIRECT` (`attention.cu`): 1 (the default) lets a query
///   that uses one split write its output row itself, 0 leaves it to the combine.
/// - `SPECULA_MM_BATCH` → `MM_BATCH` (`matmul.cu`): chunks whose weights a lane of the scalar
///   one- and two-row products and of `matmul_id` loads before using them (not Q8_0 and Q5_0
///   rows, which take four chunks a pass), 1 to 32 (8 the default; 4 the loop before it). The
///   same bits for any value.
/// - `SPECULA_MOE_SPREAD_IDS` → `MOE_SPREAD_IDS` (`ops.cu`): 1 replaces the router's picks in
///   `moe_route_f32` by distinct pseudo-random experts, to time a MoE verify batch as a trained
///   router would spread it (a measurement mode: every MoE output is wrong); 0 the default.
pub const KNOB_DEFINES: &[KnobDefine] = &[
    KnobDefine {
        var: "SPECULA_ATT_MIN_SPLIT",
        name: "ATT_MIN_SPLIT",
        accepts: |n| n > 0,
        variants: &[64],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_WEIGHT_L1",
        name: "WEIGHT_L1",
        accepts: |n| n == 0 || n == 2,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_Q4K_HEAD16",
        name: "Q4K_HEAD16",
        accepts: |n| n <= 1,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_Q6K_WIDE",
        name: "Q6K_WIDE",
        accepts: |n| n <= 1,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_Q6K_FIELDS",
        name: "Q6K_FIELDS",
        accepts: |n| n <= 1,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_WALK_FAST",
        name: "WALK_FAST",
        accepts: |n| n <= 1,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_Q4K_HL",
        name: "Q4K_HL",
        accepts: |n| n <= 1,
        variants: &[1],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_WG_UNIFORM",
        name: "WG_UNIFORM",
        accepts: |n| n <= 1,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_ATT_ONE_DIRECT",
        name: "ATT_ONE_DIRECT",
        accepts: |n| n <= 1,
        variants: &[0],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_MM_BATCH",
        name: "MM_BATCH",
        accepts: |n| (1..=32).contains(&n),
        variants: &[4],
        wrong_outputs: None,
    },
    KnobDefine {
        var: "SPECULA_MOE_SPREAD_IDS",
        name: "MOE_SPREAD_IDS",
        accepts: |n| n <= 1,
        variants: &[1],
        wrong_outputs: Some((
            1,
            "MoE routers pick pseudo-random experts; every MoE output is wrong",
        )),
    },
];

/// Weight types with matmul / matmul_id / get_rows kernels, by kernel suffix.
pub const WEIGHT_SUFFIXES: &[(gguf::GgmlType, &str)] = &[
    (gguf::GgmlType::F32, "f32"),
    (gguf::GgmlType::F16, "f16"),
    (gguf::GgmlType::BF16, "bf16"),
    (gguf::GgmlType::Q4_0, "q4_0"),
    (gguf::GgmlType::Q4_1, "q4_1"),
    (gguf::GgmlType::Q5_0, "q5_0"),
    (gguf::GgmlType::Q5_1, "q5_1"),
    (gguf::GgmlType::Q8_0, "q8_0"),
    (gguf::GgmlType::Q2_K, "q2_k"),
    (gguf::GgmlType::Q3_K, "q3_k"),
    (gguf::GgmlType::Q4_K, "q4_k"),
    (gguf::GgmlType::Q5_K, "q5_k"),
    (gguf::GgmlType::Q6_K, "q6_k"),
];

/// Products with more activation rows than this use the tiled tensor-core kernels
/// (`matmul_tc_<type>`), except those the `_mma_` kernels take (Q4_K, Q6_K, Q8_0 rows of whole
/// 256-weight groups, unless `SPECULA_MMA_PREFILL=0`).
pub const TENSOR_CORE_MIN_ROWS: usize = 16;

/// Activation-row tiles of the matmul kernels (`matmul_<type>_r<R>`): a product with `m` rows
/// uses the smallest tile of at least `m` rows, or tiles of 16.
pub const MATMUL_ROW_TILES: &[usize] = &[1, 2, 4, 8, 16];

/// Output rows one warp computes in `matmul_{q4_k,q6_k,q8_0}_fast_r<tile>` (as `Q4K_FAST`,
/// `Q6K_FAST`, `Q80_FAST` in matmul.cu):
/// more rows per warp reuse each activation load when several activation rows are multiplied.
pub fn fast_rows_per_warp(tile: usize) -> usize {
    // One row for decode: two rows per warp measured 7 % slower there; two for the 16-row tile,
    // whose 4 × 16 accumulators cost occupancy (bench/NOTES.md).
    match tile {
        1 => 1,
        16 => 2,
        t => t.min(4),
    }
}

/// Weight types with tensor-core matrix-vector kernels (`matmul_<suffix>_mma_m<MT>n<NT>`, rows
/// of a multiple of 256 weights, 16-byte-aligned activations).
pub const MMA_SUFFIXES: &[(gguf::GgmlType, &str)] = &[
    (gguf::GgmlType::Q4_K, "q4_k"),
    (gguf::GgmlType::Q6_K, "q6_k"),
    (gguf::GgmlType::Q8_0, "q8_0"),
];

/// Whether products of rows of `k` weights of `dtype`, over activation rows that start at element
/// `offset` and lie `stride` elements apart, fit the `_mma_` kernels (and the fast vector
/// kernels): Q4_K, Q6_K or Q8_0 rows of whole 256-weight groups, 16-byte-aligned activations.
pub fn mma_rows(dtype: gguf::GgmlType, k: usize, offset: usize, stride: i64) -> bool {
    MMA_SUFFIXES.iter().any(|(t, _)| *t == dtype)
        && k.is_multiple_of(256)
        && offset.is_multiple_of(4)
        && stride % 4 == 0
}

/// Weight types whose `_mma_` and q8 products read a copy of the weights repacked at load, with
/// the kernel suffix (`matmul_<suffix>_mma_*`, `matmul_<suffix>_q8x_mma_*`): Q6_K in
/// `q6_k_repack`'s layout (224-byte groups whose lane words load in 16-, 8- and 4-byte words and
/// whose scales load in one 16-byte word,
/// where the 210-byte groups as stored are 2-byte aligned every other group), Q8_0 in
/// `q8_0_repack`'s (a lane's 8 quant bytes of a block in one load, where a 34-byte block's take
/// two or three). Same values, same bits.
pub const MMA_REPACKED: &[(gguf::GgmlType, &str)] = &[
    (gguf::GgmlType::Q6_K, "q6_kr"),
    (gguf::GgmlType::Q8_0, "q8_0r"),
];

/// Most activation rows one block of the `_mma_` kernels takes with the tiles that keep a row's
/// bits whatever its batch (`NT` = 2 tiles of 8); longer products (prefill) run ⌈m / 8·NT⌉
/// blocks per weight tile with the type's [`mma_prefill_tile`].
pub const MMA_MAX_ROWS: usize = 16;

/// The `_mma_` kernel's tile shape for `m` activation rows: `(MT, NT)`, 16-row weight tiles per
/// warp and 8-row activation tiles per block. Up to 8 rows, one weight tile per warp (at most 128
/// registers, two blocks per SM): on the H200 0.31 / 0.28 / 0.33 of copy at one row for the 31B's
/// Q4_K gate/up, Q4_K down and Q6_K down, against 0.25 / 0.23 / 0.26 with two tiles. At 9–16
/// rows two weight tiles per warp share each activation load ((2, 2), one block per SM): forced
/// against the earlier rule ((1, 2) up to 14 rows and for output heads) on one H200 (twentieth
/// session, `SPECULA_MMA_VERIFY_TILE=2x2`, alternated twice), the 31B's 9-, 12- and 14-row verifies
/// took 21.1 → 19.7, 22.2 → 20.3 and 23.2 → 20.9 ms, 16 rows unchanged (21.3 ms). Q8_0 weights
/// keep (1, 2) (the DFlash block's products measured so when they ran on these kernels). Tiles
/// up to (2, 2) never change a row's arithmetic, only which rows share a warp. More than 16
/// rows: [`mma_prefill_tile`].
pub fn mma_tile(m: usize, dtype: gguf::GgmlType) -> (usize, usize) {
    match (m, dtype) {
        (0..=8, _) => (1, 1),
        (_, gguf::GgmlType::Q8_0) => (1, 2),
        _ => (2, 2),
    }
}

/// Programmatic-launch modes of the tensor-core product kernels' last argument (`PDL_*` and
/// `pdl_enter` in common.cuh): as every other kernel (launch the next, then wait), a chain's lead
/// (wait, then launch the next), a chain's sibling (launch the next, wait at exit).
pub const PDL_PLAIN: i32 = 0;
/// See [`PDL_PLAIN`].
pub const PDL_LEAD: i32 = 1;
/// See [`PDL_PLAIN`].
pub const PDL_SIBLING: i32 = 2;
/// A lead that waits inside its body, after its setup and first Q4_K weight loads
/// (`pdl_late`; only the persistent `_p` / `_p1` kernels, whose walk makes that wait, and the
/// wgmma verify kernels, whose `wg_body` makes it).
pub const PDL_LEAD_LATE: i32 = 3;

/// Most activation rows of a prepared batch that also gets int8 limbs (`LIMB_MAX_ROWS` in
/// `matvec_mma.cu`), and so of a Q4_K product on the exact-integer `matmul_q4_k_limb_n*` kernels.
pub const LIMB_MAX_ROWS: usize = 16;

/// Bytes after the limbs' layout that the `matmul_q4_k_limb_n*` kernels' reads of rows past the
/// batch may reach (`LIMB_PAD_BYTES` in `matvec_mma.cu`; those columns are never written): up to
/// 2·[`limb_tile`]`(m)` − m ≤ 7 rows of 4 limbs × 256 bytes past the last group.
pub const LIMB_PAD_BYTES: usize = 16384;

/// Rows (a warp each) per block of `top_k_f32` (`TOP_K_WARPS` in ops.cu).
pub const TOP_K_WARPS: usize = 4;

/// Tokens (a warp each) per block of `moe_weights_f32` (`MOE_WEIGHTS_WARPS` in ops.cu).
pub const MOE_WEIGHTS_WARPS: usize = 4;

/// Threads of the block that takes a row of `softmax_f32`, and of `moe_route_f32`, which must
/// round as it does (the block's reductions sum in an order set by its size).
pub const SOFTMAX_THREADS: u32 = 256;

/// Activation tiles (two rows of four limbs each) of the `matmul_q4_k_limb_n*` kernels.
pub const LIMB_TILES: &[usize] = &[1, 2, 4, 8];

/// The `matmul_q4_k_limb_n<NT>` kernel for `m` rows (1 ≤ m ≤ [`LIMB_MAX_ROWS`]): the fewest of
/// [`LIMB_TILES`] activation tiles of two rows that hold them all, so one block column covers
/// the batch. No
/// tile changes a row's bits (the sums are exact integers).
pub fn limb_tile(m: usize) -> usize {
    let nt = m.div_ceil(2).next_power_of_two();
    nt.min(LIMB_MAX_ROWS / 2)
}

/// The most (token, slot) pairs an expert-grouped product (`matmul_id_tcg_<type>`,
/// `matmul_id_g_<type>`) takes in one launch (`MOE_GROUP_MAX` in `matmul.cu`, which sizes the
/// kernels' pair lists); at most one pair a thread of their blocks.
pub const MOE_GROUP_MAX_PAIRS: usize = 256;

/// Output rows a warp of the Q8_0 and Q5_0 many-row scalar products (`matmul_<type>_quad`,
/// `matmul_id_g_<type>`) takes (`QUAD_WARP_ROWS` in `matmul.cu`); their blocks have four warps.
pub const QUAD_WARP_ROWS: usize = 4;

/// The activation-row tile of a vector product of `m` activation rows: the smallest tile of
/// [`MATMUL_ROW_TILES`] that holds `m`, at most `cap`.
pub fn row_tile(m: usize, cap: usize) -> usize {
    MATMUL_ROW_TILES
        .iter()
        .copied()
        .filter(|&t| t <= cap)
        .find(|&t| t >= m)
        .unwrap_or(cap)
}

/// The activation-row tile of a warp-per-row scalar product (`matmul_<type>_r<tile>`) of `n`
/// output rows and `m` activation rows: [`row_tile`], halved while the launch's blocks (four output rows each, a tile of activation
/// rows) would not fill two blocks a multiprocessor. Each warp reads every activation row of its
/// tile, so a small product (the 26B-A4B's 128-row router) in large tiles runs in a few blocks
/// that each walk many rows: 165 µs a launch for 16 tokens in tiles of 8, under ncu, against 11
/// for one token. A row's bits do not depend on the tile.
pub fn scalar_row_tile(n: usize, m: usize, cap: usize, sms: usize) -> usize {
    let mut tile = row_tile(m, cap);
    while tile > 1 && n.div_ceil(4) * m.div_ceil(tile) < 2 * sms {
        tile /= 2;
    }
    tile
}

/// Units (a row tile of a split plane) one block of the persistent `_p` kernels walks at most
/// (`PERSIST_ITERS` in `matvec_mma.cu`, which sizes their shared memory).
pub const PERSIST_ITERS: usize = 6;

/// Activation tiles of the persistent limb kernels `matmul_q4_k_limb_n<NT>_p` (the one-tile
/// `_mma_` kernels have theirs as `matmul_<type>_mma_m1n1[_x]_p`).
pub const PERSIST_LIMB_TILES: &[usize] = &[1, 2];

/// Whether persistent products of one activation row of `dtype` weights have their own `_p1`
/// kernels (`matmul_<type>_mma_m1n1[_x]_p1`), which give that row the same bits with less work:
/// Q6_K and Q8_0 keep only its accumulators (half the scale FMAs); Q4_K takes its hi and lo
/// activation halves as two columns of one mma under `Q4K_HL` (half the mma) and is its `_p`
/// kernel again without it.
pub fn persist_one_row(dtype: gguf::GgmlType) -> bool {
    matches!(
        dtype,
        gguf::GgmlType::Q4_K | gguf::GgmlType::Q6_K | gguf::GgmlType::Q8_0
    )
}

/// Weight types whose 9–16-row products have persistent (2, 2) kernels
/// (`matmul_<type>_mma_m2n2[_x]_p`, unless `SPECULA_MMA_PERSIST_M2=0`; Q6_K also repacked).
pub fn persist_two_tiles(dtype: gguf::GgmlType) -> bool {
    matches!(dtype, gguf::GgmlType::Q4_K | gguf::GgmlType::Q6_K)
}

/// The most units a block of a persistent (2, 2) kernel takes (`PERSIST_ITERS_M2` in
/// `matvec_mma.cu`, which sizes its shared memory).
pub const PERSIST_ITERS_M2: usize = 3;

/// Blocks of a persistent `_m2n2_p` launch over `units` units: one per multiprocessor (the
/// kernels' occupancy), fewer when there are fewer units, more when a block would take over
/// [`PERSIST_ITERS_M2`].
pub fn persist_blocks_m2(units: usize, sms: usize) -> usize {
    units.min(sms.max(1)).max(units.div_ceil(PERSIST_ITERS_M2))
}

/// Blocks of a persistent `_p` launch over `units` units on a device of `sms` multiprocessors:
/// two per multiprocessor (the kernels' occupancy at 128 registers), fewer when there are fewer
/// units, more when a block would take over [`PERSIST_ITERS`].
pub fn persist_blocks(units: usize, sms: usize) -> usize {
    units.min(2 * sms.max(1)).max(units.div_ceil(PERSIST_ITERS))
}

/// Extra `(MT, NT)` tiles of the `_mma_` kernels for products of more than 16 activation rows
/// (prefill chunks): more activation tiles per warp unpack each weight fragment once for more
/// rows. Their Q4_K kernels multiply sc·q in f16 with one accumulator chain (`q4k_group_tiles`),
/// another arithmetic than the decode tiles' (`q4k_group_rows`): prefill rows are never compared
/// with decode rows.
pub const MMA_PREFILL_TILES: &[(usize, usize)] = &[(1, 4), (2, 4)];

/// The `(MT, NT)` tile of `_mma_` products of more than 16 activation rows (prefill chunks) of
/// `dtype` weights. Measured on an H200 at 512 rows (`bench-gpu`, bench/NOTES.md): the Q4_K
/// 5376 × 21504 product 1145 µs with (2, 2), 1053 with (2, 4), 1546 with (1, 4); the Q6_K
/// 21504 × 5376 one 2605, 2456 and 1873 µs.
pub fn mma_prefill_tile(dtype: gguf::GgmlType) -> (usize, usize) {
    match dtype {
        gguf::GgmlType::Q4_K => (2, 4),
        gguf::GgmlType::Q6_K => (1, 4),
        _ => (2, 2),
    }
}

/// Activation rows from which a product of quantized or f16 weights takes the GEMM route when
/// cuBLAS is there (`mma_plan::gemm_input`): its weights dequantized to f16 once per call and one
/// cuBLAS f16 GEMM with f32 accumulation, instead of the `_mma_` kernels that unpack every weight
/// again for each 32 activation rows. Prefill chunks (512 rows by default) take it; decode and
/// verify batches (at most 16 rows) never do, so speculative decoding keeps its bit-exact
/// kernels.
pub const GEMM_MIN_ROWS: usize = 64;

/// Whether the GEMM route takes products of `ty` weights: every block-quantized type with CUDA
/// kernels, and f16 (f32 and bf16 weights keep the f32-accurate kernels: rounding them to f16
/// would lose precision or range).
pub fn gemm_weight_type(ty: gguf::GgmlType) -> bool {
    !matches!(ty, gguf::GgmlType::F32 | gguf::GgmlType::BF16)
        && WEIGHT_SUFFIXES.iter().any(|(t, _)| *t == ty)
}

/// Bytes of the GEMM route's dequantized-weight scratch: a product whose f16 weights would not
/// fit runs as several GEMMs over row tiles of at most this many bytes (a 262,144-row output
/// head of 5,376 would take 2.8 GB at once).
pub const GEMM_WEIGHT_SCRATCH_BYTES: usize = 256 << 20;

/// Warps of an `_mma_` block that split one row's 256-weight groups (the rest take further
/// weight rows): 8, or fewer for rows of fewer than 8 groups, so no warp idles; always a power
/// of two (the persistent walks mask by it, `PersistWalk::slice`). A function of `k`
/// only, so up to 16 rows a row's summation order never depends on the batch (prefill products
/// use 1 instead, `mma_plan::mma_input`). Capping it at 4 made the 31B's decode 6 % slower on an
/// H200 (bench/NOTES.md).
pub fn mma_k_warps(k: usize) -> usize {
    let groups = k / 256;
    [8, 4, 2].into_iter().find(|&w| groups >= w).unwrap_or(1)
}

/// Blocks that split one row's 256-weight groups in the `_mma_` kernels (each block's warps split
/// its share again, see [`mma_k_warps`]): long rows (the 31B's 21,504-wide FFN down and 8,192-wide
/// attention output) would otherwise run in 336 blocks, 1.27 waves of an H200's 264 block slots,
/// the second wave a quarter full. A function of `k` only, like the summation order it sets.
pub fn mma_k_splits(k: usize) -> usize {
    match k / 256 {
        g if g >= 64 => 4,
        g if g >= 32 => 2,
        _ => 1,
    }
}

/// Device memory a repacked weight copy (for the q8 products, and the `_mma_` products of
/// [`MMA_REPACKED`] types) must leave free (2 GiB: KV caches, scratch and activations are
/// allocated around the weights).
pub const REPACK_HEADROOM_BYTES: usize = 2 << 30;

/// Whether a repacked weight copy of `bytes` fits in `free` bytes of device memory with
/// [`REPACK_HEADROOM_BYTES`] to spare.
pub fn repack_fits(bytes: usize, free: usize) -> bool {
    free.checked_sub(REPACK_HEADROOM_BYTES)
        .is_some_and(|left| bytes <= left)
}

/// Weight tiles per warp and split-K blocks `(mt, splits)` of a drafter's q8 product
/// (`matmul_<type>_q8x_mma_*`) of `n` rows of `k` weights and `m` activation rows on
/// `sm_count` multiprocessors (two blocks each). Measured per product of the DFlash block on an
/// H200 (ncu, every (mt, splits) up to (2, 4); bench/NOTES.md): two weight tiles from 4,096 rows
/// on (each activation word serves 32 rows; the 262,144-row Q6_K head too, 924 → 884 µs,
/// despite 28 spilled bytes), one tile below; rows of at least 32 groups split k over one block
/// per 16 groups (the 8,192-wide o projection 2, the 10,752-wide down 3: 43.1 → 41.2 µs); a
/// product too small to fill half the block slots (the 1,024-row k and v, 64 blocks) over one
/// per 8 groups, at most 3 (12.7 → 11.3 µs); the rest not at all (q, gate and up lose 2–4 µs
/// to any split). A product whose partial planes would pass 2^20 floats does not split. The
/// choice depends on `m` too (the block count and that limit), so unlike the exact products' a
/// q8 row's bits may differ between batch sizes (drafts need not be exact; for the DFlash
/// shapes every batch of 1–16 rows takes the same choice).
pub fn q8_tiling(k: usize, n: usize, m: usize, sm_count: usize) -> (usize, usize) {
    let groups = k / 256;
    let kw = mma_k_warps(k);
    let mt = if n >= 4096 { 2 } else { 1 };
    let m_tiles = m.div_ceil(if m <= 8 { 8 } else { 16 });
    let blocks = n.div_ceil(16 * mt * (8 / kw)) * m_tiles;
    let splits = if groups >= 32 {
        groups.div_ceil(16).min(4)
    } else if blocks <= sm_count {
        groups.div_ceil(8).clamp(1, 3)
    } else {
        1
    };
    (mt, if m * n * splits > 1 << 20 { 1 } else { splits })
}

/// Whether an `_mma_` product of `n` rows of `k` weights reads activations prepared once by
/// `mmv_prepare_x` (an extra launch, ~3 µs) rather than splitting them in every warp that reads
/// them: when its n/16 row tiles split more than 2^21 activations between them. The 31B's
/// projections (n/16 · k ≥ 2.7 M) and the drafters' 262,144-row head prepare; the assistant's
/// 1024/8192-wide layers (0.5 M) split in place. Both give identical bits, so the choice is free
/// (except for Q4_K products of up to 16 rows with the limb kernels on, whose prepared form takes
/// them; the rule depends on k and n only, so every batch of a product still takes one route).
pub fn mma_prepares(k: usize, n: usize) -> bool {
    n / 16 * k >= 1 << 21
}

/// Elements per block of `argmax_chunks_f32` (`ARGMAX_CHUNK` in `ops.cu`): rows longer than this
/// (a vocabulary of logits) are spread over ⌈n / chunk⌉ blocks and a second launch picks the
/// best chunk, where one block per row read a 262,144-wide row in ~100 µs.
pub const ARGMAX_CHUNK: usize = 4096;

/// Threads per block of `argmax_chunks_f32` and `argmax_pick_f32` (`ARGMAX_THREADS` in `ops.cu`,
/// which sizes their shared memory).
pub const ARGMAX_THREADS: u32 = 256;

/// Threads per block of `rms_norm_cluster_f32` (`RN_CLUSTER_THREADS` in `ops.cu`).
pub const RN_CLUSTER_THREADS: u32 = 128;

/// Batches of at most this many rows take `rms_norm_cluster_f32` where it applies (sm_90): one
/// block per row leaves all but a few multiprocessors idle there. (Up to 16 rows: the decode
/// step 1.6 % faster on an H200 but a 16-token verify 1 % and the DFlash block 1.5 % slower.)
pub const RN_CLUSTER_MAX_ROWS: usize = 4;

/// Launches `rms_norm_jobs_f32` takes as one (`RN_MAX_JOBS` in `ops.cu`), and the 8-byte
/// argument slots of each (`RN_JOB_SLOTS`: `rms_norm_f32`'s arguments, its `Layout4` nine).
pub const RN_MAX_JOBS: usize = 3;
/// See [`RN_MAX_JOBS`].
pub const RN_JOB_SLOTS: usize = 37;

/// Head norms of batches up to this many tokens (decode steps, verify batches) run as one
/// `rms_norm_jobs_f32` launch; prefill chunks keep a launch each: every block decodes its job's
/// slots (~190 instructions), which across a 512-token chunk's 32K blocks would cost more than
/// the two launches saved. (Prefill was 2.5 % slower in one run with every batch grouped,
/// unalternated, so the figure is rough.)
pub const RN_JOBS_MAX_TOKENS: usize = 16;

/// Kernels that do not depend on a weight type.
pub const OTHER_KERNELS: &[&str] = &[
    "binary_f32",
    "unary_f32",
    "glu_f32",
    "copy_f32",
    "concat_f32",
    "rms_norm_f32",
    "rms_norm_cluster_f32",
    "rms_norm_jobs_f32",
    "rope_f32",
    "softmax_f32",
    "write_rows",
    "argmax_f32",
    "argmax_chunks_f32",
    "argmax_pick_f32",
    "top_k_f32",
    "moe_weights_f32",
    "moe_route_f32",
    "attention_f32",
    "attention_f16_e8",
    "attention_f16_e16",
    "attention_f16_e8_g2",
    "attention_f16_e16_g2",
    "attention_mq_d256",
    "attention_mq_d512",
    "attention_tc_d128",
    "attention_tc_d256",
    "attention_tc_d512",
    "attention_tc_d128_w",
    "attention_tc_d256_w",
    "attention_tc_d512_w",
    "attention_combine_f32",
    "mmv_prepare_x",
    "mmv_sum_splits",
    "q8_quantize_x",
    "matmul_q8_0_q8x_warp",
    "matmul_q8_0_q8x_mma_m1n1",
    "matmul_q8_0_q8x_mma_m1n2",
    "matmul_q8_0_q8x_mma_m2n1",
    "matmul_q8_0_q8x_mma_m2n2",
    "q8_0_repack",
    "matmul_q8_0r_q8x_mma_m1n1",
    "matmul_q8_0r_q8x_mma_m1n2",
    "matmul_q8_0r_q8x_mma_m2n1",
    "matmul_q8_0r_q8x_mma_m2n2",
    "matmul_q6_k_q8x_warp",
    "matmul_q6_k_q8x_mma_m1n1",
    "matmul_q6_k_q8x_mma_m1n2",
    "matmul_q6_k_q8x_mma_m2n1",
    "matmul_q6_k_q8x_mma_m2n2",
    "q6_k_repack",
    "matmul_q6_kr_q8x_mma_m1n1",
    "matmul_q6_kr_q8x_mma_m1n2",
    "matmul_q6_kr_q8x_mma_m2n1",
    "matmul_q6_kr_q8x_mma_m2n2",
    "rows_to_f16",
    "gemm_rescale",
    "read_runs_u128",
    "moe_sum_f32",
    "q4k_wg_image",
    "matmul_q4_k_mma_wg",
    "q6k_wg_image",
    "matmul_q6_kr_mma_wg",
];

/// Every kernel entry point in the module.
pub fn all_kernel_names() -> Vec<String> {
    let mut names: Vec<String> = OTHER_KERNELS.iter().map(|s| s.to_string()).collect();
    for (ty, suffix) in WEIGHT_SUFFIXES {
        for family in ["matmul_id", "get_rows", "matmul_tc"] {
            names.push(format!("{family}_{suffix}"));
        }
        if gemm_weight_type(*ty) {
            names.push(format!("dequant_f16_{suffix}"));
        }
        for rows in MATMUL_ROW_TILES {
            names.push(format!("matmul_{suffix}_r{rows}"));
        }
    }
    // Expert-indexed products on tensor cores, weights as stored, one row a pair or grouped by
    // expert.
    for (_, suffix) in MMA_SUFFIXES {
        names.push(format!("matmul_id_tc_{suffix}"));
        names.push(format!("matmul_id_tcg_{suffix}"));
    }
    // Many-row and expert-grouped scalar products of the types `quad_sums` takes.
    for suffix in ["q8_0", "q5_0"] {
        names.push(format!("matmul_{suffix}_quad"));
        names.push(format!("matmul_id_g_{suffix}"));
    }
    for (ty, suffix) in MMA_SUFFIXES.iter().chain(MMA_REPACKED) {
        for &(mt, nt) in [(1, 1), (1, 2), (2, 1), (2, 2)]
            .iter()
            .chain(MMA_PREFILL_TILES)
        {
            names.push(format!("matmul_{suffix}_mma_m{mt}n{nt}"));
            names.push(format!("matmul_{suffix}_mma_m{mt}n{nt}_x"));
        }
        names.push(format!("matmul_{suffix}_mma_m1n1_p"));
        names.push(format!("matmul_{suffix}_mma_m1n1_x_p"));
        if persist_two_tiles(*ty) {
            names.push(format!("matmul_{suffix}_mma_m2n2_p"));
            names.push(format!("matmul_{suffix}_mma_m2n2_x_p"));
        }
        if persist_one_row(*ty) {
            names.push(format!("matmul_{suffix}_mma_m1n1_p1"));
            names.push(format!("matmul_{suffix}_mma_m1n1_x_p1"));
        }
    }
    for nt in LIMB_TILES {
        names.push(format!("matmul_q4_k_limb_n{nt}"));
    }
    for nt in PERSIST_LIMB_TILES {
        names.push(format!("matmul_q4_k_limb_n{nt}_p"));
    }
    for rows in MATMUL_ROW_TILES {
        names.push(format!("matmul_q4_k_fast_r{rows}"));
        names.push(format!("matmul_q6_k_fast_r{rows}"));
        names.push(format!("matmul_q8_0_fast_r{rows}"));
    }
    names
}

#[cfg(test)]
mod tests {

    /// A repacked weight copy is made only where 2 GiB stay free after it.
    #[test]
    fn repacked_copies_leave_the_headroom_free() {
        let gib = 1usize << 30;
        assert!(repack_fits(gib, 3 * gib));
        assert!(repack_fits(gib + 1, 3 * gib + 1));
        assert!(!repack_fits(gib + 1, 3 * gib));
        // Less free than the headroom itself (or no memory figure: 0).
        assert!(!repack_fits(1, gib));
        assert!(!repack_fits(0, 0));
    }

    /// The DFlash drafter's block products (16 rows, 132 multiprocessors) take the tiling
    /// measured best for each: q, gate and up two tiles unsplit; o and down two tiles over 2 and
    /// 3 blocks; k and v (1,024 rows) one tile over 3 blocks; the Q6_K head two tiles unsplit
    /// (its planes would be 17 MB per split). The fc product (126 groups) splits over 4.
    #[test]
    fn q8_tiling_takes_the_measured_choices() {
        let t = |k, n| q8_tiling(k, n, 16, 132);
        assert_eq!(t(5376, 8192), (2, 1));
        assert_eq!(t(5376, 10752), (2, 1));
        assert_eq!(t(8192, 5376), (2, 2));
        assert_eq!(t(10752, 5376), (2, 3));
        assert_eq!(t(5376, 1024), (1, 3));
        assert_eq!(t(5376, 262_144), (2, 1));
        assert_eq!(t(32256, 5376), (2, 4));
        // One row: the same choices (the plane limit is far).
        assert_eq!(q8_tiling(5376, 1024, 1, 132), (1, 3));
        // Short rows split no further than their groups allow.
        assert_eq!(q8_tiling(512, 64, 16, 132), (1, 1));
    }
    use super::*;

    /// Up to 8 rows one tile of each; 9–16 rows two activation tiles and two weight tiles per
    /// warp, one weight tile for Q8_0 weights.
    #[test]
    fn decode_and_verify_tiles() {
        use gguf::GgmlType as T;
        assert_eq!(mma_tile(1, T::Q8_0), (1, 1));
        assert_eq!(mma_tile(8, T::Q4_K), (1, 1));
        assert_eq!(mma_tile(9, T::Q4_K), (2, 2));
        assert_eq!(mma_tile(14, T::Q6_K), (2, 2));
        assert_eq!(mma_tile(16, T::Q6_K), (2, 2));
        assert_eq!(mma_tile(15, T::Q4_K), (2, 2));
        assert_eq!(mma_tile(9, T::Q8_0), (1, 2));
        assert_eq!(mma_tile(16, T::Q8_0), (1, 2));
    }

    /// Every knob has variants to compile, each one it accepts, and `source_with` puts their
    /// defines in front of the kernels' own.
    #[test]
    fn knob_variants_are_accepted_and_defined() {
        for knob in KNOB_DEFINES {
            assert!(!knob.variants.is_empty(), "{}: no variant", knob.var);
            for &n in knob.variants {
                assert!((knob.accepts)(n), "{}: variant {n} not accepted", knob.var);
                let src = source_with(&[(knob, n)]);
                assert!(src.starts_with(&format!("#define {} {n}\n", knob.name)));
                assert!(
                    src.contains(&format!("#ifndef {}", knob.name)),
                    "{}: no default",
                    knob.name
                );
            }
        }
    }

    /// An override replaces the environment's value of its knob and is put in front like any
    /// knob's define, and a measurement mode set to its wrong-output value says so; an unknown
    /// variable or refused value is an error naming it.
    #[test]
    fn knob_overrides_are_checked_and_defined() {
        let spread = knob_override("SPECULA_MOE_SPREAD_IDS", 1).unwrap();
        let src = source_with(&knob_settings(&[spread]));
        // The defines in front of the kernels (then their own `#ifndef` defaults).
        let front: Vec<&str> = src
            .lines()
            .take_while(|l| l.starts_with("#define "))
            .collect();
        let spread_lines: Vec<&&str> = front
            .iter()
            .filter(|l| l.starts_with("#define MOE_SPREAD_IDS "))
            .collect();
        assert_eq!(spread_lines, [&"#define MOE_SPREAD_IDS 1"], "{front:?}");
        // A measurement mode says so; a knob that keeps outputs right, or the mode off, does not.
        assert_eq!(
            measurement_warnings(&knob_settings(&[spread])),
            ["SPECULA_MOE_SPREAD_IDS=1: MoE routers pick pseudo-random experts; every MoE output is wrong (a measurement mode)"]
        );
        let off = knob_override("SPECULA_MOE_SPREAD_IDS", 0).unwrap();
        let batch = knob_override("SPECULA_MM_BATCH", 4).unwrap();
        assert!(measurement_warnings(&[off, batch]).is_empty());
        let err = knob_override("SPECULA_NO_SUCH_KNOB", 1).unwrap_err();
        assert!(err.contains("SPECULA_NO_SUCH_KNOB"), "{err}");
        let err = knob_override("SPECULA_MOE_SPREAD_IDS", 2).unwrap_err();
        assert!(err.contains("does not take 2"), "{err}");
    }

    /// The persistent walks find a warp's slice with a mask (`PersistWalk::slice`, WALK_FAST):
    /// the k-warps of every row length are a power of two dividing a block's 8 warps.
    #[test]
    fn k_warps_divide_a_block() {
        for k in (256..=65_536).step_by(256) {
            let kw = mma_k_warps(k);
            assert!(kw.is_power_of_two() && 8 % kw == 0, "k {k}: {kw} warps");
        }
    }

    /// One block column of limb tiles covers every batch up to LIMB_MAX_ROWS, each tile one the
    /// module defines; the kernels' row limit is the host's.
    #[test]
    fn limb_tiles_cover_every_batch() {
        for m in 1..=LIMB_MAX_ROWS {
            let nt = limb_tile(m);
            assert!(LIMB_TILES.contains(&nt), "m {m}: tile {nt}");
            assert!(
                2 * nt >= m && (nt == 1 || 2 * (nt / 2) < m),
                "m {m}: tile {nt}"
            );
        }
        assert!(MATVEC_MMA.contains(&format!("#define LIMB_MAX_ROWS {LIMB_MAX_ROWS}\n")));
        assert!(MATVEC_MMA.contains(&format!("#define LIMB_PAD_BYTES {LIMB_PAD_BYTES}\n")));
        // Rows read past a batch: the tiles' 2·NT less m, 4 limb rows of 256 bytes each.
        let past = (1..=LIMB_MAX_ROWS).map(|m| 2 * limb_tile(m) - m).max();
        assert!(past.is_some_and(|p| p * 4 * 256 <= LIMB_PAD_BYTES));
    }

    /// The host sizes `top_k_f32`'s and `moe_weights_f32`'s blocks by the rows the kernels
    /// give each.
    #[test]
    fn warps_per_block_are_the_kernels() {
        assert!(OPS.contains(&format!("#define TOP_K_WARPS {TOP_K_WARPS}\n")));
        assert!(OPS.contains(&format!("#define MOE_WEIGHTS_WARPS {MOE_WEIGHTS_WARPS}\n")));
    }

    /// Small products of many rows take small tiles, so their launch fills the card; decode
    /// steps and large products keep the tile that holds their rows.
    #[test]
    fn scalar_tiles_fill_the_card() {
        // The 26B-A4B's router (128 rows) on an H200: one token, a 16-token verify.
        assert_eq!(scalar_row_tile(128, 1, 8, 132), 1);
        assert_eq!(scalar_row_tile(128, 16, 8, 132), 1);
        // Its FFN downs (2,816 rows): tiles of 8 give 1,408 blocks.
        assert_eq!(scalar_row_tile(2816, 16, 8, 132), 8);
        assert_eq!(scalar_row_tile(2816, 5, 8, 132), 8);
        assert_eq!(scalar_row_tile(2816, 3, 16, 132), 4);
        // 1,024 rows and 9 tokens: tiles of 16 would be 256 blocks, 8 give 512.
        assert_eq!(scalar_row_tile(1024, 9, 16, 132), 8);
        // The cap still holds.
        assert_eq!(scalar_row_tile(4096, 16, 2, 132), 2);
    }

    /// The host's bound on an expert-grouped launch's pairs is the kernels' list size, and the
    /// quad kernels' grids cover the rows their warps take.
    #[test]
    fn expert_group_bound_is_the_kernels() {
        assert!(MATMUL.contains(&format!("#define MOE_GROUP_MAX {MOE_GROUP_MAX_PAIRS}\n")));
        assert!(MATMUL.contains(&format!("#define QUAD_WARP_ROWS {QUAD_WARP_ROWS}\n")));
    }

    /// A persistent launch gives every unit a block iteration and no block more than the
    /// kernels' shared memory holds; the iteration limit is the kernels'.
    #[test]
    fn persistent_blocks_cover_every_unit() {
        assert!(MATVEC_MMA.contains(&format!("#define PERSIST_ITERS {PERSIST_ITERS}\n")));
        assert!(MATVEC_MMA.contains(&format!("#define PERSIST_ITERS_M2 {PERSIST_ITERS_M2}\n")));
        for sms in [1, 78, 132] {
            for units in [1, 2, 263, 264, 1344, 16_384, 100_000] {
                let b = persist_blocks(units, sms);
                assert!(b >= 1 && b <= units, "{units} units, {sms} SMs: {b}");
                assert!(b * PERSIST_ITERS >= units, "{units} units, {sms} SMs: {b}");
                let b2 = persist_blocks_m2(units, sms);
                assert!(b2 >= 1 && b2 <= units, "{units} units, {sms} SMs: {b2}");
                assert!(
                    b2 * PERSIST_ITERS_M2 >= units,
                    "{units} units, {sms} SMs: {b2}"
                );
            }
        }
        assert_eq!(persist_blocks_m2(336, 132), 132);
        assert_eq!(persist_blocks_m2(672, 132), 224);
        assert_eq!(persist_blocks(1344, 132), 264);
        assert_eq!(persist_blocks(16_384, 132), 2731);
    }

    /// The host's argmax chunk and block size and the clustered norm's block size are the
    /// kernels' ones.
    #[test]
    fn argmax_chunk_matches_the_kernels() {
        assert!(OPS.contains(&format!("#define ARGMAX_CHUNK {ARGMAX_CHUNK}\n")));
        assert!(OPS.contains(&format!("#define ARGMAX_THREADS {ARGMAX_THREADS}\n")));
        assert!(OPS.contains(&format!(
            "#define RN_CLUSTER_THREADS {RN_CLUSTER_THREADS}\n"
        )));
        assert!(OPS.contains(&format!("#define RN_MAX_JOBS {RN_MAX_JOBS}\n")));
        assert!(OPS.contains(&format!("#define RN_JOB_SLOTS {RN_JOB_SLOTS}\n")));
    }

    /// Kernels launch with programmatic dependent launch on sm_90+, so each must order itself
    /// after its predecessor: `pdl_entry()` (wait before any memory access) as the first
    /// statement of every entry point's body, macro-generated ones included. The tensor-core
    /// products take their mode as their last argument instead: their body is exactly
    /// `pdl_enter(pdl)`, one call and `pdl_leave(pdl)` (a sibling's wait at exit, which the
    /// backend's product chains rely on, so nothing may return before it), and the modes match
    /// the host's [`PDL_PLAIN`], [`PDL_LEAD`], [`PDL_SIBLING`] and [`PDL_LEAD_LATE`].
    #[test]
    fn every_kernel_orders_itself_after_its_predecessor() {
        let src = full_source();
        for (name, value) in [
            ("PDL_PLAIN", PDL_PLAIN),
            ("PDL_LEAD", PDL_LEAD),
            ("PDL_SIBLING", PDL_SIBLING),
            ("PDL_LEAD_LATE", PDL_LEAD_LATE),
        ] {
            assert!(src.contains(&format!("#define {name} {value}\n")), "{name}");
        }
        let mut entries = 0;
        let mut moded = 0;
        for (at, _) in src.match_indices("extern \"C\" __global__") {
            let body = at + src[at..].find('{').expect("a kernel body");
            let trim = |s: &str| {
                s.trim_matches(|c: char| c.is_whitespace() || c == '\\')
                    .to_string()
            };
            let first = trim(src[body + 1..].split(';').next().unwrap_or(""));
            let head = &src[at..body];
            if first == "pdl_enter(pdl)" {
                assert!(
                    trim(head).ends_with("int pdl)"),
                    "{head} takes no trailing pdl argument"
                );
                let mut depth = 0;
                let end = src[body..]
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(i, _)| body + i)
                    .expect("a closed kernel body");
                let statements: Vec<String> = src[body + 1..end]
                    .split(';')
                    .map(trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                assert!(
                    statements.len() == 3
                        && statements[2] == "pdl_leave(pdl)"
                        && !statements[1].contains("return"),
                    "{head}: the body must be pdl_enter, one call, pdl_leave: {statements:?}"
                );
                moded += 1;
            } else {
                assert_eq!(
                    first, "pdl_entry()",
                    "{head} does not start with pdl_entry()"
                );
            }
            entries += 1;
        }
        // The `_mma_` one-shot and persistent kernel macros, and the two wgmma verify kernels.
        assert_eq!(moded, 4, "kernels with a PDL mode argument");
        // 28 definitions (most expand per weight type) behind the 160-odd entry points.
        assert!(entries >= 28, "found {entries} kernel definitions");
    }
}
