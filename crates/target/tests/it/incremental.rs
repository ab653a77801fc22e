//! Incremental decoding equals one full forward: prefill then one token at a time, random
//! chunkings, a ring that wraps (small max_batch), and verify-then-truncate rollbacks.

use proptest::prelude::*;
use target::{LogitRows, TargetOptions};

use crate::testing::{assert_close, load_cpu, Reference};

/// Runs `ids` in chunks of the given sizes and returns every row's logits.
fn chunked_logits(model: &str, ids: &[u32], chunks: &[usize], max_batch: usize) -> Vec<f32> {
    let mut t = load_cpu(
        model,
        &TargetOptions {
            n_ctx: 128,
            max_batch,
            ..Default::default()
        },
    );
    let mut out = Vec::new();
    let mut at = 0;
    for &n in chunks {
        let n = n.min(ids.len() - at);
        if n == 0 {
            break;
        }
        out.extend(
            t.forward(&ids[at..at + n], LogitRows::All, &[], false)
                .unwrap()
                .logits,
        );
        at += n;
    }
    assert_eq!(at, ids.len(), "chunks do not cover the sequence");
    out
}

#[test]
fn token_by_token_equals_full_forward_with_a_wrapping_ring() {
    // max_batch 4 makes the sliding ring 32 + 4 = 36 rows, so 68 positions wrap it.
    for (model, reference) in [
        ("dense.gguf", "dense.ref.safetensors"),
        ("e.gguf", "e.ref.safetensors"),
        ("moe.gguf", "moe.ref.safetensors"),
    ] {
        let r = Reference::open(reference);
        let ids = r.tokens("full_ids");
        let (_, full) = r.f32("full_logits");
        let mut chunks = vec![4; 9];
        chunks.extend(vec![1; ids.len() - 36]);
        let out = chunked_logits(model, &ids, &chunks, 4);
        assert_close(
            &format!("{model} incremental vs transformers full forward"),
            &out,
            &full,
            1e-4,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn random_chunkings_equal_one_forward(chunks in prop::collection::vec(1usize..9, 12..40)) {
        let r = Reference::open("dense.ref.safetensors");
        let ids = r.tokens("full_ids");
        let (_, full) = r.f32("full_logits");
        let total: usize = chunks.iter().sum();
        prop_assume!(total >= ids.len());
        let out = chunked_logits("dense.gguf", &ids, &chunks, 8);
        assert_close("random chunking", &out, &full, 1e-4);
    }

    #[test]
    fn verify_then_truncate_equals_never_verifying(splits in prop::collection::vec((1usize..6, 0usize..6, 0u32..1024), 4..10)) {
        // Each split: commit `keep` true tokens after running a batch of `keep` true tokens
        // followed by `junk` wrong ones, then truncating the junk away.
        let r = Reference::open("dense.ref.safetensors");
        let ids = r.tokens("full_ids");
        let (_, full) = r.f32("full_logits");
        let v = 1024;
        // Batches of up to 10 tokens: the sliding ring (32 + 10 rows) wraps within 68 positions.
        let mut t = load_cpu("dense.gguf", &TargetOptions { n_ctx: 128, max_batch: 10, ..Default::default() });
        let mut at = 0;
        for (keep, junk, junk_tok) in splits {
            let keep = keep.min(ids.len() - at);
            if keep == 0 { break; }
            let mut batch = ids[at..at + keep].to_vec();
            batch.extend(std::iter::repeat_n(junk_tok, junk));
            let out = t.forward(&batch, LogitRows::All, &[], false).unwrap();
            assert_close("verified rows", &out.logits[..keep * v], &full[at * v..(at + keep) * v], 1e-4);
            at += keep;
            t.truncate(at).unwrap();
        }
        // Whatever remains, decoded plainly, still matches.
        while at < ids.len() {
            let out = t.forward(&ids[at..at + 1], LogitRows::All, &[], false).unwrap();
            assert_close("after rollbacks", &out.logits, &full[at * v..(at + 1) * v], 1e-4);
            at += 1;
        }
    }
}

#[test]
fn assumed_positions_count_as_committed_within_the_context() {
    let options = TargetOptions {
        n_ctx: 64,
        max_batch: 8,
        ..Default::default()
    };
    let mut t = load_cpu("dense.gguf", &options);
    t.forward(&[2, 10, 11], LogitRows::Last, &[], false)
        .unwrap();
    t.assume_positions_for_bench(40).unwrap();
    assert_eq!(t.n_past(), 43);
    // A step after them runs at position 43 and commits one more.
    t.forward(&[12], LogitRows::Last, &[], false).unwrap();
    assert_eq!(t.n_past(), 44);
    let err = t.assume_positions_for_bench(21).unwrap_err().to_string();
    assert!(
        err.contains("65 positions exceeds the maximum of 64"),
        "{err}"
    );
    assert_eq!(t.n_past(), 44, "a refused call changes nothing");
    t.truncate(3).unwrap();
    assert_eq!(t.n_past(), 3);
}
