//! `cargo xtask accept`: true acceptance and end-to-end speed of the bundled trio.
//!
//! For every held-out prompt (`assets/heldout-prompts.jsonl`: one `{"text": "..."}` (tokenized
//! with the target's tokenizer and BOS rule) or `{"tokens": [...]}` per line; written by
//! `tools/train/heldout_prompts.py` from the held-out stdlib files), greedy decoding runs three times on separately loaded targets:
//! plain, with the MTP assistant (γ = 4) and with the DFlash drafter (block 16). Both
//! speculative outputs must equal the plain one token for token (an error otherwise). Reports
//! acceptance length (tokens committed per verify), per-position acceptance and decode tok/s
//! with the speed-up over plain decoding, to stdout and to `OUT/accept-<device>.json`.
//!
//! `cargo xtask accept [--assets DIR] [--prompts FILE] [--device cpu|cuda] [--n N] [--gamma G]
//! [--block B] [--limit K] [--out DIR]`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use graph::Backend;
use serde_json::{json, Value};
use target::{Round, Sampler, SamplingParams, SpeculativeGeneration, Target, TargetOptions};

/// File names of the bundled trio (as `crates/cli/src/assets.rs`).
const TARGET: &str = "specula-py-target.q4_k_m.gguf";
const ASSISTANT: &str = "specula-py-assistant.q8_0.gguf";
const DFLASH: &str = "specula-py-dflash.q8_0.gguf";

struct Options {
    assets: PathBuf,
    prompts: PathBuf,
    cuda: bool,
    n: usize,
    gamma: usize,
    block: usize,
    limit: usize,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Options> {
    let root = crate::repo_root();
    let mut o = Options {
        assets: root.join("assets"),
        prompts: root.join("assets/heldout-prompts.jsonl"),
        cuda: false,
        n: 128,
        gamma: 4,
        block: 16,
        limit: usize::MAX,
        out: root.join("bench/results"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--assets" => o.assets = value()?.into(),
            "--prompts" => o.prompts = value()?.into(),
            "--device" => {
                o.cuda = match value()?.as_str() {
                    "cpu" => false,
                    "cuda" => true,
                    d => bail!("--device {d}: expected cpu or cuda"),
                }
            }
            "--n" => o.n = value()?.parse().context("--n")?,
            "--gamma" => o.gamma = value()?.parse().context("--gamma")?,
            "--block" => o.block = value()?.parse().context("--block")?,
            "--limit" => o.limit = value()?.parse().context("--limit")?,
            "--out" => o.out = value()?.into(),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// The prompts of a JSONL file: `{"text": "..."}` or `{"tokens": [ids]}` per line.
fn read_prompts(path: &Path, tokenizer: &target::Tokenizer) -> Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            let v: Value =
                serde_json::from_str(l).with_context(|| format!("{}: not JSON", at()))?;
            if let Some(t) = v["text"].as_str() {
                return Ok(tokenizer.encode(t, tokenizer.adds_bos())?);
            }
            v["tokens"]
                .as_array()
                .with_context(|| format!("{}: neither \"text\" nor \"tokens\"", at()))?
                .iter()
                .map(|t| {
                    t.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .with_context(|| format!("{}: bad token id {t}", at()))
                })
                .collect()
        })
        .collect()
}

fn backend(cuda: bool) -> Result<Box<dyn Backend>> {
    if cuda {
        Ok(Box::new(kernels::CudaBackend::new(0)?))
    } else {
        Ok(Box::new(graph::CpuBackend::new()))
    }
}

fn load_target(path: &Path, cuda: bool, max_batch: usize) -> Result<Target> {
    let file = Arc::new(gguf::GgufFile::open(path)?);
    let options = TargetOptions {
        n_ctx: 1024,
        max_batch,
        ..Default::default()
    };
    Ok(Target::load(
        file,
        backend(cuda)?,
        &options,
        &mut |_, _| {},
    )?)
}

/// Totals of one decoding mode over all prompts.
#[derive(Default)]
struct Tally {
    rounds: Vec<Round>,
    tokens: usize,
    decode_secs: f64,
}

impl Tally {
    fn add(&mut self, rounds: &[Round], stats: &target::GenerationStats) {
        self.rounds.extend_from_slice(rounds);
        // Decode speed counts the tokens after the first (which prefill produces).
        self.tokens += stats.generated_tokens.saturating_sub(1);
        self.decode_secs += stats.decode_secs;
    }
    fn tok_s(&self) -> f64 {
        self.tokens as f64 / self.decode_secs.max(1e-12)
    }
    fn summary(&self, name: &str, plain_tok_s: f64) -> Value {
        let g = SpeculativeGeneration {
            rounds: self.rounds.clone(),
            ..Default::default()
        };
        let drafted: usize = self.rounds.iter().map(|r| r.drafted.len()).sum();
        let accepted: usize = self.rounds.iter().map(|r| r.accepted).sum();
        json!({
            "drafter": name,
            "rounds": self.rounds.len(),
            "drafted": drafted,
            "accepted": accepted,
            "acceptance_length": g.acceptance_length(),
            "per_position_acceptance": g.per_position_acceptance(),
            "decode_tok_s": self.tok_s(),
            "speedup_over_plain": self.tok_s() / plain_tok_s,
        })
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let tokenizer = target::Tokenizer::from_gguf(&gguf::GgufFile::open(o.assets.join(TARGET))?)?;
    let prompts: Vec<Vec<u32>> = read_prompts(&o.prompts, &tokenizer)?
        .into_iter()
        .take(o.limit)
        .collect();
    if prompts.is_empty() {
        bail!("{}: no prompts", o.prompts.display());
    }
    let device = if o.cuda {
        kernels::CudaBackend::new(0)?.name()
    } else {
        "cpu".to_string()
    };
    let batch = o.block.max(o.gamma + 1).max(16);
    let mut plain_t = load_target(&o.assets.join(TARGET), o.cuda, batch)?;
    let mut mtp_t = load_target(&o.assets.join(TARGET), o.cuda, batch)?;
    let mut dflash_t = load_target(&o.assets.join(TARGET), o.cuda, batch)?;
    let assistant = Arc::new(gguf::GgufFile::open(o.assets.join(ASSISTANT))?);
    let mut mtp = drafter_mtp::MtpDrafter::load(assistant, &mut mtp_t)?;
    let mut dflash =
        drafter_dflash::DflashDrafter::open(&o.assets.join(DFLASH), &mut dflash_t, Some(o.block))?;
    let never = |_: u32| false;
    let greedy = || Sampler::new(SamplingParams::default());
    let (mut plain, mut with_mtp, mut with_dflash) =
        (Tally::default(), Tally::default(), Tally::default());
    for (i, prompt) in prompts.iter().enumerate() {
        for t in [&mut plain_t, &mut mtp_t, &mut dflash_t] {
            t.truncate(0)?;
        }
        let p = target::generate(
            &mut plain_t,
            prompt,
            &mut greedy(),
            o.n,
            &never,
            &mut |_| Ok(()),
        )?;
        plain.add(&[], &p.stats);
        let m = target::generate_speculative(
            &mut mtp_t,
            &mut mtp,
            prompt,
            &mut greedy(),
            o.n,
            o.gamma,
            &never,
            &mut |_| Ok(()),
        )?;
        let d = target::generate_speculative(
            &mut dflash_t,
            &mut dflash,
            prompt,
            &mut greedy(),
            o.n,
            o.block - 1,
            &never,
            &mut |_| Ok(()),
        )?;
        if m.tokens != p.tokens || d.tokens != p.tokens {
            bail!("prompt {i}: speculative output differs from plain greedy decoding");
        }
        with_mtp.add(&m.rounds, &m.stats);
        with_dflash.add(&d.rounds, &d.stats);
        eprintln!(
            "prompt {i}: MTP {:.2}, DFlash {:.2} tokens per verify",
            m.acceptance_length(),
            d.acceptance_length()
        );
    }
    let plain_tok_s = plain.tok_s();
    let v = json!({
        "device": device,
        "prompts": prompts.len(),
        "new_tokens_per_prompt": o.n,
        "gamma": o.gamma,
        "block": o.block,
        "identical_to_plain_greedy": true,
        "plain_decode_tok_s": plain_tok_s,
        "mtp": with_mtp.summary("mtp", plain_tok_s),
        "dflash": with_dflash.summary("dflash", plain_tok_s),
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    std::fs::create_dir_all(&o.out)?;
    let name = if o.cuda { "accept-cuda" } else { "accept-cpu" };
    let path = o.out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
