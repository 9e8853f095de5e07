//! Metric series and the min/max bucket cache the charts draw from.
//!
//! A [`Series`] is append-only (a resume may cut its tail, see [`Series::truncate_after`]) and keeps
//! an exponential moving average alongside the raw values, updated on each push. Charts never draw
//! the raw points: [`min_max_buckets`] reduces a window to at most two points per terminal column
//! (the minimum and the maximum of each column, in step order), which keeps spikes that plain
//! striding would lose, and [`SeriesCache`] remembers the result until the data length, the width,
//! the window or the smoothing change. This module does no I/O and knows nothing of ratatui.

use std::borrow::Cow;

/// Weight of the previous average in the EMA: `ema = W·ema + (1−W)·x` (TensorBoard-style smoothing).
pub const EMA_WEIGHT: f64 = 0.8;

/// How many steps the recent window shows.
pub const RECENT_STEPS: u64 = 200;

/// The most points a series keeps (raw and smoothed each). Past it the older history is halved
/// (see [`compact`]), so a run of 10^7 steps holds a bounded, spike-preserving summary.
pub const SERIES_CAP: usize = 1 << 16;

/// Points at the end of a series that compaction never touches: the recent window stays at full
/// resolution.
const KEEP_RECENT: usize = SERIES_CAP / 4;

/// Which part of a run the charts show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Window {
    /// The last [`RECENT_STEPS`] steps.
    #[default]
    Recent,
    /// Every step since the run started.
    Whole,
}

impl Window {
    /// The first step shown when the newest step is `last_step`.
    pub fn first_step(self, last_step: u64) -> u64 {
        match self {
            Window::Recent => last_step.saturating_sub(RECENT_STEPS),
            Window::Whole => 0,
        }
    }
}

/// What a cached bucket list was computed for; any change means recomputing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheKey {
    /// Number of points in the series.
    pub len: usize,
    /// Bumped whenever points are removed, so a cut followed by as many new points is noticed.
    pub generation: u64,
    /// Terminal columns the chart has.
    pub columns: usize,
    /// First step shown.
    pub first_step: u64,
    /// Whether the EMA is drawn instead of the raw values.
    pub smoothed: bool,
}

/// The min/max buckets of one series for one [`CacheKey`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesCache {
    key: Option<CacheKey>,
    buckets: Vec<(f64, f64)>,
}

impl SeriesCache {
    /// The cached buckets if they were computed for `key`.
    pub fn get(&self, key: &CacheKey) -> Option<&[(f64, f64)]> {
        (self.key.as_ref() == Some(key)).then_some(self.buckets.as_slice())
    }

    /// Whether the cache holds buckets for `key`.
    pub fn is_fresh(&self, key: &CacheKey) -> bool {
        self.key.as_ref() == Some(key)
    }
}

/// One metric over steps: `(step, value)` pairs in step order plus their running EMA.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    points: Vec<(f64, f64)>,
    smoothed: Vec<(f64, f64)>,
    generation: u64,
    cache: SeriesCache,
}

impl Series {
    /// Appends a point. Non-finite values are kept out (JSON cannot carry them anyway).
    pub fn push(&mut self, step: u64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let x = step as f64;
        let ema = match self.smoothed.last() {
            Some(&(_, prev)) => EMA_WEIGHT * prev + (1.0 - EMA_WEIGHT) * value,
            None => value,
        };
        self.points.push((x, value));
        self.smoothed.push((x, ema));
        if self.points.len() > SERIES_CAP {
            compact(&mut self.points, KEEP_RECENT);
            compact(&mut self.smoothed, KEEP_RECENT);
            self.generation += 1;
        }
    }

    /// Drops every point with a step greater than `step` (a resumed run re-logs those steps).
    pub fn truncate_after(&mut self, step: u64) {
        let keep = self.points.partition_point(|&(x, _)| x <= step as f64);
        if keep < self.points.len() {
            self.points.truncate(keep);
            // After a compaction the smoothed points need not sit at the same indices.
            let keep_smoothed = self.smoothed.partition_point(|&(x, _)| x <= step as f64);
            self.smoothed.truncate(keep_smoothed);
            self.generation += 1;
        }
    }

    /// The raw points.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// The newest raw value.
    pub fn last(&self) -> Option<f64> {
        self.points.last().map(|&(_, v)| v)
    }

    /// The newest step.
    pub fn last_step(&self) -> Option<u64> {
        self.points.last().map(|&(x, _)| x as u64)
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the series has no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The key the buckets for this view would be cached under.
    pub fn key(&self, columns: usize, first_step: u64, smoothed: bool) -> CacheKey {
        CacheKey { len: self.points.len(), generation: self.generation, columns, first_step, smoothed }
    }

    /// The points from `first_step` on (raw or smoothed).
    pub fn window(&self, first_step: u64, smoothed: bool) -> &[(f64, f64)] {
        let all = if smoothed { &self.smoothed } else { &self.points };
        let start = all.partition_point(|&(x, _)| x < first_step as f64);
        &all[start..]
    }

    /// Recomputes the cached buckets if `key` differs from what they were computed for.
    pub fn refresh(&mut self, key: CacheKey) {
        if !self.cache.is_fresh(&key) {
            let buckets = min_max_buckets(self.window(key.first_step, key.smoothed), key.columns);
            self.cache = SeriesCache { key: Some(key), buckets };
        }
    }

    /// The buckets for `key`: from the cache when fresh, computed on the spot otherwise (a render
    /// at a size the state was not refreshed for, as in tests).
    pub fn buckets(&self, key: CacheKey) -> Cow<'_, [(f64, f64)]> {
        match self.cache.get(&key) {
            Some(cached) => Cow::Borrowed(cached),
            None => Cow::Owned(min_max_buckets(self.window(key.first_step, key.smoothed), key.columns)),
        }
    }

    /// The cache, for tests that check when it is recomputed.
    pub fn cache(&self) -> &SeriesCache {
        &self.cache
    }
}

/// Halves the history before the last `keep_recent` points: each run of four consecutive points
/// (two adjacent pairs merged) becomes its minimum and its maximum, in step order, so the extremes
/// of every group, and so every spike, survive. A trailing group of fewer than four points and
/// the recent points are kept as they are.
pub fn compact(points: &mut Vec<(f64, f64)>, keep_recent: usize) {
    let old = points.len().saturating_sub(keep_recent);
    let groups = old / 4;
    let mut write = 0;
    for g in 0..groups {
        let group = &points[g * 4..g * 4 + 4];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in group.iter().enumerate() {
            if p.1 < group[lo].1 {
                lo = i;
            }
            if p.1 > group[hi].1 {
                hi = i;
            }
        }
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        let (first, second) = (group[a], group[b]);
        points[write] = first;
        points[write + 1] = second;
        write += 2;
    }
    // Everything after the whole groups moves down behind the compacted part.
    let rest = groups * 4;
    points.copy_within(rest.., write);
    points.truncate(write + points.len() - rest);
}

/// Reduces `points` to at most `2 * columns` points: the points are split into `columns` runs of
/// consecutive points of (nearly) equal length, and each run contributes its minimum and its
/// maximum, in their original order. With `2 * columns` points or fewer nothing is dropped.
pub fn min_max_buckets(points: &[(f64, f64)], columns: usize) -> Vec<(f64, f64)> {
    let n = points.len();
    if columns == 0 {
        return Vec::new();
    }
    if n <= 2 * columns {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(2 * columns);
    for c in 0..columns {
        // n > columns, so every bucket holds at least one point.
        let start = c * n / columns;
        let end = (c + 1) * n / columns;
        let (mut lo, mut hi) = (start, start);
        for i in start..end {
            if points[i].1 < points[lo].1 {
                lo = i;
            }
            if points[i].1 > points[hi].1 {
                hi = i;
            }
        }
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push(points[a]);
        if b != a {
            out.push(points[b]);
        }
    }
    out
}

/// Least-squares slope of the last `n` points (`None` with fewer than 3).
pub fn recent_slope(points: &[(f64, f64)], n: usize) -> Option<f64> {
    let tail = &points[points.len().saturating_sub(n)..];
    if tail.len() < 3 {
        return None;
    }
    let count = tail.len() as f64;
    let mean_x = tail.iter().map(|p| p.0).sum::<f64>() / count;
    let mean_y = tail.iter().map(|p| p.1).sum::<f64>() / count;
    let sxx: f64 = tail.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = tail.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn series(values: &[f64]) -> Series {
        let mut s = Series::default();
        for (i, &v) in values.iter().enumerate() {
            s.push(i as u64 + 1, v);
        }
        s
    }

    #[test]
    fn a_million_points_fit_two_per_column() {
        let points: Vec<(f64, f64)> = (0..1_000_000).map(|i| (f64::from(i), (f64::from(i) * 0.001).sin())).collect();
        for width in [1, 7, 80, 118, 300] {
            let buckets = min_max_buckets(&points, width);
            assert!(buckets.len() <= 2 * width, "width {width}: {} points", buckets.len());
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "points stay in step order");
        }
    }

    #[test]
    fn small_series_pass_through_and_zero_width_is_empty() {
        let points = [(1.0, 3.0), (2.0, 1.0), (3.0, 2.0)];
        assert_eq!(min_max_buckets(&points, 2), points.to_vec());
        assert!(min_max_buckets(&points, 0).is_empty());
    }

    #[test]
    fn a_spike_survives_downsampling() {
        let mut points: Vec<(f64, f64)> = (0..10_000).map(|i| (f64::from(i), 1.0)).collect();
        points[4_321].1 = 50.0;
        let buckets = min_max_buckets(&points, 10);
        assert!(buckets.contains(&(4_321.0, 50.0)));
    }

    #[test]
    fn truncation_cuts_the_tail_and_invalidates_the_cache() {
        let mut s = series(&[5.0, 4.0, 3.0, 2.0]);
        let before = s.key(10, 0, false);
        s.refresh(before);
        assert!(s.cache().is_fresh(&before));
        s.truncate_after(2);
        assert_eq!(s.points(), &[(1.0, 5.0), (2.0, 4.0)]);
        s.push(3, 9.0);
        s.push(4, 9.0);
        let after = s.key(10, 0, false);
        assert_eq!(after.len, before.len, "same length as before the cut");
        assert!(!s.cache().is_fresh(&after), "but a new generation");
        assert_eq!(s.buckets(after).as_ref(), &[(1.0, 5.0), (2.0, 4.0), (3.0, 9.0), (4.0, 9.0)]);
    }

    #[test]
    fn cache_is_reused_until_the_key_changes() {
        let mut s = series(&(0..1000).map(f64::from).collect::<Vec<_>>());
        let key = s.key(20, 0, false);
        s.refresh(key);
        assert!(matches!(s.buckets(key), Cow::Borrowed(_)));
        assert!(matches!(s.buckets(s.key(21, 0, false)), Cow::Owned(_)), "width changed");
        assert!(matches!(s.buckets(s.key(20, 800, false)), Cow::Owned(_)), "window changed");
        assert!(matches!(s.buckets(s.key(20, 0, true)), Cow::Owned(_)), "smoothing changed");
    }

    #[test]
    fn ema_follows_the_formula() {
        let s = series(&[1.0, 2.0, 3.0]);
        // ema1 = 1; ema2 = 0.8·1 + 0.2·2 = 1.2; ema3 = 0.8·1.2 + 0.2·3 = 1.56
        let ema: Vec<f64> = s.window(0, true).iter().map(|p| p.1).collect();
        assert!((ema[1] - 1.2).abs() < 1e-12 && (ema[2] - 1.56).abs() < 1e-12, "{ema:?}");
    }

    #[test]
    fn windows_start_at_the_first_step() {
        let s = series(&(0..500).map(f64::from).collect::<Vec<_>>());
        assert_eq!(Window::Recent.first_step(500), 300);
        assert_eq!(s.window(300, false).first(), Some(&(300.0, 299.0)));
        assert_eq!(Window::Whole.first_step(500), 0);
        assert_eq!(Window::Recent.first_step(20), 0);
    }

    #[test]
    fn a_long_series_stays_under_the_cap_and_keeps_its_spikes() {
        let mut s = Series::default();
        let n = 3 * SERIES_CAP as u64 + 123;
        for step in 0..n {
            let v = if step == 777 {
                1e6
            } else if step == 40_000 {
                -1e6
            } else {
                (step % 7) as f64
            };
            s.push(step, v);
        }
        assert!(s.len() <= SERIES_CAP, "{} points", s.len());
        assert!(s.points().windows(2).all(|w| w[0].0 < w[1].0), "steps stay in order");
        assert!(s.points().contains(&(777.0, 1e6)) && s.points().contains(&(40_000.0, -1e6)));
        assert_eq!(s.last_step(), Some(n - 1));
        let tail: Vec<f64> = s.points()[s.len() - 10..].iter().map(|p| p.0).collect();
        assert_eq!(tail, ((n - 10)..n).map(|i| i as f64).collect::<Vec<_>>(), "the recent tail is at full resolution");
    }

    #[test]
    fn compaction_halves_the_old_part() {
        let mut points: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from((i * 3) % 5))).collect();
        compact(&mut points, 2);
        // values 0 3 1 4 | 2 0 3 1 | 4 2 → (0,0) (3,4) | (5,0) (6,3) | 8 9 untouched
        let xs: Vec<f64> = points.iter().map(|p| p.0).collect();
        assert_eq!(xs, vec![0.0, 3.0, 5.0, 6.0, 8.0, 9.0]);
    }

    #[test]
    fn slope_sign() {
        let up: Vec<(f64, f64)> = (0..20).map(|i| (f64::from(i), f64::from(i) * 2.0)).collect();
        assert!(recent_slope(&up, 20).is_some_and(|s| (s - 2.0).abs() < 1e-9));
        assert_eq!(recent_slope(&up[..2], 20), None);
    }

    proptest! {
        // The buckets are copies of raw points, so their extremes are exactly equal.
        #[allow(clippy::float_cmp)]
        #[test]
        fn buckets_keep_the_extremes_of_the_window(
            values in proptest::collection::vec(-1e12f64..1e12, 0..3000),
            columns in 0usize..300,
            first in 0u64..3000,
        ) {
            let s = series(&values);
            let window = s.window(first, false);
            let buckets = s.buckets(s.key(columns, first, false));
            prop_assert!(buckets.len() <= 2 * columns);
            if columns > 0 && !window.is_empty() {
                let min = |p: &[(f64, f64)]| p.iter().map(|q| q.1).fold(f64::INFINITY, f64::min);
                let max = |p: &[(f64, f64)]| p.iter().map(|q| q.1).fold(f64::NEG_INFINITY, f64::max);
                prop_assert_eq!(min(&buckets), min(window));
                prop_assert_eq!(max(&buckets), max(window));
                prop_assert!(buckets.iter().all(|p| window.contains(p)));
            }
        }

        #[test]
        fn downsampling_never_panics(
            points in proptest::collection::vec((any::<f64>(), any::<f64>()), 0..500),
            columns in 0usize..1000,
        ) {
            let out = min_max_buckets(&points, columns);
            prop_assert!(out.len() <= 2 * columns);
        }
    }
}
