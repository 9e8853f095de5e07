//! `hone eval`: generate an answer to every suite item with the model (and the baseline), judge
//! them by rule, and write `report.json` and `failures.jsonl`; the exit code is the gate decision.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;

use super::score::Loaded;
use crate::config::BestOf;
use crate::eval::{
    failures, read_overrides, read_suite, score, summary_table, BestOfInfo, Decision, EvalConfig, EvalItem, Judge,
    Report, Response, ScoreInputs,
};
use crate::model::RewardModel;
use crate::run::{EVAL_FAILURES, EVAL_REPORT};
use crate::sanitize::sanitize;
use crate::train::evaluate::Answerer;

/// What `hone eval` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// The candidate model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory applied to --model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// The eval suite (JSONL: id, prompt, reference?, kind, segment, checks, attack?).
    #[arg(long)]
    pub suite: PathBuf,
    /// The current model, for the win rate and the baseline-relative gates.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// TOML with [judge] (refusal/abstention patterns) and [gates] tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Human verdict overrides (JSONL of {id, passed}).
    #[arg(long)]
    pub overrides: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// Upper bound on each answer's tokens (the default of a pipeline's [eval] too).
    #[arg(long, default_value_t = crate::config::DEFAULT_EVAL_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Prompts generated together (answers are those of one prompt alone; a response's
    /// latency runs from its batch's start to the step its answer ended).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Serving price per device-hour (for cost per 1,000 responses).
    #[arg(long, default_value_t = 0.0)]
    pub price_per_device_hour: f64,
    /// Best-of-n: sample this many answers per prompt and keep the one the reward model
    /// scores highest (latency, tokens and cost count every sample and the reranking).
    #[arg(long, requires = "reward_model", value_parser = clap::value_parser!(u64).range(1..))]
    pub best_of: Option<u64>,
    /// The reranker of --best-of: a sequence-classification directory with the model's tokenizer.
    #[arg(long, requires = "best_of")]
    pub reward_model: Option<PathBuf>,
    /// Sampling temperature of --best-of.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl EvalArgs {
    /// Best-of-n answers of the candidate (the baseline stays greedy), when asked.
    fn best_of(&self) -> Option<BestOf> {
        let (n, reward_model) = (self.best_of?, self.reward_model.clone()?);
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        Some(BestOf { n, reward_model, temperature: self.temperature, seed: 0, gate: true })
    }

    /// Prompts generated together.
    fn batch_size(&self) -> usize {
        usize::try_from(self.batch_size).unwrap_or(usize::MAX)
    }
}

/// Greedy answers to every item with a loaded model.
fn answer_all(model: &Loaded, items: &[EvalItem], args: &EvalArgs) -> Result<Vec<Response>> {
    Ok(crate::train::evaluate::answer_all(
        &model.model,
        &model.tokenizer,
        model.template.as_ref(),
        items,
        args.max_new_tokens,
        args.batch_size(),
    )?)
}

/// Best-of-n answers of a loaded model, reranked by the reward model of `best_of`, which must
/// read the ids the model's tokenizer makes.
fn answer_best_of(
    model: &Loaded,
    best_of: &BestOf,
    items: &[EvalItem],
    args: &EvalArgs,
    device: &Device,
) -> Result<Vec<Response>> {
    if !(best_of.temperature.is_finite() && best_of.temperature > 0.0) {
        bail!("--temperature: must be a finite number > 0 for sampling (got {})", best_of.temperature);
    }
    let dir = &best_of.reward_model;
    if !crate::data::same_tokenizer(&args.model, dir).map_err(|e| anyhow!("--reward-model: {e}"))? {
        bail!(
            "--reward-model: {}'s tokenizer differs from the model's ({}): a reward model must read the ids the model's tokenizer makes",
            dir.display(),
            args.model.display()
        );
    }
    let reward = RewardModel::load(dir, device, candle_core::DType::F32)
        .with_context(|| format!("--reward-model {}", dir.display()))?;
    let answerer = Answerer { model: &model.model, tok: &model.tokenizer, template: model.template.as_ref() };
    let answers = crate::train::evaluate::answer_best_of(
        answerer,
        (&reward, best_of),
        items,
        (args.max_new_tokens, args.batch_size()),
        &mut crate::train::plan::never_interrupt,
    )?;
    answers.ok_or_else(|| anyhow!("answering the suite was interrupted"))
}

fn write_outputs(out: &Path, report: &Report, failed: &[crate::eval::FailureRecord]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let report_path = out.join(EVAL_REPORT);
    std::fs::write(&report_path, serde_json::to_string_pretty(report)?)
        .with_context(|| report_path.display().to_string())?;
    let mut lines = String::new();
    for f in failed {
        lines.push_str(&serde_json::to_string(f)?);
        lines.push('\n');
    }
    let failures_path = out.join(EVAL_FAILURES);
    std::fs::write(&failures_path, lines).with_context(|| failures_path.display().to_string())?;
    Ok(())
}

/// Runs the evaluation; `Ok(true)` when every gate passed.
pub fn run(args: &EvalArgs, device: &Device, out: &mut impl Write) -> Result<bool> {
    let config = match &args.config {
        Some(p) => EvalConfig::read(p)?,
        None => EvalConfig::default(),
    };
    let judge = Judge::new(&config.judge)?;
    let items = read_suite(&args.suite)?;
    let overrides = match &args.overrides {
        Some(p) => read_overrides(p)?,
        None => Vec::new(),
    };
    let dtype = candle_core::DType::F32;
    let candidate = Loaded::open_with_adapter(&args.model, args.adapter.as_deref(), device, dtype)?;
    let best_of = args.best_of();
    let responses = match &best_of {
        Some(best_of) => answer_best_of(&candidate, best_of, &items, args, device)?,
        None => answer_all(&candidate, &items, args)?,
    };
    let (baseline_responses, baseline_report) = match &args.baseline {
        Some(dir) => {
            let base = Loaded::open(dir, device, dtype)?;
            let base_responses = answer_all(&base, &items, args)?;
            let name = dir.display().to_string();
            let mut inputs = ScoreInputs::new("baseline", &name, &items, &base_responses, &judge, &config.gates);
            inputs.price_per_device_hour = args.price_per_device_hour;
            let base_report = score(&inputs)?.report;
            (Some(base_responses), Some(base_report))
        }
        None => (None, None),
    };
    let checkpoint = args.model.display().to_string();
    let mut inputs = ScoreInputs::new("eval", &checkpoint, &items, &responses, &judge, &config.gates);
    inputs.baseline_responses = baseline_responses.as_deref();
    inputs.baseline_report = baseline_report.as_ref();
    inputs.overrides = &overrides;
    inputs.price_per_device_hour = args.price_per_device_hour;
    inputs.best_of = best_of.as_ref().map(|b| BestOfInfo {
        n: b.n,
        temperature: b.temperature,
        reward_model: b.reward_model.display().to_string(),
    });
    let scored = score(&inputs)?;
    let failed = failures(&items, &scored.verdicts, &responses);
    write_outputs(&args.out, &scored.report, &failed)?;
    writeln!(out, "{}", sanitize(&summary_table(&scored.report), true))?;
    writeln!(out, "report: {}", sanitize(&args.out.join(EVAL_REPORT).display().to_string(), false))?;
    Ok(matches!(scored.report.decision(), Decision::Deploy))
}
