//! The pipeline file's types, exactly as a user writes them in TOML. Unknown keys are errors;
//! every optional field has the default a user of TRL would expect.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A whole pipeline: the run settings, the base model and the stages in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Run-wide settings.
    #[serde(default)]
    pub run: RunSettings,
    /// The base model.
    pub model: ModelSettings,
    /// Stages, run in order; each starts from the previous one's final weights.
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
    /// Evaluation after each stage (and of the base model) with the release gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSettings>,
    /// `[engine.trl]`: how stages with `engine = "trl"` are launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<super::engine::EngineSettings>,
    /// What the labeling pane (pane 3) starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelSettings>,
    /// `[[iterate]]`: fix stages that go round again when a gated stage fails only some gates.
    /// A stage named by one of them is run only by its loop, never in the sequence.
    #[serde(default, rename = "iterate", skip_serializing_if = "Vec::is_empty")]
    pub iterates: Vec<Iterate>,
}

/// One `[[iterate]]` table: when the stage `after` is gated "iterate" and every failing gate is
/// one of `when`, the stage `stage` runs from the weights that failed, is evaluated and gated
/// under its own name, and goes round again the same way until a round deploys or `max_rounds`
/// rounds have run. The run then goes on with the stage after `after` in the sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iterate {
    /// The gated stage whose failure starts the loop; default: the last stage of the sequence
    /// (the stages not named by any `[[iterate]]`). May be another loop's fix stage, so that one
    /// loop hands over to another when its rounds run out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Gate names (`unsafe_rate`, `hallucination_rate`, ...): the loop runs only when every
    /// failing gate is among them.
    pub when: Vec<String>,
    /// The fix stage, a `[[stage]]` of the same file.
    pub stage: String,
    /// At most this many rounds of the fix stage.
    #[serde(default = "one")]
    pub max_rounds: u32,
}

impl Pipeline {
    /// Whether stage `name` is the fix stage of an `[[iterate]]` (run only by its loop).
    pub fn is_fix_stage(&self, name: &str) -> bool {
        self.iterates.iter().any(|it| it.stage == name)
    }

    /// The stages run in order (every stage that is no `[[iterate]]`'s fix stage).
    pub fn sequence(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| !self.is_fix_stage(&s.name))
    }
}

/// The `[label]` table: the labeling pane's starting queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSettings {
    /// Candidate pairs (JSONL of `{"prompt", "responses": [..]}`), copied in order into the run's
    /// `candidates.jsonl` when the run is created, so pane 3 has pairs to label at once.
    #[serde(default)]
    pub candidates: Vec<PathBuf>,
}

/// The `[eval]` table: which suite, against which baseline, with which judge and gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// The eval suite (JSONL), held out from training.
    pub suite: PathBuf,
    /// The stage whose evaluation is the baseline of the gates (`base` for the base model).
    #[serde(default = "default_baseline")]
    pub baseline: String,
    /// Evaluate the base model before the first stage.
    #[serde(default = "yes")]
    pub base: bool,
    /// Upper bound on each answer's tokens.
    #[serde(default = "default_eval_tokens")]
    pub max_new_tokens: usize,
    /// Prompts answered together in one batched generation (left-padded; each answer is the
    /// one it would be alone). Latency is per response, measured within its batch.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Serving price per device-hour for the cost metric.
    #[serde(default)]
    pub price_per_device_hour: f64,
    /// Refusal and abstention patterns, tie-break.
    #[serde(default)]
    pub judge: crate::eval::JudgeConfig,
    /// The release gates (defaults: +4 points of win rate, unsafe ≤ 0.5%, hallucination no worse
    /// than the baseline, p95 latency ≤ 2 s, a red-team evaluation present).
    #[serde(default)]
    pub gates: crate::eval::GateConfig,
    /// Best-of-n reranking: every evaluated stage is also evaluated with `n` sampled answers per
    /// prompt, the reward model's favourite kept (`eval/<stage>-best-of-<n>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<BestOf>,
}

/// `[eval] best_of = { n, reward_model, temperature }`: sample `n` answers per prompt and keep the
/// one the reward model scores highest. The reranker sees the prompt and the answers, never an
/// item's checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestOf {
    /// Answers sampled per prompt (1: one sampled answer, no choice).
    pub n: usize,
    /// A transformers sequence-classification directory with the policy's tokenizer.
    pub reward_model: PathBuf,
    /// Sampling temperature (> 0).
    #[serde(default = "default_best_of_temperature")]
    pub temperature: f64,
    /// Seed of the samples (answer `j` of every prompt is drawn with `seed + j`).
    #[serde(default)]
    pub seed: u64,
    /// Gate on the best-of-n evaluation instead of the greedy one (default: the gates use n = 1).
    #[serde(default)]
    pub gate: bool,
}

/// Run-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// A short name; the run id is `<UTC timestamp>-<name>`.
    pub name: String,
    /// Seed of shuffling, sampling and any fresh initialisation.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Compute dtype: `f32`, `bf16` or `f16`. With `bf16`/`f16` the matmuls run in that type
    /// while weights, gradients and AdamW's moments stay f32 (`model::Precision`).
    pub dtype: String,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping them
    /// (less memory, about one more forward pass of time; gradients unchanged).
    pub gradient_checkpointing: bool,
    /// Save a checkpoint every this many optimizer steps (0: only at stage ends).
    pub checkpoint_every: u64,
    /// Keep this many most recent checkpoints (plus the best).
    pub keep_checkpoints: usize,
    /// What to do when the loss or a gradient is NaN/Inf.
    pub nan_policy: NanPolicy,
    /// With `nan_policy = "skip"`: halt after this many consecutive bad steps.
    pub max_consecutive_nan: u32,
    /// Write a `metrics` event every this many optimizer steps.
    pub log_every: u64,
    /// Live samples: every this many optimizer steps the policy answers the sample prompts
    /// greedily (`sample` events); 0 turns them off.
    pub sample_every: u64,
    /// The prompts of live samples (user messages); empty: the first few prompts of the stage.
    pub sample_prompts: Vec<String>,
    /// Upper bound on the tokens of a live sample or a generated candidate.
    pub sample_max_tokens: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 42,
            device: "cpu".into(),
            dtype: "f32".into(),
            gradient_checkpointing: false,
            checkpoint_every: 50,
            keep_checkpoints: 3,
            nan_policy: NanPolicy::Skip,
            max_consecutive_nan: 5,
            log_every: 1,
            sample_every: 50,
            sample_prompts: Vec::new(),
            sample_max_tokens: 48,
        }
    }
}

/// What a non-finite loss or gradient does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Skip the update and go on (up to `max_consecutive_nan` in a row).
    Skip,
    /// Stop the run with an error event.
    Halt,
}

/// The model the pipeline starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// A Hugging Face model directory (relative paths resolve against the pipeline file).
    pub path: PathBuf,
    /// Where the starting weights come from: the directory's weight files (`pretrained`, the
    /// default) or a fresh initialisation from the run seed (`scratch`, for a directory holding
    /// only `config.json` and the tokenizer files).
    #[serde(default)]
    pub init: ModelInit,
    /// Train a LoRA adapter instead of every weight: `lora = { r, alpha, dropout, target_modules }`
    /// with PEFT's names and defaults. The base stays frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Start from a PEFT LoRA adapter directory (`adapter_config.json` +
    /// `adapter_model.safetensors`); its settings come from its config (a `lora` table given too
    /// must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
}

/// The `[model] lora` table: PEFT's `LoraConfig` fields hone implements, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank (PEFT's `r`, default 8).
    #[serde(default = "default_lora_r")]
    pub r: usize,
    /// Scaling numerator (PEFT's `lora_alpha`, default 8): the adapter adds `alpha / r · B A x`.
    #[serde(default = "default_lora_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter path's input (PEFT's `lora_dropout`, default 0).
    #[serde(default)]
    pub dropout: f64,
    /// `"all-linear"` (q/k/v/o/gate/up/down), a list of module names (a module matches an entry
    /// equal to its name or to a dotted suffix of it), or a regular expression over the whole
    /// name; default PEFT's for Llama/Qwen2: `["q_proj", "v_proj"]`.
    #[serde(default = "default_lora_targets")]
    pub target_modules: TargetModules,
}

/// `target_modules` as written: one string (`"all-linear"` or a regular expression) or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// `"all-linear"` or a regular expression.
    One(String),
    /// Module names.
    List(Vec<String>),
}

fn default_lora_r() -> usize {
    8
}

fn default_lora_alpha() -> f64 {
    8.0
}

fn default_lora_targets() -> TargetModules {
    TargetModules::List(vec!["q_proj".into(), "v_proj".into()])
}

/// How the pipeline's model gets its starting weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    /// Load the weights of the model directory.
    #[default]
    Pretrained,
    /// Initialise every parameter deterministically from `run.seed` (the directory must hold no
    /// weights, so that it cannot be mistaken for a trained model).
    Scratch,
}

/// One training stage. Which terms of `L_total = w_sft·L_sft + λ_pref·L_pref + λ_safe·L_safe`
/// it optimises follows from which sections it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Unique name (`sft`, `dpo`, `safety`, ...), used in events and `--stages`.
    pub name: String,
    /// Passes over the stage's main data (the preference data when present, else SFT).
    #[serde(default = "one")]
    pub epochs: u32,
    /// Stop after this many optimizer steps (overrides `epochs` when reached first).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Examples per micro-batch (pairs for preference data).
    #[serde(default = "four")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning-rate schedule after warm-up.
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (0 disables).
    #[serde(default = "one_f64")]
    pub max_grad_norm: f64,
    /// Longest sequence in tokens; longer ones are truncated (counted and reported).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// The SFT term.
    #[serde(default)]
    pub sft: Option<SftTerm>,
    /// The preference (DPO) term.
    #[serde(default)]
    pub pref: Option<PrefTerm>,
    /// The safety term.
    #[serde(default)]
    pub safety: Option<SafetyTerm>,
    /// The plain language-modelling term (pretraining or continued pretraining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmTerm>,
    /// Online RL (GRPO) on the policy's own samples: a stage of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<super::grpo::GrpoTerm>,
    /// The reward-model term: a stage with it trains a reward model (a scalar head on the
    /// decoder) instead of the policy, and exports it; the policy is left as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm: Option<RmTerm>,
    /// The engine that trains this stage (`hone`, the default, or `trl`).
    #[serde(default, skip_serializing_if = "super::engine::Engine::is_hone")]
    pub engine: super::engine::Engine,
}

/// `L_lm`: token cross-entropy on every token of plain-text records `{"text": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmTerm {
    /// Text JSONL files.
    pub data: Vec<PathBuf>,
    /// The term's weight `w_lm`.
    #[serde(default = "one_f64")]
    pub weight: f64,
}

/// `L_rm`: TRL's `RewardTrainer` Bradley-Terry loss `−log σ(r_c − r_r − m)` on preference pairs
/// (`m`: a record's optional `margin` number), plus `c · mean((r_c + r_r)²)` with
/// `center_rewards_coefficient = c`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmTerm {
    /// Preference JSONL files (`prompt`/`chosen`/`rejected`, optional `margin`).
    pub data: Vec<PathBuf>,
    /// TRL's `center_rewards_coefficient` (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_rewards_coefficient: Option<f64>,
    /// Where the reward model starts: a sequence-classification directory (trained further) or a
    /// causal LM directory (a fresh head from `run.seed`); default: the policy as the stage
    /// starts, with a fresh head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
}

/// `L_sft`: token cross-entropy on responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftTerm {
    /// SFT JSONL files. May be empty when `on_chosen` supplies the data.
    #[serde(default)]
    pub data: Vec<PathBuf>,
    /// The weight `w_sft`.
    #[serde(default = "one_f64")]
    pub weight: f64,
    /// Also train the SFT term on the chosen responses of the preference data and the safe
    /// responses of the safety data (keeps the chosen reward from falling).
    #[serde(default)]
    pub on_chosen: bool,
}

/// `L_pref`: DPO against a frozen reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefTerm {
    /// Preference JSONL files; a relative path that does not exist next to the pipeline file is
    /// resolved in the run directory (the labeling pane's `labels.jsonl`), and may grow live.
    pub data: Vec<PathBuf>,
    /// λ_pref.
    #[serde(default = "default_lambda_pref")]
    pub lambda: f64,
    /// DPO β.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// `sigmoid` (DPO), `robust` (robust DPO), `ipo`, or `kto` (unpaired thumbs up/down data
    /// `{"prompt", "completion", "label"}`, TRL's KTO).
    #[serde(default)]
    pub loss: PrefLossKind,
    /// TRL's `label_smoothing` ε in [0, 0.5): the assumed probability that a preference label is
    /// flipped. With `sigmoid` it makes the loss conservative DPO (cDPO), with `robust` it is robust
    /// DPO's ε; IPO has none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// The reference model directory; default: the weights the stage starts from.
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

/// The preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefLossKind {
    /// `-log σ(β·margin)`.
    #[default]
    Sigmoid,
    /// TRL's IPO.
    Ipo,
    /// TRL's robust DPO: the sigmoid loss corrected for labels flipped with probability
    /// `label_smoothing`.
    Robust,
    /// TRL's KTO on thumbs-up/down records (a stage of its own: no other term).
    Kto,
}

/// `L_safe`: a penalty on unsafe responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyTerm {
    /// Safety JSONL files `{"prompt", "unsafe", "safe"?}`.
    pub data: Vec<PathBuf>,
    /// λ_safe (the starting value when adaptive).
    #[serde(default = "default_lambda_safe")]
    pub lambda: f64,
    /// `unlikelihood` (default) or `dpo` (safe as chosen, unsafe as rejected).
    #[serde(default)]
    pub loss: SafetyLossKind,
    /// β when `loss = "dpo"`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Dual ascent on λ_safe so that the unsafe rate stays at most ε.
    #[serde(default)]
    pub adaptive: Option<AdaptiveLambda>,
}

/// The safety loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetyLossKind {
    /// `-mean_t log(1 - p(y_t))` over the unsafe response tokens.
    #[default]
    Unlikelihood,
    /// Safe-vs-unsafe DPO.
    Dpo,
}

/// `λ ← max(0, λ + η·(UnsafeRate − ε))` every `every` steps, measured on `redteam`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveLambda {
    /// The target unsafe rate ε.
    pub epsilon: f64,
    /// The dual step size η.
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// Measure and update every this many optimizer steps.
    #[serde(default = "default_every")]
    pub every: u64,
    /// Held-out red-team safety records; default: the stage's safety data.
    #[serde(default)]
    pub redteam: Option<PathBuf>,
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay to zero.
    #[default]
    Cosine,
    /// Linear decay to zero.
    Linear,
    /// Constant.
    Constant,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn default_baseline() -> String {
    "sft".into()
}
fn yes() -> bool {
    true
}
/// The default upper bound on an evaluated answer's tokens, for `[eval] max_new_tokens` and
/// `hone eval --max-new-tokens` alike.
pub const DEFAULT_EVAL_MAX_NEW_TOKENS: usize = 64;

fn default_eval_tokens() -> usize {
    DEFAULT_EVAL_MAX_NEW_TOKENS
}
fn default_best_of_temperature() -> f64 {
    0.8
}
fn default_eval_batch() -> usize {
    8
}
fn one() -> u32 {
    1
}
fn one_usize() -> usize {
    1
}
fn four() -> usize {
    4
}
fn one_f64() -> f64 {
    1.0
}
fn default_lr() -> f64 {
    1e-5
}
fn default_max_length() -> usize {
    1024
}
fn default_lambda_pref() -> f64 {
    0.5
}
fn default_lambda_safe() -> f64 {
    0.2
}
fn default_beta() -> f64 {
    0.1
}
fn default_eta() -> f64 {
    1.0
}
fn default_every() -> u64 {
    10
}
