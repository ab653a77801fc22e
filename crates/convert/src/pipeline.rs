//! One conversion, start to finish: recognise the checkpoint, plan it, assign types, write.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::general::{general_kv, ParamCount};
use crate::hparams::{read_json_if_present, HParams};
use crate::types::{assign_types, OutType};
use crate::write::{write_plan, Summary};

/// What to convert, and how.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The transformers checkpoint folder (`config.json`, `model*.safetensors`, tokenizer).
    pub input: PathBuf,
    /// The GGUF file to write (replaced if it exists).
    pub output: PathBuf,
    /// The output type.
    pub out_type: OutType,
    /// For a DFlash drafter: its target's checkpoint folder, whose tokenizer it shares.
    pub target_dir: Option<PathBuf>,
}

/// The kinds of checkpoint specula converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Target,
    Assistant,
    Dflash,
}

/// The transformers architectures of each kind.
const ARCHITECTURES: [(&str, Kind); 4] = [
    ("Gemma4ForCausalLM", Kind::Target),
    ("Gemma4ForConditionalGeneration", Kind::Target),
    ("Gemma4AssistantForCausalLM", Kind::Assistant),
    ("DFlashDraftModel", Kind::Dflash),
];

/// Converts `options.input` to a GGUF file at `options.output`. `progress(done, total)` is
/// called with tensor bytes written so far.
///
/// Everything is checked before the first byte is written: the config's keys, the
/// architecture, every tensor's name, dtype and shape, the tokenizer. The file is written
/// under a temporary name, re-opened with specula's loader, then renamed into place.
pub fn convert(options: &ConvertOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<Summary> {
    let dir = options.input.as_path();
    let config = HParams::load(dir)?;
    let kind = kind(&config)?;
    if config.get("quantization_config").is_some() {
        return Err(config.error(
            "key 'quantization_config' is set: pre-quantized checkpoints are not supported",
        ));
    }
    if kind != Kind::Dflash && options.target_dir.is_some() {
        return Err(Error::invalid(
            dir,
            "--target-dir applies to DFlash drafters only; this is a Gemma 4 model with its own tokenizer",
        ));
    }
    let ck = Checkpoint::open(dir)?;
    let mut plan = match kind {
        Kind::Target => crate::target::plan(&ck, &config, options.out_type)?,
        Kind::Assistant => crate::assistant::plan(&ck, &config, options.out_type)?,
        Kind::Dflash => {
            let target_dir = options
                .target_dir
                .as_deref()
                .ok_or_else(|| crate::dflash::needs_target(dir))?;
            crate::dflash::plan(&ck, &config, target_dir, options.out_type)?
        }
    };
    assign_types(&mut plan, options.out_type).map_err(|r| Error::invalid(dir, r))?;
    let params = ParamCount::of(&plan.tensors);
    // gguf-py ignores a generation_config.json it cannot read.
    let generation = read_json_if_present(&dir.join("generation_config.json"))
        .ok()
        .flatten();
    let general = general_kv(
        config.opt_str("_name_or_path")?,
        &folder_name(dir),
        params,
        generation.as_ref(),
    );
    write_plan(plan, general, &ck, &options.output, progress)
}

/// Which kind of checkpoint `config` describes: a `dflash_config` makes a DFlash drafter,
/// otherwise the first of `architectures` decides.
fn kind(config: &HParams) -> Result<Kind> {
    if config.get("dflash_config").is_some() {
        return Ok(Kind::Dflash);
    }
    let archs = config.strings("architectures")?;
    let arch = archs
        .first()
        .ok_or_else(|| config.error("key 'architectures' is empty"))?;
    ARCHITECTURES
        .iter()
        .find(|(name, _)| name == arch)
        .map(|&(_, kind)| kind)
        .ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(n, _)| *n).collect();
            config.error(format!(
                "architecture '{arch}' is not supported (specula converts {})",
                known.join(", ")
            ))
        })
}

/// The folder's own name (resolving `.` and `..`), which names the model.
fn folder_name(dir: &Path) -> String {
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
