//! The runs pane's data: every run directory beside the attached one and whether it is live,
//! finished, stopped, failed or interrupted, with its stage, step and age. [`scan_runs`] does file I/O and runs on the `tail`
//! thread, never on the UI task.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::history::{read_tail, stream_events, Streamed, TAIL_BYTES};
pub use crate::run::RunState;
use crate::run::{now_ms, Ending, Event, RunDir, RunError, WorkerLock};

/// One run directory in the runs list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run id (the directory name; untrusted: sanitize before display).
    pub id: String,
    /// Its state.
    pub state: RunState,
    /// Whether this is the run the TUI is attached to.
    pub attached: bool,
    /// The stage of its newest event that names one (untrusted: sanitize before display).
    pub stage: Option<String>,
    /// Its newest global step.
    pub step: Option<u64>,
    /// Seconds since its newest event, at the time of the scan.
    pub age_seconds: Option<u64>,
}

/// What a scanner has learned of one run from its log so far.
#[derive(Debug)]
struct Track {
    path: PathBuf,
    /// Where reading stopped; `None` before the first read.
    at: Option<Streamed>,
    ending: Ending,
    stage: Option<String>,
    step: Option<u64>,
    last_ts: Option<u64>,
}

impl Track {
    fn new(path: &Path) -> Track {
        Track { path: path.to_path_buf(), at: None, ending: Ending::default(), stage: None, step: None, last_ts: None }
    }

    /// Reads what the log gained since the last scan. The first read (or the first after the log
    /// shrank) starts from its last [`TAIL_BYTES`]: the newest events say all the list needs.
    fn read(&mut self) -> Result<(), RunError> {
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let at = match self.at {
            Some(at) if at.offset <= len => at,
            _ => {
                (self.ending, self.stage, self.step, self.last_ts) = (Ending::default(), None, None, None);
                let (events, end) = read_tail(&self.path, TAIL_BYTES)?;
                for e in &events {
                    self.fold(e);
                }
                Streamed { offset: end, lines: 0 }
            }
        };
        let mut events = Vec::new();
        let at = stream_events(&self.path, at, |e| events.push(e), |_| {})?;
        for e in &events {
            self.fold(e);
        }
        self.at = Some(at);
        Ok(())
    }

    fn fold(&mut self, e: &Event) {
        self.last_ts = Some(e.ts);
        if e.stage.is_some() {
            self.stage.clone_from(&e.stage);
        }
        if e.step.is_some() {
            self.step = e.step;
        }
        self.ending.fold(e);
    }
}

/// Remembers a reader per run, so a rescan only reads what each log gained since the last one.
#[derive(Debug, Default)]
pub struct RunScanner {
    tracks: HashMap<PathBuf, Track>,
}

impl RunScanner {
    /// Lists the runs in `runs_dir`, oldest first, marking `attached`.
    pub fn scan(&mut self, runs_dir: &Path, attached: &Path) -> Result<Vec<RunSummary>, RunError> {
        let now = now_ms();
        let mut out = Vec::new();
        for run in RunDir::list(runs_dir)? {
            let track = self.tracks.entry(run.events_path()).or_insert_with_key(|path| Track::new(path));
            track.read()?;
            let state = track.ending.state(WorkerLock::is_live(&run)?.as_ref());
            out.push(RunSummary {
                id: run.id().to_string(),
                state,
                attached: run.path() == attached,
                stage: track.stage.clone(),
                step: track.step,
                age_seconds: track.last_ts.map(|ts| now.saturating_sub(ts) / 1000),
            });
        }
        Ok(out)
    }
}

/// Lists the runs in `runs_dir` once (see [`RunScanner`] for repeated scans).
pub fn scan_runs(runs_dir: &Path, attached: &Path) -> Result<Vec<RunSummary>, RunError> {
    RunScanner::default().scan(runs_dir, attached)
}

/// An age as `12 s`, `5 min`, `3 h` or `2 d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}
