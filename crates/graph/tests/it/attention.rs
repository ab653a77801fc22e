//! Attention against a naive reference that scans every position and applies the visibility
//! rules one by one: GQA, head dims 256 and 512, linear and wrapped ring K/V, causal, sliding
//! window, bidirectional and explicit masks, f32 and f16 caches.

use graph::{AttnMask, AttnParams, DType, KvLayout};

use crate::harness::{assert_close, Harness, Rng};

struct Case {
    d: usize,
    n_head: usize,
    n_head_kv: usize,
    cap: usize,
    n_kv: i32,
    q_pos: Vec<i32>,
    params: AttnParams,
    kv_type: DType,
}

fn visible(c: &Case, q: i32, p: i32) -> bool {
    let valid = match c.params.kv_layout {
        KvLayout::Linear => p < c.n_kv,
        KvLayout::Ring => p < c.n_kv && p >= c.n_kv - c.cap as i32,
    };
    valid
        && match c.params.mask {
            AttnMask::None | AttnMask::Explicit => true,
            AttnMask::Causal => p <= q,
            AttnMask::SlidingWindow { window } => p <= q && p > q - window as i32,
        }
}

fn reference(c: &Case, q: &[f32], k: &[f32], v: &[f32], mask: &[f32]) -> Vec<f32> {
    let t = c.q_pos.len();
    let group = c.n_head / c.n_head_kv;
    let mut out = vec![0.0f32; c.d * c.n_head * t];
    for (ti, &qp) in c.q_pos.iter().enumerate() {
        for h in 0..c.n_head {
            let g = h / group;
            let qv = &q[(ti * c.n_head + h) * c.d..][..c.d];
            let mut scores = Vec::new();
            for p in 0..c.n_kv.max(0) {
                if !visible(c, qp, p) {
                    continue;
                }
                let slot = match c.params.kv_layout {
                    KvLayout::Linear => p as usize,
                    KvLayout::Ring => p as usize % c.cap,
                };
                let kv = &k[(slot * c.n_head_kv + g) * c.d..][..c.d];
                let mut s = f64::from(c.params.scale)
                    * qv.iter()
                        .zip(kv)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>();
                if c.params.mask == AttnMask::Explicit {
                    s += f64::from(mask[slot + ti * c.cap]);
                }
                if s.is_finite() {
                    scores.push((slot, s));
                }
            }
            if scores.is_empty() {
                continue;
            }
            let m = scores.iter().fold(f64::MIN, |a, &(_, s)| a.max(s));
            let z: f64 = scores.iter().map(|&(_, s)| (s - m).exp()).sum();
            let o = &mut out[(ti * c.n_head + h) * c.d..][..c.d];
            for &(slot, s) in &scores {
                let w = (s - m).exp() / z;
                let vv = &v[(slot * c.n_head_kv + g) * c.d..][..c.d];
                for (x, &y) in o.iter_mut().zip(vv) {
                    *x += (w * f64::from(y)) as f32;
                }
            }
        }
    }
    out
}

fn check(c: Case, seed: u64) {
    let mut rng = Rng::new(seed);
    let t = c.q_pos.len();
    let q = rng.vec(c.d * c.n_head * t);
    // Every slot holds data, including stale ones, so a visibility bug changes the result.
    let round = |v: Vec<f32>| -> Vec<f32> {
        if c.kv_type == DType::F16 {
            v.into_iter()
                .map(|x| half::f16::from_f32(x).to_f32())
                .collect()
        } else {
            v
        }
    };
    let k = round(rng.vec(c.d * c.n_head_kv * c.cap));
    let v = round(rng.vec(c.d * c.n_head_kv * c.cap));
    let mask: Vec<f32> = (0..c.cap * t)
        .map(|_| {
            if rng.below(4) == 0 {
                f32::NEG_INFINITY
            } else {
                rng.sym()
            }
        })
        .collect();
    let mut h = Harness::new();
    let qi = h.input_f32("q", &[c.d, c.n_head, t], q.clone());
    let ki = h.state("k", c.kv_type, &[c.d, c.n_head_kv, c.cap], k.clone());
    let vi = h.state("v", c.kv_type, &[c.d, c.n_head_kv, c.cap], v.clone());
    let pi = h.input_i32("q_pos", &[t], c.q_pos.clone());
    let ni = h.input_i32("n_kv", &[1], vec![c.n_kv]);
    let mi = (c.params.mask == AttnMask::Explicit)
        .then(|| h.input_f32("mask", &[c.cap, t], mask.clone()));
    let y = h.g.attention(qi, ki, vi, pi, ni, mi, c.params).unwrap();
    let out = h.run_f32(y);
    let expected = reference(&c, &q, &k, &v, &mask);
    let label = format!(
        "d {} heads {}/{} {:?} {:?} n_kv {} {}",
        c.d, c.n_head, c.n_head_kv, c.params.kv_layout, c.params.mask, c.n_kv, c.kv_type
    );
    if expected.iter().all(|&x| x == 0.0) {
        assert!(
            out.iter().all(|&x| x == 0.0),
            "{label}: expected no visible keys"
        );
    } else {
        assert_close(&label, &out, &expected, 1e-5);
    }
}

fn params(mask: AttnMask, kv_layout: KvLayout) -> AttnParams {
    AttnParams {
        scale: 0.125,
        mask,
        kv_layout,
    }
}

#[test]
fn gqa_causal_linear_both_head_dims() {
    for (d, n_head_kv) in [(256, 2), (256, 1), (512, 2), (512, 4)] {
        check(
            Case {
                d,
                n_head: 4,
                n_head_kv,
                cap: 40,
                n_kv: 20,
                q_pos: vec![17, 18, 19],
                params: params(AttnMask::Causal, KvLayout::Linear),
                kv_type: DType::F32,
            },
            d as u64 + n_head_kv as u64,
        );
    }
}

#[test]
fn sliding_window_over_a_wrapped_ring() {
    for (cap, window, n_kv) in [(8, 5, 30), (12, 8, 13), (16, 16, 40)] {
        let q_pos = vec![n_kv - 3, n_kv - 2, n_kv - 1];
        check(
            Case {
                d: 32,
                n_head: 4,
                n_head_kv: 2,
                cap,
                n_kv,
                q_pos,
                params: params(AttnMask::SlidingWindow { window }, KvLayout::Ring),
                kv_type: DType::F32,
            },
            cap as u64,
        );
    }
}

#[test]
fn bidirectional_explicit_and_f16_caches() {
    for (mask, kv_type) in [
        (AttnMask::None, DType::F32),
        (AttnMask::Explicit, DType::F32),
        (AttnMask::Causal, DType::F16),
        (AttnMask::SlidingWindow { window: 4 }, DType::F16),
    ] {
        check(
            Case {
                d: 64,
                n_head: 6,
                n_head_kv: 3,
                cap: 24,
                n_kv: 21,
                q_pos: vec![14, 20, 3],
                params: params(mask, KvLayout::Linear),
                kv_type,
            },
            7,
        );
    }
}

#[test]
fn no_visible_keys_gives_zeros() {
    check(
        Case {
            d: 32,
            n_head: 2,
            n_head_kv: 1,
            cap: 8,
            n_kv: 0,
            q_pos: vec![0, 1],
            params: params(AttnMask::Causal, KvLayout::Linear),
            kv_type: DType::F32,
        },
        3,
    );
}

#[test]
fn n_kv_beyond_a_linear_cache_is_an_error() {
    let mut h = Harness::new();
    let q = h.input_f32("q", &[8, 1, 1], vec![1.0; 8]);
    let k = h.state("k", DType::F32, &[8, 1, 4], vec![1.0; 32]);
    let v = h.state("v", DType::F32, &[8, 1, 4], vec![1.0; 32]);
    let p = h.input_i32("q_pos", &[1], vec![4]);
    let n = h.input_i32("n_kv", &[1], vec![5]);
    let y =
        h.g.attention(
            q,
            k,
            v,
            p,
            n,
            None,
            params(AttnMask::Causal, KvLayout::Linear),
        )
        .unwrap();
    let err = h.run(&[y]).unwrap_err();
    assert!(
        err.to_string()
            .contains("n_kv = 5 does not fit a linear K/V of 4 rows"),
        "{err}"
    );
}
