//! The command line: argument parsing and the thin glue from commands to the library.
//! The only place besides the TUI allowed to print; errors are `anyhow` here and nowhere below.

pub mod bench;
pub mod check;
pub mod demo;
pub mod detach;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod label;
pub mod metrics;
pub mod paths;
pub mod run;
pub mod runs;
pub mod score;
pub mod world;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use std::path::{Path, PathBuf};

use crate::model::generate::Sampling;
use crate::model::parse_device;
use crate::train::loss::PreferenceLoss;
pub use error::error_text;
use error::is_broken_pipe;

/// hone: a terminal workbench for post-training language models.
#[derive(Debug, Parser)]
#[command(name = "hone", version, about, long_about = None)]
pub struct Cli {
    /// What to do; nothing: open the newest run of the runs directory (or offer the demo).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Bare `hone`: where the runs are.
    #[command(flatten)]
    pub runs: RunsDirArg,
    /// Bare `hone`: the dashboard's theme.
    #[command(flatten)]
    pub theme: ThemeArg,
}

/// `--runs-dir`, on every command that reads or writes runs. Precedence: this flag, then
/// `$HONE_RUNS_DIR`, then `./runs` ([`crate::config::runs_dir`]); `hone paths` shows the one in use.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunsDirArg {
    /// Where the runs are (default: $HONE_RUNS_DIR, else ./runs).
    #[arg(long = "runs-dir", value_name = "DIR")]
    pub runs_dir: Option<PathBuf>,
}

impl RunsDirArg {
    /// The runs directory in use.
    pub fn resolve(&self) -> PathBuf {
        crate::config::runs_dir(self.runs_dir.as_deref())
    }
}

/// `--theme`, on every command that opens the dashboard.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThemeArg {
    /// The dashboard's theme: default, light, high-contrast, a NAME.toml in the config directory's
    /// themes/ (see `hone paths`), or a file patching the default roles (see themes/default.toml).
    /// NO_COLOR drops colours.
    #[arg(long, value_name = "THEME")]
    pub theme: Option<PathBuf>,
}

/// `--runs-dir` and `--theme`, on the commands that start or open runs in the dashboard.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunsAndTheme {
    /// `--runs-dir`.
    #[command(flatten)]
    pub runs: RunsDirArg,
    /// `--theme`.
    #[command(flatten)]
    pub theme: ThemeArg,
}

/// hone's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline (SFT → DPO → safety ...) described by a TOML file.
    ///
    /// Without --headless the worker starts detached (its own session, output in the run's
    /// worker.log) and the dashboard attaches; quitting it or losing the terminal never stops
    /// training (without a terminal, the run directory is printed instead). With --headless the
    /// worker runs in the foreground: one progress line per stage on stderr, the run directory
    /// on stdout when done. SIGINT/SIGTERM checkpoint at the next step
    /// boundary and exit 0; a second signal exits at once. The run directory holds everything
    /// (config, events, checkpoints); `hone resume` continues it.
    Run {
        /// The pipeline file (see sample-data/pipeline.toml).
        pipeline: PathBuf,
        /// Run in the foreground instead of detached.
        #[arg(long)]
        headless: bool,
        /// `--runs-dir`, `--theme`.
        #[command(flatten)]
        at: RunsAndTheme,
        /// Only these stages, comma-separated (others are skipped).
        #[arg(long, value_delimiter = ',')]
        stages: Option<Vec<String>>,
        /// Cap optimizer steps per stage.
        #[arg(long)]
        max_steps: Option<u64>,
        /// Checkpoint every N steps (overrides the pipeline file).
        #[arg(long)]
        checkpoint_every: Option<u64>,
        /// Seed (overrides the pipeline file).
        #[arg(long)]
        seed: Option<u64>,
        /// Fault injection for tests: a NaN loss at these global steps.
        #[arg(long, hide = true, value_delimiter = ',')]
        inject_nan_at: Vec<u64>,
    },
    /// Run the sample world: base → SFT → DPO → safety → evaluation gates, on a tiny model
    /// built into hone (nothing to download).
    ///
    /// The sample world is unpacked on first use into hone's data directory (see `hone paths`).
    /// Without --headless this is `hone run <data>/pipeline.toml`. With it, the progress lines,
    /// then the wall time of every phase, the scorecard of every stage and the gate decision.
    /// Exits 0 whatever the gates decide; only errors exit non-zero. Writes only inside its run
    /// directory; the data directory is never modified.
    Demo {
        /// Run in the foreground and print the summary.
        #[arg(long)]
        headless: bool,
        /// `--runs-dir`, `--theme`.
        #[command(flatten)]
        at: RunsAndTheme,
        /// Another sample world: a directory with pipeline.toml (default: the built-in one,
        /// unpacked into hone's data directory).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Cap optimizer steps per stage (a shortened demo).
        #[arg(long)]
        max_steps: Option<u64>,
    },
    /// Continue a run from its newest complete checkpoint.
    ///
    /// Refused when the pipeline file, a data file or the tokenizer changed since the run
    /// started (the changes are listed), unless --force.
    Resume {
        /// The run directory (runs/<run-id>).
        run_dir: PathBuf,
        /// Run in the foreground instead of detached.
        #[arg(long)]
        headless: bool,
        /// `--theme`.
        #[command(flatten)]
        theme: ThemeArg,
        /// `--force`, `--from-step`.
        #[command(flatten)]
        resume: detach::WorkerArgs,
    },
    /// The detached worker of a prepared run directory (started by `hone run`/`hone resume`).
    #[command(hide = true)]
    Worker {
        /// The run directory.
        #[arg(long)]
        run_dir: PathBuf,
        /// `--force`, `--from-step`.
        #[command(flatten)]
        resume: detach::WorkerArgs,
    },
    /// Open the dashboard on a run (live or finished): the loss and every λ-weighted term,
    /// DPO rewards, progress, warnings. `q` detaches; training is never stopped by the screen.
    Attach {
        /// The run directory; default: the newest run of the runs directory.
        run_dir: Option<PathBuf>,
        /// `--runs-dir`, `--theme`.
        #[command(flatten)]
        at: RunsAndTheme,
    },
    /// List the runs of a runs directory with their state (running, completed, stopped, failed,
    /// interrupted), last step and newest checkpoint.
    Runs {
        /// `--runs-dir`.
        #[command(flatten)]
        runs: RunsDirArg,
    },
    /// Print the directories hone uses: runs (--runs-dir, else $HONE_RUNS_DIR, else ./runs),
    /// configuration (themes/, keys.toml) and data (the demo's sample world).
    Paths {
        /// `--runs-dir`.
        #[command(flatten)]
        runs: RunsDirArg,
    },
    /// Export a run's metrics (events.jsonl) for other tools: one CSV file per stage, or
    /// TensorBoard scalar event files (one run per stage, `tensorboard --logdir OUT`).
    Metrics {
        /// The run directory.
        run_dir: PathBuf,
        /// csv or tensorboard.
        #[arg(long, value_enum, default_value = "csv")]
        format: metrics::Format,
        /// Output directory (default: <run>/export/<format>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Evaluate a model on a suite: generate, judge by rule, score per segment, apply the
    /// release gates. Writes report.json and failures.jsonl; exit 0 when every gate passes, 1
    /// when one fails or is incomplete (e.g. no baseline, no red-team items), 2 on bad input.
    Eval {
        /// The model, suite and options.
        #[command(flatten)]
        args: eval::EvalArgs,
    },
    /// Write a stage's trained weights out of a run: the PEFT adapter directory of a LoRA run
    /// (adapter_config.json + adapter_model.safetensors), or with --merge a full model directory
    /// transformers loads (the adapter merged into its base). Prints the directory.
    Export {
        /// The run directory.
        run_dir: PathBuf,
        /// The stage whose final checkpoint to export (a fix stage's later rounds as `<stage>.<round>`,
        /// e.g. `safety-fix.2`).
        #[arg(long)]
        stage: String,
        /// Merge a LoRA adapter into the base model.
        #[arg(long)]
        merge: bool,
        /// Output directory (default: <run>/exports/<stage>, or <stage>-merged with --merge).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Validate a pipeline and its data before training: per dataset, record counts, a
    /// token-length histogram, truncation, and one example with its trained tokens marked.
    /// Exit 1 on any error.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Score a JSONL file with a model: SFT losses, or DPO/IPO log-probs, rewards and losses
    /// (with --ref), as TRL computes them. One JSON line per record, then a summary line.
    Score {
        /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory applied to --model (the reference stays --ref's).
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// Reference model directory for preference data (DPO's frozen policy).
        #[arg(long = "ref")]
        reference: Option<PathBuf>,
        /// JSONL in TRL's formats: {"messages"}, {"prompt","completion"} or {"prompt","chosen","rejected"}.
        #[arg(long)]
        data: PathBuf,
        /// DPO β.
        #[arg(long, default_value_t = 0.1)]
        beta: f64,
        /// Preference loss: sigmoid (DPO) or ipo.
        #[arg(long, default_value = "sigmoid")]
        loss: PreferenceLoss,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Generate continuations with the KV cache; one JSON line per prompt.
    Generate {
        /// Hugging Face model directory.
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory applied to --model.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// JSONL of {"messages": [...]} (chat-templated) or {"prompt": "..."} records.
        #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
        data: Option<PathBuf>,
        /// One plain-text prompt.
        #[arg(long)]
        prompt: Option<String>,
        /// Upper bound on new tokens.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling mass.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Label preference pairs: a prompt and two responses side by side, order randomised and
    /// the source hidden. Each label is appended to the labels file (fsynced, locked: several
    /// labelers may share it). Keys: a/← left better, b/→ right better, t tie, s skip, u undo,
    /// e write a better answer in $EDITOR (it starts from the left answer, which becomes the
    /// rejected one), r rubric, g ask the run's live policy for new pairs (with --run), q quit.
    Label {
        /// Candidates: JSONL of {"prompt": string or messages, "responses": [at least two]}.
        #[arg(long)]
        candidates: Option<PathBuf>,
        /// The labels file (default: the run's labels.jsonl: --run's, else the newest live run's
        /// in the runs directory; with neither, hone label refuses).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Who labels (default: $USER).
        #[arg(long)]
        labeler: Option<String>,
        /// A rubric file, shown on `r`.
        #[arg(long)]
        rubric: Option<PathBuf>,
        /// A run directory: its candidates.jsonl feeds the queue and its labels_admitted events
        /// count the pairs the DPO stage consumed.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Share of pairs served a second time, for agreement (0 to 1).
        #[arg(long, default_value_t = 0.1)]
        repeat_share: f64,
        /// Seed of the left/right orders and of the repeats (default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// `--runs-dir`.
        #[command(flatten)]
        runs: RunsDirArg,
    },
    /// Time one full training step (or greedy generation) on a fixed preset, as one JSON line.
    Bench {
        /// The model and batch shape: `cpu-small` (Llama, vocab 4096, hidden 256, 4 layers,
        /// batch 8 x 256 tokens) or `cpu-135m` (the 135M Llama shape: vocab 49152, hidden 576,
        /// 30 layers, batch 8 x 128 tokens).
        #[arg(long, default_value = "cpu-small")]
        preset: String,
        /// Tokens per sequence instead of the preset's (the prompt stays a quarter of it).
        #[arg(long)]
        seq: Option<usize>,
        /// Sequences per step instead of the preset's (even: DPO pairs them).
        #[arg(long)]
        batch: Option<usize>,
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
        /// Recompute each decoder layer's activations in the backward pass.
        #[arg(long)]
        gradient_checkpointing: bool,
        /// Train a LoRA of rank R (`16` or `r16`: alpha 2R, dropout 0, all seven projections) on
        /// a frozen base instead of every weight.
        #[arg(long, value_name = "R", value_parser = bench::parse_lora_rank)]
        lora: Option<usize>,
        /// f32, or bf16 (bf16 matmuls over f32 master weights; with --lora a bf16 frozen base
        /// under f32 adapters).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

/// Parses the arguments and runs the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::sanitize::sanitize(&error_text(&e), true));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let Some(command) = cli.command else {
        return detach::open_default(&cli.runs.resolve(), cli.theme.theme.as_deref());
    };
    match command {
        Command::Run { pipeline, headless, at, stages, max_steps, checkpoint_every, seed, inject_nan_at } => {
            let overrides = run::Overrides { stages, max_steps, checkpoint_every, seed, inject_nan_at };
            let dir = run::start_run(&pipeline, headless, &at.runs.resolve(), &overrides, at.theme.theme.as_deref())?;
            if headless {
                println!("{}", dir.display());
            }
        }
        Command::Demo { headless, at, data, max_steps } => {
            let args = demo::DemoArgs { headless, runs_dir: at.runs.resolve(), data, max_steps };
            let start = |pipeline: &Path, headless: bool, runs_dir: &Path, overrides: &run::Overrides| {
                run::start_run(pipeline, headless, runs_dir, overrides, at.theme.theme.as_deref())
            };
            // Not `stdout.lock()`: without --headless `start_run` attaches the dashboard, whose UI
            // thread writes to stdout; a lock held here would block it forever (a blank screen).
            demo::run(&args, start, &mut std::io::stdout())?;
        }
        Command::Resume { run_dir, headless, theme, resume } => {
            if headless {
                let overrides = run::Overrides { inject_nan_at: resume.inject_nan_at, ..run::Overrides::default() };
                let dir = run::resume(&run_dir, resume.force, resume.from_step, &overrides)?;
                println!("{}", dir.display());
            } else {
                let run = crate::run::RunDir::open(&run_dir)?;
                let pid = detach::spawn_worker(&run, &resume)?;
                detach::attach_or_print(&run, pid, theme.theme.as_deref())?;
            }
        }
        Command::Worker { run_dir, resume } => {
            let overrides = run::Overrides { inject_nan_at: resume.inject_nan_at, ..run::Overrides::default() };
            run::worker(&run_dir, resume.force, resume.from_step, &overrides)?;
        }
        Command::Eval { args } => {
            let passed = eval::run(&args, &parse_device(&args.device)?, &mut stdout.lock())?;
            return Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        Command::Attach { run_dir, at } => {
            let dir = if let Some(d) = run_dir {
                d
            } else {
                let runs_dir = at.runs.resolve();
                crate::run::RunDir::newest(&runs_dir)?
                    .map(|r| r.path().to_path_buf())
                    .ok_or_else(|| anyhow::anyhow!("{}", runs::no_runs_message(&runs_dir)))?
            };
            crate::tui::attach(&dir, at.theme.theme.as_deref())?;
        }
        Command::Runs { runs } => runs::run(&runs.resolve(), &mut stdout.lock())?,
        Command::Paths { runs } => paths::run(&runs, &mut stdout.lock())?,
        Command::Metrics { run_dir, format, out } => {
            metrics::run(&run_dir, format, out.as_deref(), &mut stdout.lock())?;
        }
        Command::Export { run_dir, stage, merge, out } => {
            export::run(&export::ExportArgs { run_dir, stage, merge, out }, &mut stdout.lock())?;
        }
        Command::Check { pipeline } => {
            return Ok(if check::run(&pipeline, &mut stdout.lock())? { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        Command::Score { model, adapter, reference, data, beta, loss, device } => {
            if !(beta > 0.0 && beta.is_finite()) {
                anyhow::bail!("--beta must be a positive number, got {beta}");
            }
            let args = score::ScoreArgs { model, adapter, reference, data, beta, loss };
            score::run(&args, &parse_device(&device)?, &mut stdout.lock())?;
        }
        Command::Generate { model, adapter, data, prompt, max_new_tokens, temperature, top_p, seed, device } => {
            let temperature_ok = temperature >= 0.0 && temperature.is_finite();
            let top_p_ok = top_p > 0.0 && top_p <= 1.0;
            if !(temperature_ok && top_p_ok) {
                anyhow::bail!("--temperature must be >= 0 and --top-p in (0, 1]");
            }
            let prompts = match (data, prompt) {
                (Some(d), _) => generate::Prompts::File(d),
                (None, Some(p)) => generate::Prompts::Text(p),
                (None, None) => anyhow::bail!("give --data FILE or --prompt TEXT"),
            };
            let sampling = Sampling { temperature, top_p, seed, max_new_tokens };
            let device = parse_device(&device)?;
            generate::run(&model, adapter.as_deref(), &prompts, &sampling, &device, &mut stdout.lock())?;
        }
        Command::Label { candidates, labels, labeler, rubric, run, repeat_share, seed, runs } => {
            let runs_dir = runs.resolve();
            label::run(&label::LabelArgs { candidates, labels, labeler, rubric, run, repeat_share, seed, runs_dir })?;
        }
        Command::Bench {
            preset,
            seq,
            batch,
            mode,
            steps,
            warmup,
            threads,
            device,
            gradient_checkpointing,
            lora,
            dtype,
        } => {
            let mut preset = bench::preset(&preset)?;
            if let Some(seq) = seq {
                preset = preset.with_seq(seq);
            }
            if let Some(batch) = batch {
                preset = preset.with_batch(batch);
            }
            bench::set_threads(threads);
            let device = parse_device(&device)?;
            let dtype = crate::model::parse_dtype(&dtype)?;
            let options = bench::BenchOptions { gradient_checkpointing, lora, dtype };
            println!("{}", bench::run_with(&preset, mode, steps, warmup, &device, options)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
