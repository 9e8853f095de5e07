//! Panes 2 and 5: stages in detail and the runs list (panes 3 and 4 live in `tui::label` and
//! `tui::eval_pane`).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::dashboard::stage_look;
use super::{bytes, clean, count, panel, value};
use crate::tui::app::App;
use crate::tui::keymap::Command;
use crate::tui::runs::{age, RunState};
use crate::tui::theme::Role;

/// Pane 2: one row per stage (the selected one marked), the control keys, then checkpoints,
/// labels and λ.
pub(super) fn stages(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    let table_rows = u16::try_from(app.stages.len()).unwrap_or(u16::MAX).saturating_add(3);
    let [top, keys, bottom] =
        Layout::vertical([Constraint::Length(table_rows.max(4)), Constraint::Length(1), Constraint::Fill(1)])
            .areas(area);
    // The examples column only fits on wide terminals.
    let wide = area.width >= 100;
    let mut titles = vec!["", "stage", "state", "progress", "λ_pref", "λ_safe", "β", "trunc/drop"];
    if wide {
        titles.insert(7, "examples");
    }
    let header = Row::new(titles).style(t.style(Role::Dim));
    let opt = |v: Option<f64>| v.map_or_else(|| "—".to_string(), value);
    let rows = app.stages.iter().enumerate().map(|(i, s)| {
        let (mark, role) = stage_look(s.state);
        let state = format!("{mark} {:?}", s.state).to_lowercase();
        let progress = s.total_steps.map_or_else(
            || "—".to_string(),
            |total| {
                let pct = if total > 0 { s.stage_step as f64 / total as f64 * 100.0 } else { 100.0 };
                format!("{}/{total} {pct:.0}%", s.stage_step)
            },
        );
        let selected = if i == app.selected_stage { "▸" } else { " " };
        let mut cells = vec![
            Cell::from(selected).style(t.style(Role::FocusBorder)),
            Cell::from(clean(&s.name)).style(t.style(role)),
            Cell::from(state).style(t.style(role)),
            Cell::from(progress),
            Cell::from(opt(s.lambda_pref)),
            Cell::from(opt(s.lambda_safe)),
            Cell::from(opt(s.beta)),
            Cell::from(format!("{}/{}", s.truncated, s.dropped)),
        ];
        if wide {
            let examples = s.examples.iter().map(|(k, n)| format!("{} {n}", clean(k))).collect::<Vec<_>>().join(", ");
            cells.insert(7, Cell::from(examples));
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(10),
        Constraint::Length(14),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(10),
    ];
    if wide {
        widths[1] = Constraint::Length(12);
        widths.insert(7, Constraint::Fill(1));
    }
    let table = Table::new(rows, widths).header(header).block(panel(app, " Stages ")).style(t.style(Role::Text));
    frame.render_widget(table, top);
    let key = |c| app.keymap.keys_for(c).into_iter().next().unwrap_or_else(|| "—".to_string());
    let hint = format!(
        " {} pause · {} resume · {} stop · {} skip stage · {} checkpoint · {} λ_pref · {} λ_safe",
        key(Command::Pause),
        key(Command::Resume),
        key(Command::Stop),
        key(Command::SkipStage),
        key(Command::Checkpoint),
        key(Command::EditLambdaPref),
        key(Command::EditLambdaSafe),
    );
    frame.render_widget(Paragraph::new(hint).style(t.style(Role::Dim)), keys);

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

/// Pane 5: every run in the runs directory with its state, stage, step and age; Enter attaches
/// the selected one.
pub(super) fn runs(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    if app.runs.is_empty() {
        let text = Paragraph::new("no runs listed yet (the runs directory is scanned every few seconds)")
            .style(t.style(Role::Dim))
            .block(panel(app, " Runs "));
        frame.render_widget(text, area);
        return;
    }
    let rows = app.runs.iter().enumerate().map(|(i, r)| {
        let role = match r.state {
            RunState::Live(_) => Role::StageRunning,
            RunState::Completed => Role::StageDone,
            RunState::Stopped => Role::Warning,
            RunState::Failed | RunState::Interrupted => Role::Error,
        };
        let mark = match (i == app.selected_run, r.attached) {
            (true, _) => "▸",
            (false, true) => "•",
            (false, false) => " ",
        };
        let row = Row::new([
            Cell::from(mark).style(t.style(Role::FocusBorder)),
            Cell::from(clean(&r.id)),
            Cell::from(r.state.label()).style(t.style(role)),
            Cell::from(r.stage.as_deref().map_or_else(|| "—".to_string(), clean)),
            Cell::from(r.step.map_or_else(|| "—".to_string(), count)),
            Cell::from(r.age_seconds.map_or_else(|| "—".to_string(), age)),
        ]);
        if i == app.selected_run {
            row.style(t.style(Role::Text).add_modifier(Modifier::BOLD))
        } else {
            row
        }
    });
    let widths = [
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(17),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(7),
    ];
    let header = Row::new(["", "run", "state", "stage", "step", "age"]).style(t.style(Role::Dim));
    let key = app.keymap.keys_for(Command::Activate).into_iter().next().unwrap_or_else(|| "—".to_string());
    let title = format!(" Runs · • attached · {key}: attach the selected run ");
    let table = Table::new(rows, widths).header(header).block(panel(app, title)).style(t.style(Role::Text));
    frame.render_widget(table, area);
}
