//! Panes 2 to 5: stages in detail, the runs list, and the honest placeholders for panes that are
//! not built yet.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::dashboard::stage_look;
use super::{bytes, clean, count, panel, value};
use crate::tui::app::App;
use crate::tui::runs::RunState;
use crate::tui::theme::Role;

/// Pane 2: one row per stage, then checkpoints, labels and λ.
pub(super) fn stages(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    let table_rows = u16::try_from(app.stages.len()).unwrap_or(u16::MAX).saturating_add(3);
    let [top, bottom] = Layout::vertical([Constraint::Length(table_rows.max(4)), Constraint::Fill(1)]).areas(area);
    let header = Row::new(["stage", "state", "steps", "examples", "truncated/dropped"]).style(t.style(Role::Dim));
    let rows = app.stages.iter().map(|s| {
        let (mark, role) = stage_look(s.state);
        let state = format!("{mark} {:?}", s.state).to_lowercase();
        let steps = s.total_steps.map_or_else(|| "—".to_string(), |total| format!("{}/{total}", s.stage_step));
        let examples = s.examples.iter().map(|(k, n)| format!("{} {n}", clean(k))).collect::<Vec<_>>().join(", ");
        Row::new([
            Cell::from(clean(&s.name)).style(t.style(role)),
            Cell::from(state).style(t.style(role)),
            Cell::from(steps),
            Cell::from(examples),
            Cell::from(format!("{}/{}", s.truncated, s.dropped)),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Fill(1),
        Constraint::Length(17),
    ];
    let table = Table::new(rows, widths).header(header).block(panel(app, " Stages ")).style(t.style(Role::Text));
    frame.render_widget(table, top);

    let label = |s: &str| Span::styled(format!("{s:<12}"), t.style(Role::Dim));
    let checkpoint = app.last_checkpoint.as_ref().map_or_else(
        || "none yet".to_string(),
        |c| {
            let best = c.best_step.map_or(String::new(), |b| format!(", best step {b}"));
            format!("step {} ({}{best})  {}", c.step, bytes(c.bytes), clean(&c.path))
        },
    );
    let lambdas = if app.lambdas.is_empty() {
        "—".to_string()
    } else {
        app.lambdas.iter().map(|(k, v)| format!("{} {}", clean(k), value(*v))).collect::<Vec<_>>().join("  ")
    };
    let mut trajectory: Vec<String> = Vec::new();
    for (i, c) in app.lambda_safe_trajectory().enumerate() {
        if i == 0 {
            trajectory.push(value(c.from));
        }
        let rate = c.unsafe_rate.map_or(String::new(), |r| format!(", unsafe {}", value(r)));
        trajectory.push(format!("{} (step {}{rate})", value(c.to), c.step));
    }
    let trajectory = if trajectory.is_empty() { "no changes".to_string() } else { trajectory.join(" → ") };
    let lines = vec![
        Line::from(vec![label("checkpoint"), Span::raw(checkpoint)]),
        Line::from(vec![
            label("labels"),
            Span::raw(format!("{} admitted, {} retracted", count(app.labels_admitted), count(app.labels_retracted))),
        ]),
        Line::from(vec![label("λ now"), Span::raw(lambdas)]),
        Line::from(vec![label("λ_safe"), Span::raw(trajectory)]),
    ];
    let details =
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(panel(app, " Run ")).style(t.style(Role::Text));
    frame.render_widget(details, bottom);
}

/// Pane 5: every run in the runs directory.
pub(super) fn runs(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    if app.runs.is_empty() {
        let text = Paragraph::new("no runs listed yet (the runs directory is scanned every few seconds)")
            .style(t.style(Role::Dim))
            .block(panel(app, " Runs "));
        frame.render_widget(text, area);
        return;
    }
    let rows = app.runs.iter().map(|r| {
        let role = match r.state {
            RunState::Live(_) => Role::StageRunning,
            RunState::Completed => Role::StageDone,
            RunState::Stopped => Role::Warning,
            RunState::Failed | RunState::Interrupted => Role::Error,
        };
        let mark = if r.attached { "▸" } else { " " };
        Row::new([Cell::from(mark), Cell::from(clean(&r.id)), Cell::from(r.state.label()).style(t.style(role))])
    });
    let widths = [Constraint::Length(1), Constraint::Fill(1), Constraint::Length(18)];
    let header = Row::new(["", "run", "state"]).style(t.style(Role::Dim));
    let table = Table::new(rows, widths).header(header).block(panel(app, " Runs ")).style(t.style(Role::Text));
    frame.render_widget(table, area);
}

/// A pane that is not built yet, saying so.
pub(super) fn not_built(app: &App, frame: &mut Frame, area: Rect, title: &str, text: &str) {
    let lines = vec![
        Line::styled(format!("{title}: not built yet"), app.theme.style(Role::Warning)),
        Line::default(),
        Line::styled(text.to_string(), app.theme.style(Role::Text)),
    ];
    let widget = Paragraph::new(lines).wrap(Wrap { trim: true }).block(panel(app, format!(" {title} ")));
    frame.render_widget(widget, area);
}
