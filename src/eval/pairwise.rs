//! The pairwise judge: candidate vs baseline on the same item ([`compare`]), human blind labels
//! ([`HumanLabel`], [`read_human_labels`], and the labeling pane's eval records in a run's labels
//! file, [`read_pairwise_labels`]) and the [`WinTieLoss`] tally. Owns the win/tie/loss rules;
//! never judges a single response on its own.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::error::EvalError;
use crate::eval::jsonl::{located, read_lines, Issue, Line, Obj};
use crate::eval::judge::{Judge, Verdict};
use crate::eval::text::word_count;
use crate::located::Unreadable;

/// Who won one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Winner {
    /// The checkpoint under evaluation.
    Candidate,
    /// The baseline checkpoint.
    Baseline,
    /// Neither.
    Tie,
}

/// A human's blind pairwise label for one item. When present it replaces the rule outcome for
/// that item (the last label for an id wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanLabel {
    /// The item id.
    pub id: String,
    /// The preferred side.
    pub winner: Winner,
}

/// Counts of pairwise outcomes, from the candidate's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinTieLoss {
    /// Candidate better.
    pub win: usize,
    /// Equal.
    pub tie: usize,
    /// Baseline better.
    pub loss: usize,
}

impl WinTieLoss {
    /// Adds one outcome.
    pub fn add(&mut self, winner: Winner) {
        match winner {
            Winner::Candidate => self.win += 1,
            Winner::Tie => self.tie += 1,
            Winner::Baseline => self.loss += 1,
        }
    }

    /// Number of compared items.
    pub fn total(&self) -> usize {
        self.win + self.tie + self.loss
    }

    /// `(win + 0.5·tie) / n`; `None` when nothing was compared.
    pub fn win_rate(&self) -> Option<f64> {
        let n = self.total();
        (n > 0).then(|| (self.win as f64 + 0.5 * self.tie as f64) / n as f64)
    }
}

/// The rule outcome of one item: the side whose verdict passed wins; equal verdicts tie.
///
/// Optional tie-break ([`crate::eval::JudgeConfig::prefer_shorter_on_tie`], off by default):
/// when both pass, the response with fewer words wins if it is shorter by at least the margin
/// (20 % by default), i.e. `shorter ≤ (1 − margin) · longer`.
pub fn compare(
    judge: &Judge,
    candidate: &Verdict,
    baseline: &Verdict,
    candidate_text: &str,
    baseline_text: &str,
) -> Winner {
    match (candidate.passed, baseline.passed) {
        (true, false) => Winner::Candidate,
        (false, true) => Winner::Baseline,
        (false, false) => Winner::Tie,
        (true, true) => {
            let Some(margin) = judge.shorter_margin() else { return Winner::Tie };
            let (c, b) = (word_count(candidate_text) as f64, word_count(baseline_text) as f64);
            if c < b && c <= (1.0 - margin) * b {
                Winner::Candidate
            } else if b < c && b <= (1.0 - margin) * c {
                Winner::Baseline
            } else {
                Winner::Tie
            }
        }
    }
}

/// Reads human labels, one `{"id", "winner": "candidate" | "baseline" | "tie"}` per line. A file
/// that does not exist means no labels.
pub fn read_human_labels(path: &Path) -> Result<Vec<HumanLabel>, EvalError> {
    read_lines(path, true)?
        .iter()
        .map(|line| parse_label(&line.value).map_err(|issue| located(path, line, issue)))
        .collect()
}

fn parse_label(v: &serde_json::Value) -> Result<HumanLabel, Issue> {
    let obj = Obj::new(v, Vec::new(), "a label object")?;
    obj.deny_unknown(&["id", "winner"])?;
    let id = obj.req_str("id")?;
    let winner = winner_of(&obj)?;
    Ok(HumanLabel { id, winner })
}

fn winner_of(obj: &Obj<'_>) -> Result<Winner, Issue> {
    Ok(match obj.req_str("winner")?.as_str() {
        "candidate" => Winner::Candidate,
        "baseline" => Winner::Baseline,
        "tie" => Winner::Tie,
        other => {
            return Err(Issue::bad(
                obj.path_of("winner"),
                format!("unknown winner \"{other}\" (expected one of: candidate, baseline, tie)"),
            ))
        }
    })
}

/// The `kind` of a labels-file record that is a blind pairwise judgement of an eval item.
pub const EVAL_PAIRWISE_KIND: &str = "eval_pairwise";

/// Reads the blind pairwise eval labels of a labels file (the one the labeling pane appends to)
/// that compare stage `candidate` with stage `baseline`.
///
/// Such a record is `{"id", "kind": "eval_pairwise", "item": "<eval item id>", "candidate":
/// "<stage>", "baseline": "<stage>", "winner": "candidate" | "baseline" | "tie", "labeler"?,
/// "ts"?, "supersedes"?, "order"?}`: the labeler saw both answers in a random order without their sources,
/// and the pane recorded which side was the candidate. Records retracted by a later record's
/// `supersedes` do not count; for one item the last live label wins (see [`crate::eval::score`]).
/// Every other record of the file (preference labels, ties, skips, undos) belongs to the data
/// module and is ignored here, as are lines that are not JSON objects and a torn last line
/// (the data module's reader reports those). A missing file has no labels.
pub fn read_pairwise_labels(path: &Path, candidate: &str, baseline: &str) -> Result<Vec<HumanLabel>, EvalError> {
    // Bytes, decoded line by line as the data module's reader does: a line that is not UTF-8 (a
    // writer killed inside a multi-byte character) is that reader's problem to report, not a
    // reason to fail every evaluation that reads the file.
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Unreadable::at(path)(source).into()),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut records: Vec<(String, String, String, HumanLabel)> = Vec::new();
    let mut retracted: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, raw) in complete.split('\n').enumerate() {
        let raw = raw.trim_end_matches('\r').trim_start_matches('\u{feff}');
        let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else { continue };
        let Some(map) = value.as_object() else { continue };
        if let Some(target) = map.get("supersedes").and_then(serde_json::Value::as_str) {
            retracted.insert(target.to_string());
        }
        if map.get("kind").and_then(serde_json::Value::as_str) != Some(EVAL_PAIRWISE_KIND) {
            continue;
        }
        let line = Line { number: i + 1, text: raw.to_string(), value: value.clone() };
        let parsed = parse_eval_label(&value).map_err(|issue| located(path, &line, issue))?;
        records.push(parsed);
    }
    Ok(records
        .into_iter()
        .filter(|(id, cand, base, _)| !retracted.contains(id) && cand == candidate && base == baseline)
        .map(|(_, _, _, label)| label)
        .collect())
}

fn parse_eval_label(v: &serde_json::Value) -> Result<(String, String, String, HumanLabel), Issue> {
    let obj = Obj::new(v, Vec::new(), "a label object")?;
    obj.deny_unknown(&[
        "id",
        "kind",
        "item",
        "candidate",
        "baseline",
        "winner",
        "labeler",
        "ts",
        "supersedes",
        "order",
    ])?;
    let id = obj.req_str("id")?;
    let item = obj.req_str("item")?;
    let candidate = obj.req_str("candidate")?;
    let baseline = obj.req_str("baseline")?;
    let winner = winner_of(&obj)?;
    obj.opt_str("labeler")?;
    obj.opt_u64("ts")?;
    Ok((id, candidate, baseline, HumanLabel { id: item, winner }))
}
