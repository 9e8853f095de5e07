//! hone's terminal UI: attaches to a run directory, shows its training live, and detaches with
//! `q` without ever stopping the worker.
//!
//! Shape: the `tail` thread reads the run directory and sends [`Action`]s; [`update`] folds each
//! action into the [`App`] state (events through [`App::apply`]); `draw(&App, &mut Frame)` paints
//! a frame from the state alone. This module owns the screen and reads the run directory only
//! through [`crate::run`]; it knows nothing of tensors, trainers or file names inside a run.
//!
//! Files: `app` (state), `model` (its plain data types), `action` (actions and `update`), `input`
//! (keys → actions, dialogs first), `keymap` (commands, default keys, keys.toml), `control`
//! (requests to the live worker, off the UI thread), `gpu` (NVML readings on the `gpu` thread),
//! `series` (series, their memory bound and min/max bucket caches), `layout` (areas), `draw/`
//! (painting), `theme` (roles → styles), `runs` (the runs list), `history` (tail-first loading of
//! events.jsonl), `terminal` (raw mode and the panic hook), `runtime` (the event loop and threads).
//!
//! Panes 3 (Label, `label/`) and 4 (Eval, `eval_pane/`) keep their state in `App::label` and
//! `App::eval` (set by `label::attach::init` when the loop attaches to a run), draw from
//! `draw::pane`, and take their keys in `label::attach::route_key` before the keymap, because
//! their keys write files.

mod action;
mod app;
mod control;
mod draw;
mod error;
pub mod eval_pane;
mod gpu;
mod history;
mod input;
mod keymap;
pub mod label;
mod layout;
mod model;
mod runs;
mod runtime;
mod series;
mod terminal;
mod theme;

pub use action::{update, Action, Loaded};
pub use app::{App, NOTICES_KEPT, SFT_HINT};
pub use control::{describe, Control, ControlHandle, NoWorker, Recording, Socket};
pub use draw::draw;
pub use error::TuiError;
pub use gpu::{gpu_lines, GpuReading, GpuStatus};
pub use history::{fold_history, read_tail, TAIL_BYTES};
pub use input::{command_action, key_action};
pub use keymap::{Command, Key, Keymap};
pub use layout::{chart_columns, Columns};
pub use model::{
    CheckpointInfo, GateState, LambdaChange, Level, Modal, Notice, Pane, Progress, RunStatus, Sample, StageInfo,
    StageState, StatusLine, Worker,
};
pub use runs::{age, scan_runs, RunScanner, RunState, RunSummary};
pub use runtime::attach;
pub use series::{
    compact, min_max_buckets, CacheKey, Series, SeriesCache, Window, EMA_WEIGHT, RECENT_STEPS, SERIES_CAP,
};
pub use terminal::TerminalGuard;
pub use theme::{Role, Theme, BUILTIN_THEMES};

use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// Draws `app` into an off-screen `width`×`height` buffer and returns its text, one line per row
/// with trailing spaces trimmed (for tests and snapshots; styles are not included).
pub fn render_to_string(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a TestBackend never fails");
    terminal.draw(|frame| draw(app, frame)).expect("drawing to a TestBackend never fails");
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let mut line = String::new();
        for x in 0..width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
