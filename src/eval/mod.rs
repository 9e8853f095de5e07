//! Evaluation of checkpoints: eval suites (JSONL), a configurable rule-based judge, human
//! overrides and pairwise labels, contamination filtering, the per-checkpoint scorecard
//! (report.json), failures.jsonl rows and release gates with a deploy / iterate / incomplete
//! decision.
//!
//! Pure logic over strings and numbers: generation happens elsewhere and arrives as
//! [`Response`]s with latencies and token counts. No tensor backend, no UI, no async.
//!
//! Flow: [`read_suite`] → generate elsewhere → [`score`] (judge, overrides, contamination,
//! pairwise vs baseline, metrics, [`evaluate_gates`]) → [`Report`] / [`failures()`] /
//! [`summary_table`] / [`Report::decision`].

pub mod check;
pub mod config;
pub mod error;
pub mod failures;
pub mod gates;
mod jsonl;
pub mod judge;
pub mod metrics;
pub mod overrides;
pub mod pairwise;
pub mod report;
pub mod suite;
pub mod summary;
pub mod text;

pub use check::{Check, Pattern, CHECK_TYPES};
pub use config::EvalConfig;
pub use error::EvalError;
pub use failures::{failures, FailureRecord};
pub use gates::{decide, evaluate_gates, gate_names, Decision, GateConfig, GateOp, GateResult, SegmentGate};
pub use judge::{Judge, JudgeConfig, Verdict};
pub use metrics::{percentile_nearest_rank, Dimension, SegmentMetric, SegmentStats, Segments};
pub use overrides::{apply_overrides, read_overrides, Override};
pub use pairwise::{
    compare, read_human_labels, read_pairwise_labels, HumanLabel, WinTieLoss, Winner, EVAL_PAIRWISE_KIND,
};
pub use report::{score, BestOfInfo, Contamination, ContaminationSummary, Report, Response, ScoreInputs, Scored};
pub use suite::{read_suite, EvalItem, Kind, Message, Prompt, Segment};
pub use summary::summary_table;
pub use text::{citations, first_number, normalise_answer, normalise_prompt, word_count};
