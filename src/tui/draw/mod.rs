//! Painting: `draw(&App, &mut Frame)` turns the state into one frame and changes nothing. Every
//! piece of untrusted text (stage names, messages, paths, run ids) passes through
//! [`crate::sanitize::sanitize`] here, right before it reaches the screen.

mod chart;
mod dashboard;
mod overlay;
mod panes;

use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph, Tabs};
use ratatui::Frame;

use super::app::App;
use super::keymap::Command;
use super::layout;
use super::model::{Level, Pane, RunStatus, Worker};
use super::series::{Window, RECENT_STEPS};
use super::theme::Role;
use crate::sanitize::sanitize;

/// Draws the whole frame from `app`.
pub fn draw(app: &App, frame: &mut Frame) {
    let screen = layout::screen(frame.area());
    header(app, frame, screen.header);
    tabs(app, frame, screen.tabs);
    pane(app, frame, screen.body);
    footer(app, frame, screen.footer);
    if app.show_help {
        overlay::help(app, frame);
    }
    if let Some(modal) = &app.modal {
        overlay::modal(app, modal, frame);
    }
}

/// The pane dispatch. The Label and Eval panes exist once the runtime attaches to a run
/// (`label::attach::init`); a bare `App` (as in some snapshots) draws them as an empty panel.
fn pane(app: &App, frame: &mut Frame, body: Rect) {
    match app.pane {
        Pane::Dashboard => dashboard::draw(app, frame, body),
        Pane::Stages => panes::stages(app, frame, body),
        Pane::Label => match &app.label {
            Some(label) => crate::tui::label::draw(label, &app.theme, frame, body),
            None => frame.render_widget(panel(app, " Label "), body),
        },
        Pane::Eval => match &app.eval {
            Some(eval) => crate::tui::eval_pane::draw(eval, &app.theme, frame, body),
            None => frame.render_widget(panel(app, " Eval "), body),
        },
        Pane::Runs => panes::runs(app, frame, body),
    }
}

/// Untrusted text, made safe and kept on one line.
pub(crate) fn clean(text: &str) -> String {
    sanitize(text, false)
}

fn header(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    let run = app.run_id.as_deref().map_or_else(|| "(waiting for run_started)".to_string(), clean);
    let (status, role) = match app.status {
        RunStatus::Waiting => ("waiting".to_string(), Role::Dim),
        RunStatus::Running => ("running".to_string(), Role::StageRunning),
        RunStatus::Completed(s) => (format!("completed in {}", duration(s)), Role::StageDone),
        RunStatus::Stopped(s) => (format!("stopped after {} (resumable)", duration(s)), Role::Warning),
        RunStatus::Failed(s) => (format!("failed after {}", duration(s)), Role::Error),
    };
    let mut spans = vec![
        Span::styled(" hone ", t.style(Role::Text).add_modifier(Modifier::BOLD)),
        Span::styled("│ ", t.style(Role::Dim)),
        Span::styled(run, t.style(Role::Text)),
        Span::styled(" │ ", t.style(Role::Dim)),
        Span::styled(status, t.style(role)),
    ];
    if app.loading_history {
        spans.push(Span::styled(" │ loading history…", t.style(Role::Warning)));
    }
    match (app.worker, app.status) {
        (Worker::Live(pid), _) => {
            let pid = pid.map_or(String::new(), |p| format!(" pid {p}"));
            spans.push(Span::styled(format!(" │ worker{pid}"), t.style(Role::Dim)));
        }
        (Worker::Gone, RunStatus::Running) => {
            spans.push(Span::styled(" │ no live worker: interrupted", t.style(Role::Error)));
        }
        _ => {}
    }
    frame.render_widget(Line::from(spans), area);
}

fn tabs(app: &App, frame: &mut Frame, area: Rect) {
    let titles = Pane::ALL.iter().enumerate().map(|(i, p)| format!("{} {}", i + 1, p.title()));
    let selected = Pane::ALL.iter().position(|p| *p == app.pane).unwrap_or(0);
    let widget = Tabs::new(titles)
        .select(selected)
        .style(app.theme.style(Role::Dim))
        .highlight_style(app.theme.style(Role::FocusBorder).add_modifier(Modifier::BOLD | Modifier::REVERSED))
        .divider("│");
    frame.render_widget(widget, area);
}

fn footer(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    if let Some(status) = &app.status_line {
        let role = match status.level {
            Level::Info => Role::Text,
            Level::Warning => Role::Warning,
            Level::Error => Role::Error,
        };
        frame.render_widget(Paragraph::new(format!(" {}", clean(&status.text))).style(t.style(role)), area);
        return;
    }
    let on = |b: bool| if b { "on" } else { "off" };
    let window = match app.window {
        Window::Recent => format!("last {RECENT_STEPS}"),
        Window::Whole => "whole run".to_string(),
    };
    let key = |c| app.keymap.keys_for(c).into_iter().next().unwrap_or_else(|| "—".to_string());
    if matches!(app.pane, Pane::Label | Pane::Eval) {
        // These panes take the other keys themselves (their own key line is inside the pane).
        let text = format!(" {} detach · {} help (this pane's keys)", key(Command::Quit), key(Command::Help));
        frame.render_widget(Paragraph::new(text).style(t.style(Role::Dim)), area);
        return;
    }
    let text = format!(
        " {} detach · {} help · {} smooth:{} · {} log:{} · {} window:{window}",
        key(Command::Quit),
        key(Command::Help),
        key(Command::Smoothing),
        on(app.smoothing),
        key(Command::LogScale),
        on(app.log_scale),
        key(Command::Window),
    );
    frame.render_widget(Paragraph::new(text).style(t.style(Role::Dim)), area);
}

/// A titled, bordered block.
pub(crate) fn panel<'a>(app: &App, title: impl Into<Line<'a>>) -> Block<'a> {
    Block::bordered()
        .border_type(BorderType::Plain)
        .border_style(app.theme.style(Role::Dim))
        .title(title)
        .title_style(app.theme.style(Role::Text))
}

/// A number in at most ~9 characters: fixed point in the usual range, scientific outside it.
pub(crate) fn value(v: f64) -> String {
    if !v.is_finite() {
        return "—".to_string();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Seconds as `12.3 s`, `4:05` or `1:02:03`.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "—".to_string();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    if s < 3600 {
        format!("{}:{:02}", s / 60, s % 60)
    } else {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    }
}

/// A count with thousands separators: `12,345`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as `1.9 MB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(value(2.4214), "2.421");
        assert_eq!(value(0.0015), "0.002");
        assert_eq!(value(0.0001), "1.00e-4");
        assert_eq!(value(123.45), "123.5");
        assert_eq!(duration(10.094), "10.1 s");
        assert_eq!(duration(125.0), "2:05");
        assert_eq!(duration(3725.0), "1:02:05");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(bytes(1_884_637), "1.9 MB");
    }
}
