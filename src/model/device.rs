//! Turning `--device` and `--dtype` strings into candle devices and dtypes.

use candle_core::{DType, Device};

use super::ModelError;

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA device 0 when hone was built with the `cuda`
/// feature and a GPU answers, else the CPU).
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    let spec = spec.trim();
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        _ => {
            let ordinal = match spec.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| ModelError::Device(format!("{spec:?}: expected cpu, cuda, cuda:N or auto")))?,
                None => return Err(ModelError::Device(format!("{spec:?}: expected cpu, cuda, cuda:N or auto"))),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Device(format!(
                    "{spec}: this hone was built without CUDA support (rebuild with `--features cuda`)"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| ModelError::Device(format!("{spec}: {e}")))
        }
    }
}

/// Parses `f32`, `bf16` or `f16` (also the transformers spellings `float32`, `bfloat16`, `float16`).
pub fn parse_dtype(spec: &str) -> Result<DType, ModelError> {
    match spec.trim() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(ModelError::Dtype(format!("dtype: {other:?} is not supported (f32, bf16, f16)"))),
    }
}
