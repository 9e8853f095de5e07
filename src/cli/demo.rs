//! `hone demo`: the sample world's pipeline (base → SFT → DPO → safety → gates) in one command.
//!
//! The pipeline is the built-in sample world's `pipeline.toml`, unpacked on first use into hone's
//! data directory (see `world.rs`), or that of `--data DIR`. Everything the demo writes goes into its run directory (the labels file the
//! pipeline names, `labels.jsonl`, resolves there); the data directory is only read. Without
//! `--headless` it takes the same path as `hone run PIPELINE`; with it, the worker runs in the
//! foreground with the usual progress lines, and a summary follows: the wall time of every phase
//! (each stage, each evaluation), the scorecard of every evaluated stage and the gate decisions.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::run::Overrides;
use crate::eval::Report;
use crate::run::{kind, Event, EventReader, RunDir, EVAL_REPORT};
use crate::sanitize::sanitize;

/// What `hone demo` was asked.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Run in the foreground and print the summary.
    pub headless: bool,
    /// Where the run directory is created.
    pub runs_dir: PathBuf,
    /// The sample world (default: the built-in one, see [`default_data_dir`]).
    pub data: Option<PathBuf>,
    /// Cap on optimizer steps per stage (a shortened demo, e.g. for CI).
    pub max_steps: Option<u64>,
}

/// The built-in sample world, unpacked (on first use) under hone's data directory.
pub fn default_data_dir() -> Result<PathBuf> {
    let Some(data) = crate::config::user_data_dir() else {
        bail!("no home directory to unpack the sample world into: name a sample world with --data DIR");
    };
    super::world::ensure_unpacked(&data)
}

/// The pipeline file of a sample world directory.
pub fn pipeline_of(data: &Path) -> Result<PathBuf> {
    let pipeline = data.join("pipeline.toml");
    if !pipeline.is_file() {
        bail!("{}: no pipeline.toml in the demo's data directory", pipeline.display());
    }
    Ok(pipeline)
}

/// Runs the demo; the run directory. `start` is what `hone run` does with a pipeline (so the
/// interactive demo is exactly `hone run sample-data/pipeline.toml`).
pub fn run(
    args: &DemoArgs,
    start: impl FnOnce(&Path, bool, &Path, &Overrides) -> Result<PathBuf>,
    out: &mut impl Write,
) -> Result<PathBuf> {
    let data = match &args.data {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    let pipeline = pipeline_of(&data)?;
    let overrides = Overrides { max_steps: args.max_steps, ..Overrides::default() };
    let dir = start(&pipeline, args.headless, &args.runs_dir, &overrides)?;
    if args.headless {
        let summary = summarise(&dir)?;
        write!(out, "{}", sanitize(&summary, true))?;
    }
    writeln!(out, "{}", sanitize(&dir.display().to_string(), false))?;
    Ok(dir)
}

/// One phase of a run and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// `stage <name>` or `eval <name>`.
    pub name: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The phases of a run in the order they happened: a stage lasts from its `stage_started` to its
/// `stage_finished` event, an evaluation is its `eval_finished` event's `seconds`.
pub fn phases(events: &[Event]) -> Vec<Phase> {
    let mut out = Vec::new();
    let mut started: Option<(String, u64)> = None;
    for e in events {
        let stage = e.stage.clone().unwrap_or_else(|| "-".into());
        match e.event.as_str() {
            kind::STAGE_STARTED | kind::STAGE_RESUMED => started = Some((stage, e.ts)),
            kind::STAGE_FINISHED => {
                if let Some((name, ts)) = started.take().filter(|(name, _)| *name == stage) {
                    out.push(Phase { name: format!("stage {name}"), seconds: e.ts.saturating_sub(ts) as f64 / 1000.0 });
                }
            }
            kind::EVAL_FINISHED => {
                let seconds = e.fields.get("seconds").and_then(Value::as_f64).unwrap_or(f64::NAN);
                out.push(Phase { name: format!("eval {stage}"), seconds });
            }
            _ => {}
        }
    }
    out
}

/// The evaluated stages of a run, in event order, with their reports (`eval/<stage>/report.json`).
pub fn reports(run: &RunDir, events: &[Event]) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.event == kind::EVAL_FINISHED) {
        let Some(stage) = &e.stage else { continue };
        let path = run.eval_dir(stage).join(EVAL_REPORT);
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let report: Report = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        out.push(report);
    }
    Ok(out)
}

fn cell(v: Option<f64>, percent: bool) -> String {
    match v {
        Some(x) if percent => format!("{:.1}%", 100.0 * x),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

/// The headless summary of a finished run: phase times, scorecards, gate decisions.
pub fn summarise(dir: &Path) -> Result<String> {
    let run = RunDir::open(dir)?;
    let events = EventReader::read_all(&run.events_path())?.events;
    let mut s = String::from("\nphase times\n");
    let phases = phases(&events);
    for p in &phases {
        s.push_str(&format!("  {:<20} {:>8.1} s\n", p.name, p.seconds));
    }
    let total: f64 = phases.iter().map(|p| p.seconds).filter(|x| x.is_finite()).sum();
    s.push_str(&format!("  {:<20} {:>8.1} s\n", "total", total));
    s.push_str("\nscorecard (rates over uncontaminated items; p95 latency in seconds)\n");
    s.push_str(&format!(
        "  {:<12} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}\n",
        "stage", "task", "win", "unsafe", "jailbrk", "halluc", "instr", "p95 s"
    ));
    for r in reports(&run, &events)? {
        s.push_str(&format!(
            "  {:<12} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}\n",
            r.stage,
            cell(r.task_success_rate, true),
            cell(r.win_rate, true),
            cell(r.unsafe_rate, true),
            cell(r.jailbreak_success_rate, true),
            cell(r.hallucination_rate, true),
            cell(r.instruction_following_rate, true),
            cell(r.latency_p95_s, false),
        ));
    }
    s.push_str("\ngates\n");
    let mut last = None;
    for e in events.iter().filter(|e| e.event == kind::GATE_DECIDED) {
        let stage = e.stage.clone().unwrap_or_else(|| "-".into());
        let decision = e.fields.get("decision").and_then(Value::as_str).unwrap_or("?").to_string();
        let detail = match decision.as_str() {
            "deploy" => e.fields.get("export").and_then(Value::as_str).map(|p| format!(" → {p}")),
            kind::ITERATE => e.fields.get("failing").map(|f| format!(" (failing: {})", list(f))),
            _ => e.fields.get("missing").map(|f| format!(" (missing: {})", list(f))),
        };
        // A fix stage's round says which round of which loop it was.
        let round =
            match (e.fields.get("round").and_then(Value::as_u64), e.fields.get("fix_stage").and_then(Value::as_str)) {
                (Some(n), Some(fix)) => format!(" (round {n} of {fix})"),
                (Some(n), None) => format!(" (round {n})"),
                _ => String::new(),
            };
        s.push_str(&format!("  {stage:<12} {decision}{}{round}\n", detail.unwrap_or_default()));
        last = Some((stage, decision));
    }
    match last {
        Some((stage, decision)) => s.push_str(&format!("\ndecision ({stage}): {decision}\n")),
        None => s.push_str("\ndecision: none (no gated stage was evaluated)\n"),
    }
    Ok(s)
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(items) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), String::from)).collect::<Vec<_>>().join(", ")
        }
        None => v.to_string(),
    }
}
