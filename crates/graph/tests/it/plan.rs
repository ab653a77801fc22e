//! Memory planning: buffers are reused once their values are dead, outputs are kept, and a
//! long chain computes the same values as with no reuse.

use graph::{DType, GraphBuilder, MemoryPlan, Shape, Storage};

use crate::harness::{assert_close, Harness, Rng};

#[test]
fn a_chain_reuses_two_slots_and_keeps_outputs() {
    let mut g = GraphBuilder::new();
    let x = g
        .input("x", DType::F32, Shape::new(&[64]).unwrap())
        .unwrap();
    let mut y = x;
    let mut kept = Vec::new();
    for i in 0..10 {
        y = g.scale(y, 1.5).unwrap();
        if i == 3 {
            kept.push(y);
        }
    }
    kept.push(y);
    let graph = g.finish(&kept).unwrap();
    let plan = MemoryPlan::new(&graph);
    assert!(
        plan.slots.len() <= 3,
        "{} slots for a chain",
        plan.slots.len()
    );
    let Storage::Slot(kept_slot) = plan.storage[kept[0].index()] else {
        panic!("output has no slot")
    };
    for (i, s) in plan.storage.iter().enumerate().skip(kept[0].index() + 1) {
        assert_ne!(
            s,
            &Storage::Slot(kept_slot),
            "node {i} reuses an output's slot"
        );
    }
}

#[test]
fn reuse_gives_the_same_values() {
    let mut rng = Rng::new(21);
    let x0 = rng.vec(32);
    let mut h = Harness::new();
    let x = h.input_f32("x", &[32], x0.clone());
    let mut y = x;
    let mut reference = x0.clone();
    for i in 0..12 {
        let s = if i % 2 == 0 {
            h.g.gelu(y).unwrap()
        } else {
            h.g.scale(y, 0.9).unwrap()
        };
        let z = h.g.add(s, y).unwrap();
        for r in reference.iter_mut() {
            let v = f64::from(*r);
            let sv = if i % 2 == 0 {
                0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
            } else {
                v * 0.9
            };
            *r = (sv + v) as f32;
        }
        y = z;
    }
    let out = h.run_f32(y);
    assert_close("chain with reuse", &out, &reference, 1e-5);
}
