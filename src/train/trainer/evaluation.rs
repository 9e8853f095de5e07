//! Evaluation inside a pipeline and the gates: a stage's policy evaluated on the suite (and,
//! with `[eval] best_of`, its reranked best-of-n answers), the report saved through the host,
//! and the gates' decision acted on (deploy exports, iterate names the failing gates).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use serde_json::{json, Map, Value};

use super::control;
use super::stage::num;
use super::{Host, Trainer};
use crate::config::{BestOf, EvalSettings, Pipeline};
use crate::eval::{read_suite, Contamination, Decision, EvalItem, Judge, Report};
use crate::kind;
use crate::model::RewardModel;
use crate::train::evaluate::{
    evaluate_best_of, evaluate_stage, training_prompts, Answerer, EvalContext, HumanInputs, StageEval,
};
use crate::train::TrainError;

/// The suite, judge and contamination set of a pipeline with an `[eval]` table, and the
/// evaluations made so far (the baseline among them).
pub(super) struct EvalSetup {
    pub(super) settings: EvalSettings,
    items: Vec<EvalItem>,
    judge: Judge,
    contamination: Contamination,
    pub(super) done: HashMap<String, StageEval>,
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

impl<H: Host> Trainer<'_, H> {
    pub(super) fn eval_setup(
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
    pub(super) fn evaluate(&mut self, stage: &str) -> Result<ControlFlow<(), Option<Decision>>, TrainError> {
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
        let control::Phase { mut interrupts, policy, tokenizer, template } = self.phase();
        let mut between = |done, total| interrupts.between_batches(stage, "eval", (done, total));
        let result = evaluate_stage(
            ctx,
            Answerer { model: policy, tok: tokenizer, template },
            (stage, &checkpoint),
            baseline,
            &mut between,
        )?;
        let Some(result) = result else { return Ok(None) };
        let mut f = eval_fields(&result.report, result.failures.len(), started.elapsed().as_secs_f64());
        self.add_round(&mut f);
        self.host.save_eval(stage, &result)?;
        self.host.emit(kind::EVAL_FINISHED, Some(stage), Some(step), f)?;
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
        let control::Phase { mut interrupts, policy, tokenizer, template } = self.phase();
        let mut between = |done, total| interrupts.between_batches(stage, "eval", (done, total));
        let names = (name.as_str(), checkpoint.as_str());
        let result = evaluate_best_of(
            ctx,
            Answerer { model: policy, tok: tokenizer, template },
            (reward, best_of),
            names,
            baseline,
            &mut between,
        )?;
        let Some(result) = result else { return Ok(None) };
        let f = eval_fields(&result.report, result.failures.len(), started.elapsed().as_secs_f64());
        self.host.save_eval(&name, &result)?;
        self.host.emit(kind::EVAL_FINISHED, Some(&name), Some(step), f)?;
        Ok(Some(result))
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
                self.host.emit(kind::GATE_DECIDED, Some(stage), Some(step), g)
            }
            Decision::Iterate { failing } => {
                g.insert("decision".into(), json!("iterate"));
                g.insert("failing".into(), json!(failing));
                self.host.emit(kind::GATE_DECIDED, Some(stage), Some(step), g.clone())?;
                self.host.emit(kind::ITERATE, Some(stage), Some(step), g)
            }
            Decision::Incomplete { missing } => {
                g.insert("decision".into(), json!("incomplete"));
                g.insert("missing".into(), json!(missing));
                self.host.emit(kind::GATE_DECIDED, Some(stage), Some(step), g)
            }
        }
    }
}
