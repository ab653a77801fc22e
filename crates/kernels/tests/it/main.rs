//! GPU tests: every op on the CUDA backend against the CPU backend on random inputs, and the
//! fixture models' logits and greedy tokens. They skip with a printed reason where no CUDA
//! driver, libnvrtc or GPU is present, unless `REQUIRE_GPU=1`, which turns absence into failure.

mod models;
mod ops;
mod real_dims;

/// A CUDA backend, or `None` (after printing why) when the machine has none.
pub fn cuda() -> Option<kernels::CudaBackend> {
    if !kernels::cuda_available() {
        assert!(
            !kernels::gpu_required(),
            "REQUIRE_GPU=1 but no CUDA driver, libnvrtc or device is present"
        );
        eprintln!("skipped: no CUDA");
        return None;
    }
    Some(kernels::CudaBackend::new(0).expect("creating the CUDA backend"))
}
