//! What is drawn over a pane: the help overlay (the active keymap, so a rebinding shows) and the
//! dialogs (confirm a request, type a λ).

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::clean;
use crate::tui::app::App;
use crate::tui::keymap::{Command, PANE_GLOBAL};
use crate::tui::model::{Modal, Pane};
use crate::tui::theme::Role;

/// The help overlay. On the dashboard, stages and runs panes: every command with its keys, from
/// the active keymap. On panes 3 and 4, which take every key but a few: the pane's own keys
/// first, then the global commands that still apply there (pane switches, help, detach).
pub(super) fn help(app: &App, frame: &mut Frame) {
    let t = &app.theme;
    let keys_of = |c: Command| {
        let keys = app.keymap.keys_for(c);
        if keys.is_empty() {
            "—".to_string()
        } else {
            keys.join(", ")
        }
    };
    let own: Option<(&str, &[(&str, &str)])> = match app.pane {
        Pane::Label => Some(("labeling (pane 3)", crate::tui::label::KEYS)),
        Pane::Eval => Some(("evaluation (pane 4)", crate::tui::eval_pane::KEYS)),
        Pane::Dashboard | Pane::Stages | Pane::Runs => None,
    };
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    if let Some((name, keys)) = own {
        sections.push((
            format!("Keys of {name}"),
            keys.iter().map(|(k, w)| ((*k).to_string(), (*w).to_string())).collect(),
        ));
        let global = Command::ALL.iter().copied().filter(|c| PANE_GLOBAL.contains(c));
        sections.push(("Everywhere".to_string(), global.map(|c| (keys_of(c), c.describe().to_string())).collect()));
    } else {
        sections.push((String::new(), Command::ALL.iter().map(|&c| (keys_of(c), c.describe().to_string())).collect()));
    }
    let key_width =
        sections.iter().flat_map(|(_, rows)| rows.iter().map(|(k, _)| k.chars().count())).max().unwrap_or(0).min(14);
    let mut lines: Vec<Line> = Vec::new();
    for (title, rows) in &sections {
        if !title.is_empty() {
            lines.push(Line::styled(format!(" {title}"), t.style(Role::Dim)));
        }
        lines.extend(rows.iter().map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:>key_width$}  "), t.style(Role::FocusBorder)),
                Span::styled(what.clone(), t.style(Role::Text)),
            ])
        }));
    }
    lines.push(Line::styled(" ctrl-c also detaches. Keys: keys.toml in the config directory.", t.style(Role::Dim)));
    let area = centered(frame.area(), 76, lines.len() as u16 + 2);
    let block = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(t.style(Role::FocusBorder))
        .title(" Keys ")
        .title_alignment(Alignment::Center);
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// A dialog: a confirmation or the λ input field.
pub(super) fn modal(app: &App, modal: &Modal, frame: &mut Frame) {
    let t = &app.theme;
    let (title, lines) = match modal {
        Modal::Confirm(request) => (
            " Confirm ",
            vec![
                Line::styled(format!("Really {}?", crate::tui::describe(request)), t.style(Role::Warning)),
                Line::default(),
                Line::from(vec![
                    Span::styled("y", t.style(Role::FocusBorder)),
                    Span::styled(" / Enter: yes    ", t.style(Role::Text)),
                    Span::styled("n", t.style(Role::FocusBorder)),
                    Span::styled(" / Esc: no", t.style(Role::Text)),
                ]),
            ],
        ),
        Modal::EditLambda { term, input, error } => {
            let mut lines = vec![
                Line::from(vec![
                    Span::styled(format!("λ_{} = ", clean(term)), t.style(Role::Text)),
                    Span::styled(format!("{}▏", clean(input)), t.style(Role::FocusBorder)),
                ]),
                Line::styled("applies from the worker's next step", t.style(Role::Dim)),
                Line::styled("Enter: send    Esc: cancel", t.style(Role::Dim)),
            ];
            if let Some(e) = error {
                lines.push(Line::styled(clean(e), t.style(Role::Error)));
            }
            (" Edit λ ", lines)
        }
    };
    let area = centered(frame.area(), 60, lines.len() as u16 + 2);
    let block = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(t.style(Role::FocusBorder))
        .title(title)
        .title_alignment(Alignment::Center);
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }).block(block), area);
}

/// A `width`×`height` rectangle in the middle of `area` (clipped to it).
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [_, row, _] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(height.min(area.height)), Constraint::Fill(1)])
            .areas(area);
    let [_, middle, _] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(width.min(area.width)), Constraint::Fill(1)])
            .areas(row);
    middle
}
