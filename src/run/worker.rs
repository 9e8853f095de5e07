//! The trainer's host inside a worker process: events go to `events.jsonl`, checkpoints into
//! `checkpoints/` (atomically, then pruned), the stop flag comes from SIGINT/SIGTERM, and a
//! stage's frozen reference lives in `references/<stage>/`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::control::{Inbox, LambdaTerm, Request, Status};
use super::{
    clean_incomplete, kind, now_ms, prune, CheckpointWriter, Event, EventWriter, RunError, Shutdown, WorkerLock,
    EVAL_FAILURES, EVAL_REPORT, EVAL_RESPONSES, OPTIMIZER_FILE, REWARD_MODEL_FILE, TRAINER_STATE_FILE,
};
use crate::model::FileOut;
use crate::train::evaluate::{EvalInputs, StageEval};
use crate::train::host::{ExternalOutcome, ExternalStage, ModelInput, PlannedControl};
use crate::train::logps_chunk::LogpsChunk;
use crate::train::trainer::{Admission, CheckpointData, Host, PrefFile, SavedTraining};
use crate::train::TrainError;

/// Called with every event the worker writes (the headless progress line, tests).
pub type Observer = Box<dyn FnMut(&Event)>;

/// A [`Host`] backed by a locked run directory.
pub struct RunHost {
    lock: WorkerLock,
    writer: EventWriter,
    shutdown: Option<Shutdown>,
    keep_last: usize,
    preference_files: Vec<Vec<PrefFile>>,
    plan: Vec<Admission>,
    observer: Option<Observer>,
    best: BestTracker,
    inbox: Option<Inbox>,
    controls: Vec<PlannedControl>,
    /// Requests received before the trainer ran (while a resume verified its checkpoint), given
    /// to it first.
    held: VecDeque<Request>,
}

/// The "best" checkpoint kept by pruning: within the current stage, the one whose preceding
/// window of steps had the lowest mean loss (losses of different stages measure different
/// objectives, so the best is reset at each stage).
#[derive(Debug, Default)]
struct BestTracker {
    stage: Option<String>,
    window_sum: f64,
    window_len: u32,
    best: Option<(u64, f64)>,
}

impl BestTracker {
    fn observe(&mut self, event: &Event) {
        if event.event != kind::METRICS {
            return;
        }
        if event.stage != self.stage {
            *self = Self { stage: event.stage.clone(), ..Self::default() };
        }
        if let Some(loss) = event.fields.get("loss").and_then(Value::as_f64).filter(|l| l.is_finite()) {
            self.window_sum += loss;
            self.window_len += 1;
        }
    }

    /// Scores the checkpoint at `step` and returns the best step of the stage so far.
    fn checkpoint(&mut self, step: u64) -> Option<u64> {
        if self.window_len > 0 {
            let score = self.window_sum / f64::from(self.window_len);
            if self.best.is_none_or(|(_, b)| score < b) {
                self.best = Some((step, score));
            }
        }
        self.window_sum = 0.0;
        self.window_len = 0;
        self.best.map(|(s, _)| s)
    }
}

fn host_err(e: RunError) -> TrainError {
    TrainError::Host(e.to_string())
}

/// The trainer's files of the checkpoint directory `dir` (the optimizer's may be absent).
pub fn read_checkpoint_files(dir: &Path) -> Result<SavedTraining, TrainError> {
    let state = dir.join(TRAINER_STATE_FILE);
    let trainer_state = std::fs::read(&state).map_err(|e| TrainError::Data(format!("{}: {e}", state.display())))?;
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    let optimizer = match std::fs::read(&optimizer_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(TrainError::Data(format!("{}: {e}", optimizer_path.display()))),
    };
    let reward_path = dir.join(REWARD_MODEL_FILE);
    let reward_model = match std::fs::read(&reward_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(TrainError::Data(format!("{}: {e}", reward_path.display()))),
    };
    Ok(SavedTraining { trainer_state, optimizer, reward_model, source: dir.display().to_string() })
}

impl RunHost {
    /// Takes over a locked run directory: cleans temporaries a crash left, opens the event log
    /// (cutting a torn last line, which is reported as a warning event).
    pub fn new(
        lock: WorkerLock,
        shutdown: Option<Shutdown>,
        keep_last: usize,
        preference_files: Vec<Vec<PrefFile>>,
    ) -> Result<Self, RunError> {
        let cleaned = clean_incomplete(&lock)?;
        let writer = EventWriter::open(&lock)?;
        let mut host = Self {
            lock,
            writer,
            shutdown,
            keep_last,
            preference_files,
            plan: Vec::new(),
            observer: None,
            best: BestTracker::default(),
            inbox: None,
            controls: Vec::new(),
            held: VecDeque::new(),
        };
        let torn = host.writer.discarded_tail_bytes();
        if torn > 0 {
            host.append(Event::new(kind::WARNING, None, None).with(
                "message",
                format!("events.jsonl ended with a torn line ({torn} bytes, from a crash); it was cut off"),
            ))?;
        }
        if !cleaned.is_empty() {
            host.append(
                Event::new(kind::WARNING, None, None)
                    .with("message", format!("removed {} incomplete checkpoint(s) left by a crash", cleaned.len())),
            )?;
        }
        Ok(host)
    }

    /// Replays, on resume, the label admissions the previous worker logged after `from_step`:
    /// the same lines join training at the same steps as in the run that was interrupted.
    pub fn plan_admissions_after(&mut self, from_step: u64) -> Result<(), RunError> {
        let events = super::EventReader::read_all(&self.lock.run().events_path())?.events;
        self.plan = events
            .iter()
            .filter(|e| e.event == kind::LABELS_ADMITTED && e.step.is_some_and(|s| s > from_step))
            .filter_map(|e| {
                Some(Admission {
                    step: e.step?,
                    file: e.fields.get("file")?.as_str()?.to_string(),
                    offset: e.fields.get("byte_offset")?.as_u64()?,
                })
            })
            .collect();
        Ok(())
    }

    /// Replays, on resume, the controls that changed training after the checkpoint at
    /// `from_step` (`lambda_changed` with reason `control`, `stage_skipped`), at the same steps.
    /// A control logged at `from_step` itself is replayed too: the checkpoint may predate it, and
    /// replaying one it already contains changes nothing (λ values are absolute, and a finished
    /// stage is not trained again).
    pub fn plan_controls_after(&mut self, from_step: u64) -> Result<(), RunError> {
        let events = super::EventReader::read_all(&self.lock.run().events_path())?.events;
        self.controls = events
            .iter()
            .filter(|e| e.step.is_some_and(|s| s >= from_step))
            .filter_map(|e| {
                let control = match e.event.as_str() {
                    kind::LAMBDA_CHANGED if e.fields.get("reason").and_then(Value::as_str) == Some("control") => {
                        Request::SetLambda {
                            term: LambdaTerm::from_name(e.fields.get("lambda")?.as_str()?)?,
                            value: e.fields.get("to")?.as_f64()?,
                        }
                    }
                    kind::STAGE_SKIPPED => Request::SkipStage { stage: None },
                    _ => return None,
                };
                Some(PlannedControl { stage: e.stage.clone()?, step: e.step?, control })
            })
            .collect();
        Ok(())
    }

    /// Takes commands from a control socket's inbox.
    pub fn set_inbox(&mut self, inbox: Inbox) {
        self.inbox = Some(inbox);
    }

    /// Keeps a control request received before the trainer ran, for its first step boundary.
    pub fn hold_control(&mut self, request: Request) {
        self.held.push_back(request);
    }

    /// Sets the function that sees every event.
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// The locked run directory.
    pub fn lock(&self) -> &WorkerLock {
        &self.lock
    }

    /// Appends one event (stamped with the current time) and shows it to the observer.
    pub fn append(&mut self, mut event: Event) -> Result<(), RunError> {
        event.ts = now_ms();
        self.writer.append(&event)?;
        self.best.observe(&event);
        if let Some(observer) = &mut self.observer {
            observer(&event);
        }
        Ok(())
    }

    /// Flushes the event log to disk.
    pub fn sync(&self) -> Result<(), RunError> {
        self.writer.sync()
    }
}

impl Host for RunHost {
    fn peak_memory_bytes(&mut self, device: &candle_core::Device) -> Option<u64> {
        crate::memory::device_peak_bytes(device)
    }

    fn emit(
        &mut self,
        kind: &str,
        stage: Option<&str>,
        step: Option<u64>,
        fields: Map<String, Value>,
    ) -> Result<(), TrainError> {
        let mut event = Event::new(kind, stage, step);
        event.fields = fields;
        self.append(event).map_err(host_err)
    }

    fn save_checkpoint(&mut self, step: u64, checkpoint: CheckpointData) -> Result<(), TrainError> {
        let mut files = checkpoint.model;
        files.push((TRAINER_STATE_FILE.into(), FileOut::Bytes(checkpoint.trainer_state)));
        if let Some(optimizer) = checkpoint.optimizer {
            files.push((OPTIMIZER_FILE.into(), FileOut::Tensors(optimizer)));
        }
        if let Some(weights) = checkpoint.reward_model {
            files.push((REWARD_MODEL_FILE.into(), FileOut::Tensors(weights)));
        }
        let mut pending = CheckpointWriter::begin(self.lock.run(), step).map_err(host_err)?;
        let bytes: u64 = files.iter().map(|(_, f)| f.len()).sum();
        for (name, data) in &files {
            pending.write_out(name, data).map_err(host_err)?;
        }
        let checkpoint = pending.finish(json!({"step": step})).map_err(host_err)?;
        crate::fault::point("checkpoint.saved");
        let best = self.best.checkpoint(step);
        let pruned = prune(&self.lock, self.keep_last.max(1), best).map_err(host_err)?;
        let event = Event::new(kind::CHECKPOINT_SAVED, None, Some(step))
            .with("path", checkpoint.dir.display().to_string())
            .with("bytes", bytes)
            .with("best_step", json!(best))
            .with("pruned", json!(pruned));
        self.append(event).map_err(host_err)?;
        self.writer.sync().map_err(host_err)
    }

    fn stop_requested(&self) -> bool {
        self.shutdown.as_ref().is_some_and(Shutdown::requested)
    }

    fn read_checkpoint(&self, dir: &Path) -> Result<SavedTraining, TrainError> {
        read_checkpoint_files(dir)
    }

    fn reference(&self, stage: &str) -> Option<PathBuf> {
        Some(self.lock.run().reference_dir(stage)).filter(|d| d.exists())
    }

    fn save_reference(&mut self, stage: &str, files: Vec<(String, Vec<u8>)>) -> Result<PathBuf, TrainError> {
        let dir = self.lock.run().reference_dir(stage);
        crate::durable::write_dir(&dir, &files).map_err(|e| TrainError::Host(e.to_string()))?;
        Ok(dir)
    }

    fn load_reference_logps(&self, stage: &str) -> Result<Vec<LogpsChunk>, TrainError> {
        let mut chunks = Vec::new();
        loop {
            let path = self.lock.run().reference_logps_path(stage, chunks.len());
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(TrainError::Host(format!("{}: {e}", path.display()))),
            };
            // A damaged chunk ends the list: the pairs from there on are scored again.
            let Some(chunk) = LogpsChunk::from_bytes(&bytes) else { break };
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    fn save_reference_logps(&mut self, stage: &str, index: usize, chunk: &LogpsChunk) -> Result<(), TrainError> {
        let path = self.lock.run().reference_logps_path(stage, index);
        let io = |e: std::io::Error| TrainError::Host(e.to_string());
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::Host(format!("{}: {e}", dir.display())))?;
            // The new directories' entries are durable before a chunk is counted on.
            for made in [dir.parent(), Some(self.lock.run().path())].into_iter().flatten() {
                crate::durable::fsync_dir(made).map_err(io)?;
            }
        }
        crate::durable::write_file(&path, &chunk.to_bytes()).map_err(io)
    }

    fn preference_files(&self, index: usize) -> Vec<PrefFile> {
        self.preference_files.get(index).cloned().unwrap_or_default()
    }

    fn planned_admissions(&self) -> Vec<Admission> {
        self.plan.clone()
    }

    fn planned_controls(&self) -> Vec<PlannedControl> {
        self.controls.clone()
    }

    fn next_control(&mut self, wait: Option<Duration>) -> Option<Request> {
        if let Some(request) = self.held.pop_front() {
            return Some(request);
        }
        self.inbox.as_ref()?.next(wait)
    }

    fn publish(&mut self, status: &Status) {
        if let Some(inbox) = &self.inbox {
            inbox.publish(Status { pid: self.lock.pid(), ..status.clone() });
        }
    }

    fn save_candidates(&mut self, lines: &[Value]) -> Result<Option<String>, TrainError> {
        let path = self.lock.run().candidates_path();
        let io = |e: std::io::Error| TrainError::Host(format!("{}: {e}", path.display()));
        let mut text = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut text, line).map_err(|e| TrainError::Host(e.to_string()))?;
            text.push(b'\n');
        }
        // One write of whole lines, so a reader never sees half a record.
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(Some(path.display().to_string()))
    }

    fn save_eval(&mut self, stage: &str, eval: &StageEval) -> Result<(), TrainError> {
        let dir = self.lock.run().eval_dir(stage);
        let io = |e: std::io::Error| TrainError::Host(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let ser = |e: serde_json::Error| TrainError::Host(e.to_string());
        let lines = |rows: Vec<String>| rows.into_iter().map(|r| r + "\n").collect::<String>();
        let failures = lines(eval.failures.iter().map(serde_json::to_string).collect::<Result<_, _>>().map_err(ser)?);
        let responses = lines(eval.responses.iter().map(serde_json::to_string).collect::<Result<_, _>>().map_err(ser)?);
        // report.json last: its presence marks a complete evaluation (each write is durable
        // before the next begins, so the order holds after a crash too).
        for (name, text) in [
            (EVAL_FAILURES, failures),
            (EVAL_RESPONSES, responses),
            (EVAL_REPORT, serde_json::to_string_pretty(&eval.report).map_err(ser)?),
        ] {
            if name == EVAL_REPORT {
                crate::fault::point("eval.report");
            }
            crate::durable::write_file(&dir.join(name), text.as_bytes())
                .map_err(|e| TrainError::Host(e.to_string()))?;
        }
        Ok(())
    }

    fn load_eval(&self, stage: &str) -> Option<StageEval> {
        let dir = self.lock.run().eval_dir(stage);
        let report = serde_json::from_str(&std::fs::read_to_string(dir.join(EVAL_REPORT)).ok()?).ok()?;
        let parse_lines = |name: &str| -> Option<Vec<String>> {
            Some(std::fs::read_to_string(dir.join(name)).ok()?.lines().map(String::from).collect())
        };
        let responses =
            parse_lines(EVAL_RESPONSES)?.iter().map(|l| serde_json::from_str(l).ok()).collect::<Option<Vec<_>>>()?;
        let failures =
            parse_lines(EVAL_FAILURES)?.iter().map(|l| serde_json::from_str(l).ok()).collect::<Option<Vec<_>>>()?;
        Some(StageEval { report, responses, failures })
    }

    fn eval_inputs(&self) -> EvalInputs {
        // The labels files are the pipeline's live preference sources (the run directory's
        // labels.jsonl when none is configured); overrides.jsonl is always the run's.
        let mut labels: Vec<PathBuf> = Vec::new();
        for file in self.preference_files.iter().flatten().filter(|f| f.live) {
            if !labels.contains(&file.path) {
                labels.push(file.path.clone());
            }
        }
        if labels.is_empty() {
            labels.push(self.lock.run().labels_path());
        }
        EvalInputs { overrides: Some(self.lock.run().overrides_path()), labels }
    }

    fn run_external_stage(&mut self, job: ExternalStage<'_>) -> Result<ExternalOutcome, TrainError> {
        let run_dir = self.lock.run().path().to_path_buf();
        let name = job.pipeline.stages.get(job.index).map(|s| s.name.clone()).unwrap_or_default();
        let model = match job.model {
            ModelInput::Dir(dir) => dir,
            ModelInput::Files(files) => {
                let dir = super::trl::input_dir(&run_dir, &name);
                crate::durable::write_dir(&dir, &files).map_err(|e| TrainError::Host(e.to_string()))?;
                dir
            }
        };
        let prefs = self.preference_files(job.index);
        let log = self.lock.run().worker_log_path();
        let (shutdown, inbox) = (self.shutdown.clone(), self.inbox.clone());
        let stop = || shutdown.as_ref().is_some_and(Shutdown::requested);
        // The stage's rank 0 writes its metrics to events.jsonl: followed for `status` replies.
        let events = self.lock.run().events_path();
        let mut offset = std::fs::metadata(&events).map_or(0, |m| m.len());
        let mut status = Status {
            pid: self.lock.pid(),
            state: "running".into(),
            stage: Some(name.clone()),
            step: job.step_offset,
            ..Status::default()
        };
        let mut next = || {
            let inbox = inbox.as_ref()?;
            let mut changed = false;
            for line in crate::data::jsonl::new_lines(&events, &mut offset) {
                changed |= super::trl::follow_status(&mut status, &line, &name);
            }
            if changed {
                inbox.publish(status.clone());
            }
            inbox.next(None)
        };
        let launch = super::trl::StageLaunch {
            pipeline: job.pipeline,
            pref_files: &prefs,
            index: job.index,
            run_dir: &run_dir,
            model: &model,
            step_offset: job.step_offset,
            orders: job.orders.as_ref(),
            log: &log,
        };
        let (_, outcome) =
            super::trl::run_stage(&launch, &stop, &mut next).map_err(|e| TrainError::Host(e.to_string()))?;
        // The stage's own events (started, metrics, finished) were written by its rank 0.
        self.writer.sync().map_err(host_err)?;
        match outcome {
            super::trl::TrlOutcome::Stopped => Ok(ExternalOutcome::Stopped),
            super::trl::TrlOutcome::Finished => {
                let model = super::trl::export_dir(&run_dir, &name);
                let step = super::trl::exported_step(&model).map_err(|e| TrainError::Host(e.to_string()))?;
                Ok(ExternalOutcome::Finished { model, step })
            }
        }
    }

    fn export(&mut self, stage: &str, files: Vec<(String, Vec<u8>)>) -> Result<Option<PathBuf>, TrainError> {
        let target = self.lock.run().exports_dir().join(crate::run::dir_component(stage));
        crate::durable::write_dir(&target, &files).map_err(|e| TrainError::Host(e.to_string()))?;
        Ok(Some(target))
    }
}
