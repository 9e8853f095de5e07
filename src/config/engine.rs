//! Which engine trains a stage: hone's own (`engine = "hone"`, the default) or Hugging Face TRL
//! under a distributed launcher (`engine = "trl"`), configured once in the top-level
//! `[engine.trl]` table, and the checks that refuse what the TRL engine cannot run.
//!
//! The launcher itself (command line, environment, the child process) is `run::trl`'s; this module
//! only owns the types and their validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::load::Locator;
use super::locate::FieldPath;
use super::types::{Pipeline, PrefLossKind, Stage};

/// The engine of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// hone's own trainer, in the worker process.
    #[default]
    Hone,
    /// TRL's SFTTrainer/DPOTrainer under `[engine.trl]`'s launcher.
    Trl,
}

impl Engine {
    /// True for the default engine (kept out of `run.toml`, so native runs freeze as before).
    pub fn is_hone(&self) -> bool {
        *self == Engine::Hone
    }
}

/// The `[engine]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// `[engine.trl]`: how stages with `engine = "trl"` are launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trl: Option<TrlSettings>,
}

/// How TRL stages are launched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrlSettings {
    /// The Python interpreter of a venv holding torch, transformers, trl, accelerate and
    /// `hone_trl` (`python/setup-venv.sh`); default: the venv that script creates under the
    /// user's cache directory. A bare name (`python3`) is looked up in `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
    /// `accelerate` (`accelerate launch`), `torchrun`, or `command` (a site's own wrapper).
    #[serde(default)]
    pub launcher: Launcher,
    /// Processes in all (all machines together); one per GPU.
    #[serde(default = "one")]
    pub num_processes: usize,
    /// Machines.
    #[serde(default = "one")]
    pub num_machines: usize,
    /// An accelerate config file (DDP, DeepSpeed ZeRO, FSDP), passed to `accelerate launch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    /// With `launcher = "command"`: the program and its arguments (e.g. `["srun", "--mpi=none"]`);
    /// `<python> -m hone_trl --spec <file>` is appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// The program that starts the TRL processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// `python -m accelerate.commands.launch` (GPU machines; its config picks DDP/DeepSpeed/FSDP).
    #[default]
    Accelerate,
    /// `python -m torch.distributed.run` (also the way to run several CPU processes, with gloo).
    Torchrun,
    /// `command` followed by the module invocation.
    Command,
}

fn one() -> usize {
    1
}

/// Checks `[engine.trl]` and every TRL stage against it.
pub(crate) fn check(pipeline: &Pipeline, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let root = FieldPath::default();
    let settings = pipeline.engine.as_ref().and_then(|e| e.trl.as_ref());
    if let Some(trl) = settings {
        check_settings(trl, &root.key("engine").key("trl"), locator)?;
    }
    for (i, stage) in pipeline.stages.iter().enumerate() {
        if stage.engine != Engine::Trl {
            continue;
        }
        let at = root.key("stage").index(i);
        let Some(trl) = settings else {
            return Err(locator.error(&at.key("engine"), "engine = \"trl\" needs an [engine.trl] table"));
        };
        check_stage(stage, trl, &at, locator)?;
    }
    Ok(())
}

fn check_settings(trl: &TrlSettings, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    if trl.num_processes < 1 {
        return Err(locator.error(&at.key("num_processes"), "must be at least 1"));
    }
    if trl.num_machines < 1 {
        return Err(locator.error(&at.key("num_machines"), "must be at least 1"));
    }
    if trl.num_processes % trl.num_machines != 0 {
        return Err(locator.error(
            &at.key("num_processes"),
            format!(
                "{} processes cannot be spread evenly over {} machines (num_processes counts all machines)",
                trl.num_processes, trl.num_machines
            ),
        ));
    }
    match trl.launcher {
        Launcher::Command if trl.command.is_empty() => {
            Err(locator.error(&at.key("command"), "launcher = \"command\" needs command = [\"program\", ...]"))
        }
        Launcher::Accelerate | Launcher::Torchrun if !trl.command.is_empty() => {
            Err(locator.error(&at.key("command"), "command is only used with launcher = \"command\""))
        }
        Launcher::Torchrun if trl.num_machines > 1 => Err(locator.error(
            &at.key("num_machines"),
            "torchrun on several machines needs a rendezvous hone cannot choose: use launcher = \"accelerate\" \
             with a config_file, or launcher = \"command\" (srun)",
        )),
        Launcher::Torchrun | Launcher::Command if trl.config_file.is_some() => Err(locator.error(
            &at.key("config_file"),
            "config_file is an accelerate config: only used with launcher = \"accelerate\"",
        )),
        _ => Ok(()),
    }
}

fn check_stage(stage: &Stage, trl: &TrlSettings, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let unsupported = |field: &str, what: &str| {
        locator.error(&at.key(field), format!("{what} is not supported on engine = \"trl\" (use engine = \"hone\")"))
    };
    if let Some(safety) = &stage.safety {
        if safety.adaptive.is_some() {
            return Err(locator.error(
                &at.key("safety").key("adaptive"),
                "adaptive λ_safe is not supported on engine = \"trl\" (use engine = \"hone\")",
            ));
        }
        return Err(unsupported("safety", "the safety term"));
    }
    if stage.lm.is_some() {
        return Err(unsupported("lm", "the language-modelling term"));
    }
    if stage.grpo.is_some() {
        return Err(unsupported("grpo", "a GRPO stage"));
    }
    if stage.rm.is_some() {
        return Err(unsupported("rm", "the reward-model term"));
    }
    if let Some(pref) = &stage.pref {
        if pref.loss == PrefLossKind::Kto {
            return Err(unsupported("pref", "loss = \"kto\""));
        }
        // TRL 1.16's sigmoid loss has no label smoothing (its `robust` loss does).
        if pref.loss == PrefLossKind::Sigmoid && pref.label_smoothing > 0.0 {
            return Err(locator.error(
                &at.key("pref").key("label_smoothing"),
                "conservative DPO (label_smoothing with loss = \"sigmoid\") is not supported on engine = \"trl\": \
                 TRL's sigmoid loss has no label smoothing (use loss = \"robust\", or engine = \"hone\")",
            ));
        }
    }
    if let (Some(_), Some(sft)) = (&stage.pref, &stage.sft) {
        if !sft.data.is_empty() {
            return Err(locator.error(
                &at.key("sft").key("data"),
                "engine = \"trl\": a preference stage's SFT term trains on the chosen responses only \
                 (sft.on_chosen = true, no sft.data)",
            ));
        }
    }
    let per_step = trl.num_processes * stage.grad_accum;
    if stage.batch_size % per_step != 0 {
        return Err(locator.error(
            &at.key("batch_size"),
            format!(
                "engine = \"trl\": batch_size is the global batch and must be divisible by num_processes ({}) x \
                 grad_accum ({}) = {per_step} (got {})",
                trl.num_processes, stage.grad_accum, stage.batch_size
            ),
        ));
    }
    Ok(())
}

/// LoRA with TRL stages. The TRL engine trains a fresh PEFT adapter in each stage on the stage's
/// model and exports it merged; hone's engine trains one adapter over the whole pipeline on the
/// original base (checkpoints hold the adapter alone). The two cannot hand a LoRA run to each
/// other, so a LoRA pipeline with a TRL stage has every stage on the TRL engine, and starting
/// from an adapter directory is hone's engine's alone.
pub(crate) fn check_lora(pipeline: &Pipeline, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let Some(trl) = pipeline.stages.iter().position(|s| s.engine == Engine::Trl) else { return Ok(()) };
    let stage = FieldPath::default().key("stage");
    if pipeline.model.adapter.is_some() {
        return Err(locator.error(
            &stage.index(trl).key("engine"),
            "[model] adapter (start from a LoRA adapter directory) is supported by hone's engine only (engine = \"hone\")",
        ));
    }
    let native = pipeline.stages.iter().position(|s| s.engine != Engine::Trl);
    if let (Some(_), Some(i)) = (&pipeline.model.lora, native) {
        return Err(locator.error(
            &stage.index(i).key("engine"),
            format!(
                "a LoRA pipeline cannot mix engines: stage {} is on the TRL engine (a fresh adapter per stage, \
                 exported merged), this one on hone's (one adapter over the pipeline); put every stage on one engine",
                pipeline.stages[trl].name
            ),
        ));
    }
    Ok(())
}

/// Makes `[engine.trl]`'s paths absolute against the pipeline file's directory `base`; a
/// `config_file` that does not exist is an error here, at load time. `python` is checked when it
/// runs (`hone check`, stage start): a venv may be created after the pipeline is written.
pub(crate) fn resolve_paths(
    pipeline: &mut Pipeline,
    base: &std::path::Path,
    locator: &Locator<'_>,
) -> Result<(), ConfigError> {
    let Some(trl) = pipeline.engine.as_mut().and_then(|e| e.trl.as_mut()) else { return Ok(()) };
    let at = FieldPath::default().key("engine").key("trl");
    if let Some(file) = &mut trl.config_file {
        let path = base.join(&*file);
        if !path.is_file() {
            return Err(locator.error(&at.key("config_file"), format!("no such file: {}", path.display())));
        }
        *file = path;
    }
    if let Some(python) = &mut trl.python {
        // A bare name (`python3`) is looked up in PATH when it runs; anything with a directory
        // is relative to the pipeline file.
        if python.components().count() > 1 && python.is_relative() {
            *python = base.join(&*python);
        }
    }
    Ok(())
}
