//! Where things go on screen, as pure functions of the terminal size, shared by drawing and by
//! [`crate::tui::App::refresh_caches`] (which needs the charts' widths before a frame is drawn).

use ratatui::layout::{Constraint, Layout, Rect};

use super::app::SFT_HINT;

/// Metrics on the loss chart: the total and each weighted term.
pub const LOSS_KEYS: &[&str] = &["loss", "loss/sft", "weighted/pref", "weighted/safe"];
/// Metrics on the DPO chart.
pub const DPO_KEYS: &[&str] = &["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"];
/// Series of the GRPO chart (drawn where the DPO chart is, while a GRPO stage reports).
pub const GRPO_KEYS: &[&str] = &["reward", "reward_std", "kl", "frac_reward_zero_std"];
/// Metrics drawn as sparklines.
pub const SPARK_KEYS: &[&str] = &["learning_rate", "grad_norm"];
/// λ_safe's trajectory, drawn as a sparkline.
pub const LAMBDA_KEYS: &[&str] = &["lambda/safe"];

/// What the hint line starts with.
pub const HINT_PREFIX: &str = " hint: ";

/// Width kept for a chart's y-axis labels and axis line.
const Y_AXIS_WIDTH: u16 = 9;

/// The frame's fixed rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    /// Run id and status.
    pub header: Rect,
    /// Pane tabs.
    pub tabs: Rect,
    /// The pane.
    pub body: Rect,
    /// Key hints.
    pub footer: Rect,
}

/// Splits the frame.
pub fn screen(area: Rect) -> Screen {
    let [header, tabs, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Fill(1), Constraint::Length(1)])
            .areas(area);
    Screen { header, tabs, body, footer }
}

/// The dashboard's areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dashboard {
    /// The pipeline strip.
    pub strip: Rect,
    /// The progress gauge.
    pub gauge: Rect,
    /// The loss chart.
    pub loss: Rect,
    /// The DPO rewards chart.
    pub dpo: Rect,
    /// The learning-rate sparkline.
    pub lr: Rect,
    /// The grad-norm sparkline.
    pub grad: Rect,
    /// λ_safe's trajectory.
    pub lambda: Rect,
    /// The newest live sample.
    pub samples: Rect,
    /// The GPU panel.
    pub gpu: Rect,
    /// Recent warnings and errors.
    pub notices: Rect,
    /// The hint line, when a hint is shown.
    pub hint: Option<Rect>,
}

/// Splits the dashboard pane.
pub fn dashboard(body: Rect, hint: bool) -> Dashboard {
    // The hint wraps to a second row on narrow terminals.
    let hint_width = HINT_PREFIX.len() + SFT_HINT.len();
    let hint_rows = match (hint, usize::from(body.width) >= hint_width) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => 2,
    };
    let [strip, gauge, main, hint_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(hint_rows),
    ])
    .areas(body);
    let [left, right] = Layout::horizontal([Constraint::Percentage(70), Constraint::Percentage(30)]).areas(main);
    // Short terminals give the charts their rows first; the sample panel grows with the height.
    let sample_rows = if main.height < 20 { 3 } else { (main.height / 4).clamp(4, 12) };
    let [loss, dpo, samples] =
        Layout::vertical([Constraint::Fill(11), Constraint::Fill(9), Constraint::Length(sample_rows)]).areas(left);
    let spark_rows = if main.height >= 30 { 4 } else { 3 };
    let [lr, grad, lambda, gpu, notices] = Layout::vertical([
        Constraint::Length(spark_rows),
        Constraint::Length(spark_rows),
        Constraint::Length(spark_rows),
        Constraint::Length(4),
        Constraint::Min(3),
    ])
    .areas(right);
    Dashboard { strip, gauge, loss, dpo, lr, grad, lambda, samples, gpu, notices, hint: hint.then_some(hint_area) }
}

/// How many terminal columns each kind of chart plots over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// The loss chart.
    pub loss: usize,
    /// The DPO chart.
    pub dpo: usize,
    /// The sparklines.
    pub sparkline: usize,
}

/// Plot widths for a terminal of `size` (columns, rows).
pub fn chart_columns(size: (u16, u16), hint: bool) -> Columns {
    let body = screen(Rect::new(0, 0, size.0, size.1)).body;
    let d = dashboard(body, hint);
    Columns { loss: plot_columns(d.loss), dpo: plot_columns(d.dpo), sparkline: sparkline_columns(d.lr) }
}

/// Columns a chart drawn in `area` (borders included) plots over.
pub fn plot_columns(area: Rect) -> usize {
    usize::from(area.width.saturating_sub(2 + Y_AXIS_WIDTH))
}

/// Columns a sparkline drawn in `area` (borders included) has.
pub fn sparkline_columns(area: Rect) -> usize {
    usize::from(area.width.saturating_sub(2))
}
