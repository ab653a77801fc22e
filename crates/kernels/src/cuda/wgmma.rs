//! Q4_K and Q6_K verify products of 9–16 rows on Hopper's warpgroup mma (`wgmma_verify.cu`):
//! which products take them, the image of their activations, and their launch.
//!
//! On an sm_90a device a product of 9–16 rows large enough to prepare its own activations
//! (`MmaInput::prepared`, `source::mma_prepares`) runs a wgmma kernel instead of the (2, 2) rows
//! kernels, with the same bits: Q4_K weights as stored (`matmul_q4_k_mma_wg`, under either
//! `Q4K_HL` order) and Q6_K weights in their repacked copy (`matmul_q6_kr_mma_wg`). In the 31B
//! that is the attention's q and output, gate, up, the FFN downs and the head. Smaller products
//! that reuse another's preparation (k and v after q) keep the rows kernels: at one 64-row block
//! an SM their grids fill half a card or less, and on wgmma a 16-token verify step was 1 %
//! slower (bench/NOTES.md, thirty-eighth session). Its B operand is an image of the batch's
//! prepared activations in the kernel's shared-memory layout (`q4k_wg_image`: 18 KiB a 256-weight
//! group; `q6k_wg_image`: 16 KiB), written once per input and layout in a launch sequence (gate
//! and up share one).

use super::*;

/// One weight type's wgmma verify kernel.
pub(super) struct Form {
    /// The weight type.
    dtype: DType,
    /// Whether the kernel reads the repacked copy (`source::MMA_REPACKED`) or the weights as
    /// stored.
    repacked: bool,
    /// The product kernel.
    kernel: &'static str,
    /// The kernel writing a prepared input's B image.
    image_kernel: &'static str,
    /// Bytes of one 256-weight group's B in the image (`WG_B_BYTES`, `WG6_B_BYTES`).
    image_group_bytes: usize,
    /// Dynamic shared memory of a block.
    smem_bytes: usize,
}

/// Bytes of a Q4_K group's B: 18 k16 chunks of 1 KiB (8 sub-blocks × 2 k halves, the mins' 2).
const Q4K_IMAGE_GROUP_BYTES: usize = 18 * 1024;
/// Bytes of a Q6_K group's B: 16 k16 chunks of 1 KiB (one a sub-block).
const Q6K_IMAGE_GROUP_BYTES: usize = 16 * 1024;

/// The kernels by weight type: 4 warpgroups × 2 stages of a group's B (Q4_K: and 64 rows'
/// 144-byte weight blocks; Q6_K's warps load their weights into registers).
const FORMS: [Form; 2] = [
    Form {
        dtype: DType::Q4_K,
        repacked: false,
        kernel: "matmul_q4_k_mma_wg",
        image_kernel: "q4k_wg_image",
        image_group_bytes: Q4K_IMAGE_GROUP_BYTES,
        smem_bytes: 4 * 2 * (Q4K_IMAGE_GROUP_BYTES + 64 * 144),
    },
    Form {
        dtype: DType::Q6_K,
        repacked: true,
        kernel: "matmul_q6_kr_mma_wg",
        image_kernel: "q6k_wg_image",
        image_group_bytes: Q6K_IMAGE_GROUP_BYTES,
        smem_bytes: 4 * 2 * Q6K_IMAGE_GROUP_BYTES,
    },
];

/// Threads of a block: four warpgroups (`WG_GROUPS`).
const BLOCK: u32 = 512;
/// Weight rows of a block (a warpgroup's 64).
const BLOCK_ROWS: usize = 64;

/// The wgmma form of `dtype` weights, if there is one.
fn form(dtype: DType) -> Option<&'static Form> {
    FORMS.iter().find(|f| f.dtype == dtype)
}

impl Form {
    /// Bytes of the B image of a k-wide input.
    fn image_bytes(&self, k: usize) -> usize {
        k / 256 * self.image_group_bytes
    }
}

/// Whether a product of `dtype` weights with activations `mi` could take a wgmma kernel in a
/// graph (the image buffer is sized for these): Q4_K or Q6_K products of 9–16 rows that prepare
/// their activations by the size rule (or the `set_mma_prepare` override), not on limbs. (An
/// m64n16k16 form for 2–8 rows was slower than the rows kernels, and so were k and v, which read
/// q's preparation: bench/NOTES.md, thirty-seventh and thirty-eighth sessions.)
fn candidate(dtype: DType, mi: &MmaInput) -> Option<&'static Form> {
    form(dtype).filter(|_| mi.prepared && !mi.limbs && (9..=source::MMA_MAX_ROWS).contains(&mi.m))
}

/// Raises the wgmma kernels' dynamic shared memory limits: false (the route stays off) where the
/// device allows less than they take.
pub(super) fn allow_shared_memory(
    funcs: &HashMap<String, CudaFunction>,
    max_smem: usize,
) -> Result<bool> {
    if FORMS.iter().any(|f| f.smem_bytes > max_smem) {
        return Ok(false);
    }
    for f in &FORMS {
        let func = funcs
            .get(f.kernel)
            .ok_or_else(|| backend_err(format!("kernel {} is not loaded", f.kernel)))?;
        func.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            f.smem_bytes as i32,
        )
        .map_err(|e| driver_err(&format!("shared memory of {}", f.kernel), e))?;
    }
    Ok(true)
}

impl CudaBackend {
    /// The image buffer a loaded graph needs (bytes), or 0: the largest image of its candidate
    /// products when the route is on (a form that reads repacked weights only for products with
    /// a repacked copy in `repacked`, by node index).
    pub(super) fn wg_image_bytes<V>(
        &self,
        graph: &Graph,
        mma: &MmaPlan,
        repacked: &HashMap<usize, V>,
    ) -> usize {
        if !self.wgmma_verify {
            return 0;
        }
        mma.products
            .iter()
            .filter_map(|(&i, mi)| {
                let w = graph.node(graph.nodes()[i].inputs[0]);
                candidate(w.dtype, mi)
                    .filter(|f| !f.repacked || repacked.contains_key(&i))
                    .map(|f| f.image_bytes(mi.k))
            })
            .max()
            .unwrap_or(0)
    }

    /// The wgmma kernel a product of `dtype` weights (`repacked`: read from their repacked copy)
    /// with activations `mi` (`reads_prepared`: prepared in the scratch) takes, if any: a
    /// candidate whose weights are read in the kernel's layout (Q4_K as stored, where its 32-bit
    /// offsets cover them; Q6_K repacked), on the main stream, with an image buffer that holds
    /// its input. (The products-as-reads mode is decided before, by the caller.)
    pub(super) fn wgmma_form(
        &self,
        exec: &Exec,
        mi: &MmaInput,
        dtype: DType,
        repacked: bool,
        reads_prepared: bool,
        n: usize,
    ) -> Option<&'static Form> {
        let f = candidate(dtype, mi)?;
        let takes = self.wgmma_verify
            && reads_prepared
            && repacked == f.repacked
            && !self.side.active.get()
            && (f.repacked || (n as u64) * (mi.k as u64 / 256) * 144 <= u64::from(u32::MAX))
            && exec
                .wg_image
                .is_some_and(|(_, bytes)| f.image_bytes(mi.k) <= bytes);
        takes.then_some(f)
    }

    /// Launches product `mi` (prepared activations at `xs`, weights at `weights`, output or split
    /// planes at `dst`) on wgmma kernel `f` (from [`Self::wgmma_form`]), writing its input's B
    /// image first unless the image already holds it in that layout. The caller sums the planes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_wgmma(
        &self,
        exec: &Exec,
        mi: &MmaInput,
        f: &Form,
        weights: u64,
        xs: u64,
        dst: u64,
        n: usize,
        splits: usize,
        footprint: impl FnOnce() -> Result<Footprint>,
    ) -> Result<()> {
        let (image, _) = exec
            .wg_image
            .ok_or_else(|| backend_err("a wgmma verify product without its image buffer"))?;
        let img = self.buf(image)?.ptr;
        let (k, m) = (mi.k, mi.m);
        if !self
            .wg_image_of
            .get()
            .is_some_and(|(held, layout)| layout == f.dtype && held.same_input(mi))
        {
            let mut a = Args::default();
            a.ptr(xs).ptr(img).i32(k as i32).i32(m as i32);
            self.launch(f.image_kernel, ((k / 256) as u32, 1, 1), 128, &mut a)?;
            self.wg_image_of.set(Some((*mi, f.dtype)));
        }
        let image_range = self.buf_range(Some(image))?;
        let mut a = Args::default();
        a.ptr(weights)
            .ptr(img)
            .ptr(dst)
            .i32(k as i32)
            .i32(n as i32)
            .i32(m as i32)
            .i32(mi.k_warps as i32)
            .i32(splits as i32);
        let grid = (n.div_ceil(BLOCK_ROWS) as u32, 1, splits as u32);
        // The kernels make a late lead's wait themselves (wg_body's pdl_late).
        let late = self.wg_late;
        self.launch_product_shaped(
            f.kernel,
            grid,
            BLOCK,
            f.smem_bytes as u32,
            late,
            &mut a,
            || {
                let mut fp = footprint()?;
                fp.reads.push(image_range);
                Ok(fp)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' shared memory fits an H100's or H200's opt-in maximum (227 KiB), and the
    /// image of the 31B's widest input (the FFN down's 21,504) is 84 groups.
    #[test]
    fn the_wgmma_kernels_fit_hopper() {
        let [q4, q6] = &FORMS;
        assert_eq!(q4.smem_bytes, 216 * 1024);
        assert_eq!(q6.smem_bytes, 128 * 1024);
        assert!(FORMS.iter().all(|f| f.smem_bytes <= 227 * 1024));
        assert_eq!(q4.image_bytes(21_504), 84 * 18 * 1024);
        assert_eq!(q6.image_bytes(21_504), 84 * 16 * 1024);
    }

    /// The sizes here are the kernels' (`wgmma_verify.cu`'s defines and launch bounds).
    #[test]
    fn the_sizes_match_the_kernels() {
        for define in [
            "#define WG_CHUNKS 18\n",
            "#define WG_CHUNK_BYTES 1024\n",
            "#define WG_W_BYTES (64 * 144)\n",
            "#define WG_GROUPS 4\n",
            "#define WG_STAGES 2\n",
            "#define WG6_CHUNKS 16\n",
            "#define WG6_B_BYTES (WG6_CHUNKS * WG_CHUNK_BYTES)\n",
            "__launch_bounds__(128 * WG_GROUPS, 1)\n    matmul_q4_k_mma_wg(",
            "__launch_bounds__(128 * WG_GROUPS, 1)\n    matmul_q6_kr_mma_wg(",
            "int row_base = blockIdx.x * 64,",
            "q4k_wg_image(const uint4* xs, u8* img, int k, int m)",
            "q6k_wg_image(const uint4* xs, u8* img, int k, int m)",
            "weight_groups<1>(w, row0, n, n_groups, grp, 224, b);",
        ] {
            assert!(source::WGMMA_VERIFY.contains(define), "{define}");
        }
        assert_eq!(BLOCK, 128 * 4);
        assert_eq!(BLOCK_ROWS, 64);
        assert_eq!(Q4K_IMAGE_GROUP_BYTES, 18 * 1024);
        assert_eq!(Q6K_IMAGE_GROUP_BYTES, 16 * 1024);
        assert_eq!(FORMS[0].smem_bytes, 4 * 2 * (18 * 1024 + 64 * 144));
        assert_eq!(FORMS[1].smem_bytes, 4 * 2 * 16 * 1024);
        // Every form's kernels are in the module's list.
        let names = source::all_kernel_names();
        for f in &FORMS {
            assert!(names.iter().any(|n| n == f.kernel), "{}", f.kernel);
            assert!(
                names.iter().any(|n| n == f.image_kernel),
                "{}",
                f.image_kernel
            );
        }
    }

    /// Only prepared Q4_K and Q6_K inputs of 9–16 rows off limbs are candidates, each with its
    /// own form.
    #[test]
    fn candidates_are_prepared_verify_batches() {
        let mi = |m: usize, prepared: bool, limbs: bool| MmaInput {
            x: NodeId::from_index(0),
            offset: 0,
            stride: 5376,
            k: 5376,
            m,
            tile: source::mma_tile(m, gguf::GgmlType::Q4_K),
            k_warps: source::mma_k_warps(5376),
            prepared,
            limbs,
        };
        for dtype in [DType::Q4_K, DType::Q6_K] {
            for m in 9..=16 {
                let f = candidate(dtype, &mi(m, true, false));
                assert_eq!(f.map(|f| f.dtype), Some(dtype), "{dtype} m {m}");
            }
            assert!(candidate(dtype, &mi(8, true, false)).is_none());
            assert!(candidate(dtype, &mi(17, true, false)).is_none());
            assert!(candidate(dtype, &mi(12, false, false)).is_none());
            assert!(candidate(dtype, &mi(12, true, true)).is_none());
        }
        assert!(candidate(DType::Q8_0, &mi(12, true, false)).is_none());
        assert!(candidate(DType::Q5_K, &mi(12, true, false)).is_none());
        assert!(!FORMS[0].repacked && FORMS[1].repacked);
    }
}
