//! Where a TRL stage resumes. The ranks restore the newest `checkpoint-N` in the stage's
//! checkpoint folder that holds its `hone_state.json` (written last, after every rank saved);
//! hone's `resumed` event must name the same step, so it applies the same rule to the same
//! folder rather than trusting `checkpoint_saved` events: a SIGKILL between the marker and the
//! event, or TRL's rotation of old checkpoints, makes the events disagree with the disk.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{checkpoints_dir, io_err, spec_path, TrlError, CHECKPOINT_MARKER, EXPORT_MARKER};
use crate::run::{kind, Event};

/// The global step a finished stage's export marker records (`hone_export.json`'s `step`).
pub fn exported_step(export: &Path) -> Result<u64, TrlError> {
    let path = export.join(EXPORT_MARKER);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("step").and_then(Value::as_u64)).ok_or_else(|| {
        TrlError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no integer `step` in the export marker"),
        }
    })
}

/// Where a resume of the run at `run_dir` continues on the TRL engine: over the TRL stages its
/// events say were started, the highest global step of a finished stage's export or of the
/// checkpoint the ranks will restore (see the module's note); `None` when there is neither. A
/// resume restarts its TRL stage from there (or skips it), so `resumed`'s `from_step` is this
/// when it is past the newest native checkpoint.
pub fn resume_step(run_dir: &Path, events: &[Event]) -> Option<u64> {
    let mut stages: Vec<&str> = events
        .iter()
        .filter(|e| e.event == kind::STAGE_STARTED && e.fields.get("engine").and_then(Value::as_str) == Some("trl"))
        .filter_map(|e| e.stage.as_deref())
        .collect();
    stages.dedup();
    stages.iter().filter_map(|stage| stage_resume_step(run_dir, stage)).max()
}

/// One TRL stage's resume point: its export's step, else `step_offset` plus the newest complete
/// checkpoint's stage step, as its spec (the one the ranks read) places them.
fn stage_resume_step(run_dir: &Path, stage: &str) -> Option<u64> {
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(spec_path(run_dir, stage)).ok()?).ok()?;
    let export = spec.get("export_dir").and_then(Value::as_str).map(PathBuf::from)?;
    if let Ok(step) = exported_step(&export) {
        return Some(step);
    }
    let offset = spec.get("step_offset").and_then(Value::as_u64)?;
    let output =
        spec.get("output_dir").and_then(Value::as_str).map_or_else(|| checkpoints_dir(run_dir, stage), PathBuf::from);
    newest_checkpoint(&output).map(|n| offset + n)
}

/// The stage step of the newest `checkpoint-N` under `output` holding its marker: the rule of
/// `hone_trl.__main__.newest_checkpoint`, which the ranks resume with.
pub fn newest_checkpoint(output: &Path) -> Option<u64> {
    std::fs::read_dir(output)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let digits = name.strip_prefix("checkpoint-")?;
            // Digits only, as Python's `isdigit` there: Rust's parse would also take "+5".
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = digits.parse().ok()?;
            entry.path().join(CHECKPOINT_MARKER).is_file().then_some(n)
        })
        .max()
}
