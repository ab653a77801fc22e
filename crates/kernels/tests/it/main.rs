//! GPU tests: every op on the CUDA backend against the CPU backend on random inputs, and the
//! fixture models' logits and greedy tokens. They skip with a printed reason where no CUDA
//! driver, libnvrtc or GPU is present, unless `REQUIRE_GPU=1`, which turns absence into failure.

mod models;
mod ops;
mod real_dims;

/// The fixture file `name`: under the path baked in at build time, or `fixtures/` under the
/// working directory when the test binary was carried to another machine and runs from the
/// repository root there.
pub fn fixture(name: &str) -> std::path::PathBuf {
    let baked = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    if baked.exists() {
        baked.join(name)
    } else {
        std::path::PathBuf::from("fixtures").join(name)
    }
}

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
