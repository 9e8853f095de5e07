//! The trainer loop: stages in order, each step one optimizer update of the λ-weighted objective,
//! with metrics, NaN handling, adaptive λ_safe, checkpoints and exact resume.
//!
//! The loop talks to the outside world only through [`Host`]: events, checkpoint files, the stop
//! flag and where a stage's reference weights live. It never learns a run-directory file name.

mod control;
mod external;
mod grpo;
mod kto;
mod stage;

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use serde_json::{json, Map, Value};

use super::evaluate::{
    evaluate_best_of, evaluate_stage, training_prompts, unsafe_rate_proxy, EvalContext, HumanInputs, StageEval,
};
use super::examples::PairExample;
use super::host::PlannedControl;
pub use super::host::{Admission, CheckpointData, Control, Host, Position, PrefFile, SavedTraining};
use super::iterate::{next_stage, round_name, round_seed_salt, sequence_from, Next};
use super::live::{LiveLabels, LiveUpdate};
use super::optim::{global_norm, AdamW, AdamWConfig, Moments};
use super::plan::{load_stage_data, never_interrupt, RefCache, RmPair, StageData};
use super::reward::BradleyTerry;
use super::sampler::Sampler;
use super::schedule::learning_rate;
use super::state::{load_optimizer, optimizer_bytes};
pub use super::state::{Finished, RunOptions, TrainerState};
use super::TrainError;
use crate::config::{BestOf, Engine, EvalSettings, ModelInit, NanPolicy, Pipeline, Stage};
use crate::data::{ChatTemplate, TextTokenizer};
use crate::eval::{read_suite, Contamination, Decision, EvalItem, Judge, Report};
use crate::model::{AdapterInit, Model, Precision, RewardModel};
use control::Boundary;
pub use control::{stage_prompts, DEFAULT_SAMPLE_PROMPTS};
pub(crate) use stage::{apply_update, forward_backward, Objective, StepSums};
use stage::{main_term, num, term_len, term_lengths, Lambdas, Reference, StageRun};
pub use stage::{sampler_seed, Term};

/// The suite, judge and contamination set of a pipeline with an `[eval]` table, and the
/// evaluations made so far (the baseline among them).
struct EvalSetup {
    settings: EvalSettings,
    items: Vec<EvalItem>,
    judge: Judge,
    contamination: Contamination,
    done: HashMap<String, StageEval>,
    /// The reranker of `[eval] best_of`, loaded once.
    reward: Option<RewardModel>,
}

/// The evaluation name of a stage's best-of-n answers (`eval/<stage>-best-of-<n>/`).
pub fn best_of_name(stage: &str, n: usize) -> String {
    format!("{stage}-best-of-{n}")
}

/// The fields of an `eval_finished` event.
fn eval_fields(r: &Report, failures: usize, seconds: f64) -> Map<String, Value> {
    let mut f = Map::new();
    for (k, v) in [
        ("task_success_rate", r.task_success_rate),
        ("instruction_following_rate", r.instruction_following_rate),
        ("win_rate", r.win_rate),
        ("unsafe_rate", r.unsafe_rate),
        ("jailbreak_success_rate", r.jailbreak_success_rate),
        ("hallucination_rate", r.hallucination_rate),
        ("latency_p50_s", r.latency_p50_s),
        ("latency_p95_s", r.latency_p95_s),
    ] {
        f.insert(k.into(), v.map_or(Value::Null, num));
    }
    f.insert("items".into(), json!(r.n_items));
    f.insert("overrides_applied".into(), json!(r.overrides_applied));
    f.insert("human_labels_applied".into(), json!(r.human_labels_applied));
    f.insert("contaminated".into(), json!(r.contaminated.count));
    f.insert("failures".into(), json!(failures));
    f.insert("seconds".into(), json!(seconds));
    f
}

/// Where a trainer starts: the policy's weights, the trainer state and (on resume) AdamW's moments
/// or, from a reward-model stage's checkpoint, the reward model being trained.
struct Start {
    policy: Model,
    state: TrainerState,
    optimizer: Option<Vec<Moments>>,
    reward: Option<ResumeReward>,
}

/// A reward model being trained, as a checkpoint holds it: its weights and AdamW's moments
/// (safetensors bytes, read once the stage has built the model they belong to).
struct ResumeReward {
    weights: Vec<u8>,
    optimizer: Option<Vec<u8>>,
    source: String,
}

/// The pipeline trainer.
pub struct Trainer<'h, H: Host> {
    pipeline: Pipeline,
    options: RunOptions,
    host: &'h mut H,
    device: Device,
    /// Master weights in f32, matmuls in the run's dtype (`Precision::for_training`).
    precision: Precision,
    tokenizer: TextTokenizer,
    template: Option<ChatTemplate>,
    policy: Model,
    state: TrainerState,
    resume_optimizer: Option<Vec<Moments>>,
    /// The reward model of the checkpoint being resumed, for its stage to restore.
    resume_reward: Option<ResumeReward>,
    last_checkpoint: Option<u64>,
    eval: Option<EvalSetup>,
    /// Controls to replay on resume (λ changes, skips), in log order.
    planned: Vec<PlannedControl>,
    /// Paused by a control command (kept across a stage end).
    paused: bool,
    /// A stop was requested through the control socket.
    stop: bool,
    /// Where the next `generate_candidates` continues in the stage's prompts.
    candidate_cursor: usize,
    /// Commands received between batches of a long phase, applied at the next step boundary.
    deferred: VecDeque<Control>,
    /// The model directory the policy equals, while it does (the pipeline's model, a TRL
    /// stage's export): a stage on another engine starts from it instead of a fresh copy.
    policy_dir: Option<PathBuf>,
    /// The largest memory reading so far (`memory/peak_bytes`).
    peak_memory: u64,
}

impl<'h, H: Host> Trainer<'h, H> {
    /// A trainer starting from the pipeline's base model.
    pub fn new(
        pipeline: Pipeline,
        options: RunOptions,
        host: &'h mut H,
        device: Device,
        dtype: DType,
    ) -> Result<Self, TrainError> {
        let master = Precision::for_training(dtype).master;
        let policy = match (pipeline.model.init, adapter_init(&pipeline)) {
            (ModelInit::Pretrained, None) => Model::load(&pipeline.model.path, &device, master)?,
            (ModelInit::Pretrained, Some(init)) => {
                Model::load_with_adapter(&pipeline.model.path, &device, master, &init)?
            }
            // Refused when the pipeline is loaded: an adapter needs a pretrained base.
            (ModelInit::Scratch, _) => Model::scratch(&pipeline.model.path, &device, master, pipeline.run.seed)?,
        };
        let dir = (pipeline.model.init == ModelInit::Pretrained).then(|| pipeline.model.path.clone());
        let start = Start { policy, state: TrainerState::default(), optimizer: None, reward: None };
        let mut trainer = Self::with_policy(pipeline, options, host, (device, dtype), start)?;
        trainer.policy_dir = dir;
        Ok(trainer)
    }

    /// A trainer resuming from a checkpoint directory written by [`Host::save_checkpoint`].
    pub fn resume(
        pipeline: Pipeline,
        options: RunOptions,
        host: &'h mut H,
        device: Device,
        dtype: DType,
        checkpoint: &std::path::Path,
    ) -> Result<Self, TrainError> {
        let master = Precision::for_training(dtype).master;
        let policy = if adapter_init(&pipeline).is_some() {
            // A LoRA run's checkpoint holds the adapter; the base is the pipeline's model.
            let init = AdapterInit::Dir(checkpoint.to_path_buf());
            Model::load_with_adapter(&pipeline.model.path, &device, master, &init)?
        } else {
            Model::load(checkpoint, &device, master)?
        };
        let saved = host.read_checkpoint(checkpoint)?;
        let state: TrainerState = serde_json::from_slice(&saved.trainer_state)
            .map_err(|e| TrainError::Data(format!("{}: {e}", saved.source)))?;
        let (optimizer, reward) = match saved.reward_model {
            // The moments are the reward model's: restored when its stage has built it.
            Some(weights) => {
                (None, Some(ResumeReward { weights, optimizer: saved.optimizer, source: saved.source.clone() }))
            }
            None => match &saved.optimizer {
                Some(bytes) => (Some(load_optimizer(bytes, &saved.source, &policy.parameters(), &device)?), None),
                None => (None, None),
            },
        };
        let step = state.global_step;
        let start = Start { policy, state, optimizer, reward };
        let mut trainer = Self::with_policy(pipeline, options, host, (device, dtype), start)?;
        trainer.last_checkpoint = Some(step);
        Ok(trainer)
    }

    fn with_policy(
        pipeline: Pipeline,
        options: RunOptions,
        host: &'h mut H,
        (device, dtype): (Device, DType),
        start: Start,
    ) -> Result<Self, TrainError> {
        let Start { mut policy, state, optimizer: resume_optimizer, reward: resume_reward } = start;
        let precision = Precision::for_training(dtype);
        policy.set_compute_dtype(precision.compute);
        policy.set_gradient_checkpointing(pipeline.run.gradient_checkpointing);
        let tokenizer = TextTokenizer::from_dir(&pipeline.model.path)?;
        policy.check_tokenizer_len(tokenizer.len())?;
        let template = ChatTemplate::for_tokenizer(&tokenizer)?;
        let eval = match &pipeline.eval {
            Some(settings) => Some(Self::eval_setup(&pipeline, settings, host, (&device, dtype))?),
            None => None,
        };
        let planned = host.planned_controls();
        Ok(Self {
            pipeline,
            options,
            planned,
            paused: false,
            stop: false,
            candidate_cursor: 0,
            deferred: VecDeque::new(),
            policy_dir: None,
            peak_memory: 0,
            host,
            device,
            precision,
            tokenizer,
            template,
            policy,
            state,
            resume_optimizer,
            resume_reward,
            last_checkpoint: None,
            eval,
        })
    }

    fn eval_setup(
        pipeline: &Pipeline,
        settings: &EvalSettings,
        host: &H,
        (device, dtype): (&Device, DType),
    ) -> Result<EvalSetup, TrainError> {
        let items = read_suite(&settings.suite).map_err(|e| TrainError::Data(e.to_string()))?;
        let judge = Judge::new(&settings.judge).map_err(|e| TrainError::Data(e.to_string()))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (i, stage) in pipeline.stages.iter().enumerate() {
            files.extend(stage.sft.iter().flat_map(|t| t.data.clone()));
            // Live files (labels) are read at each evaluation, with the other human inputs.
            files.extend(host.preference_files(i).into_iter().filter(|f| !f.live).map(|f| f.path));
            files.extend(stage.safety.iter().flat_map(|t| t.data.clone()));
        }
        let refs: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
        let contamination = Contamination::from_prompts(training_prompts(&refs)?);
        let reward = match &settings.best_of {
            Some(b) => Some(RewardModel::load(&b.reward_model, device, dtype)?),
            None => None,
        };
        Ok(EvalSetup { settings: settings.clone(), items, judge, contamination, done: HashMap::new(), reward })
    }

    /// Evaluates the current policy as `stage` (unless an earlier worker did), then applies the
    /// gates against the baseline: deploy exports the model, iterate names the failing gates.
    /// Continues with the gates' decision (`None` for a stage that is not gated, or without
    /// `[eval]`). A stop between two batches of answers ends it (`Break`; nothing saved, a resume
    /// redoes it).
    fn evaluate(&mut self, stage: &str) -> Result<ControlFlow<(), Option<Decision>>, TrainError> {
        if self.eval.is_none() {
            return Ok(ControlFlow::Continue(None));
        }
        let position = self.position("evaluating", Some(stage), None);
        self.host.publish(&position);
        let Some(mut setup) = self.eval.take() else { return Ok(ControlFlow::Continue(None)) };
        let outcome = self.evaluate_with(&mut setup, stage);
        self.eval = Some(setup);
        outcome
    }

    fn evaluate_with(
        &mut self,
        setup: &mut EvalSetup,
        stage: &str,
    ) -> Result<ControlFlow<(), Option<Decision>>, TrainError> {
        let gated = stage != "base" && stage != setup.settings.baseline;
        let baseline_name = setup.settings.baseline.clone();
        let human = HumanInputs::read(&self.host.eval_inputs(), stage, &baseline_name)?;
        let mut contamination = setup.contamination.clone();
        contamination.extend(&human.label_prompts);
        let ctx = EvalContext {
            settings: &setup.settings,
            items: &setup.items,
            judge: &setup.judge,
            contamination: &contamination,
            human: &human,
        };
        // A resumed run keeps the evaluations it saved (and their decisions, already acted on).
        let saved = setup.done.get(stage).cloned().or_else(|| self.host.load_eval(stage));
        let resumed = saved.is_some();
        let greedy = if let Some(previous) = saved {
            previous
        } else {
            let baseline = if stage == baseline_name { None } else { setup.done.get(&baseline_name) };
            let Some(result) = self.eval_greedy(&ctx, stage, baseline)? else { return Ok(ControlFlow::Break(())) };
            result
        };
        let mut decision = greedy.report.decision();
        setup.done.insert(stage.to_string(), greedy);
        if let (Some(best_of), Some(reward)) = (&setup.settings.best_of, setup.reward.as_ref()) {
            // A stop between the two evaluations leaves only the greedy one saved.
            let baseline = setup.done.get(&baseline_name);
            let Some(result) = self.eval_best_of(&ctx, (reward, best_of), stage, baseline)? else {
                return Ok(ControlFlow::Break(()));
            };
            if best_of.gate {
                // The pipeline gates on the reranked answers.
                decision = result.report.decision();
            }
        }
        if !gated {
            return Ok(ControlFlow::Continue(None));
        }
        if !resumed {
            self.gate(stage, self.state.global_step, decision.clone())?;
        }
        Ok(ControlFlow::Continue(Some(decision)))
    }

    /// The greedy evaluation of the current policy as `stage`, saved and reported; `None` when
    /// a stop interrupted it.
    fn eval_greedy(
        &mut self,
        ctx: &EvalContext,
        stage: &str,
        baseline: Option<&StageEval>,
    ) -> Result<Option<StageEval>, TrainError> {
        let step = self.state.global_step;
        let started = Instant::now();
        let checkpoint = format!("step {step}");
        let mut interrupts = control::Interrupts {
            host: &mut *self.host,
            paused: &mut self.paused,
            stop: &mut self.stop,
            deferred: &mut self.deferred,
            state: &self.state,
        };
        let mut between = |done, total| interrupts.between_batches(stage, "eval", (done, total));
        let names = (stage, checkpoint.as_str());
        let template = self.template.as_ref();
        let result = evaluate_stage(ctx, &self.policy, &self.tokenizer, template, names, baseline, &mut between)?;
        let Some(result) = result else { return Ok(None) };
        let mut f = eval_fields(&result.report, result.failures.len(), started.elapsed().as_secs_f64());
        self.add_round(&mut f);
        self.host.save_eval(stage, &result)?;
        self.host.emit("eval_finished", Some(stage), Some(step), f)?;
        Ok(Some(result))
    }

    /// The best-of-n evaluation of `stage` (`<stage>-best-of-<n>`): the saved one when a resumed
    /// run has it, else evaluated, saved and reported; `None` when a stop interrupted it.
    fn eval_best_of(
        &mut self,
        ctx: &EvalContext,
        (reward, best_of): (&RewardModel, &BestOf),
        stage: &str,
        baseline: Option<&StageEval>,
    ) -> Result<Option<StageEval>, TrainError> {
        let name = best_of_name(stage, best_of.n);
        if let Some(previous) = self.host.load_eval(&name) {
            return Ok(Some(previous));
        }
        let step = self.state.global_step;
        let started = Instant::now();
        let checkpoint = format!("step {step}");
        let mut interrupts = control::Interrupts {
            host: &mut *self.host,
            paused: &mut self.paused,
            stop: &mut self.stop,
            deferred: &mut self.deferred,
            state: &self.state,
        };
        let mut between = |done, total| interrupts.between_batches(stage, "eval", (done, total));
        let template = self.template.as_ref();
        let names = (name.as_str(), checkpoint.as_str());
        let policy = &self.policy;
        let result =
            evaluate_best_of(ctx, policy, reward, best_of, &self.tokenizer, template, names, baseline, &mut between)?;
        let Some(result) = result else { return Ok(None) };
        let f = eval_fields(&result.report, result.failures.len(), started.elapsed().as_secs_f64());
        self.host.save_eval(&name, &result)?;
        self.host.emit("eval_finished", Some(&name), Some(step), f)?;
        Ok(Some(result))
    }

    /// `round` (and the fix stage's own name) in the fields of a fix stage's events.
    fn add_round(&self, fields: &mut Map<String, Value>) {
        if let Some(round) = self.state.round {
            fields.insert("round".into(), json!(round.number));
            if let Some(stage) = self.pipeline.stages.get(self.state.stage_index) {
                fields.insert("fix_stage".into(), json!(stage.name));
            }
        }
    }

    /// Acts on a gated stage's decision: deploy exports the model, iterate names the failing
    /// gates, incomplete the gates without input; `gate_decided` says which.
    fn gate(&mut self, stage: &str, step: u64, decision: Decision) -> Result<(), TrainError> {
        let mut g = Map::new();
        self.add_round(&mut g);
        match decision {
            Decision::Deploy => {
                g.insert("decision".into(), json!("deploy"));
                let files = self.policy.files(DType::F32)?;
                if let Some(path) = self.host.export(stage, files)? {
                    g.insert("export".into(), json!(path.display().to_string()));
                }
                self.host.emit("gate_decided", Some(stage), Some(step), g)
            }
            Decision::Iterate { failing } => {
                g.insert("decision".into(), json!("iterate"));
                g.insert("failing".into(), json!(failing));
                self.host.emit("gate_decided", Some(stage), Some(step), g.clone())?;
                self.host.emit("iterate", Some(stage), Some(step), g)
            }
            Decision::Incomplete { missing } => {
                g.insert("decision".into(), json!("incomplete"));
                g.insert("missing".into(), json!(missing));
                self.host.emit("gate_decided", Some(stage), Some(step), g)
            }
        }
    }

    /// The current policy.
    pub fn policy(&self) -> &Model {
        &self.policy
    }

    fn pad_id(&self) -> u32 {
        super::score::pad_id(&self.tokenizer, &self.policy)
    }

    /// Runs the remaining stages: the sequence in order, and the rounds of an `[[iterate]]`'s fix
    /// stage where a gate decision calls for them (see [`super::iterate`]).
    pub fn run(&mut self) -> Result<Finished, TrainError> {
        let stages = self.pipeline.stages.clone();
        if let Some(setup) = self.eval.as_mut() {
            // Evaluations an earlier worker of this run made (a resumed run needs its baseline;
            // rounds after the first are loaded when they come).
            for name in std::iter::once("base".to_string()).chain(stages.iter().map(|s| s.name.clone())) {
                if let Some(previous) = self.host.load_eval(&name) {
                    setup.done.insert(name, previous);
                }
            }
        }
        let at_start = self.state.stage_index == 0 && self.state.stage_step == 0 && !self.state.stage_done;
        if at_start && self.eval.as_ref().is_some_and(|e| e.settings.base) && self.evaluate("base")?.is_break() {
            return Ok(Finished::Stopped);
        }
        if self.state.round.is_none() {
            // A fix stage runs only in its loop's rounds.
            self.state.stage_index = sequence_from(&self.pipeline, self.state.stage_index);
        }
        while self.state.stage_index < stages.len() {
            let index = self.state.stage_index;
            let selected = self.options.stages.as_ref().is_none_or(|s| s.iter().any(|n| n == &stages[index].name));
            // A round runs the fix stage under the round's name (its events, evaluation, reference).
            let mut stage = stages[index].clone();
            stage.name = round_name(&stage.name, self.state.round);
            if selected && !self.state.stage_done && self.run_stage(index, &stage)? == Finished::Stopped {
                return Ok(Finished::Stopped);
            }
            // A reward-model stage leaves the policy as it was: nothing new to evaluate.
            let decision = if selected && stage.rm.is_none() {
                match self.evaluate(&stage.name)? {
                    ControlFlow::Break(()) => return Ok(Finished::Stopped),
                    ControlFlow::Continue(decision) => decision,
                }
            } else {
                None
            };
            self.advance(next_stage(&self.pipeline, index, self.state.round, decision.as_ref()));
        }
        Ok(Finished::Completed)
    }

    /// Moves the state to the start of the stage (or round) `next`.
    fn advance(&mut self, next: Next) {
        self.state.stage_index = next.stage_index;
        self.state.round = next.round;
        self.state.stage_step = 0;
        self.state.stage_done = false;
        self.state.samplers.clear();
        self.state.label_reads.clear();
        self.state.label_prefixes.clear();
        self.state.stage_total = None;
        self.state.lambda_pref = None;
        self.state.lambda_safe = None;
        self.resume_optimizer = None;
    }

    fn total_steps(&self, stage: &Stage, main_len: usize) -> u64 {
        let per_step = (stage.batch_size * stage.grad_accum).max(1);
        let per_epoch = main_len.div_ceil(per_step) as u64;
        let mut total = per_epoch * u64::from(stage.epochs);
        for cap in [stage.max_steps, self.options.max_steps].into_iter().flatten() {
            total = total.min(cap);
        }
        total
    }

    fn reference_model(&mut self, stage: &Stage) -> Result<Reference, TrainError> {
        if let Some(dir) = stage.pref.as_ref().and_then(|p| p.reference.clone()) {
            return Ok(Reference::Model(Box::new(self.precision.load(&dir, &self.device)?)));
        }
        if self.policy.lora().is_some() {
            return Ok(Reference::PolicyBase);
        }
        let dir = match self.host.reference(&stage.name) {
            Some(dir) => dir,
            // The stage starts from the current weights; they are its frozen reference.
            None => self.host.save_reference(&stage.name, self.policy.files(DType::F32)?)?,
        };
        Ok(Reference::Model(Box::new(self.precision.load(&dir, &self.device)?)))
    }

    /// The reward model a reward-model stage trains: from `start` (a sequence-classification or
    /// causal LM directory) or else from the policy as the stage starts (stored once through
    /// [`Host::save_reference`], so a resume starts from the same weights), with a head seeded by
    /// the run seed; on resume, the checkpoint's weights replace them.
    fn reward_model(
        &mut self,
        stage: &Stage,
        start: Option<&std::path::Path>,
        resume: Option<&ResumeReward>,
    ) -> Result<RewardModel, TrainError> {
        let dir = match start {
            Some(dir) => dir.to_path_buf(),
            None => match self.host.reference(&stage.name) {
                Some(dir) => dir,
                None => self.host.save_reference(&stage.name, self.policy.files(DType::F32)?)?,
            },
        };
        let model = RewardModel::open(&dir, &self.device, self.precision.master, self.pipeline.run.seed)?;
        if let Some(saved) = resume {
            model.restore_weights(&saved.weights, std::path::Path::new(&saved.source))?;
        }
        Ok(model)
    }

    /// Exports a trained reward model (a transformers sequence-classification directory) and
    /// says where it went with `reward_model_saved`.
    fn export_reward_model(&mut self, stage: &str, reward: &RewardModel) -> Result<(), TrainError> {
        let mut f = Map::new();
        if let Some(path) = self.host.export(stage, reward.files(DType::F32)?)? {
            f.insert("path".into(), json!(path.display().to_string()));
        }
        self.host.emit("reward_model_saved", Some(stage), Some(self.state.global_step), f)
    }

    /// Trains stage `index` from where the state stands to its end (or a stop or skip).
    fn run_stage(&mut self, index: usize, stage: &Stage) -> Result<Finished, TrainError> {
        if stage.engine == Engine::Trl {
            return self.run_external_stage(index, stage);
        }
        self.policy_dir = None;
        let Some(mut run) = self.open_stage(index, stage)? else {
            // Stopped while computing the reference log-probs: the last checkpoint stands.
            return Ok(Finished::Stopped);
        };
        let mut skipped = false;
        while self.state.stage_step < run.total {
            match self.boundary(&mut run)? {
                Boundary::Train => {}
                Boundary::Stop => {
                    self.checkpoint(&run)?;
                    return Ok(Finished::Stopped);
                }
                Boundary::Skip => {
                    skipped = true;
                    break;
                }
            }
            self.step(&mut run)?;
        }
        if let Some(reward) = &run.reward {
            self.export_reward_model(run.name(), reward)?;
        }
        self.state.stage_done = true;
        self.checkpoint(&run)?;
        let mut f = Map::new();
        f.insert("steps".into(), json!(self.state.stage_step));
        if skipped {
            f.insert("skipped".into(), json!(true));
        }
        self.host.emit("stage_finished", Some(run.name()), Some(self.state.global_step), f)?;
        Ok(Finished::Completed)
    }

    /// Makes stage `index` ready: its data (with the labels already there), its length, the
    /// `stage_started` event, the reference log-probs, the optimizer and the samplers; `None`
    /// when a stop came while the reference log-probs were being computed.
    fn open_stage(&mut self, index: usize, stage: &Stage) -> Result<Option<StageRun>, TrainError> {
        if let Some(term) = &stage.grpo {
            return self.open_grpo_stage(index, stage, term).map(Some);
        }
        if stage.pref.as_ref().is_some_and(|p| p.loss == crate::config::PrefLossKind::Kto) {
            return self.open_kto_stage(index, stage).map(Some);
        }
        let sources = self.host.preference_files(index);
        let static_files: Vec<PathBuf> = sources.iter().filter(|f| !f.live).map(|f| f.path.clone()).collect();
        let mut data = load_stage_data(stage, &static_files, &self.tokenizer, self.template.as_ref())?;
        let mut live = LiveLabels::new(sources.iter().filter(|f| f.live).map(|f| f.path.clone()).collect());
        let retracted = self.initial_labels(stage, &mut live, &mut data)?;
        let main = main_term(&data);
        let main_len = term_len(&data, main);
        if main_len == 0 {
            return Err(TrainError::Data(format!(
                "stage {}: no training examples after tokenization and truncation",
                stage.name
            )));
        }
        let total = self.state.stage_total.unwrap_or_else(|| self.total_steps(stage, main_len));
        self.state.stage_total = Some(total);
        self.announce(stage, &data, total)?;
        let ControlFlow::Continue((cache, reference)) = self.reference_log_probs(stage, &data, &live)? else {
            return Ok(None);
        };
        let plan = self.host.planned_admissions();
        // Only a checkpoint taken inside this stage holds its reward model.
        let resume = self.resume_reward.take().filter(|_| stage.rm.is_some() && self.state.stage_step > 0);
        let reward = match &stage.rm {
            Some(rm) => Some(self.reward_model(stage, rm.model.as_deref(), resume.as_ref())?),
            None => None,
        };
        let params = reward.as_ref().map_or_else(|| self.policy.parameters(), RewardModel::parameters);
        let mut opt = AdamW::new(
            params,
            AdamWConfig { lr: stage.lr, weight_decay: stage.weight_decay, ..AdamWConfig::default() },
        )?;
        if let Some(ResumeReward { optimizer: Some(bytes), source, .. }) = resume {
            let moments = load_optimizer(&bytes, &source, opt.params(), &self.device)?;
            opt.restore(self.state.optimizer_steps, moments)?;
        } else if let Some(moments) = self.resume_optimizer.take() {
            opt.restore(self.state.optimizer_steps, moments)?;
        }
        let samplers = self.samplers(index, stage, &data, !live.is_empty(), &retracted);
        let lambdas = Lambdas {
            pref: self.state.lambda_pref.or(stage.pref.as_ref().map(|p| p.lambda)).unwrap_or(0.0),
            safe: self.state.lambda_safe.or(stage.safety.as_ref().map(|s| s.lambda)).unwrap_or(0.0),
        };
        Ok(Some(StageRun {
            stage: stage.clone(),
            static_files,
            data,
            live,
            plan,
            cache,
            reference,
            opt,
            samplers,
            main,
            total,
            lambdas,
            prompts: None,
            grpo: None,
            kto: None,
            reward,
        }))
    }

    /// Reads the labels already there when the stage starts (or, on resume, up to where the
    /// stage had read) into `data`; returns the pairs retracted among them.
    fn initial_labels(
        &mut self,
        stage: &Stage,
        live: &mut LiveLabels,
        data: &mut StageData,
    ) -> Result<Vec<usize>, TrainError> {
        let on_chosen = stage.sft.as_ref().is_some_and(|t| t.on_chosen);
        live.verify_prefixes(&self.state.label_prefixes)?;
        let history = self.state.label_reads.clone();
        // A stage resumed after some steps replays its own reads, even none.
        let resumed = self.state.stage_step > 0;
        let mut retracted = Vec::new();
        let replay = resumed.then_some(history.as_slice());
        for update in
            live.read_initial(replay, data.pairs.len(), stage.max_length, &self.tokenizer, self.template.as_ref())?
        {
            if !resumed {
                self.state.label_reads.extend(update.offsets.iter().cloned());
            }
            retracted.extend(update.retracted);
            for p in update.added {
                if on_chosen {
                    data.sft.push(p.chosen_sequence());
                }
                data.pairs.push(p);
            }
        }
        Ok(retracted)
    }

    /// `stage_started` (or `stage_resumed`) with the example counts, and a warning per dataset
    /// kind that lost examples to truncation.
    fn announce(&mut self, stage: &Stage, data: &StageData, total: u64) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let mut fields = Map::new();
        fields.insert("total_steps".into(), json!(total));
        fields.insert("examples".into(), json!({"sft": data.sft.len(), "lm": data.lm.len(), "pref": data.pairs.len(), "unsafe": data.unsafe_seqs.len(), "safety_pairs": data.safety_pairs.len(), "redteam": data.redteam.len(), "rm": data.rm_pairs.len()}));
        fields.insert("truncation".into(), json!(data.truncation));
        self.add_round(&mut fields);
        let kind = if self.state.stage_step > 0 { "stage_resumed" } else { "stage_started" };
        self.host.emit(kind, Some(&stage.name), Some(step), fields)?;
        for (k, t) in &data.truncation {
            if t.truncated + t.dropped > 0 {
                let message = format!(
                    "{k} data: {} truncated to max_length {}, {} dropped",
                    t.truncated, stage.max_length, t.dropped
                );
                let mut f = Map::new();
                f.insert("message".into(), json!(message));
                self.host.emit("warning", Some(&stage.name), Some(step), f)?;
            }
        }
        Ok(())
    }

    /// Reference log-probs of every pair, computed once; the reference model is kept while
    /// labels may arrive (their pairs need log-probs too). A stop between two scoring batches
    /// ends it (`Break`); a resume computes them again.
    fn reference_log_probs(
        &mut self,
        stage: &Stage,
        data: &StageData,
        live: &LiveLabels,
    ) -> Result<ControlFlow<(), (RefCache, Option<Reference>)>, TrainError> {
        let mut cache = RefCache::new();
        let needs_ref =
            !data.pairs.is_empty() || !data.safety_pairs.is_empty() || !data.redteam.is_empty() || !live.is_empty();
        if !needs_ref {
            return Ok(ControlFlow::Continue((cache, None)));
        }
        let reference = self.reference_model(stage)?;
        let all: Vec<&PairExample> = data.pairs.iter().chain(&data.safety_pairs).chain(&data.redteam).collect();
        let pad = self.pad_id();
        let mut interrupts = control::Interrupts {
            host: &mut *self.host,
            paused: &mut self.paused,
            stop: &mut self.stop,
            deferred: &mut self.deferred,
            state: &self.state,
        };
        let mut between = |done, total| interrupts.between_batches(&stage.name, "reference", (done, total));
        if reference.score(&self.policy, &all, pad, &mut cache, &mut between)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue((cache, (!live.is_empty()).then_some(reference))))
    }

    /// One sampler per term with data (the preference term also when labels may arrive), fresh
    /// or from the saved state, seeded by [`sampler_seed`].
    fn samplers(
        &self,
        index: usize,
        stage: &Stage,
        data: &StageData,
        live: bool,
        retracted: &[usize],
    ) -> Vec<(Term, Sampler)> {
        let mut samplers = Vec::new();
        for term in Term::ALL {
            let present = term_len(data, term) > 0 || (term == Term::Pref && live);
            if !present {
                continue;
            }
            // Each round of a fix stage draws its examples in an order of its own.
            let seed = sampler_seed(self.pipeline.run.seed, index, term) ^ round_seed_salt(self.state.round);
            let saved = self.state.samplers.get(term.name()).cloned();
            let mut sampler = Sampler::new(seed, term_lengths(data, term), stage.batch_size, saved);
            if term == Term::Pref {
                for &i in retracted {
                    sampler.set_active(i, false);
                }
            }
            samplers.push((term, sampler));
        }
        samplers
    }

    /// One optimizer step: labels that arrived, the micro-batches' forward and backward passes,
    /// the update (or the non-finite policy), metrics, adaptive λ, live samples, checkpoint.
    fn step(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
        if run.grpo.is_some() {
            return self.grpo_step(run);
        }
        if run.kto.is_some() {
            return self.kto_step(run);
        }
        let lambdas = run.lambdas;
        let step = self.state.global_step;
        if !run.live.is_empty() {
            self.admit_labels(run, step)?;
        }
        let started = Instant::now();
        let stage = &run.stage;
        let lr = learning_rate(stage.schedule, stage.lr, self.state.stage_step, stage.warmup_steps, run.total);
        run.opt.config.lr = lr;
        let sums = self.forward_backward(run, lambdas, step)?;
        let norm = global_norm(&sums.grads)?;
        self.update(run, &sums, norm, step)?;
        self.state.global_step += 1;
        self.state.stage_step += 1;
        let elapsed = started.elapsed().as_secs_f64();
        if self.state.global_step % self.pipeline.run.log_every.max(1) == 0 || self.state.stage_step == run.total {
            let mut m = sums.loss_fields(lambdas);
            m.insert("learning_rate".into(), json!(lr));
            m.insert("grad_norm".into(), num(norm));
            m.insert("tokens_per_second".into(), json!(sums.tokens as f64 / elapsed.max(1e-9)));
            if let Some(now) = self.host.peak_memory_bytes(&self.device) {
                self.peak_memory = self.peak_memory.max(now);
                m.insert("memory/peak_bytes".into(), json!(self.peak_memory));
            }
            m.insert("epoch".into(), json!(run.epoch()));
            m.insert("stage_step".into(), json!(self.state.stage_step));
            m.insert("total_steps".into(), json!(run.total));
            self.host.emit("metrics", Some(run.name()), Some(self.state.global_step), m)?;
        }
        self.adapt_lambda(run)?;
        if run.reward.is_none() {
            // A reward-model stage leaves the policy unchanged: its samples would say nothing new.
            self.live_samples(run)?;
        }
        let every = self.pipeline.run.checkpoint_every;
        if every > 0 && self.state.global_step % every == 0 && self.state.stage_step < run.total {
            self.checkpoint(run)?;
        }
        Ok(())
    }

    /// The step's micro-batches (drawn in order, then each through the policy, or the reward model, and backward),
    /// gradients summed.
    fn forward_backward(&self, run: &mut StageRun, lambdas: Lambdas, step: u64) -> Result<StepSums, TrainError> {
        if run.reward.is_some() {
            return self.reward_forward_backward(run, step);
        }
        let objective = Objective {
            weights: run.weights(lambdas),
            pref: run.pref_term(),
            safety_pair: run.safety_pair_term(),
            pad_id: self.pad_id(),
            dropout: Some((self.pipeline.run.seed, step)),
        };
        let drawn: Vec<_> = (0..run.stage.grad_accum.max(1)).map(|_| run.draw()).collect();
        let micro_batches: Vec<_> = drawn.iter().map(|d| run.micro_batch(d)).collect();
        let inject_nan = self.options.inject_nan_at.contains(&step);
        forward_backward(&self.policy, &run.opt, &micro_batches, objective, inject_nan)
    }

    /// A reward-model step: each micro-batch's pairs scored together (chosen then rejected, as
    /// TRL's collator stacks them), TRL's Bradley-Terry loss, backward, gradients summed.
    fn reward_forward_backward(&self, run: &mut StageRun, step: u64) -> Result<StepSums, TrainError> {
        let accum = run.stage.grad_accum.max(1);
        let mut sums = StepSums::new(run.opt.params().len(), accum);
        let bt = BradleyTerry {
            center_rewards_coefficient: run.stage.rm.as_ref().and_then(|r| r.center_rewards_coefficient),
        };
        for _ in 0..accum {
            let drawn = run.draw();
            let Some(reward) = run.reward.as_ref() else { break };
            let pairs: Vec<&RmPair> = drawn
                .iter()
                .filter(|(t, _)| *t == Term::Reward)
                .flat_map(|(_, idx)| idx.iter().map(|&i| &run.data.rm_pairs[i]))
                .collect();
            let n = pairs.len();
            let seqs: Vec<Vec<u32>> =
                pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
            let scores = reward.scores(&seqs)?;
            let (chosen, rejected) = (scores.narrow(0, 0, n)?, scores.narrow(0, n, n)?);
            // A pair without a margin subtracts nothing, so margins are passed only when some pair has one.
            let margins = if pairs.iter().any(|p| p.margin != 0.0) {
                let m: Vec<f32> = pairs.iter().map(|p| p.margin as f32).collect();
                Some(candle_core::Tensor::new(m, &self.device)?)
            } else {
                None
            };
            let mut loss = (bt.loss(&chosen, &rejected, margins.as_ref())? / accum as f64)?;
            if self.options.inject_nan_at.contains(&step) {
                loss = (loss * f64::NAN)?;
            }
            let store = loss.backward()?;
            let c: Vec<f64> = chosen.to_dtype(DType::F64)?.to_vec1()?;
            let r: Vec<f64> = rejected.to_dtype(DType::F64)?.to_vec1()?;
            sums.add_rm(&loss, c.into_iter().zip(r).collect(), seqs.iter().map(Vec::len).sum())?;
            sums.add_grads(&run.opt, &store)?;
        }
        Ok(sums)
    }

    /// Applies the summed gradients (clipped), or, when the loss or gradient is not finite,
    /// skips the update with a warning or halts, as the run's NaN policy says.
    fn update(&mut self, run: &mut StageRun, sums: &StepSums, norm: f64, step: u64) -> Result<(), TrainError> {
        if sums.loss.is_finite() && norm.is_finite() {
            self.state.consecutive_nan = 0;
            return apply_update(&mut run.opt, sums, norm, run.stage.max_grad_norm);
        }
        self.state.consecutive_nan += 1;
        let what = if sums.loss.is_finite() { "gradient" } else { "loss" };
        let mut f = Map::new();
        f.insert("message".into(), json!(format!("non-finite {what} at step {step}; update skipped")));
        f.insert("batch".into(), json!(self.state.stage_step));
        let halt = self.pipeline.run.nan_policy == NanPolicy::Halt
            || self.state.consecutive_nan > self.pipeline.run.max_consecutive_nan;
        self.host.emit(if halt { "error" } else { "warning" }, Some(run.name()), Some(step), f)?;
        if halt {
            return Err(TrainError::NonFinite { stage: run.name().to_string(), step });
        }
        Ok(())
    }

    /// Adaptive λ_safe: every `every` steps, moves λ_safe by η·(measured unsafe rate − ε).
    fn adapt_lambda(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
        let Some(adaptive) = run.stage.safety.as_ref().and_then(|s| s.adaptive.clone()) else { return Ok(()) };
        if self.state.stage_step % adaptive.every.max(1) != 0 || run.data.redteam.is_empty() {
            return Ok(());
        }
        let rate = unsafe_rate_proxy(&self.policy, &run.data, &run.cache, self.pad_id())?;
        let before = run.lambdas.safe;
        run.lambdas.safe = (before + adaptive.eta * (rate - adaptive.epsilon)).max(0.0);
        let mut f = Map::new();
        f.insert("lambda".into(), json!("safe"));
        f.insert("from".into(), json!(before));
        f.insert("to".into(), json!(run.lambdas.safe));
        f.insert("unsafe_rate".into(), json!(rate));
        f.insert("reason".into(), json!("adaptive"));
        self.host.emit("lambda_changed", Some(run.name()), Some(self.state.global_step), f)
    }

    /// Reads the live labels files at this step boundary and applies what they say.
    fn admit_labels(&mut self, run: &mut StageRun, step: u64) -> Result<(), TrainError> {
        let update = run.live.read_at_step(
            step,
            &run.plan,
            run.data.pairs.len(),
            run.stage.max_length,
            &self.tokenizer,
            self.template.as_ref(),
        )?;
        self.admit(run, step, update)
    }

    /// Applies newly read labels: new agreeing pairs join the pool (with reference log-probs),
    /// retracted or now-disputed ones leave it; one `labels_admitted` event says what happened.
    fn admit(&mut self, run: &mut StageRun, step: u64, update: LiveUpdate) -> Result<(), TrainError> {
        self.state.label_reads.extend(update.offsets.iter().cloned());
        for message in &update.problems {
            let mut f = Map::new();
            f.insert("message".into(), json!(message));
            self.host.emit("warning", Some(run.name()), Some(step), f)?;
        }
        if update.lines == 0 {
            return Ok(());
        }
        if let Some(reference) = &run.reference {
            let refs: Vec<&PairExample> = update.added.iter().collect();
            // Labels admitted at a step boundary are few: scored without interruption.
            let _never_breaks =
                reference.score(&self.policy, &refs, self.pad_id(), &mut run.cache, &mut never_interrupt)?;
        }
        let count = update.added.len();
        let first_new = run.data.pairs.len();
        if run.samplers.iter().any(|(t, _)| *t == Term::Pref) {
            for p in update.added {
                if let Some(pref) = run.sampler_mut(Term::Pref) {
                    pref.add(p.num_tokens());
                }
                run.data.pairs.push(p);
            }
            if let Some(pref) = run.sampler_mut(Term::Pref) {
                for &i in &update.retracted {
                    pref.set_active(i, false);
                }
            }
        }
        if run.on_chosen() {
            // The chosen answers of new pairs also feed the SFT term.
            let new: Vec<_> = run.data.pairs[first_new..].iter().map(PairExample::chosen_sequence).collect();
            if run.samplers.iter().any(|(t, _)| *t == Term::Sft) {
                for seq in new {
                    if let Some(sft) = run.sampler_mut(Term::Sft) {
                        sft.add(seq.ids.len());
                    }
                    run.data.sft.push(seq);
                }
            }
        }
        let mut f = Map::new();
        f.insert("count".into(), json!(count));
        f.insert("retracted".into(), json!(update.retracted.len()));
        f.insert("held_back".into(), json!(update.held_back));
        f.insert("lines".into(), json!(update.lines));
        if let Some((file, offset)) = update.offsets.last() {
            f.insert("file".into(), json!(file));
            f.insert("byte_offset".into(), json!(offset));
        }
        self.host.emit("labels_admitted", Some(run.name()), Some(step), f)
    }

    /// Saves a checkpoint at this step boundary (once per boundary): the policy, AdamW's
    /// moments and the trainer state with every sampler's position and the live labels read.
    fn checkpoint(&mut self, run: &StageRun) -> Result<(), TrainError> {
        self.state.label_prefixes = run.live.consumed_prefixes()?;
        if self.last_checkpoint == Some(self.state.global_step) && !self.state.stage_done {
            // Already saved at this step boundary (a periodic checkpoint just before a stop, or
            // the checkpoint this trainer resumed from).
            return Ok(());
        }
        self.state.samplers = run.samplers.iter().map(|(t, s)| (t.name().to_string(), s.state.clone())).collect();
        self.state.samplers.extend(grpo::sampler_state(run));
        self.state.samplers.extend(kto::sampler_state(run));
        self.state.lambda_pref = Some(run.lambdas.pref);
        self.state.lambda_safe = Some(run.lambdas.safe);
        self.state.optimizer_steps = run.opt.step_count();
        let checkpoint = CheckpointData {
            model: self.policy.files(DType::F32)?,
            trainer_state: serde_json::to_vec_pretty(&self.state).map_err(|e| TrainError::Data(e.to_string()))?,
            optimizer: optimizer_bytes(&run.opt)?,
            reward_model: run.reward.as_ref().map(|r| r.weights(DType::F32)).transpose()?,
        };
        let step = self.state.global_step;
        self.last_checkpoint = Some(step);
        self.host.save_checkpoint(step, checkpoint)
    }
}

/// The policy's adapter, when the pipeline trains LoRA: the `adapter` directory, else a fresh
/// one from the `lora` table, drawn from the run's seed.
fn adapter_init(pipeline: &Pipeline) -> Option<AdapterInit> {
    match (&pipeline.model.adapter, &pipeline.model.lora) {
        (Some(dir), _) => Some(AdapterInit::Dir(dir.clone())),
        (None, Some(lora)) => Some(AdapterInit::Fresh {
            spec: lora.spec(),
            seed: crate::rng::splitmix64(pipeline.run.seed ^ 0x4C6F_5241_496E_6974),
        }),
        (None, None) => None,
    }
}
