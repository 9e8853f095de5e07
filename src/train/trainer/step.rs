//! One optimizer step of a stage trained on hone's objective: the labels that arrived, the
//! micro-batches' forward and backward passes (the policy's objective, or a reward model's
//! Bradley-Terry loss), the update or the NaN policy, and the end every kind of step shares
//! (metrics, adaptive λ, live samples, the periodic checkpoint).

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use super::stage::{apply_update, forward_backward, num, Lambdas, Objective, StageRun, StepSums, Term};
use super::{grpo, kto, CheckpointData, Host, Trainer};
use crate::config::{NanPolicy, Stage};
use crate::kind;
use crate::model::SafetensorsOut;
use crate::train::evaluate::unsafe_rate_proxy;
use crate::train::examples::PairExample;
use crate::train::live::LiveUpdate;
use crate::train::optim::{global_norm, AdamW, AdamWConfig};
use crate::train::plan::{never_interrupt, RmPair};
use crate::train::reward::BradleyTerry;
use crate::train::schedule::learning_rate;
use crate::train::state::optimizer_out;
use crate::train::TrainError;

/// What a step measured, for the end every kind of step shares ([`Trainer::finish_step`]).
pub(super) struct StepDone<'a> {
    /// The loss and the summed gradients.
    pub sums: &'a StepSums,
    /// Their global norm before clipping.
    pub norm: f64,
    /// The learning rate of the update.
    pub lr: f64,
    /// When the step began (for `tokens_per_second`).
    pub started: Instant,
}

impl<H: Host> Trainer<'_, H> {
    /// One optimizer step: labels that arrived, the micro-batches' forward and backward passes,
    /// then [`Self::finish_step`]. GRPO and KTO stages step in their own modules.
    pub(super) fn step(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
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
        let lr = self.set_learning_rate(run);
        let sums = self.forward_backward(run, lambdas, step)?;
        let norm = global_norm(&sums.grads)?;
        let done = StepDone { sums: &sums, norm, lr, started };
        self.finish_step(run, &done, || sums.loss_fields(lambdas))
    }

    /// The end every kind of step shares: the update (or the NaN policy), the step counters, the
    /// `metrics` event (the step's own `fields`, then the common ones), adaptive λ, live samples
    /// and the periodic checkpoint.
    pub(super) fn finish_step(
        &mut self,
        run: &mut StageRun,
        done: &StepDone<'_>,
        fields: impl FnOnce() -> Map<String, Value>,
    ) -> Result<(), TrainError> {
        let step = self.state.global_step;
        self.update(run, done.sums, done.norm, step)?;
        self.state.global_step += 1;
        self.state.stage_step += 1;
        let elapsed = done.started.elapsed().as_secs_f64();
        if self.state.global_step % self.pipeline.run.log_every.max(1) == 0 || self.state.stage_step == run.total {
            let mut m = fields();
            m.insert("learning_rate".into(), json!(done.lr));
            m.insert("grad_norm".into(), num(done.norm));
            m.insert("tokens_per_second".into(), json!(done.sums.tokens as f64 / elapsed.max(1e-9)));
            if let Some(now) = self.host.peak_memory_bytes(&self.device) {
                self.peak_memory = self.peak_memory.max(now);
                m.insert("memory/peak_bytes".into(), json!(self.peak_memory));
            }
            m.insert("epoch".into(), json!(run.epoch()));
            m.insert("stage_step".into(), json!(self.state.stage_step));
            m.insert("total_steps".into(), json!(run.total));
            self.host.emit(kind::METRICS, Some(run.name()), Some(self.state.global_step), m)?;
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

    /// Sets the optimizer's learning rate for this step of `run`'s schedule and returns it.
    pub(super) fn set_learning_rate(&self, run: &mut StageRun) -> f64 {
        let stage = &run.stage;
        let lr = learning_rate(stage.schedule, stage.lr, self.state.stage_step, stage.warmup_steps, run.total);
        run.opt.config.lr = lr;
        lr
    }

    /// The policy's optimizer for a GRPO or KTO `stage`, with the moments of the checkpoint a
    /// resume starts from, if any.
    pub(super) fn policy_optimizer(&mut self, stage: &Stage) -> Result<AdamW, TrainError> {
        let config = AdamWConfig { lr: stage.lr, weight_decay: stage.weight_decay, ..AdamWConfig::default() };
        let mut opt = AdamW::new(self.policy.parameters(), config)?;
        if let Some(moments) = self.resume_optimizer.take() {
            opt.restore(self.state.optimizer_steps, moments)?;
        }
        Ok(opt)
    }

    /// The backward pass of one GRPO or KTO micro-batch's `loss` (made NaN at the steps
    /// `inject_nan_at` names), its loss, `tokens` and gradients added to `sums`.
    pub(super) fn backward_into(
        &self,
        opt: &AdamW,
        sums: &mut StepSums,
        loss: Tensor,
        step: u64,
        tokens: usize,
    ) -> Result<(), TrainError> {
        let loss = if self.options.inject_nan_at.contains(&step) { (loss * f64::NAN)? } else { loss };
        let store = self.policy.decoder().backward(&loss)?;
        sums.loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        sums.tokens += tokens;
        sums.add_grads(opt, &store)
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
    pub(super) fn update(
        &mut self,
        run: &mut StageRun,
        sums: &StepSums,
        norm: f64,
        step: u64,
    ) -> Result<(), TrainError> {
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
        self.host.emit(if halt { kind::ERROR } else { kind::WARNING }, Some(run.name()), Some(step), f)?;
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
        self.host.emit(kind::LAMBDA_CHANGED, Some(run.name()), Some(self.state.global_step), f)
    }

    /// Reads the live labels files at this step boundary and applies what they say.
    fn admit_labels(&mut self, run: &mut StageRun, step: u64) -> Result<(), TrainError> {
        let pool_len = run.data.pairs.len();
        let update = self.read_at_boundary(&run.stage, &mut run.live, &run.plan, pool_len)?;
        self.admit(run, step, update)
    }

    /// Applies newly read labels: new agreeing pairs join the pool (with reference log-probs),
    /// retracted or now-disputed ones leave it; one `labels_admitted` event says what happened.
    fn admit(&mut self, run: &mut StageRun, step: u64, update: LiveUpdate) -> Result<(), TrainError> {
        if update.lines == 0 {
            return Ok(());
        }
        if let Some(reference) = &run.reference {
            let refs: Vec<&PairExample> = update.added.iter().collect();
            // Labels admitted at a step boundary are few: scored without interruption.
            let _never_breaks =
                reference.score(&self.policy, &refs, self.pad_id(), &mut run.cache, &mut never_interrupt)?;
        }
        let fields = update.event_fields();
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
        self.host.emit(kind::LABELS_ADMITTED, Some(run.name()), Some(step), fields)
    }

    /// Saves a checkpoint at this step boundary (once per boundary): the policy, AdamW's
    /// moments and the trainer state with every sampler's position and the live labels read.
    pub(super) fn checkpoint(&mut self, run: &StageRun) -> Result<(), TrainError> {
        self.state.label_prefixes = run.live.consumed_prefixes()?;
        self.state.label_prefixes.extend(kto::consumed_prefixes(run)?);
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
        let reward_model = run.reward.as_ref().map(|r| r.weights_out(DType::F32)).transpose()?;
        self.save_checkpoint(Some(optimizer_out(&run.opt)?), reward_model)
    }

    /// Hands the host a checkpoint of this step: the policy in f32, the trainer state as it
    /// stands, and the given moments and reward model.
    pub(super) fn save_checkpoint(
        &mut self,
        optimizer: Option<SafetensorsOut>,
        reward_model: Option<SafetensorsOut>,
    ) -> Result<(), TrainError> {
        let checkpoint = CheckpointData {
            model: self.policy.files_out(DType::F32)?,
            trainer_state: serde_json::to_vec_pretty(&self.state).map_err(|e| TrainError::Data(e.to_string()))?,
            optimizer,
            reward_model,
        };
        let step = self.state.global_step;
        self.last_checkpoint = Some(step);
        self.host.save_checkpoint(step, checkpoint)
    }
}
