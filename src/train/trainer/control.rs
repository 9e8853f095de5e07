//! The trainer's step boundary: control commands (pause, resume, stop, skip, λ changes,
//! checkpoint now, candidate generation), their replay on resume, and live samples.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::stage::{Lambdas, StageRun};
use super::{Host, Trainer, TrainerState};
use crate::config::Stage;
use crate::control::{LambdaTerm, Request, Status};
use crate::data::{
    encode_generation_prompt, read_records_with_lines, ChatTemplate, Message, Records, SftRecord, Text, TextTokenizer,
};
use crate::kind;
use crate::model::generate::{generate, Sampling};
use crate::model::Model;
use crate::train::TrainError;

/// How long one wait for a command lasts while paused (a stop signal is noticed this quickly).
const PAUSE_POLL: Duration = Duration::from_millis(200);
/// Prompts answered by live samples when `[run] sample_prompts` is empty: the stage's first few.
pub const DEFAULT_SAMPLE_PROMPTS: usize = 3;

/// What the step loop does after a boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Boundary {
    /// Train the next step.
    Train,
    /// Checkpoint and end the run.
    Stop,
    /// End the stage now.
    Skip,
}

/// The prompts of a stage, in data order (preference, then SFT, then safety files), deduplicated.
pub fn stage_prompts(stage: &Stage, pref_files: &[PathBuf]) -> Result<Vec<Text>, TrainError> {
    let mut files: Vec<&PathBuf> = pref_files.iter().collect();
    files.extend(stage.sft.iter().flat_map(|t| t.data.iter()));
    files.extend(stage.safety.iter().flat_map(|t| t.data.iter()));
    let mut out: Vec<Text> = Vec::new();
    for path in files {
        if !path.exists() {
            continue;
        }
        let (records, _) = read_records_with_lines(path)?;
        let found: Vec<Text> = match records {
            Records::Preference(recs) => recs.into_iter().map(|r| r.prompt).collect(),
            Records::Safety(recs) => recs.into_iter().map(|r| r.prompt).collect(),
            Records::Sft(recs) => recs
                .into_iter()
                .filter_map(|r| match r {
                    SftRecord::Messages(m) => {
                        let first = m.iter().position(|m| m.role == "assistant")?;
                        (first > 0).then(|| Text::Messages(m[..first].to_vec()))
                    }
                    SftRecord::PromptCompletion { prompt, .. } => Some(prompt),
                })
                .collect(),
        };
        for t in found {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// A prompt as TRL writes it: a string, or a list of `{role, content}` messages.
fn prompt_json(t: &Text) -> Value {
    match t {
        Text::Plain(s) => json!(s),
        Text::Messages(m) => json!(m.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>()),
    }
}

/// A prompt as one line of text for the dashboard: the last message's content.
fn prompt_display(t: &Text) -> String {
    match t {
        Text::Plain(s) => s.clone(),
        Text::Messages(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
    }
}

/// A seed for candidate `response` of prompt `index` at `step`, from the run's seed.
fn candidate_seed(seed: u64, step: u64, index: usize, response: u64) -> u64 {
    let mut x = seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= response.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The stage's prompts, read on first use.
fn cached_prompts(run: &mut StageRun) -> Result<&[Text], TrainError> {
    if run.prompts.is_none() {
        run.prompts = Some(stage_prompts(&run.stage, &run.static_files)?);
    }
    Ok(run.prompts.as_deref().unwrap_or_default())
}

impl<H: Host> Trainer<'_, H> {
    pub(super) fn position(&self, state: &'static str, stage: Option<&str>, lambdas: Option<Lambdas>) -> Status {
        position_of(&self.state, state, stage, lambdas)
    }

    /// Everything between two steps: controls replayed from a previous worker, then every
    /// pending command; while paused, waits here for commands without using the CPU.
    pub(super) fn boundary(&mut self, run: &mut StageRun) -> Result<Boundary, TrainError> {
        let step = self.state.global_step;
        let due: Vec<Request> = {
            let (now, later): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.planned).into_iter().partition(|p| p.stage == run.name() && p.step == step);
            self.planned = later;
            now.into_iter().map(|p| p.control).collect()
        };
        for control in due {
            if self.apply(run, control, true)? == Boundary::Skip {
                return Ok(Boundary::Skip);
            }
        }
        loop {
            let state = if self.paused { "paused" } else { "running" };
            let position = self.position(state, Some(run.name()), Some(run.lambdas));
            self.host.publish(&position);
            let wait = self.paused.then_some(PAUSE_POLL);
            let Some(control) = self.deferred.pop_front().or_else(|| self.host.next_control(wait)) else {
                if !self.paused || self.host.stop_requested() {
                    break;
                }
                continue;
            };
            match self.interrupts().react(control, run.name())? {
                Reaction::Stopped => break,
                Reaction::Other(other) => {
                    if self.apply(run, other, false)? == Boundary::Skip {
                        return Ok(Boundary::Skip);
                    }
                    if self.stop {
                        break;
                    }
                }
                Reaction::Paused | Reaction::Done => {}
            }
        }
        if self.stop || self.host.stop_requested() {
            self.stopping(run.name(), Some(run.lambdas))?;
            return Ok(Boundary::Stop);
        }
        Ok(Boundary::Train)
    }

    /// A stop is taking effect: a pause ends, the position says `stopping`.
    fn stopping(&mut self, stage: &str, lambdas: Option<Lambdas>) -> Result<(), TrainError> {
        if self.paused {
            self.paused = false;
            self.unpaused(stage)?;
        }
        let position = self.position("stopping", Some(stage), lambdas);
        self.host.publish(&position);
        Ok(())
    }

    /// Between two batches of a long phase (see [`Interrupts::between_batches`]).
    pub(super) fn between_batches(
        &mut self,
        stage: &str,
        phase: &str,
        progress: (usize, usize),
    ) -> Result<ControlFlow<()>, TrainError> {
        self.interrupts().between_batches(stage, phase, progress)
    }

    /// What a long phase needs to honour stop and pause between its batches.
    pub(super) fn interrupts(&mut self) -> Interrupts<'_, H> {
        self.phase().interrupts
    }

    /// A long phase's borrows at once: the interrupts, and apart from them the policy with its
    /// tokenizer and template (which an evaluation or the reference scoring uses meanwhile).
    pub(super) fn phase(&mut self) -> Phase<'_, H> {
        Phase {
            interrupts: Interrupts {
                host: &mut *self.host,
                paused: &mut self.paused,
                stop: &mut self.stop,
                deferred: &mut self.deferred,
                state: &self.state,
            },
            policy: &self.policy,
            tokenizer: &self.tokenizer,
            template: self.template.as_ref(),
        }
    }

    /// The end of a pause, logged as `resumed` at the current step (nothing after it to supersede).
    fn unpaused(&mut self, stage: &str) -> Result<(), TrainError> {
        emit_unpaused(&mut *self.host, stage, self.state.global_step)
    }

    fn apply(&mut self, run: &mut StageRun, control: Request, replayed: bool) -> Result<Boundary, TrainError> {
        let step = self.state.global_step;
        let mut f = Map::new();
        match control {
            Request::SetLambda { term, value } => {
                let slot = match term {
                    LambdaTerm::Pref => &mut run.lambdas.pref,
                    LambdaTerm::Safe => &mut run.lambdas.safe,
                };
                let from = *slot;
                *slot = value;
                f.insert("lambda".into(), json!(term.as_str()));
                f.insert("from".into(), json!(from));
                f.insert("to".into(), json!(value));
                f.insert("reason".into(), json!("control"));
                if replayed {
                    f.insert("replayed".into(), json!(true));
                }
                self.host.emit(kind::LAMBDA_CHANGED, Some(run.name()), Some(step), f)?;
            }
            Request::SkipStage { stage } => {
                if let Some(meant) = stage.filter(|s| s != run.name()) {
                    f.insert(
                        "message".into(),
                        json!(format!("skip_stage for stage {meant:?} ignored: stage {:?} is running", run.name())),
                    );
                    self.host.emit(kind::WARNING, Some(run.name()), Some(step), f)?;
                    return Ok(Boundary::Train);
                }
                f.insert("stage_step".into(), json!(self.state.stage_step));
                f.insert("total_steps".into(), json!(self.state.stage_total));
                if replayed {
                    f.insert("replayed".into(), json!(true));
                }
                self.host.emit(kind::STAGE_SKIPPED, Some(run.name()), Some(step), f)?;
                return Ok(Boundary::Skip);
            }
            Request::CheckpointNow => {
                if self.last_checkpoint == Some(step) {
                    f.insert("message".into(), json!(format!("checkpoint_now: step {step} is already checkpointed")));
                    self.host.emit(kind::WARNING, Some(run.name()), Some(step), f)?;
                } else {
                    self.checkpoint(run)?;
                }
            }
            Request::GenerateCandidates { count } => self.candidates(run, count)?,
            Request::Pause | Request::Resume | Request::Stop | Request::Status => {}
        }
        Ok(Boundary::Train)
    }

    /// `generate_candidates`: two samples (temperature 1, the policy's own distribution) per
    /// prompt for `count` prompts, continuing through the stage's prompts from the last request.
    fn candidates(&mut self, run: &mut StageRun, count: usize) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let all = cached_prompts(run)?.to_vec();
        if all.is_empty() {
            let mut f = Map::new();
            f.insert("message".into(), json!("generate_candidates: the stage has no prompts"));
            return self.host.emit(kind::WARNING, Some(run.name()), Some(step), f);
        }
        let stops = self.policy.generation.eos_token_ids.clone();
        let mut lines = Vec::new();
        let wanted = count.min(all.len());
        let mut interrupted = false;
        for i in 0..wanted {
            if i > 0 && self.between_batches(run.name(), "candidates", (i, wanted))?.is_break() {
                interrupted = true;
                break;
            }
            let index = (self.candidate_cursor + i) % all.len();
            let prompt = &all[index];
            let ids = encode_generation_prompt(&self.tokenizer, self.template.as_ref(), prompt)?;
            let mut responses = Vec::new();
            for r in 0..2u64 {
                let sampling = Sampling {
                    temperature: 1.0,
                    top_p: 1.0,
                    seed: candidate_seed(self.pipeline.run.seed, step, index, r),
                    max_new_tokens: self.pipeline.run.sample_max_tokens,
                };
                let out = generate(&self.policy, &ids, &stops, &sampling)?;
                responses.push(self.tokenizer.decode(&out.new_token_ids, true)?);
            }
            lines.push(json!({
                "prompt": prompt_json(prompt),
                "responses": responses,
                "source": "policy",
                "step": step,
                "stage": run.name(),
            }));
        }
        self.candidate_cursor = (self.candidate_cursor + lines.len()) % all.len();
        let file = self.host.save_candidates(&lines)?;
        let mut f = Map::new();
        f.insert("count".into(), json!(lines.len()));
        f.insert("responses_per_prompt".into(), json!(2));
        if interrupted {
            f.insert("interrupted".into(), json!(true));
        }
        if let Some(file) = file {
            f.insert("file".into(), json!(file));
        }
        self.host.emit(kind::CANDIDATES_GENERATED, Some(run.name()), Some(step), f)
    }

    /// Live samples: greedy answers to the fixed prompts (`[run] sample_prompts`, or the stage's
    /// first few), one `sample` event each. A stop between two answers ends them there (the step
    /// is done; the next boundary checkpoints it and stops); a pause waits there.
    pub(super) fn live_samples(&mut self, run: &mut StageRun) -> Result<(), TrainError> {
        let every = self.pipeline.run.sample_every;
        let step = self.state.global_step;
        if every == 0 || step % every != 0 {
            return Ok(());
        }
        let fixed: Vec<Text> = if self.pipeline.run.sample_prompts.is_empty() {
            cached_prompts(run)?.iter().take(DEFAULT_SAMPLE_PROMPTS).cloned().collect()
        } else {
            let as_chat = self.template.is_some();
            self.pipeline
                .run
                .sample_prompts
                .iter()
                .map(|p| if as_chat { Text::Messages(vec![Message::new("user", p)]) } else { Text::Plain(p.clone()) })
                .collect()
        };
        let stops = self.policy.generation.eos_token_ids.clone();
        let sampling = Sampling { max_new_tokens: self.pipeline.run.sample_max_tokens, ..Sampling::default() };
        for (i, prompt) in fixed.iter().enumerate() {
            if i > 0 && self.between_batches(run.name(), "samples", (i, fixed.len()))?.is_break() {
                break;
            }
            let ids = encode_generation_prompt(&self.tokenizer, self.template.as_ref(), prompt)?;
            let out = generate(&self.policy, &ids, &stops, &sampling)?;
            let mut f = Map::new();
            f.insert("prompt".into(), json!(prompt_display(prompt)));
            f.insert("response".into(), json!(self.tokenizer.decode(&out.new_token_ids, true)?));
            self.host.emit(kind::SAMPLE, Some(run.name()), Some(step), f)?;
        }
        Ok(())
    }
}

/// See [`Trainer::phase`].
pub(super) struct Phase<'t, H: Host> {
    pub interrupts: Interrupts<'t, H>,
    pub policy: &'t Model,
    pub tokenizer: &'t TextTokenizer,
    pub template: Option<&'t ChatTemplate>,
}

/// What [`Interrupts::react`] did with a command.
enum Reaction {
    /// Paused now.
    Paused,
    /// Stop requested: the phase or step loop ends.
    Stopped,
    /// A command for the step boundary.
    Other(Request),
    /// Nothing more to do (resumed, or a pause or resume that changed nothing).
    Done,
}

/// The trainer's fields a long phase uses between its batches (see [`Trainer::interrupts`]).
pub(super) struct Interrupts<'t, H: Host> {
    pub host: &'t mut H,
    pub paused: &'t mut bool,
    pub stop: &'t mut bool,
    pub deferred: &'t mut VecDeque<Request>,
    pub state: &'t TrainerState,
}

impl<H: Host> Interrupts<'_, H> {
    fn publish(&mut self, state: &'static str, stage: &str) {
        self.host.publish(&position_of(self.state, state, Some(stage), None));
    }

    /// Pause, resume and stop, handled the same at a step boundary and between the batches of
    /// a long phase; any other command is given back.
    fn react(&mut self, control: Request, stage: &str) -> Result<Reaction, TrainError> {
        let step = self.state.global_step;
        match control {
            Request::Pause if !*self.paused => {
                *self.paused = true;
                self.host.emit(kind::PAUSED, Some(stage), Some(step), Map::new())?;
                Ok(Reaction::Paused)
            }
            Request::Resume if *self.paused => {
                self.unpaused(stage)?;
                Ok(Reaction::Done)
            }
            Request::Pause | Request::Resume => Ok(Reaction::Done),
            Request::Stop => {
                *self.stop = true;
                let mut f = Map::new();
                f.insert("source".into(), json!("control"));
                self.host.emit(kind::STOP_REQUESTED, Some(stage), Some(step), f)?;
                Ok(Reaction::Stopped)
            }
            other => Ok(Reaction::Other(other)),
        }
    }

    fn unpaused(&mut self, stage: &str) -> Result<(), TrainError> {
        *self.paused = false;
        emit_unpaused(&mut *self.host, stage, self.state.global_step)
    }

    /// Between two batches of a long phase (`phase`: `reference` log-probs, `eval`,
    /// `candidates`, `samples`) of `stage`, `done` of `total` items complete: pending stop and pause
    /// commands and the stop signal take effect here; a pause waits here (without using the
    /// CPU) for resume or stop. Other commands wait for the next step boundary. On `Break` the
    /// phase ends now and the run stops; a `phase_interrupted` event says where.
    pub fn between_batches(
        &mut self,
        stage: &str,
        phase: &str,
        (done, total): (usize, usize),
    ) -> Result<ControlFlow<()>, TrainError> {
        let step = self.state.global_step;
        loop {
            let wait = self.paused.then_some(PAUSE_POLL);
            let Some(control) = self.host.next_control(wait) else {
                if !*self.paused || self.host.stop_requested() {
                    break;
                }
                continue;
            };
            match self.react(control, stage)? {
                Reaction::Paused => self.publish("paused", stage),
                Reaction::Stopped => break,
                Reaction::Other(other) => self.deferred.push_back(other),
                Reaction::Done => {}
            }
        }
        if !(*self.stop || self.host.stop_requested()) {
            return Ok(ControlFlow::Continue(()));
        }
        *self.stop = true;
        if *self.paused {
            self.unpaused(stage)?;
        }
        self.publish("stopping", stage);
        let mut f = Map::new();
        f.insert("phase".into(), json!(phase));
        f.insert("done".into(), json!(done));
        f.insert("total".into(), json!(total));
        self.host.emit(kind::PHASE_INTERRUPTED, Some(stage), Some(step), f)?;
        Ok(ControlFlow::Break(()))
    }
}

/// Where the trainer stands in `trainer`'s terms, `state` being what it is doing.
fn position_of(trainer: &TrainerState, state: &'static str, stage: Option<&str>, lambdas: Option<Lambdas>) -> Status {
    Status {
        pid: std::process::id(),
        state: state.to_string(),
        stage: stage.map(String::from),
        step: trainer.global_step,
        stage_step: trainer.stage_step,
        stage_total: trainer.stage_total,
        lambda_pref: lambdas.map(|l| l.pref),
        lambda_safe: lambdas.map(|l| l.safe),
        // The host's queue knows what is pending.
        pending: 0,
    }
}

/// The end of a pause at `step`, logged as `resumed` (nothing after it to supersede): at a step
/// boundary and between the batches of a long phase alike.
fn emit_unpaused<H: Host>(host: &mut H, stage: &str, step: u64) -> Result<(), TrainError> {
    let mut f = Map::new();
    f.insert("from_step".into(), json!(step));
    f.insert("reason".into(), json!("unpause"));
    f.insert("pid".into(), json!(std::process::id()));
    host.emit(kind::RESUMED, Some(stage), Some(step), f)
}
