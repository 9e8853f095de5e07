//! Pane 1, the dashboard: pipeline strip, progress, the loss and DPO charts, learning rate, grad
//! norm and λ_safe's trajectory, the GPU panel, the newest live sample, recent warnings and the
//! SFT hint.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::chart::{line_chart, sparkline, Curve};
use super::{clean, count, duration, panel, value};
use crate::sanitize::sanitize;
use crate::tui::app::{App, SFT_HINT};
use crate::tui::gpu::{gpu_lines, GpuStatus};
use crate::tui::layout;
use crate::tui::model::{GateState, Level, RunStatus, StageState};
use crate::tui::theme::Role;

/// Draws the dashboard into `area`.
pub(super) fn draw(app: &App, frame: &mut Frame, area: Rect) {
    let hint = app.chosen_falls_while_margin_grows();
    let d = layout::dashboard(area, hint);
    strip(app, frame, d.strip);
    gauge(app, frame, d.gauge);

    let lambda = |term: &str| app.lambdas.get(term).map_or_else(String::new, |l| format!(" λ={}", value(*l)));
    let loss_curves = [
        Curve { key: "loss", label: "total".to_string(), role: Role::LossTotal },
        Curve { key: "loss/sft", label: "sft".to_string(), role: Role::LossSft },
        Curve { key: "weighted/pref", label: format!("pref{}", lambda("pref")), role: Role::WeightedPref },
        Curve { key: "weighted/safe", label: format!("safe{}", lambda("safe")), role: Role::WeightedSafe },
    ];
    line_chart(app, frame, d.loss, "Loss", &loss_curves, app.log_scale);
    let dpo_curves = [
        Curve { key: "rewards/chosen", label: "chosen".to_string(), role: Role::Chosen },
        Curve { key: "rewards/rejected", label: "rejected".to_string(), role: Role::Rejected },
        Curve { key: "rewards/margins", label: "margin".to_string(), role: Role::Margin },
        Curve { key: "rewards/accuracies", label: "acc".to_string(), role: Role::Accuracy },
    ];
    if app.grpo_is_latest() {
        let grpo_curves = [
            Curve { key: "reward", label: "reward".to_string(), role: Role::Chosen },
            Curve { key: "reward_std", label: "std".to_string(), role: Role::Rejected },
            Curve { key: "kl", label: "kl".to_string(), role: Role::Margin },
            Curve { key: "frac_reward_zero_std", label: "zero-std".to_string(), role: Role::Accuracy },
        ];
        let length = app.latest("completions/mean_length").map_or_else(String::new, |l| format!(" · len {}", value(l)));
        line_chart(app, frame, d.dpo, &format!("GRPO rewards{length}"), &grpo_curves, false);
    } else {
        line_chart(app, frame, d.dpo, "DPO rewards", &dpo_curves, false);
    }
    sparkline(app, frame, d.lr, "lr", "learning_rate", layout::SPARK_KEYS, Role::LossSft);
    sparkline(app, frame, d.grad, "grad norm", "grad_norm", layout::SPARK_KEYS, Role::WeightedSafe);
    sparkline(app, frame, d.lambda, "λ_safe", "lambda/safe", layout::LAMBDA_KEYS, Role::WeightedSafe);
    gpu(app, frame, d.gpu);
    sample(app, frame, d.samples);
    notices(app, frame, d.notices);
    if let Some(hint_area) = d.hint {
        let line = Line::from(vec![
            Span::styled(layout::HINT_PREFIX, app.theme.style(Role::Warning)),
            Span::styled(SFT_HINT, app.theme.style(Role::Text)),
        ]);
        frame.render_widget(Paragraph::new(line).wrap(Wrap { trim: true }), hint_area);
    }
}

/// The marker and role of a stage state.
pub(super) fn stage_look(state: StageState) -> (&'static str, Role) {
    match state {
        StageState::Pending => ("○", Role::StagePending),
        StageState::Running => ("●", Role::StageRunning),
        StageState::Done => ("✓", Role::StageDone),
        StageState::Failed => ("✗", Role::Error),
        StageState::Stopped => ("■", Role::Warning),
    }
}

/// base → stages… → gates → deploy/iterate, each with its state; the gates only for a run that
/// evaluates (its pipeline has `[eval]`): the strip shows the steps the run will take, and each
/// round of an `[[iterate]]` loop once it starts (`↺2 safety-fix.2`).
fn strip(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    let arrow = || Span::styled(" → ", t.style(Role::Dim));
    let mut spans = vec![Span::styled(" ✓ base", t.style(Role::StageDone))];
    for stage in &app.stages {
        let (mark, role) = stage_look(stage.state);
        spans.push(arrow());
        // A round of an `[[iterate]]`'s fix stage: ↺ and its number.
        let round = stage.round.map(|n| format!("↺{n} ")).unwrap_or_default();
        spans.push(Span::styled(format!("{mark} {round}{}", clean(&stage.name)), t.style(role)));
    }
    if !app.gated {
        frame.render_widget(Line::from(spans), area);
        return;
    }
    let (gates, end) = match app.gates {
        GateState::Pending => (("○ gates", Role::StagePending), ("○ deploy/iterate", Role::StagePending)),
        GateState::Evaluating => (("● gates", Role::StageRunning), ("○ deploy/iterate", Role::StagePending)),
        GateState::Deploy => (("✓ gates", Role::GatePass), ("✓ deploy", Role::GatePass)),
        GateState::Iterate => (("✗ gates", Role::GateFail), ("↺ iterate", Role::Warning)),
        GateState::Incomplete => (("? gates", Role::Warning), ("○ deploy/iterate", Role::StagePending)),
    };
    for (text, role) in [gates, end] {
        spans.push(arrow());
        spans.push(Span::styled(text, t.style(role)));
    }
    frame.render_widget(Line::from(spans), area);
}

/// One line per GPU, or "no GPU".
fn gpu(app: &App, frame: &mut Frame, area: Rect) {
    let role = if matches!(app.gpu, GpuStatus::Readings(ref r) if !r.is_empty()) { Role::Text } else { Role::Dim };
    let lines: Vec<Line> =
        gpu_lines(&app.gpu).into_iter().map(|l| Line::styled(clean(&l), app.theme.style(role))).collect();
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }).block(panel(app, " GPU ")), area);
}

/// The newest `sample` event: its prompt, then the answer, wrapped.
fn sample(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    let Some(s) = &app.sample else {
        let text = Paragraph::new("no samples yet (the worker logs one every few steps when sampling is on)")
            .style(t.style(Role::Dim))
            .wrap(Wrap { trim: true })
            .block(panel(app, " Live sample "));
        frame.render_widget(text, area);
        return;
    };
    let at = match (&s.stage, s.step) {
        (Some(stage), Some(step)) => format!(" {}@{step}", clean(stage)),
        (None, Some(step)) => format!(" @{step}"),
        (Some(stage), None) => format!(" {}", clean(stage)),
        (None, None) => String::new(),
    };
    // Newlines are kept (the answer's shape matters); tabs become spaces so widths stay exact.
    let multi = |text: &str| sanitize(text, true).replace('\t', "    ");
    let mut lines = vec![Line::from(vec![
        Span::styled("› ", t.style(Role::FocusBorder)),
        Span::styled(clean(&s.prompt), t.style(Role::Dim)),
    ])];
    if area.height <= 3 {
        // One row: the answer matters more than the prompt, on one line.
        lines = vec![Line::from(vec![
            Span::styled("› ", t.style(Role::FocusBorder)),
            Span::styled(clean(&s.response), t.style(Role::Text)),
        ])];
    } else {
        lines.extend(multi(&s.response).lines().map(|l| Line::styled(l.to_string(), t.style(Role::Text))));
    }
    let widget = Paragraph::new(lines).wrap(Wrap { trim: false }).block(panel(app, format!(" Live sample{at} ")));
    frame.render_widget(widget, area);
}

fn gauge(app: &App, frame: &mut Frame, area: Rect) {
    let p = &app.progress;
    let ratio = if p.total_steps > 0 { (p.stage_step as f64 / p.total_steps as f64).clamp(0.0, 1.0) } else { 0.0 };
    let stage = p.stage.as_deref().map_or_else(|| "—".to_string(), clean);
    let eta = match (app.status, p.eta_seconds) {
        (RunStatus::Running, Some(eta)) => format!("ETA {}", duration(eta)),
        (RunStatus::Running, None) => "ETA —".to_string(),
        (RunStatus::Waiting, _) => "waiting".to_string(),
        _ => "finished".to_string(),
    };
    let tokens = p.tokens_per_second.map_or_else(|| "— tok/s".to_string(), |v| format!("{} tok/s", count(v as u64)));
    // Beside throughput, the worker's peak memory once it reports one.
    let memory = p.peak_memory_bytes.map_or_else(String::new, |b| format!(" · peak {:.2} GB", b as f64 / 1e9));
    let label = format!(
        "{stage} {}/{} · step {} · {eta} · {tokens}{memory}",
        p.stage_step,
        p.total_steps,
        count(p.global_step)
    );
    let widget = Gauge::default()
        .ratio(ratio)
        .label(Span::styled(label, app.theme.style(Role::Text)))
        .gauge_style(app.theme.style(Role::StageRunning))
        .use_unicode(true);
    frame.render_widget(widget, area);
}

/// The newest notices that fit, newest last, each wrapped to the panel's width.
fn notices(app: &App, frame: &mut Frame, area: Rect) {
    let t = &app.theme;
    let block = panel(app, " Warnings & errors ");
    let inner = block.inner(area);
    let (rows, width) = (usize::from(inner.height), usize::from(inner.width).max(4));
    let mut lines: Vec<Line> = Vec::new();
    if app.notices.is_empty() {
        lines.push(Line::styled("none", t.style(Role::Dim)));
    }
    // Walk from the newest back, so only the notices that can be seen are wrapped.
    for n in app.notices.iter().rev() {
        if lines.len() >= rows {
            break;
        }
        let (mark, role) = match n.level {
            Level::Info => ("·", Role::Dim),
            Level::Warning => ("!", Role::Warning),
            Level::Error => ("✗", Role::Error),
        };
        let at = match (&n.stage, n.step) {
            (Some(stage), Some(step)) => format!("{}@{step} ", clean(stage)),
            (None, Some(step)) => format!("@{step} "),
            (Some(stage), None) => format!("{} ", clean(stage)),
            (None, None) => String::new(),
        };
        let head = format!("{mark} {at}");
        let message: Vec<char> = clean(&n.message).chars().collect();
        let first = width.saturating_sub(head.chars().count()).max(1).min(message.len());
        let mut wrapped = vec![Line::from(vec![
            Span::styled(format!("{mark} "), t.style(role)),
            Span::styled(at, t.style(Role::Dim)),
            Span::styled(message[..first].iter().collect::<String>(), t.style(role)),
        ])];
        for chunk in message[first..].chunks(width - 2) {
            wrapped.push(Line::styled(format!("  {}", chunk.iter().collect::<String>()), t.style(role)));
        }
        lines.splice(0..0, wrapped);
    }
    let skip = lines.len().saturating_sub(rows);
    frame.render_widget(Paragraph::new(lines.split_off(skip)).block(block), area);
}
