//! The trainer's resumable state: where the pipeline stands (in every checkpoint), run options, and AdamW's moments as safetensors (`m.<param>`, `v.<param>`),
//! exact to the bit.

use std::collections::HashMap;

use candle_core::{DType, Device, Var};
use serde::{Deserialize, Serialize};

use super::iterate::Round;
use super::sampler::SamplerState;

use super::optim::{AdamW, Moments};
use super::TrainError;
use crate::model::SafetensorsOut;

/// The optimizer's moments as a safetensors file (f32), serialised as it is written: write it
/// before the next step replaces them.
pub fn optimizer_out(opt: &AdamW) -> Result<SafetensorsOut, TrainError> {
    let mut tensors = Vec::new();
    for (name, m) in opt.state() {
        tensors.push((format!("m.{name}"), m.m.clone()));
        tensors.push((format!("v.{name}"), m.v.clone()));
    }
    Ok(SafetensorsOut::new(tensors, DType::F32)?)
}

/// Restores moments saved by [`optimizer_out`], aligned with `params`; `source` names where
/// the bytes came from in errors.
pub fn load_optimizer(
    bytes: &[u8],
    source: &str,
    params: &[(String, Var)],
    device: &Device,
) -> Result<Vec<Moments>, TrainError> {
    let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
    let mut moments = Vec::with_capacity(params.len());
    for (name, var) in params {
        let get = |k: String| {
            tensors.get(&k).cloned().ok_or_else(|| TrainError::Data(format!("{source}: optimizer state has no {k}")))
        };
        let m = get(format!("m.{name}"))?.to_dtype(var.dtype())?;
        let v = get(format!("v.{name}"))?.to_dtype(var.dtype())?;
        moments.push(Moments { m, v });
    }
    Ok(moments)
}

/// The trainer's resumable position, saved in every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed over the whole pipeline.
    pub global_step: u64,
    /// The stage being trained.
    pub stage_index: usize,
    /// Optimizer steps completed in that stage.
    pub stage_step: u64,
    /// Samplers of the stage's terms, by term name.
    pub samplers: HashMap<String, SamplerState>,
    /// Current λ_pref and λ_safe (λ_safe adapts; both can be changed live).
    pub lambda_pref: Option<f64>,
    /// Current λ_safe.
    pub lambda_safe: Option<f64>,
    /// Non-finite steps in a row.
    pub consecutive_nan: u32,
    /// Whether the stage at `stage_index` has finished (its final checkpoint).
    pub stage_done: bool,
    /// AdamW updates applied in the current stage (its bias correction).
    pub optimizer_steps: u64,
    /// Every read of a live labels file in the current stage (file, offset reached), in order:
    /// a resume replays them to rebuild the same pool.
    #[serde(default)]
    pub label_reads: Vec<(String, u64)>,
    /// Per live labels file at the checkpoint: (file, bytes consumed, their sha256).
    #[serde(default)]
    pub label_prefixes: Vec<(String, u64, String)>,
    /// The current stage's step count, fixed when it starts (labels admitted later do not
    /// lengthen it; a resume keeps it).
    #[serde(default)]
    pub stage_total: Option<u64>,
    /// The round, when the stage at `stage_index` is an `[[iterate]]`'s fix stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<Round>,
}

/// Options that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only these stages (by name), in pipeline order.
    pub stages: Option<Vec<String>>,
    /// Cap on optimizer steps per stage.
    pub max_steps: Option<u64>,
    /// Fault injection for tests: make the loss NaN at these global steps.
    pub inject_nan_at: Vec<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every stage ran to its end.
    Completed,
    /// A stop was requested; a checkpoint was written at the step boundary.
    Stopped,
}
