//! Greedy speculative decoding with the n-gram drafter is token-identical to plain greedy
//! decoding, on random (repetitive) prompts and γ from 1 to 8; and with temperature the loop
//! runs and keeps its rounds consistent.

use std::path::PathBuf;
use std::sync::Arc;

use drafter_ngram::NgramDrafter;
use proptest::prelude::*;
use target::{generate, generate_speculative, Sampler, SamplingParams, Target, TargetOptions};

fn load() -> Target {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/dense.gguf");
    let file = Arc::new(gguf::GgufFile::open(path).unwrap());
    let options = TargetOptions {
        n_ctx: 160,
        max_batch: 10,
        ..Default::default()
    };
    Target::load(
        file,
        Box::new(graph::CpuBackend::new()),
        &options,
        &mut |_, _| {},
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn ngram_greedy_equals_plain_greedy(motif in prop::collection::vec(14u32..1024, 2..6), reps in 2usize..6, gamma in 1usize..9) {
        let prompt: Vec<u32> = motif.iter().copied().cycle().take(motif.len() * reps).collect();
        let n = 32;
        let mut s = Sampler::new(SamplingParams::default());
        let plain = generate(&mut load(), &prompt, &mut s, n, &|_| false, &mut |_| Ok(())).unwrap();
        let mut d = NgramDrafter::new(3, 1, 8);
        let spec = generate_speculative(&mut load(), &mut d, &prompt, &mut s, n, gamma, &|_| false, &mut |_| Ok(())).unwrap();
        prop_assert_eq!(spec.tokens, plain.tokens);
        prop_assert!(spec.rounds.iter().all(|r| r.accepted <= r.drafted.len() && r.drafted.len() <= gamma));
    }
}

#[test]
fn sampled_speculative_decoding_runs_and_is_seeded() {
    let prompt: Vec<u32> = [40u32, 41, 42].iter().copied().cycle().take(12).collect();
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        seed: 5,
        ..Default::default()
    };
    let run = || {
        let mut d = NgramDrafter::new(3, 1, 8);
        let mut s = Sampler::new(params.clone());
        generate_speculative(
            &mut load(),
            &mut d,
            &prompt,
            &mut s,
            24,
            4,
            &|_| false,
            &mut |_| Ok(()),
        )
        .unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.tokens, b.tokens, "same seed, same output");
    assert_eq!(a.tokens.len(), 24);
    // The first token comes from prefill; each round commits its accepted drafts and bonus,
    // plain steps (no drafts) one token, so rounds account for at most the other 23.
    let committed: usize = a.rounds.iter().map(|r| r.accepted + 1).sum();
    assert!(
        !a.rounds.is_empty() && committed <= 23,
        "{committed} tokens from {} rounds",
        a.rounds.len()
    );
}
