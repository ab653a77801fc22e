//! `specula convert`: a transformers checkpoint folder to a GGUF file in llama.cpp's layout.

use std::path::PathBuf;

use anyhow::Result;
use convert::{ConvertOptions, OutType};

/// Arguments of `specula convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint folder: config.json, model*.safetensors, tokenizer files (a Gemma 4
    /// target or MTP assistant, or a z-lab DFlash drafter).
    input: PathBuf,
    /// The GGUF file to write (replaced if it exists).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Output type: f32, f16, bf16, q8_0 (as llama.cpp's converter --outtype) or q4_k_m
    /// (llama.cpp's Q4_K_M mix). Norms and 1-D tensors stay f32.
    #[arg(long = "type", default_value = "f32")]
    out_type: OutType,
    /// DFlash drafters only: the target's checkpoint folder, whose tokenizer the drafter shares.
    #[arg(long)]
    target_dir: Option<PathBuf>,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let options = ConvertOptions {
        input: args.input.clone(),
        output: args.out.clone(),
        out_type: args.out_type,
        target_dir: args.target_dir.clone(),
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("converting [{bar:32}] {bytes}/{total_bytes}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    let summary = convert::convert(&options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    let types: Vec<String> = summary
        .tensors_by_type
        .iter()
        .map(|(ty, n)| format!("{n} {ty}"))
        .collect();
    println!(
        "wrote {}: {}, {} tensors ({}), {} metadata keys, {} bytes",
        summary.path.display(),
        summary.arch,
        summary.tensors_by_type.values().sum::<usize>(),
        types.join(", "),
        summary.n_keys,
        summary.n_bytes
    );
    Ok(())
}
