//! The speculative loop with a test drafter that replays the target's own greedy continuation
//! with random corruptions: full, partial and zero acceptance, KV truncation and the hidden
//! hand-over at every offset; the output always equals plain greedy decoding.

use proptest::prelude::*;
use target::{
    generate, generate_speculative, Draft, DraftRequest, ExternalDrafter, LogitRows, Sampler,
    SamplingParams, StepOutput, Target, TargetOptions, Verified,
};

use crate::testing::{assert_close, load_cpu};

/// Drafts the true continuation, corrupting each drafted token with probability `p_bad`; checks
/// the hidden state it is handed against the target's own.
struct Replay {
    truth: Vec<u32>,
    hidden: Vec<f32>,
    n_embd: usize,
    p_bad: f64,
    state: u64,
    checked: usize,
}

impl Replay {
    fn coin(&mut self) -> f64 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl ExternalDrafter for Replay {
    fn name(&self) -> &str {
        "replay"
    }
    fn max_gamma(&self) -> usize {
        16
    }
    fn begin(&mut self, _: &mut Target, _: &[u32], _: &StepOutput) -> target::Result<()> {
        Ok(())
    }
    fn draft(
        &mut self,
        _: &mut Target,
        r: &DraftRequest<'_>,
        _: &Sampler,
    ) -> target::Result<Draft> {
        // The hidden handed over is the target's post-norm hidden of the last committed token.
        let h = self.n_embd;
        let at = r.position - 1;
        assert_close(
            "hidden hand-over",
            r.last_hidden,
            &self.hidden[at * h..(at + 1) * h],
            1e-4,
        );
        self.checked += 1;
        let start = r.history.len();
        let mut tokens = Vec::new();
        for i in 0..r.gamma {
            let Some(&t) = self.truth.get(start + i) else {
                break;
            };
            tokens.push(if self.coin() < self.p_bad {
                (t + 1) % 1024
            } else {
                t
            });
        }
        Ok(Draft {
            tokens,
            probs: None,
        })
    }
    fn accept(&mut self, _: &mut Target, v: &Verified<'_>) -> target::Result<()> {
        assert_eq!(v.outputs.hidden.len() % self.n_embd, 0);
        Ok(())
    }
}

fn options() -> TargetOptions {
    TargetOptions {
        n_ctx: 160,
        max_batch: 10,
        ..Default::default()
    }
}

/// Plain greedy continuation and the post-norm hidden of every position of prompt + output.
fn reference(prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut t = load_cpu("dense.gguf", &options());
    let mut s = Sampler::new(SamplingParams::default());
    let out = generate(&mut t, prompt, &mut s, n, &|_| false, &mut |_| Ok(())).unwrap();
    let mut all = prompt.to_vec();
    all.extend(&out.tokens);
    let mut full = load_cpu("dense.gguf", &options());
    let mut hidden = Vec::new();
    for chunk in all.chunks(10) {
        hidden.extend(
            full.forward(chunk, LogitRows::None, &[], false)
                .unwrap()
                .hidden,
        );
    }
    (out.tokens, hidden)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]

    #[test]
    fn corrupted_replay_output_equals_greedy(
        prompt in prop::collection::vec(14u32..1024, 3..30),
        gamma in 1usize..9,
        p_bad in prop::sample::select(vec![0.0, 0.2, 0.5, 1.0]),
        seed in any::<u64>(),
    ) {
        let n = 40;
        let (greedy, hidden) = reference(&prompt, n);
        let mut truth = prompt.clone();
        truth.extend(&greedy);
        let mut drafter = Replay { truth, hidden, n_embd: 256, p_bad, state: seed, checked: 0 };
        let mut t = load_cpu("dense.gguf", &options());
        let mut s = Sampler::new(SamplingParams::default());
        let out = generate_speculative(&mut t, &mut drafter, &prompt, &mut s, n, gamma, &|_| false, &mut |_| Ok(())).unwrap();
        prop_assert_eq!(&out.tokens, &greedy);
        prop_assert!(drafter.checked > 0);
        if p_bad == 0.0 {
            // Every draft right: each round commits gamma + 1 tokens (but the last, cut at n).
            prop_assert!(out.rounds[..out.rounds.len() - 1].iter().all(|r| r.accepted == r.drafted.len()));
        }
        if p_bad == 1.0 {
            prop_assert!(out.rounds.iter().all(|r| r.accepted == 0));
        }
    }
}

#[test]
fn gamma_out_of_range_is_an_error() {
    let mut t = load_cpu("dense.gguf", &options());
    let mut d = Replay {
        truth: vec![],
        hidden: vec![],
        n_embd: 256,
        p_bad: 0.0,
        state: 1,
        checked: 0,
    };
    let mut s = Sampler::new(SamplingParams::default());
    let err = generate_speculative(
        &mut t,
        &mut d,
        &[2, 3],
        &mut s,
        4,
        0,
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("gamma 0 is outside 1..=16"),
        "{err}"
    );
    let err = generate_speculative(
        &mut t,
        &mut d,
        &[2, 3],
        &mut s,
        4,
        12,
        &|_| false,
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("gamma 12 needs verify batches of 13 tokens"),
        "{err}"
    );
}
