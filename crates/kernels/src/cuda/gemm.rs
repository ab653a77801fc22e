//! The GEMM route for long products (prefill chunks): both operands written as f16 by our own
//! kernels (`dequant_f16_<type>`, `rows_to_f16`), then one cuBLAS f16 GEMM with f32 accumulation
//! per row tile of the weights. cuBLAS's tensor-core GEMMs reach several times the rate of the
//! `_mma_` kernels at 512 rows, which unpack every weight again for each 32 activation rows.
//!
//! libcublas is loaded at run time like the driver; without it (or with `SPECULA_GEMM=0`) the
//! route is off and long products stay on the `_mma_` kernels.

use cudarc::cublas::sys as cublas;

use super::*;
use crate::mma_plan::GemmInput;

/// Bytes of the workspace cuBLAS gets up front, so that it allocates nothing while a stream is
/// captured into a CUDA graph (NVIDIA's guidance for capture: 32 MiB covers Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle bound to the backend's stream, with its own workspace.
pub(super) struct Cublas {
    handle: cublas::cublasHandle_t,
    workspace: u64,
}

fn cublas_err(what: &str, status: cublas::cublasStatus_t) -> graph::Error {
    backend_err(format!("cuBLAS {what}: {status:?}"))
}

fn check(what: &str, status: cublas::cublasStatus_t) -> Result<()> {
    match status {
        cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        s => Err(cublas_err(what, s)),
    }
}

impl Cublas {
    /// A handle on `stream` in the current context, or `None` when libcublas is not there
    /// (`Some(Err)` when it is but will not start).
    pub(super) fn open(stream: &CudaStream) -> Option<Result<Cublas>> {
        #[allow(unsafe_code)]
        // SAFETY: only tries to dlopen libcublas by its candidate names; no symbol is called.
        if !unsafe { cublas::is_culib_present() } {
            return None;
        }
        Some(Self::try_open(stream).map_err(|e| {
            backend_err(format!(
                "{e} (libcublas was found but did not start; SPECULA_GEMM=0 runs without it)"
            ))
        }))
    }

    fn try_open(stream: &CudaStream) -> Result<Cublas> {
        let mut handle: cublas::cublasHandle_t = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: libcublas is present (checked by the caller) and the context is current; the
        // out-pointer is valid.
        check("create", unsafe { cublas::cublasCreate_v2(&mut handle) })?;
        #[allow(unsafe_code)]
        // SAFETY: the context is current; the allocation is freed in Drop.
        let workspace = match unsafe { cu::malloc_sync(WORKSPACE_BYTES) } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the handle was created above and is not used again.
                #[allow(unsafe_code)]
                unsafe {
                    cublas::cublasDestroy_v2(handle)
                };
                return Err(driver_err("allocating the cuBLAS workspace", e));
            }
        };
        let c = Cublas { handle, workspace };
        #[allow(unsafe_code)]
        // SAFETY: a live handle; the driver's stream handle is the runtime's cudaStream_t.
        check("set stream", unsafe {
            cublas::cublasSetStream_v2(c.handle, stream.cu_stream() as cublas::cudaStream_t)
        })?;
        #[allow(unsafe_code)]
        // SAFETY: a live handle and a device allocation of WORKSPACE_BYTES owned by `c`.
        check("set workspace", unsafe {
            cublas::cublasSetWorkspace_v2(c.handle, c.workspace as *mut c_void, WORKSPACE_BYTES)
        })?;
        Ok(c)
    }

    /// `y[j·n + i] = Σ_l w[i][l] · x[j][l]` for i < rows, j < m: `w` is `rows` f16 rows of k,
    /// `x` m f16 rows of k, `y` f32 rows n apart (cuBLAS's column-major rows × m output with
    /// leading dimension n: Wᵀ·X with both operands' rows as its columns).
    ///
    /// # Safety
    /// `w` must hold rows · k and `x` m · k f16 values, and `y` (m − 1) · n + rows f32 values,
    /// all device memory of this context, not freed before the stream runs the GEMM.
    #[allow(clippy::too_many_arguments, unsafe_code)]
    unsafe fn gemm_f16(
        &self,
        w: u64,
        x: u64,
        y: u64,
        k: usize,
        rows: usize,
        m: usize,
        n: usize,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| backend_err(format!("GEMM dimension {v} exceeds i32")))
        };
        #[allow(unsafe_code)]
        // SAFETY: a live handle on the backend's stream; the buffers are as the caller promised
        // (# Safety above); the scalars are host values read during the call.
        check("GemmEx", unsafe {
            cublas::cublasGemmEx(
                self.handle,
                cublas::cublasOperation_t::CUBLAS_OP_T,
                cublas::cublasOperation_t::CUBLAS_OP_N,
                dim(rows)?,
                dim(m)?,
                dim(k)?,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                cublas::cudaDataType::CUDA_R_16F,
                dim(k)?,
                x as *const c_void,
                cublas::cudaDataType::CUDA_R_16F,
                dim(k)?,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                cublas::cudaDataType::CUDA_R_32F,
                dim(n)?,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        })
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: the handle and workspace were created in `try_open` and are released once
        // here, with the backend's context current (CudaBackend's Drop binds it first).
        unsafe {
            cublas::cublasDestroy_v2(self.handle);
            let _ = cu::free_sync(self.workspace);
        }
    }
}

impl CudaBackend {
    /// Launches matmul `node` on the GEMM route: the activations to f16 with a power-of-two
    /// scale per row (unless the previous GEMM-route product left the same ones in the scratch),
    /// then per row tile of the weights their f16 dequantization and one cuBLAS GEMM into the
    /// tile's output columns, then the rows' scales undone.
    pub(super) fn launch_gemm(
        &self,
        exec: &Exec,
        id: NodeId,
        node: &Node,
        gi: &GemmInput,
        out: u64,
    ) -> Result<()> {
        // cuBLAS's kernels are not ours: nothing after them starts as a sibling.
        self.end_product_chain();
        let cublas = self
            .cublas
            .as_ref()
            .ok_or_else(|| backend_err("a GEMM-route product without cuBLAS"))?;
        let (Some(wbuf), Some(xbuf)) = (self.gemm_weights, exec.gemm_acts) else {
            return Err(backend_err("no scratch for a GEMM-route product"));
        };
        let (ws, xs) = (self.buf(wbuf)?.ptr, self.buf(xbuf)?.ptr);
        let w = exec.graph.node(node.inputs[0]);
        let (k, n, m) = (gi.k, gi.n, gi.m);
        // The rows' power-of-two scales follow their f16 values in the scratch.
        let scales = xs + (m * k * 2) as u64;
        if !exec.mma.gemm_ready.contains(&id.index()) {
            let vec4 = k % 4 == 0 && gi.offset % 4 == 0 && gi.stride % 4 == 0;
            let mut a = Args::default();
            a.ptr(self.base(exec, node.inputs[1])?)
                .i64(gi.offset)
                .i64(gi.stride)
                .i32(k as i32)
                .i32(i32::from(vec4))
                .ptr(xs)
                .ptr(scales);
            self.launch("rows_to_f16", (m as u32, 1, 1), 256, &mut a)?;
        }
        let suffix = weight_suffix(w.dtype)?;
        let row_bytes = byte_size(w.dtype, Shape::new(&[k])?)?;
        let w_base = self.base(exec, node.inputs[0])?;
        let tile = gi.tile_rows;
        for r0 in (0..n).step_by(tile) {
            let rows = tile.min(n - r0);
            let mut d = Args::default();
            d.ptr(w_base + (r0 * row_bytes) as u64)
                .i32(k as i32)
                .i64(rows as i64)
                .ptr(ws);
            self.launch(
                &format!("dequant_f16_{suffix}"),
                grid1(rows * k / 32, 256),
                256,
                &mut d,
            )?;
            #[allow(unsafe_code)]
            // SAFETY: `ws` holds the tile's rows · k f16 weights (the scratch is sized for the
            // largest tile), `xs` the m · k f16 activations, and `out` the m × n f32 output, of
            // which the GEMM writes columns r0..r0 + rows of every row.
            unsafe {
                cublas.gemm_f16(ws, xs, out + (r0 * 4) as u64, k, rows, m, n)?
            };
        }
        let mut r = Args::default();
        r.ptr(out).i32(n as i32).ptr(scales);
        self.launch("gemm_rescale", (m as u32, 1, 1), 256, &mut r)
    }
}
