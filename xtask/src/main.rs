//! Developer commands, run as `cargo xtask <command>` (rust-analyzer's xtask pattern).
//!
//! - `ci`: formatting check, clippy with warnings denied, and the workspace tests — what
//!   `.ci/run` runs.
//! - `fixtures`: checks that `fixtures/` holds unchanged copies of `../shared/fixtures`.
//! - `gpu-test`: builds the GPU test binaries and `specula` in release mode into the git-ignored
//!   `gpu-bundle/` with a `run.sh` that runs them all on the lent GPU machine (`REQUIRE_GPU=1`).
//! - `kernels [--verbose] [--cubin-dir DIR] [--knobs]`: compiles every CUDA kernel with NVRTC
//!   for sm_80, sm_86, sm_89, sm_90 and sm_90a and prints registers, shared memory and spills
//!   (no GPU needed, only libnvrtc); `--knobs` also compiles each A/B knob's variants for sm_90a
//!   (a 9.0 device's build).
//! - `gguf-to-hf GGUF --template DIR --out DIR`: a Gemma 4 target GGUF back to a transformers
//!   folder with f32 weights (`tools/train` trains drafters against the shipped target this way).

#![deny(unsafe_code)]

mod accept;
mod bench;
mod synth;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("fixtures") => fixtures(),
        Some("kernels") => compile_kernels(&args[1..]),
        Some("gpu-test") => gpu_test(),
        Some("synth") => synth::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("accept") => accept::run(&args[1..]),
        Some("gguf-to-hf") => gguf_to_hf(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <ci|fixtures|kernels [--verbose] [--cubin-dir DIR] [--knobs]|gpu-test|bench [--models DIR] [--out DIR]|accept [--device cpu|cuda] [--limit K]|gguf-to-hf GGUF --template DIR --out DIR|synth --model M [--quant Q] [--drafter D] --out DIR>");
            std::process::exit(2);
        }
    }
}

/// `gguf-to-hf GGUF --template DIR --out DIR`: see [`convert::export_target`].
fn gguf_to_hf(args: &[String]) -> Result<()> {
    let usage = "usage: cargo xtask gguf-to-hf GGUF --template HF_DIR --out DIR";
    let (mut gguf, mut template, mut out) = (None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--template" => template = it.next().map(PathBuf::from),
            "--out" => out = it.next().map(PathBuf::from),
            flag if flag.starts_with("--") => bail!("unknown flag {flag}; {usage}"),
            path if gguf.is_none() => gguf = Some(PathBuf::from(path)),
            extra => bail!("unexpected argument {extra}; {usage}"),
        }
    }
    let (Some(gguf), Some(template), Some(out)) = (gguf, template, out) else {
        bail!("{usage}");
    };
    let done = convert::export_target(&gguf, &template, &out)?;
    eprintln!(
        "{}: {} tensors (f32) and {} template files",
        done.dir.display(),
        done.n_tensors,
        done.n_files
    );
    Ok(())
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

/// `kernels [--verbose] [--cubin-dir DIR]`: compiles every kernel with NVRTC for each
/// architecture and reports spills (`--verbose`: ptxas's whole log, registers per kernel);
/// `--cubin-dir` also writes each image as `DIR/<arch>.cubin`, for `nvdisasm` (instruction
/// counts per kernel with no GPU). sm_90a is what 9.0 devices build (`nvrtc::arch_for`): the
/// wgmma verify kernel compiles to working code only there.
fn compile_kernels(args: &[String]) -> Result<()> {
    let mut verbose = false;
    let mut cubin_dir: Option<PathBuf> = None;
    let mut knobs = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--verbose" => verbose = true,
            "--knobs" => knobs = true,
            "--cubin-dir" => {
                cubin_dir = Some(PathBuf::from(
                    it.next().context("--cubin-dir needs a value")?,
                ))
            }
            other => bail!("kernels: unknown argument {other}"),
        }
    }
    if let Some(dir) = &cubin_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (major, minor) = kernels::nvrtc::nvrtc_version().map_err(anyhow::Error::msg)?;
    println!("NVRTC {major}.{minor}");
    let source = kernels::source::full_source();
    let names = kernels::source::all_kernel_names();
    for arch in ["sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"] {
        let compiled =
            kernels::nvrtc::compile(&source, arch, false, true).map_err(anyhow::Error::msg)?;
        let spills = spill_lines(&compiled.log);
        println!(
            "{arch}: {} kernels, cubin {} bytes, {} lines with spills",
            names.len(),
            compiled.image.len(),
            spills.len()
        );
        if let Some(dir) = &cubin_dir {
            let path = dir.join(format!("{arch}.cubin"));
            std::fs::write(&path, &compiled.image)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if verbose {
            println!("{}", compiled.log);
        } else {
            for l in spills {
                println!("  {l}");
            }
        }
    }
    if knobs {
        compile_knob_variants()?;
    }
    Ok(())
}

/// The lines of a ptxas log that report spilled bytes.
fn spill_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
        })
        .collect()
}

/// Compiles the kernels for sm_90a (what a 9.0 device builds: every sm_90 kernel and the wgmma
/// verify kernel, whose chain form `Q4K_HL` picks) once per A/B knob variant
/// (`KnobDefine::variants`), each alone, so a knob that no longer compiles fails here rather
/// than on the GPU machine.
fn compile_knob_variants() -> Result<()> {
    for knob in kernels::source::KNOB_DEFINES {
        for &n in knob.variants {
            let source = kernels::source::source_with(&[(knob, n)]);
            let compiled = kernels::nvrtc::compile(&source, "sm_90a", false, true)
                .map_err(|e| anyhow::anyhow!("{}={n}: {e}", knob.var))?;
            let spills = spill_lines(&compiled.log).len();
            println!(
                "{}={n} ({} {n}): sm_90a compiles, {spills} lines with spills",
                knob.var, knob.name
            );
        }
    }
    Ok(())
}

/// Test binaries of these packages travel to the GPU machine.
const GPU_TEST_PACKAGES: &[&str] = &["kernels"];

/// Builds with `args` (JSON messages) and returns the executables of test or bench targets.
fn built_executables(args: &[&str]) -> Result<Vec<PathBuf>> {
    eprintln!("$ cargo {}", args.join(" "));
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(repo_root())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"") {
            continue;
        }
        let is_test = line.contains("\"test\":true") || line.contains("\"kind\":[\"bench\"]");
        if let (true, Some(start)) = (is_test, line.find("\"executable\":\"")) {
            let rest = &line[start + 14..];
            if let Some(end) = rest.find('"') {
                exes.push(PathBuf::from(&rest[..end]));
            }
        }
    }
    Ok(exes)
}

fn gpu_test() -> Result<()> {
    let root = repo_root();
    let bundle = root.join("gpu-bundle");
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle)?;
    }
    std::fs::create_dir_all(&bundle)?;
    let mut args = vec!["test", "--release", "--no-run", "--message-format=json"];
    for p in GPU_TEST_PACKAGES {
        args.extend(["-p", p]);
    }
    let mut tests = built_executables(&args)?;
    let benches = built_executables(&[
        "build",
        "--release",
        "--benches",
        "-p",
        "kernels",
        "--message-format=json",
    ])?;
    cargo(&["build", "--release", "-p", "cli", "-p", "xtask"])?;
    tests.retain(|t| {
        !t.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("kernels-"))
    });
    let mut names = Vec::new();
    let mut bench_names = Vec::new();
    let specula = root.join("target/release/specula");
    // The release xtask runs `bench` there: `gpu-bundle/xtask bench --out $OUT/results`.
    let xtask = root.join("target/release/xtask");
    for exe in tests.iter().chain(&benches).chain([&specula, &xtask]) {
        let mut name = exe
            .file_name()
            .expect("executables have names")
            .to_string_lossy()
            .into_owned();
        if benches.contains(exe) {
            name = format!("bench-{}", name.split('-').next().unwrap_or("gpu"));
            bench_names.push(name.clone());
        }
        let dest = bundle.join(&name);
        std::fs::copy(exe, &dest)?;
        let _ = Command::new("strip").arg(&dest).status();
        names.push(name);
    }
    let mut script = String::from("#!/usr/bin/env bash\n# Runs every GPU test binary from the repository root; prints a table last.\nset -u\ncd \"$(dirname \"$0\")/..\"\nexport REQUIRE_GPU=1\nstatus=0\ntable=\"\"\n");
    for name in names
        .iter()
        .filter(|n| *n != "specula" && *n != "xtask" && !bench_names.contains(n))
    {
        script.push_str(&format!("if ./gpu-bundle/{name} --test-threads=1 --nocapture; then r=pass; else r=FAIL; status=1; fi\ntable=\"$table\\n{name}\\t$r\"\n"));
    }
    script.push_str("printf \"%b\\n\" \"$table\"\nexit $status\n");
    let run = bundle.join("run.sh");
    std::fs::write(&run, script)?;
    let _ = Command::new("chmod").arg("+x").arg(&run).status();
    let total: u64 = names
        .iter()
        .map(|n| {
            std::fs::metadata(bundle.join(n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    println!("gpu-bundle/: {} files, {:.1} MiB; run gpu-bundle/run.sh (tests) and gpu-bundle/xtask bench (real-size figures) on the GPU machine (carry gpu-bundle)", names.len() + 1, total as f64 / (1 << 20) as f64);
    Ok(())
}
