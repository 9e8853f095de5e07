//! The plain-text gate table for the CLI ([`summary_table`]): ASCII only, no colours, no
//! trailing spaces. Never computes anything the report does not hold.

use crate::eval::gates::Decision;
use crate::eval::report::Report;

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

/// A short table of the report's gates (name, value, threshold, pass/fail/incomplete) followed
/// by the decision, e.g.
///
/// ```text
/// dpo ckpt-200: 120 items, 2 contaminated, 1 override
/// gate            value   threshold  result
/// win_rate_gain   0.0600  >= 0.0400  pass
/// redteam         -       <= 0.0500  incomplete
/// decision: incomplete (missing: redteam)
/// ```
pub fn summary_table(report: &Report) -> String {
    let mut rows = vec![["gate".to_string(), "value".to_string(), "threshold".to_string(), "result".to_string()]];
    for g in &report.gates {
        let threshold = g.threshold.map_or_else(|| "-".to_string(), |t| format!("{} {t:.4}", g.op.symbol()));
        let result = match g.passed {
            Some(true) => "pass",
            Some(false) => "fail",
            None => "incomplete",
        };
        rows.push([g.name.clone(), num(g.value), threshold, result.to_string()]);
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut out = format!(
        "{} {}: {}, {} contaminated, {}\n",
        report.stage,
        report.checkpoint,
        plural(report.n_items, "item", "items"),
        report.contaminated.count,
        plural(report.overrides_applied, "override", "overrides"),
    );
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let decision = match report.decision() {
        Decision::Deploy => "deploy".to_string(),
        Decision::Iterate { failing } => format!("iterate (failing: {})", failing.join(", ")),
        Decision::Incomplete { missing } => format!("incomplete (missing: {})", missing.join(", ")),
    };
    out.push_str("decision: ");
    out.push_str(&decision);
    out.push('\n');
    out
}
