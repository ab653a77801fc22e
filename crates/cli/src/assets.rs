//! The bundled default model: a small Gemma 4 target trained on Python source with its MTP
//! assistant and DFlash drafter (`assets/`, see `tools/train/`), used when no `--model` is given.

use std::path::{Path, PathBuf};

/// File name of the bundled target in `assets/`.
pub const TARGET: &str = "specula-py-target.q4_k_m.gguf";
/// File name of the bundled MTP assistant in `assets/`.
pub const ASSISTANT: &str = "specula-py-assistant.q8_0.gguf";
/// File name of the bundled DFlash drafter in `assets/`.
pub const DFLASH: &str = "specula-py-dflash.q8_0.gguf";

/// The `assets/` folder: `SPECULA_ASSETS` if set, else the source tree's (for `cargo run`), else
/// `assets/` beside the executable or in the working directory.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPECULA_ASSETS") {
        return PathBuf::from(d);
    }
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("assets")));
    [Some(source_tree), beside_exe, Some(PathBuf::from("assets"))]
        .into_iter()
        .flatten()
        .find(|d| d.join(TARGET).is_file())
        .unwrap_or_else(|| PathBuf::from("assets"))
}

/// The bundled file `name`, or an error saying where it was looked for.
pub fn file(name: &str) -> anyhow::Result<PathBuf> {
    let path = dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!(
            "{}: the bundled model file is missing (give --model, or set SPECULA_ASSETS to the assets folder)",
            path.display()
        )
    }
}
