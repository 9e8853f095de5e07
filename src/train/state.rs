//! Optimizer state in and out of checkpoints: AdamW's moments as safetensors (`m.<param>`,
//! `v.<param>`), exact to the bit. The step count travels in the trainer state.

use std::path::Path;

use candle_core::{DType, Device, Var};

use super::optim::{AdamW, Moments};
use super::TrainError;
use crate::model::weights::safetensors_bytes;

/// The optimizer's moments as safetensors bytes (f32).
pub fn optimizer_bytes(opt: &AdamW) -> Result<Vec<u8>, TrainError> {
    let mut tensors = Vec::new();
    for (name, m) in opt.state() {
        tensors.push((format!("m.{name}"), m.m.clone()));
        tensors.push((format!("v.{name}"), m.v.clone()));
    }
    Ok(safetensors_bytes(&tensors, DType::F32)?)
}

/// Restores moments saved by [`optimizer_bytes`], aligned with `params`.
pub fn load_optimizer(
    path: &Path,
    params: &[(String, Var)],
    device: &Device,
) -> Result<Option<Vec<Moments>>, TrainError> {
    if !path.exists() {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(path, device)?;
    let mut moments = Vec::with_capacity(params.len());
    for (name, var) in params {
        let get = |k: String| {
            tensors
                .get(&k)
                .cloned()
                .ok_or_else(|| TrainError::Data(format!("{}: optimizer state has no {k}", path.display())))
        };
        let m = get(format!("m.{name}"))?.to_dtype(var.dtype())?;
        let v = get(format!("v.{name}"))?.to_dtype(var.dtype())?;
        moments.push(Moments { m, v });
    }
    Ok(Some(moments))
}
