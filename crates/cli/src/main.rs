//! `specula`: the command-line front end of the runtime.
//!
//! Stdout carries only the command's output (text or JSON); errors go to stderr as one line and
//! the process exits non-zero.

#![deny(unsafe_code)]

mod assets;
mod convert;
mod doctor;
mod generate;
mod inspect;
mod logits;
mod model;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fast lossless Gemma 4 inference with speculative decoding. With no command: generate Python
/// with the bundled small model and its MTP assistant, and print the speculative statistics.
#[derive(Parser, Debug)]
#[command(name = "specula", version, about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The prompt of the main job (`specula` with no command): the bundled model writes Python.
const MAIN_JOB_PROMPT: &str =
    "class Queue:\n    \"\"\"A FIFO queue.\"\"\"\n\n    def __init__(self, maxsize=0):";

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a GGUF file's architecture, key metadata and tensor summary.
    Inspect(inspect::InspectArgs),
    /// Generate text from a prompt.
    Generate(generate::GenerateArgs),
    /// Write the logits and final hidden states of a token sequence to a safetensors file.
    Logits(logits::LogitsArgs),
    /// Convert a transformers checkpoint folder (Gemma 4 target, MTP assistant, DFlash
    /// drafter) to GGUF in llama.cpp's layout.
    Convert(convert::ConvertArgs),
    /// Check the GPU driver, devices and NVRTC, and say what is missing.
    Doctor,
}

/// Logs go to stderr, never stdout (which carries only the command's output).
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.command.is_none() {
        // The main job: the bundled model with its MTP assistant, text then statistics.
        let verbose = cli.verbose;
        cli = Cli::parse_from([
            "specula",
            "generate",
            "--prompt",
            MAIN_JOB_PROMPT,
            "-n",
            "160",
            "--stats",
            "--echo",
        ]);
        cli.verbose = verbose;
    }
    init_logging(cli.verbose);
    let Some(command) = &cli.command else {
        unreachable!("the main job sets a command")
    };
    let result = match command {
        Command::Inspect(args) => inspect::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Doctor => doctor::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("specula: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
