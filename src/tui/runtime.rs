//! The event loop: the `ui` thread waits in one `tokio::select!` on terminal input, batches of
//! actions from the `tail` thread, replies from the `control` thread and readings from the `gpu`
//! thread, and a ~30 fps tick, and redraws only when the state changed. Control requests are
//! queued to the `control` thread, so the UI never waits on the worker.
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

use super::action::{update, Action, Loaded};
use super::app::App;
use super::control::{Control, ControlHandle, Socket};
use super::draw::draw;
use super::error::TuiError;
use super::gpu;
use super::history::{fold_history, read_tail, TAIL_BYTES};
use super::input::key_action;
use super::keymap::Keymap;
use super::model::{Level, Worker};
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
/// `theme` is a built-in theme name (`default`, `light`, `high-contrast`), a user theme
/// `NAME.toml` in the config directory's `themes/`, or a file; `NO_COLOR` drops colours. Keys
/// come from the defaults merged with `keys.toml` in the config directory.
pub fn attach(run_dir: &Path, theme: Option<&Path>) -> Result<(), TuiError> {
    let config_dir = crate::config::user_config_dir();
    let spec = theme.map(|t| t.to_string_lossy().into_owned());
    let themes_dir = config_dir.as_ref().map(|d| d.join("themes"));
    let mut theme = Theme::resolve(spec.as_deref(), themes_dir.as_deref())?;
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        theme = theme.without_colour();
    }
    let keymap = Keymap::load(config_dir.map(|d| d.join("keys.toml")).as_deref())?;
    let run = RunDir::open(run_dir)?;
    install_panic_hook();
    let ui = thread::Builder::new()
        .name(UI_THREAD.to_string())
        .spawn(move || run_ui(run, theme, keymap))
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

/// The transport to `run`'s live worker: its control socket, reached afresh for every request
/// (a finished run answers each one with "no live worker").
fn connect_control(run: &RunDir) -> Box<dyn Control> {
    Box::new(Socket::new(run.path().to_path_buf()))
}

fn run_ui(run: RunDir, theme: Theme, keymap: Keymap) -> Result<(), TuiError> {
    mark_ui_thread();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| TuiError::Terminal { op: "start the event loop", source })?;
    runtime.block_on(event_loop(run, theme, keymap))
}

/// What the event loop holds for the attached run: its tail channel and its control thread.
struct Attached {
    run: RunDir,
    rx: mpsc::Receiver<Action>,
    /// Where panes 3 and 4 send their results (file writes finish off the UI thread).
    panes: mpsc::Sender<Action>,
    /// The `panes` thread's and the label writes' results.
    panes_rx: mpsc::Receiver<Action>,
    control: ControlHandle,
    tail_alive: bool,
}

impl Attached {
    /// Starts the `tail` and `control` threads for `run`; replies and GPU readings go to `side`.
    fn start(run: RunDir, side: &mpsc::UnboundedSender<Action>) -> Result<Attached, TuiError> {
        let (tx, rx) = mpsc::channel(BATCH);
        let tail_run = run.clone();
        thread::Builder::new()
            .name("tail".to_string())
            .spawn(move || tail(&tail_run, &tx))
            .map_err(|source| TuiError::Thread { name: "tail", source })?;
        let (panes, panes_rx) = mpsc::channel(BATCH);
        crate::tui::label::attach::spawn_watch(run.path().to_path_buf(), panes.clone())
            .map_err(|source| TuiError::Thread { name: "panes", source })?;
        let replies = side.clone();
        let control = ControlHandle::spawn(connect_control(&run), move |request, outcome| {
            replies.send(Action::ControlReplied(request, outcome)).is_ok()
        })
        .map_err(|source| TuiError::Thread { name: "control", source })?;
        Ok(Attached { run, rx, panes, panes_rx, control, tail_alive: true })
    }
}

async fn event_loop(run: RunDir, theme: Theme, keymap: Keymap) -> Result<(), TuiError> {
    let (side_tx, mut side_rx) = mpsc::unbounded_channel();
    let mut attached = Attached::start(run, &side_tx)?;
    let gpu_tx = side_tx.clone();
    gpu::spawn(move |status| gpu_tx.send(Action::GpuRead(status)).is_ok())
        .map_err(|source| TuiError::Thread { name: "gpu", source })?;

    let mut guard = TerminalGuard::enter()?;
    let mut app = App::new(theme);
    app.keymap = keymap;
    crate::tui::label::attach::init(&mut app);
    let size = guard.terminal.size().map_err(|source| TuiError::Terminal { op: "read the size", source })?;
    update(&mut app, Action::Resize(size.width, size.height));
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut actions = Vec::with_capacity(BATCH);

    while !app.quit {
        tokio::select! {
            term = input.next() => match term {
                Some(Ok(TermEvent::Key(key))) => {
                    let overlay = app.modal.is_some() || app.show_help;
                    if !overlay && crate::tui::label::attach::route_key(&mut app, key, attached.run.path(), &attached.panes) {
                        continue;
                    }
                    if let Some(action) = key_action(&app, key) {
                        update(&mut app, action);
                    }
                }
                Some(Ok(TermEvent::Resize(w, h))) => update(&mut app, Action::Resize(w, h)),
                Some(Ok(_)) => {}
                Some(Err(source)) => return Err(TuiError::Terminal { op: "read input", source }),
                None => break,
            },
            n = attached.rx.recv_many(&mut actions, BATCH), if attached.tail_alive => {
                if n == 0 {
                    attached.tail_alive = false;
                    update(&mut app, Action::TailFailed("the tail thread stopped; the screen no longer updates".into()));
                }
                for action in actions.drain(..) {
                    update(&mut app, action);
                }
            },
            Some(action) = side_rx.recv() => update(&mut app, action),
            Some(action) = attached.panes_rx.recv() => update(&mut app, action),
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
        for request in app.take_requests() {
            if !attached.control.send(request) {
                app.set_status(Level::Error, "the control thread stopped; requests cannot be sent".to_string());
            }
        }
        if let Some(id) = app.take_attach() {
            switch_run(&mut app, &mut attached, &id, &side_tx)?;
        }
    }
    Ok(())
}

/// Attaches to run `id` beside the current one: new tail and control threads, a cleared state.
/// The old tail thread ends when it finds its channel closed.
fn switch_run(
    app: &mut App,
    attached: &mut Attached,
    id: &str,
    side: &mpsc::UnboundedSender<Action>,
) -> Result<(), TuiError> {
    let Some(runs_dir) = attached.run.path().parent() else { return Ok(()) };
    match RunDir::open(&runs_dir.join(id)) {
        Ok(run) => {
            *attached = Attached::start(run, side)?;
            app.clear_run();
            crate::tui::label::attach::init(app);
            app.worker = Worker::Unknown;
            app.set_status(Level::Info, format!("attached to {id}"));
        }
        Err(e) => app.set_status(Level::Error, e.to_string()),
    }
    Ok(())
}

/// The `tail` thread: shows the end of a long log first and folds its whole history behind it,
/// then reads new events and checks the worker and the runs directory, sending actions until the
/// UI's end of the channel closes.
fn tail(run: &RunDir, tx: &mpsc::Sender<Action>) {
    let mut tail = Tail { tx, last_error: None };
    let path = run.events_path();
    let long = std::fs::metadata(&path).is_ok_and(|m| m.len() > TAIL_BYTES);
    let mut reader = EventReader::new(&path);
    if long {
        let shown = match read_tail(&path, TAIL_BYTES) {
            Ok((events, _)) => tail.send(Action::TailShown(events)),
            Err(e) => tail.fail(e.to_string()),
        };
        if !shown {
            return;
        }
        match fold_history(&path) {
            Ok((app, bad, end)) => {
                if !tail.send(Action::HistoryLoaded(Loaded(Box::new(app))))
                    || (!bad.is_empty() && !tail.send(Action::BadLinesFound(bad)))
                {
                    return;
                }
                reader = EventReader::starting_at(&path, end.offset, end.lines);
            }
            Err(e) if !tail.fail(e.to_string()) => return,
            Err(_) => {}
        }
    }
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
