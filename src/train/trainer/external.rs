//! A stage trained by another engine (`engine = "trl"`): the trainer hands it to the host with the
//! model it starts from, then takes the exported model back as its policy, so the evaluation and
//! the gates that follow are the native stages' own.

use candle_core::DType;

use super::{Finished, Host, Trainer};
use crate::config::Stage;
use crate::model::Model;
use crate::train::host::{ExternalOutcome, ExternalStage, ModelInput};
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
        let position = self.position("running", Some(&stage.name), None);
        self.host.publish(&position);
        let job = ExternalStage { pipeline: &pipeline, index, model, step_offset };
        match self.host.run_external_stage(job)? {
            ExternalOutcome::Stopped => Ok(Finished::Stopped),
            ExternalOutcome::Finished { model, step } => {
                let policy = Model::load(&model, &self.device, self.dtype)?;
                policy.check_tokenizer_len(self.tokenizer.len())?;
                self.policy = policy;
                self.policy_dir = Some(model);
                self.state.stage_step = step.saturating_sub(step_offset);
                self.state.global_step = step.max(step_offset);
                self.state.stage_done = true;
                Ok(Finished::Completed)
            }
        }
    }
}
