//! A GRPO stage (`[stage.grpo]`): each optimizer step samples a group of completions per prompt
//! from the current policy (batched generation with the KV cache, each completion seeded by its
//! place in the run), scores them with the rule rewards (the evaluation's judge) and/or a reward
//! model, turns the rewards into group-normalised advantages and descends TRL's GRPO loss
//! (`loss_type = "dapo"`, one update per generation) with the KL penalty to the stage's frozen
//! starting weights. Logs TRL's metrics: `reward`, `reward_std`, `frac_reward_zero_std`, `kl`,
//! `completions/mean_length`, `rewards/<name>/mean`.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use super::stage::{num, Lambdas, StageRun, StepSums, Term};
use super::step::StepDone;
use super::{Host, Trainer};
use crate::config::{GrpoTerm, Stage};
use crate::data::{encode_generation_prompt, encode_sft, ChatTemplate, Message, SftRecord, Text, TextTokenizer};
use crate::eval::{read_suite, EvalItem, Judge, JudgeConfig, Prompt};
use crate::kind;
use crate::model::generate::{generate_batch_seeded, Sampling};
use crate::model::RewardModel;
use crate::train::batch::{Sequence, TokenBatch};
use crate::train::grpo::{
    completion_seed, per_sequence_rows, present_mean, rule_reward, tempered_target_logps, total_rewards,
};
use crate::train::live::LiveLabels;
use crate::train::optim::global_norm;
use crate::train::plan::{RefCache, StageData};
use crate::train::rl::{group_advantages, grpo_loss, Advantages, GrpoConfig, GrpoInputs, GrpoLossType, ScaleRewards};
use crate::train::sampler::Sampler;
use crate::train::TrainError;

/// The name of the prompt sampler in `trainer_state.json`.
const SAMPLER: &str = "grpo";

/// A reward model with the tokenizer and chat template of its directory.
pub(crate) struct RewardScorer {
    model: RewardModel,
    tokenizer: TextTokenizer,
    template: Option<ChatTemplate>,
}

/// What a GRPO stage keeps between steps.
pub(crate) struct GrpoRun {
    term: GrpoTerm,
    stage_index: usize,
    items: Vec<EvalItem>,
    prompt_ids: Vec<Vec<u32>>,
    /// Which prompts each step samples, saved in checkpoints.
    pub sampler: Sampler,
    judge: Judge,
    reward_model: Option<RewardScorer>,
}

/// One micro-batch's sampled completions.
struct Rollout {
    /// Prompt and completion, the completion's tokens the targets.
    seqs: Vec<Sequence>,
    /// Completion lengths in tokens.
    lengths: Vec<usize>,
    /// Whether each completion ended on EOS.
    stopped: Vec<bool>,
    /// Per reward function, per completion.
    per_function: Vec<Vec<Option<f64>>>,
}

/// A GRPO stage's prompts: the items kept, their token ids, and how many were dropped.
type GrpoPrompts = (Vec<EvalItem>, Vec<Vec<u32>>, usize);

/// An eval item's prompt as the data module's text.
fn prompt_text(prompt: &Prompt) -> Text {
    match prompt {
        Prompt::Text(t) => Text::Plain(t.clone()),
        Prompt::Messages(m) => Text::Messages(m.iter().map(|m| Message::new(&m.role, &m.content)).collect()),
    }
}

/// The completion in the prompt's form (a string, or one assistant message).
fn completion_text(prompt: &Text, response: &str) -> Text {
    match prompt {
        Text::Plain(_) => Text::Plain(response.to_string()),
        Text::Messages(_) => Text::Messages(vec![Message::new("assistant", response)]),
    }
}

fn stage_rewards(term: &GrpoTerm) -> Vec<String> {
    let mut names = term.reward.clone();
    if term.reward_model.is_some() {
        names.push("reward_model".into());
    }
    names
}

impl<H: Host> Trainer<'_, H> {
    /// Makes a GRPO stage ready: its prompts (the eval-suite files, tokenized), the judge, the
    /// reward model, the reference (when β > 0), the optimizer and the prompt sampler.
    pub(super) fn open_grpo_stage(
        &mut self,
        index: usize,
        stage: &Stage,
        term: &GrpoTerm,
    ) -> Result<StageRun, TrainError> {
        let (kept, prompt_ids, dropped) = self.grpo_prompts(stage, term)?;
        if kept.is_empty() {
            return Err(TrainError::Data(format!(
                "stage {}: no GRPO prompt shorter than max_length {}",
                stage.name, stage.max_length
            )));
        }
        let total = self.state.stage_total.unwrap_or_else(|| self.total_steps(stage, kept.len()));
        self.state.stage_total = Some(total);
        let step = self.state.global_step;
        let mut f = Map::new();
        f.insert("total_steps".into(), json!(total));
        f.insert("examples".into(), json!({ "grpo_prompts": kept.len() }));
        f.insert("group_size".into(), json!(term.group_size));
        let event = if self.state.stage_step > 0 { kind::STAGE_RESUMED } else { kind::STAGE_STARTED };
        self.host.emit(event, Some(&stage.name), Some(step), f)?;
        if dropped > 0 {
            let mut f = Map::new();
            let message = format!("grpo prompts: {dropped} not shorter than max_length {} dropped", stage.max_length);
            f.insert("message".into(), json!(message));
            self.host.emit(kind::WARNING, Some(&stage.name), Some(step), f)?;
        }
        let judge_config = self.pipeline.eval.as_ref().map_or_else(JudgeConfig::default, |e| e.judge.clone());
        let judge = Judge::new(&judge_config).map_err(|e| TrainError::Data(e.to_string()))?;
        let reward_model = match &term.reward_model {
            Some(dir) => {
                let tokenizer = TextTokenizer::from_dir(dir)?;
                let template = ChatTemplate::for_tokenizer(&tokenizer)?;
                Some(RewardScorer {
                    model: RewardModel::load(dir, &self.device, self.precision.compute)?,
                    tokenizer,
                    template,
                })
            }
            None => None,
        };
        let reference = if term.beta > 0.0 { Some(self.reference_model(stage)?) } else { None };
        let opt = self.policy_optimizer(stage)?;
        let seed = completion_seed(self.pipeline.run.seed, index, u64::MAX, 0);
        let lengths = prompt_ids.iter().map(Vec::len).collect();
        let sampler = Sampler::new(seed, lengths, stage.batch_size, self.state.samplers.get(SAMPLER).cloned());
        let prompts: Vec<Text> = kept.iter().map(|i| prompt_text(&i.prompt)).collect();
        let grpo =
            GrpoRun { term: term.clone(), stage_index: index, items: kept, prompt_ids, sampler, judge, reward_model };
        Ok(StageRun {
            stage: stage.clone(),
            static_files: Vec::new(),
            data: StageData::default(),
            live: LiveLabels::new(Vec::new()),
            plan: Vec::new(),
            cache: RefCache::new(),
            reference,
            opt,
            samplers: Vec::new(),
            main: Term::Sft,
            total,
            lambdas: Lambdas { pref: 0.0, safe: 0.0 },
            prompts: Some(prompts),
            grpo: Some(Box::new(grpo)),
            kto: None,
            reward: None,
        })
    }

    /// The stage's prompts (the eval-suite files), each with its tokenized generation prompt, and
    /// how many were dropped for not being shorter than `max_length`.
    fn grpo_prompts(&self, stage: &Stage, term: &GrpoTerm) -> Result<GrpoPrompts, TrainError> {
        let mut items = Vec::new();
        for path in &term.prompts {
            items.extend(read_suite(path).map_err(|e| TrainError::Data(e.to_string()))?);
        }
        let mut kept = Vec::with_capacity(items.len());
        let mut prompt_ids = Vec::with_capacity(items.len());
        let mut dropped = 0usize;
        for item in items {
            let ids = encode_generation_prompt(&self.tokenizer, self.template.as_ref(), &prompt_text(&item.prompt))?;
            if ids.is_empty() || ids.len() >= stage.max_length {
                dropped += 1;
                continue;
            }
            prompt_ids.push(ids);
            kept.push(item);
        }
        Ok((kept, prompt_ids, dropped))
    }

    /// Samples `grad_accum` micro-batches of groups from the current policy and scores them.
    fn rollouts(&self, grpo: &mut GrpoRun, step: u64, accum: usize) -> Result<Vec<Rollout>, TrainError> {
        let term = &grpo.term;
        let stops = self.policy.generation.eos_token_ids.clone();
        let sampling =
            Sampling { temperature: term.temperature, top_p: term.top_p, seed: 0, max_new_tokens: term.max_new_tokens };
        let mut out = Vec::with_capacity(accum);
        let mut k = 0usize;
        for _ in 0..accum {
            let (drawn, _) = grpo.sampler.next_batch();
            let rows: Vec<usize> = drawn.iter().flat_map(|&i| std::iter::repeat_n(i, term.group_size)).collect();
            if rows.is_empty() {
                continue;
            }
            let prompts: Vec<Vec<u32>> = rows.iter().map(|&i| grpo.prompt_ids[i].clone()).collect();
            let seeds: Vec<u64> = (0..rows.len())
                .map(|r| completion_seed(self.pipeline.run.seed, grpo.stage_index, step, k + r))
                .collect();
            k += rows.len();
            let generated = generate_batch_seeded(&self.policy, &prompts, &stops, &sampling, &seeds)?;
            let mut seqs = Vec::with_capacity(rows.len());
            let mut texts = Vec::with_capacity(rows.len());
            for (prompt, g) in prompts.iter().zip(&generated) {
                let ids: Vec<u32> = prompt.iter().chain(&g.generated.new_token_ids).copied().collect();
                seqs.push(Sequence::with_completion_from(ids, prompt.len()));
                texts.push(self.tokenizer.decode(&g.generated.new_token_ids, true)?);
            }
            let mut per_function: Vec<Vec<Option<f64>>> = term
                .reward
                .iter()
                .map(|name| {
                    rows.iter().zip(&texts).map(|(&i, t)| rule_reward(&grpo.judge, &grpo.items[i], name, t)).collect()
                })
                .collect();
            if let Some(rm) = &grpo.reward_model {
                per_function.push(score_with(rm, &rows, &grpo.items, &texts)?.into_iter().map(Some).collect());
            }
            out.push(Rollout {
                seqs,
                lengths: generated.iter().map(|g| g.generated.new_token_ids.len()).collect(),
                stopped: generated.iter().map(|g| g.generated.stopped_on_eos).collect(),
                per_function,
            });
        }
        Ok(out)
    }

    /// One GRPO optimizer step: sample and score, then the loss and backward of each micro-batch
    /// (DAPO's normaliser is the whole step's completion tokens), the update, metrics, live
    /// samples and the periodic checkpoint.
    pub(super) fn grpo_step(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let started = Instant::now();
        let lr = self.set_learning_rate(run);
        let stage = &run.stage;
        let accum = stage.grad_accum.max(1);
        let Some(grpo) = run.grpo.as_deref_mut() else {
            return Err(TrainError::Data(format!("stage {}: not a GRPO stage", stage.name)));
        };
        let rollouts = self.rollouts(grpo, step, accum)?;
        let term = grpo.term.clone();
        let rewards: Vec<f64> =
            rollouts.iter().flat_map(|r| total_rewards(&r.per_function, r.seqs.len())).collect::<Vec<_>>();
        let adv = group_advantages(&rewards, term.group_size, ScaleRewards::Group)?;
        let step_tokens: usize = rollouts.iter().flat_map(|r| r.lengths.iter()).sum();
        let cfg = GrpoConfig {
            loss_type: GrpoLossType::Dapo,
            beta: term.beta,
            epsilon_low: term.epsilon,
            epsilon_high: term.epsilon,
            max_completion_length: term.max_new_tokens,
            ..GrpoConfig::default()
        };
        let mut sums = StepSums::new(run.opt.params().len(), accum);
        let (mut kl_sum, mut clip_sum) = (0.0, 0.0);
        let mut first = 0usize;
        let device = self.device.clone();
        let pad = self.pad_id();
        for r in &rollouts {
            let advantages = &adv.advantages[first..first + r.seqs.len()];
            first += r.seqs.len();
            let tokens: usize = r.lengths.iter().sum();
            if tokens == 0 {
                continue;
            }
            let batch = TokenBatch::new(&r.seqs, pad, &device)?;
            let flat = tempered_target_logps(self.policy.decoder(), &batch, term.temperature)?;
            let (policy, mask) = per_sequence_rows(&flat, &batch.targets_per_sequence, &device)?;
            let reference = match &run.reference {
                Some(reference) => {
                    let flat = reference
                        .with_decoder(&self.policy, |d| tempered_target_logps(d, &batch, term.temperature))?
                        .detach();
                    Some(per_sequence_rows(&flat, &batch.targets_per_sequence, &device)?.0)
                }
                None => None,
            };
            let advantages = Tensor::from_vec(advantages.to_vec(), advantages.len(), &device)?.to_dtype(DType::F32)?;
            let out = grpo_loss(
                &cfg,
                &GrpoInputs {
                    policy: &policy,
                    old: None,
                    reference: reference.as_ref(),
                    mask: &mask,
                    advantages: &advantages,
                    step_tokens: Some(step_tokens as f64),
                },
            )?;
            self.backward_into(&run.opt, &mut sums, out.loss, step, batch.real_tokens)?;
            kl_sum += out.kl.unwrap_or(0.0) * tokens as f64;
            clip_sum += out.clip_region * tokens as f64;
        }
        let norm = global_norm(&sums.grads)?;
        let done = StepDone { sums: &sums, norm, lr, started };
        let measures = GrpoMeasures { rollouts: &rollouts, adv: &adv, step_tokens, kl_sum, clip_sum };
        self.finish_step(run, &done, || grpo_metrics(&term, sums.loss, &measures))
    }
}

/// What a GRPO step measured besides its loss: the step's rollouts, their advantages, and the
/// step's completion tokens with the token-summed KL and clipped share.
struct GrpoMeasures<'a> {
    rollouts: &'a [Rollout],
    adv: &'a Advantages,
    step_tokens: usize,
    kl_sum: f64,
    clip_sum: f64,
}

/// The GRPO fields of a `metrics` event (TRL's names), before the fields every step logs.
fn grpo_metrics(term: &GrpoTerm, loss: f64, measures: &GrpoMeasures<'_>) -> Map<String, Value> {
    let GrpoMeasures { rollouts, adv, step_tokens, kl_sum, clip_sum } = *measures;
    let lengths: Vec<usize> = rollouts.iter().flat_map(|r| r.lengths.iter().copied()).collect();
    let completions = lengths.len().max(1) as f64;
    let truncated = rollouts.iter().flat_map(|r| r.stopped.iter()).filter(|s| !**s).count();
    let per_token = |sum: f64| if step_tokens == 0 { 0.0 } else { sum / step_tokens as f64 };
    let mut m = Map::new();
    m.insert("loss".into(), num(loss));
    m.insert("reward".into(), num(adv.reward_mean));
    m.insert("reward_std".into(), num(adv.reward_std));
    m.insert("frac_reward_zero_std".into(), num(adv.frac_zero_std));
    if term.beta > 0.0 {
        m.insert("kl".into(), num(per_token(kl_sum)));
    }
    m.insert("clip_ratio/region_mean".into(), num(per_token(clip_sum)));
    m.insert("completions/mean_length".into(), num(step_tokens as f64 / completions));
    m.insert("completions/min_length".into(), json!(lengths.iter().min().copied().unwrap_or(0)));
    m.insert("completions/max_length".into(), json!(lengths.iter().max().copied().unwrap_or(0)));
    m.insert("completions/clipped_ratio".into(), num(truncated as f64 / completions));
    for (f, name) in stage_rewards(term).iter().enumerate() {
        let values: Vec<Option<f64>> = rollouts.iter().flat_map(|r| r.per_function[f].iter().copied()).collect();
        if let Some(mean) = present_mean(&values) {
            m.insert(format!("rewards/{name}/mean"), num(mean));
        }
    }
    m
}

/// The reward model's score of each completion, the conversation encoded with the reward
/// model's own tokenizer and chat template.
fn score_with(rm: &RewardScorer, rows: &[usize], items: &[EvalItem], texts: &[String]) -> Result<Vec<f64>, TrainError> {
    let mut seqs = Vec::with_capacity(rows.len());
    for (&i, text) in rows.iter().zip(texts) {
        let prompt = prompt_text(&items[i].prompt);
        let completion = completion_text(&prompt, text);
        let record = SftRecord::PromptCompletion { prompt, completion };
        seqs.push(encode_sft(&rm.tokenizer, rm.template.as_ref(), &record)?.input_ids);
    }
    let scores = rm.model.scores(&seqs)?;
    Ok(scores.to_dtype(DType::F64)?.to_vec1()?)
}

/// The GRPO sampler's position for a checkpoint, when `run` is a GRPO stage.
pub(super) fn sampler_state(run: &StageRun) -> Option<(String, crate::train::sampler::SamplerState)> {
    run.grpo.as_ref().map(|g| (SAMPLER.to_string(), g.sampler.state.clone()))
}
