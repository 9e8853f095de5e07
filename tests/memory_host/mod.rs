//! One in-memory [`Host`] for the tests that drive the trainer directly: events in a list,
//! checkpoints (and references) in a temporary directory, the pipeline's `labels.jsonl` mapped to
//! a live file in that directory, and optional fault injection (a stop after N metrics, labels
//! appended at a step).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hone::config::Pipeline;
use hone::eval::Report;
use hone::run::worker::read_checkpoint_files;
use hone::run::{OPTIMIZER_FILE, REWARD_MODEL_FILE, TRAINER_STATE_FILE};
use hone::train::evaluate::{EvalInputs, StageEval};
use hone::train::trainer::{Admission, CheckpointData, Finished, Host, PrefFile, RunOptions, SavedTraining, Trainer};
use hone::train::TrainError;
use serde_json::{Map, Value};

/// One recorded event: kind, stage, global step, fields.
pub type Recorded = (String, Option<String>, Option<u64>, Map<String, Value>);

/// The test host.
#[derive(Default)]
pub struct MemoryHost {
    /// Where checkpoints, references and the live labels file go.
    pub dir: PathBuf,
    /// Every event, in order.
    pub events: Vec<Recorded>,
    /// Checkpoints saved: (global step, directory).
    pub checkpoints: Vec<(u64, PathBuf)>,
    /// Request a stop once this many metrics events were recorded.
    pub stop_after_metrics: Option<usize>,
    /// The pipeline whose preference files [`Host::preference_files`] reports.
    pub pipeline: Option<Pipeline>,
    /// Simulated labeler: after the metrics event of this global step, write these lines to the
    /// live labels file (once: a resumed run that logs the step again does not re-append).
    pub label_at: Option<(u64, String)>,
    /// Reports of the evaluations saved.
    pub reports: Vec<Report>,
    /// Whether evaluation reads `overrides.jsonl` and `labels.jsonl` from `dir`.
    pub human_inputs: bool,
    /// The evaluations saved, by stage: what [`Host::load_eval`] gives a resumed trainer (move
    /// them into the next host, as a run directory keeps them).
    pub evals: HashMap<String, StageEval>,
    /// Simulated reviewer: when a `stage_started` event of this stage is recorded, write these
    /// lines to `overrides.jsonl` in `dir` (read by the evaluations after it, with
    /// `human_inputs`).
    pub overrides_at: Option<(String, String)>,
    /// The label admissions [`Host::planned_admissions`] gives a resumed trainer (see
    /// [`MemoryHost::admissions_after`]).
    pub plan: Vec<Admission>,
}

impl MemoryHost {
    /// A host over `dir` for `pipeline`.
    pub fn new(dir: &Path, pipeline: &Pipeline) -> Self {
        Self { dir: dir.to_path_buf(), pipeline: Some(pipeline.clone()), ..Self::default() }
    }

    /// The metrics events: (stage, global step, fields).
    pub fn metrics(&self) -> Vec<(String, u64, Map<String, Value>)> {
        self.events
            .iter()
            .filter(|e| e.0 == "metrics")
            .map(|e| (e.1.clone().unwrap(), e.2.unwrap(), e.3.clone()))
            .collect()
    }

    /// One metric of every metrics event of `stage` that has it.
    pub fn series(&self, stage: &str, key: &str) -> Vec<f64> {
        self.metrics().iter().filter(|m| m.0 == stage).filter_map(|m| m.2.get(key).and_then(Value::as_f64)).collect()
    }

    /// The `labels_admitted` events after global step `step`, as the worker plans them for a
    /// trainer resumed from a checkpoint at that step (one without a file and offset replays
    /// nothing).
    pub fn admissions_after(&self, step: u64) -> Vec<Admission> {
        self.events
            .iter()
            .filter(|e| e.0 == "labels_admitted" && e.2.is_some_and(|s| s > step))
            .filter_map(|e| {
                Some(Admission {
                    step: e.2?,
                    file: e.3.get("file")?.as_str()?.to_string(),
                    offset: e.3.get("byte_offset")?.as_u64()?,
                })
            })
            .collect()
    }

    /// One metric of every metrics event that has it, whatever the stage.
    pub fn series_all(&self, key: &str) -> Vec<f64> {
        self.metrics().iter().filter_map(|m| m.2.get(key).and_then(Value::as_f64)).collect()
    }
}

impl Host for MemoryHost {
    fn emit(
        &mut self,
        kind: &str,
        stage: Option<&str>,
        step: Option<u64>,
        fields: Map<String, Value>,
    ) -> Result<(), TrainError> {
        if let Some((at, lines)) = &self.label_at {
            let path = self.dir.join("labels.jsonl");
            if kind == "metrics" && step == Some(*at) && !path.exists() {
                std::fs::write(&path, lines).unwrap();
            }
        }
        if let Some((at, lines)) = &self.overrides_at {
            if kind == "stage_started" && stage == Some(at.as_str()) {
                std::fs::write(self.dir.join("overrides.jsonl"), lines).unwrap();
            }
        }
        self.events.push((kind.to_string(), stage.map(String::from), step, fields));
        Ok(())
    }

    fn save_checkpoint(&mut self, step: u64, checkpoint: CheckpointData) -> Result<(), TrainError> {
        let dir = self.dir.join(format!("checkpoints/step-{step:06}"));
        let mut files: Vec<(String, Vec<u8>)> =
            checkpoint.model.into_iter().map(|(name, f)| (name, f.into_bytes().unwrap())).collect();
        files.push((TRAINER_STATE_FILE.into(), checkpoint.trainer_state));
        if let Some(optimizer) = checkpoint.optimizer {
            files.push((OPTIMIZER_FILE.into(), optimizer.to_bytes().unwrap()));
        }
        if let Some(weights) = checkpoint.reward_model {
            files.push((REWARD_MODEL_FILE.into(), weights.to_bytes().unwrap()));
        }
        hone::durable::write_dir(&dir, &files).unwrap();
        self.checkpoints.push((step, dir));
        Ok(())
    }

    fn read_checkpoint(&self, dir: &Path) -> Result<SavedTraining, TrainError> {
        read_checkpoint_files(dir)
    }

    fn stop_requested(&self) -> bool {
        self.stop_after_metrics.is_some_and(|n| self.metrics().len() >= n)
    }

    fn reference(&self, stage: &str) -> Option<PathBuf> {
        Some(self.dir.join("references").join(stage)).filter(|d| d.exists())
    }

    fn save_reference(&mut self, stage: &str, files: Vec<(String, Vec<u8>)>) -> Result<PathBuf, TrainError> {
        let dir = self.dir.join("references").join(stage);
        hone::durable::write_dir(&dir, &files).unwrap();
        Ok(dir)
    }

    fn preference_files(&self, index: usize) -> Vec<PrefFile> {
        let Some(p) = self.pipeline.as_ref() else { return Vec::new() };
        let files = p.stages[index].pref.as_ref().map(|t| t.data.clone()).unwrap_or_default();
        // labels.jsonl is the run's live file; here it lives in the test's directory.
        files
            .into_iter()
            .map(|f| {
                if f.file_name().is_some_and(|n| n == "labels.jsonl") {
                    PrefFile { path: self.dir.join("labels.jsonl"), live: true }
                } else {
                    PrefFile { path: f, live: false }
                }
            })
            .collect()
    }

    fn planned_admissions(&self) -> Vec<Admission> {
        self.plan.clone()
    }

    fn save_eval(&mut self, stage: &str, eval: &StageEval) -> Result<(), TrainError> {
        self.reports.push(eval.report.clone());
        self.evals.insert(stage.to_string(), eval.clone());
        Ok(())
    }

    fn load_eval(&self, stage: &str) -> Option<StageEval> {
        self.evals.get(stage).cloned()
    }

    fn export(&mut self, stage: &str, files: Vec<(String, Vec<u8>)>) -> Result<Option<PathBuf>, TrainError> {
        let dir = self.dir.join("exports").join(stage);
        hone::durable::write_dir(&dir, &files).unwrap();
        Ok(Some(dir))
    }

    fn eval_inputs(&self) -> EvalInputs {
        if self.human_inputs {
            EvalInputs {
                overrides: Some(self.dir.join("overrides.jsonl")),
                labels: vec![self.dir.join("labels.jsonl")],
            }
        } else {
            EvalInputs::default()
        }
    }
}

/// Runs `p` to its end, stopping after `stops[i]` metrics in all (ascending) and resuming each
/// time from the newest checkpoint, all in one directory; returns every step's (global step,
/// loss), the resumed parts' after the stopped parts'.
pub fn losses_through_stops(p: &Pipeline, options: &RunOptions, stops: &[usize]) -> Vec<(u64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut got: Vec<(u64, f64)> = Vec::new();
    let mut resume_from: Option<PathBuf> = None;
    for stop_at in stops.iter().copied().map(Some).chain([None]) {
        let mut host = MemoryHost::new(dir.path(), p);
        host.stop_after_metrics = stop_at.map(|at| at - got.len());
        let mut trainer = match &resume_from {
            None => Trainer::new(p.clone(), options.clone(), &mut host, Device::Cpu, DType::F32).unwrap(),
            Some(ck) => Trainer::resume(p.clone(), options.clone(), &mut host, Device::Cpu, DType::F32, ck).unwrap(),
        };
        let finished = trainer.run().unwrap();
        drop(trainer);
        got.extend(host.metrics().iter().map(|m| (m.1, m.2["loss"].as_f64().unwrap())));
        if stop_at.is_none() {
            assert_eq!(finished, Finished::Completed);
        } else {
            assert_eq!(finished, Finished::Stopped);
            resume_from = Some(host.checkpoints.last().unwrap().1.clone());
        }
    }
    got
}

/// Asserts two runs' (global step, loss) lists are equal to the bit.
pub fn assert_same_losses(got: &[(u64, f64)], want: &[(u64, f64)]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "global steps");
        assert_eq!(g.1.to_bits(), w.1.to_bits(), "loss at step {}: {} vs {}", g.0, g.1, w.1);
    }
}
