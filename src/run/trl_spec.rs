//! A TRL stage's spec: the JSON `python/hone_trl` reads (`spec.py` documents every key), built
//! from the frozen pipeline so the Python side never parses hone's TOML.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{checkpoints_dir, export_dir, io_err, spec_path, trl_dir, TrlError};
use crate::config::{LoraSettings, Pipeline, PrefLossKind, Schedule};
use crate::train::host::PrefFile;

/// The stage spec (`python/hone_trl/spec.py` documents every key) of stage `index`, which starts
/// from the HF directory `model` at global step `step_offset`. `pref_files` are the stage's
/// preference files, resolved: the `live` ones are labels files that grow while it runs.
pub fn stage_spec(
    pipeline: &Pipeline,
    index: usize,
    run_dir: &Path,
    model: &Path,
    step_offset: u64,
    pref_files: &[PrefFile],
) -> Result<Value, TrlError> {
    let stage = pipeline.stages.get(index).ok_or(TrlError::NoStage(index))?;
    let run = &pipeline.run;
    let schedule = match stage.schedule {
        Schedule::Cosine => "cosine",
        Schedule::Linear => "linear",
        Schedule::Constant => "constant",
    };
    let mut spec = json!({
        "run_dir": run_dir,
        "stage": stage.name,
        "kind": if stage.pref.is_some() { "dpo" } else { "sft" },
        "model": model,
        "output_dir": checkpoints_dir(run_dir, &stage.name),
        "export_dir": export_dir(run_dir, &stage.name),
        "seed": run.seed,
        "device": run.device,
        "dtype": run.dtype,
        "lr": stage.lr,
        "schedule": schedule,
        "warmup_steps": stage.warmup_steps,
        "weight_decay": stage.weight_decay,
        "max_grad_norm": stage.max_grad_norm,
        "max_length": stage.max_length,
        "epochs": stage.epochs,
        "max_steps": stage.max_steps,
        "batch_size": stage.batch_size,
        "grad_accum": stage.grad_accum,
        "log_every": run.log_every,
        "checkpoint_every": run.checkpoint_every,
        "keep_checkpoints": run.keep_checkpoints,
        "step_offset": step_offset,
    });
    if let Some(sft) = &stage.sft {
        spec["sft"] = json!({"data": sft.data, "weight": sft.weight, "on_chosen": sft.on_chosen});
    }
    if let Some(pref) = &stage.pref {
        let (live, data): (Vec<&PrefFile>, Vec<&PrefFile>) = pref_files.iter().partition(|f| f.live);
        let paths = |s: &[&PrefFile]| s.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
        spec["pref"] = json!({
            "data": paths(&data),
            "live": paths(&live),
            "lambda": pref.lambda,
            "beta": pref.beta,
            "loss": match pref.loss {
                PrefLossKind::Sigmoid => "sigmoid",
                PrefLossKind::Ipo => "ipo",
                PrefLossKind::Robust => "robust",
                // Refused for engine = "trl" by the config check.
                PrefLossKind::Kto => "kto",
            },
            "label_smoothing": pref.label_smoothing,
            "reference": pref.reference,
        });
    }
    if let Some(lora) = &pipeline.model.lora {
        spec["lora"] = lora_spec(lora, &pipeline.model.path)?;
    }
    Ok(spec)
}

/// A LoRA stage's `lora`: its settings, with `target_modules` resolved to the full names of the
/// decoder projections hone's rule targets in the pipeline's model, which PEFT then matches
/// exactly (a regular expression or a suffix means the same modules on both engines).
fn lora_spec(lora: &LoraSettings, model: &Path) -> Result<Value, TrlError> {
    let layers = crate::model::ModelConfig::from_dir(model)?.num_hidden_layers;
    let targets = lora.spec().targets;
    let modules: Vec<String> =
        crate::model::lora::projection_modules(layers).into_iter().filter(|m| targets.matches(m)).collect();
    Ok(json!({"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": modules}))
}

/// Writes a stage's spec to [`spec_path`] (atomically) and returns the path.
pub fn write_spec(run_dir: &Path, stage: &str, spec: &Value) -> Result<PathBuf, TrlError> {
    let path = spec_path(run_dir, stage);
    let dir = trl_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(spec).map_err(|e| TrlError::Io { path: path.clone(), source: e.into() })?;
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}
