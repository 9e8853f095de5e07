//! A stage trained by another engine (`engine = "trl"`): the trainer hands it to the host with the
//! model it starts from, then takes the exported model back as its policy, so the evaluation and
//! the gates that follow are the native stages' own. The engine is fed hone's data order.

use candle_core::DType;

use super::stage::{main_term, sampler_seed, term_lengths, Term};
use super::{Finished, Host, Trainer};
use crate::config::Stage;
use crate::train::host::{DataOrders, ExternalOutcome, ExternalStage, ModelInput};
use crate::train::plan::{load_stage_data, StageData};
use crate::train::sampler::Sampler;
use crate::train::TrainError;

impl<H: Host> Trainer<'_, H> {
    /// Runs stage `index` on its external engine from the current policy; on its end the policy
    /// is the stage's exported model and the global step is the engine's.
    pub(super) fn run_external_stage(&mut self, index: usize, stage: &Stage) -> Result<Finished, TrainError> {
        let mut pipeline = self.pipeline.clone();
        if let (Some(cap), Some(s)) = (self.options.max_steps, pipeline.stages.get_mut(index)) {
            s.max_steps = Some(s.max_steps.map_or(cap, |m| m.min(cap)));
        }
        let model = match &self.policy_dir {
            Some(dir) => ModelInput::Dir(dir.clone()),
            None => ModelInput::Files(self.policy.files(DType::F32)?),
        };
        let step_offset = self.state.global_step;
        let orders = self.data_order(index, &pipeline.stages[index])?;
        let position = self.position("running", Some(&stage.name), None);
        self.host.publish(&position);
        let job = ExternalStage { pipeline: &pipeline, index, model, step_offset, orders };
        match self.host.run_external_stage(job)? {
            ExternalOutcome::Stopped => Ok(Finished::Stopped),
            ExternalOutcome::Finished { model, step } => {
                let policy = self.precision.load(&model, &self.device)?;
                policy.check_tokenizer_len(self.tokenizer.len())?;
                self.policy = policy;
                self.policy_dir = Some(model);
                self.state.stage_step = step.saturating_sub(step_offset);
                self.state.global_step = step.max(step_offset);
                self.state.stage_done = true;
                self.checkpoint_stage_end()?;
                Ok(Finished::Completed)
            }
        }
    }

    /// A native checkpoint of the stage's end, as a native stage saves one: the exported weights
    /// (now the policy) and the trainer state with the stage done, without AdamW moments (the
    /// engine's own; the next stage starts fresh ones). A resume past the stage then starts here,
    /// like after a native stage, rather than from an earlier checkpoint and the export.
    fn checkpoint_stage_end(&mut self) -> Result<(), TrainError> {
        self.save_checkpoint(None, None)
    }

    /// The orders hone's samplers would draw the stage's main term (and a preference stage's
    /// SFT-on-chosen term) in, one permutation of the files' examples per epoch that the stage can
    /// reach (the stage is tokenized here the way the native engine tokenizes it, for the lengths
    /// its batches are grouped by). `None` when an example was dropped for length: the indices
    /// would no longer be the files' records.
    fn data_order(&self, index: usize, stage: &Stage) -> Result<Option<DataOrders>, TrainError> {
        let files: Vec<_> = self.host.preference_files(index).into_iter().filter(|f| !f.live).map(|f| f.path).collect();
        let data = load_stage_data(stage, &files, &self.tokenizer, self.template.as_ref())?;
        if data.truncation.values().any(|t| t.dropped > 0) {
            return Ok(None);
        }
        let main = main_term(&data);
        let Some(main_orders) = self.term_order(index, stage, &data, main) else { return Ok(None) };
        let on_chosen = main == Term::Pref && stage.sft.as_ref().is_some_and(|t| t.on_chosen);
        let sft = if on_chosen { self.term_order(index, stage, &data, Term::Sft) } else { None };
        Ok(Some(DataOrders { main: main_orders, sft }))
    }

    /// One term's order: its sampler (seeded as the native stage seeds it) over the epochs the
    /// stage's draws reach; `None` when the term has no examples.
    fn term_order(&self, index: usize, stage: &Stage, data: &StageData, term: Term) -> Option<Vec<Vec<usize>>> {
        let lengths = term_lengths(data, term);
        if lengths.is_empty() {
            return None;
        }
        let draws = self.total_steps(stage, lengths.len()).saturating_mul((stage.batch_size * stage.grad_accum) as u64);
        let epochs = draws.div_ceil(lengths.len() as u64).clamp(1, u64::from(stage.epochs.max(1)));
        let seed = sampler_seed(self.pipeline.run.seed, index, term);
        let sampler = Sampler::new(seed, lengths, stage.batch_size, None);
        Some((0..epochs).map(|e| sampler.epoch_order(e)).collect())
    }
}
