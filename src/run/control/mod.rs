//! The control socket of a live worker: the protocol (one JSON object per line each way, one
//! reply per request), the worker's server ([`ControlServer`]) and the client the TUI uses
//! ([`Client`]).
//!
//! Requests (`{"cmd": ...}` plus fields): `pause`, `resume`, `stop` (checkpoint, then exit),
//! `skip_stage` (optionally `stage`: only if that stage is the one running), `set_lambda` (`term`:
//! `pref` or `safe`, `value` ≥ 0), `checkpoint_now`, `generate_candidates` (`count` prompts, two
//! responses each, appended to `candidates.jsonl`), `status`. Replies: `{"ok": true}` when the
//! command was queued (the worker applies it at the next step boundary and records it as an
//! event), `{"ok": true, "status": {...}}` for `status`, `{"ok": false, "error": "..."}` otherwise.
//!
//! Security: the socket is created with mode 0600 (inside a private 0700 directory when the run
//! directory's path is too long for a socket address), and every connection's peer uid is
//! checked against the worker's own (`SO_PEERCRED` on Linux, `getpeereid` elsewhere) before a
//! byte is read. A request line longer than [`MAX_REQUEST_BYTES`] is answered with an error and
//! the connection is closed.

mod peer;
mod server;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use server::{ControlServer, Inbox, MAX_CONNECTIONS, MAX_PENDING};

use super::dir::RunDir;
use super::error::RunError;

/// The longest request line accepted, newline excluded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest reply line a client reads.
const MAX_REPLY_BYTES: u64 = 1024 * 1024;
/// Socket paths at least this long go to a private directory instead (the kernel's limit is
/// 104 to 108 bytes including the terminating NUL, depending on the system).
pub const MAX_SOCKET_PATH: usize = 100;
/// How long a client waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which λ a `set_lambda` request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LambdaTerm {
    /// λ_pref, the weight of the preference (DPO/IPO) term.
    Pref,
    /// λ_safe, the weight of the safety term.
    Safe,
}

impl LambdaTerm {
    /// `pref` or `safe`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pref => "pref",
            Self::Safe => "safe",
        }
    }
}

/// One request to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stop between steps until `resume` (no CPU is used while paused).
    Pause,
    /// Continue after `pause`.
    Resume,
    /// Checkpoint at the next step boundary, then exit cleanly.
    Stop,
    /// End the running stage now (its final checkpoint and evaluation still happen).
    SkipStage {
        /// Only if this stage is the one running when the request is applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
    },
    /// Change λ_pref or λ_safe from the next step on.
    SetLambda {
        /// Which λ.
        term: LambdaTerm,
        /// The new value (finite, ≥ 0).
        value: f64,
    },
    /// Save a checkpoint at the next step boundary.
    CheckpointNow,
    /// Sample two responses per prompt for `count` prompts of the running stage with the current
    /// policy and append them to `candidates.jsonl`.
    GenerateCandidates {
        /// How many prompts (1 to [`MAX_CANDIDATE_PROMPTS`]).
        count: usize,
    },
    /// The worker's position, answered at once.
    Status,
}

/// The most prompts one `generate_candidates` request may ask for.
pub const MAX_CANDIDATE_PROMPTS: usize = 256;

impl Request {
    /// Checks the request's values; the message is what the reply's `error` says.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::SetLambda { value, term } if !(value.is_finite() && *value >= 0.0) => {
                Err(format!("set_lambda: value of λ_{} must be a finite number ≥ 0, got {value}", term.as_str()))
            }
            Self::GenerateCandidates { count } if !(1..=MAX_CANDIDATE_PROMPTS).contains(count) => {
                Err(format!("generate_candidates: count must be 1 to {MAX_CANDIDATE_PROMPTS}, got {count}"))
            }
            _ => Ok(()),
        }
    }
}

/// The worker's position, as published at every step boundary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The worker's pid.
    pub pid: u32,
    /// `starting`, `running`, `paused`, `evaluating` or `stopping`.
    pub state: String,
    /// The stage being trained, if any.
    pub stage: Option<String>,
    /// Optimizer steps completed over the whole run.
    pub step: u64,
    /// Optimizer steps completed in the stage.
    pub stage_step: u64,
    /// The stage's length.
    pub stage_total: Option<u64>,
    /// λ_pref in effect.
    pub lambda_pref: Option<f64>,
    /// λ_safe in effect.
    pub lambda_safe: Option<f64>,
    /// Requests received and not yet applied.
    pub pending: usize,
}

/// One reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was accepted.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    /// An accepted request.
    pub fn ok() -> Self {
        Self { ok: true, ..Self::default() }
    }

    /// A refused request.
    pub fn error(message: impl Into<String>) -> Self {
        Self { ok: false, error: Some(message.into()), status: None }
    }
}

/// Where a run's control socket is: `control.sock` in the run directory, or the path recorded in
/// `control.path` when the worker had to put it elsewhere. `None` if neither exists.
pub fn socket_path(run: &RunDir) -> Option<PathBuf> {
    let local = run.control_socket_path();
    if local.exists() {
        return Some(local);
    }
    let recorded = std::fs::read_to_string(run.control_path_file()).ok()?;
    let path = PathBuf::from(recorded.trim_end_matches('\n'));
    path.exists().then_some(path)
}

/// A connection to a live worker's control socket.
#[derive(Debug)]
pub struct Client {
    run: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the worker of the run directory `run_dir`.
    pub fn connect(run_dir: &Path) -> Result<Client, RunError> {
        let run = RunDir::open(run_dir)?;
        let err = |message: String| RunError::Control { run: run_dir.to_path_buf(), message };
        let path = socket_path(&run).ok_or_else(|| err("no control socket: the run has no live worker".into()))?;
        // Never follow a symlink or talk to a socket another user made: whoever could put it there
        // would receive this user's requests (and answer them).
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(format!("cannot stat {}: {e}", path.display())))?;
        if !meta.file_type().is_socket() {
            let what = if meta.file_type().is_symlink() { "a symlink" } else { "not a socket" };
            return Err(err(format!("{} is {what}; refusing to connect", path.display())));
        }
        if meta.uid() != peer::own_uid() {
            return Err(err(format!(
                "{} belongs to uid {}, not to you; refusing to connect",
                path.display(),
                meta.uid()
            )));
        }
        let stream =
            UnixStream::connect(&path).map_err(|e| err(format!("cannot connect to {}: {e}", path.display())))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(|e| err(e.to_string()))?;
        let writer = stream.try_clone().map_err(|e| err(e.to_string()))?;
        Ok(Client { run: run_dir.to_path_buf(), reader: BufReader::new(stream), writer })
    }

    /// Sends one request and waits for its reply.
    pub fn send(&mut self, request: &Request) -> Result<Reply, RunError> {
        let line = serde_json::to_string(request).map_err(|e| self.err(e.to_string()))?;
        self.send_line(&line)
    }

    /// Sends one raw line (without its newline) and waits for the reply (tests use this to send
    /// malformed or oversized requests).
    pub fn send_line(&mut self, line: &str) -> Result<Reply, RunError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(|e| self.err(format!("cannot send: {e}")))?;
        let mut reply = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_REPLY_BYTES)
            .read_until(b'\n', &mut reply)
            .map_err(|e| self.err(format!("no reply: {e}")))?;
        if read == 0 {
            return Err(self.err("the worker closed the connection without a reply".into()));
        }
        serde_json::from_slice(&reply).map_err(|e| self.err(format!("malformed reply: {e}")))
    }

    fn err(&self, message: String) -> RunError {
        RunError::Control { run: self.run.clone(), message }
    }
}
