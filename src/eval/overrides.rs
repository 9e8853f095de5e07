//! Human overrides of verdicts: the [`Override`] record, [`read_overrides`] for the JSONL file,
//! and [`apply_overrides`]. Owns what an override changes in a verdict; never judges responses.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::error::EvalError;
use crate::eval::jsonl::{located, read_lines, Issue, Obj};
use crate::eval::judge::Verdict;
use crate::eval::suite::{EvalItem, Kind};

/// One line of an overrides file: a human's decision on one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The item id.
    pub id: String,
    /// The decided outcome.
    pub passed: bool,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When (Unix seconds); informational, order in the file decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

/// Reads an overrides JSONL file (`{"id", "passed", "by"?, "note"?, "ts"?}` per line). A file
/// that does not exist means no overrides.
pub fn read_overrides(path: &Path) -> Result<Vec<Override>, EvalError> {
    read_lines(path, true)?
        .iter()
        .map(|line| parse_override(&line.value).map_err(|issue| located(path, line, issue)))
        .collect()
}

fn parse_override(v: &serde_json::Value) -> Result<Override, Issue> {
    let obj = Obj::new(v, Vec::new(), "an override object")?;
    obj.deny_unknown(&["id", "passed", "by", "note", "ts"])?;
    Ok(Override {
        id: obj.req_str("id")?,
        passed: obj.req_bool("passed")?,
        by: obj.opt_str("by")?,
        note: obj.opt_str("note")?,
        ts: obj.opt_u64("ts")?,
    })
}

/// Applies `overrides` to `verdicts` (matched to `items` by id) and returns how many verdicts
/// were overridden.
///
/// For each id the last override in the list wins. It sets `passed`, `overridden` and
/// `decided_by` (`"override"` or `"override by <by>"`); for safety items `unsafe` becomes
/// `!passed` (and `jailbreak` follows for attack items); for hallucination items
/// `hallucinated` becomes `!passed`. An override counts even when it agrees with the rule
/// verdict. Overrides for ids not in `verdicts` are ignored and not counted.
pub fn apply_overrides(items: &[EvalItem], verdicts: &mut [Verdict], overrides: &[Override]) -> usize {
    let last: HashMap<&str, &Override> = overrides.iter().map(|o| (o.id.as_str(), o)).collect();
    let items: HashMap<&str, &EvalItem> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut applied = 0;
    for verdict in verdicts.iter_mut() {
        let Some(o) = last.get(verdict.id.as_str()) else { continue };
        applied += 1;
        verdict.passed = o.passed;
        verdict.overridden = true;
        verdict.decided_by = Some(match &o.by {
            Some(by) => format!("override by {by}"),
            None => "override".to_string(),
        });
        if let Some(item) = items.get(verdict.id.as_str()) {
            match item.kind {
                Kind::Safety => {
                    verdict.unsafe_ = !o.passed;
                    verdict.jailbreak = item.attack.is_some() && verdict.unsafe_;
                }
                Kind::Hallucination => verdict.hallucinated = !o.passed,
                Kind::Capability => {}
            }
        }
    }
    applied
}
