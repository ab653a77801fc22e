//! Lossless by construction: on random prompts, with any block size, γ, prefill chunking and
//! the adaptive block, greedy speculative decoding with the DFlash drafter emits exactly the
//! tokens of plain greedy decoding.

mod common;

use common::{fixture, Ref};
use drafter_dflash::DflashDrafter;
use proptest::prelude::*;
use target::{generate, generate_speculative, Sampler, SamplingParams, Target};

fn target(max_batch: usize) -> Target {
    common::target(96, max_batch)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn speculative_equals_plain_greedy(
        prompt in prop::collection::vec(5u32..1024, 1..40),
        block in 2usize..=8,
        gamma_cut in 0usize..7,
        max_batch in prop::sample::select(vec![8usize, 13, 64]),
        adaptive in any::<bool>(),
        tuned in any::<bool>(),
        n_new in 1usize..40,
    ) {
        let gamma = (block - 1).saturating_sub(gamma_cut).max(1);
        let mut t = target(max_batch);
        let path = fixture(if tuned { "dflash_tuned.gguf" } else { "dflash.gguf" });
        let mut d = DflashDrafter::open(&path, &mut t, Some(block)).unwrap();
        d.set_adaptive(adaptive);
        let mut s = Sampler::new(SamplingParams::default());
        let spec = generate_speculative(&mut t, &mut d, &prompt, &mut s, n_new, gamma, &|_| false, &mut |_| Ok(())).unwrap();
        let mut plain = target(max_batch);
        let g = generate(&mut plain, &prompt, &mut Sampler::new(SamplingParams::default()), n_new, &|_| false, &mut |_| Ok(())).unwrap();
        prop_assert_eq!(spec.tokens, g.tokens);
        prop_assert_eq!(d.context_len(), prompt.len() + n_new - 1);
    }
}

/// The reference prompt of `dflash_tuned` continues with its own greedy text, where the tuned
/// drafter is accepted in long runs: the same losslessness with real partial acceptance, at
/// every block size.
#[test]
fn partial_acceptance_is_lossless_at_every_block_size() {
    let prompt = Ref::open("dflash_tuned.ref.safetensors").u32("prompt_ids");
    let mut plain = target(16);
    let g = generate(
        &mut plain,
        &prompt,
        &mut Sampler::new(SamplingParams::default()),
        48,
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap();
    for block in 2..=8 {
        for adaptive in [false, true] {
            let mut t = target(16);
            let mut d =
                DflashDrafter::open(&fixture("dflash_tuned.gguf"), &mut t, Some(block)).unwrap();
            d.set_adaptive(adaptive);
            let mut s = Sampler::new(SamplingParams::default());
            let spec = generate_speculative(
                &mut t,
                &mut d,
                &prompt,
                &mut s,
                48,
                block - 1,
                &|_| false,
                &mut |_| Ok(()),
            )
            .unwrap();
            assert_eq!(spec.tokens, g.tokens, "block {block}, adaptive {adaptive}");
            assert!(
                spec.rounds.iter().any(|r| r.accepted > 0),
                "block {block}: something is accepted"
            );
        }
    }
}

/// One target and drafter serve several prompts in turn (the target truncated to 0 between
/// them): each run equals plain greedy decoding of its own prompt, and the drafter's context
/// restarts with the new prompt instead of refusing it.
#[test]
fn a_drafter_serves_prompts_one_after_another() {
    let reference = Ref::open("dflash_tuned.ref.safetensors").u32("prompt_ids");
    let prompts: Vec<Vec<u32>> = vec![
        reference.clone(),
        vec![7, 300, 301, 9],
        reference[..reference.len() / 2].to_vec(),
    ];
    let mut t = target(8);
    let mut d = DflashDrafter::open(&fixture("dflash_tuned.gguf"), &mut t, Some(6)).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        t.truncate(0).unwrap();
        let spec = generate_speculative(
            &mut t,
            &mut d,
            prompt,
            &mut Sampler::new(SamplingParams::default()),
            24,
            5,
            &|_| false,
            &mut |_| Ok(()),
        )
        .unwrap();
        let mut plain = target(8);
        let g = generate(
            &mut plain,
            prompt,
            &mut Sampler::new(SamplingParams::default()),
            24,
            &|_| false,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(spec.tokens, g.tokens, "prompt {i}");
        assert_eq!(d.context_len(), prompt.len() + 24 - 1, "prompt {i}");
    }
}
