//! Q4_K verify products of 9–16 rows on Hopper's warpgroup mma (`wgmma_verify.cu`): which
//! products take them, the image of their activations, and their launch.
//!
//! On an sm_90a device a Q4_K product of 9–16 rows large enough to prepare its own activations
//! (`MmaInput::prepared`, `source::mma_prepares`) runs `matmul_q4_k_mma_wg` instead of the (2, 2)
//! rows kernels, with the same bits under either `Q4K_HL` order: in the 31B the attention's q and
//! output, gate, up and the Q4_K FFN downs. Smaller products that reuse another's preparation (k
//! and v after q) keep the rows kernels: at one 64-row block an SM their grids would fill half a
//! card or less (not measured on wgmma yet). Its B operand is an image of the batch's prepared
//! activations in the kernel's shared-memory layout (`q4k_wg_image`, 18 KiB a 256-weight group),
//! written once per input in a launch sequence (gate and up share one).

use super::*;

/// The wgmma verify kernel.
const KERNEL: &str = "matmul_q4_k_mma_wg";
/// The kernel writing a prepared input's B image.
const IMAGE_KERNEL: &str = "q4k_wg_image";
/// Bytes of one group's B in the image (`WG_B_BYTES`: 18 k16 chunks of 1 KiB).
const IMAGE_GROUP_BYTES: usize = 18 * 1024;
/// Dynamic shared memory of a block: 4 warpgroups × 2 stages × (a group's B + 64 rows' 144-byte
/// weight blocks).
const SMEM_BYTES: usize = 4 * 2 * (IMAGE_GROUP_BYTES + 64 * 144);
/// Threads of a block: four warpgroups (`WG_GROUPS`).
const BLOCK: u32 = 512;
/// Weight rows of a block (a warpgroup's 64).
const BLOCK_ROWS: usize = 64;

/// Bytes of the B image of a k-wide input.
fn image_bytes(k: usize) -> usize {
    k / 256 * IMAGE_GROUP_BYTES
}

/// Whether a product of `dtype` weights with activations `mi` could take the wgmma kernel in a
/// graph (the image buffer is sized for these): Q4_K products of 9–16 rows that prepare their
/// activations by the size rule (or the `set_mma_prepare` override), not on limbs.
/// (An m64n16k16 form for 2–8 rows was slower than the rows kernels: bench/NOTES.md,
/// thirty-seventh session.)
fn candidate(dtype: DType, mi: &MmaInput) -> bool {
    dtype == DType::Q4_K && mi.prepared && !mi.limbs && (9..=source::MMA_MAX_ROWS).contains(&mi.m)
}

/// Raises the wgmma kernel's dynamic shared memory limit: false (the route stays off) where the
/// device allows less than it takes.
pub(super) fn allow_shared_memory(
    funcs: &HashMap<String, CudaFunction>,
    max_smem: usize,
) -> Result<bool> {
    if SMEM_BYTES > max_smem {
        return Ok(false);
    }
    let f = funcs
        .get(KERNEL)
        .ok_or_else(|| backend_err(format!("kernel {KERNEL} is not loaded")))?;
    f.set_attribute(
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        SMEM_BYTES as i32,
    )
    .map_err(|e| driver_err(&format!("shared memory of {KERNEL}"), e))?;
    Ok(true)
}

impl CudaBackend {
    /// The image buffer a loaded graph needs (bytes), or 0: the largest image of its candidate
    /// products when the route is on.
    pub(super) fn wg_image_bytes(&self, graph: &Graph, mma: &MmaPlan) -> usize {
        if !self.wgmma_verify {
            return 0;
        }
        mma.products
            .iter()
            .filter(|(&i, mi)| {
                let w = graph.node(graph.nodes()[i].inputs[0]);
                candidate(w.dtype, mi)
            })
            .map(|(_, mi)| image_bytes(mi.k))
            .max()
            .unwrap_or(0)
    }

    /// Whether a product of `dtype` weights (`repacked`: read from their repacked copy) with
    /// activations `mi` (`reads_prepared`: prepared in the scratch) takes the wgmma kernel: a
    /// candidate whose weights are read as stored (the kernel's 32-bit offsets cover them), on
    /// the main stream, with an image buffer that holds its input. (The products-as-reads mode
    /// is decided before, by the caller.)
    pub(super) fn takes_wgmma(
        &self,
        exec: &Exec,
        mi: &MmaInput,
        dtype: DType,
        repacked: bool,
        reads_prepared: bool,
        n: usize,
    ) -> bool {
        self.wgmma_verify
            && reads_prepared
            && !repacked
            && candidate(dtype, mi)
            && !self.side.active.get()
            && (n as u64) * (mi.k as u64 / 256) * 144 <= u64::from(u32::MAX)
            && exec
                .wg_image
                .is_some_and(|(_, bytes)| image_bytes(mi.k) <= bytes)
    }

    /// Launches product `mi` (prepared activations at `xs`, weights at `weights`, output or
    /// split planes at `dst`) on the wgmma kernel, writing its input's B image first unless the
    /// image already holds it. The caller sums the planes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_wgmma(
        &self,
        exec: &Exec,
        mi: &MmaInput,
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
            .is_some_and(|held| held.same_input(mi))
        {
            let mut a = Args::default();
            a.ptr(xs).ptr(img).i32(k as i32).i32(m as i32);
            self.launch(IMAGE_KERNEL, ((k / 256) as u32, 1, 1), 128, &mut a)?;
            self.wg_image_of.set(Some(*mi));
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
        self.launch_product_shaped(KERNEL, grid, BLOCK, SMEM_BYTES as u32, &mut a, || {
            let mut fp = footprint()?;
            fp.reads.push(image_range);
            Ok(fp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's shared memory fits an H100's or H200's opt-in maximum (227 KiB), and the
    /// image of the 31B's widest input (the FFN down's 21,504) is 84 groups.
    #[test]
    fn the_wgmma_kernel_fits_hopper() {
        assert_eq!(SMEM_BYTES, 216 * 1024);
        const { assert!(SMEM_BYTES <= 227 * 1024) };
        assert_eq!(image_bytes(21_504), 84 * 18 * 1024);
    }

    /// The sizes here are the kernel's (`wgmma_verify.cu`'s defines and launch bounds).
    #[test]
    fn the_sizes_match_the_kernel() {
        for define in [
            "#define WG_CHUNKS 18\n",
            "#define WG_CHUNK_BYTES 1024\n",
            "#define WG_W_BYTES (64 * 144)\n",
            "#define WG_GROUPS 4\n",
            "#define WG_STAGES 2\n",
            "__launch_bounds__(128 * WG_GROUPS, 1)\n    matmul_q4_k_mma_wg(",
            "int row_base = blockIdx.x * 64,",
            "q4k_wg_image(const uint4* xs, u8* img, int k, int m)",
        ] {
            assert!(source::WGMMA_VERIFY.contains(define), "{define}");
        }
        assert_eq!(BLOCK, 128 * 4);
        assert_eq!(BLOCK_ROWS, 64);
        assert_eq!(IMAGE_GROUP_BYTES, 18 * 1024);
        assert_eq!(SMEM_BYTES, 4 * 2 * (18 * 1024 + 64 * 144));
    }

    /// Only prepared Q4_K inputs of 9–16 rows off limbs are candidates.
    #[test]
    fn candidates_are_prepared_q4_k_verify_batches() {
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
        for m in 9..=16 {
            assert!(candidate(DType::Q4_K, &mi(m, true, false)), "m {m}");
        }
        assert!(!candidate(DType::Q4_K, &mi(8, true, false)));
        assert!(!candidate(DType::Q4_K, &mi(17, true, false)));
        assert!(!candidate(DType::Q4_K, &mi(12, false, false)));
        assert!(!candidate(DType::Q4_K, &mi(12, true, true)));
        assert!(!candidate(DType::Q6_K, &mi(12, true, false)));
    }
}
