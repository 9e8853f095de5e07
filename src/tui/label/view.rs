//! Painting the labeling pane into a `Rect`: the prompt on top, the two responses side by side
//! (stacked below 100 columns), counters, agreement and keys, and the rubric overlay. Every piece
//! of candidate text passes through [`crate::sanitize::sanitize`] here; the source of a response
//! is never drawn (the labeler is blind to it).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::LabelPane;
use crate::sanitize::sanitize;
use crate::tui::Role;
use crate::tui::Theme;

/// Below this width the responses are stacked instead of side by side.
const SIDE_BY_SIDE: u16 = 100;

/// Untrusted multi-line text, made safe: control characters visible, tabs as spaces.
pub(crate) fn safe_lines(text: &str) -> Vec<Line<'static>> {
    sanitize(text, true).replace('\t', "    ").split('\n').map(|l| Line::raw(l.to_string())).collect()
}

/// Untrusted text on one line.
pub(crate) fn safe(text: &str) -> String {
    sanitize(text, false)
}

fn block<'a>(theme: &Theme, title: impl Into<Line<'a>>, role: Role) -> Block<'a> {
    Block::bordered().border_type(BorderType::Plain).border_style(theme.style(role)).title(title)
}

/// Draws the pane into `area`.
pub fn draw(pane: &LabelPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let [body, counters, keys] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(1), Constraint::Length(1)]).areas(area);
    if let Some((prompt, left, right)) = pane.shown() {
        let prompt_rows = u16::try_from(prompt.lines().count().clamp(1, 6) + 2).unwrap_or(8);
        let [top, pair] = Layout::vertical([Constraint::Length(prompt_rows), Constraint::Fill(1)]).areas(body);
        let text = Paragraph::new(safe_lines(&prompt)).wrap(Wrap { trim: false }).style(theme.style(Role::Text));
        let status = status_line(pane, theme).right_aligned();
        frame.render_widget(text.block(block(theme, " Prompt ", Role::Dim).title(status)), top);
        let [a, b] = if area.width >= SIDE_BY_SIDE {
            Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(pair)
        } else {
            Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).areas(pair)
        };
        // After the left answer's thumbs, the right one's are due: its title says so.
        let right_title = if pane.thumbs_side == 1 { " b · right · +/- thumbs " } else { " b · right " };
        for (rect, title, text) in [(a, " a · left ", left), (b, right_title, right)] {
            let widget = Paragraph::new(safe_lines(&text)).wrap(Wrap { trim: false }).style(theme.style(Role::Text));
            frame.render_widget(widget.block(block(theme, title, Role::FocusBorder)), rect);
        }
    } else {
        let msg = empty_queue_message(pane);
        let widget = Paragraph::new(msg).wrap(Wrap { trim: false }).style(theme.style(Role::Dim));
        frame.render_widget(widget.block(block(theme, " Label ", Role::Dim)), body);
    }
    frame.render_widget(counter_line(pane, theme, area.width >= SIDE_BY_SIDE), counters);
    let help = if area.width >= SIDE_BY_SIDE {
        "a/← left better · b/→ right better · t tie · s skip · u undo · e edit a better answer · r rubric · q quit"
    } else {
        "a/← left · b/→ right · t tie · s skip · u undo · e edit · r rubric"
    };
    frame.render_widget(Line::styled(help, theme.style(Role::Dim)), keys);
    if pane.show_rubric {
        rubric(pane, theme, frame, area);
    }
}

/// The outcome of the last action, shown in the prompt's frame: saving, saved or the error.
fn status_line(pane: &LabelPane, theme: &Theme) -> Line<'static> {
    if pane.busy() {
        return Line::styled(" saving… ", theme.style(Role::Warning));
    }
    match &pane.status {
        Some(Ok(m)) => Line::styled(format!(" {} ", safe(m)), theme.style(Role::GatePass)),
        Some(Err(m)) => Line::styled(format!(" {} ", safe(m)), theme.style(Role::Error)),
        None => Line::default(),
    }
}

/// What an empty queue says: why it is empty and how to fill it.
fn empty_queue_message(pane: &LabelPane) -> String {
    let why = if pane.labeled > 0 { "The queue is empty: every pair is labeled." } else { "The queue is empty." };
    let how = if pane.consumed_by_dpo.is_some() {
        "Press g to have the live policy answer prompts (new pairs appear here as they arrive),"
    } else {
        "Label beside a run (`hone label --run DIR`) and press g for pairs from its live policy,"
    };
    format!("{why} {how} or label a file of pairs with `hone label --candidates FILE`.")
}

fn counter_line(pane: &LabelPane, theme: &Theme, wide: bool) -> Line<'static> {
    let dim = theme.style(Role::Dim);
    let dpo = pane.consumed_by_dpo.map_or_else(|| "no run".to_string(), |n| n.to_string());
    let mut spans = vec![
        Span::styled("labeled ", dim),
        Span::styled(pane.labeled.to_string(), theme.style(Role::Text).add_modifier(Modifier::BOLD)),
        Span::styled(" · queue ", dim),
        Span::styled(pane.left().to_string(), theme.style(Role::Text)),
        Span::styled(if wide { " · consumed by DPO " } else { " · DPO " }, dim),
        Span::styled(dpo, theme.style(Role::Text)),
        Span::styled(format!(" · {} {}", if wide { "served again" } else { "again" }, pane.served_again), dim),
    ];
    if pane.identical_dropped > 0 {
        let what = if wide { "identical pairs dropped" } else { "identical dropped" };
        spans.push(Span::styled(format!(" · {} {what}", pane.identical_dropped), theme.style(Role::Warning)));
    }
    for p in &pane.agreement {
        let kappa = p.kappa.map_or_else(|| "—".to_string(), |k| format!("{k:.2}"));
        let text = if wide {
            format!(" · {}~{} {:.0}% κ {kappa} (n {})", safe(&p.a), safe(&p.b), p.percent * 100.0, p.n)
        } else {
            format!(" · {}~{} {:.0}% κ{kappa}", safe(&p.a), safe(&p.b), p.percent * 100.0)
        };
        spans.push(Span::styled(text, theme.style(Role::Accuracy)));
    }
    Line::from(spans)
}

fn rubric(pane: &LabelPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let text = pane.rubric.as_deref().unwrap_or("No rubric given (pass --rubric FILE).");
    let width = area.width.saturating_sub(8).max(20).min(area.width);
    let height = area.height.saturating_sub(4).max(5).min(area.height);
    let [_, row, _] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(height), Constraint::Fill(1)]).areas(area);
    let [_, rect, _] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(width), Constraint::Fill(1)]).areas(row);
    let widget = Paragraph::new(safe_lines(text))
        .wrap(Wrap { trim: false })
        .style(theme.style(Role::Text))
        .block(block(theme, " Rubric (r or Esc closes) ", Role::FocusBorder));
    frame.render_widget(Clear, rect);
    frame.render_widget(widget, rect);
}
