//! The forward pass against the transformers references: logits and every layer's hidden
//! state on the f32/f16 fixtures, and the greedy continuation.

use target::{LogitRows, TargetOptions};

use crate::testing::{argmax, assert_close, load_cpu, Reference};

const TARGETS: &[(&str, &str)] = &[
    ("dense.gguf", "dense.ref.safetensors"),
    ("e.gguf", "e.ref.safetensors"),
    ("moe.gguf", "moe.ref.safetensors"),
];

/// A 128-position context and 64-token steps: every fixture prompt in one step.
fn options() -> TargetOptions {
    TargetOptions {
        n_ctx: 128,
        max_batch: 64,
        ..Default::default()
    }
}

#[test]
fn logits_and_hidden_states_match_transformers() {
    for &(model, reference) in TARGETS {
        let r = Reference::open(reference);
        let ids = r.tokens("input_ids");
        let mut t = load_cpu(model, &options());
        let n_layer = t.config().n_layer;
        let h = t.config().n_embd;
        let layers: Vec<usize> = (0..n_layer).collect();
        let out = t.forward(&ids, LogitRows::All, &layers, true).unwrap();
        let (_, hs) = r.f32("hidden_states");
        let per = ids.len() * h;
        assert_close(
            &format!("{model} embedding"),
            out.embedding.as_ref().unwrap(),
            &hs[..per],
            1e-6,
        );
        // Every layer, the last included: transformers reports that one after the final norm,
        // and so do captures (DFlash's `target_layer_ids` index these states).
        assert_eq!(hs.len(), (n_layer + 1) * per);
        for (l, x) in &out.layers {
            assert_close(
                &format!("{model} layer {l}"),
                x,
                &hs[(l + 1) * per..(l + 2) * per],
                1e-4,
            );
        }
        let (_, prenorm) = r.f32("final_hidden_prenorm");
        assert_close(
            &format!("{model} final prenorm"),
            &out.hidden_prenorm,
            &prenorm,
            1e-4,
        );
        assert_eq!(
            out.layers[n_layer - 1].1,
            out.hidden,
            "{model}: last capture = hidden"
        );
        let (_, fin) = r.f32("final_hidden");
        assert_close(&format!("{model} final hidden"), &out.hidden, &fin, 1e-4);
        let (_, logits) = r.f32("logits");
        assert_close(&format!("{model} logits"), &out.logits, &logits, 1e-4);
    }
}

#[test]
fn greedy_continuation_matches_transformers() {
    for &(model, reference) in TARGETS {
        let r = Reference::open(reference);
        let ids = r.tokens("input_ids");
        let expected = r.tokens("greedy_tokens");
        let mut t = load_cpu(model, &options());
        let v = t.config().n_vocab;
        let out = t.forward(&ids, LogitRows::Last, &[], false).unwrap();
        let mut next = argmax(&out.logits[..v]);
        let mut got = vec![next];
        while got.len() < expected.len() {
            let out = t.forward(&[next], LogitRows::Last, &[], false).unwrap();
            next = argmax(&out.logits);
            got.push(next);
        }
        assert_eq!(got, expected, "{model}");
    }
}

/// A step asking for the last logits returns only the last hidden and pre-norm rows, equal to
/// the last rows of the same step asking for all; other rows' requests return every row.
#[test]
fn last_logits_steps_return_the_last_hidden_row() {
    let r = Reference::open("dense.ref.safetensors");
    let ids = r.tokens("input_ids");
    let opts = options();
    let mut t = load_cpu("dense.gguf", &opts);
    let h = t.config().n_embd;
    let all = t.forward(&ids, LogitRows::All, &[], false).unwrap();
    t.truncate(0).unwrap();
    let last = t.forward(&ids, LogitRows::Last, &[], false).unwrap();
    t.truncate(0).unwrap();
    let none = t.forward(&ids, LogitRows::None, &[], false).unwrap();
    assert_eq!(all.hidden.len(), ids.len() * h);
    assert_eq!(none.hidden, all.hidden);
    assert_eq!(last.hidden, all.hidden[(ids.len() - 1) * h..]);
    assert_eq!(
        last.hidden_prenorm,
        all.hidden_prenorm[(ids.len() - 1) * h..]
    );
}

#[test]
fn device_argmax_equals_the_argmax_of_the_logits() {
    let r = Reference::open("dense.ref.safetensors");
    let ids = r.tokens("input_ids");
    let opts = options();
    let mut a = load_cpu("dense.gguf", &opts);
    let mut b = load_cpu("dense.gguf", &opts);
    let v = a.config().n_vocab;
    let logits = a.forward(&ids, LogitRows::All, &[], false).unwrap().logits;
    let expected: Vec<u32> = logits.chunks(v).map(argmax).collect();
    assert_eq!(b.forward_argmax(&ids, LogitRows::All).unwrap(), expected);
    assert_eq!(
        b.forward_argmax(&[7], LogitRows::Last).unwrap(),
        [argmax(
            &a.forward(&[7], LogitRows::Last, &[], false).unwrap().logits
        )]
    );
}
