//! Learning-rate schedules as transformers defines them: linear warm-up from 0, then cosine or
//! linear decay to 0 at the last step, or constant.

use crate::config::Schedule;

/// The learning rate for optimizer step `step` (0-based) of `total` steps.
pub fn learning_rate(schedule: Schedule, peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress).max(0.0),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_matches_transformers() {
        // get_cosine_schedule_with_warmup(warmup=2, total=10): factors 0, .5, 1, then
        // 0.5·(1+cos(π·(s−2)/8)).
        let lr = |s| learning_rate(Schedule::Cosine, 1.0, s, 2, 10);
        assert!((lr(0) - 0.0).abs() < 1e-12);
        assert!((lr(1) - 0.5).abs() < 1e-12);
        assert!((lr(2) - 1.0).abs() < 1e-12);
        assert!((lr(6) - 0.5).abs() < 1e-12);
        assert!(lr(10).abs() < 1e-12);
        assert!((learning_rate(Schedule::Linear, 2.0, 6, 2, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(Schedule::Constant, 2.0, 9, 2, 10) - 2.0).abs() < 1e-12);
    }
}
