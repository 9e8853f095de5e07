//! `hone runs`: the runs of a runs directory with their state, newest last.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::run::{latest_checkpoint, Ending, EventReader, RunDir, RunState, WorkerLock};
use crate::sanitize::sanitize;

/// What to say when a runs directory holds no run: which directory (once), and what to do.
pub fn no_runs_message(runs_dir: &Path) -> String {
    let shown = sanitize(&runs_dir.display().to_string(), false);
    let what = if runs_dir.exists() { "holds no runs yet" } else { "does not exist yet" };
    format!(
        "the runs directory {shown} {what}: start a run with `hone demo` or `hone run PIPELINE.toml`, or point \
         --runs-dir (or HONE_RUNS_DIR) at the directory that holds your runs (`hone paths` shows the one in use)"
    )
}

/// One line per run: id, state (running with pid / completed / stopped / failed / interrupted),
/// last step, newest checkpoint.
pub fn run(runs_dir: &Path, out: &mut impl Write) -> Result<()> {
    let runs = RunDir::list(runs_dir)?;
    if runs.is_empty() {
        writeln!(out, "{}", no_runs_message(runs_dir))?;
        return Ok(());
    }
    writeln!(out, "{:<36} {:<22} {:>8} {:>11}", "run", "state", "step", "checkpoint")?;
    for run in runs {
        let events = EventReader::read_all(&run.events_path()).map(|b| b.events).unwrap_or_default();
        let last_step = events.iter().filter_map(|e| e.step).max().unwrap_or(0);
        let state = match Ending::of(&events).state(WorkerLock::is_live(&run)?.as_ref()) {
            RunState::Live(pid) => format!("running (pid {})", pid.map_or_else(|| "?".into(), |p| p.to_string())),
            RunState::Interrupted if events.is_empty() => "empty".to_string(),
            RunState::Interrupted => "interrupted (resume it)".to_string(),
            finished => finished.label(),
        };
        let checkpoint = latest_checkpoint(&run)?.map_or_else(|| "-".to_string(), |c| c.step.to_string());
        writeln!(out, "{:<36} {:<22} {:>8} {:>11}", sanitize(run.id(), false), state, last_step, checkpoint)?;
    }
    Ok(())
}
