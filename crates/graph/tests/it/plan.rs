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

/// A hold keeps every value its nodes touch in its slot until its `until` node: a chain that
/// would reuse two slots takes a new one for each value in the held range.
#[test]
fn a_hold_keeps_slots_until_its_node() {
    let mut g = GraphBuilder::new();
    let x = g
        .input("x", DType::F32, Shape::new(&[64]).unwrap())
        .unwrap();
    let mut chain = vec![x];
    for _ in 0..8 {
        let y = g.scale(*chain.last().unwrap(), 1.5).unwrap();
        chain.push(y);
    }
    let graph = g.finish(&[*chain.last().unwrap()]).unwrap();
    let slot = |plan: &MemoryPlan, i: usize| match plan.storage[chain[i].index()] {
        Storage::Slot(s) => s,
        ref other => panic!("node {i}: {other:?}"),
    };
    let free = MemoryPlan::new(&graph);
    assert_eq!(
        slot(&free, 1),
        slot(&free, 3),
        "without a hold the chain reuses"
    );
    // Hold the values of chain nodes 2..=5 until node 6.
    let held = MemoryPlan::with_holds(
        &graph,
        &[graph::Hold {
            nodes: (2..=5).map(|i| chain[i].index()).collect(),
            until: chain[6].index(),
        }],
    );
    // Node 1 is read by node 2 (held), so its slot stays taken through node 6 as well.
    let taken: Vec<usize> = (1..=6).map(|i| slot(&held, i)).collect();
    let mut distinct = taken.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), taken.len(), "held slots reused: {taken:?}");
    // After the hold, slots are reused again.
    assert!(taken.contains(&slot(&held, 8)), "no reuse after the hold");
}
