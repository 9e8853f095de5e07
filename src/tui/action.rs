//! `Action`: everything that can change the UI state, and [`update`], the only place that applies
//! one. Keys become actions in [`key_action`]; the tail thread sends actions for new events.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::App;
use super::model::{Level, Notice, Pane, Worker};
use super::runs::RunSummary;
use super::series::Window;
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
    /// Close the help overlay.
    CloseOverlay,
    /// A frame tick (~30 per second); state does not depend on wall time, so nothing changes.
    Tick,
    /// New events from events.jsonl, in file order.
    EventsArrived(Vec<Event>),
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
        Action::CloseOverlay => app.show_help = false,
        Action::Tick => return,
        Action::EventsArrived(events) => {
            for event in &events {
                app.apply(event);
            }
            if let Some(label) = app.label.as_mut() {
                label.consumed_by_dpo = Some(app.labels_admitted);
            }
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
        }
        Action::Resize(columns, rows) => app.size = (columns, rows),
        Action::Panes(msg) => crate::tui::label::attach::apply(app, msg),
    }
    app.refresh_caches();
    app.touch();
}

fn notice(level: Level, message: &str) -> Notice {
    Notice { level, stage: None, step: None, message: message.to_string() }
}

/// The action a key press asks for, if any. `q` and Ctrl-C detach; neither stops training.
pub fn key_action(key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
        KeyCode::Char('q') => Some(Action::Quit),
        KeyCode::Char('?') => Some(Action::ShowHelp),
        KeyCode::Esc => Some(Action::CloseOverlay),
        KeyCode::Char('s') => Some(Action::ToggleSmoothing),
        KeyCode::Char('l') => Some(Action::ToggleLogScale),
        KeyCode::Char('w') => Some(Action::ToggleWindow),
        KeyCode::Char(c @ '1'..='5') => Pane::from_number(c as u8 - b'0').map(Action::SwitchPane),
        _ => None,
    }
}
