//! Named crash points for the torture tests: with `HONE_FAULT=<point>@<n>` in its environment, the
//! process kills itself with SIGKILL (no destructors, no flushing: what a power cut or the OOM
//! killer leaves behind) the n-th time it passes `point` (`@<n>` left out: the first time). Without
//! the variable a point costs one relaxed atomic load.
//!
//! The points, each placed where a crash is most likely to break a promise:
//! - `checkpoint.file`: a checkpoint file written into the temporary directory, others pending;
//! - `checkpoint.manifest`: the manifest written and synced, the directory not yet renamed;
//! - `checkpoint.saved`: the checkpoint renamed into place, older ones not yet pruned, no
//!   `checkpoint_saved` event yet;
//! - `labels.read`: new label lines read, not yet admitted into training;
//! - `eval.report`: an evaluation's failures and responses written, its `report.json` not yet;
//! - `durable.dir.file`: a file of a directory (an export, a reference model) written under the
//!   directory's temporary name, others pending;
//! - `durable.dir`: a directory (an export, a reference model) complete under its temporary name,
//!   not yet renamed into place;
//! - `reference.logps`: a chunk of a stage's reference log-probs written, the next being computed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a point.
pub const ENV: &str = "HONE_FAULT";

/// Every point's name, for tests that visit them all.
pub const POINTS: &[&str] = &[
    "checkpoint.file",
    "checkpoint.manifest",
    "checkpoint.saved",
    "labels.read",
    "eval.report",
    "durable.dir.file",
    "durable.dir",
    "reference.logps",
];

struct Armed {
    point: String,
    nth: u64,
    passes: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (point, nth) = match spec.split_once('@') {
                Some((point, n)) => (point, n.parse().ok()?),
                None => (spec.as_str(), 1),
            };
            Some(Armed { point: point.to_owned(), nth, passes: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Passes the crash point `name`: kills the process if `HONE_FAULT` arms this pass.
pub fn point(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.point == name && armed.passes.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; should delivery lag, never run past the point.
        loop {
            std::thread::park();
        }
    }
}
