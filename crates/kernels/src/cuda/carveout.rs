//! The shared-memory share of the unified L1 / shared memory (the carveout) that the kernels of
//! a step prefer.
//!
//! Left to itself the driver picks a split per kernel. One preference for every launch of a
//! step graph (decode steps, verify batches and drafts: at most [`STEP_ROWS`] activation rows),
//! the smallest that still holds the persistent products at their occupancy (the kernels that
//! fill every multiprocessor for most of a step), keeps the split fixed and leaves the rest to
//! L1, which the products' activations live in. On an H200 that is the 64 KiB configuration
//! (192 KiB of L1), and decode ran 2.6 % faster than with the driver's choices in one run; the
//! 100 KiB one ran 5 % slower than 64 KiB (bench/NOTES.md, twenty-eighth session). Larger
//! batches (prefill chunks, whose multi-query attention and GEMM need more shared memory) launch
//! without a preference, as before. A kernel that needs more than the preference still gets it
//! (it is a hint), at the cost of a switch.
//!
//! `SPECULA_SMEM_CARVEOUT=p` (0..=100) sets the steps' preference instead, and `=driver` leaves
//! the driver's choice there too (A/B knobs).

use std::collections::HashMap;

use cudarc::driver::{sys, CudaContext, CudaFunction};
use graph::{Graph, Op};

use super::{driver_err, Result};

/// Graphs whose products take at most this many activation rows are steps (decode, verify,
/// drafts) and launch with the preference (`attention_plan`'s multi-query kernel, with its
/// larger shared memory, takes only batches of more rows).
pub(crate) const STEP_ROWS: usize = crate::attention_plan::MQ_MIN_QUERIES;

/// Threads per block of the `_mma_` product kernels (their launches in `ops.rs`).
const PRODUCT_THREADS: u32 = 256;

/// What `SPECULA_SMEM_CARVEOUT` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Knob {
    /// Unset: the share computed from the persistent products (`choose`).
    Products,
    /// `=driver`: no preference; the driver picks per kernel.
    Driver,
    /// `=p`: this percentage for the steps' launches.
    Percent(i32),
}

impl Knob {
    /// Parses the variable's value (`None`: unset). Anything else than `driver` or a percentage
    /// is refused with a message naming the variable.
    pub(crate) fn parse(value: Option<&str>) -> std::result::Result<Knob, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(Knob::Products),
            Some("driver") => Ok(Knob::Driver),
            Some(v) => match v.parse::<i32>() {
                Ok(p) if (0..=100).contains(&p) => Ok(Knob::Percent(p)),
                _ => Err(format!(
                    "SPECULA_SMEM_CARVEOUT={v}: expected a percentage 0..=100 or `driver`"
                )),
            },
        }
    }
}

/// Whether `name` is a persistent product kernel (`matmul_<type>_mma_..._p` or `_p1`, and the
/// limb kernels' `_p`): the kernels sized to fill every multiprocessor.
pub(crate) fn persistent_product(name: &str) -> bool {
    name.starts_with("matmul_")
        && (name.contains("_mma_") || name.contains("_limb_"))
        && (name.ends_with("_p") || name.ends_with("_p1"))
}

/// The smallest whole percentage of `per_sm` bytes that holds `need` bytes (at most 100).
pub(crate) fn percent_for(need: usize, per_sm: usize) -> i32 {
    if per_sm == 0 {
        return 100;
    }
    (need * 100).div_ceil(per_sm).min(100) as i32
}

/// The preference of the steps' launches (`None`: leave the driver's choice): the knob's, or the
/// share of the device's shared memory per multiprocessor that the persistent products need at
/// the occupancy they reach when shared memory does not bound them (their static shared memory
/// plus the device's reserved bytes a block, times their blocks per multiprocessor).
pub(super) fn choose(
    knob: Knob,
    ctx: &CudaContext,
    funcs: &HashMap<String, CudaFunction>,
) -> Result<Option<i32>> {
    match knob {
        Knob::Driver => return Ok(None),
        Knob::Percent(p) => return Ok(Some(p)),
        Knob::Products => {}
    }
    let attribute = |a, what: &str| -> Result<usize> {
        let v = ctx.attribute(a).map_err(|e| driver_err(what, e))?;
        Ok(v.max(0) as usize)
    };
    let per_sm = attribute(
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
        "shared memory per multiprocessor",
    )?;
    let reserved = attribute(
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK,
        "reserved shared memory per block",
    )?;
    let mut need = 0usize;
    for (name, f) in funcs.iter().filter(|(n, _)| persistent_product(n)) {
        let smem = f
            .shared_size_bytes()
            .map_err(|e| driver_err(&format!("shared memory of {name}"), e))?
            .max(0) as usize;
        let blocks =
            f.occupancy_max_active_blocks_per_multiprocessor(PRODUCT_THREADS, 0, None)
                .map_err(|e| driver_err(&format!("occupancy of {name}"), e))? as usize;
        need = need.max(blocks * (smem + reserved));
    }
    Ok(Some(percent_for(need, per_sm)))
}

/// Whether `graph` is a step: every weight product in it (`MatMul`, `MatMulQ8`, `MatMulId`)
/// writes at most [`STEP_ROWS`] rows (tokens, or a token's expert slots).
pub(crate) fn is_step(graph: &Graph) -> bool {
    graph.nodes().iter().all(|node| match node.op {
        Op::MatMul | Op::MatMulQ8 | Op::MatMulId => node.shape().n_rows() <= STEP_ROWS,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knob_parses_percentages_and_driver_and_refuses_the_rest() {
        assert_eq!(Knob::parse(None), Ok(Knob::Products));
        assert_eq!(Knob::parse(Some("")), Ok(Knob::Products));
        assert_eq!(Knob::parse(Some("driver")), Ok(Knob::Driver));
        assert_eq!(Knob::parse(Some("0")), Ok(Knob::Percent(0)));
        assert_eq!(Knob::parse(Some(" 25 ")), Ok(Knob::Percent(25)));
        assert_eq!(Knob::parse(Some("100")), Ok(Knob::Percent(100)));
        for bad in ["101", "-1", "25%", "half"] {
            let e = Knob::parse(Some(bad)).unwrap_err();
            assert!(
                e.contains("SPECULA_SMEM_CARVEOUT") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[test]
    fn percentages_round_up_and_stop_at_100() {
        // An H200: 228 KiB a multiprocessor; two one-row product blocks of 24 KiB + 1 KiB.
        let per_sm = 228 * 1024;
        assert_eq!(percent_for(2 * (24 * 1024 + 1024), per_sm), 22);
        assert_eq!(percent_for(0, per_sm), 0);
        assert_eq!(percent_for(per_sm, per_sm), 100);
        assert_eq!(percent_for(per_sm + 1, per_sm), 100);
        assert_eq!(percent_for(1, per_sm), 1);
        assert_eq!(percent_for(5, 0), 100);
    }

    /// A graph of one product of `m` rows of `k`-wide activations, and (`moe`) an expert product
    /// of 8 slots a token over `m` tokens.
    fn products(m: usize, moe: bool) -> Graph {
        use graph::{DType, GraphBuilder, Shape};
        let k = 256;
        let mut g = GraphBuilder::new();
        let w = g
            .weight("w", DType::Q4_K, Shape::new(&[k, 64]).unwrap())
            .unwrap();
        let x = g
            .input("x", DType::F32, Shape::new(&[k, m]).unwrap())
            .unwrap();
        let mut out = vec![g.matmul(w, x).unwrap()];
        if moe {
            let we = g
                .weight("we", DType::Q4_K, Shape::new(&[k, 64, 32]).unwrap())
                .unwrap();
            let xe = g
                .input("xe", DType::F32, Shape::new(&[k, 1, m]).unwrap())
                .unwrap();
            let ids = g
                .input("ids", DType::I32, Shape::new(&[8, m]).unwrap())
                .unwrap();
            out.push(g.matmul_id(we, xe, ids).unwrap());
        }
        g.finish(&out).unwrap()
    }

    #[test]
    fn steps_are_graphs_of_at_most_16_rows() {
        for m in [1, 5, 16] {
            assert!(is_step(&products(m, false)), "{m} rows");
        }
        for m in [17, 512] {
            assert!(!is_step(&products(m, false)), "{m} rows");
        }
        // Eight expert slots a token: two tokens are a step, three are not.
        assert!(is_step(&products(2, true)));
        assert!(!is_step(&products(3, true)));
    }

    #[test]
    fn only_persistent_products_count() {
        for name in [
            "matmul_q4_k_mma_m1n1_p1",
            "matmul_q6_kr_mma_m1n1_x_p1",
            "matmul_q4_k_mma_m2n2_p",
            "matmul_q8_0_mma_m1n1_p",
            "matmul_q4_k_limb_n1_p",
        ] {
            assert!(persistent_product(name), "{name}");
        }
        for name in [
            "matmul_q4_k_mma_m2n2",
            "matmul_q4_k_mma_m1n1_x",
            "matmul_q4_k_limb_n8",
            "rms_norm_cluster_f32",
            "mmv_prepare_x",
            "attention_tc_d256",
        ] {
            assert!(!persistent_product(name), "{name}");
        }
    }
}
