//! `specula`: the command-line front end of the runtime.
//!
//! Stdout carries only the command's output (text or JSON); errors go to stderr as one line and
//! the process exits non-zero.

#![deny(unsafe_code)]

mod inspect;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fast lossless Gemma 4 inference with speculative decoding.
#[derive(Parser, Debug)]
#[command(name = "specula", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a GGUF file's architecture, key metadata and tensor summary.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("specula: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
