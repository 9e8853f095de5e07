//! What the trainer needs from whoever runs it: the [`Host`] trait and the small types that cross
//! it. The worker implements it over a run directory; tests implement it in memory.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::evaluate::{EvalInputs, StageEval};
use super::TrainError;

/// What the trainer needs from whoever runs it (the worker, a test).
pub trait Host {
    /// Records one event (`kind`, stage, global step, payload fields).
    fn emit(
        &mut self,
        kind: &str,
        stage: Option<&str>,
        step: Option<u64>,
        fields: Map<String, Value>,
    ) -> Result<(), TrainError>;
    /// Stores a complete checkpoint of `files` at `step`; must be atomic.
    fn save_checkpoint(&mut self, step: u64, files: Vec<(String, Vec<u8>)>) -> Result<(), TrainError>;
    /// Whether a stop was requested (checked at every step boundary).
    fn stop_requested(&self) -> bool;
    /// Where the frozen reference weights of `stage` live (written once at the stage's start).
    fn reference_dir(&self, stage: &str) -> PathBuf;
    /// The preference files of stage `index`; `live` ones (the labeling pane's) may grow.
    fn preference_files(&self, index: usize) -> Vec<PrefFile>;
    /// Label admissions a previous worker made after the checkpoint being resumed (from the
    /// event log), so a resume admits the same lines at the same steps.
    fn planned_admissions(&self) -> Vec<Admission> {
        Vec::new()
    }
    /// Stores a stage's evaluation (report, failures, answers).
    fn save_eval(&mut self, _stage: &str, _eval: &StageEval) -> Result<(), TrainError> {
        Ok(())
    }
    /// A stage's evaluation stored by an earlier worker of this run, if any.
    fn load_eval(&self, _stage: &str) -> Option<StageEval> {
        None
    }
    /// Where the human inputs of evaluation live (overrides, labels files); none by default.
    fn eval_inputs(&self) -> EvalInputs {
        EvalInputs::default()
    }
    /// Exports a model directory that passed the gates ("deploy"); returns where it went.
    fn export(&mut self, _stage: &str, _files: Vec<(String, Vec<u8>)>) -> Result<Option<PathBuf>, TrainError> {
        Ok(None)
    }
}

/// A preference source of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefFile {
    /// Where it is.
    pub path: PathBuf,
    /// Whether it may grow while the stage runs (read at every step boundary).
    pub live: bool,
}

/// One admission of live labels: at global step `step`, `file` had been read up to `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Global step (the admission happened before this step's update).
    pub step: u64,
    /// The labels file, as displayed in the event.
    pub file: String,
    /// Byte offset reached.
    pub offset: u64,
}
