//! `RunError`: every failure of the run-directory layer, each naming the path it concerns.

use std::io;
use std::path::PathBuf;

/// An error from the run-directory layer. Every variant carries the path it is about, so a message
/// shown in the TUI or the CLI says which file or directory failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An I/O operation failed; `op` says which (e.g. "open", "rename", "fsync").
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// What was being done, as a verb phrase.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The directory is not a run directory (it holds neither run.toml nor events.jsonl).
    #[error("{} is not a run directory (no run.toml or events.jsonl)", .path.display())]
    NotARun {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// A name given by the caller (run name, checkpoint file name) is not usable as a file name.
    #[error("invalid name {name:?} in {}: {reason}", .path.display())]
    InvalidName {
        /// The directory the name would have been created in.
        path: PathBuf,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Every candidate run id for this second and name was already taken.
    #[error("no free run id for {name:?} in {}", .path.display())]
    NoFreeId {
        /// The runs directory.
        path: PathBuf,
        /// The requested run name.
        name: String,
    },
    /// Another process holds the worker lock of this run.
    #[error("run {} already has a live worker ({})", .run.display(), pid_text(*.pid))]
    Busy {
        /// The run directory.
        run: PathBuf,
        /// The live worker's pid as read from worker.pid; `None` if that file could not be read.
        pid: Option<u32>,
    },
    /// An event could not be serialized (e.g. a field named like a reserved key).
    #[error("cannot serialize an event for {}: {source}", .path.display())]
    Serialize {
        /// The events file the event was meant for.
        path: PathBuf,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint for this step already exists; checkpoints are never rewritten in place.
    #[error("checkpoint {} already exists; checkpoints are never rewritten", .path.display())]
    CheckpointExists {
        /// The existing checkpoint directory.
        path: PathBuf,
    },
    /// A checkpoint is incomplete or damaged.
    #[error("checkpoint {} is not valid: {reason}", .path.display())]
    BadCheckpoint {
        /// The checkpoint directory or the offending file in it.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A signal handler could not be installed.
    #[error("cannot install a handler for signal {signal}: {source}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The control socket: no live worker to talk to, a refused or malformed exchange.
    #[error("control socket of {}: {message}", .run.display())]
    Control {
        /// The run directory.
        run: PathBuf,
        /// What went wrong.
        message: String,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown: worker.pid unreadable".to_string(),
    }
}
