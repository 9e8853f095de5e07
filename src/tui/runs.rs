//! The runs pane's data: every run directory beside the attached one and whether it is live,
//! finished, stopped, failed or interrupted. [`scan_runs`] does file I/O and runs on the `tail`
//! thread, never on the UI task.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::run::{EventReader, RunDir, RunError, WorkerLock};

/// A run's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// A worker holds the run's lock (its pid, when readable).
    Live(Option<u32>),
    /// `run_finished` with status `completed`.
    Completed,
    /// `run_finished` with status `stopped`: can be resumed.
    Stopped,
    /// `run_finished` with status `failed`.
    Failed,
    /// No live worker and no `run_finished`: the worker died.
    Interrupted,
}

impl RunState {
    /// A short word for the runs list.
    pub fn label(self) -> String {
        match self {
            RunState::Live(Some(pid)) => format!("live (pid {pid})"),
            RunState::Live(None) => "live".to_string(),
            RunState::Completed => "completed".to_string(),
            RunState::Stopped => "stopped".to_string(),
            RunState::Failed => "failed".to_string(),
            RunState::Interrupted => "interrupted".to_string(),
        }
    }
}

/// One run directory in the runs list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run id (the directory name; untrusted: sanitize before display).
    pub id: String,
    /// Its state.
    pub state: RunState,
    /// Whether this is the run the TUI is attached to.
    pub attached: bool,
}

/// Remembers each run's last `run_finished` status by events-file size, so a rescan only rereads
/// logs that grew.
#[derive(Debug, Default)]
pub struct RunScanner {
    finished: HashMap<PathBuf, (u64, Option<RunState>)>,
}

impl RunScanner {
    /// Lists the runs in `runs_dir`, oldest first, marking `attached`.
    pub fn scan(&mut self, runs_dir: &Path, attached: &Path) -> Result<Vec<RunSummary>, RunError> {
        let mut out = Vec::new();
        for run in RunDir::list(runs_dir)? {
            let state = match WorkerLock::is_live(&run)? {
                Some(worker) => RunState::Live(worker.pid),
                None => self.finished_state(&run)?.unwrap_or(RunState::Interrupted),
            };
            out.push(RunSummary { id: run.id().to_string(), state, attached: run.path() == attached });
        }
        Ok(out)
    }

    fn finished_state(&mut self, run: &RunDir) -> Result<Option<RunState>, RunError> {
        let path = run.events_path();
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if let Some(&(seen, state)) = self.finished.get(&path) {
            if seen == len {
                return Ok(state);
            }
        }
        let batch = EventReader::read_all(&path)?;
        // A `resumed` after a `run_finished` means the run went on; only the last word counts.
        let state = batch.events.iter().rev().find_map(|e| match e.event.as_str() {
            "run_finished" => Some(match e.fields.get("status").and_then(|s| s.as_str()) {
                Some("completed") => Some(RunState::Completed),
                Some("stopped") => Some(RunState::Stopped),
                _ => Some(RunState::Failed),
            }),
            "run_started" | "resumed" => Some(None),
            _ => None,
        });
        let state = state.flatten();
        self.finished.insert(path, (len, state));
        Ok(state)
    }
}

/// Lists the runs in `runs_dir` once (see [`RunScanner`] for repeated scans).
pub fn scan_runs(runs_dir: &Path, attached: &Path) -> Result<Vec<RunSummary>, RunError> {
    RunScanner::default().scan(runs_dir, attached)
}
