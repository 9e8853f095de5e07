//! The event loop: the `ui` thread waits in one `tokio::select!` on terminal input, batches of
//! actions from the `tail` thread and a ~30 fps tick, and redraws only when the state changed.
//!
//! The `tail` thread owns all file I/O of the TUI: it polls events.jsonl every 100 ms, checks the
//! worker's lock every second and lists the runs directory every three seconds. It stops when
//! the UI goes away (its channel closes). Detaching never touches the worker: training goes on.

use std::path::Path;
use std::thread;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::action::{key_action, update, Action};
use super::app::App;
use super::draw::draw;
use super::error::TuiError;
use super::model::Worker;
use super::runs::RunScanner;
use super::terminal::{install_panic_hook, mark_ui_thread, TerminalGuard, UI_THREAD};
use super::theme::Theme;
use crate::run::{EventReader, RunDir, WorkerLock};

const FRAME: Duration = Duration::from_millis(33);
const POLL: Duration = Duration::from_millis(100);
/// Polls between liveness checks of the worker.
const LIVENESS_EVERY: u64 = 10;
/// Polls between scans of the runs directory.
const SCAN_EVERY: u64 = 30;
/// Actions taken from the channel per wake-up.
const BATCH: usize = 64;

/// Shows the run in `run_dir` until the user presses `q` (detach). The worker is never signalled.
pub fn attach(run_dir: &Path, theme: Option<&Path>) -> Result<(), TuiError> {
    let theme = Theme::load(theme)?;
    let run = RunDir::open(run_dir)?;
    install_panic_hook();
    let ui = thread::Builder::new()
        .name(UI_THREAD.to_string())
        .spawn(move || run_ui(run, theme))
        .map_err(|source| TuiError::Thread { name: UI_THREAD, source })?;
    match ui.join() {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            Err(TuiError::Panicked { message })
        }
    }
}

fn run_ui(run: RunDir, theme: Theme) -> Result<(), TuiError> {
    mark_ui_thread();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| TuiError::Terminal { op: "start the event loop", source })?;
    runtime.block_on(event_loop(run, theme))
}

async fn event_loop(run: RunDir, theme: Theme) -> Result<(), TuiError> {
    let (tx, mut rx) = mpsc::channel(BATCH);
    let tx_panes = tx.clone();
    crate::tui::label::attach::spawn_watch(run.path().to_path_buf(), tx.clone())
        .map_err(|source| TuiError::Thread { name: "panes", source })?;
    let tail_run = run.clone();
    thread::Builder::new()
        .name("tail".to_string())
        .spawn(move || tail(&tail_run, &tx))
        .map_err(|source| TuiError::Thread { name: "tail", source })?;

    let mut guard = TerminalGuard::enter()?;
    let mut app = App::new(theme);
    crate::tui::label::attach::init(&mut app);
    let size = guard.terminal.size().map_err(|source| TuiError::Terminal { op: "read the size", source })?;
    update(&mut app, Action::Resize(size.width, size.height));
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut actions = Vec::with_capacity(BATCH);
    let mut tail_alive = true;

    while !app.quit {
        tokio::select! {
            term = input.next() => match term {
                Some(Ok(TermEvent::Key(key))) => {
                    if crate::tui::label::attach::route_key(&mut app, key, run.path(), &tx_panes) {
                        continue;
                    }
                    if let Some(action) = key_action(key) {
                        update(&mut app, action);
                    }
                }
                Some(Ok(TermEvent::Resize(w, h))) => update(&mut app, Action::Resize(w, h)),
                Some(Ok(_)) => {}
                Some(Err(source)) => return Err(TuiError::Terminal { op: "read input", source }),
                None => break,
            },
            n = rx.recv_many(&mut actions, BATCH), if tail_alive => {
                if n == 0 {
                    tail_alive = false;
                    update(&mut app, Action::TailFailed("the tail thread stopped; the screen no longer updates".into()));
                }
                for action in actions.drain(..) {
                    update(&mut app, action);
                }
            },
            _ = tick.tick() => {
                update(&mut app, Action::Tick);
                if app.take_dirty() {
                    guard
                        .terminal
                        .draw(|frame| draw(&app, frame))
                        .map_err(|source| TuiError::Terminal { op: "draw", source })?;
                }
            },
        }
    }
    Ok(())
}

/// The `tail` thread: reads new events and checks the worker and the runs directory, sending
/// actions until the UI's end of the channel closes.
fn tail(run: &RunDir, tx: &mpsc::Sender<Action>) {
    let mut tail = Tail { tx, last_error: None };
    let mut reader = EventReader::new(&run.events_path());
    let mut scanner = RunScanner::default();
    for poll in 0u64.. {
        if !tail.read(&mut reader)
            || (poll % LIVENESS_EVERY == 0 && !tail.check_worker(run))
            || (poll % SCAN_EVERY == 0 && !tail.list_runs(&mut scanner, run))
        {
            return;
        }
        thread::sleep(POLL);
    }
}

/// The `tail` thread's end of the channel. Each method returns false once the UI has gone.
struct Tail<'a> {
    tx: &'a mpsc::Sender<Action>,
    /// The last failure reported, so one that repeats every poll is reported once.
    last_error: Option<String>,
}

impl Tail<'_> {
    /// Sends what appeared in events.jsonl since the last call.
    fn read(&mut self, reader: &mut EventReader) -> bool {
        let batch = match reader.read_new() {
            Ok(batch) => batch,
            Err(e) => return self.fail(e.to_string()),
        };
        (!batch.restarted || self.send(Action::LogReplaced))
            && (batch.bad_lines.is_empty() || self.send(Action::BadLinesFound(batch.bad_lines)))
            && (batch.events.is_empty() || self.send(Action::EventsArrived(batch.events)))
    }

    /// Sends whether a worker holds the run's lock.
    fn check_worker(&mut self, run: &RunDir) -> bool {
        match WorkerLock::is_live(run) {
            Ok(live) => self.send(Action::WorkerChecked(live.map_or(Worker::Gone, |w| Worker::Live(w.pid)))),
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Sends the list of runs beside this one.
    fn list_runs(&mut self, scanner: &mut RunScanner, run: &RunDir) -> bool {
        let Some(runs_dir) = run.path().parent() else { return true };
        match scanner.scan(runs_dir, run.path()) {
            Ok(runs) => self.send(Action::RunsListed(runs)),
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn send(&self, action: Action) -> bool {
        self.tx.blocking_send(action).is_ok()
    }

    /// Reports a failure unless it is the one reported last.
    fn fail(&mut self, message: String) -> bool {
        if self.last_error.as_ref() == Some(&message) {
            return true;
        }
        self.last_error = Some(message.clone());
        self.send(Action::TailFailed(message))
    }
}
