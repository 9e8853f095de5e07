//! What the trainer needs from whoever runs it: the [`Host`] trait and the small types that cross
//! it. The worker implements it over a run directory; tests implement it in memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::evaluate::{EvalInputs, StageEval};
use super::logps_chunk::LogpsChunk;
use super::TrainError;
use crate::config::Pipeline;
use crate::control::{Request, Status};
use crate::model::{FileOut, SafetensorsOut};

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
    /// Stores a complete checkpoint at `step`; must be atomic and durable. The host names the
    /// trainer's files; the model's files keep their own names, so the checkpoint directory is a
    /// model directory [`crate::model::Model::load`] reads.
    fn save_checkpoint(&mut self, step: u64, checkpoint: CheckpointData) -> Result<(), TrainError>;
    /// The trainer's part of the checkpoint directory `dir` (written by [`Host::save_checkpoint`]).
    fn read_checkpoint(&self, dir: &Path) -> Result<SavedTraining, TrainError>;
    /// Whether a stop was requested (checked at every step boundary).
    fn stop_requested(&self) -> bool;
    /// Where the frozen reference weights of `stage` are, once [`Host::save_reference`] stored them.
    fn reference(&self, stage: &str) -> Option<PathBuf>;
    /// Stores the frozen reference weights of `stage` (a model directory's files, written once
    /// at the stage's start, atomically and durably) and returns where they are.
    fn save_reference(&mut self, stage: &str, files: Vec<(String, Vec<u8>)>) -> Result<PathBuf, TrainError>;
    /// The reference log-probs of `stage` stored so far ([`Host::save_reference_logps`]), chunk
    /// 0, 1, ... up to the first missing or unreadable one; none by default.
    fn load_reference_logps(&self, _stage: &str) -> Result<Vec<LogpsChunk>, TrainError> {
        Ok(Vec::new())
    }
    /// Stores chunk `index` of `stage`'s reference log-probs, atomically and durably (replacing
    /// an older chunk of that index); by default nothing is stored.
    fn save_reference_logps(&mut self, _stage: &str, _index: usize, _chunk: &LogpsChunk) -> Result<(), TrainError> {
        Ok(())
    }
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
    /// The next control command (from the control socket), if any; with `wait`, blocks up to that
    /// long for one (the trainer waits this way while paused, so a pause burns no CPU).
    fn next_control(&mut self, _wait: Option<Duration>) -> Option<Request> {
        None
    }
    /// Where the trainer stands, for whoever asks (`status` requests); called at every step
    /// boundary and when the state changes.
    fn publish(&mut self, _status: &Status) {}
    /// Controls that change training (λ changes, stage skips) a previous worker applied after the
    /// checkpoint being resumed, from the event log: a resume applies them at the same steps.
    fn planned_controls(&self) -> Vec<PlannedControl> {
        Vec::new()
    }
    /// Appends generated candidate pairs (one JSON object each); returns where they went.
    fn save_candidates(&mut self, _lines: &[Value]) -> Result<Option<String>, TrainError> {
        Ok(None)
    }
    /// The memory this process holds on `device` (`crate::memory::device_peak_bytes`), logged
    /// as `memory/peak_bytes` with the metrics; `None` (the default) leaves it out.
    fn peak_memory_bytes(&mut self, _device: &candle_core::Device) -> Option<u64> {
        None
    }
    /// Exports a model directory that passed the gates ("deploy"); returns where it went.
    fn export(&mut self, _stage: &str, _files: Vec<(String, Vec<u8>)>) -> Result<Option<PathBuf>, TrainError> {
        Ok(None)
    }
    /// Trains a stage on another engine (`engine = "trl"`) to its end or a stop, relaying
    /// control requests and stop signals to it; the engine writes the stage's events itself.
    /// Hosts without one (in-memory tests) refuse: a TRL stage never falls back to hone's engine.
    fn run_external_stage(&mut self, job: ExternalStage<'_>) -> Result<ExternalOutcome, TrainError> {
        let stage = job.pipeline.stages.get(job.index).map_or("?", |s| s.name.as_str());
        Err(TrainError::Host(format!("stage {stage}: this host cannot run stages on an external engine")))
    }
}

/// A stage handed to another engine by [`Host::run_external_stage`].
#[derive(Debug)]
pub struct ExternalStage<'a> {
    /// The pipeline (with the run's `--max-steps` cap applied to the stage).
    pub pipeline: &'a Pipeline,
    /// The stage's index in it.
    pub index: usize,
    /// The model the stage starts from.
    pub model: ModelInput,
    /// Global steps complete before the stage (its events count on from here).
    pub step_offset: u64,
    /// hone's data order for the stage (`None` when it cannot be matched).
    pub orders: Option<DataOrders>,
}

/// The orders hone's samplers would draw a stage's examples in, one permutation of the files'
/// examples per epoch, so that another engine trains on the same batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOrders {
    /// The main term's (the preference pairs of a DPO stage, the SFT records of an SFT stage).
    pub main: Vec<Vec<usize>>,
    /// A preference stage's SFT-on-chosen term, which the native engine draws from a sampler of
    /// its own (indices of the pairs whose chosen responses it trains on).
    pub sft: Option<Vec<Vec<usize>>>,
}

/// The model a stage on another engine starts from.
#[derive(Debug)]
pub enum ModelInput {
    /// An HF model directory as it is (the pipeline's model, the previous stage's export).
    Dir(PathBuf),
    /// The policy in memory, as a model directory's files (name, bytes), for the host to store.
    Files(Vec<(String, Vec<u8>)>),
}

/// How a stage on another engine ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalOutcome {
    /// Trained to the end (or skipped) and exported.
    Finished {
        /// The exported HF model directory: the policy from here on.
        model: PathBuf,
        /// Global steps complete at its end.
        step: u64,
    },
    /// Stopped after a checkpoint of its own; running it again resumes it.
    Stopped,
}

/// A checkpoint as the trainer produces it. The weights and moments are the training state's own
/// tensors, serialised only as each file is written ([`FileOut::write_to`]), so saving needs
/// memory for one tensor's bytes, not the checkpoint's; the host writes them before returning.
#[derive(Debug, Clone)]
pub struct CheckpointData {
    /// The policy as a model directory's files (name, contents).
    pub model: Vec<(String, FileOut)>,
    /// The trainer state, as JSON.
    pub trainer_state: Vec<u8>,
    /// AdamW's moments, as safetensors (`None` at the end of a stage another engine trained: its
    /// moments are that engine's, and the next stage starts fresh ones).
    pub optimizer: Option<SafetensorsOut>,
    /// In a reward-model stage: the reward model's weights (safetensors, transformers' names);
    /// `optimizer` then holds its moments, and `model` the policy, unchanged.
    pub reward_model: Option<SafetensorsOut>,
}

/// The trainer's part of a checkpoint, read back for a resume.
#[derive(Debug, Clone)]
pub struct SavedTraining {
    /// The trainer state, as JSON.
    pub trainer_state: Vec<u8>,
    /// AdamW's moments, as safetensors (absent in a checkpoint saved without them).
    pub optimizer: Option<Vec<u8>>,
    /// The reward model being trained, when the checkpoint is from a reward-model stage.
    pub reward_model: Option<Vec<u8>>,
    /// Where they were read from, for error messages.
    pub source: String,
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

/// A control to replay on resume: `control` was applied in `stage` at the step boundary where
/// `step` optimizer steps were complete.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedControl {
    /// The stage it applied to.
    pub stage: String,
    /// Global steps complete when it applied.
    pub step: u64,
    /// What it was ([`Request::SetLambda`] or [`Request::SkipStage`]).
    pub control: Request,
}
