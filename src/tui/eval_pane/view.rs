//! Painting the eval pane into a `Rect`: the scorecard per checkpoint as a grouped bar chart
//! (helpfulness, harmlessness, latency), the gates table with the decision, and the failures list
//! or the detail view of one failure. Eval records are untrusted: every piece of their text
//! passes through [`crate::sanitize::sanitize`] here.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::EvalPane;
use crate::eval::{Decision, GateOp};
use crate::tui::label::{safe, safe_lines};
use crate::tui::{Role, Theme};

fn block<'a>(theme: &Theme, title: impl Into<Line<'a>>) -> Block<'a> {
    Block::bordered().border_type(BorderType::Plain).border_style(theme.style(Role::Dim)).title(title)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{:.0}%", v * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"))
}

/// Draws the pane into `area`.
pub fn draw(pane: &EvalPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    if pane.stages.is_empty() {
        let mut lines = vec![Line::raw("No evaluation yet: reports appear here once a stage has been evaluated.")];
        lines.extend(pane.problems.iter().map(|p| Line::styled(safe(p), theme.style(Role::Warning))));
        frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block(theme, " Eval ")), area);
        return;
    }
    let top_rows = if area.height >= 30 { 12 } else { 9 };
    let [top, bottom, keys] =
        Layout::vertical([Constraint::Length(top_rows), Constraint::Fill(1), Constraint::Length(1)]).areas(area);
    let [chart, gates] = Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(top);
    scorecard(pane, theme, frame, chart);
    gates_table(pane, theme, frame, gates);
    if pane.blind.is_some() {
        blind(pane, theme, frame, bottom);
    } else if pane.detail {
        detail(pane, theme, frame, bottom);
    } else {
        failure_list(pane, theme, frame, bottom);
    }
    let status = match &pane.status {
        Some(Ok(m)) => Span::styled(format!("  {}", safe(m)), theme.style(Role::GatePass)),
        Some(Err(m)) => Span::styled(format!("  {}", safe(m)), theme.style(Role::Error)),
        None => Span::raw(""),
    };
    let help = if pane.blind.is_some() {
        "a/← left better · b/→ right better · t tie · s next · Esc back"
    } else {
        "[/] checkpoint · ↑↓ · ⏎ detail · f segment · c check · o override · l/e to labels · v blind"
    };
    frame.render_widget(Line::from(vec![Span::styled(help, theme.style(Role::Dim)), status]), keys);
}

/// A horizontal bar of `width` cells for a share in [0, 1], in eighths of a cell.
fn bar(share: Option<f64>, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = share.map_or(0, |v| (v.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize);
    let mut out = "█".repeat(eighths / 8);
    out.push_str(PARTS[eighths % 8]);
    let drawn = out.chars().count();
    out.push_str(&" ".repeat(width.saturating_sub(drawn)));
    out
}

/// One row per evaluated checkpoint: helpfulness (task success where the suite measures it, else
/// the win rate) and safety (1 − the unsafe rate) as a bar with its percentage, and the p95
/// latency in seconds. Every value is text in its own column, so nothing overlaps at any width;
/// the bars take the width that is left.
fn scorecard(pane: &EvalPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let inner = usize::from(area.width.saturating_sub(2));
    // 16 characters keep a best-of-n row (`dpo-best-of-4`) apart from its greedy one.
    let names: Vec<String> = pane.stages.iter().map(|s| safe(&s.name).chars().take(16).collect()).collect();
    let name_w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(5);
    // name, then "bar 100%" twice, then " p95 s", with single spaces between.
    let fixed = name_w + 1 + 5 + 1 + 5 + 1 + 6;
    let bar_w = (inner.saturating_sub(fixed) / 2).min(20);
    let dim = theme.style(Role::Dim);
    let mut lines = vec![Line::from(vec![Span::styled(
        format!("{:<name_w$} {:<w$} {:<w$} {:>6}", "stage", "helpful", "safe", "p95 s", w = bar_w + 5),
        dim,
    )])];
    for (i, (stage, name)) in pane.stages.iter().zip(&names).enumerate() {
        let r = &stage.report;
        let help = r.task_success_rate.or(r.win_rate);
        let harmless = r.unsafe_rate.map(|u| 1.0 - u);
        let latency = r.latency_p95_s.map_or_else(|| "—".to_string(), |l| format!("{l:.1}"));
        let name_style = if i == pane.selected { theme.style(Role::FocusBorder) } else { theme.style(Role::Text) };
        lines.push(Line::from(vec![
            Span::styled(format!("{name:<name_w$} "), name_style),
            Span::styled(bar(help, bar_w), theme.style(Role::Chosen)),
            Span::styled(format!("{:>5} ", pct(help)), theme.style(Role::Text)),
            Span::styled(bar(harmless, bar_w), theme.style(Role::GatePass)),
            Span::styled(format!("{:>5} ", pct(harmless)), theme.style(Role::Text)),
            Span::styled(format!("{latency:>6}"), theme.style(Role::Text)),
        ]));
    }
    let widget = Paragraph::new(lines).block(block(theme, " Scorecard "));
    frame.render_widget(widget, area);
}

/// What a best-of-n checkpoint's answers cost beside the greedy ones, as rows under its gates:
/// samples per prompt, p50 latency, tokens and cost per 1,000 responses (none for greedy
/// answers, whose p95 column in the scorecard already says it).
fn serving_cost(r: &crate::eval::Report) -> Vec<[String; 2]> {
    let Some(b) = &r.best_of else { return Vec::new() };
    let fixed = |v: Option<f64>, digits: usize| v.map_or_else(|| "—".to_string(), |x| format!("{x:.digits$}"));
    vec![
        ["best of n (reward model)".to_string(), b.n.to_string()],
        ["latency_p50_s".to_string(), fixed(r.latency_p50_s, 3)],
        ["tokens_per_response".to_string(), fixed(r.tokens_per_response, 1)],
        ["cost_per_1k_responses".to_string(), fixed(r.cost_per_1k_responses, 3)],
    ]
}

fn gates_table(pane: &EvalPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let Some(stage) = pane.stage() else { return };
    let r = &stage.report;
    let (decision, role) = match r.decision() {
        Decision::Deploy => ("deploy".to_string(), Role::GatePass),
        Decision::Iterate { failing } => (format!("iterate ({} failing)", failing.len()), Role::GateFail),
        Decision::Incomplete { missing } => (format!("incomplete ({} missing)", missing.len()), Role::Warning),
    };
    let overrides = match r.overrides_applied {
        0 => String::new(),
        1 => "· 1 override ".to_string(),
        n => format!("· {n} overrides "),
    };
    let title = Line::from(vec![
        Span::raw(format!(" Gates {} · ", safe(&stage.name))),
        Span::styled(decision, theme.style(role).add_modifier(Modifier::BOLD)),
        Span::raw(format!(" {overrides}")),
    ]);
    let header = Row::new(["gate", "value", "threshold", ""]).style(theme.style(Role::Dim));
    let rows = r.gates.iter().map(|g| {
        let op = match g.op {
            GateOp::AtLeast => "≥",
            GateOp::AtMost => "≤",
        };
        let (mark, role) = match g.passed {
            Some(true) => ("pass", Role::GatePass),
            Some(false) => ("FAIL", Role::GateFail),
            None => ("n/a", Role::Warning),
        };
        Row::new([
            Cell::from(safe(&g.name)),
            Cell::from(num(g.value)),
            Cell::from(format!("{op} {}", num(g.threshold))),
            Cell::from(mark).style(theme.style(role)),
        ])
    });
    let dim = theme.style(Role::Dim);
    let cost =
        serving_cost(r).into_iter().map(|[name, value]| Row::new([Cell::from(name), Cell::from(value)]).style(dim));
    let rows = rows.chain(cost);
    let widths = [Constraint::Fill(1), Constraint::Length(7), Constraint::Length(9), Constraint::Length(4)];
    let table = Table::new(rows, widths).header(header).block(block(theme, title)).style(theme.style(Role::Text));
    frame.render_widget(table, area);
}

fn failure_list(pane: &EvalPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let list = pane.filtered();
    let total = pane.stage().map_or(0, |s| s.failures.len());
    let filters = [pane.segment_filter.as_deref(), pane.check_filter.as_deref()]
        .iter()
        .flatten()
        .map(|f| safe(f))
        .collect::<Vec<_>>()
        .join(", ");
    let filters = if filters.is_empty() { "all".to_string() } else { filters };
    let title = format!(" Failures {}/{total} · filter: {filters} ", list.len());
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let first = pane.cursor.saturating_sub(visible - 1);
    let header = Row::new(["id", "segment", "failed check", "response"]).style(theme.style(Role::Dim));
    let rows = list.iter().enumerate().skip(first).take(visible).map(|(i, f)| {
        let mut style = theme.style(Role::Text);
        if i == pane.cursor {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let sent = if pane.sent.contains(&f.id) { " ↦ labels" } else { "" };
        Row::new([
            Cell::from(format!("{}{sent}", safe(&f.id))),
            Cell::from(safe(&format!("{}/{}/{}", f.segment.language, f.segment.domain, f.segment.intent))),
            Cell::from(safe(&f.failed_check)),
            Cell::from(safe(&f.response)),
        ])
        .style(style)
    });
    let widths = [Constraint::Length(14), Constraint::Length(22), Constraint::Length(22), Constraint::Fill(1)];
    frame.render_widget(Table::new(rows, widths).header(header).block(block(theme, title)), area);
}

fn detail(pane: &EvalPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let Some(f) = pane.highlighted() else { return };
    let head = |s: &str| Line::styled(s.to_string(), theme.style(Role::Dim).add_modifier(Modifier::BOLD));
    let mut lines = vec![
        Line::from(vec![
            Span::styled("deciding check: ", theme.style(Role::Dim)),
            Span::styled(safe(&f.failed_check), theme.style(Role::GateFail)),
            Span::styled(format!("   kind: {:?}", f.kind).to_lowercase(), theme.style(Role::Dim)),
        ]),
        head("prompt"),
    ];
    lines.extend(safe_lines(&f.prompt.text()));
    lines.push(head("response"));
    lines.extend(safe_lines(&f.response));
    lines.push(head("reference"));
    lines.extend(f.reference.as_deref().map_or_else(|| vec![Line::raw("(none)")], safe_lines));
    let title = format!(" {} (Esc back) ", safe(&f.id));
    let widget =
        Paragraph::new(lines).wrap(Wrap { trim: false }).style(theme.style(Role::Text)).block(block(theme, title));
    frame.render_widget(widget, area);
}

/// The blind mode: the item's prompt, then the two answers side by side (stacked when narrow),
/// named only "A" and "B".
fn blind(pane: &EvalPane, theme: &Theme, frame: &mut Frame, area: Rect) {
    let stage = pane.stage().map(|s| s.name.clone()).unwrap_or_default();
    let labels = pane.human_labels(&stage).len();
    let total = pane.blind_items().len();
    let win = pane.stage().and_then(|s| s.report.win_rate);
    let title = format!(" Blind vs baseline · {labels}/{total} labeled · win rate {} ", pct(win));
    let outer = block(theme, title);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let Some(item) = pane.blind_item() else {
        let msg = "Every item is labeled. Esc goes back; new labels replace old ones if you label again.";
        frame.render_widget(Paragraph::new(msg).style(theme.style(Role::Text)).wrap(Wrap { trim: false }), inner);
        return;
    };
    let prompt_rows = u16::try_from(safe_lines(&item.prompt).len()).unwrap_or(u16::MAX).clamp(1, 4) + 2;
    let [prompt, answers] = Layout::vertical([Constraint::Length(prompt_rows), Constraint::Fill(1)]).areas(inner);
    let widget = Paragraph::new(safe_lines(&item.prompt))
        .wrap(Wrap { trim: false })
        .style(theme.style(Role::Text))
        .block(block(theme, format!(" {} ", safe(&item.id))));
    frame.render_widget(widget, prompt);
    let [left, right] = if answers.width >= 80 {
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(answers)
    } else {
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(answers)
    };
    for (area, name, text) in [(left, " A (a) ", &item.left), (right, " B (b) ", &item.right)] {
        let widget = Paragraph::new(safe_lines(text))
            .wrap(Wrap { trim: false })
            .style(theme.style(Role::Text))
            .block(block(theme, name));
        frame.render_widget(widget, area);
    }
}
