//! `RunDir`: creating, opening and listing run directories, the frozen config, and the path of
//! every file inside a run. File names live here and nowhere else in hone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::RunError;
use super::fsutil::{check_component, write_atomic, IoContext};

const RUN_TOML: &str = "run.toml";
const EVENTS: &str = "events.jsonl";
const WORKER_PID: &str = "worker.pid";
const WORKER_LOCK: &str = "worker.lock";
const LABELS: &str = crate::config::RUN_LABELS_FILE;
const OVERRIDES: &str = "overrides.jsonl";
const CHECKPOINTS: &str = "checkpoints";
const EVAL: &str = "eval";
const EXPORTS: &str = "exports";
const REFERENCES: &str = "references";
const REFERENCE_LOGPS: &str = "reference-logps";
const CONTROL_SOCK: &str = "control.sock";
const CONTROL_PATH: &str = "control.path";
const CANDIDATES: &str = "candidates.jsonl";
const WORKER_LOG: &str = "worker.log";

/// The files of one evaluation directory (`eval/<stage>/`, or `hone eval --out`); the report is
/// written last, so its presence marks the evaluation complete.
pub const EVAL_REPORT: &str = "report.json";
/// The failed items of an evaluation, one JSON record per line.
pub const EVAL_FAILURES: &str = "failures.jsonl";
/// Every response of an evaluation, one JSON record per line.
pub const EVAL_RESPONSES: &str = "responses.jsonl";

/// Highest `-N` suffix tried when several runs with one name start in the same second.
const MAX_SUFFIX: u32 = 10_000;

/// One run directory, `runs/<run-id>/`. Cheap to clone; holds only the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDir {
    path: PathBuf,
    id: String,
}

impl RunDir {
    /// Creates a new, empty run directory `runs_dir/YYYYMMDD-HHMMSS-<name>` (UTC now), adding `-2`,
    /// `-3`, ... when that id is taken. `runs_dir` is created if missing; the leaf is made with
    /// `create_dir`, so two concurrent creators never get the same directory. The result is not yet
    /// openable with [`RunDir::open`] until run.toml or events.jsonl is written.
    pub fn create(runs_dir: &Path, name: &str) -> Result<RunDir, RunError> {
        check_component(runs_dir, name)?;
        fs::create_dir_all(runs_dir).ctx("create runs directory", runs_dir)?;
        let stamp = format_utc(unix_secs(SystemTime::now()));
        for n in 1..=MAX_SUFFIX {
            let id = if n == 1 { format!("{stamp}-{name}") } else { format!("{stamp}-{name}-{n}") };
            let path = runs_dir.join(&id);
            match fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path, id }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx("create run directory", &path),
            }
        }
        Err(RunError::NoFreeId { path: runs_dir.to_path_buf(), name: name.to_string() })
    }

    /// Opens an existing run directory; it must contain run.toml or events.jsonl.
    pub fn open(path: &Path) -> Result<RunDir, RunError> {
        let meta = fs::metadata(path).ctx("open run directory", path)?;
        if !meta.is_dir() || !(path.join(RUN_TOML).exists() || path.join(EVENTS).exists()) {
            return Err(RunError::NotARun { path: path.to_path_buf() });
        }
        let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(RunDir { path: path.to_path_buf(), id })
    }

    /// The run directory at `path` for a reader that was handed it (the TUI's threads, `hone
    /// label --run`): file names only, nothing checked; a missing file reads as absent.
    pub fn at(path: &Path) -> RunDir {
        let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        RunDir { path: path.to_path_buf(), id }
    }

    /// Every run directory directly inside `runs_dir`, oldest first (see [`RunDir::newest`] for the
    /// order). Entries that are not run directories are skipped; a missing `runs_dir` gives an empty
    /// list.
    pub fn list(runs_dir: &Path) -> Result<Vec<RunDir>, RunError> {
        let entries = match fs::read_dir(runs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("list runs directory", runs_dir),
        };
        let mut runs = Vec::new();
        for entry in entries {
            let entry = entry.ctx("list runs directory", runs_dir)?;
            if let Ok(run) = RunDir::open(&entry.path()) {
                let key = run.order_key();
                runs.push((key, run));
            }
        }
        runs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(runs.into_iter().map(|(_, run)| run).collect())
    }

    /// The most recently created run in `runs_dir`, if any. Runs are ordered by the timestamp in
    /// their id (the directory's modification time for ids without one), then by the directory's
    /// creation time, then by id.
    pub fn newest(runs_dir: &Path) -> Result<Option<RunDir>, RunError> {
        Ok(RunDir::list(runs_dir)?.pop())
    }

    fn order_key(&self) -> (String, SystemTime, String) {
        let meta = fs::metadata(&self.path).ok();
        let created = meta.as_ref().and_then(|m| m.created().or_else(|_| m.modified()).ok()).unwrap_or(UNIX_EPOCH);
        let stamp = match self.id.get(..15) {
            Some(prefix) if is_stamp(prefix) => prefix.to_string(),
            _ => {
                let modified = meta.as_ref().and_then(|m| m.modified().ok()).unwrap_or(UNIX_EPOCH);
                format_utc(unix_secs(modified))
            }
        };
        (stamp, created, self.id.clone())
    }

    /// The run id: the directory's name, e.g. `20250301-142233-sft-smol`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `run.toml`, the frozen config.
    pub fn config_path(&self) -> PathBuf {
        self.path.join(RUN_TOML)
    }

    /// `events.jsonl`, the append-only event log.
    pub fn events_path(&self) -> PathBuf {
        self.path.join(EVENTS)
    }

    /// `worker.pid`, the live worker's pid (present while a worker holds the lock; may be stale
    /// after a crash, see [`crate::run::WorkerLock`]).
    pub fn worker_pid_path(&self) -> PathBuf {
        self.path.join(WORKER_PID)
    }

    /// `control.sock`, the live worker's control socket (when the path is short enough for a
    /// Unix socket; see [`RunDir::control_path_file`]).
    pub fn control_socket_path(&self) -> PathBuf {
        self.path.join(CONTROL_SOCK)
    }

    /// `control.path`: where the control socket is when the run directory's own path is too long
    /// for a Unix socket (one line, the socket's absolute path).
    pub fn control_path_file(&self) -> PathBuf {
        self.path.join(CONTROL_PATH)
    }

    /// `candidates.jsonl`: response pairs the policy generated for labeling.
    pub fn candidates_path(&self) -> PathBuf {
        self.path.join(CANDIDATES)
    }

    /// `worker.log`: a detached worker's stdout and stderr.
    pub fn worker_log_path(&self) -> PathBuf {
        self.path.join(WORKER_LOG)
    }

    /// `worker.lock`, the file whose flock(2) the live worker holds.
    pub fn worker_lock_path(&self) -> PathBuf {
        self.path.join(WORKER_LOCK)
    }

    /// `labels.jsonl`, written by the labeling pane.
    pub fn labels_path(&self) -> PathBuf {
        self.path.join(LABELS)
    }

    /// `overrides.jsonl`.
    pub fn overrides_path(&self) -> PathBuf {
        self.path.join(OVERRIDES)
    }

    /// `checkpoints/`, holding `step-NNNNNN/` directories.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINTS)
    }

    /// `checkpoints/step-NNNNNN/` for `step` (six digits, more if the step needs them). The
    /// directory may not exist; use [`crate::run::list_checkpoints`] for complete ones.
    pub fn checkpoint_dir(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(step_dir_name(step))
    }

    /// `eval/`, holding one directory per evaluated stage.
    pub fn eval_root(&self) -> PathBuf {
        self.path.join(EVAL)
    }

    /// `eval/<stage>/`. The stage is used as one path component: characters other than ASCII
    /// letters, digits, '-', '_' and '.' become '_', as does a leading '.', so it cannot escape.
    pub fn eval_dir(&self, stage: &str) -> PathBuf {
        self.path.join(EVAL).join(safe_component(stage))
    }

    /// `references/<stage>/`: the frozen reference weights a preference stage compares against
    /// (the weights it started from), written once so a resumed stage uses the same reference.
    /// The stage name is made a safe path component as in [`RunDir::eval_dir`].
    pub fn reference_dir(&self, stage: &str) -> PathBuf {
        self.path.join(REFERENCES).join(safe_component(stage))
    }

    /// `reference-logps/<stage>/chunk-NNNNNN.bin`: chunk `index` of the reference log-probs a
    /// preference stage computed (kept so that a resume computes only the rest). The stage is
    /// made a safe path component as in [`RunDir::eval_dir`].
    pub fn reference_logps_path(&self, stage: &str, index: usize) -> PathBuf {
        self.path.join(REFERENCE_LOGPS).join(safe_component(stage)).join(format!("chunk-{index:06}.bin"))
    }

    /// `exports/`.
    pub fn exports_dir(&self) -> PathBuf {
        self.path.join(EXPORTS)
    }

    /// Writes run.toml atomically (temp file, fsync, rename, fsync of the run directory).
    pub fn write_frozen_config(&self, text: &str) -> Result<(), RunError> {
        write_atomic(&self.config_path(), text.as_bytes())
    }

    /// Starts `candidates.jsonl` with the pairs of `sources` (a pipeline's `[label] candidates`),
    /// concatenated in order, each file's last line ended; written atomically before any worker
    /// appends generated pairs. Nothing is written when `sources` is empty.
    pub fn seed_candidates(&self, sources: &[PathBuf]) -> Result<(), RunError> {
        if sources.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for source in sources {
            let mut text = fs::read(source).ctx("read candidates", source)?;
            if text.last().is_some_and(|&b| b != b'\n') {
                text.push(b'\n');
            }
            bytes.extend_from_slice(&text);
        }
        write_atomic(&self.candidates_path(), &bytes)
    }

    /// Reads run.toml.
    pub fn read_frozen_config(&self) -> Result<String, RunError> {
        let path = self.config_path();
        fs::read_to_string(&path).ctx("read", &path)
    }
}

/// `step-000120` for step 120.
pub(crate) fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Parses `step-NNNNNN` (at least six digits, nothing else) back to the step.
pub(crate) fn parse_step_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: u64 = digits.parse().ok()?;
    (step_dir_name(step) == name).then_some(step)
}

/// Milliseconds since the Unix epoch, now (0 before 1970, saturating far in the future): the
/// one clock of events' `ts` and labels' `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn is_stamp(s: &str) -> bool {
    s.len() == 15 && s.bytes().enumerate().all(|(i, b)| if i == 8 { b == b'-' } else { b.is_ascii_digit() })
}

/// Formats Unix seconds as `YYYYMMDD-HHMMSS` in UTC.
pub(crate) fn format_utc(secs: u64) -> String {
    crate::data::date::utc_stamp(secs)
}

/// A stage name as one path component: characters other than ASCII letters, digits, '-', '_' and
/// '.' become '_', as does a leading '.', so it cannot escape its parent directory.
pub fn safe_component(stage: &str) -> String {
    let mut safe: String =
        stage.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if safe.is_empty() || safe.starts_with('.') {
        safe.insert(0, '_');
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0), "19700101-000000");
        assert_eq!(format_utc(951_782_400), "20000229-000000");
        assert_eq!(format_utc(1_740_838_953), "20250301-142233");
        assert_eq!(format_utc(4_102_444_799), "20991231-235959");
    }

    #[test]
    fn step_names_round_trip() {
        assert_eq!(step_dir_name(120), "step-000120");
        assert_eq!(parse_step_dir_name("step-000120"), Some(120));
        assert_eq!(parse_step_dir_name("step-1234567"), Some(1_234_567));
        assert_eq!(parse_step_dir_name("step-00120"), None);
        assert_eq!(parse_step_dir_name("step-0001200x"), None);
        assert_eq!(parse_step_dir_name("step-0000120"), None);
        assert_eq!(parse_step_dir_name(".tmp-step-000120-7"), None);
    }
}
