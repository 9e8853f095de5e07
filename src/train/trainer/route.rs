//! The route through a pipeline: its stages in order, and the rounds of an `[[iterate]]` loop's
//! fix stage where a gate's decision calls for them (the decisions themselves: `train::iterate`).

use std::ops::ControlFlow;

use serde_json::{json, Map, Value};

use super::{Finished, Host, Trainer};
use crate::train::iterate::{next_stage, round_name, sequence_from, Next};
use crate::train::TrainError;

impl<H: Host> Trainer<'_, H> {
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

    /// `round` (and the fix stage's own name) in the fields of a fix stage's events.
    pub(super) fn add_round(&self, fields: &mut Map<String, Value>) {
        if let Some(round) = self.state.round {
            fields.insert("round".into(), json!(round.number));
            if let Some(stage) = self.pipeline.stages.get(self.state.stage_index) {
                fields.insert("fix_stage".into(), json!(stage.name));
            }
        }
    }
}
