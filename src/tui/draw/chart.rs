//! Braille line charts and sparklines drawn from the series' min/max bucket caches, never from
//! the raw points.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph, Sparkline, Wrap};
use ratatui::Frame;

use super::{panel, value};
use crate::tui::app::App;
use crate::tui::layout;
use crate::tui::series::Series;
use crate::tui::theme::Role;

/// One line of a chart.
pub(super) struct Curve<'a> {
    /// The metric key.
    pub key: &'a str,
    /// Its legend label.
    pub label: String,
    /// Its style role.
    pub role: Role,
}

/// Draws a bordered chart of `curves` in `area`, with a legend row of current values.
pub(super) fn line_chart(app: &App, frame: &mut Frame, area: Rect, title: &str, curves: &[Curve<'_>], log: bool) {
    let t = &app.theme;
    let mut title_text = format!(" {title} ");
    if log {
        title_text.push_str("[log] ");
    }
    if app.smoothing {
        title_text.push_str("[ema] ");
    }
    let block = panel(app, title_text);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let keys: Vec<&str> = curves.iter().map(|c| c.key).collect();
    let first = app.first_step(&keys);
    let columns = layout::plot_columns(area);
    let mut legend = Vec::new();
    let mut data: Vec<(Vec<(f64, f64)>, Style)> = Vec::new();
    for curve in curves {
        let Some(series) = app.series.get(curve.key).filter(|s| !s.is_empty()) else { continue };
        let style = t.style(curve.role);
        legend.push(Span::styled(format!("━ {} ", curve.label), style));
        legend.push(Span::styled(format!("{} ", series.last().map_or_else(String::new, value)), t.style(Role::Text)));
        let buckets = series.buckets(series.key(columns, first, app.smoothing));
        let points: Vec<(f64, f64)> = if log {
            buckets.iter().filter(|p| p.1 > 0.0).map(|&(x, y)| (x, y.log10())).collect()
        } else {
            buckets.into_owned()
        };
        if !points.is_empty() {
            data.push((points, style));
        }
    }
    let legend_rows = legend_rows(&mut legend, inner.width);
    let [legend_area, plot_area] =
        Layout::vertical([Constraint::Length(legend_rows), Constraint::Fill(1)]).areas(inner);
    if data.is_empty() {
        let text = if legend.is_empty() { "no data yet" } else { "no positive values for a log scale" };
        frame.render_widget(Paragraph::new(text).style(t.style(Role::Dim)), legend_area);
        return;
    }
    frame.render_widget(Paragraph::new(Line::from(legend)).wrap(Wrap { trim: true }), legend_area);

    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in data.iter().flat_map(|(p, _)| p.iter()) {
        (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(*y), y1.max(*y));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { y0.abs().max(1.0) * 0.1 };
    (y0, y1) = (y0 - pad, y1 + pad);
    let y_label = |v: f64| if log { value(10f64.powf(v)) } else { value(v) };
    let datasets: Vec<Dataset> = data
        .iter()
        .map(|(points, style)| {
            Dataset::default().marker(Marker::Braille).graph_type(GraphType::Line).style(*style).data(points)
        })
        .collect();
    let dim = t.style(Role::Dim);
    let chart = Chart::new(datasets)
        .x_axis(Axis::default().bounds([x0, x1]).style(dim).labels([format!("{x0:.0}"), format!("step {x1:.0}")]))
        .y_axis(Axis::default().bounds([y0, y1]).style(dim).labels([
            y_label(y0),
            y_label(f64::midpoint(y0, y1)),
            y_label(y1),
        ]))
        .hidden_legend_constraints((Constraint::Length(0), Constraint::Length(0)));
    frame.render_widget(chart, plot_area);
}

/// Draws a bordered sparkline of `key` (one of the chart group `group`, whose newest step sets the
/// window) titled with its current value.
pub(super) fn sparkline(app: &App, frame: &mut Frame, area: Rect, label: &str, key: &str, group: &[&str], role: Role) {
    let t = &app.theme;
    let series = app.series.get(key).filter(|s| !s.is_empty());
    let current = series.and_then(Series::last).map_or_else(|| "—".to_string(), value);
    let block = panel(app, format!(" {label} {current} "));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(series) = series else {
        frame.render_widget(Paragraph::new("no data yet").style(t.style(Role::Dim)), inner);
        return;
    };
    let columns = layout::sparkline_columns(area);
    let first = app.first_step(group);
    let buckets = series.buckets(series.key(columns, first, false));
    let bars = column_maxima(&buckets, columns);
    let (lo, hi) = bars.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    // A constant series is a flat line at half height, except all zeros (λ_safe off), drawn empty.
    let flat = if hi == 0.0 { 0 } else { 50 };
    let scaled: Vec<u64> =
        bars.iter().map(|&v| if hi > lo { 1 + ((v - lo) / (hi - lo) * 99.0).round() as u64 } else { flat }).collect();
    frame.render_widget(Sparkline::default().data(&scaled).max(100).style(t.style(role)), inner);
}

/// The rows the legend needs at `width`: one, or two when it does not fit. The last entry's
/// separating space is dropped first, so a legend that fits exactly keeps the plot its row.
fn legend_rows(legend: &mut [Span<'_>], width: u16) -> u16 {
    if let Some(last) = legend.last_mut() {
        let trimmed = last.content.trim_end().to_owned();
        last.content = trimmed.into();
    }
    let needed: usize = legend.iter().map(Span::width).sum();
    if needed > usize::from(width) {
        2
    } else {
        1
    }
}

/// One value per column: the maximum of the buckets that fall in it (or every bucket when there
/// are fewer buckets than columns).
fn column_maxima(buckets: &[(f64, f64)], columns: usize) -> Vec<f64> {
    let n = buckets.len();
    if n <= columns || columns == 0 {
        return buckets.iter().map(|p| p.1).collect();
    }
    (0..columns)
        .map(|c| buckets[c * n / columns..(c + 1) * n / columns].iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max))
        .collect()
}

#[cfg(test)]
mod tests {
    use ratatui::text::Span;

    use super::{column_maxima, legend_rows};

    #[test]
    fn a_legend_that_fits_exactly_takes_one_row() {
        let mut legend = vec![Span::raw("━ loss "), Span::raw("1.25 ")];
        assert_eq!(legend_rows(&mut legend, 11), 1, "the trailing space must not count");
        assert_eq!(legend[1].content, "1.25");
        let mut legend = vec![Span::raw("━ loss "), Span::raw("1.25 ")];
        assert_eq!(legend_rows(&mut legend, 10), 2);
        assert_eq!(legend_rows(&mut [], 0), 1);
    }

    #[test]
    fn column_maxima_keep_the_peaks() {
        let buckets: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from(i % 3))).collect();
        assert_eq!(column_maxima(&buckets, 5), vec![1.0, 2.0, 2.0, 1.0, 2.0]);
        assert_eq!(column_maxima(&buckets[..3], 5), vec![0.0, 1.0, 2.0]);
    }
}
