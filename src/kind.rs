//! The event kinds hone writes (the `event` key of a line of `events.jsonl`), in one place below
//! both the trainer and the run directory: writers and readers name them through these
//! constants, never by a string literal of their own. (`run::kind` is this module.)

/// `run_started`.
pub const RUN_STARTED: &str = "run_started";
/// `resumed`.
pub const RESUMED: &str = "resumed";
/// `run_finished`.
pub const RUN_FINISHED: &str = "run_finished";
/// `stage_started`.
pub const STAGE_STARTED: &str = "stage_started";
/// `stage_resumed`.
pub const STAGE_RESUMED: &str = "stage_resumed";
/// `stage_finished`.
pub const STAGE_FINISHED: &str = "stage_finished";
/// `stage_skipped`.
pub const STAGE_SKIPPED: &str = "stage_skipped";
/// `metrics`.
pub const METRICS: &str = "metrics";
/// `lambda_changed`.
pub const LAMBDA_CHANGED: &str = "lambda_changed";
/// `eval_finished`.
pub const EVAL_FINISHED: &str = "eval_finished";
/// `gate_decided`.
pub const GATE_DECIDED: &str = "gate_decided";
/// `iterate`.
pub const ITERATE: &str = "iterate";
/// `labels_admitted`.
pub const LABELS_ADMITTED: &str = "labels_admitted";
/// `checkpoint_saved`.
pub const CHECKPOINT_SAVED: &str = "checkpoint_saved";
/// `warning`.
pub const WARNING: &str = "warning";
/// `error`.
pub const ERROR: &str = "error";
/// `paused`.
pub const PAUSED: &str = "paused";
/// `stop_requested`.
pub const STOP_REQUESTED: &str = "stop_requested";
/// `candidates_generated`.
pub const CANDIDATES_GENERATED: &str = "candidates_generated";
/// `sample`.
pub const SAMPLE: &str = "sample";
/// `phase_interrupted`.
pub const PHASE_INTERRUPTED: &str = "phase_interrupted";
/// `reward_model_saved`.
pub const REWARD_MODEL_SAVED: &str = "reward_model_saved";
/// `reference_logps_resumed`: a stage kept reference log-probs stored before an interruption.
pub const REFERENCE_LOGPS_RESUMED: &str = "reference_logps_resumed";
