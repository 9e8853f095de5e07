//! Aggregation: nearest-rank percentiles, the per-population `Tally` behind every rate, and
//! per-segment statistics ([`Segments`], [`SegmentStats`]). Rates over an empty set are `None`,
//! never 0. Owns no thresholds and no pass/fail decisions (those are in `gates.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::judge::Verdict;
use crate::eval::pairwise::{WinTieLoss, Winner};
use crate::eval::suite::{EvalItem, Kind};

/// The nearest-rank percentile: the smallest value such that at least `percent` % of `values`
/// are ≤ it, i.e. the `⌈percent·n/100⌉`-th smallest (1-based, at least the first). `None` for
/// no values; `percent` above 100 is read as 100.
pub fn percentile_nearest_rank(values: &[f64], percent: u32) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let rank = (percent.min(100) as usize * n).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// `num / den`, `None` when `den` is 0.
pub(crate) fn rate(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// A numerator/denominator pair.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ratio {
    pub num: usize,
    pub den: usize,
}

impl Ratio {
    fn add(&mut self, hit: bool) {
        self.den += 1;
        self.num += usize::from(hit);
    }

    pub fn rate(self) -> Option<f64> {
        rate(self.num, self.den)
    }
}

/// Counts behind the rates of one population (the whole suite or one segment).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    pub count: usize,
    /// Capability items passed / capability items.
    pub task: Ratio,
    /// Items with instruction checks that met them all.
    pub instruction: Ratio,
    /// Safety items judged unsafe.
    pub unsafe_: Ratio,
    /// Attack items judged unsafe.
    pub jailbreak: Ratio,
    /// Hallucination items that hallucinated.
    pub hallucination: Ratio,
    /// Items with `cite_sources` that cited correctly.
    pub citation: Ratio,
    /// Pairwise outcomes (only when a baseline was compared).
    pub pairwise: WinTieLoss,
}

impl Tally {
    /// Counts one item.
    pub fn add(&mut self, item: &EvalItem, verdict: &Verdict, pairwise: Option<Winner>) {
        self.count += 1;
        match item.kind {
            Kind::Capability => self.task.add(verdict.passed),
            Kind::Safety => self.unsafe_.add(verdict.unsafe_),
            Kind::Hallucination => self.hallucination.add(verdict.hallucinated),
        }
        if item.attack.is_some() {
            self.jailbreak.add(verdict.jailbreak);
        }
        if let Some(ok) = verdict.instruction_ok {
            self.instruction.add(ok);
        }
        if let Some(ok) = verdict.citation_ok {
            self.citation.add(ok);
        }
        if let Some(w) = pairwise {
            self.pairwise.add(w);
        }
    }

    /// The segment statistics of this population.
    pub fn stats(&self) -> SegmentStats {
        SegmentStats {
            count: self.count,
            task_success_rate: self.task.rate(),
            instruction_following_rate: self.instruction.rate(),
            unsafe_rate: self.unsafe_.rate(),
            jailbreak_success_rate: self.jailbreak.rate(),
            hallucination_rate: self.hallucination.rate(),
            citation_accuracy: self.citation.rate(),
            win_rate: self.pairwise.win_rate(),
        }
    }
}

/// The metrics of one segment value (e.g. `language = "fr"`), over its uncontaminated items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    /// Items in the segment.
    pub count: usize,
    /// Capability items passed / capability items.
    pub task_success_rate: Option<f64>,
    /// Items meeting all instruction checks / items with instruction checks.
    pub instruction_following_rate: Option<f64>,
    /// Unsafe safety items / safety items.
    pub unsafe_rate: Option<f64>,
    /// Unsafe attack items / attack items.
    pub jailbreak_success_rate: Option<f64>,
    /// Hallucinated / hallucination items.
    pub hallucination_rate: Option<f64>,
    /// Correct citations / items with `cite_sources`.
    pub citation_accuracy: Option<f64>,
    /// Pairwise win rate vs the baseline.
    pub win_rate: Option<f64>,
}

/// A metric that exists per segment, for segment gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentMetric {
    /// [`SegmentStats::task_success_rate`] (higher is better).
    TaskSuccessRate,
    /// [`SegmentStats::instruction_following_rate`] (higher is better).
    InstructionFollowingRate,
    /// [`SegmentStats::unsafe_rate`] (lower is better).
    UnsafeRate,
    /// [`SegmentStats::jailbreak_success_rate`] (lower is better).
    JailbreakSuccessRate,
    /// [`SegmentStats::hallucination_rate`] (lower is better).
    HallucinationRate,
    /// [`SegmentStats::citation_accuracy`] (higher is better).
    CitationAccuracy,
    /// [`SegmentStats::win_rate`] (higher is better).
    WinRate,
}

impl SegmentMetric {
    /// The metric's name as written in TOML and reports.
    pub fn name(self) -> &'static str {
        match self {
            SegmentMetric::TaskSuccessRate => "task_success_rate",
            SegmentMetric::InstructionFollowingRate => "instruction_following_rate",
            SegmentMetric::UnsafeRate => "unsafe_rate",
            SegmentMetric::JailbreakSuccessRate => "jailbreak_success_rate",
            SegmentMetric::HallucinationRate => "hallucination_rate",
            SegmentMetric::CitationAccuracy => "citation_accuracy",
            SegmentMetric::WinRate => "win_rate",
        }
    }

    /// Whether larger values are better (a "drop" is then a decrease; otherwise an increase).
    pub fn higher_is_better(self) -> bool {
        !matches!(
            self,
            SegmentMetric::UnsafeRate | SegmentMetric::JailbreakSuccessRate | SegmentMetric::HallucinationRate
        )
    }
}

impl SegmentStats {
    /// The value of `metric` in this segment.
    pub fn metric(&self, metric: SegmentMetric) -> Option<f64> {
        match metric {
            SegmentMetric::TaskSuccessRate => self.task_success_rate,
            SegmentMetric::InstructionFollowingRate => self.instruction_following_rate,
            SegmentMetric::UnsafeRate => self.unsafe_rate,
            SegmentMetric::JailbreakSuccessRate => self.jailbreak_success_rate,
            SegmentMetric::HallucinationRate => self.hallucination_rate,
            SegmentMetric::CitationAccuracy => self.citation_accuracy,
            SegmentMetric::WinRate => self.win_rate,
        }
    }
}

/// A segment dimension of [`crate::eval::Segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// `segment.language`.
    Language,
    /// `segment.domain`.
    Domain,
    /// `segment.intent`.
    Intent,
}

impl Dimension {
    /// The dimension's name as written in TOML and reports.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Language => "language",
            Dimension::Domain => "domain",
            Dimension::Intent => "intent",
        }
    }
}

/// Per-segment statistics for each dimension, keyed by segment value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Segments {
    /// By `segment.language`.
    pub language: BTreeMap<String, SegmentStats>,
    /// By `segment.domain`.
    pub domain: BTreeMap<String, SegmentStats>,
    /// By `segment.intent`.
    pub intent: BTreeMap<String, SegmentStats>,
}

impl Segments {
    /// The statistics of one dimension.
    pub fn dimension(&self, dimension: Dimension) -> &BTreeMap<String, SegmentStats> {
        match dimension {
            Dimension::Language => &self.language,
            Dimension::Domain => &self.domain,
            Dimension::Intent => &self.intent,
        }
    }
}

/// Per-segment tallies being accumulated.
#[derive(Debug, Default)]
pub(crate) struct SegmentTallies {
    language: BTreeMap<String, Tally>,
    domain: BTreeMap<String, Tally>,
    intent: BTreeMap<String, Tally>,
}

impl SegmentTallies {
    /// Counts one item in its three segments.
    pub fn add(&mut self, item: &EvalItem, verdict: &Verdict, pairwise: Option<Winner>) {
        let s = &item.segment;
        self.language.entry(s.language.clone()).or_default().add(item, verdict, pairwise);
        self.domain.entry(s.domain.clone()).or_default().add(item, verdict, pairwise);
        self.intent.entry(s.intent.clone()).or_default().add(item, verdict, pairwise);
    }

    /// The finished statistics.
    pub fn finish(&self) -> Segments {
        let stats = |m: &BTreeMap<String, Tally>| m.iter().map(|(k, t)| (k.clone(), t.stats())).collect();
        Segments { language: stats(&self.language), domain: stats(&self.domain), intent: stats(&self.intent) }
    }
}
