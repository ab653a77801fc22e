//! Plain autoregressive generation: chunked prefill, then one target step per token.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::models::gemma4::LogitRows;
use crate::sampling::Sampler;
use crate::session::{StepOutput, Target};

/// Timing and counts of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Seconds spent in prefill.
    pub prefill_secs: f64,
    /// Seconds spent in decode steps (after prefill).
    pub decode_secs: f64,
    /// Decode steps run (target forwards after prefill).
    pub decode_steps: usize,
}

impl GenerationStats {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }

    /// Generated tokens per second of decoding.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The result of a generation.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// Generated token ids (the stop token included, if one was produced).
    pub tokens: Vec<u32>,
    /// Timing and counts.
    pub stats: GenerationStats,
}

/// Runs `tokens` through the target in chunks of at most `max_batch`; returns the last
/// chunk's output with the last row's logits.
pub fn prefill(target: &mut Target, tokens: &[u32]) -> Result<StepOutput> {
    if tokens.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let chunk = target.max_batch();
    let n_chunks = tokens.len().div_ceil(chunk);
    let mut last = StepOutput::default();
    for (i, part) in tokens.chunks(chunk).enumerate() {
        let rows = if i + 1 == n_chunks {
            LogitRows::Last
        } else {
            LogitRows::None
        };
        last = target.forward(part, rows, &[], false)?;
    }
    Ok(last)
}

/// Generates up to `max_new_tokens` after `prompt`, stopping after a token for which
/// `is_stop` holds. `on_token` sees each token as it is produced.
pub fn generate(
    target: &mut Target,
    prompt: &[u32],
    sampler: &mut Sampler,
    max_new_tokens: usize,
    is_stop: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut history = prompt.to_vec();
    let mut tokens = Vec::new();
    if max_new_tokens == 0 {
        return Ok(Generation { tokens, stats });
    }
    let t0 = Instant::now();
    let mut logits = prefill(target, prompt)?.logits;
    stats.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    loop {
        let next = sampler.sample(&logits, &history);
        tokens.push(next);
        history.push(next);
        on_token(next)?;
        if tokens.len() >= max_new_tokens || is_stop(next) {
            break;
        }
        logits = target.forward(&[next], LogitRows::Last, &[], false)?.logits;
        stats.decode_steps += 1;
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.generated_tokens = tokens.len();
    Ok(Generation { tokens, stats })
}
