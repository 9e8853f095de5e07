//! `hone export RUN --stage S [--merge]`: a stage's trained weights out of a run, as a PEFT
//! adapter directory (LoRA runs) or a full model directory transformers loads (`--merge` merges
//! a LoRA adapter into its base; a full fine-tune is a full model already). The directory appears
//! whole or not at all (`durable::write_dir`), and running the same export again after a crash
//! succeeds: a complete one is left as it is, an interrupted one's temporary is cleared.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use crate::config::{load_frozen, Pipeline};
use crate::model::{AdapterInit, Model};
use crate::run::{list_checkpoints, RunDir, TRAINER_STATE_FILE};
use crate::train::iterate::{round_name, stage_of_round_name};
use crate::train::trainer::TrainerState;

/// What `hone export` was asked.
pub struct ExportArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The stage whose final weights to export.
    pub stage: String,
    /// Merge a LoRA adapter into the base (a full model directory).
    pub merge: bool,
    /// Where to write (default `<run>/exports/<stage>`, `<stage>-merged` with `--merge`).
    pub out: Option<PathBuf>,
}

/// Writes the export and prints its directory; returns it.
pub fn run(args: &ExportArgs, out: &mut impl Write) -> Result<PathBuf> {
    let run = RunDir::open(&args.run_dir)?;
    let frozen = load_frozen(&run.config_path())?;
    let pipeline = &frozen.loaded.pipeline;
    let Some(index) = stage_of_round_name(pipeline, &args.stage) else {
        let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "--stage {}: the run has no such stage (stages: {}; a fix stage's later rounds as <stage>.<round>)",
            args.stage,
            names.join(", ")
        );
    };
    let checkpoint = stage_final_checkpoint(&run, pipeline, index, &args.stage)?;
    let device = Device::Cpu;
    let lora = pipeline.model.lora.is_some() || pipeline.model.adapter.is_some();
    let model = if lora {
        Model::load_with_adapter(&pipeline.model.path, &device, DType::F32, &AdapterInit::Dir(checkpoint.clone()))?
    } else {
        Model::load(&checkpoint, &device, DType::F32)?
    };
    let files = if args.merge { model.merged_files(DType::F32)? } else { model.files(DType::F32)? };
    let name = crate::run::dir_component(&args.stage);
    let target = match &args.out {
        Some(dir) => dir.clone(),
        None if args.merge => run.exports_dir().join(format!("{name}-merged")),
        None => run.exports_dir().join(name),
    };
    // What an export killed before its rename left (a hidden temporary, never the target).
    crate::durable::remove_dead_temps(&target).with_context(|| target.display().to_string())?;
    if target.exists() {
        if !holds_exactly(&target, &files)? {
            bail!("{}: already exists with other contents; remove it or give --out", target.display());
        }
    } else {
        crate::durable::write_dir(&target, &files).with_context(|| target.display().to_string())?;
    }
    writeln!(out, "{}", target.display())?;
    Ok(target)
}

/// Whether `dir` holds exactly `files`, byte for byte: the same export made before (a re-run
/// after an interrupted one whose rename had happened succeeds, and changes nothing).
fn holds_exactly(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<bool> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        names.push(entry.with_context(|| dir.display().to_string())?.file_name());
    }
    if names.len() != files.len() {
        return Ok(false);
    }
    for (name, bytes) in files {
        match std::fs::read(dir.join(name)) {
            Ok(on_disk) if on_disk == *bytes => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// The checkpoint a stage (or a fix stage's round, by its round name) finished with: its last,
/// written when it ended.
fn stage_final_checkpoint(run: &RunDir, pipeline: &Pipeline, index: usize, stage: &str) -> Result<PathBuf> {
    for checkpoint in list_checkpoints(run)?.into_iter().rev() {
        let path = checkpoint.path(TRAINER_STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
        let state: TrainerState =
            serde_json::from_slice(&bytes).with_context(|| format!("{}: not a trainer state", path.display()))?;
        let name = round_name(&pipeline.stages[index].name, state.round);
        if state.stage_index == index && state.stage_done && name == stage {
            return Ok(checkpoint.dir);
        }
    }
    bail!(
        "{}: no checkpoint ends stage {stage} (it has not finished, or retention removed its last checkpoint)",
        run.path().display()
    )
}
