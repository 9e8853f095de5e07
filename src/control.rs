//! The requests a live worker takes and where it says it stands: one model, below both the
//! trainer (which applies requests at its step boundaries and publishes its [`Status`]) and the
//! run directory's control socket (which carries them as JSON lines, see `run::control`), and
//! the one the dashboard sends.

use serde::{Deserialize, Serialize};

/// Which λ a `set_lambda` request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LambdaTerm {
    /// λ_pref, the weight of the preference (DPO/IPO) term.
    Pref,
    /// λ_safe, the weight of the safety term.
    Safe,
}

impl LambdaTerm {
    /// `pref` or `safe`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pref => "pref",
            Self::Safe => "safe",
        }
    }

    /// The λ named `name` (`pref` or `safe`), as events and the dashboard spell it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pref" => Some(Self::Pref),
            "safe" => Some(Self::Safe),
            _ => None,
        }
    }
}

/// One request to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stop between steps until `resume` (no CPU is used while paused).
    Pause,
    /// Continue after `pause`.
    Resume,
    /// Checkpoint at the next step boundary, then exit cleanly.
    Stop,
    /// End the running stage now (its final checkpoint and evaluation still happen).
    SkipStage {
        /// Only if this stage is the one running when the request is applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
    },
    /// Change λ_pref or λ_safe from the next step on.
    SetLambda {
        /// Which λ.
        term: LambdaTerm,
        /// The new value (finite, ≥ 0).
        value: f64,
    },
    /// Save a checkpoint at the next step boundary.
    CheckpointNow,
    /// Sample two responses per prompt for `count` prompts of the running stage with the current
    /// policy and append them to `candidates.jsonl`.
    GenerateCandidates {
        /// How many prompts (1 to [`MAX_CANDIDATE_PROMPTS`]).
        count: usize,
    },
    /// The worker's position, answered at once.
    Status,
}

/// The most prompts one `generate_candidates` request may ask for.
pub const MAX_CANDIDATE_PROMPTS: usize = 256;

impl Request {
    /// The request's name on the wire (`cmd`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Stop => "stop",
            Self::SkipStage { .. } => "skip_stage",
            Self::SetLambda { .. } => "set_lambda",
            Self::CheckpointNow => "checkpoint_now",
            Self::GenerateCandidates { .. } => "generate_candidates",
            Self::Status => "status",
        }
    }

    /// Checks the request's values; the message is what the reply's `error` says.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::SetLambda { value, term } if !(value.is_finite() && *value >= 0.0) => {
                Err(format!("set_lambda: value of λ_{} must be a finite number ≥ 0, got {value}", term.as_str()))
            }
            Self::GenerateCandidates { count } if !(1..=MAX_CANDIDATE_PROMPTS).contains(count) => {
                Err(format!("generate_candidates: count must be 1 to {MAX_CANDIDATE_PROMPTS}, got {count}"))
            }
            _ => Ok(()),
        }
    }
}

/// The worker's position, as published at every step boundary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The worker's pid.
    pub pid: u32,
    /// `starting`, `running`, `paused`, `evaluating` or `stopping`.
    pub state: String,
    /// The stage being trained, if any.
    pub stage: Option<String>,
    /// Optimizer steps completed over the whole run.
    pub step: u64,
    /// Optimizer steps completed in the stage.
    pub stage_step: u64,
    /// The stage's length.
    pub stage_total: Option<u64>,
    /// λ_pref in effect.
    pub lambda_pref: Option<f64>,
    /// λ_safe in effect.
    pub lambda_safe: Option<f64>,
    /// Requests received and not yet applied.
    pub pending: usize,
}
