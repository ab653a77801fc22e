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

/// Runs every chunk of `tokens` (chunks of at most `max_batch`) but the last, without logits;
/// returns the last chunk, still to be run.
pub fn prefill_all_but_last<'a>(target: &mut Target, tokens: &'a [u32]) -> Result<&'a [u32]> {
    if tokens.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let chunk = target.max_batch();
    let last_start = (tokens.len() - 1) / chunk * chunk;
    for part in tokens[..last_start].chunks(chunk) {
        target.forward(part, LogitRows::None, &[], false)?;
    }
    Ok(&tokens[last_start..])
}

/// Runs `tokens` through the target in chunks of at most `max_batch`; returns the last
/// chunk's output with the last row's logits.
pub fn prefill(target: &mut Target, tokens: &[u32]) -> Result<StepOutput> {
    prefill_with(target, tokens, &[], &mut |_, _| Ok(()))
}

/// Like [`prefill`], capturing the outputs of `layers` in every chunk and handing each chunk's
/// outputs to `on_chunk` (a drafter that reads the target's hidden features needs every row).
pub fn prefill_with(
    target: &mut Target,
    tokens: &[u32],
    layers: &[usize],
    on_chunk: &mut dyn FnMut(&mut Target, &StepOutput) -> Result<()>,
) -> Result<StepOutput> {
    if tokens.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let n_chunks = tokens.len().div_ceil(target.max_batch());
    let mut out = StepOutput::default();
    for (i, part) in tokens.chunks(target.max_batch()).enumerate() {
        let rows = if i + 1 == n_chunks {
            LogitRows::Last
        } else {
            LogitRows::None
        };
        out = target.forward(part, rows, layers, false)?;
        on_chunk(target, &out)?;
    }
    Ok(out)
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
    // Greedy without a repetition penalty needs only the argmax, computed on the device.
    let device_argmax = sampler.params().is_greedy() && sampler.params().repetition_penalty == 1.0;
    let t0 = Instant::now();
    let mut next = if device_argmax {
        let last = prefill_all_but_last(target, prompt)?;
        target.forward_argmax(last, LogitRows::Last)?[0]
    } else {
        sampler.sample(&prefill(target, prompt)?.logits, &history)
    };
    stats.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    loop {
        tokens.push(next);
        history.push(next);
        on_token(next)?;
        if tokens.len() >= max_new_tokens || is_stop(next) {
            break;
        }
        next = if device_argmax {
            target.forward_argmax(&[next], LogitRows::Last)?[0]
        } else {
            let logits = target.forward(&[next], LogitRows::Last, &[], false)?.logits;
            sampler.sample(&logits, &history)
        };
        stats.decode_steps += 1;
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.generated_tokens = tokens.len();
    Ok(Generation { tokens, stats })
}
