//! Developer commands, run as `cargo xtask <command>` (rust-analyzer's xtask pattern).
//!
//! - `ci`: formatting check, clippy with warnings denied, and the workspace tests — what
//!   `.ci/run` runs.
//! - `fixtures`: checks that `fixtures/` holds unchanged copies of `../shared/fixtures`.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("fixtures") => fixtures(),
        _ => {
            eprintln!("usage: cargo xtask <ci|fixtures>");
            std::process::exit(2);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

fn fixtures() -> Result<()> {
    let root = repo_root();
    let shared = root.join("../shared/fixtures");
    if !shared.exists() {
        bail!("{} not found: nothing to compare against", shared.display());
    }
    let mut bad = 0;
    for entry in std::fs::read_dir(&shared)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !(name.ends_with(".gguf")
            || name.ends_with(".safetensors")
            || name.ends_with(".json")
            || name.ends_with(".md"))
        {
            continue;
        }
        let ours = root.join("fixtures").join(&*name);
        let status = if !ours.exists() {
            "MISSING"
        } else if sha256(&ours)? != sha256(&shared.join(&*name))? {
            "DIFFERS"
        } else {
            "ok"
        };
        if status != "ok" {
            bad += 1;
        }
        println!("{status:<8} fixtures/{name}");
    }
    if bad > 0 {
        bail!("{bad} fixture(s) missing or changed: copy them unchanged from ../shared/fixtures");
    }
    Ok(())
}
