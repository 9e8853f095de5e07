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

pub use crate::control::{LambdaTerm, Request, Status, MAX_CANDIDATE_PROMPTS};
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
