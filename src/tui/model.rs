//! The plain data the UI state is made of: panes, stages and their states, the run's status,
//! notices, progress, checkpoints and λ changes. No behaviour beyond small conversions.

/// The panes, in key order (`1`..`5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pane {
    /// Charts of the running training.
    #[default]
    Dashboard,
    /// The pipeline's stages in detail.
    Stages,
    /// Labeling preference pairs (`tui::label`).
    Label,
    /// Evaluation results, gates and overrides (`tui::eval_pane`).
    Eval,
    /// The other runs in the runs directory.
    Runs,
}

impl Pane {
    /// Every pane in key order.
    pub const ALL: [Pane; 5] = [Pane::Dashboard, Pane::Stages, Pane::Label, Pane::Eval, Pane::Runs];

    /// The pane a number key selects (1-based).
    pub fn from_number(n: u8) -> Option<Pane> {
        Pane::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The pane's title on its tab.
    pub fn title(self) -> &'static str {
        match self {
            Pane::Dashboard => "Dashboard",
            Pane::Stages => "Stages",
            Pane::Label => "Label",
            Pane::Eval => "Eval",
            Pane::Runs => "Runs",
        }
    }
}

/// Where a pipeline stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Not started.
    Pending,
    /// Training now.
    Running,
    /// Finished all its steps.
    Done,
    /// The run failed while this stage ran.
    Failed,
    /// The run was stopped while this stage ran; a resume continues it.
    Stopped,
}

/// One stage of the pipeline, in pipeline order.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInfo {
    /// The stage's name as the trainer wrote it (untrusted: sanitize before display).
    pub name: String,
    /// Where it is.
    pub state: StageState,
    /// Its step within the stage.
    pub stage_step: u64,
    /// Its total steps, once started.
    pub total_steps: Option<u64>,
    /// Training examples per kind (`sft`, `pref`, ...), non-zero ones only.
    pub examples: Vec<(String, u64)>,
    /// Examples truncated to the maximum length, over all kinds.
    pub truncated: u64,
    /// Examples dropped as too long, over all kinds.
    pub dropped: u64,
    /// λ_pref while this stage ran (from its events), if known.
    pub lambda_pref: Option<f64>,
    /// λ_safe while this stage ran, if known.
    pub lambda_safe: Option<f64>,
    /// DPO's β for this stage, if its events say.
    pub beta: Option<f64>,
    /// The round, when this is a round of an `[[iterate]]`'s fix stage.
    pub round: Option<u64>,
}

impl StageInfo {
    /// A pending stage named `name`.
    pub(crate) fn new(name: &str) -> StageInfo {
        StageInfo {
            name: name.to_string(),
            state: StageState::Pending,
            stage_step: 0,
            total_steps: None,
            examples: Vec::new(),
            truncated: 0,
            dropped: 0,
            lambda_pref: None,
            lambda_safe: None,
            beta: None,
            round: None,
        }
    }
}

/// The run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RunStatus {
    /// No `run_started` seen yet.
    #[default]
    Waiting,
    /// Started and not finished.
    Running,
    /// Finished every stage, in this many seconds.
    Completed(f64),
    /// Stopped on request after this many seconds; can be resumed.
    Stopped(f64),
    /// Failed after this many seconds.
    Failed(f64),
}

/// How serious a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something worth knowing (a resume).
    Info,
    /// A `warning` event or an unreadable line of events.jsonl.
    Warning,
    /// An `error` event.
    Error,
}

/// A warning or error, as logged (untrusted text: sanitize before display).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// How serious it is.
    pub level: Level,
    /// The stage it came from.
    pub stage: Option<String>,
    /// The step it came at.
    pub step: Option<u64>,
    /// The message.
    pub message: String,
}

/// The latest training progress.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// The stage training now (or last).
    pub stage: Option<String>,
    /// Step within that stage.
    pub stage_step: u64,
    /// Steps in that stage.
    pub total_steps: u64,
    /// Global optimizer step.
    pub global_step: u64,
    /// Tokens per second at the last step.
    pub tokens_per_second: Option<f64>,
    /// The worker's peak memory so far (`memory/peak_bytes`: RSS on the CPU, GPU memory on CUDA).
    pub peak_memory_bytes: Option<u64>,
    /// Seconds to the end of the stage at the recent step rate.
    pub eta_seconds: Option<f64>,
}

/// The newest checkpoint written.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The step it holds.
    pub step: u64,
    /// Its directory (untrusted: sanitize before display).
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// The best checkpoint's step so far.
    pub best_step: Option<u64>,
}

/// A change of a loss weight λ.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaChange {
    /// Which λ (`pref`, `safe`).
    pub lambda: String,
    /// The step it changed at.
    pub step: u64,
    /// The old value.
    pub from: f64,
    /// The new value.
    pub to: f64,
    /// The measured unsafe rate that drove it, if adaptive.
    pub unsafe_rate: Option<f64>,
    /// Why it changed.
    pub reason: String,
}

/// Whether the run's worker process is alive, as last checked by the tail thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Worker {
    /// Not checked yet.
    #[default]
    Unknown,
    /// A worker holds the run's lock.
    Live(Option<u32>),
    /// No worker holds the lock.
    Gone,
}

/// The evaluation gates' state, from `eval_finished` and `gate_decided` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateState {
    /// No evaluation yet.
    #[default]
    Pending,
    /// An evaluation finished; no decision yet.
    Evaluating,
    /// The gates passed: the model is exported.
    Deploy,
    /// A gate failed: iterate on data or model.
    Iterate,
    /// Some gated metric could not be measured.
    Incomplete,
}

/// The newest `sample` event: the model's answer to a fixed prompt at some step (untrusted text:
/// sanitize before display).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The stage it came from.
    pub stage: Option<String>,
    /// The step it came at.
    pub step: Option<u64>,
    /// The prompt.
    pub prompt: String,
    /// The model's answer.
    pub response: String,
}

/// A dialog over the pane; while one is open it takes every key.
#[derive(Debug, Clone, PartialEq)]
pub enum Modal {
    /// "Really do this?": `y`/Enter sends the request, `n`/Esc drops it.
    Confirm(crate::control::Request),
    /// A λ being typed: Enter sends it, Esc drops it.
    EditLambda {
        /// Which λ (`pref`, `safe`).
        term: String,
        /// What has been typed.
        input: String,
        /// Why the last Enter was refused.
        error: Option<String>,
    },
}

/// The status line's message: the last control reply or a UI message.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusLine {
    /// How it reads.
    pub level: Level,
    /// The text (may quote a worker's reply: sanitize before display).
    pub text: String,
}
