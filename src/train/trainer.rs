//! The trainer loop: stages in order, each step one optimizer update of the λ-weighted objective,
//! with metrics, NaN handling, adaptive λ_safe, checkpoints and exact resume.
//!
//! The loop talks to the outside world only through [`Host`]: events, checkpoint files, the stop
//! flag and where a stage's reference weights live. It never learns a run-directory file name.

mod control;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

use super::evaluate::{evaluate_stage, training_prompts, unsafe_rate_proxy, EvalContext, HumanInputs, StageEval};
use super::examples::PairExample;
use super::host::PlannedControl;
pub use super::host::{Admission, Control, Host, Position, PrefFile};
use super::live::{LiveLabels, LiveUpdate};
use super::objective::{evaluate, MicroBatch, PairTerm, RewardRow, Weights};
use super::optim::{clip_coefficient, global_norm, gradients_of, AdamW, AdamWConfig, Moments};
use super::plan::{fill_reference_cache, load_stage_data, RefCache, StageData};
use super::sampler::{Sampler, SamplerState};
use super::schedule::learning_rate;
use super::state::{load_optimizer, optimizer_bytes};
pub use super::state::{Finished, RunOptions, TrainerState};
use super::TrainError;
use crate::config::{EvalSettings, ModelInit, NanPolicy, Pipeline, PrefLossKind, SafetyLossKind, Stage};
use crate::data::{ChatTemplate, TextTokenizer};
use crate::eval::{read_suite, Contamination, Decision, EvalItem, Judge};
use crate::model::Model;
use crate::train::loss::{LabelNoise, PreferenceLoss};
pub use control::{stage_prompts, DEFAULT_SAMPLE_PROMPTS};
use control::{Boundary, Lambdas, StepCx};

/// The suite, judge and contamination set of a pipeline with an `[eval]` table, and the
/// evaluations made so far (the baseline among them).
struct EvalSetup {
    settings: EvalSettings,
    items: Vec<EvalItem>,
    judge: Judge,
    contamination: Contamination,
    done: HashMap<String, StageEval>,
}

/// The pipeline trainer.
pub struct Trainer<'h, H: Host> {
    pipeline: Pipeline,
    options: RunOptions,
    host: &'h mut H,
    device: Device,
    dtype: DType,
    tokenizer: TextTokenizer,
    template: Option<ChatTemplate>,
    policy: Model,
    state: TrainerState,
    resume_optimizer: Option<Vec<Moments>>,
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
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
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
        let policy = match pipeline.model.init {
            ModelInit::Pretrained => Model::load(&pipeline.model.path, &device, dtype)?,
            ModelInit::Scratch => Model::scratch(&pipeline.model.path, &device, dtype, pipeline.run.seed)?,
        };
        Self::with_policy(pipeline, options, host, device, dtype, policy, TrainerState::default(), None)
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
        let policy = Model::load(checkpoint, &device, dtype)?;
        let state_path = checkpoint.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| TrainError::Data(format!("{}: {e}", state_path.display())))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| TrainError::Data(format!("{}: {e}", state_path.display())))?;
        let optimizer = load_optimizer(&checkpoint.join("optimizer.safetensors"), &policy.parameters(), &device)?;
        let step = state.global_step;
        let mut trainer = Self::with_policy(pipeline, options, host, device, dtype, policy, state, optimizer)?;
        trainer.last_checkpoint = Some(step);
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn with_policy(
        pipeline: Pipeline,
        options: RunOptions,
        host: &'h mut H,
        device: Device,
        dtype: DType,
        policy: Model,
        state: TrainerState,
        resume_optimizer: Option<Vec<Moments>>,
    ) -> Result<Self, TrainError> {
        let tokenizer = TextTokenizer::from_dir(&pipeline.model.path)?;
        policy.check_tokenizer_len(tokenizer.len())?;
        let template = ChatTemplate::for_tokenizer(&tokenizer)?;
        let eval = match &pipeline.eval {
            Some(settings) => Some(Self::eval_setup(&pipeline, settings, host)?),
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
            host,
            device,
            dtype,
            tokenizer,
            template,
            policy,
            state,
            resume_optimizer,
            last_checkpoint: None,
            eval,
        })
    }

    fn eval_setup(pipeline: &Pipeline, settings: &EvalSettings, host: &H) -> Result<EvalSetup, TrainError> {
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
        Ok(EvalSetup { settings: settings.clone(), items, judge, contamination, done: HashMap::new() })
    }

    /// Evaluates the current policy as `stage` (unless an earlier worker did), then applies the
    /// gates against the baseline: deploy exports the model, iterate names the failing gates.
    fn evaluate(&mut self, stage: &str) -> Result<(), TrainError> {
        if self.eval.is_none() {
            return Ok(());
        }
        let position = self.position("evaluating", Some(stage), None);
        self.host.publish(&position);
        let Some(setup) = self.eval.as_mut() else { return Ok(()) };
        if setup.done.contains_key(stage) {
            return Ok(());
        }
        if let Some(previous) = self.host.load_eval(stage) {
            setup.done.insert(stage.to_string(), previous);
            return Ok(());
        }
        let step = self.state.global_step;
        let started = Instant::now();
        let baseline_name = setup.settings.baseline.clone();
        let baseline = if stage == baseline_name { None } else { setup.done.get(&baseline_name) };
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
        let checkpoint = format!("step {step}");
        let result =
            evaluate_stage(&ctx, &self.policy, &self.tokenizer, self.template.as_ref(), stage, &checkpoint, baseline)?;
        let r = &result.report;
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
        f.insert("failures".into(), json!(result.failures.len()));
        f.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
        self.host.save_eval(stage, &result)?;
        self.host.emit("eval_finished", Some(stage), Some(step), f)?;
        let gated = stage != "base" && stage != baseline_name;
        let decision = result.report.decision();
        setup.done.insert(stage.to_string(), result);
        if !gated {
            return Ok(());
        }
        let mut g = Map::new();
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

    /// Runs the remaining stages.
    pub fn run(&mut self) -> Result<Finished, TrainError> {
        let stages = self.pipeline.stages.clone();
        if let Some(setup) = self.eval.as_mut() {
            // Evaluations an earlier worker of this run made (a resumed run needs its baseline).
            let earlier = std::iter::once("base".to_string())
                .chain(stages[..self.state.stage_index.min(stages.len())].iter().map(|s| s.name.clone()));
            for name in earlier {
                if let Some(previous) = self.host.load_eval(&name) {
                    setup.done.insert(name, previous);
                }
            }
        }
        let at_start = self.state.stage_index == 0 && self.state.stage_step == 0 && !self.state.stage_done;
        if at_start && self.eval.as_ref().is_some_and(|e| e.settings.base) {
            self.evaluate("base")?;
        }
        while self.state.stage_index < stages.len() {
            let index = self.state.stage_index;
            let stage = &stages[index];
            let selected = self.options.stages.as_ref().is_none_or(|s| s.iter().any(|n| n == &stage.name));
            if selected && !self.state.stage_done && self.run_stage(index, stage)? == Finished::Stopped {
                return Ok(Finished::Stopped);
            }
            if selected {
                self.evaluate(&stage.name)?;
            }
            self.state.stage_index += 1;
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
        Ok(Finished::Completed)
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

    fn reference_model(&mut self, stage: &Stage) -> Result<Model, TrainError> {
        if let Some(dir) = stage.pref.as_ref().and_then(|p| p.reference.clone()) {
            return Ok(Model::load(&dir, &self.device, self.dtype)?);
        }
        let dir = self.host.reference_dir(&stage.name);
        if !dir.exists() {
            // The stage starts from the current weights; they are its frozen reference. Written
            // beside and renamed, so a crash never leaves a half reference that looks complete.
            let tmp = dir.with_extension("partial");
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::Host(format!("{}: {e}", tmp.display())))?;
            }
            self.policy.save(&tmp, DType::F32)?;
            std::fs::rename(&tmp, &dir).map_err(|e| TrainError::Host(format!("{}: {e}", dir.display())))?;
        }
        Ok(Model::load(&dir, &self.device, self.dtype)?)
    }

    fn run_stage(&mut self, index: usize, stage: &Stage) -> Result<Finished, TrainError> {
        let name = stage.name.clone();
        let sources = self.host.preference_files(index);
        let static_files: Vec<PathBuf> = sources.iter().filter(|f| !f.live).map(|f| f.path.clone()).collect();
        let mut data = load_stage_data(stage, &static_files, &self.tokenizer, self.template.as_ref())?;
        let mut live = LiveLabels::new(sources.iter().filter(|f| f.live).map(|f| f.path.clone()).collect());
        // Labels already there when the stage starts (or, on resume, up to where it had read).
        let on_chosen = stage.sft.as_ref().is_some_and(|t| t.on_chosen);
        live.verify_prefixes(&self.state.label_prefixes)?;
        let history = self.state.label_reads.clone();
        let mut retracted_at_start = Vec::new();
        for update in
            live.read_initial(&history, data.pairs.len(), stage.max_length, &self.tokenizer, self.template.as_ref())?
        {
            if history.is_empty() {
                self.state.label_reads.extend(update.offsets.iter().cloned());
            }
            retracted_at_start.extend(update.retracted);
            for p in update.added {
                if on_chosen {
                    data.sft.push(p.chosen_sequence());
                }
                data.pairs.push(p);
            }
        }
        let main = if !data.pairs.is_empty() {
            "pref"
        } else if !data.unsafe_seqs.is_empty() || !data.safety_pairs.is_empty() {
            "safety"
        } else if data.sft.is_empty() && !data.lm.is_empty() {
            "lm"
        } else {
            "sft"
        };
        let main_len = match main {
            "pref" => data.pairs.len(),
            "safety" => data.unsafe_seqs.len().max(data.safety_pairs.len()),
            "lm" => data.lm.len(),
            _ => data.sft.len(),
        };
        if main_len == 0 {
            return Err(TrainError::Data(format!(
                "stage {name}: no training examples after tokenization and truncation"
            )));
        }
        let total = match self.state.stage_total {
            Some(t) => t,
            None => self.total_steps(stage, main_len),
        };
        self.state.stage_total = Some(total);
        let mut fields = Map::new();
        fields.insert("total_steps".into(), json!(total));
        fields.insert("examples".into(), json!({"sft": data.sft.len(), "lm": data.lm.len(), "pref": data.pairs.len(), "unsafe": data.unsafe_seqs.len(), "safety_pairs": data.safety_pairs.len(), "redteam": data.redteam.len()}));
        fields.insert("truncation".into(), json!(data.truncation));
        let kind = if self.state.stage_step > 0 { "stage_resumed" } else { "stage_started" };
        self.host.emit(kind, Some(&name), Some(self.state.global_step), fields)?;
        for (k, t) in &data.truncation {
            if t.truncated + t.dropped > 0 {
                let mut f = Map::new();
                f.insert(
                    "message".into(),
                    json!(format!(
                        "{k} data: {} truncated to max_length {}, {} dropped",
                        t.truncated, stage.max_length, t.dropped
                    )),
                );
                self.host.emit("warning", Some(&name), Some(self.state.global_step), f)?;
            }
        }

        // Reference log-probs, once per example.
        let mut cache = RefCache::new();
        let needs_ref =
            !data.pairs.is_empty() || !data.safety_pairs.is_empty() || !data.redteam.is_empty() || !live.is_empty();
        let mut reference = None;
        if needs_ref {
            let model = self.reference_model(stage)?;
            let all: Vec<&PairExample> = data.pairs.iter().chain(&data.safety_pairs).chain(&data.redteam).collect();
            fill_reference_cache(&model, &all, self.pad_id(), &mut cache)?;
            // Kept while labels may arrive: new pairs need their reference log-probs.
            reference = (!live.is_empty()).then_some(model);
        }
        let plan = self.host.planned_admissions();

        let params = self.policy.parameters();
        let mut opt = AdamW::new(
            params.clone(),
            AdamWConfig { lr: stage.lr, weight_decay: stage.weight_decay, ..AdamWConfig::default() },
        )?;
        if let Some(moments) = self.resume_optimizer.take() {
            opt.restore(self.state.optimizer_steps, moments)?;
        }
        let seed = self.pipeline.run.seed ^ (index as u64).wrapping_mul(0x1000_0000_01b3);
        let sampler = |term: &str, lengths: Vec<usize>, state: &TrainerState| {
            let s: Option<SamplerState> = state.samplers.get(term).cloned();
            Sampler::new(seed ^ term.len() as u64 ^ u64::from(term.as_bytes()[0]), lengths, stage.batch_size, s)
        };
        let mut samplers: Vec<(&str, Sampler)> = Vec::new();
        if !data.sft.is_empty() {
            samplers.push(("sft", sampler("sft", data.sft.iter().map(|s| s.ids.len()).collect(), &self.state)));
        }
        if !data.lm.is_empty() {
            samplers.push(("lm", sampler("lm", data.lm.iter().map(|s| s.ids.len()).collect(), &self.state)));
        }
        if !data.pairs.is_empty() || !live.is_empty() {
            samplers
                .push(("pref", sampler("pref", data.pairs.iter().map(PairExample::num_tokens).collect(), &self.state)));
        }
        if !data.unsafe_seqs.is_empty() {
            samplers.push((
                "unsafe",
                sampler("unsafe", data.unsafe_seqs.iter().map(|s| s.ids.len()).collect(), &self.state),
            ));
        }
        if !data.safety_pairs.is_empty() {
            samplers.push((
                "safety",
                sampler("safety", data.safety_pairs.iter().map(PairExample::num_tokens).collect(), &self.state),
            ));
        }
        if let Some((_, pref)) = samplers.iter_mut().find(|(t, _)| *t == "pref") {
            for &i in &retracted_at_start {
                pref.set_active(i, false);
            }
        }
        let mut lambdas = Lambdas {
            pref: self.state.lambda_pref.or(stage.pref.as_ref().map(|p| p.lambda)).unwrap_or(0.0),
            safe: self.state.lambda_safe.or(stage.safety.as_ref().map(|s| s.lambda)).unwrap_or(0.0),
        };
        let mut prompts = None;
        let w_sft = stage.sft.as_ref().map_or(1.0, |s| s.weight);
        let w_lm = stage.lm.as_ref().map_or(1.0, |t| t.weight);
        let pref_term = stage.pref.as_ref().map(|p| PairTerm {
            beta: p.beta,
            loss: match p.loss {
                PrefLossKind::Sigmoid | PrefLossKind::Robust => PreferenceLoss::Sigmoid,
                PrefLossKind::Ipo => PreferenceLoss::Ipo,
            },
            noise: LabelNoise::of(p),
        });
        let safety_pair_term = stage.safety.as_ref().filter(|s| s.loss == SafetyLossKind::Dpo).map(|s| PairTerm {
            beta: s.beta,
            loss: PreferenceLoss::Sigmoid,
            noise: LabelNoise::Clean,
        });

        let mut skipped = false;
        while self.state.stage_step < total {
            let cx =
                StepCx { name: &name, stage, static_files: &static_files, opt: &opt, samplers: &samplers, live: &live };
            match self.boundary(&cx, &mut lambdas, &mut prompts)? {
                Boundary::Train => {}
                Boundary::Stop => {
                    self.state.label_prefixes = live.consumed_prefixes()?;
                    self.checkpoint(&opt, &samplers, lambdas.pref, lambdas.safe)?;
                    return Ok(Finished::Stopped);
                }
                Boundary::Skip => {
                    skipped = true;
                    break;
                }
            }
            let (lambda_pref, lambda_safe) = (lambdas.pref, lambdas.safe);
            let step = self.state.global_step;
            if !live.is_empty() {
                let update = live.read_at_step(
                    step,
                    &plan,
                    data.pairs.len(),
                    stage.max_length,
                    &self.tokenizer,
                    self.template.as_ref(),
                )?;
                self.admit(&name, step, update, &mut data, &mut samplers, reference.as_ref(), &mut cache, on_chosen)?;
            }
            let started = Instant::now();
            let lr = learning_rate(stage.schedule, stage.lr, self.state.stage_step, stage.warmup_steps, total);
            opt.config.lr = lr;
            let weights = Weights { sft: w_sft, lm: w_lm, pref: lambda_pref, safe: lambda_safe };
            let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
            let (mut loss_sum, mut sft_sum, mut pref_sum, mut safe_sum) = (0.0, None::<f64>, None::<f64>, None::<f64>);
            let mut lm_sum = None::<f64>;
            let mut rewards = Vec::new();
            let mut tokens = 0usize;
            let accum = stage.grad_accum.max(1);
            for _ in 0..accum {
                let mut mb = MicroBatch::default();
                for (term, s) in &mut samplers {
                    let (idx, _) = s.next_batch();
                    match *term {
                        "sft" => mb.sft = idx.iter().map(|&i| data.sft[i].clone()).collect(),
                        "lm" => mb.lm = idx.iter().map(|&i| data.lm[i].clone()).collect(),
                        "pref" => {
                            mb.pairs = idx.iter().map(|&i| (&data.pairs[i], cache[&data.pairs[i].hash])).collect();
                        }
                        "unsafe" => mb.unsafe_seqs = idx.iter().map(|&i| data.unsafe_seqs[i].clone()).collect(),
                        _ => {
                            mb.safety_pairs = idx
                                .iter()
                                .map(|&i| (&data.safety_pairs[i], cache[&data.safety_pairs[i].hash]))
                                .collect();
                        }
                    }
                }
                let out = evaluate(self.policy.decoder(), &mb, weights, pref_term, safety_pair_term, self.pad_id())?;
                let mut loss = (out.loss / accum as f64)?;
                if self.options.inject_nan_at.contains(&step) {
                    loss = (loss * f64::NAN)?;
                }
                loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let add = |acc: Option<f64>, v: Option<f64>| v.map(|v| acc.unwrap_or(0.0) + v / accum as f64).or(acc);
                sft_sum = add(sft_sum, out.sft);
                lm_sum = add(lm_sum, out.lm);
                pref_sum = add(pref_sum, out.pref);
                safe_sum = add(safe_sum, out.safe);
                rewards.extend(out.rewards);
                tokens += out.tokens;
                let store = loss.backward()?;
                for (slot, g) in grads.iter_mut().zip(gradients_of(&params, &store)) {
                    *slot = match (slot.take(), g) {
                        (Some(a), Some(b)) => Some((a + b)?),
                        (a, b) => a.or(b),
                    };
                }
            }
            let norm = global_norm(&grads)?;
            if !loss_sum.is_finite() || !norm.is_finite() {
                self.state.consecutive_nan += 1;
                let mut f = Map::new();
                f.insert(
                    "message".into(),
                    json!(format!(
                        "non-finite {} at step {step}; update skipped",
                        if loss_sum.is_finite() { "gradient" } else { "loss" }
                    )),
                );
                f.insert("batch".into(), json!(self.state.stage_step));
                let halt = self.pipeline.run.nan_policy == NanPolicy::Halt
                    || self.state.consecutive_nan > self.pipeline.run.max_consecutive_nan;
                self.host.emit(if halt { "error" } else { "warning" }, Some(&name), Some(step), f)?;
                if halt {
                    return Err(TrainError::NonFinite { stage: name, step });
                }
            } else {
                self.state.consecutive_nan = 0;
                let scale = if stage.max_grad_norm > 0.0 { clip_coefficient(norm, stage.max_grad_norm) } else { 1.0 };
                opt.step_with(&grads, scale)?;
            }
            self.state.global_step += 1;
            self.state.stage_step += 1;
            let elapsed = started.elapsed().as_secs_f64();
            if self.state.global_step % self.pipeline.run.log_every.max(1) == 0 || self.state.stage_step == total {
                let mut m = Map::new();
                m.insert("loss".into(), num(loss_sum));
                for (key, v) in
                    [("loss/sft", sft_sum), ("loss/lm", lm_sum), ("loss/pref", pref_sum), ("loss/safe", safe_sum)]
                {
                    if let Some(v) = v {
                        m.insert(key.into(), num(v));
                    }
                }
                if let Some(p) = pref_sum {
                    m.insert("weighted/pref".into(), num(lambda_pref * p));
                }
                if let Some(s) = safe_sum {
                    m.insert("weighted/safe".into(), num(lambda_safe * s));
                }
                m.insert("lambda/pref".into(), json!(lambda_pref));
                m.insert("lambda/safe".into(), json!(lambda_safe));
                if !rewards.is_empty() {
                    let n = rewards.len() as f64;
                    let mean = |f: &dyn Fn(&RewardRow) -> f64| rewards.iter().map(f).sum::<f64>() / n;
                    m.insert("rewards/chosen".into(), num(mean(&|r| r.0)));
                    m.insert("rewards/rejected".into(), num(mean(&|r| r.1)));
                    m.insert("rewards/margins".into(), num(mean(&|r| r.0 - r.1)));
                    m.insert("rewards/accuracies".into(), num(mean(&|r| if r.0 > r.1 { 1.0 } else { 0.0 })));
                    m.insert("logps/chosen".into(), num(mean(&|r| r.2)));
                    m.insert("logps/rejected".into(), num(mean(&|r| r.3)));
                }
                m.insert("learning_rate".into(), json!(lr));
                m.insert("grad_norm".into(), num(norm));
                m.insert("tokens_per_second".into(), json!(tokens as f64 / elapsed.max(1e-9)));
                let main_sampler = samplers
                    .iter()
                    .find(|(t, _)| *t == main || (main == "safety" && (*t == "unsafe" || *t == "safety")));
                m.insert("epoch".into(), json!(main_sampler.map_or(0.0, |(_, s)| s.progress())));
                m.insert("stage_step".into(), json!(self.state.stage_step));
                m.insert("total_steps".into(), json!(total));
                self.host.emit("metrics", Some(&name), Some(self.state.global_step), m)?;
            }
            if let Some(adaptive) = stage.safety.as_ref().and_then(|s| s.adaptive.as_ref()) {
                if self.state.stage_step % adaptive.every.max(1) == 0 && !data.redteam.is_empty() {
                    let rate = unsafe_rate_proxy(&self.policy, &data, &cache, self.pad_id())?;
                    let before = lambdas.safe;
                    lambdas.safe = (lambdas.safe + adaptive.eta * (rate - adaptive.epsilon)).max(0.0);
                    let mut f = Map::new();
                    f.insert("lambda".into(), json!("safe"));
                    f.insert("from".into(), json!(before));
                    f.insert("to".into(), json!(lambdas.safe));
                    f.insert("unsafe_rate".into(), json!(rate));
                    f.insert("reason".into(), json!("adaptive"));
                    self.host.emit("lambda_changed", Some(&name), Some(self.state.global_step), f)?;
                }
            }
            let cx =
                StepCx { name: &name, stage, static_files: &static_files, opt: &opt, samplers: &samplers, live: &live };
            self.live_samples(&cx, &mut prompts)?;
            let every = self.pipeline.run.checkpoint_every;
            if every > 0 && self.state.global_step % every == 0 && self.state.stage_step < total {
                self.state.label_prefixes = live.consumed_prefixes()?;
                self.checkpoint(&opt, &samplers, lambdas.pref, lambdas.safe)?;
            }
        }
        self.state.stage_done = true;
        self.state.label_prefixes = live.consumed_prefixes()?;
        self.checkpoint(&opt, &samplers, lambdas.pref, lambdas.safe)?;
        let mut f = Map::new();
        f.insert("steps".into(), json!(self.state.stage_step));
        if skipped {
            f.insert("skipped".into(), json!(true));
        }
        self.host.emit("stage_finished", Some(&name), Some(self.state.global_step), f)?;
        Ok(Finished::Completed)
    }

    /// Applies newly read labels: new agreeing pairs join the pool (with reference log-probs),
    /// retracted or now-disputed ones leave it; one `labels_admitted` event says what happened.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        stage: &str,
        step: u64,
        update: LiveUpdate,
        data: &mut StageData,
        samplers: &mut [(&str, Sampler)],
        reference: Option<&Model>,
        cache: &mut RefCache,
        on_chosen: bool,
    ) -> Result<(), TrainError> {
        self.state.label_reads.extend(update.offsets.iter().cloned());
        for message in &update.problems {
            let mut f = Map::new();
            f.insert("message".into(), json!(message));
            self.host.emit("warning", Some(stage), Some(step), f)?;
        }
        if update.lines == 0 {
            return Ok(());
        }
        if let Some(reference) = reference {
            let refs: Vec<&PairExample> = update.added.iter().collect();
            fill_reference_cache(reference, &refs, self.pad_id(), cache)?;
        }
        let count = update.added.len();
        let first_new = data.pairs.len();
        if let Some((_, pref)) = samplers.iter_mut().find(|(t, _)| *t == "pref") {
            for p in update.added {
                pref.add(p.num_tokens());
                data.pairs.push(p);
            }
            for &i in &update.retracted {
                pref.set_active(i, false);
            }
        }
        if on_chosen {
            // The chosen answers of new pairs also feed the SFT term.
            let new: Vec<_> = data.pairs[first_new..].iter().map(PairExample::chosen_sequence).collect();
            if let Some((_, sft)) = samplers.iter_mut().find(|(t, _)| *t == "sft") {
                for seq in new {
                    sft.add(seq.ids.len());
                    data.sft.push(seq);
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
        self.host.emit("labels_admitted", Some(stage), Some(step), f)
    }

    fn checkpoint(
        &mut self,
        opt: &AdamW,
        samplers: &[(&str, Sampler)],
        lambda_pref: f64,
        lambda_safe: f64,
    ) -> Result<(), TrainError> {
        if self.last_checkpoint == Some(self.state.global_step) && !self.state.stage_done {
            // Already saved at this step boundary (a periodic checkpoint just before a stop, or
            // the checkpoint this trainer resumed from).
            return Ok(());
        }
        self.state.samplers = samplers.iter().map(|(t, s)| ((*t).to_string(), s.state.clone())).collect();
        self.state.lambda_pref = Some(lambda_pref);
        self.state.lambda_safe = Some(lambda_safe);
        self.state.optimizer_steps = opt.step_count();
        let mut files = self.policy.files(DType::F32)?;
        files.push(("optimizer.safetensors".into(), optimizer_bytes(opt)?));
        let state = serde_json::to_vec_pretty(&self.state).map_err(|e| TrainError::Data(e.to_string()))?;
        files.push(("trainer_state.json".into(), state));
        let step = self.state.global_step;
        self.last_checkpoint = Some(step);
        self.host.save_checkpoint(step, files)
    }
}
