//! The run directory: the single source of truth that a detached trainer worker writes and the TUI
//! reads. This module is the only code that knows the file names inside `runs/<run-id>/`.
//!
//! ```text
//! runs/<run-id>/
//!   run.toml          frozen config, written once, atomically (RunDir::write_frozen_config)
//!   events.jsonl      append-only, one flat JSON object per line (EventWriter / EventReader)
//!   worker.pid        the live worker's pid, while it lives (WorkerLock)
//!   worker.lock       the flock(2) the live worker holds (WorkerLock)
//!   worker.log        a detached worker's stdout and stderr
//!   control.sock      the live worker's control socket (control::ControlServer), or
//!   control.path      where it is when the run directory's path is too long for a socket
//!   candidates.jsonl  response pairs generated for labeling (generate_candidates)
//!   labels.jsonl      labels from the labeling pane (path accessor)
//!   overrides.jsonl   (path accessor)
//!   checkpoints/step-000120/   one complete checkpoint: the model's files, trainer_state.json,
//!                     optimizer.safetensors, MANIFEST.json (checkpoint.rs)
//!   eval/<stage>/     (path accessor)
//!   exports/          (path accessor)
//!   references/<stage>/  frozen reference weights of a preference stage (path accessor)
//!   reference-logps/<stage>/chunk-000000.bin  its reference log-probs, stored as computed
//! ```
//!
//! Crash safety in one paragraph: whole files that must never be seen half-written (run.toml,
//! worker.pid, MANIFEST.json) are written to a temporary name, fsynced and renamed; a checkpoint is
//! built in `checkpoints/.tmp-*` and renamed into place only when complete, and deleted by first
//! renaming it to `checkpoints/.trash-*`; events are appended one whole line per `write(2)`, and a
//! torn last line left by a crash is never parsed by readers and is cut off by the next worker.
//! Mutating operations that could race (cutting a torn event line, cleaning temporaries, pruning)
//! take a `&WorkerLock`, so only the single live worker can do them.

mod checkpoint;
mod checkpoints;
pub mod control;
mod dir;
mod error;
mod events;
mod fsutil;
mod lock;
mod signals;
mod status;
pub mod trl;
mod verify;
pub mod worker;

pub use checkpoint::{
    CheckpointFile, CheckpointWriter, PendingCheckpoint, OPTIMIZER_FILE, REWARD_MODEL_FILE, TRAINER_STATE_FILE,
};
pub use checkpoints::{
    clean_incomplete, discard_after, latest_checkpoint, list_checkpoints, prune, Checkpoint, Manifest, ManifestFile,
};
pub use dir::{now_ms, safe_component as dir_component, RunDir, EVAL_FAILURES, EVAL_REPORT, EVAL_RESPONSES};
pub use error::RunError;
pub use events::{kind, BadLine, Event, EventReader, EventWriter, ReadBatch};
pub use lock::{LiveWorker, WorkerLock};
pub use signals::Shutdown;
pub use status::{Ending, RunState};
pub use verify::verify_for_resume;
