//! Reading what the eval pane shows from a run directory: every `eval/<stage>/` (report.json,
//! failures.jsonl, responses.jsonl), `overrides.jsonl`, and the suite, judge and gates named by
//! `run.toml`, and the blind pairwise labels of the run's `labels.jsonl`. File work: call it off the UI task.

use std::path::Path;

use super::EvalPane;
use crate::config::load_frozen;
use crate::eval::{
    read_overrides, read_pairwise_labels, read_suite, EvalItem, FailureRecord, GateConfig, Judge, Report, Response,
};
use crate::run::{RunDir, EVAL_FAILURES, EVAL_REPORT, EVAL_RESPONSES};

/// One evaluated stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageEval {
    /// The stage's name (the directory under `eval/`).
    pub name: String,
    /// Its scorecard (recomputed after an override).
    pub report: Report,
    /// Its failing items.
    pub failures: Vec<FailureRecord>,
    /// Its responses, when `responses.jsonl` is there (needed to recompute).
    pub responses: Option<Vec<Response>>,
    /// The items contaminated when it was scored (they stay contaminated).
    pub original_contaminated: Vec<String>,
}

/// What a recompute needs besides the stages.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The suite.
    pub items: Vec<EvalItem>,
    /// The rule judge.
    pub judge: Judge,
    /// The gates.
    pub gates: GateConfig,
    /// The baseline stage's name.
    pub baseline: String,
    /// Price per device-hour.
    pub price_per_device_hour: f64,
}

fn jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}:{}: line: {e}", path.display(), i + 1, e.column()))
        })
        .collect()
}

/// Reads one `eval/<stage>/` directory.
pub fn read_stage(dir: &Path) -> Result<StageEval, String> {
    let report_path = dir.join(EVAL_REPORT);
    let text = std::fs::read_to_string(&report_path).map_err(|e| format!("{}: {e}", report_path.display()))?;
    let report: Report = serde_json::from_str(&text)
        .map_err(|e| format!("{}:{}:{}: report: {e}", report_path.display(), e.line(), e.column()))?;
    let failures = jsonl(&dir.join(EVAL_FAILURES))?;
    let responses = jsonl(&dir.join(EVAL_RESPONSES)).ok();
    let name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let original_contaminated = report.contaminated.ids.clone();
    Ok(StageEval { name, report, failures, responses, original_contaminated })
}

fn inputs(run_dir: &Path) -> Result<Inputs, String> {
    let frozen = load_frozen(&run_dir.join("run.toml")).map_err(|e| e.to_string())?;
    let settings = frozen.loaded.pipeline.eval.ok_or_else(|| "run.toml has no [eval] table".to_string())?;
    let items = read_suite(&settings.suite).map_err(|e| e.to_string())?;
    let judge = Judge::new(&settings.judge).map_err(|e| e.to_string())?;
    Ok(Inputs {
        items,
        judge,
        gates: settings.gates,
        baseline: settings.baseline,
        price_per_device_hour: settings.price_per_device_hour,
    })
}

/// Builds the pane for the run in `run_dir`; what cannot be read is listed in its `problems`.
pub fn load(run_dir: &Path, user: &str, session: &str) -> EvalPane {
    let mut problems = Vec::new();
    let mut stages: Vec<(std::time::SystemTime, StageEval)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(RunDir::at(run_dir).eval_root()) {
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.join(EVAL_REPORT).exists() {
                continue;
            }
            let modified =
                std::fs::metadata(dir.join(EVAL_REPORT)).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            match read_stage(&dir) {
                Ok(stage) => stages.push((modified, stage)),
                Err(e) => problems.push(e),
            }
        }
    }
    stages.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let overrides = read_overrides(&RunDir::at(run_dir).overrides_path()).unwrap_or_else(|e| {
        problems.push(e.to_string());
        Vec::new()
    });
    let inputs = inputs(run_dir).map_err(|e| problems.push(format!("recompute unavailable: {e}"))).ok();
    let mut pane = EvalPane::new(stages.into_iter().map(|(_, s)| s).collect(), inputs, overrides, user, session);
    if let Some(baseline) = pane.inputs.as_ref().map(|i| i.baseline.clone()) {
        let labels = RunDir::at(run_dir).labels_path();
        for stage in pane.stages.iter().map(|s| s.name.clone()).filter(|s| *s != baseline) {
            match read_pairwise_labels(&labels, &stage, &baseline) {
                Ok(l) if !l.is_empty() => {
                    pane.human.insert(stage, l);
                }
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    pane.problems = problems;
    pane
}
