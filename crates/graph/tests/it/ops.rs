//! Every op except attention (see `attention.rs`) against a naive f64 reference, on random
//! inputs that are never all zero.

use graph::{DType, Error, GluOp, RopeParams, Shape, UnaryOp};

use crate::harness::{assert_close, dequant, random_weight, rel_err, Harness, Rng};

const WEIGHT_TYPES: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// `out[n + m·N] = Σ_k w[k + n·K] · x[k + m·K]` in f64.
fn ref_matmul(w: &[f32], x: &[f32], k: usize, n: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * m];
    for j in 0..m {
        for i in 0..n {
            let s: f64 = (0..k)
                .map(|c| f64::from(w[c + i * k]) * f64::from(x[c + j * k]))
                .sum();
            out[i + j * n] = s as f32;
        }
    }
    out
}

#[test]
fn matmul_every_weight_type_against_dequantized_reference() {
    let mut rng = Rng::new(1);
    for &ty in WEIGHT_TYPES {
        // Odd row counts and batches: 37 output rows, 1 and 5 activation rows.
        let (k, n) = (512, 37);
        let wb = random_weight(&mut rng, ty, k * n);
        let wf = dequant(ty, &wb);
        for m in [1, 5] {
            let x = rng.vec(k * m);
            let mut h = Harness::new();
            let w = h.weight("w", ty, &[k, n], wb.clone());
            let xi = h.input_f32("x", &[k, m], x.clone());
            let y = h.g.matmul(w, xi).unwrap();
            let out = h.run_f32(y);
            assert_close(
                &format!("matmul {ty} m={m}"),
                &out,
                &ref_matmul(&wf, &x, k, n, m),
                1e-5,
            );
        }
    }
}

/// Activations quantized as `Op::MatMulQ8` says and dequantized (`q · d`): per 32 elements `d =
/// max|x| / 127` over the non-NaN elements, `q = round(x · (1/d))` clamped to ±127, 0 where
/// NaN (f32 arithmetic, as the op defines).
fn ref_q8(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let d = b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.iter().map(move |&v| {
                let q = (v * inv).round();
                (if q.is_nan() {
                    0.0
                } else {
                    q.clamp(-127.0, 127.0)
                }) * d
            })
        })
        .collect()
}

/// `matmul_q8` equals the f64 product of the Q8_0 or Q6_K weights with the activations
/// quantized to 8 bits (within f32 summation), and stays within that quantization's error of
/// the exact product; Q8_0 rows of 32 (one block), 256 and 800 wide, Q6_K rows of 256 and 768,
/// one and five activation rows, one row all zeros (d = 0), blocks of NaN (dropped), zeros and
/// an infinity (NaN rows); other weight types are refused.
#[test]
fn matmul_q8_quantizes_the_activations_to_8_bits() {
    let mut rng = Rng::new(11);
    let shapes = [
        (DType::Q8_0, 32),
        (DType::Q8_0, 256),
        (DType::Q8_0, 800),
        (DType::Q6_K, 256),
        (DType::Q6_K, 768),
    ];
    for (dtype, k) in shapes {
        let n = 19;
        let wb = random_weight(&mut rng, dtype, k * n);
        let wf = dequant(dtype, &wb);
        for m in [1, 5] {
            let mut x = rng.vec(k * m);
            if m == 5 {
                x[k..2 * k].fill(0.0);
            }
            let xq: Vec<f32> = x.chunks(k).flat_map(ref_q8).collect();
            let mut h = Harness::new();
            let w = h.weight("w", dtype, &[k, n], wb.clone());
            let xi = h.input_f32("x", &[k, m], x.clone());
            let y = h.g.matmul_q8(w, xi).unwrap();
            let out = h.run_f32(y);
            let what = format!("matmul_q8 {dtype} k={k} m={m}");
            assert_close(&what, &out, &ref_matmul(&wf, &xq, k, n, m), 1e-6);
            // 8-bit activations: a relative error near 1/127 / sqrt(3) per element, averaged
            // down over the row.
            let exact = ref_matmul(&wf, &x, k, n, m);
            let e = rel_err(&out, &exact);
            assert!(e > 0.0 && e < 2e-2, "{what}: {e:e} from the exact product");
        }
    }
    // A block of NaNs quantizes to zeros (the largest |x| ignores NaN), a block of zeros has
    // d = 0, and a block holding an infinity makes its row's products NaN.
    let (k, n) = (96, 5);
    let wb = random_weight(&mut rng, DType::Q8_0, k * n);
    let wf = dequant(DType::Q8_0, &wb);
    let mut x = rng.vec(k * 3);
    x[..32].fill(f32::NAN);
    x[k + 32..k + 64].fill(0.0);
    x[2 * k + 70] = f32::INFINITY;
    let mut h = Harness::new();
    let w = h.weight("w", DType::Q8_0, &[k, n], wb);
    let xi = h.input_f32("x", &[k, 3], x.clone());
    let y = h.g.matmul_q8(w, xi).unwrap();
    let out = h.run_f32(y);
    let mut x_dropped = x[..2 * k].to_vec();
    x_dropped[..32].fill(0.0);
    let xq: Vec<f32> = x_dropped.chunks(k).flat_map(ref_q8).collect();
    assert_close(
        "matmul_q8 NaN and zero blocks",
        &out[..2 * n],
        &ref_matmul(&wf, &xq, k, n, 2),
        1e-6,
    );
    assert!(
        out[2 * n..].iter().all(|v| v.is_nan()),
        "{:?}",
        &out[2 * n..]
    );

    let mut h = Harness::new();
    let x = h.input_f32("x", &[64, 1], vec![1.0; 64]);
    let w4 = h.weight("w4", DType::Q4_0, &[64, 2], vec![0; 2 * 2 * 18]);
    let err = h.g.matmul_q8(w4, x).unwrap_err().to_string();
    assert!(err.contains("must be Q8_0 or Q6_K, found Q4_0"), "{err}");
}

#[test]
fn matmul_reads_strided_activation_rows() {
    let mut rng = Rng::new(2);
    let (k, n, m) = (64, 9, 3);
    let wb = random_weight(&mut rng, DType::F32, k * n);
    let wf = dequant(DType::F32, &wb);
    // x holds 2·m rows; the view takes every other one.
    let x = rng.vec(k * 2 * m);
    let mut h = Harness::new();
    let w = h.weight("w", DType::F32, &[k, n], wb);
    let xi = h.input_f32("x", &[k, 2 * m], x.clone());
    let view =
        h.g.view(
            xi,
            Shape::new(&[k, m]).unwrap(),
            [1, 2 * k, 2 * k * m, 2 * k * m],
            0,
        )
        .unwrap();
    let y = h.g.matmul(w, view).unwrap();
    let out = h.run_f32(y);
    let picked: Vec<f32> = (0..m)
        .flat_map(|j| x[2 * j * k..(2 * j + 1) * k].to_vec())
        .collect();
    assert_close(
        "strided matmul",
        &out,
        &ref_matmul(&wf, &picked, k, n, m),
        1e-5,
    );
}

/// With f16 products from 4 rows, a 4-row product of Q8_0 weights equals, bit for bit, the f32
/// product of the f16-rounded operands (an f16 weight holding the rounded dequantized values and
/// pre-rounded activations), and differs from the f32 product; a 3-row product stays f32.
#[test]
fn f16_products_round_both_operands() {
    let mut rng = Rng::new(9);
    let (k, n) = (256, 20);
    let wb = random_weight(&mut rng, DType::Q8_0, k * n);
    let w16: Vec<u8> = dequant(DType::Q8_0, &wb)
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let product = |ty: DType, w: &[u8], x: &[f32], m: usize, f16: Option<usize>| {
        let mut h = Harness::new();
        h.f16_products = f16;
        let w = h.weight("w", ty, &[k, n], w.to_vec());
        let xi = h.input_f32("x", &[k, m], x.to_vec());
        let y = h.g.matmul(w, xi).unwrap();
        h.run_f32(y)
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for m in [3, 4] {
        let x = rng.vec(k * m);
        let x16: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let got = product(DType::Q8_0, &wb, &x, m, Some(4));
        let plain = product(DType::Q8_0, &wb, &x, m, None);
        let rounded = product(DType::F16, &w16, &x16, m, None);
        if m >= 4 {
            assert_eq!(
                bits(&got),
                bits(&rounded),
                "{m} rows: not the rounded product"
            );
            assert_ne!(bits(&got), bits(&plain), "{m} rows: nothing was rounded");
        } else {
            assert_eq!(bits(&got), bits(&plain), "{m} rows: below the threshold");
        }
    }
}

/// Activation rows past the f16 range (up to 3e6) stay finite with f16 products: each row is
/// scaled by a power of two before rounding, so the product keeps f16's relative precision
/// (within 1e-3 of the f32 product).
#[test]
fn f16_products_scale_rows_past_the_f16_range() {
    let mut rng = Rng::new(10);
    let (k, n, m) = (256, 16, 4);
    let wb = random_weight(&mut rng, DType::Q8_0, k * n);
    let x: Vec<f32> = rng
        .vec(k * m)
        .iter()
        .enumerate()
        .map(|(i, v)| v * [1.0, 7e4, 3e6, 0.5][i / k])
        .collect();
    let product = |f16: Option<usize>| {
        let mut h = Harness::new();
        h.f16_products = f16;
        let w = h.weight("w", DType::Q8_0, &[k, n], wb.clone());
        let xi = h.input_f32("x", &[k, m], x.clone());
        let y = h.g.matmul(w, xi).unwrap();
        h.run_f32(y)
    };
    let (f32s, f16s) = (product(None), product(Some(1)));
    assert!(f16s.iter().all(|v| v.is_finite()));
    for r in 0..m {
        let e = rel_err(&f16s[r * n..(r + 1) * n], &f32s[r * n..(r + 1) * n]);
        assert!(e <= 1e-3, "row {r}: relative error {e:e}");
    }
}

#[test]
fn matmul_id_picks_each_slots_expert() {
    let mut rng = Rng::new(3);
    let (k, n, n_expert, n_used, t) = (256, 12, 4, 2, 3);
    for ty in [DType::F16, DType::Q4_K, DType::Q8_0] {
        let wb = random_weight(&mut rng, ty, k * n * n_expert);
        let wf = dequant(ty, &wb);
        let ids: Vec<i32> = vec![3, 0, 1, 1, 2, 3];
        for x_slots in [1, n_used] {
            let x = rng.vec(k * x_slots * t);
            let mut h = Harness::new();
            let w = h.weight("w", ty, &[k, n, n_expert], wb.clone());
            let xi = h.input_f32("x", &[k, x_slots, t], x.clone());
            let ii = h.input_i32("ids", &[n_used, t], ids.clone());
            let y = h.g.matmul_id(w, xi, ii).unwrap();
            let out = h.run_f32(y);
            let mut reference = Vec::new();
            for tok in 0..t {
                for j in 0..n_used {
                    let e = ids[j + tok * n_used] as usize;
                    let xr = if x_slots == 1 { tok } else { j + tok * x_slots };
                    reference.extend(ref_matmul(
                        &wf[e * k * n..(e + 1) * k * n],
                        &x[xr * k..(xr + 1) * k],
                        k,
                        n,
                        1,
                    ));
                }
            }
            assert_close(
                &format!("matmul_id {ty} x_slots={x_slots}"),
                &out,
                &reference,
                1e-5,
            );
        }
    }
}

#[test]
fn get_rows_of_every_table_type_and_bad_ids() {
    let mut rng = Rng::new(4);
    for ty in [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q6_K,
    ] {
        let (k, rows) = (256, 10);
        let tb = random_weight(&mut rng, ty, k * rows);
        let tf = dequant(ty, &tb);
        let ids = vec![7, 0, 9, 7];
        let mut h = Harness::new();
        let t = h.weight("table", ty, &[k, rows], tb.clone());
        let i = h.input_i32("ids", &[4], ids.clone());
        let y = h.g.get_rows(t, i).unwrap();
        let out = h.run_f32(y);
        let reference: Vec<f32> = ids
            .iter()
            .flat_map(|&r| tf[r as usize * k..(r as usize + 1) * k].to_vec())
            .collect();
        assert_eq!(out, reference, "{ty}");

        let mut h = Harness::new();
        let t = h.weight("table", ty, &[k, rows], tb);
        let i = h.input_i32("ids", &[2], vec![1, 10]);
        let y = h.g.get_rows(t, i).unwrap();
        let err = h.run(&[y]).unwrap_err();
        assert!(matches!(err, Error::Runtime { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("row id 10 at index 1 is outside 0..10"),
            "{err}"
        );
    }
}

fn broadcast_ref(
    a: &[f32],
    b: &[f32],
    ad: [usize; 4],
    bd: [usize; 4],
    f: fn(f64, f64) -> f64,
) -> Vec<f32> {
    let mut out = Vec::new();
    for i3 in 0..ad[3] {
        for i2 in 0..ad[2] {
            for i1 in 0..ad[1] {
                for i0 in 0..ad[0] {
                    let ai = i0 + ad[0] * (i1 + ad[1] * (i2 + ad[2] * i3));
                    let bi = [i0, i1, i2, i3]
                        .iter()
                        .zip(bd)
                        .enumerate()
                        .map(|(k, (&i, n))| {
                            if n == 1 {
                                0
                            } else {
                                i * bd[..k].iter().product::<usize>()
                            }
                        })
                        .sum::<usize>();
                    out.push(f(f64::from(a[ai]), f64::from(b[bi])) as f32);
                }
            }
        }
    }
    out
}

#[test]
fn add_and_mul_broadcast() {
    let mut rng = Rng::new(5);
    let ad = [8, 3, 2, 1];
    for bd in [
        [8, 3, 2, 1],
        [8, 1, 1, 1],
        [1, 3, 1, 1],
        [8, 1, 2, 1],
        [1, 1, 1, 1],
    ] {
        let a = rng.vec(48);
        let b = rng.vec(bd.iter().product());
        for (mul, f) in [
            (false, (|x, y| x + y) as fn(f64, f64) -> f64),
            (true, |x, y| x * y),
        ] {
            let mut h = Harness::new();
            let ai = h.input_f32("a", &ad, a.clone());
            let bi = h.input_f32("b", &bd, b.clone());
            let y = if mul {
                h.g.mul(ai, bi)
            } else {
                h.g.add(ai, bi)
            }
            .unwrap();
            let out = h.run_f32(y);
            assert_close(
                &format!("binary {bd:?} mul={mul}"),
                &out,
                &broadcast_ref(&a, &b, ad, bd, f),
                1e-7,
            );
        }
    }
    // An f16 weight as the broadcast operand.
    let a = rng.vec(16);
    let wb = random_weight(&mut rng, DType::F16, 8);
    let wf = dequant(DType::F16, &wb);
    let mut h = Harness::new();
    let ai = h.input_f32("a", &[8, 2], a.clone());
    let w = h.weight("w", DType::F16, &[8], wb);
    let y = h.g.mul(ai, w).unwrap();
    let out = h.run_f32(y);
    assert_close(
        "mul by f16 weight",
        &out,
        &broadcast_ref(&a, &wf, [8, 2, 1, 1], [8, 1, 1, 1], |x, y| x * y),
        1e-7,
    );
}

#[test]
fn unary_and_glu_ops() {
    let mut rng = Rng::new(6);
    let x: Vec<f32> = rng.vec(300).iter().map(|v| v * 6.0).collect();
    let gelu = |v: f64| {
        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
    };
    let silu = |v: f64| v / (1.0 + (-v).exp());
    type Reference = Box<dyn Fn(f64) -> f64>;
    let cases: Vec<(UnaryOp, Reference)> = vec![
        (UnaryOp::Scale(0.37), Box::new(|v| v * 0.37)),
        (UnaryOp::Gelu, Box::new(gelu)),
        (UnaryOp::Silu, Box::new(silu)),
        (UnaryOp::Softcap(2.5), Box::new(|v| 2.5 * (v / 2.5).tanh())),
    ];
    for (op, f) in cases {
        let mut h = Harness::new();
        let xi = h.input_f32("x", &[100, 3], x.clone());
        let y = h.g.unary(op, xi).unwrap();
        let out = h.run_f32(y);
        let reference: Vec<f32> = x.iter().map(|&v| f(f64::from(v)) as f32).collect();
        assert_close(&format!("{op:?}"), &out, &reference, 1e-6);
    }
    let up = rng.vec(300);
    for (op, f) in [
        (GluOp::GeGlu, gelu as fn(f64) -> f64),
        (GluOp::SwiGlu, silu),
    ] {
        let mut h = Harness::new();
        let gi = h.input_f32("gate", &[100, 3], x.clone());
        let ui = h.input_f32("up", &[100, 3], up.clone());
        let y = h.g.glu(op, gi, ui).unwrap();
        let out = h.run_f32(y);
        let reference: Vec<f32> = x
            .iter()
            .zip(&up)
            .map(|(&g, &u)| (f(f64::from(g)) * f64::from(u)) as f32)
            .collect();
        assert_close(&format!("{op:?}"), &out, &reference, 1e-6);
    }
}

#[test]
fn rms_norm_with_and_without_weight() {
    let mut rng = Rng::new(7);
    let (n, rows) = (96, 5);
    let x = rng.vec(n * rows);
    let w = rng.vec(n);
    for with_weight in [false, true] {
        let mut h = Harness::new();
        let xi = h.input_f32("x", &[n, rows], x.clone());
        let wi = with_weight.then(|| {
            h.weight(
                "w",
                DType::F32,
                &[n],
                w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        });
        let y = h.g.rms_norm(xi, wi, 1e-6).unwrap();
        let out = h.run_f32(y);
        let mut reference = Vec::new();
        for r in 0..rows {
            let row = &x[r * n..(r + 1) * n];
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            for (i, &v) in row.iter().enumerate() {
                let wv = if with_weight { f64::from(w[i]) } else { 1.0 };
                reference.push((f64::from(v) * inv * wv) as f32);
            }
        }
        assert_close(
            &format!("rms_norm weight={with_weight}"),
            &out,
            &reference,
            1e-6,
        );
    }
}

fn ref_rope(
    x: &[f32],
    pos: &[i32],
    n_dims: usize,
    n_heads: usize,
    theta: f64,
    n_rot: usize,
    ff: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = n_rot / 2;
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..n_heads {
            let base = (t * n_heads + h) * n_dims;
            for i in 0..half {
                let mut freq = theta.powf(-2.0 * i as f64 / n_rot as f64);
                if let Some(ff) = ff {
                    freq /= f64::from(ff[i]);
                }
                let a = f64::from(p) * freq;
                let (x0, x1) = (f64::from(x[base + i]), f64::from(x[base + i + half]));
                out[base + i] = (x0 * a.cos() - x1 * a.sin()) as f32;
                out[base + i + half] = (x0 * a.sin() + x1 * a.cos()) as f32;
            }
        }
    }
    out
}

#[test]
fn rope_neox_full_partial_and_with_freq_factors() {
    let mut rng = Rng::new(8);
    let (n_heads, t) = (3, 4);
    let pos = vec![0, 5, 17, 300];
    for (n_dims, n_rot, theta, factors) in [
        (64, 64, 10000.0, false),
        (64, 32, 10000.0, false),
        // Gemma 4 full layers: all dims "rotated", factors 1 on the first quarter, 1e30 after.
        (64, 64, 1e6, true),
    ] {
        let x = rng.vec(n_dims * n_heads * t);
        let ff: Vec<f32> = (0..n_rot / 2)
            .map(|i| if i < n_rot / 8 { 1.0 } else { 1e30 })
            .collect();
        let mut h = Harness::new();
        let xi = h.input_f32("x", &[n_dims, n_heads, t], x.clone());
        let pi = h.input_i32("pos", &[t], pos.clone());
        let fi = factors.then(|| h.input_f32("ff", &[n_rot / 2], ff.clone()));
        let y =
            h.g.rope(
                xi,
                pi,
                RopeParams {
                    theta: theta as f32,
                    n_rot,
                },
                fi,
            )
            .unwrap();
        let out = h.run_f32(y);
        let reference = ref_rope(
            &x,
            &pos,
            n_dims,
            n_heads,
            theta,
            n_rot,
            factors.then_some(&ff[..]),
        );
        assert_close(
            &format!("rope dims {n_dims} rot {n_rot} factors {factors}"),
            &out,
            &reference,
            2e-5,
        );
        if factors {
            // Dims past the first quarter of each half pass through unchanged.
            assert_eq!(out[n_rot / 8 + 1], x[n_rot / 8 + 1]);
        }
    }
}

#[test]
fn softmax_rows() {
    let mut rng = Rng::new(9);
    let x: Vec<f32> = rng.vec(70).iter().map(|v| v * 20.0).collect();
    let mut h = Harness::new();
    let xi = h.input_f32("x", &[35, 2], x.clone());
    let y = h.g.softmax(xi).unwrap();
    let out = h.run_f32(y);
    let mut reference = Vec::new();
    for row in x.chunks(35) {
        let m = row.iter().fold(f64::MIN, |a, &v| a.max(f64::from(v)));
        let s: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        reference.extend(row.iter().map(|&v| ((f64::from(v) - m).exp() / s) as f32));
    }
    assert_close("softmax", &out, &reference, 1e-6);
}

#[test]
fn concat_along_each_dim() {
    let mut rng = Rng::new(10);
    for dim in 0..3 {
        let mut ad = [4, 3, 2, 1];
        let mut bd = ad;
        bd[dim] = 5;
        let a = rng.vec(ad.iter().product());
        let b = rng.vec(bd.iter().product());
        let mut h = Harness::new();
        let ai = h.input_f32("a", &ad, a.clone());
        let bi = h.input_f32("b", &bd, b.clone());
        let y = h.g.concat(ai, bi, dim).unwrap();
        let out = h.run_f32(y);
        ad[dim] += 5;
        let mut reference = Vec::new();
        for i2 in 0..ad[2] {
            for i1 in 0..ad[1] {
                for i0 in 0..ad[0] {
                    let idx = [i0, i1, i2];
                    let a_dims = [4, 3, 2];
                    let v = if idx[dim] < a_dims[dim] {
                        a[i0 + 4 * (i1 + 3 * i2)]
                    } else {
                        let mut j = idx;
                        j[dim] -= a_dims[dim];
                        b[j[0] + bd[0] * (j[1] + bd[1] * j[2])]
                    };
                    reference.push(v);
                }
            }
        }
        assert_eq!(out, reference, "dim {dim}");
    }
}

#[test]
fn permute_view_reshape_contiguous() {
    let mut rng = Rng::new(11);
    let (a, b, c) = (5, 3, 4);
    let x = rng.vec(a * b * c);
    let mut h = Harness::new();
    let xi = h.input_f32("x", &[a, b, c], x.clone());
    // [a, b, c] → [c, a, b]: output dim i is input dim axes[i].
    let p = h.g.permute(xi, [2, 0, 1, 3]).unwrap();
    let y = h.g.contiguous(p).unwrap();
    let r = h.g.reshape(y, Shape::new(&[c * a, b]).unwrap()).unwrap();
    let s = h.g.scale(r, 1.0).unwrap();
    let out = h.run_f32(s);
    let mut reference = Vec::new();
    for ib in 0..b {
        for ia in 0..a {
            for ic in 0..c {
                reference.push(x[ia + a * (ib + b * ic)]);
            }
        }
    }
    assert_eq!(out, reference);
}

#[test]
fn write_rows_into_f32_and_f16_states() {
    let mut rng = Rng::new(12);
    for ty in [DType::F32, DType::F16] {
        let (row, n_rows) = (16, 6);
        let init = rng.vec(row * n_rows);
        let src = rng.vec(row * 2);
        let mut h = Harness::new();
        let st = h.state("cache", ty, &[row, n_rows], init.clone());
        let si = h.input_f32("src", &[row, 2], src.clone());
        let slots = h.input_i32("slots", &[2], vec![4, 1]);
        let w = h.g.write_rows(st, si, slots).unwrap();
        let (outs, states) = h.run(&[w]).unwrap();
        let mut reference = init.clone();
        reference[4 * row..5 * row].copy_from_slice(&src[..row]);
        reference[row..2 * row].copy_from_slice(&src[row..]);
        let tol = if ty == DType::F16 { 1e-3 } else { 0.0 };
        let out = outs[0].clone().into_f32().unwrap();
        let state = states[0].clone().into_f32().unwrap();
        assert_close(&format!("write_rows {ty} output"), &out, &reference, tol);
        assert_close(&format!("write_rows {ty} state"), &state, &reference, tol);
    }
    // A slot past the end is a clean error.
    let mut h = Harness::new();
    let st = h.state("cache", DType::F32, &[4, 3], vec![1.0; 12]);
    let si = h.input_f32("src", &[4, 1], vec![1.0; 4]);
    let slots = h.input_i32("slots", &[1], vec![3]);
    let w = h.g.write_rows(st, si, slots).unwrap();
    let err = h.run(&[w]).unwrap_err();
    assert!(
        err.to_string().contains("slot 3 (row 0) is outside 0..3"),
        "{err}"
    );
}

#[test]
fn argmax_and_top_k_take_the_first_of_ties() {
    let x = vec![
        0.5, 2.0, -1.0, 2.0, 1.5, /* row 2 */ -3.0, -1.0, -2.0, -1.0, -5.0,
    ];
    let mut h = Harness::new();
    let xi = h.input_f32("x", &[5, 2], x.clone());
    let a = h.g.argmax(xi).unwrap();
    let k = h.g.top_k(xi, 3).unwrap();
    let (outs, _) = h.run(&[a, k]).unwrap();
    assert_eq!(outs[0].clone().into_i32().unwrap(), [1, 1]);
    assert_eq!(outs[1].clone().into_i32().unwrap(), [1, 3, 4, 1, 3, 2]);
}

/// The experts' weighted sum has the bits of the multiply and chain of adds it stands for, for
/// dense inputs and for a strided view of the weights; its shape checks name the op.
#[test]
fn moe_sum_is_a_multiply_then_adds_in_slot_order() {
    let (hd, k, t) = (7, 5, 3);
    let mut rng = Rng::new(41);
    let xs = rng.vec(hd * k * t);
    let ws = rng.vec(2 * k * t);
    let mut h = Harness::new();
    let x = h.input_f32("x", &[hd, k, t], xs);
    let w_all = h.input_f32("w", &[2 * k, t], ws);
    // Every other weight of a 2k-wide row: a strided view.
    let w =
        h.g.view(
            w_all,
            Shape::new(&[k, t]).unwrap(),
            [2, 2 * k, 2 * k * t, 2 * k * t],
            1,
        )
        .unwrap();
    let fused = h.g.moe_sum(x, w).unwrap();
    let wc = h.g.contiguous(w).unwrap();
    let w3 = h.g.reshape(wc, Shape::new(&[1, k, t]).unwrap()).unwrap();
    let m = h.g.mul(x, w3).unwrap();
    let strides = [1, hd * k, hd * k * t, hd * k * t];
    let mut sum =
        h.g.view(m, Shape::new(&[hd, t]).unwrap(), strides, 0)
            .unwrap();
    for j in 1..k {
        let part =
            h.g.view(m, Shape::new(&[hd, t]).unwrap(), strides, j * hd)
                .unwrap();
        sum = h.g.add(sum, part).unwrap();
    }
    let summed = h.g.contiguous(sum).unwrap();
    let bad = h.input_f32("bad", &[k + 1, t], vec![0.0; (k + 1) * t]);
    let err = h.g.moe_sum(x, bad).unwrap_err().to_string();
    assert!(
        err.contains("moe_sum") && err.contains("do not fit"),
        "{err}"
    );
    let (outs, _) = h.run(&[fused, summed]).unwrap();
    let (a, b) = (
        outs[0].clone().into_f32().unwrap(),
        outs[1].clone().into_f32().unwrap(),
    );
    assert_eq!(a.len(), hd * t);
    assert!(
        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
        "{a:?} != {b:?}"
    );
}

/// NaNs never win an argmax, even at index 0; a row with no other value gives 0.
#[test]
fn argmax_skips_nans() {
    let nan = f32::NAN;
    let x = vec![
        nan,
        -2.0,
        3.0,
        nan,
        3.0,
        /* row 2 */ nan,
        nan,
        nan,
        nan,
        nan, /* row 3 */
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        nan,
        f32::NEG_INFINITY,
        -1e30,
    ];
    let mut h = Harness::new();
    let xi = h.input_f32("x", &[5, 3], x);
    let a = h.g.argmax(xi).unwrap();
    let (outs, _) = h.run(&[a]).unwrap();
    assert_eq!(outs[0].clone().into_i32().unwrap(), [2, 0, 4]);
}

#[test]
fn moe_weights_renormalise_and_scale() {
    let probs = vec![0.1, 0.4, 0.2, 0.3, /* t1 */ 0.25, 0.25, 0.4, 0.1];
    let ids = vec![1, 3, 2, 0];
    let scale = [2.0f32, 3.0, 4.0, 5.0];
    for renorm in [false, true] {
        let mut h = Harness::new();
        let p = h.input_f32("p", &[4, 2], probs.clone());
        let i = h.input_i32("ids", &[2, 2], ids.clone());
        let s = h.weight(
            "s",
            DType::F32,
            &[4],
            scale.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        let y = h.g.moe_weights(p, i, Some(s), renorm).unwrap();
        let out = h.run_f32(y);
        let (n0, n1) = if renorm { (0.7, 0.65) } else { (1.0, 1.0) };
        let reference = [
            0.4 / n0 * 3.0,
            0.3 / n0 * 5.0,
            0.4 / n1 * 4.0,
            0.25 / n1 * 2.0,
        ];
        assert_close(
            &format!("moe_weights renorm={renorm}"),
            &out,
            &reference,
            1e-6,
        );
    }
}

#[test]
fn graphs_rerun_with_new_inputs() {
    use graph::{Backend, Bindings, CpuBackend, HostData};
    let mut g = graph::GraphBuilder::new();
    let x = g.input("x", DType::F32, Shape::new(&[3]).unwrap()).unwrap();
    let y = g.unary(UnaryOp::Scale(2.0), x).unwrap();
    let graph = g.finish(&[y]).unwrap();
    let mut cpu = CpuBackend::new();
    let exe = cpu.load(&graph, &Bindings::new()).unwrap();
    for k in 1..4 {
        let v = [k as f32, 1.0, -1.0];
        cpu.write(cpu.buffer_of(exe, x).unwrap(), 0, HostData::F32(&v))
            .unwrap();
        cpu.run(exe).unwrap();
        let out = cpu
            .read(cpu.buffer_of(exe, y).unwrap())
            .unwrap()
            .into_f32()
            .unwrap();
        assert_eq!(out, [2.0 * k as f32, 2.0, -2.0]);
    }
}

#[test]
fn loading_checks_bindings() {
    use graph::{Backend, Bindings, CpuBackend};
    let mut g = graph::GraphBuilder::new();
    let w = g
        .weight("blk.0.w", DType::F32, Shape::new(&[4, 2]).unwrap())
        .unwrap();
    let x = g.input("x", DType::F32, Shape::new(&[4]).unwrap()).unwrap();
    let y = g.matmul(w, x).unwrap();
    let graph = g.finish(&[y]).unwrap();
    let mut cpu = CpuBackend::new();
    let err = cpu.load(&graph, &Bindings::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "binding of blk.0.w: weight leaf is not bound to a buffer"
    );
    let wrong = cpu.alloc(DType::F32, Shape::new(&[4, 3]).unwrap()).unwrap();
    let mut b = Bindings::new();
    b.bind(w, wrong);
    let err = cpu.load(&graph, &b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "binding of blk.0.w: leaf is F32 [4, 2], buffer is F32 [4, 3]"
    );
}
