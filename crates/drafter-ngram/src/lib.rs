//! A prompt-lookup drafter: finds the most recent earlier occurrence of the text's last `n`
//! tokens (longest `n` first) and proposes the tokens that followed it. No model, no GPU work;
//! useful on repetitive text (code edits, quoting) and the proof that drafters plug into the
//! target's speculative loop from their own crate.
//!
//! ```no_run
//! # fn demo(target: &mut target::Target, prompt: &[u32]) -> target::Result<()> {
//! let mut drafter = drafter_ngram::NgramDrafter::new(3, 1, 8);
//! let mut sampler = target::Sampler::new(target::SamplingParams::default());
//! let out = target::generate_speculative(target, &mut drafter, prompt, &mut sampler, 64, 4, &|_| false, &mut |_| Ok(()))?;
//! println!("{:.2} tokens per verify", out.acceptance_length());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

use target::{Draft, DraftRequest, ExternalDrafter, Sampler, StepOutput, Target, Verified};

/// The prompt-lookup drafter.
#[derive(Clone, Debug)]
pub struct NgramDrafter {
    max_n: usize,
    min_n: usize,
    max_gamma: usize,
}

impl NgramDrafter {
    /// Matches n-grams of `max_n` down to `min_n` tokens; drafts at most `max_gamma` tokens.
    pub fn new(max_n: usize, min_n: usize, max_gamma: usize) -> Self {
        let min_n = min_n.max(1);
        NgramDrafter {
            max_n: max_n.max(min_n),
            min_n,
            max_gamma: max_gamma.max(1),
        }
    }

    /// The tokens that followed the most recent earlier occurrence of `history`'s last n-gram.
    pub fn propose(&self, history: &[u32], gamma: usize) -> Vec<u32> {
        for n in (self.min_n..=self.max_n).rev() {
            if history.len() <= n {
                continue;
            }
            let key = &history[history.len() - n..];
            // Latest start strictly before the suffix itself.
            for start in (0..history.len() - n).rev() {
                if &history[start..start + n] == key {
                    let from = start + n;
                    let to = (from + gamma).min(history.len());
                    if from < to {
                        return history[from..to].to_vec();
                    }
                }
            }
        }
        Vec::new()
    }
}

impl ExternalDrafter for NgramDrafter {
    fn name(&self) -> &str {
        "ngram"
    }

    fn max_gamma(&self) -> usize {
        self.max_gamma
    }

    fn begin(
        &mut self,
        _target: &mut Target,
        _prompt: &[u32],
        _prefill: &StepOutput,
    ) -> target::Result<()> {
        Ok(())
    }

    fn draft(
        &mut self,
        _target: &mut Target,
        request: &DraftRequest<'_>,
        _sampler: &Sampler,
    ) -> target::Result<Draft> {
        Ok(Draft {
            tokens: self.propose(request.history, request.gamma),
            probs: None,
        })
    }

    fn accept(&mut self, _target: &mut Target, _verified: &Verified<'_>) -> target::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_last_ngram() {
        let d = NgramDrafter::new(3, 1, 8);
        // "a b c d a b" → last 2-gram "a b" occurred at 0, followed by "c d a b".
        assert_eq!(d.propose(&[1, 2, 3, 4, 1, 2], 3), [3, 4, 1]);
        // Longest match wins: "x a b" vs "a b".
        assert_eq!(d.propose(&[9, 1, 2, 7, 5, 1, 2, 8, 9, 1, 2], 2), [7, 5]);
        assert_eq!(d.propose(&[1, 2, 3], 4), Vec::<u32>::new());
        assert_eq!(d.propose(&[5, 5, 5], 2), [5]);
    }
}
