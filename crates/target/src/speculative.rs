//! Speculative decoding: the [`ExternalDrafter`] contract and the draft → verify → accept loop.
//!
//! One round: the drafter proposes up to γ tokens after the current token `cur` (sampled but
//! not yet in the KV cache); the target runs `[cur, drafts…]` as one batch; the longest prefix
//! the target agrees with is accepted plus the target's own next token (the bonus); the KV cache
//! is truncated to what was committed; the drafter is told how many drafts were accepted and
//! gets the target's outputs for the verified rows. Greedy output is token-identical to plain
//! greedy decoding; with temperature, standard speculative sampling keeps the output
//! distribution equal to the target's.
//!
//! A drafter lives in its own crate and implements [`ExternalDrafter`]; this module needs no
//! change for a new one.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{prefill_with, GenerationStats};
use crate::models::gemma4::LogitRows;
use crate::sampling::{argmax, Sampler};
use crate::session::{StepOutput, Target};

/// What a drafter is told when a round starts.
#[derive(Clone, Debug)]
pub struct DraftRequest<'a> {
    /// Every committed token (prompt and accepted output), then `cur` last.
    pub history: &'a [u32],
    /// Position of `cur` (= number of committed positions in the KV cache).
    pub position: usize,
    /// The target's final post-norm hidden state of the last committed token.
    pub last_hidden: &'a [f32],
    /// Most tokens to draft this round.
    pub gamma: usize,
}

/// A drafter's proposal.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    /// Proposed tokens, at most γ.
    pub tokens: Vec<u32>,
    /// For sampled decoding: the distribution each token was drawn from (`None` means the
    /// drafter is deterministic, a distribution with all mass on its token).
    pub probs: Option<Vec<Vec<f32>>>,
}

/// What a drafter learns after verification.
#[derive(Clone, Debug)]
pub struct Verified<'a> {
    /// Drafts accepted this round.
    pub accepted: usize,
    /// The token the target chose after them (the next round's `cur`).
    pub next: u32,
    /// The target's outputs for the verified rows `[cur, drafts…]` (hidden rows, captured
    /// layers); row `accepted` is the last committed token.
    pub outputs: &'a StepOutput,
}

/// A draft model or heuristic that proposes tokens for the target to verify.
pub trait ExternalDrafter {
    /// A short name for logs and statistics (`"mtp"`, `"ngram"`).
    fn name(&self) -> &str;

    /// Largest γ the drafter supports.
    fn max_gamma(&self) -> usize;

    /// Target layers whose outputs the drafter needs for every committed row.
    fn required_layers(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Sees the outputs of every prefill chunk, in order: the captured layers for every row
    /// (the hidden rows too, except in the last chunk, which asks for the last logits and so
    /// returns only the last hidden row).
    fn prefill_chunk(&mut self, _target: &mut Target, _outputs: &StepOutput) -> Result<()> {
        Ok(())
    }

    /// Called once after the prompt is prefilled; `prefill` holds the outputs of the last
    /// prefill chunk.
    fn begin(&mut self, target: &mut Target, prompt: &[u32], prefill: &StepOutput) -> Result<()>;

    /// Proposes up to `request.gamma` tokens following `request.history`.
    fn draft(
        &mut self,
        target: &mut Target,
        request: &DraftRequest<'_>,
        sampler: &Sampler,
    ) -> Result<Draft>;

    /// Learns the outcome of the round.
    fn accept(&mut self, target: &mut Target, verified: &Verified<'_>) -> Result<()>;
}

/// One round's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// Drafted tokens.
    pub drafted: Vec<u32>,
    /// How many were accepted.
    pub accepted: usize,
}

/// The result of a speculative generation.
#[derive(Clone, Debug, Default)]
pub struct SpeculativeGeneration {
    /// Generated tokens.
    pub tokens: Vec<u32>,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Timing and counts (decode_steps = verify passes).
    pub stats: GenerationStats,
}

impl SpeculativeGeneration {
    /// Tokens committed per target verify pass (accepted drafts + the bonus), averaged.
    pub fn acceptance_length(&self) -> f64 {
        if self.rounds.is_empty() {
            return 0.0;
        }
        self.rounds.iter().map(|r| r.accepted + 1).sum::<usize>() as f64 / self.rounds.len() as f64
    }

    /// For each draft position, the fraction of rounds that drafted that far and had it accepted.
    pub fn per_position_acceptance(&self) -> Vec<f64> {
        let max = self
            .rounds
            .iter()
            .map(|r| r.drafted.len())
            .max()
            .unwrap_or(0);
        (0..max)
            .map(|i| {
                let drafted = self.rounds.iter().filter(|r| r.drafted.len() > i).count();
                let accepted = self.rounds.iter().filter(|r| r.accepted > i).count();
                if drafted == 0 {
                    0.0
                } else {
                    accepted as f64 / drafted as f64
                }
            })
            .collect()
    }
}

/// The outcome of verifying one round's drafts against the target's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acceptance {
    /// Drafts accepted.
    pub accepted: usize,
    /// The target's token after them.
    pub next: u32,
}

/// Greedy verification: the longest prefix of `drafts` equal to the target's argmax tokens,
/// then the target's token at the first mismatch (or after the last draft).
pub fn accept_greedy(drafts: &[u32], target_tokens: &[u32]) -> Acceptance {
    let accepted = drafts
        .iter()
        .zip(target_tokens)
        .take_while(|(d, t)| d == t)
        .count();
    Acceptance {
        accepted,
        next: target_tokens[accepted],
    }
}

/// Speculative sampling: accept draft `i` with probability `min(1, p_i(d_i) / q_i(d_i))`; on the
/// first rejection draw from the normalised residual `max(0, p_i − q_i)`; if all are accepted
/// draw the bonus from `p_γ`. `p` has γ + 1 rows, `q` γ rows (`None`: deterministic drafts).
pub fn accept_sampled(
    drafts: &[u32],
    p: &[Vec<f32>],
    q: Option<&[Vec<f32>]>,
    sampler: &mut Sampler,
) -> Acceptance {
    for (i, &d) in drafts.iter().enumerate() {
        let pd = p[i][d as usize];
        let qd = q.map_or(1.0, |q| q[i][d as usize]);
        let u = sampler.uniform() as f32;
        if qd > 0.0 && u < (pd / qd).min(1.0) {
            continue;
        }
        // Residual max(0, p − q), renormalised; falls back to p if it is all zero.
        let mut residual: Vec<f32> = match q {
            Some(q) => p[i]
                .iter()
                .zip(&q[i])
                .map(|(a, b)| (a - b).max(0.0))
                .collect(),
            None => {
                let mut r = p[i].clone();
                r[d as usize] = 0.0;
                r
            }
        };
        let sum: f32 = residual.iter().sum();
        if sum > 0.0 {
            residual.iter_mut().for_each(|v| *v /= sum);
        } else {
            residual = p[i].clone();
        }
        return Acceptance {
            accepted: i,
            next: sampler.draw(&residual),
        };
    }
    Acceptance {
        accepted: drafts.len(),
        next: sampler.draw(&p[drafts.len()]),
    }
}

/// Generates up to `max_new_tokens` with `drafter` proposing up to `gamma` tokens per round.
#[allow(clippy::too_many_arguments)]
pub fn generate_speculative(
    target: &mut Target,
    drafter: &mut dyn ExternalDrafter,
    prompt: &[u32],
    sampler: &mut Sampler,
    max_new_tokens: usize,
    gamma: usize,
    is_stop: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<SpeculativeGeneration> {
    if gamma == 0 || gamma > drafter.max_gamma() {
        return Err(Error::Input(format!(
            "gamma {gamma} is outside 1..={} for the {} drafter",
            drafter.max_gamma(),
            drafter.name()
        )));
    }
    if gamma + 1 > target.max_batch() {
        return Err(Error::Input(format!(
            "gamma {gamma} needs verify batches of {} tokens; the target takes at most {}",
            gamma + 1,
            target.max_batch()
        )));
    }
    let layers = drafter.required_layers();
    let mut out = SpeculativeGeneration {
        stats: GenerationStats {
            prompt_tokens: prompt.len(),
            ..Default::default()
        },
        ..Default::default()
    };
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let greedy = sampler.params().is_greedy();
    let t0 = Instant::now();
    // Prefill in chunks, each with the drafter's captures; logits for the last row only.
    let mut history = prompt.to_vec();
    let prefill = prefill_with(target, prompt, &layers, &mut |t, out| {
        drafter.prefill_chunk(t, out)
    })?;
    let v = target.config().n_vocab;
    let h = target.config().n_embd;
    let first_logits = &prefill.logits[prefill.logits.len() - v..];
    let mut cur = sampler.sample(first_logits, &history);
    drafter.begin(target, prompt, &prefill)?;
    let mut last_hidden = prefill.hidden[prefill.hidden.len() - h..].to_vec();
    out.stats.prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut emit = |tok: u32, out: &mut SpeculativeGeneration| -> Result<bool> {
        out.tokens.push(tok);
        on_token(tok)?;
        Ok(out.tokens.len() >= max_new_tokens || is_stop(tok))
    };
    if emit(cur, &mut out)? {
        out.stats.generated_tokens = out.tokens.len();
        return Ok(out);
    }
    history.push(cur);
    loop {
        let position = target.n_past();
        let remaining_ctx = target.cache().n_ctx().saturating_sub(position + 1);
        // Draft no more than can still be emitted besides this round's own target token.
        let g = gamma
            .min(remaining_ctx)
            .min(max_new_tokens - out.tokens.len() - 1);
        let request = DraftRequest {
            history: &history,
            position,
            last_hidden: &last_hidden,
            gamma: g,
        };
        let draft = if g == 0 {
            Draft::default()
        } else {
            drafter.draft(target, &request, sampler)?
        };
        let mut drafts = draft.tokens.clone();
        drafts.truncate(g);
        if let Some(&bad) = drafts.iter().find(|&&d| d as usize >= v) {
            return Err(Error::Input(format!(
                "the {} drafter proposed token {bad} outside the vocabulary",
                drafter.name()
            )));
        }
        let mut batch = vec![cur];
        batch.extend(&drafts);
        let verify = target.forward(&batch, LogitRows::All, &layers, false)?;
        out.stats.decode_steps += 1;
        let acceptance = if greedy && sampler.params().repetition_penalty == 1.0 {
            let targets: Vec<u32> = verify.logits.chunks(v).map(argmax).collect();
            accept_greedy(&drafts, &targets)
        } else {
            // Each row's distribution given the tokens before it.
            let mut p = Vec::with_capacity(batch.len());
            let mut ctx = history.clone();
            for (i, row) in verify.logits.chunks(v).enumerate() {
                p.push(sampler.distribution(row, &ctx));
                if let Some(&d) = drafts.get(i) {
                    ctx.push(d);
                }
            }
            if greedy {
                let targets: Vec<u32> = p.iter().map(|row| argmax(row)).collect();
                accept_greedy(&drafts, &targets)
            } else {
                let q = draft
                    .probs
                    .as_ref()
                    .map(|q| &q[..drafts.len().min(q.len())]);
                accept_sampled(&drafts, &p, q, sampler)
            }
        };
        // Commit cur and the accepted drafts; the bonus is the next round's cur.
        target.truncate(position + 1 + acceptance.accepted)?;
        last_hidden =
            verify.hidden[acceptance.accepted * h..(acceptance.accepted + 1) * h].to_vec();
        drafter.accept(
            target,
            &Verified {
                accepted: acceptance.accepted,
                next: acceptance.next,
                outputs: &verify,
            },
        )?;
        // A verify with no drafts is a plain decoding step, not a round.
        if !drafts.is_empty() {
            out.rounds.push(Round {
                drafted: drafts.clone(),
                accepted: acceptance.accepted,
            });
        }
        let mut done = false;
        for &tok in drafts[..acceptance.accepted]
            .iter()
            .chain(std::iter::once(&acceptance.next))
        {
            history.push(tok);
            if emit(tok, &mut out)? {
                done = true;
                break;
            }
        }
        cur = acceptance.next;
        if done {
            break;
        }
        if target.n_past() + 1 >= target.cache().n_ctx() {
            return Err(Error::Input(format!(
                "context of {} tokens exceeds the maximum of {} positions",
                target.n_past() + 2,
                target.cache().n_ctx()
            )));
        }
    }
    out.stats.decode_secs = t1.elapsed().as_secs_f64();
    out.stats.generated_tokens = out.tokens.len();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    #[test]
    fn greedy_acceptance_takes_the_matching_prefix_and_the_bonus() {
        assert_eq!(
            accept_greedy(&[5, 6, 7], &[5, 6, 9, 1]),
            Acceptance {
                accepted: 2,
                next: 9
            }
        );
        assert_eq!(
            accept_greedy(&[5, 6], &[5, 6, 8]),
            Acceptance {
                accepted: 2,
                next: 8
            }
        );
        assert_eq!(
            accept_greedy(&[4], &[5, 6]),
            Acceptance {
                accepted: 0,
                next: 5
            }
        );
        assert_eq!(
            accept_greedy(&[], &[3]),
            Acceptance {
                accepted: 0,
                next: 3
            }
        );
    }

    /// The first emitted token of speculative sampling is distributed as the target's p,
    /// whatever the draft distribution q: checked on a 4-token vocabulary, where a wrong
    /// residual (for example p instead of max(0, p − q)) is far outside the tolerance.
    #[test]
    fn speculative_sampling_preserves_the_target_distribution() {
        let p0 = vec![0.1f32, 0.2, 0.3, 0.4];
        let q0 = vec![0.6f32, 0.1, 0.1, 0.2];
        let p = vec![p0.clone(), vec![0.25; 4]];
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: 11,
            ..Default::default()
        });
        let n = 200_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            // Draw the draft from q, as a sampling drafter would.
            let d = sampler.draw(&q0);
            let a = accept_sampled(&[d], &p, Some(std::slice::from_ref(&q0)), &mut sampler);
            let first = if a.accepted == 1 { d } else { a.next };
            counts[first as usize] += 1;
        }
        for i in 0..4 {
            let f = counts[i] as f32 / n as f32;
            assert!((f - p0[i]).abs() < 0.006, "token {i}: {f} vs {}", p0[i]);
        }
        // Deterministic drafts (q one-hot) too.
        let mut counts = [0usize; 4];
        for _ in 0..n {
            let a = accept_sampled(&[0], &p, None, &mut sampler);
            counts[if a.accepted == 1 { 0 } else { a.next as usize }] += 1;
        }
        for i in 0..4 {
            let f = counts[i] as f32 / n as f32;
            assert!(
                (f - p0[i]).abs() < 0.006,
                "one-hot draft, token {i}: {f} vs {}",
                p0[i]
            );
        }
    }
}
