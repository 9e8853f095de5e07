//! A stage being trained ([`StageRun`]): its data, the samplers of its terms, its reference
//! log-probs (and reference model while labels may arrive), its optimizer and the λ values in
//! effect; and the sums one step accumulates over its micro-batches ([`StepSums`]).

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use crate::config::{PrefLossKind, SafetyLossKind, Stage};
use crate::data::Text;
use crate::model::{Decoder, Model, RewardModel};
use crate::train::examples::PairExample;
use crate::train::host::Admission;
use crate::train::live::LiveLabels;
use crate::train::loss::{LabelNoise, PreferenceLoss};
use crate::train::objective::{evaluate, MicroBatch, Outcome, PairTerm, RewardRow, Weights};
use crate::train::optim::{clip_coefficient, gradients_of, AdamW};
use crate::train::plan::{
    fill_reference_cache, fill_reference_slice, AfterBatch, Between, RefCache, RmPair, StageData,
};
use crate::train::sampler::Sampler;
use crate::train::TrainError;

/// A term of the objective. Each term present in a stage has its own sampler over its own
/// examples; a micro-batch takes one batch from each, in [`Term::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Term {
    /// Supervised fine-tuning sequences.
    Sft,
    /// Plain-text language modelling.
    Lm,
    /// Preference pairs (DPO/IPO).
    Pref,
    /// Unsafe responses (unlikelihood).
    Unsafe,
    /// Safe-vs-unsafe pairs (safety DPO).
    Safety,
    /// Preference pairs scored by a reward model (a reward-model stage's only term).
    Reward,
}

impl Term {
    /// Every term, in sampling order.
    pub const ALL: [Self; 6] = [Self::Sft, Self::Lm, Self::Pref, Self::Unsafe, Self::Safety, Self::Reward];

    /// The term's name, which keys its sampler in `trainer_state.json`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sft => "sft",
            Self::Lm => "lm",
            Self::Pref => "pref",
            Self::Unsafe => "unsafe",
            Self::Safety => "safety",
            Self::Reward => "reward_model",
        }
    }

    /// The term's part of its sampler seed: the name's length XOR its first byte
    /// (sft 0x70, lm 0x6e, pref 0x74, unsafe 0x73, safety 0x75, reward_model 0x7e; all distinct).
    fn seed_salt(self) -> u64 {
        let name = self.name().as_bytes();
        name.len() as u64 ^ u64::from(name[0])
    }
}

/// The seed of `term`'s sampler in stage `stage_index` of a run seeded `seed`:
/// `seed ^ stage_index·0x100_0000_01b3 ^ salt(term)` (see [`Term::seed_salt`]).
pub fn sampler_seed(seed: u64, stage_index: usize, term: Term) -> u64 {
    seed ^ (stage_index as u64).wrapping_mul(0x1000_0000_01b3) ^ term.seed_salt()
}

/// The λ values in effect, changed by `set_lambda` and the adaptive rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lambdas {
    pub pref: f64,
    pub safe: f64,
}

/// One stage being trained.
pub(crate) struct StageRun {
    /// Its settings.
    pub stage: Stage,
    /// Its preference files that do not grow.
    pub static_files: Vec<PathBuf>,
    /// Its tokenized examples, by term (live labels join `pairs`).
    pub data: StageData,
    /// The live labels files.
    pub live: LiveLabels,
    /// Admissions of a previous worker to replay at the same steps.
    pub plan: Vec<Admission>,
    /// Reference log-probs by example hash.
    pub cache: RefCache,
    /// The reference, kept while labels may arrive (new pairs need their log-probs).
    pub reference: Option<Reference>,
    /// AdamW over the policy's parameters.
    pub opt: AdamW,
    /// One sampler per term present, in [`Term::ALL`] order.
    pub samplers: Vec<(Term, Sampler)>,
    /// The term whose data sets the stage's length and epoch count.
    pub main: Term,
    /// The stage's length in steps, fixed when it starts.
    pub total: u64,
    /// λ values in effect.
    pub lambdas: Lambdas,
    /// The stage's prompts (live samples, candidates), read on first use.
    pub prompts: Option<Vec<Text>>,
    /// A GRPO stage's prompts, rewards and sampler (`None` for the other stages).
    pub grpo: Option<Box<super::grpo::GrpoRun>>,
    /// A KTO stage's thumbs examples, live files and sampler (`None` for the other stages).
    pub kto: Option<Box<super::kto::KtoRun>>,
    /// The reward model a reward-model stage trains (`opt` is over its parameters then).
    pub reward: Option<RewardModel>,
}

impl StageRun {
    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.stage.name
    }

    /// Whether the SFT term also trains on chosen answers (new labels feed it too).
    pub fn on_chosen(&self) -> bool {
        self.stage.sft.as_ref().is_some_and(|t| t.on_chosen)
    }

    /// The sampler of `term`, if the stage has that term.
    pub fn sampler_mut(&mut self, term: Term) -> Option<&mut Sampler> {
        self.samplers.iter_mut().find(|(t, _)| *t == term).map(|(_, s)| s)
    }

    /// Fractional epochs of the main term's sampler (a GRPO stage's prompts, a KTO stage's
    /// thumbs).
    pub fn epoch(&self) -> f64 {
        if let Some(grpo) = &self.grpo {
            return grpo.sampler.progress();
        }
        if let Some(kto) = &self.kto {
            return kto.sampler.progress();
        }
        self.samplers.iter().find(|(t, _)| *t == self.main).map_or(0.0, |(_, s)| s.progress())
    }

    /// The weights of the terms for a step taken with λ values `lambdas`.
    pub fn weights(&self, lambdas: Lambdas) -> Weights {
        Weights {
            sft: self.stage.sft.as_ref().map_or(1.0, |s| s.weight),
            lm: self.stage.lm.as_ref().map_or(1.0, |t| t.weight),
            pref: lambdas.pref,
            safe: lambdas.safe,
        }
    }

    /// The preference term's settings.
    pub fn pref_term(&self) -> Option<PairTerm> {
        self.stage.pref.as_ref().map(|p| PairTerm {
            beta: p.beta,
            loss: match p.loss {
                // A KTO stage trains in `kto.rs` and never reads a pair term.
                PrefLossKind::Sigmoid | PrefLossKind::Robust | PrefLossKind::Kto => PreferenceLoss::Sigmoid,
                PrefLossKind::Ipo => PreferenceLoss::Ipo,
            },
            noise: LabelNoise::of(p),
        })
    }

    /// The safety term's settings when it is a DPO over safe/unsafe pairs.
    pub fn safety_pair_term(&self) -> Option<PairTerm> {
        self.stage.safety.as_ref().filter(|s| s.loss == SafetyLossKind::Dpo).map(|s| PairTerm {
            beta: s.beta,
            loss: PreferenceLoss::Sigmoid,
            noise: LabelNoise::Clean,
        })
    }

    /// One batch of indices from every sampler, in sampling order.
    pub fn draw(&mut self) -> Vec<(Term, Vec<usize>)> {
        self.samplers.iter_mut().map(|(t, s)| (*t, s.next_batch().0)).collect()
    }

    /// The micro-batch of the drawn indices, pairs with their reference log-probs.
    pub fn micro_batch<'a>(&'a self, drawn: &[(Term, Vec<usize>)]) -> MicroBatch<'a> {
        let d = &self.data;
        let cache = &self.cache;
        let pairs = |all: &'a [PairExample], idx: &[usize]| -> Vec<(&'a PairExample, (f64, f64))> {
            idx.iter().map(|&i| (&all[i], cache[&all[i].hash])).collect()
        };
        let mut mb = MicroBatch::default();
        for (term, idx) in drawn {
            match term {
                Term::Sft => mb.sft = idx.iter().map(|&i| d.sft[i].clone()).collect(),
                Term::Lm => mb.lm = idx.iter().map(|&i| d.lm[i].clone()).collect(),
                Term::Pref => mb.pairs = pairs(&d.pairs, idx),
                Term::Unsafe => mb.unsafe_seqs = idx.iter().map(|&i| d.unsafe_seqs[i].clone()).collect(),
                Term::Safety => mb.safety_pairs = pairs(&d.safety_pairs, idx),
                // Scored by the reward model, not the policy's objective (see `rm_batch`).
                Term::Reward => {}
            }
        }
        mb
    }
}

/// What a step's objective is made of besides its data: the terms' weights and settings and
/// the padding id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Objective {
    pub weights: Weights,
    pub pref: Option<PairTerm>,
    pub safety_pair: Option<PairTerm>,
    pub pad_id: u32,
    /// (run seed, global step) of the LoRA dropout masks; `None` draws none (no LoRA dropout,
    /// or a benchmark).
    pub dropout: Option<(u64, u64)>,
}

/// The seed of micro-batch `micro`'s LoRA dropout masks at global step `step`.
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    use crate::rng::splitmix64;
    splitmix64(splitmix64(seed ^ 0x4472_6F70_4F75_7453).wrapping_add(step)).wrapping_add(micro as u64)
}

/// The forward and backward passes of one step: each micro-batch through `policy` and
/// backward (its loss divided by their number, times NaN when `inject_nan`), the gradients of
/// `opt`'s parameters summed. `hone run` and `hone bench` both step through this function and
/// [`apply_update`], so the benchmark times the trainer's own code.
pub(crate) fn forward_backward(
    policy: &Model,
    opt: &AdamW,
    micro_batches: &[MicroBatch<'_>],
    objective: Objective,
    inject_nan: bool,
) -> Result<StepSums, TrainError> {
    let accum = micro_batches.len().max(1);
    let mut sums = StepSums::new(opt.params().len(), accum);
    for (micro, mb) in micro_batches.iter().enumerate() {
        let Objective { weights, pref, safety_pair, pad_id, dropout } = objective;
        // LoRA dropout masks: a function of (seed, step, micro-batch), so a resume replays them.
        policy.set_dropout_seed(dropout.map(|(seed, step)| dropout_seed(seed, step, micro)));
        let out = evaluate(policy.decoder(), mb, weights, pref, safety_pair, pad_id);
        policy.set_dropout_seed(None);
        let out = out?;
        let mut loss = (&out.loss / accum as f64)?;
        if inject_nan {
            loss = (loss * f64::NAN)?;
        }
        let store = policy.decoder().backward(&loss)?;
        sums.add(&loss, out)?;
        sums.add_grads(opt, &store)?;
    }
    Ok(sums)
}

/// The AdamW update of a step's summed gradients, clipped to a global norm of `max_grad_norm`
/// (`norm` is theirs; 0 or less turns clipping off).
pub(crate) fn apply_update(opt: &mut AdamW, sums: &StepSums, norm: f64, max_grad_norm: f64) -> Result<(), TrainError> {
    let scale = if max_grad_norm > 0.0 { clip_coefficient(norm, max_grad_norm) } else { 1.0 };
    opt.step_with(&sums.grads, scale)?;
    Ok(())
}

/// The main term of a stage's data: reward-model pairs if any (such a stage has nothing else),
/// then preference pairs, else the safety term, else plain
/// text when there is no SFT data, else SFT.
pub(crate) fn main_term(data: &StageData) -> Term {
    if !data.rm_pairs.is_empty() {
        Term::Reward
    } else if !data.pairs.is_empty() {
        Term::Pref
    } else if !data.unsafe_seqs.is_empty() {
        Term::Unsafe
    } else if !data.safety_pairs.is_empty() {
        Term::Safety
    } else if data.sft.is_empty() && !data.lm.is_empty() {
        Term::Lm
    } else {
        Term::Sft
    }
}

/// How many examples `term` has in `data`.
pub(crate) fn term_len(data: &StageData, term: Term) -> usize {
    match term {
        Term::Sft => data.sft.len(),
        Term::Lm => data.lm.len(),
        Term::Pref => data.pairs.len(),
        Term::Unsafe => data.unsafe_seqs.len(),
        Term::Safety => data.safety_pairs.len(),
        Term::Reward => data.rm_pairs.len(),
    }
}

/// Example lengths in tokens of `term` in `data` (what its sampler groups batches by).
pub(crate) fn term_lengths(data: &StageData, term: Term) -> Vec<usize> {
    match term {
        Term::Sft => data.sft.iter().map(|s| s.ids.len()).collect(),
        Term::Lm => data.lm.iter().map(|s| s.ids.len()).collect(),
        Term::Pref => data.pairs.iter().map(PairExample::num_tokens).collect(),
        Term::Unsafe => data.unsafe_seqs.iter().map(|s| s.ids.len()).collect(),
        Term::Safety => data.safety_pairs.iter().map(PairExample::num_tokens).collect(),
        Term::Reward => data.rm_pairs.iter().map(RmPair::num_tokens).collect(),
    }
}

/// What one step accumulates over its micro-batches: the loss and each term's part (each
/// micro-batch contributes `1/accum`), reward rows, tokens, and the summed gradients.
pub(crate) struct StepSums {
    pub loss: f64,
    pub sft: Option<f64>,
    pub lm: Option<f64>,
    pub pref: Option<f64>,
    pub safe: Option<f64>,
    pub rewards: Vec<RewardRow>,
    /// A reward-model step's `loss/rm` and the scores `(r_c, r_r)` of its pairs.
    pub rm: Option<f64>,
    pub rm_scores: Vec<(f64, f64)>,
    pub tokens: usize,
    pub grads: Vec<Option<Tensor>>,
    accum: f64,
}

impl StepSums {
    /// Empty sums for `params` parameters over `accum` micro-batches.
    pub fn new(params: usize, accum: usize) -> Self {
        Self {
            loss: 0.0,
            sft: None,
            lm: None,
            pref: None,
            safe: None,
            rewards: Vec::new(),
            rm: None,
            rm_scores: Vec::new(),
            tokens: 0,
            grads: vec![None; params],
            accum: accum as f64,
        }
    }

    /// Adds one micro-batch's outcome (whose loss is already divided by `accum` into `loss`).
    pub fn add(&mut self, loss: &Tensor, out: Outcome) -> Result<(), TrainError> {
        self.loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let accum = self.accum;
        let add = |acc: Option<f64>, v: Option<f64>| v.map(|v| acc.unwrap_or(0.0) + v / accum).or(acc);
        self.sft = add(self.sft, out.sft);
        self.lm = add(self.lm, out.lm);
        self.pref = add(self.pref, out.pref);
        self.safe = add(self.safe, out.safe);
        self.rewards.extend(out.rewards);
        self.tokens += out.tokens;
        Ok(())
    }

    /// Adds one reward-model micro-batch: its loss (already divided by `accum`), the scores of
    /// its pairs and the tokens scored.
    pub fn add_rm(&mut self, loss: &Tensor, scores: Vec<(f64, f64)>, tokens: usize) -> Result<(), TrainError> {
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.loss += l;
        self.rm = Some(self.rm.unwrap_or(0.0) + l);
        self.rm_scores.extend(scores);
        self.tokens += tokens;
        Ok(())
    }

    /// Adds the gradients of one backward pass.
    pub fn add_grads(&mut self, opt: &AdamW, store: &GradStore) -> Result<(), TrainError> {
        for (slot, g) in self.grads.iter_mut().zip(gradients_of(opt.params(), store)) {
            *slot = match (slot.take(), g) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
        Ok(())
    }

    /// The loss fields of a `metrics` event: the total, each term, the weighted terms, the λ
    /// values and, with pairs, TRL's reward statistics.
    pub fn loss_fields(&self, lambdas: Lambdas) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("loss".into(), num(self.loss));
        for (key, v) in
            [("loss/sft", self.sft), ("loss/lm", self.lm), ("loss/pref", self.pref), ("loss/safe", self.safe)]
        {
            if let Some(v) = v {
                m.insert(key.into(), num(v));
            }
        }
        if let Some(p) = self.pref {
            m.insert("weighted/pref".into(), num(lambdas.pref * p));
        }
        if let Some(s) = self.safe {
            m.insert("weighted/safe".into(), num(lambdas.safe * s));
        }
        if let Some(rm) = self.rm {
            // TRL's RewardTrainer metrics over the step's pairs (`rewards/margins` is its `margin`).
            m.insert("loss/rm".into(), num(rm));
            let n = self.rm_scores.len().max(1) as f64;
            let mean = |f: &dyn Fn(&(f64, f64)) -> f64| self.rm_scores.iter().map(f).sum::<f64>() / n;
            m.insert("rewards/chosen".into(), num(mean(&|r| r.0)));
            m.insert("rewards/rejected".into(), num(mean(&|r| r.1)));
            m.insert("rewards/margins".into(), num(mean(&|r| r.0 - r.1)));
            m.insert("accuracy".into(), num(mean(&|r| if r.0 > r.1 { 1.0 } else { 0.0 })));
        }
        m.insert("lambda/pref".into(), json!(lambdas.pref));
        m.insert("lambda/safe".into(), json!(lambdas.safe));
        if !self.rewards.is_empty() {
            let n = self.rewards.len() as f64;
            let mean = |f: &dyn Fn(&RewardRow) -> f64| self.rewards.iter().map(f).sum::<f64>() / n;
            m.insert("rewards/chosen".into(), num(mean(&|r| r.0)));
            m.insert("rewards/rejected".into(), num(mean(&|r| r.1)));
            m.insert("rewards/margins".into(), num(mean(&|r| r.0 - r.1)));
            m.insert("rewards/accuracies".into(), num(mean(&|r| if r.0 > r.1 { 1.0 } else { 0.0 })));
            m.insert("logps/chosen".into(), num(mean(&|r| r.2)));
            m.insert("logps/rejected".into(), num(mean(&|r| r.3)));
        }
        m
    }
}

/// A number for an event: non-finite values become `null` (JSON has no NaN).
pub(crate) fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// Where DPO's reference log-probs come from.
pub enum Reference {
    /// A model of its own: `pref.reference`, or the weights the stage started from.
    Model(Box<Model>),
    /// The policy's frozen base with its LoRA adapters switched off (as TRL does with a PEFT
    /// model): no second model in memory.
    PolicyBase,
}

impl Reference {
    /// Runs `f` on the reference's network: its own model, or the policy with its adapters off
    /// for the length of the call.
    pub fn with_decoder<T, E>(&self, policy: &Model, f: impl FnOnce(&Decoder) -> Result<T, E>) -> Result<T, E> {
        self.with_model(policy, |model| f(model.decoder()))
    }

    /// Fills `cache` with the reference log-probs of `pairs` (see [`fill_reference_cache`]).
    pub fn score(
        &self,
        policy: &Model,
        pairs: &[&PairExample],
        pad: u32,
        cache: &mut RefCache,
        between: &mut Between<'_>,
    ) -> Result<std::ops::ControlFlow<()>, TrainError> {
        self.with_model(policy, |model| fill_reference_cache(model, pairs, pad, cache, between))
    }

    /// Scores `pairs` in order into `cache`, telling `after` each batch (see
    /// [`fill_reference_slice`]).
    pub fn score_slice(
        &self,
        policy: &Model,
        pairs: &[&PairExample],
        pad: u32,
        cache: &mut RefCache,
        after: &mut AfterBatch<'_>,
    ) -> Result<std::ops::ControlFlow<()>, TrainError> {
        self.with_model(policy, |model| fill_reference_slice(model, pairs, pad, cache, after))
    }

    /// Runs `f` on the reference as a whole model: its own, or the policy with its adapters off
    /// for the length of the call.
    fn with_model<T>(&self, policy: &Model, f: impl FnOnce(&Model) -> T) -> T {
        match self {
            Self::Model(model) => f(model),
            Self::PolicyBase => {
                policy.set_adapters_enabled(false);
                let out = f(policy);
                policy.set_adapters_enabled(true);
                out
            }
        }
    }

    /// What the reference is, for the key of its stored log-probs: the numbers stored under one
    /// key were computed by the same network.
    pub fn describe(&self, stage: &crate::config::Stage) -> String {
        match (self, stage.pref.as_ref().and_then(|p| p.reference.as_ref())) {
            (Self::PolicyBase, _) => "the policy's base".to_string(),
            (Self::Model(_), Some(dir)) => format!("pref.reference {}", dir.display()),
            (Self::Model(_), None) => "the stage's starting weights".to_string(),
        }
    }
}
