//! `specula generate`: text generation, streamed to stdout or reported as one JSON object.

use std::io::Write;

use anyhow::{bail, Result};
use serde_json::json;
use target::{ChatMessage, Sampler, SamplingParams};

use crate::model::{load, ModelArgs, PromptArgs};

/// Arguments of `specula generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: PromptArgs,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n: usize,
    /// Wrap the prompt in the model's chat template as one user turn.
    #[arg(long)]
    chat: bool,
    /// Temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going after an end-of-generation token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (tokens, text, stats) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Speculative decoding with this drafter [default: mtp with the bundled model, else none].
    #[arg(long, value_enum)]
    drafter: Option<DrafterKind>,
    /// The drafter: the MTP assistant GGUF, or a DFlash GGUF or z-lab checkpoint folder
    /// [default with the bundled model: its own assistant or DFlash drafter].
    #[arg(long)]
    drafter_model: Option<std::path::PathBuf>,
    /// After the streamed text, print the run's statistics (speed, acceptance).
    #[arg(long)]
    stats: bool,
    /// Print the prompt text before the generated text (streamed output only).
    #[arg(long)]
    echo: bool,
    /// Tokens drafted per round [default: 4; DFlash: block size − 1].
    #[arg(long)]
    gamma: Option<usize>,
    /// DFlash block size (at most the trained one) [default: the trained size].
    #[arg(long)]
    block: Option<usize>,
    /// DFlash: grow and shrink the block with the recent acceptance.
    #[arg(long)]
    adaptive_block: bool,
}

/// Which drafter proposes tokens.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrafterKind {
    /// Plain decoding.
    None,
    /// The Gemma 4 MTP assistant (`--drafter-model`).
    Mtp,
    /// Prompt lookup.
    Ngram,
    /// The DFlash block-diffusion drafter (`--drafter-model`, `--block`).
    Dflash,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let params = SamplingParams {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
    };
    if let Err(e) = params.validate() {
        bail!("{e}");
    }
    let (_, tokenizer, mut target) = load(&args.model)?;
    let prompt = match (&args.input.tokens, args.input.text()?) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) if args.chat => {
            let msgs = [ChatMessage {
                role: "user".into(),
                content: text.to_string(),
            }];
            tokenizer.encode(&tokenizer.apply_chat_template(&msgs, true)?, false)?
        }
        (None, Some(text)) => tokenizer.encode(text, tokenizer.adds_bos())?,
        (None, None) => unreachable!("clap requires --prompt or --tokens"),
    };
    let mut sampler = Sampler::new(params);
    let bundled = args.model.model.is_none();
    let kind = args.drafter.unwrap_or(if bundled {
        DrafterKind::Mtp
    } else {
        DrafterKind::None
    });
    // With the bundled target, its own drafters are the defaults.
    let drafter_path = |bundled_name: &str| -> Result<Option<std::path::PathBuf>> {
        match (&args.drafter_model, bundled) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, true) => Ok(Some(crate::assets::file(bundled_name)?)),
            (None, false) => Ok(None),
        }
    };
    let mut drafter: Option<Box<dyn target::ExternalDrafter>> = match kind {
        DrafterKind::None => None,
        DrafterKind::Ngram => Some(Box::new(drafter_ngram::NgramDrafter::new(4, 1, 16))),
        DrafterKind::Mtp => {
            let path = drafter_path(crate::assets::ASSISTANT)?.ok_or_else(|| {
                anyhow::anyhow!("--drafter mtp needs --drafter-model ASSISTANT.gguf")
            })?;
            let file = std::sync::Arc::new(gguf::GgufFile::open(path)?);
            Some(Box::new(drafter_mtp::MtpDrafter::load(file, &mut target)?))
        }
        DrafterKind::Dflash => {
            let path = drafter_path(crate::assets::DFLASH)?.ok_or_else(|| {
                anyhow::anyhow!("--drafter dflash needs --drafter-model DFLASH.gguf or a z-lab checkpoint folder")
            })?;
            let mut d = drafter_dflash::DflashDrafter::open(&path, &mut target, args.block)?;
            d.set_adaptive(args.adaptive_block);
            Some(Box::new(d))
        }
    };
    if kind != DrafterKind::Dflash && (args.block.is_some() || args.adaptive_block) {
        bail!("--block and --adaptive-block apply to --drafter dflash only");
    }
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new();
    let stream = !args.json;
    if stream && args.echo {
        if let Some(text) = args.input.text()? {
            out.write_all(text.as_bytes())?;
        }
    }
    let ignore_eos = args.ignore_eos;
    let is_stop = |id: u32| !ignore_eos && tokenizer.is_end_of_generation(id);
    let mut on_token = |id: u32| -> target::Result<()> {
        if stream && !tokenizer.is_end_of_generation(id) {
            pending.extend(tokenizer.token_bytes(id));
            // Print the longest valid UTF-8 prefix; keep a partial character for later.
            let valid = match std::str::from_utf8(&pending) {
                Ok(s) => s.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => pending.len(),
            };
            out.write_all(String::from_utf8_lossy(&pending[..valid]).as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| target::Error::Input(format!("writing to stdout: {e}")))?;
            pending.drain(..valid);
        }
        Ok(())
    };
    let (result, spec) = match drafter.as_deref_mut() {
        None => (
            target::generate(
                &mut target,
                &prompt,
                &mut sampler,
                args.n,
                &is_stop,
                &mut on_token,
            )?,
            None,
        ),
        Some(d) => {
            let gamma = match (args.gamma, kind) {
                (Some(g), _) => g,
                (None, DrafterKind::Dflash) => d.max_gamma(),
                (None, _) => d.max_gamma().min(4),
            };
            let r = target::generate_speculative(
                &mut target,
                d,
                &prompt,
                &mut sampler,
                args.n,
                gamma,
                &is_stop,
                &mut on_token,
            )?;
            let g = target::Generation {
                tokens: r.tokens.clone(),
                stats: r.stats.clone(),
            };
            (g, Some(r))
        }
    };
    // The streaming closure's borrow of stdout ends here.
    let mut out = std::io::stdout().lock();
    let text = tokenizer.decode(&result.tokens);
    let s = &result.stats;
    tracing::info!(
        prompt_tokens = s.prompt_tokens,
        generated = s.generated_tokens,
        prefill_tok_s = s.prefill_tok_s(),
        decode_tok_s = s.decode_tok_s(),
        "done"
    );
    if args.json {
        let mut v = json!({
            "tokens": result.tokens,
            "text": text,
            "stats": {
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated_tokens,
                "prefill_tok_s": s.prefill_tok_s(),
                "decode_tok_s": s.generated_tokens.saturating_sub(1) as f64 / s.decode_secs.max(1e-12),
            }
        });
        if let Some(spec) = &spec {
            v["rounds"] = spec
                .rounds
                .iter()
                .map(|r| json!({"drafted": r.drafted, "accepted": r.accepted}))
                .collect();
            let stats = &mut v["stats"];
            stats["rounds"] = spec.rounds.len().into();
            stats["drafted"] = spec
                .rounds
                .iter()
                .map(|r| r.drafted.len())
                .sum::<usize>()
                .into();
            stats["accepted"] = spec.rounds.iter().map(|r| r.accepted).sum::<usize>().into();
            stats["acceptance_length"] = spec.acceptance_length().into();
            stats["per_position_acceptance"] = spec.per_position_acceptance().into();
            stats["verify_passes"] = s.decode_steps.into();
        }
        writeln!(out, "{v}")?;
    } else {
        out.write_all(String::from_utf8_lossy(&pending).as_bytes())?;
        writeln!(out)?;
        if args.stats {
            writeln!(out, "{}", stats_summary(&result.stats, spec.as_ref(), kind))?;
        }
    }
    Ok(())
}

/// A few human-readable lines: tokens, speeds and, for speculative runs, acceptance.
fn stats_summary(
    s: &target::GenerationStats,
    spec: Option<&target::SpeculativeGeneration>,
    kind: DrafterKind,
) -> String {
    let mut text = format!(
        "---\nprompt {} tokens, generated {} tokens; prefill {:.0} tok/s, decode {:.1} tok/s",
        s.prompt_tokens,
        s.generated_tokens,
        s.prefill_tok_s(),
        s.generated_tokens.saturating_sub(1) as f64 / s.decode_secs.max(1e-12),
    );
    if let Some(spec) = spec {
        let drafted: usize = spec.rounds.iter().map(|r| r.drafted.len()).sum();
        let accepted: usize = spec.rounds.iter().map(|r| r.accepted).sum();
        let per_position: Vec<String> = spec
            .per_position_acceptance()
            .iter()
            .map(|a| format!("{a:.2}"))
            .collect();
        text.push_str(&format!(
            "\ndrafter {kind:?}: {} verify rounds, {accepted}/{drafted} drafts accepted, {:.2} tokens per verify; per position [{}]",
            spec.rounds.len(),
            spec.acceptance_length(),
            per_position.join(", ")
        ));
    }
    text
}
