//! Properties: donor-layer resolution over random layer patterns (with and without KV
//! sharing), and greedy MTP speculative decoding identical to plain greedy for random prompts
//! and γ from 1 to 8.

use std::path::PathBuf;
use std::sync::Arc;

use drafter_mtp::{donor_layers, MtpDrafter};
use proptest::prelude::*;
use target::{
    generate, generate_speculative, Gemma4Config, Sampler, SamplingParams, Target, TargetOptions,
};

fn config(is_sliding: Vec<bool>, n_kv_shared: usize) -> Gemma4Config {
    let n = is_sliding.len();
    Gemma4Config {
        n_layer: n,
        n_embd: 64,
        n_vocab: 100,
        n_ctx_train: 1024,
        n_head: 4,
        n_head_kv: vec![2; n],
        head_dim_full: 64,
        head_dim_swa: 32,
        n_ff: vec![128; n],
        eps: 1e-6,
        sliding_window: 16,
        is_sliding,
        n_kv_shared,
        rope_theta_full: 1e6,
        rope_theta_swa: 1e4,
        n_rot_full: 64,
        n_rot_swa: 32,
        final_logit_softcap: None,
        n_embd_per_layer: 0,
        moe: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn donors_are_the_last_owner_of_each_type(pattern in prop::collection::vec(any::<bool>(), 2..40), shared_frac in 0usize..4, assistant in prop::collection::vec(any::<bool>(), 1..6)) {
        let n = pattern.len();
        let n_kv_shared = (n * shared_frac / 8).min(n - 1);
        let cfg = config(pattern.clone(), n_kv_shared);
        let first_shared = n - n_kv_shared;
        match donor_layers(&assistant, &cfg) {
            Ok(donors) => {
                for (&sliding, &d) in assistant.iter().zip(&donors) {
                    // The donor owns its K/V, has the assistant layer's type, and no later owner
                    // of that type exists.
                    prop_assert!(d < first_shared, "donor {} is KV-shared", d);
                    prop_assert_eq!(pattern[d], sliding);
                    prop_assert!((d + 1..first_shared).all(|l| pattern[l] != sliding));
                }
            }
            Err(e) => {
                // Only when the target lacks a layer type the assistant needs (among owners).
                let types_owned: Vec<bool> = pattern[..first_shared].to_vec();
                prop_assert!(assistant.iter().any(|s| !types_owned.contains(s)) || assistant.iter().any(|s| !pattern.contains(s)), "{}", e);
            }
        }
    }
}

#[test]
fn real_5_to_1_pattern_picks_58_and_59() {
    // The seed's loader test assumed an alternating pattern (full 58, sliding 59); on the real
    // 31B pattern (5 sliding, 1 full, last layer full) the last sliding layer is 58, the last
    // full layer 59.
    let pattern: Vec<bool> = (0..60).map(|l| (l + 1) % 6 != 0).collect();
    let donors = donor_layers(&[true, true, true, false], &config(pattern, 0)).unwrap();
    assert_eq!(donors, [58, 58, 58, 59]);
    // E2B-style sharing: 35 layers, full every 5th, 20 shared → 13 (sliding) and 14 (full).
    let e2b: Vec<bool> = (0..35).map(|l| (l + 1) % 5 != 0).collect();
    let donors = donor_layers(&[true, false], &config(e2b, 20)).unwrap();
    assert_eq!(donors, [13, 14]);
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn target() -> Target {
    let file = Arc::new(gguf::GgufFile::open(fixture("dense.gguf")).unwrap());
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
    fn mtp_greedy_equals_plain_greedy(prompt in prop::collection::vec(14u32..1024, 2..40), gamma in 1usize..9, tuned in any::<bool>()) {
        let n = 24;
        let mut s = Sampler::new(SamplingParams::default());
        let plain = generate(&mut target(), &prompt, &mut s, n, &|_| false, &mut |_| Ok(())).unwrap();
        let mut t = target();
        let name = if tuned { "assistant_tuned.gguf" } else { "assistant.gguf" };
        let mut d = MtpDrafter::load(Arc::new(gguf::GgufFile::open(fixture(name)).unwrap()), &mut t).unwrap();
        let spec = generate_speculative(&mut t, &mut d, &prompt, &mut s, n, gamma, &|_| false, &mut |_| Ok(())).unwrap();
        prop_assert_eq!(spec.tokens, plain.tokens);
    }
}
