//! `Action`: everything that can change the UI state, and [`update`], the only place that applies
//! one. Keys become actions in [`crate::tui::key_action`]; the background threads send actions for
//! new events, GPU readings and control replies.

use super::app::App;
use super::gpu::GpuStatus;
use super::model::{Level, Modal, Notice, Pane, Worker};
use super::runs::{RunState, RunSummary};
use super::series::Window;
use crate::control::{LambdaTerm, Request};
use crate::run::{BadLine, Event};

/// A change to the UI state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Show another pane.
    SwitchPane(Pane),
    /// Draw the EMA instead of raw values (or back).
    ToggleSmoothing,
    /// Log scale on the loss chart (or back).
    ToggleLogScale,
    /// Recent window (last 200 steps) or the whole run.
    ToggleWindow,
    /// Detach: leave the UI; training goes on.
    Quit,
    /// Show the help overlay, or hide it when shown.
    ShowHelp,
    /// Close the help overlay or the open dialog.
    CloseOverlay,
    /// Select the previous row of the pane's list.
    SelectPrevious,
    /// Select the next row of the pane's list.
    SelectNext,
    /// Act on the selected row (Runs pane: attach the selected run).
    Activate,
    /// Send a request to the worker now.
    Send(Request),
    /// Ask before sending a request (stop, skip stage).
    AskToConfirm(Request),
    /// Open the input field for a λ (`pref` or `safe`).
    EditLambda(String),
    /// A character typed into the open input field.
    InputChar(char),
    /// Backspace in the open input field.
    InputBackspace,
    /// Confirm the open dialog (send the request, or the typed λ).
    Confirm,
    /// The worker answered a request (or sending it failed).
    ControlReplied(Request, Result<String, String>),
    /// The GPU was read.
    GpuRead(GpuStatus),
    /// A frame tick (~30 per second); state does not depend on wall time, so nothing changes.
    Tick,
    /// New events from events.jsonl, in file order.
    EventsArrived(Vec<Event>),
    /// The newest events of a long log, shown while its whole history loads behind them.
    TailShown(Vec<Event>),
    /// The whole history, folded off the UI thread, replaces what the tail showed first.
    HistoryLoaded(Loaded),
    /// events.jsonl was replaced or shortened: reading starts over.
    LogReplaced,
    /// Lines of events.jsonl that are not valid events.
    BadLinesFound(Vec<BadLine>),
    /// Reading the run directory failed (the message says what and where).
    TailFailed(String),
    /// The worker's liveness was checked.
    WorkerChecked(Worker),
    /// The runs directory was listed.
    RunsListed(Vec<RunSummary>),
    /// The terminal is now this many columns and rows.
    Resize(u16, u16),
    /// News for the label and eval panes (saves, loads, candidates, agreement).
    Panes(crate::tui::label::attach::PaneMsg),
}

/// A run's state folded from its whole history (boxed: it is large).
#[derive(Debug, Clone)]
pub struct Loaded(pub Box<App>);

impl PartialEq for Loaded {
    /// Two loaded histories are equal when they reached the same point of the same run.
    fn eq(&self, other: &Loaded) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.run_id == b.run_id && a.progress == b.progress && a.stages == b.stages && a.status == b.status
    }
}

/// Applies `action` to `app`.
pub fn update(app: &mut App, action: Action) {
    match action {
        Action::SwitchPane(pane) => {
            app.pane = pane;
            app.show_help = false;
        }
        Action::ToggleSmoothing => app.smoothing = !app.smoothing,
        Action::ToggleLogScale => app.log_scale = !app.log_scale,
        Action::ToggleWindow => {
            app.window = match app.window {
                Window::Recent => Window::Whole,
                Window::Whole => Window::Recent,
            };
        }
        Action::Quit => app.quit = true,
        Action::ShowHelp => app.show_help = !app.show_help,
        Action::CloseOverlay => {
            app.show_help = false;
            app.modal = None;
        }
        Action::SelectPrevious | Action::SelectNext => select(app, action == Action::SelectNext),
        Action::Activate => activate(app),
        Action::Send(request) => app.request(request),
        Action::AskToConfirm(request) => app.modal = Some(Modal::Confirm(request)),
        Action::EditLambda(term) => {
            let input = app.lambdas.get(&term).map_or_else(String::new, ToString::to_string);
            app.modal = Some(Modal::EditLambda { term, input, error: None });
        }
        Action::InputChar(c) => {
            if let Some(Modal::EditLambda { input, error, .. }) = &mut app.modal {
                if input.chars().count() < 24 {
                    input.push(c);
                }
                *error = None;
            }
        }
        Action::InputBackspace => {
            if let Some(Modal::EditLambda { input, error, .. }) = &mut app.modal {
                input.pop();
                *error = None;
            }
        }
        Action::Confirm => confirm(app),
        Action::ControlReplied(request, outcome) => match outcome {
            Ok(reply) => app.set_status(Level::Info, format!("{}: {reply}", request.name())),
            Err(message) => app.set_status(Level::Error, format!("{} failed: {message}", request.name())),
        },
        Action::GpuRead(status) => {
            if app.gpu == status {
                return;
            }
            app.gpu = status;
        }
        Action::Tick => return,
        Action::EventsArrived(events) => {
            for event in &events {
                app.apply(event);
            }
            if let Some(label) = app.label.as_mut() {
                label.consumed_by_dpo = Some(app.labels_admitted);
            }
        }
        Action::TailShown(events) => {
            for event in &events {
                app.apply(event);
            }
            app.loading_history = true;
        }
        Action::HistoryLoaded(Loaded(loaded)) => {
            app.replace_run(*loaded);
            app.loading_history = false;
        }
        Action::LogReplaced => {
            app.clear_run();
            app.push_notice(notice(Level::Warning, "events.jsonl was replaced; reading it again from the start"));
        }
        Action::BadLinesFound(lines) => {
            for bad in lines {
                app.push_notice(notice(Level::Warning, &format!("events.jsonl:{}: {}", bad.line, bad.message)));
            }
        }
        Action::TailFailed(message) => app.push_notice(notice(Level::Error, &message)),
        Action::WorkerChecked(worker) => {
            if app.worker == worker {
                return;
            }
            app.worker = worker;
        }
        Action::RunsListed(runs) => {
            if app.runs == runs {
                return;
            }
            app.runs = runs;
            app.selected_run = app.selected_run.min(app.runs.len().saturating_sub(1));
        }
        Action::Resize(columns, rows) => app.size = (columns, rows),
        Action::Panes(msg) => crate::tui::label::attach::apply(app, msg),
    }
    app.refresh_caches();
    app.touch();
}

fn select(app: &mut App, next: bool) {
    let (selected, len) = match app.pane {
        Pane::Stages => (&mut app.selected_stage, app.stages.len()),
        Pane::Runs => (&mut app.selected_run, app.runs.len()),
        _ => return,
    };
    *selected = if next { (*selected + 1).min(len.saturating_sub(1)) } else { selected.saturating_sub(1) };
}

fn activate(app: &mut App) {
    if app.pane != Pane::Runs {
        return;
    }
    let Some(run) = app.runs.get(app.selected_run) else { return };
    if run.attached {
        let id = run.id.clone();
        app.set_status(Level::Info, format!("already attached to {id}"));
    } else {
        let (id, live) = (run.id.clone(), matches!(run.state, RunState::Live(_)));
        app.request_attach(id);
        if !live {
            app.pane = Pane::Dashboard;
        }
    }
}

fn confirm(app: &mut App) {
    match app.modal.take() {
        Some(Modal::Confirm(request)) => app.request(request),
        Some(Modal::EditLambda { term, input, .. }) => {
            match (LambdaTerm::from_name(&term), input.trim().parse::<f64>()) {
                (None, _) => {
                    let error = Some(format!("no λ named {term:?} (pref or safe)"));
                    app.modal = Some(Modal::EditLambda { term, input, error });
                }
                (Some(lambda), Ok(value)) if value.is_finite() && value >= 0.0 => {
                    app.request(Request::SetLambda { term: lambda, value });
                }
                _ => {
                    let error = Some(format!("{:?} is not a number ≥ 0", input.trim()));
                    app.modal = Some(Modal::EditLambda { term, input, error });
                }
            }
        }
        None => {}
    }
}

fn notice(level: Level, message: &str) -> Notice {
    Notice { level, stage: None, step: None, message: message.to_string() }
}
