//! A run's state as seen from outside: the one reader that `hone runs` and the TUI's runs pane
//! share, so they never disagree. The state comes from the worker lock (live or not) and, when no
//! worker holds it, from the last word of events.jsonl: a `run_finished` counts only until a later
//! `run_started` or `resumed` says the run went on.

use super::events::{kind, Event};
use super::lock::LiveWorker;

/// A run's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// A worker holds the run's lock (its pid, when readable).
    Live(Option<u32>),
    /// `run_finished` with status `completed`.
    Completed,
    /// `run_finished` with status `stopped`: can be resumed.
    Stopped,
    /// `run_finished` with any other status (`failed`).
    Failed,
    /// No live worker and no `run_finished` since the run last started: the worker died.
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

/// How a run's log says it ended so far, folded one event at a time (in file order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending(Option<RunState>);

impl Ending {
    /// The ending after reading `events` in order.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Ending {
        let mut ending = Ending::default();
        for e in events {
            ending.fold(e);
        }
        ending
    }

    /// Takes in the next event of the log.
    pub fn fold(&mut self, e: &Event) {
        match e.event.as_str() {
            kind::RUN_FINISHED => {
                self.0 = Some(match e.fields.get("status").and_then(|s| s.as_str()) {
                    Some("completed") => RunState::Completed,
                    Some("stopped") => RunState::Stopped,
                    _ => RunState::Failed,
                });
            }
            kind::RUN_STARTED | kind::RESUMED => self.0 = None,
            _ => {}
        }
    }

    /// The run's state, given whether a worker holds its lock now.
    pub fn state(self, live: Option<&LiveWorker>) -> RunState {
        match live {
            Some(worker) => RunState::Live(worker.pid),
            None => self.0.unwrap_or(RunState::Interrupted),
        }
    }
}
