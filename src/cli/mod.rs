//! The command line: argument parsing and the thin glue from commands to the library.
//! The only place besides the TUI allowed to print; errors are `anyhow` here and nowhere below.

pub mod bench;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::model::parse_device;

/// hone: a terminal workbench for post-training language models.
#[derive(Debug, Parser)]
#[command(name = "hone", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// hone's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Time one full training step (or greedy generation) on a fixed preset, as one JSON line.
    Bench {
        /// The model and batch shape: `cpu-small` (Llama, vocab 4096, hidden 256, 4 layers,
        /// batch 8 x 256 tokens).
        #[arg(long, default_value = "cpu-small")]
        preset: String,
        /// What to time.
        #[arg(long, value_enum, default_value = "sft")]
        mode: bench::BenchMode,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// Parses the arguments and runs the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Bench { preset, mode, steps, warmup, threads, device } => {
            if preset != "cpu-small" {
                anyhow::bail!("--preset {preset:?}: the only preset is cpu-small");
            }
            set_threads(threads);
            let device = parse_device(&device)?;
            println!("{}", bench::run(mode, steps, warmup, &device)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// candle's CPU kernels size their thread pool from `RAYON_NUM_THREADS` on first use.
fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
