//! Shared by the model commands: device choice, loading with a progress bar, prompt handling.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use target::{Target, TargetOptions, Tokenizer};

/// Where to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// CUDA when available, else the CPU.
    Auto,
    /// The CPU reference backend.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

/// Options shared by the commands that load a target.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The Gemma 4 target GGUF [default: the bundled Python-code model in `assets/`].
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Context length to allocate (positions).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Largest batch per step (prefill chunk) [default: 512 on CUDA, 64 on the CPU].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Element type of the KV cache [default: f16 on CUDA, as llama.cpp; f32 on the CPU].
    #[arg(long, value_enum)]
    pub kv_type: Option<KvType>,
}

/// Element type of the KV cache.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats: half the cache memory and traffic; the CUDA attention kernels for long
    /// batches and wide heads read it.
    F16,
}

/// The input of a command: text or token ids.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PromptArgs {
    /// Prompt text (tokenized with the model's BOS rule).
    #[arg(long, short = 'p')]
    pub prompt: Option<OsString>,
    /// Token ids, comma-separated, used exactly as given (no BOS added).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
}

impl PromptArgs {
    /// The prompt text, if given; non-UTF-8 bytes are an error.
    pub fn text(&self) -> Result<Option<&str>> {
        match &self.prompt {
            None => Ok(None),
            Some(p) => match p.to_str() {
                Some(s) => Ok(Some(s)),
                None => bail!("--prompt is not valid UTF-8"),
            },
        }
    }
}

/// Opens the file, loads the tokenizer and the target on the chosen device, showing a
/// progress bar on a terminal.
pub fn load(args: &ModelArgs) -> Result<(Arc<gguf::GgufFile>, Tokenizer, Target)> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => crate::assets::file(crate::assets::TARGET)?,
    };
    let file = Arc::new(gguf::GgufFile::open(&path)?);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let (backend, on_gpu) = backend(args.device)?;
    tracing::info!(model = %path.display(), backend = %backend.name(), "loading");
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:32}] {bytes}/{total_bytes}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(file_label(&path));
    let options = TargetOptions {
        n_ctx: args.ctx,
        // Long prefill chunks keep the GPU's products on tensor-core tiles; the CPU gains
        // nothing from them.
        max_batch: args.batch.unwrap_or(if on_gpu { 512 } else { 64 }),
        kv_dtype: match args.kv_type {
            Some(KvType::F32) => graph::DType::F32,
            Some(KvType::F16) => graph::DType::F16,
            None if on_gpu => graph::DType::F16,
            None => graph::DType::F32,
        },
    };
    let target = Target::load(file.clone(), backend, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok((file, tokenizer, target))
}

fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The backend for `device`, and whether it is a GPU.
fn backend(device: Device) -> Result<(Box<dyn graph::Backend>, bool)> {
    match device {
        Device::Cpu => Ok((Box::new(graph::CpuBackend::new()), false)),
        Device::Auto if !kernels::cuda_available() => {
            tracing::info!("no CUDA device or library found; running on the CPU");
            Ok((Box::new(graph::CpuBackend::new()), false))
        }
        Device::Auto | Device::Cuda => Ok((Box::new(kernels::CudaBackend::new(0)?), true)),
    }
}
