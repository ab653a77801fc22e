//! `specula logits`: logits and final hidden states of a token sequence, as safetensors.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use target::LogitRows;

use crate::model::{load, ModelArgs, PromptArgs};

/// Arguments of `specula logits`.
#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: PromptArgs,
    /// Output file: f32 `logits` [T, V] (after soft-capping) and `hidden` [T, H].
    #[arg(long, short = 'o')]
    out: PathBuf,
}

pub fn run(args: &LogitsArgs) -> Result<()> {
    let (_, tokenizer, mut target) = load(&args.model)?;
    let ids = match (&args.input.tokens, args.input.text()?) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => tokenizer.encode(text, tokenizer.adds_bos())?,
        (None, None) => unreachable!("clap requires --prompt or --tokens"),
    };
    let (v, h) = (target.config().n_vocab, target.config().n_embd);
    let mut logits = Vec::with_capacity(ids.len() * v);
    let mut hidden = Vec::with_capacity(ids.len() * h);
    for chunk in ids.chunks(target.max_batch()) {
        let out = target.forward(chunk, LogitRows::All, &[], false)?;
        logits.extend(out.logits);
        hidden.extend(out.hidden);
    }
    let t = ids.len();
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (lb, hb) = (bytes(&logits), bytes(&hidden));
    let tensors = HashMap::from([
        (
            "logits".to_string(),
            TensorView::new(Dtype::F32, vec![t, v], &lb)?,
        ),
        (
            "hidden".to_string(),
            TensorView::new(Dtype::F32, vec![t, h], &hb)?,
        ),
    ]);
    safetensors::serialize_to_file(tensors, None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    tracing::info!(tokens = t, out = %args.out.display(), "wrote logits");
    Ok(())
}
