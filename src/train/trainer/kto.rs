//! A KTO stage (`pref.loss = "kto"`): trains on thumbs-up/down labels of single responses (TRL's
//! unpaired `{"prompt", "completion", "label"}` records) with TRL's KTO loss. Each micro-batch is
//! scored by the policy and the frozen reference on its examples and on TRL's mismatched KL pairs
//! (each prompt with the previous example's completion), whose detached log-ratio is the batch's
//! KL estimate. Thumbs the labeling pane appends to a live labels file join at the next step
//! boundary (`labels_admitted`), as pairs join a DPO stage; undone or disputed ones leave.

use std::time::Instant;

use serde_json::{json, Map};

use super::stage::{num, Lambdas, StageRun, StepSums, Term};
use super::step::StepDone;
use super::{Host, Trainer};
use crate::config::Stage;
use crate::data::labels::{text_key, LabelLog};
use crate::data::{encode_sft, read_thumbs, read_thumbs_for_kto, ChatTemplate, SftRecord, TextTokenizer, ThumbsRecord};
use crate::kind;
use crate::train::batch::{Sequence, TokenBatch};
use crate::train::live::{LiveKind, LiveLabels};
use crate::train::loss::{per_sequence_sum, target_logps};
use crate::train::optim::{global_norm, AdamW};
use crate::train::plan::{RefCache, StageData};
use crate::train::rl::{kl_completion_order, kto_loss, KtoConfig, KtoInputs};
use crate::train::sampler::Sampler;
use crate::train::TrainError;

/// The name of the example sampler in `trainer_state.json`.
const SAMPLER: &str = "kto";

/// One thumbs label, tokenized.
#[derive(Debug, Clone)]
pub(crate) struct KtoExample {
    prompt: Vec<u32>,
    completion: Vec<u32>,
    label: bool,
}

impl KtoExample {
    fn sequence_with(&self, completion: &[u32]) -> Sequence {
        let ids: Vec<u32> = self.prompt.iter().chain(completion).copied().collect();
        Sequence::with_completion_from(ids, self.prompt.len())
    }
}

/// One micro-batch's KTO numbers: KL estimate, mean chosen and rejected rewards, mean chosen and
/// rejected log-probs (`None` without examples of that label).
type BatchStats = (f64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// Thumbs labels, for KTO: what a KTO stage's live labels files admit.
pub(crate) struct Thumbs;

impl LiveKind for Thumbs {
    type Record = ThumbsRecord;
    type Example = KtoExample;

    fn resolve(log: &LabelLog) -> (Vec<(String, ThumbsRecord)>, Vec<String>) {
        log.resolve_thumbs()
    }

    fn key(rec: &ThumbsRecord) -> String {
        serde_json::to_string(&(text_key(&rec.prompt), text_key(&rec.completion), rec.label)).unwrap_or_default()
    }

    fn example(
        tok: &TextTokenizer,
        template: Option<&ChatTemplate>,
        rec: &ThumbsRecord,
        max_len: usize,
    ) -> Result<Option<KtoExample>, TrainError> {
        kto_example(tok, template, rec, max_len)
    }
}

/// What a KTO stage keeps between steps.
pub(crate) struct KtoRun {
    beta: f64,
    examples: Vec<KtoExample>,
    live: LiveLabels<Thumbs>,
    /// Which examples each micro-batch takes, saved in checkpoints.
    pub sampler: Sampler,
}

/// Tokenizes one thumbs record; `None` when it does not fit `max_length` or has no completion
/// token.
fn kto_example(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    rec: &ThumbsRecord,
    max: usize,
) -> Result<Option<KtoExample>, TrainError> {
    let record = SftRecord::PromptCompletion { prompt: rec.prompt.clone(), completion: rec.completion.clone() };
    let ex = encode_sft(tok, template, &record)?;
    let Some(start) = ex.loss_mask.iter().position(|&m| m) else { return Ok(None) };
    if ex.input_ids.len() > max || start == 0 {
        return Ok(None);
    }
    Ok(Some(KtoExample {
        prompt: ex.input_ids[..start].to_vec(),
        completion: ex.input_ids[start..].to_vec(),
        label: rec.label,
    }))
}

impl<H: Host> Trainer<'_, H> {
    /// Makes a KTO stage ready: the static thumbs files (both labels required among them), the
    /// live labels files read so far (on resume, as far as the checkpointed run had read them),
    /// the reference, the optimizer and the sampler.
    pub(super) fn open_kto_stage(&mut self, index: usize, stage: &Stage) -> Result<StageRun, TrainError> {
        let sources = self.host.preference_files(index);
        let statics: Vec<_> = sources.iter().filter(|f| !f.live).map(|f| f.path.clone()).collect();
        let (records, run_examples, dropped) = self.static_thumbs(stage, &statics)?;
        let mut live = LiveLabels::<Thumbs>::new(sources.iter().filter(|f| f.live).map(|f| f.path.clone()).collect());
        let mut examples = run_examples;
        let mut retracted = Vec::new();
        for update in self.initial_reads(stage, &mut live, examples.len())? {
            examples.extend(update.added);
            retracted.extend(update.retracted);
        }
        if examples.is_empty() {
            return Err(TrainError::Data(format!("stage {}: no thumbs labels to train on", stage.name)));
        }
        let total = self.state.stage_total.unwrap_or_else(|| self.total_steps(stage, examples.len()));
        self.state.stage_total = Some(total);
        self.announce_kto_stage(stage, &examples, total, dropped)?;
        let reference = self.reference_model(stage)?;
        let (opt, sampler) = self.kto_optimizer_and_sampler(index, stage, &examples, retracted)?;
        let beta = stage.pref.as_ref().map_or(0.1, |p| p.beta);
        // Live samples and candidates answer the thumbs' prompts.
        let mut prompts: Vec<crate::data::Text> = Vec::new();
        for r in &records {
            if !prompts.contains(&r.prompt) {
                prompts.push(r.prompt.clone());
            }
        }
        Ok(StageRun {
            stage: stage.clone(),
            static_files: statics,
            data: StageData::default(),
            live: LiveLabels::new(Vec::new()),
            plan: self.host.planned_admissions(),
            cache: RefCache::new(),
            reference: Some(reference),
            opt,
            samplers: Vec::new(),
            main: Term::Pref,
            total,
            lambdas: Lambdas { pref: 1.0, safe: 0.0 },
            prompts: Some(prompts),
            grpo: None,
            reward: None,
            kto: Some(Box::new(KtoRun { beta, examples, live, sampler })),
        })
    }

    /// `stage_started` (or `stage_resumed`) with the thumbs' counts, and a warning for records
    /// longer than `max_length`.
    fn announce_kto_stage(
        &mut self,
        stage: &Stage,
        examples: &[KtoExample],
        total: u64,
        dropped: usize,
    ) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let ups = examples.iter().filter(|e| e.label).count();
        let mut f = Map::new();
        f.insert("total_steps".into(), json!(total));
        f.insert(
            "examples".into(),
            json!({ "kto": examples.len(), "desirable": ups, "undesirable": examples.len() - ups }),
        );
        let event = if self.state.stage_step > 0 { kind::STAGE_RESUMED } else { kind::STAGE_STARTED };
        self.host.emit(event, Some(&stage.name), Some(step), f)?;
        if dropped > 0 {
            let mut f = Map::new();
            f.insert(
                "message".into(),
                json!(format!("kto data: {dropped} longer than max_length {} dropped", stage.max_length)),
            );
            self.host.emit(kind::WARNING, Some(&stage.name), Some(step), f)?;
        }
        Ok(())
    }

    /// AdamW over the policy (with the resumed moments) and the thumbs' sampler, `retracted`
    /// examples inactive.
    fn kto_optimizer_and_sampler(
        &mut self,
        index: usize,
        stage: &Stage,
        examples: &[KtoExample],
        retracted: Vec<usize>,
    ) -> Result<(AdamW, Sampler), TrainError> {
        let opt = self.policy_optimizer(stage)?;
        let seed = super::sampler_seed(self.pipeline.run.seed, index, Term::Pref) ^ 0x006b_746f;
        let lengths = examples.iter().map(|e| e.prompt.len() + e.completion.len()).collect();
        let mut sampler = Sampler::new(seed, lengths, stage.batch_size, self.state.samplers.get(SAMPLER).cloned());
        for i in retracted {
            sampler.set_active(i, false);
        }
        Ok((opt, sampler))
    }

    /// The thumbs of the stage's static files (both labels required among them): the records, the
    /// examples that fit `max_length`, and how many did not.
    fn static_thumbs(
        &self,
        stage: &Stage,
        statics: &[std::path::PathBuf],
    ) -> Result<(Vec<ThumbsRecord>, Vec<KtoExample>, usize), TrainError> {
        let mut records: Vec<ThumbsRecord> = Vec::new();
        for path in statics {
            records.extend(read_thumbs(path)?.into_iter().map(|(_, r)| r));
        }
        if !records.is_empty() && records.iter().all(|r| r.label == records[0].label) {
            // Located at the first record of the first file (every file lacks the same label).
            if let Some(first) = statics.first() {
                read_thumbs_for_kto(first)?;
            }
        }
        let mut examples = Vec::new();
        let mut dropped = 0usize;
        for rec in &records {
            match kto_example(&self.tokenizer, self.template.as_ref(), rec, stage.max_length)? {
                Some(ex) => examples.push(ex),
                None => dropped += 1,
            }
        }
        Ok((records, examples, dropped))
    }

    /// Reads the live labels files at this step boundary (where a previous worker of this run
    /// read them, on resume): new agreeing thumbs join the pool, undone or disputed ones leave
    /// it; one `labels_admitted` event says what happened.
    fn admit_live_thumbs(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let Some(kto) = run.kto.as_deref_mut() else { return Ok(()) };
        let update = self.read_at_boundary(&run.stage, &mut kto.live, &run.plan, kto.examples.len())?;
        if update.lines == 0 {
            return Ok(());
        }
        let mut f = update.event_fields();
        f.insert("kind".into(), json!("thumbs"));
        for ex in update.added {
            kto.sampler.add(ex.prompt.len() + ex.completion.len());
            kto.examples.push(ex);
        }
        for i in update.retracted {
            kto.sampler.set_active(i, false);
        }
        self.host.emit(kind::LABELS_ADMITTED, Some(&run.stage.name), Some(step), f)
    }

    /// One KTO optimizer step.
    pub(super) fn kto_step(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
        self.admit_live_thumbs(run)?;
        let step = self.state.global_step;
        let started = Instant::now();
        let lr = self.set_learning_rate(run);
        let stage = &run.stage;
        let accum = stage.grad_accum.max(1);
        let mut sums = StepSums::new(run.opt.params().len(), accum);
        let pad = self.pad_id();
        let device = self.device.clone();
        let (Some(kto), Some(reference)) = (run.kto.as_deref_mut(), run.reference.as_ref()) else {
            return Err(TrainError::Data(format!("stage {}: not a KTO stage", stage.name)));
        };
        let cfg = KtoConfig { beta: kto.beta, ..KtoConfig::default() };
        let mut stats: Vec<BatchStats> = Vec::new();
        for _ in 0..accum {
            let (drawn, _) = kto.sampler.next_batch();
            if drawn.is_empty() {
                continue;
            }
            let n = drawn.len();
            let batch: Vec<&KtoExample> = drawn.iter().map(|&i| &kto.examples[i]).collect();
            let mut seqs: Vec<Sequence> = batch.iter().map(|e| e.sequence_with(&e.completion)).collect();
            for (i, j) in kl_completion_order(n, n).into_iter().enumerate() {
                seqs.push(batch[i].sequence_with(&batch[j].completion));
            }
            let tokens = TokenBatch::new(&seqs, pad, &device)?;
            let policy = per_sequence_sum(&target_logps(self.policy.decoder(), &tokens)?, &tokens)?;
            let reference =
                per_sequence_sum(&reference.with_decoder(&self.policy, |d| target_logps(d, &tokens))?, &tokens)?
                    .detach();
            let labels: Vec<bool> = batch.iter().map(|e| e.label).collect();
            let out = kto_loss(
                &cfg,
                &KtoInputs {
                    policy: &policy.narrow(0, 0, n)?,
                    reference: &reference.narrow(0, 0, n)?,
                    labels: &labels,
                    policy_kl: &policy.narrow(0, n, n)?.detach(),
                    reference_kl: &reference.narrow(0, n, n)?,
                },
            )?;
            self.backward_into(&run.opt, &mut sums, (out.loss / accum as f64)?, step, tokens.real_tokens)?;
            stats.push((out.kl, out.rewards_chosen, out.rewards_rejected, out.logps_chosen, out.logps_rejected));
        }
        let norm = global_norm(&sums.grads)?;
        let done = StepDone { sums: &sums, norm, lr, started };
        self.finish_step(run, &done, || {
            let mean =
                |values: Vec<f64>| (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
            let mut m = Map::new();
            m.insert("loss".into(), num(sums.loss));
            m.insert("loss/pref".into(), num(sums.loss));
            if let Some(kl) = mean(stats.iter().map(|s| s.0).collect()) {
                m.insert("kl".into(), num(kl));
            }
            let chosen = mean(stats.iter().filter_map(|s| s.1).collect());
            let rejected = mean(stats.iter().filter_map(|s| s.2).collect());
            for (key, v) in [
                ("rewards/chosen", chosen),
                ("rewards/rejected", rejected),
                ("rewards/margins", chosen.zip(rejected).map(|(c, r)| c - r)),
                ("logps/chosen", mean(stats.iter().filter_map(|s| s.3).collect())),
                ("logps/rejected", mean(stats.iter().filter_map(|s| s.4).collect())),
            ] {
                if let Some(v) = v {
                    m.insert(key.into(), num(v));
                }
            }
            m
        })
    }
}

/// The KTO sampler's position for a checkpoint, when `run` is a KTO stage.
pub(super) fn sampler_state(run: &StageRun) -> Option<(String, crate::train::sampler::SamplerState)> {
    run.kto.as_ref().map(|k| (SAMPLER.to_string(), k.sampler.state.clone()))
}

/// The consumed prefix of each of a KTO stage's live labels files, for a checkpoint (a resume
/// refuses files whose already-trained part changed).
pub(super) fn consumed_prefixes(run: &StageRun) -> Result<Vec<(String, u64, String)>, TrainError> {
    run.kto.as_ref().map_or(Ok(Vec::new()), |k| k.live.consumed_prefixes())
}
