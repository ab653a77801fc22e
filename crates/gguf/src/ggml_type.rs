//! The ggml tensor types: ids, names, block sizes and bytes per block.
//!
//! The table follows ggml's `ggml.h` / `ggml-common.h` (ids 4, 5, 31–33 and 36–38 were removed
//! from ggml and are not valid in files).

use std::fmt;

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        /// A ggml tensor element type, as stored in a GGUF tensor info.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// Every known type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            /// The type with this id, or `None` for ids ggml does not define.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $( $id => Some(GgmlType::$variant), )*
                    _ => None,
                }
            }

            /// The numeric id stored in GGUF files.
            pub fn id(self) -> u32 {
                match self { $( GgmlType::$variant => $id, )* }
            }

            /// ggml's name for the type (`"Q4_K"`, `"F32"`).
            pub fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => $name, )* }
            }

            /// Number of elements in one block (1 for plain types).
            pub fn block_elems(self) -> u64 {
                match self { $( GgmlType::$variant => $block, )* }
            }

            /// Number of bytes one block occupies.
            pub fn block_bytes(self) -> u64 {
                match self { $( GgmlType::$variant => $bytes, )* }
            }

            /// The type with this ggml name (case-sensitive, as [`GgmlType::name`] prints it).
            pub fn from_name(name: &str) -> Option<GgmlType> {
                match name {
                    $( $name => Some(GgmlType::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

ggml_types! {
    /// 32-bit IEEE float.
    F32 = 0, "F32", 1, 4;
    /// 16-bit IEEE float.
    F16 = 1, "F16", 1, 2;
    /// 4-bit, 32-element blocks: `d: f16`, 16 bytes of nibbles.
    Q4_0 = 2, "Q4_0", 32, 18;
    /// 4-bit with minimum: `d: f16`, `m: f16`, 16 bytes of nibbles.
    Q4_1 = 3, "Q4_1", 32, 20;
    /// 5-bit: `d: f16`, `qh: u32` high bits, 16 bytes of nibbles.
    Q5_0 = 6, "Q5_0", 32, 22;
    /// 5-bit with minimum: `d`, `m`, `qh`, nibbles.
    Q5_1 = 7, "Q5_1", 32, 24;
    /// 8-bit: `d: f16`, 32 signed bytes.
    Q8_0 = 8, "Q8_0", 32, 34;
    /// 8-bit with sum (an intermediate type of ggml's dot products).
    Q8_1 = 9, "Q8_1", 32, 36;
    /// 2-bit k-quant, 256-element super-blocks.
    Q2_K = 10, "Q2_K", 256, 84;
    /// 3-bit k-quant.
    Q3_K = 11, "Q3_K", 256, 110;
    /// 4-bit k-quant: `d`, `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    Q4_K = 12, "Q4_K", 256, 144;
    /// 5-bit k-quant.
    Q5_K = 13, "Q5_K", 256, 176;
    /// 6-bit k-quant: `ql[128]`, `qh[64]`, `scales: [i8; 16]`, then `d` last.
    Q6_K = 14, "Q6_K", 256, 210;
    /// 8-bit k-quant (an intermediate type of ggml's dot products).
    Q8_K = 15, "Q8_K", 256, 292;
    /// Importance-matrix 2-bit.
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    /// Importance-matrix 2-bit.
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    /// Importance-matrix 3-bit.
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    /// Importance-matrix 1-bit.
    IQ1_S = 19, "IQ1_S", 256, 50;
    /// Non-linear 4-bit.
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    /// Importance-matrix 3-bit.
    IQ3_S = 21, "IQ3_S", 256, 110;
    /// Importance-matrix 2-bit.
    IQ2_S = 22, "IQ2_S", 256, 82;
    /// Non-linear 4-bit, super-blocks.
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    /// 8-bit integer.
    I8 = 24, "I8", 1, 1;
    /// 16-bit integer.
    I16 = 25, "I16", 1, 2;
    /// 32-bit integer.
    I32 = 26, "I32", 1, 4;
    /// 64-bit integer.
    I64 = 27, "I64", 1, 8;
    /// 64-bit IEEE float.
    F64 = 28, "F64", 1, 8;
    /// Importance-matrix 1-bit.
    IQ1_M = 29, "IQ1_M", 256, 56;
    /// bfloat16.
    BF16 = 30, "BF16", 1, 2;
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34, "TQ1_0", 256, 54;
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35, "TQ2_0", 256, 66;
    /// Microscaling FP4 (e8m0 scale, 32 e2m1 values).
    MXFP4 = 39, "MXFP4", 32, 17;
    /// NVIDIA FP4 (four e4m3 scales, 64 e2m1 values).
    NVFP4 = 40, "NVFP4", 64, 36;
    /// 1-bit, 128-element blocks.
    Q1_0 = 41, "Q1_0", 128, 18;
}

impl GgmlType {
    /// Bytes taken by `n_elems` elements, or `None` when `n_elems` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n_elems: u64) -> Option<u64> {
        if !n_elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n_elems / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// Whether the type is a block-quantized type (block size above one element).
    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for &ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
            assert_eq!(GgmlType::from_name(ty.name()), Some(ty));
        }
        let mut ids: Vec<u32> = GgmlType::ALL.iter().map(|t| t.id()).collect();
        ids.dedup();
        assert_eq!(ids.len(), GgmlType::ALL.len());
    }

    #[test]
    fn removed_ids_are_unknown() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn block_sizes_match_ggml_layouts() {
        // Bytes per block recomputed from the block structs' fields.
        assert_eq!(GgmlType::Q4_0.block_bytes(), 2 + 16);
        assert_eq!(GgmlType::Q5_0.block_bytes(), 2 + 4 + 16);
        assert_eq!(GgmlType::Q2_K.block_bytes(), 16 + 64 + 2 + 2);
        assert_eq!(GgmlType::Q3_K.block_bytes(), 32 + 64 + 12 + 2);
        assert_eq!(GgmlType::Q4_K.block_bytes(), 2 + 2 + 12 + 128);
        assert_eq!(GgmlType::Q5_K.block_bytes(), 2 + 2 + 12 + 32 + 128);
        assert_eq!(GgmlType::Q6_K.block_bytes(), 128 + 64 + 16 + 2);
        assert_eq!(GgmlType::Q8_K.block_bytes(), 4 + 256 + 2 * 16);
        assert_eq!(
            GgmlType::Q4_K.bytes_for(5376 * 21504),
            Some(5376 * 21504 / 256 * 144)
        );
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }
}
