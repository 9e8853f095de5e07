//! Reading a stage's live labels files, shared by DPO (pairs) and KTO (thumbs): the first read
//! when the stage opens (on resume, a replay of the reads the checkpointed run had made) and the
//! read at each step boundary (on resume, at the steps a previous worker logged), so a resumed
//! stage admits the same labels at the same steps as an uninterrupted one.

use serde_json::{json, Map};

use super::{Admission, Host, Trainer};
use crate::config::Stage;
use crate::kind;
use crate::train::live::{LiveKind, LiveLabels, LiveUpdate};
use crate::train::TrainError;

impl<H: Host> Trainer<'_, H> {
    /// The reads when `stage` opens with `pool_len` examples: everything there for a fresh
    /// stage; for one resumed after some steps, its own earlier reads replayed (even none),
    /// after refusing labels files whose already-read part changed.
    pub(super) fn initial_reads<K: LiveKind>(
        &mut self,
        stage: &Stage,
        live: &mut LiveLabels<K>,
        pool_len: usize,
    ) -> Result<Vec<LiveUpdate<K::Example>>, TrainError> {
        live.verify_prefixes(&self.state.label_prefixes)?;
        let history = self.state.label_reads.clone();
        let resumed = self.state.stage_step > 0;
        let replay = resumed.then_some(history.as_slice());
        let updates = live.read_initial(replay, pool_len, stage.max_length, &self.tokenizer, self.template.as_ref())?;
        if !resumed {
            for update in &updates {
                self.state.label_reads.extend(update.offsets.iter().cloned());
            }
        }
        Ok(updates)
    }

    /// The read before this step's update (replaying `plan` where it has this step), recorded
    /// for checkpoints; each unusable line becomes a warning.
    pub(super) fn read_at_boundary<K: LiveKind>(
        &mut self,
        stage: &Stage,
        live: &mut LiveLabels<K>,
        plan: &[Admission],
        pool_len: usize,
    ) -> Result<LiveUpdate<K::Example>, TrainError> {
        let step = self.state.global_step;
        let update =
            live.read_at_step(step, plan, pool_len, stage.max_length, &self.tokenizer, self.template.as_ref())?;
        self.state.label_reads.extend(update.offsets.iter().cloned());
        for message in &update.problems {
            let mut f = Map::new();
            f.insert("message".into(), json!(message));
            self.host.emit(kind::WARNING, Some(&stage.name), Some(step), f)?;
        }
        Ok(update)
    }
}
