//! `App`: everything the screen shows, built only from run events and user actions.
//!
//! [`App::apply`] folds one event of events.jsonl into the state; [`crate::tui::update`] applies
//! an [`crate::tui::Action`]. Nothing here reads files, talks to the terminal or looks at the
//! clock: times come from the events' own `ts`, so the same events always give the same screen.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

use super::gpu::GpuStatus;
use super::keymap::Keymap;
use super::layout;
use super::model::{
    CheckpointInfo, GateState, LambdaChange, Level, Modal, Notice, Pane, Progress, RunStatus, Sample, StageInfo,
    StageState, StatusLine, Worker,
};
use super::runs::RunSummary;
use super::series::{recent_slope, Series, Window};
use super::theme::Theme;
use crate::control::Request;
use crate::run::{kind, Event};

/// How many warnings and errors are kept.
pub const NOTICES_KEPT: usize = 50;
/// How many recent metrics events the step rate (and so the ETA) is measured over.
const RATE_SAMPLES: usize = 20;
/// How many recent points the "chosen falls while the margin grows" hint looks at.
const HINT_POINTS: usize = 20;

/// The hint shown when the chosen reward falls while the margin grows.
pub const SFT_HINT: &str = "chosen reward falling while the margin grows: consider an SFT term (sft.on_chosen)";

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct App {
    /// Styles by role.
    pub theme: Theme,
    /// The pane shown.
    pub pane: Pane,
    /// Whether the help overlay is shown.
    pub show_help: bool,
    /// Whether charts draw the EMA instead of raw values.
    pub smoothing: bool,
    /// Whether the loss chart uses a log scale.
    pub log_scale: bool,
    /// Which steps the charts show.
    pub window: Window,
    /// Set by `Quit`: the loop ends (training goes on).
    pub quit: bool,
    /// Terminal size (columns, rows), from the last resize.
    pub size: (u16, u16),
    /// The run id from `run_started`.
    pub run_id: Option<String>,
    /// The stages in pipeline order.
    pub stages: Vec<StageInfo>,
    /// Every numeric metric by key (`loss`, `weighted/pref`, ...), over the global step.
    pub series: BTreeMap<String, Series>,
    /// Current λ per term (`pref`, `safe`), from metrics and `lambda_changed`.
    pub lambdas: BTreeMap<String, f64>,
    /// Every λ change, oldest first.
    pub lambda_changes: Vec<LambdaChange>,
    /// The last [`NOTICES_KEPT`] warnings, errors and resumes, oldest first.
    pub notices: VecDeque<Notice>,
    /// Progress of the running stage.
    pub progress: Progress,
    /// The run's status from its events.
    pub status: RunStatus,
    /// Labels admitted into training so far.
    pub labels_admitted: u64,
    /// Labels retracted so far.
    pub labels_retracted: u64,
    /// The newest checkpoint.
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Whether the worker is alive.
    pub worker: Worker,
    /// Runs in the same runs directory.
    pub runs: Vec<RunSummary>,
    /// Pane 3's state, once attached to a run.
    pub label: Option<crate::tui::label::LabelPane>,
    /// Pane 4's state, once attached to a run.
    pub eval: Option<crate::tui::eval_pane::EvalPane>,
    /// The evaluation gates' state.
    pub gates: GateState,
    /// Whether the run evaluates and gates its stages (its pipeline has `[eval]`): from
    /// `run_started`'s `eval` field, or any evaluation seen in the log.
    pub gated: bool,
    /// The newest live sample.
    pub sample: Option<Sample>,
    /// The GPU panel's readings.
    pub gpu: GpuStatus,
    /// Keys to commands (defaults merged with the user's keys.toml).
    pub keymap: Keymap,
    /// The open dialog, if any.
    pub modal: Option<Modal>,
    /// The selected row of the Stages pane.
    pub selected_stage: usize,
    /// The selected row of the Runs pane.
    pub selected_run: usize,
    /// The last control reply or UI message.
    pub status_line: Option<StatusLine>,
    /// True while the history behind the first frame is still loading.
    pub loading_history: bool,
    /// Requests to send to the worker, taken by the event loop ([`App::take_requests`]).
    outbox: Vec<Request>,
    /// A run (by id) the user asked to attach to, taken by the event loop.
    attach_to: Option<String>,
    /// (ts, global step) of recent metrics in the running stage.
    rate_samples: VecDeque<(u64, u64)>,
    /// Whether something changed since the last frame.
    dirty: bool,
}

impl Default for App {
    fn default() -> App {
        App::new(Theme::default())
    }
}

impl App {
    /// An empty state with `theme`, showing the dashboard at 80x24.
    pub fn new(theme: Theme) -> App {
        App {
            theme,
            pane: Pane::Dashboard,
            show_help: false,
            smoothing: false,
            log_scale: false,
            window: Window::Recent,
            quit: false,
            size: (80, 24),
            run_id: None,
            stages: Vec::new(),
            series: BTreeMap::new(),
            lambdas: BTreeMap::new(),
            lambda_changes: Vec::new(),
            notices: VecDeque::new(),
            progress: Progress::default(),
            status: RunStatus::Waiting,
            labels_admitted: 0,
            labels_retracted: 0,
            last_checkpoint: None,
            worker: Worker::Unknown,
            runs: Vec::new(),
            label: None,
            eval: None,
            gates: GateState::Pending,
            gated: false,
            sample: None,
            gpu: GpuStatus::Unknown,
            keymap: Keymap::default(),
            modal: None,
            selected_stage: 0,
            selected_run: 0,
            status_line: None,
            loading_history: false,
            outbox: Vec::new(),
            attach_to: None,
            rate_samples: VecDeque::new(),
            dirty: true,
        }
    }

    /// Forgets everything learned from events (the log was replaced), keeping the view settings.
    pub fn clear_run(&mut self) {
        let fresh = App::new(self.theme.clone());
        self.replace_run(fresh);
    }

    /// Takes the run's state (everything learned from events) from `loaded`, keeping this state's
    /// view: pane, toggles, size, keymap, dialog, selections, status line, runs list, worker and
    /// GPU readings. Used when the history behind the first frame has been folded off the UI
    /// thread.
    pub fn replace_run(&mut self, mut loaded: App) {
        std::mem::swap(&mut loaded.theme, &mut self.theme);
        std::mem::swap(&mut loaded.keymap, &mut self.keymap);
        std::mem::swap(&mut loaded.runs, &mut self.runs);
        std::mem::swap(&mut loaded.gpu, &mut self.gpu);
        std::mem::swap(&mut loaded.modal, &mut self.modal);
        std::mem::swap(&mut loaded.status_line, &mut self.status_line);
        std::mem::swap(&mut loaded.outbox, &mut self.outbox);
        std::mem::swap(&mut loaded.attach_to, &mut self.attach_to);
        (loaded.pane, loaded.show_help, loaded.smoothing, loaded.log_scale, loaded.window, loaded.size) =
            (self.pane, self.show_help, self.smoothing, self.log_scale, self.window, self.size);
        (loaded.worker, loaded.quit, loaded.selected_stage, loaded.selected_run) =
            (self.worker, self.quit, self.selected_stage, self.selected_run);
        *self = loaded;
        self.dirty = true;
    }

    /// Queues a request for the worker and says so on the status line.
    pub fn request(&mut self, request: Request) {
        self.set_status(Level::Info, format!("sent: {}", super::control::describe(&request)));
        self.outbox.push(request);
    }

    /// The requests queued since the last call, oldest first.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.outbox)
    }

    /// Asks the event loop to attach to the run `id` of the same runs directory.
    pub fn request_attach(&mut self, id: String) {
        self.set_status(Level::Info, format!("attaching to {id}"));
        self.attach_to = Some(id);
    }

    /// The run the user asked to attach to, once.
    pub fn take_attach(&mut self) -> Option<String> {
        self.attach_to.take()
    }

    /// Sets the status line.
    pub fn set_status(&mut self, level: Level, text: String) {
        self.status_line = Some(StatusLine { level, text });
        self.dirty = true;
    }

    /// Marks the screen as needing a redraw.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether a redraw is due; clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Adds a notice, dropping the oldest past [`NOTICES_KEPT`].
    pub fn push_notice(&mut self, notice: Notice) {
        if self.notices.len() == NOTICES_KEPT {
            self.notices.pop_front();
        }
        self.notices.push_back(notice);
        self.dirty = true;
    }

    /// Folds one event into the state. Unknown kinds and missing fields are ignored, so older
    /// TUIs read newer logs.
    pub fn apply(&mut self, event: &Event) {
        self.dirty = true;
        let f = &event.fields;
        match event.event.as_str() {
            kind::RUN_STARTED => {
                self.run_id = str_field(f, "run_id").or(self.run_id.take());
                self.status = RunStatus::Running;
                self.gated |= f.get("eval").and_then(Value::as_bool).unwrap_or(false);
                if let Some(Value::Array(names)) = f.get("stages") {
                    let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                    if names.iter().copied().ne(self.stages.iter().map(|s| s.name.as_str())) {
                        self.stages = names.into_iter().map(StageInfo::new).collect();
                    }
                }
            }
            kind::STAGE_STARTED | kind::STAGE_RESUMED => self.stage_started(event),
            kind::METRICS => self.metrics(event),
            kind::LAMBDA_CHANGED => {
                let lambda = str_field(f, "lambda").unwrap_or_default();
                let to = num(f, "to");
                if let Some(to) = to {
                    self.lambdas.insert(lambda.clone(), to);
                    if event.stage.is_some() {
                        let stage = self.stage_mut(event.stage.as_deref());
                        match lambda.as_str() {
                            "pref" => stage.lambda_pref = Some(to),
                            "safe" => stage.lambda_safe = Some(to),
                            _ => {}
                        }
                    }
                }
                self.lambda_changes.push(LambdaChange {
                    lambda,
                    step: event.step.unwrap_or(self.progress.global_step),
                    from: num(f, "from").unwrap_or(f64::NAN),
                    to: to.unwrap_or(f64::NAN),
                    unsafe_rate: num(f, "unsafe_rate"),
                    reason: str_field(f, "reason").unwrap_or_default(),
                });
            }
            kind::SAMPLE => {
                self.sample = Some(Sample {
                    stage: event.stage.clone(),
                    step: event.step,
                    prompt: str_field(f, "prompt").unwrap_or_default(),
                    response: str_field(f, "response").unwrap_or_default(),
                });
            }
            // Each evaluation reopens the gates until its decision arrives.
            kind::EVAL_FINISHED => {
                self.gates = GateState::Evaluating;
                self.gated = true;
            }
            kind::GATE_DECIDED => {
                self.gated = true;
                self.gates = match str_field(f, "decision").as_deref() {
                    Some("deploy") => GateState::Deploy,
                    Some("iterate") => GateState::Iterate,
                    _ => GateState::Incomplete,
                };
            }
            kind::LABELS_ADMITTED => {
                self.labels_admitted += uint(f, "count").unwrap_or(0);
                self.labels_retracted += uint(f, "retracted").unwrap_or(0);
            }
            kind::CHECKPOINT_SAVED => {
                self.last_checkpoint = Some(CheckpointInfo {
                    step: event.step.unwrap_or(0),
                    path: str_field(f, "path").unwrap_or_default(),
                    bytes: uint(f, "bytes").unwrap_or(0),
                    best_step: uint(f, "best_step"),
                });
            }
            kind::RESUMED => self.resumed(event),
            kind::WARNING | kind::ERROR => {
                let level = if event.event == kind::ERROR { Level::Error } else { Level::Warning };
                let message = str_field(f, "message").unwrap_or_else(|| Value::Object(f.clone()).to_string());
                self.push_notice(Notice { level, stage: event.stage.clone(), step: event.step, message });
            }
            kind::STAGE_FINISHED => {
                let stage = self.stage_mut(event.stage.as_deref());
                stage.state = StageState::Done;
                if let Some(steps) = uint(f, "steps") {
                    stage.stage_step = steps;
                    stage.total_steps.get_or_insert(steps);
                }
                self.progress.eta_seconds = None;
            }
            kind::RUN_FINISHED => {
                let seconds = num(f, "seconds").unwrap_or(0.0);
                let (status, stage_state) = match str_field(f, "status").as_deref() {
                    Some("completed") => (RunStatus::Completed(seconds), StageState::Done),
                    Some("stopped") => (RunStatus::Stopped(seconds), StageState::Stopped),
                    _ => (RunStatus::Failed(seconds), StageState::Failed),
                };
                self.status = status;
                for stage in &mut self.stages {
                    if stage.state == StageState::Running {
                        stage.state = stage_state;
                    }
                }
                self.progress.eta_seconds = None;
            }
            _ => {}
        }
    }

    fn stage_started(&mut self, event: &Event) {
        let f = &event.fields;
        let total = uint(f, "total_steps");
        let stage = self.stage_mut(event.stage.as_deref());
        stage.state = StageState::Running;
        stage.total_steps = total.or(stage.total_steps);
        stage.round = uint(f, "round").or(stage.round);
        if let Some(Value::Object(examples)) = f.get("examples") {
            stage.examples =
                examples.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).filter(|(_, n)| *n > 0).collect();
        }
        if let Some(Value::Object(kinds)) = f.get("truncation") {
            let sum = |key| kinds.values().filter_map(|v| v.get(key)?.as_u64()).sum();
            (stage.truncated, stage.dropped) = (sum("truncated"), sum("dropped"));
        }
        stage.beta = num(f, "beta").or(stage.beta);
        stage.lambda_pref = num(f, "lambda_pref").or(stage.lambda_pref);
        stage.lambda_safe = num(f, "lambda_safe").or(stage.lambda_safe);
        let stage_step = stage.stage_step;
        self.status = RunStatus::Running;
        self.progress.stage.clone_from(&event.stage);
        self.progress.stage_step = if event.event == kind::STAGE_RESUMED { stage_step } else { 0 };
        self.progress.total_steps = total.unwrap_or(0);
        self.progress.eta_seconds = None;
        self.rate_samples.clear();
    }

    fn metrics(&mut self, event: &Event) {
        let f = &event.fields;
        if let Some(step) = event.step {
            for (key, value) in f {
                if let Some(v) = value.as_f64() {
                    // Look up before inserting: a million events must not allocate a key each.
                    match self.series.get_mut(key) {
                        Some(series) => series.push(step, v),
                        None => self.series.entry(key.clone()).or_default().push(step, v),
                    }
                }
            }
            self.progress.global_step = step;
            self.rate_samples.push_back((event.ts, step));
            if self.rate_samples.len() > RATE_SAMPLES {
                self.rate_samples.pop_front();
            }
        }
        for (term, key) in [("pref", "lambda/pref"), ("safe", "lambda/safe")] {
            if let Some(v) = num(f, key) {
                match self.lambdas.get_mut(term) {
                    Some(lambda) => *lambda = v,
                    None => {
                        self.lambdas.insert(term.to_string(), v);
                    }
                }
            }
        }
        let stage_step = uint(f, "stage_step");
        let total = uint(f, "total_steps");
        if event.stage.is_some() {
            let stage = self.stage_mut(event.stage.as_deref());
            if stage.state == StageState::Pending {
                stage.state = StageState::Running;
            }
            stage.stage_step = stage_step.unwrap_or(stage.stage_step);
            stage.total_steps = total.or(stage.total_steps);
            stage.lambda_pref = num(f, "lambda/pref").or(stage.lambda_pref);
            stage.lambda_safe = num(f, "lambda/safe").or(stage.lambda_safe);
            stage.beta = num(f, "beta").or(stage.beta);
            self.progress.stage.clone_from(&event.stage);
        }
        self.progress.stage_step = stage_step.unwrap_or(self.progress.stage_step);
        self.progress.total_steps = total.unwrap_or(self.progress.total_steps);
        self.progress.tokens_per_second = num(f, "tokens_per_second").or(self.progress.tokens_per_second);
        self.progress.peak_memory_bytes = uint(f, "memory/peak_bytes").or(self.progress.peak_memory_bytes);
        self.progress.eta_seconds = self.eta();
    }

    fn resumed(&mut self, event: &Event) {
        let from = uint(&event.fields, "from_step").or(event.step).unwrap_or(0);
        for series in self.series.values_mut() {
            series.truncate_after(from);
        }
        self.lambda_changes.retain(|c| c.step <= from);
        self.rate_samples.clear();
        self.progress.global_step = from;
        self.progress.eta_seconds = None;
        self.status = RunStatus::Running;
        let pid = uint(&event.fields, "pid").map_or(String::new(), |p| format!(" (pid {p})"));
        self.push_notice(Notice {
            level: Level::Info,
            stage: event.stage.clone(),
            step: Some(from),
            message: format!("resumed from step {from}{pid}"),
        });
    }

    /// Seconds to the end of the stage at the step rate of the recent metrics.
    fn eta(&self) -> Option<f64> {
        let (&(t0, s0), &(t1, s1)) = (self.rate_samples.front()?, self.rate_samples.back()?);
        if t1 <= t0 || s1 <= s0 {
            return None;
        }
        let steps_per_second = (s1 - s0) as f64 / ((t1 - t0) as f64 / 1000.0);
        let left = self.progress.total_steps.saturating_sub(self.progress.stage_step);
        Some(left as f64 / steps_per_second)
    }

    /// The stage named `name`, added at the end when the pipeline did not list it.
    fn stage_mut(&mut self, name: Option<&str>) -> &mut StageInfo {
        let name = name.unwrap_or("?");
        let index = if let Some(i) = self.stages.iter().position(|s| s.name == name) {
            i
        } else {
            self.stages.push(StageInfo::new(name));
            self.stages.len() - 1
        };
        &mut self.stages[index]
    }

    /// The λ changes of the safety term: its trajectory.
    pub fn lambda_safe_trajectory(&self) -> impl Iterator<Item = &LambdaChange> {
        self.lambda_changes.iter().filter(|c| c.lambda == "safe")
    }

    /// The newest value of a metric.
    pub fn latest(&self, key: &str) -> Option<f64> {
        self.series.get(key).and_then(Series::last)
    }

    /// True when, over the last ~20 steps of a preference stage that is still the newest data,
    /// the chosen reward falls while the margin grows: DPO is pushing both answers down, which an
    /// SFT term on the chosen answers counters.
    pub fn chosen_falls_while_margin_grows(&self) -> bool {
        let (Some(chosen), Some(margins)) = (self.series.get("rewards/chosen"), self.series.get("rewards/margins"))
        else {
            return false;
        };
        if chosen.last_step() != Some(self.progress.global_step) || chosen.len() < HINT_POINTS / 2 {
            return false;
        }
        let falling = recent_slope(chosen.points(), HINT_POINTS).is_some_and(|s| s < 0.0);
        let growing = recent_slope(margins.points(), HINT_POINTS).is_some_and(|s| s > 0.0);
        falling && growing
    }

    /// Whether the newest rewards are a GRPO stage's (`reward`) rather than DPO's: the dashboard
    /// then charts reward, its spread, KL and the share of groups without a learning signal.
    pub fn grpo_is_latest(&self) -> bool {
        let last = |key: &str| self.series.get(key).and_then(Series::last_step);
        match (last("reward"), last("rewards/margins")) {
            (Some(grpo), Some(dpo)) => grpo > dpo,
            (grpo, _) => grpo.is_some(),
        }
    }

    /// The first step the charts show.
    pub fn first_step(&self, keys: &[&str]) -> u64 {
        let last = keys.iter().filter_map(|k| self.series.get(*k)?.last_step()).max().unwrap_or(0);
        self.window.first_step(last)
    }

    /// Recomputes the charts' bucket caches for the current size, window and smoothing. Each cache
    /// only recomputes when its data, width or window changed.
    pub fn refresh_caches(&mut self) {
        let columns = layout::chart_columns(self.size, self.chosen_falls_while_margin_grows());
        for (keys, width, smoothed) in [
            (layout::LOSS_KEYS, columns.loss, self.smoothing),
            (layout::DPO_KEYS, columns.dpo, self.smoothing),
            (layout::GRPO_KEYS, columns.dpo, self.smoothing),
            (layout::SPARK_KEYS, columns.sparkline, false),
            (layout::LAMBDA_KEYS, columns.sparkline, false),
        ] {
            let first = self.first_step(keys);
            for key in keys {
                if let Some(series) = self.series.get_mut(*key) {
                    let cache_key = series.key(width, first, smoothed);
                    series.refresh(cache_key);
                }
            }
        }
    }
}

fn num(f: &Map<String, Value>, key: &str) -> Option<f64> {
    f.get(key).and_then(Value::as_f64)
}

fn uint(f: &Map<String, Value>, key: &str) -> Option<u64> {
    f.get(key).and_then(Value::as_u64)
}

fn str_field(f: &Map<String, Value>, key: &str) -> Option<String> {
    f.get(key).and_then(Value::as_str).map(str::to_string)
}
