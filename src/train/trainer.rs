//! The trainer loop: stages in order, each step one optimizer update of the λ-weighted objective,
//! with metrics, NaN handling, adaptive λ_safe, checkpoints and exact resume.
//!
//! The loop talks to the outside world only through [`Host`]: events, checkpoint files, the stop
//! flag and where a stage's reference weights live. It never learns a run-directory file name.

mod control;
mod evaluation;
mod external;
mod grpo;
mod kto;
mod labels;
mod reference;
mod route;
mod stage;
mod step;

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device};
use serde_json::{json, Map};

use super::examples::PairExample;
use super::host::PlannedControl;
pub use super::host::{Admission, CheckpointData, Host, PrefFile, SavedTraining};
use super::iterate::round_seed_salt;
use super::live::LiveLabels;
use super::optim::{AdamW, AdamWConfig, Moments};
use super::plan::{load_stage_data, RefCache, StageData};
use super::sampler::Sampler;
use super::state::load_optimizer;
pub use super::state::{Finished, RunOptions, TrainerState};
use super::TrainError;
use crate::config::{Engine, ModelInit, Pipeline, Stage};
use crate::control::Request;
use crate::data::{ChatTemplate, TextTokenizer};
use crate::kind;
use crate::model::{AdapterInit, Model, Precision, RewardModel};
use control::Boundary;
pub use control::{stage_prompts, DEFAULT_SAMPLE_PROMPTS};
pub use evaluation::best_of_name;
use evaluation::EvalSetup;
pub(crate) use stage::{apply_update, forward_backward, Objective};
use stage::{main_term, term_len, term_lengths, Lambdas, Reference, StageRun};
pub use stage::{sampler_seed, Term};

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
    deferred: VecDeque<Request>,
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
                Model::load_lora_training(&pipeline.model.path, &device, Precision::for_training(dtype), &init)?
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
            Model::load_lora_training(&pipeline.model.path, &device, Precision::for_training(dtype), &init)?
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

    /// The current policy.
    pub fn policy(&self) -> &Model {
        &self.policy
    }

    fn pad_id(&self) -> u32 {
        super::score::pad_id(&self.tokenizer, &self.policy)
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
        self.host.emit(kind::REWARD_MODEL_SAVED, Some(stage), Some(self.state.global_step), f)
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
        self.host.emit(kind::STAGE_FINISHED, Some(run.name()), Some(self.state.global_step), f)?;
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
        let mut retracted = Vec::new();
        for update in self.initial_reads(stage, live, data.pairs.len())? {
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
        let event = if self.state.stage_step > 0 { kind::STAGE_RESUMED } else { kind::STAGE_STARTED };
        self.host.emit(event, Some(&stage.name), Some(step), fields)?;
        for (k, t) in &data.truncation {
            if t.truncated + t.dropped > 0 {
                let message = format!(
                    "{k} data: {} truncated to max_length {}, {} dropped",
                    t.truncated, stage.max_length, t.dropped
                );
                let mut f = Map::new();
                f.insert("message".into(), json!(message));
                self.host.emit(kind::WARNING, Some(&stage.name), Some(step), f)?;
            }
        }
        Ok(())
    }

    /// Reference log-probs of every pair, computed once (kept through the host as they are
    /// computed, see [`reference`]); the reference model is kept while labels may arrive (their
    /// pairs need log-probs too). A stop between two scoring batches ends it (`Break`).
    fn reference_log_probs(
        &mut self,
        stage: &Stage,
        data: &StageData,
        live: &LiveLabels,
    ) -> Result<ControlFlow<(), (RefCache, Option<Reference>)>, TrainError> {
        let needs_ref =
            !data.pairs.is_empty() || !data.safety_pairs.is_empty() || !data.redteam.is_empty() || !live.is_empty();
        if !needs_ref {
            return Ok(ControlFlow::Continue((RefCache::new(), None)));
        }
        let reference = self.reference_model(stage)?;
        let all: Vec<&PairExample> = data.pairs.iter().chain(&data.safety_pairs).chain(&data.redteam).collect();
        let ControlFlow::Continue(cache) = self.precompute_reference(stage, &reference, &all)? else {
            return Ok(ControlFlow::Break(()));
        };
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
