//! The `grpo` table of a stage (online RL with group-relative advantages, TRL's `GRPOTrainer`):
//! its type, the names its rewards may use, and its checks. Kept apart from `types.rs` so the
//! stage kinds stay independent of each other.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::load::Locator;
use super::locate::FieldPath;
use super::types::Stage;
use super::validate::show_f64;

/// `grpo = { prompts = [...], group_size = 8, beta = 0.04, reward = [...], ... }`: per prompt a
/// group of completions sampled from the current policy, scored by rule rewards (the eval
/// checks, through the evaluation's judge) and/or a reward model, group-normalised advantages, and
/// TRL's clipped objective (`loss_type = "dapo"`, TRL 1.16's default) with a KL penalty to the
/// reference (the weights the stage starts from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoTerm {
    /// Prompt files in the eval-suite format (`{"id", "prompt", "reference"?, "kind", "segment",
    /// "checks"}`): the checks an item carries are what its rule rewards judge.
    pub prompts: Vec<PathBuf>,
    /// Completions sampled per prompt (TRL's `num_generations`).
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    /// KL coefficient β (0 drops the reference model).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Rule rewards, each a check name (see [`REWARD_NAMES`]); they are summed.
    #[serde(default)]
    pub reward: Vec<String>,
    /// A sequence-classification reward model directory whose score is added to the rule rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<PathBuf>,
    /// Upper bound on each completion's tokens (TRL's `max_completion_length`).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature (also divides the logits of the loss's log-probs, as TRL does).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Nucleus sampling's `top_p`.
    #[serde(default = "one")]
    pub top_p: f64,
    /// The clipping ε of the ratio (TRL's `epsilon`; one update per generation never clips).
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
}

/// The rewards a `grpo.reward` entry may name. Each is a check of the eval vocabulary and scores
/// a completion 1 when the item's checks of that name all pass, 0 when one fails; an item
/// without such a check gets no value from it (TRL's `None`). `format` stands for the
/// instruction-following checks (`max_words`, `lowercase`, `starts_with`, `valid_json`).
pub const REWARD_NAMES: [&str; 13] = [
    "exact",
    "contains",
    "format",
    "must_refuse",
    "must_abstain",
    "regex",
    "numeric",
    "must_not_contain",
    "max_words",
    "lowercase",
    "starts_with",
    "valid_json",
    "cite_sources",
];

fn default_group_size() -> usize {
    8
}
fn default_beta() -> f64 {
    0.04
}
fn default_max_new_tokens() -> usize {
    64
}
fn default_epsilon() -> f64 {
    0.2
}
fn one() -> f64 {
    1.0
}

/// Checks a stage's `grpo` table (nothing on disk). A GRPO stage has no other term: its data is
/// what the policy samples.
pub(crate) fn check(stage: &Stage, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let Some(grpo) = &stage.grpo else { return Ok(()) };
    if stage.sft.is_some() || stage.pref.is_some() || stage.safety.is_some() || stage.lm.is_some() {
        return Err(locator.error(
            &at.key("grpo"),
            "a GRPO stage trains on its own samples only: remove [stage.sft], [stage.pref], [stage.safety] and \
             [stage.lm] from it (or put them in a stage of their own)",
        ));
    }
    let at = at.key("grpo");
    if grpo.prompts.is_empty() {
        return Err(locator.error(&at.key("prompts"), "no prompt files (eval-suite JSONL with the checks to reward)"));
    }
    if grpo.group_size < 2 {
        return Err(locator.error(
            &at.key("group_size"),
            format!(
                "must be at least 2 (got {}): advantages are relative to the other completions of a group",
                grpo.group_size
            ),
        ));
    }
    if grpo.reward.is_empty() && grpo.reward_model.is_none() {
        return Err(locator.error(&at.key("reward"), "no reward: name checks (e.g. [\"exact\"]) or set reward_model"));
    }
    for (i, name) in grpo.reward.iter().enumerate() {
        if !REWARD_NAMES.contains(&name.as_str()) {
            return Err(locator.error(
                &at.key("reward").index(i),
                format!("unknown check `{name}` (expected one of: {})", REWARD_NAMES.join(", ")),
            ));
        }
        if grpo.reward[..i].contains(name) {
            return Err(locator.error(&at.key("reward").index(i), format!("`{name}` is listed twice")));
        }
    }
    if !(grpo.beta.is_finite() && grpo.beta >= 0.0) {
        return Err(
            locator.error(&at.key("beta"), format!("must be a finite number ≥ 0 (got {})", show_f64(grpo.beta)))
        );
    }
    if grpo.max_new_tokens < 1 {
        return Err(locator.error(&at.key("max_new_tokens"), "must be at least 1"));
    }
    if !(grpo.temperature.is_finite() && grpo.temperature > 0.0) {
        return Err(locator.error(
            &at.key("temperature"),
            format!("must be a finite number > 0 (got {}): GRPO samples", show_f64(grpo.temperature)),
        ));
    }
    if !(grpo.top_p > 0.0 && grpo.top_p <= 1.0) {
        return Err(locator.error(&at.key("top_p"), format!("must be in (0, 1] (got {})", show_f64(grpo.top_p))));
    }
    if !(grpo.epsilon.is_finite() && grpo.epsilon > 0.0 && grpo.epsilon < 1.0) {
        return Err(locator.error(&at.key("epsilon"), format!("must be in (0, 1) (got {})", show_f64(grpo.epsilon))));
    }
    Ok(())
}
