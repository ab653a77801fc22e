//! CUDA kernels and the CUDA backend of the graph IR.
//!
//! The kernels are CUDA C++ sources embedded in the crate (`cu/`), compiled at run time by
//! NVRTC to a cubin for the device's exact architecture and cached on disk, so the workspace
//! builds without a CUDA toolkit and a user's machine needs only the driver and libnvrtc. The
//! sources use no toolkit headers.
//!
//! [`CudaBackend`] implements [`graph::Backend`]: the same graphs the CPU reference backend
//! runs, one kernel launch per op.
//!
//! Design decision: cudarc is used with `dynamic-loading`, so nothing CUDA is linked at build
//! time; [`cuda_available`] checks for the libraries before any call (cudarc panics when a
//! library is missing) and GPU tests skip cleanly without them.
//!
//! ```no_run
//! if kernels::cuda_available() {
//!     let backend = kernels::CudaBackend::new(0)?;
//!     println!("{}", graph::Backend::name(&backend));
//! }
//! # Ok::<(), graph::Error>(())
//! ```

#![warn(missing_docs)]

mod attention_plan;
pub use attention_plan::MultiQueryAttention;
mod branch_plan;
pub use branch_plan::planned_branches;
mod cuda;
pub mod doctor;
mod fuse_plan;
pub use fuse_plan::{planned_folds, planned_routes};
mod mma_plan;
pub mod nvrtc;
pub mod source;
#[cfg(test)]
mod test_graph;

pub use cuda::{cuda_available, profiled, CudaBackend, MOE_TILES_DEFAULT, READ_MAX_RUNS};

/// Whether GPU tests must fail instead of skipping when CUDA is absent (`REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1")
}
