//! Quantize → dequantize error bounds.
//!
//! Stated bounds, per element `x` and its round trip `x̂`:
//! - Q8_0: `|x − x̂| ≤ 0.5625·d` with `d = max|x| / 127` over the 32-weight block (half a step,
//!   plus the f16 rounding of `d` over up to 127 steps).
//! - Q4_K: `|x − x̂| ≤ (max − min) / 15` over the 256-weight block, `min` taken ≤ 0 (one step
//!   of the coarsest possible sub-block: 6-bit scales and mins cost at most a fraction of it),
//!   for blocks whose largest weight is ≥ 0 (as every block here: the data spans zero) and
//!   whose step is a normal f16 (the format's limits, `gguf::quant` Q4_K module doc).
//! - Q6_K: `|x − x̂| ≤ max|x| / 32` over the 256-weight block (one step of the coarsest
//!   sub-block).
//! - Q5_0: `|x − x̂| ≤ (1 + 1/128)·d` with `d = max|x| / 16` over the 32-weight block: half a
//!   step, except for weights of the sign opposite to the extreme beyond 15.5 steps, which clip
//!   to level 31 (15 steps); plus the f16 rounding of `d` over up to 16 steps.
//!
//! And on Gaussian data, the relative RMS error ‖x − x̂‖/‖x‖ stays below 0.6 % (Q8_0: the
//! expected max of 32 normals is about 2.4σ, so σ_err ≈ 2.4/127/√12 ≈ 0.55 %),
//! 2.5 % (Q6_K) and 10 % (Q4_K).

use gguf::{quant, GgmlType};
use proptest::prelude::*;

use crate::testing::{rel_err, Rng};

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let bytes = quant::quantize(ty, x).unwrap();
    assert_eq!(bytes.len() as u64, ty.bytes_for(x.len() as u64).unwrap());
    quant::dequantize_to_vec(ty, &bytes).unwrap()
}

/// Blocks of 256 values whose 16-weight groups have scales spread over four decades, so small
/// and large sub-blocks share a super-block.
fn spread_values(n_blocks: usize) -> impl Strategy<Value = Vec<f32>> {
    (
        prop::collection::vec(-1.0f32..1.0, n_blocks * 256),
        prop::collection::vec(-2.0f32..2.0, n_blocks * 16),
        prop::bool::ANY,
    )
        .prop_map(|(mut v, exps, shift)| {
            for (i, x) in v.iter_mut().enumerate() {
                *x *= 10f32.powf(exps[i / 16]);
                if shift {
                    *x += 0.3;
                }
            }
            v
        })
}

fn check_bound(ty: GgmlType, x: &[f32], y: &[f32], block: usize, bound: impl Fn(&[f32]) -> f32) {
    for (b, (xb, yb)) in x.chunks(block).zip(y.chunks(block)).enumerate() {
        let limit = bound(xb) * (1.0 + 1e-5) + 1e-30;
        for (i, (&a, &r)) in xb.iter().zip(yb).enumerate() {
            assert!(
                (a - r).abs() <= limit,
                "{ty} block {b} elem {i}: x = {a}, x̂ = {r}, |err| {} > bound {limit}",
                (a - r).abs()
            );
        }
    }
}

fn q8_0_bound(x: &[f32]) -> f32 {
    0.5625 * x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0
}

fn q4_k_bound(x: &[f32]) -> f32 {
    let hi = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let lo = x.iter().fold(0.0f32, |m, &v| m.min(v));
    (hi - lo) / 15.0
}

fn q5_0_bound(x: &[f32]) -> f32 {
    (1.0 + 1.0 / 128.0) * x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 16.0
}

fn q6_k_bound(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 32.0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn q8_0_within_bound(x in spread_values(2)) {
        let y = round_trip(GgmlType::Q8_0, &x);
        check_bound(GgmlType::Q8_0, &x, &y, 32, q8_0_bound);
    }

    #[test]
    fn q4_k_within_bound(x in spread_values(2)) {
        let y = round_trip(GgmlType::Q4_K, &x);
        check_bound(GgmlType::Q4_K, &x, &y, 256, q4_k_bound);
    }

    #[test]
    fn q5_0_within_bound(x in spread_values(2)) {
        let y = round_trip(GgmlType::Q5_0, &x);
        check_bound(GgmlType::Q5_0, &x, &y, 32, q5_0_bound);
    }

    #[test]
    fn q6_k_within_bound(x in spread_values(2)) {
        let y = round_trip(GgmlType::Q6_K, &x);
        check_bound(GgmlType::Q6_K, &x, &y, 256, q6_k_bound);
    }
}

/// proptest's shrunk case of a Q4_K bound failure (CI, 2026-11-27): in a block of 0.3s, one
/// sub-block spans −88..89; a least-squares refit of its (scale, min) clipped 89.13 to 76.97,
/// 12.15 from the input against the bound's 11.81. The fit now keeps every weight within 3/4
/// of a step of the range fit.
#[test]
fn q4_k_outlier_sub_block_stays_within_bound() {
    let mut x = vec![0.3f32; 256];
    for (i, v) in [
        (128, 89.12683),
        (130, -88.00941),
        (131, -43.44922),
        (132, 74.6695),
        (134, -51.0408),
        (135, -52.07722),
        (136, -55.321564),
        (137, 72.911705),
        (140, 66.064125),
        (141, 75.14562),
        (142, 64.120056),
        (143, 64.783264),
        (244, 1.8021264),
        (245, 0.023456305),
        (246, 1.2316322),
        (247, -1.6299682),
        (248, -0.21992141),
        (249, 0.28641605),
        (250, 1.3386295),
        (251, -1.331433),
        (252, 0.04925272),
        (253, -1.1313665),
        (254, 2.3126116),
        (255, 1.6399782),
    ] {
        x[i] = v;
    }
    let y = round_trip(GgmlType::Q4_K, &x);
    check_bound(GgmlType::Q4_K, &x, &y, 256, q4_k_bound);
}

#[test]
fn gaussian_relative_rms_error() {
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..256 * 64).map(|_| rng.normal()).collect();
    for (ty, limit) in [
        (GgmlType::Q8_0, 0.006),
        (GgmlType::Q6_K, 0.025),
        (GgmlType::Q4_K, 0.10),
    ] {
        let err = rel_err(&round_trip(ty, &x), &x);
        eprintln!("{ty}: relative RMS error {err:.4}");
        assert!(err < limit, "{ty}: relative RMS error {err} ≥ {limit}");
    }
}

#[test]
fn zeros_and_constants_round_trip_exactly() {
    for &ty in quant::QUANTIZE_TYPES {
        let zeros = vec![0.0f32; 512];
        assert_eq!(round_trip(ty, &zeros), zeros, "{ty}");
    }
    // A constant negative block is the Q4_K minimum alone: exact up to the f16 of dmin·m.
    let x = vec![-0.75f32; 256];
    let y = round_trip(GgmlType::Q4_K, &x);
    assert!(y.iter().all(|&v| (v + 0.75).abs() < 1e-3), "{:?}", &y[..4]);
}
