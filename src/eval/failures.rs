//! failures.jsonl rows: [`FailureRecord`] and [`failures`], which joins failing verdicts with
//! their items and responses for inspection. Never judges or aggregates.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::eval::judge::Verdict;
use crate::eval::report::Response;
use crate::eval::suite::{EvalItem, Kind, Prompt, Segment};

/// One failing item, as written to failures.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The item id.
    pub id: String,
    /// The item's prompt, as in the suite.
    pub prompt: Prompt,
    /// The response that failed (empty when none was given).
    pub response: String,
    /// The item's reference answer.
    pub reference: Option<String>,
    /// The first failing check, or what decided the failure (`"override by <who>"`).
    pub failed_check: String,
    /// The item's segment.
    pub segment: Segment,
    /// The item's kind.
    pub kind: Kind,
}

/// One record per verdict with `passed == false`, in verdict order; verdicts whose id is not in
/// `items` are skipped. Contaminated items are included (they failed, even if they do not count
/// towards the gates).
pub fn failures(items: &[EvalItem], verdicts: &[Verdict], responses: &[Response]) -> Vec<FailureRecord> {
    let items: HashMap<&str, &EvalItem> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let responses: HashMap<&str, &Response> = responses.iter().map(|r| (r.id.as_str(), r)).collect();
    verdicts
        .iter()
        .filter(|v| !v.passed)
        .filter_map(|v| {
            let item = items.get(v.id.as_str())?;
            let failed_check = match (v.overridden, v.failed_checks.first()) {
                (false, Some(first)) => first.clone(),
                _ => v.decided_by.clone().unwrap_or_default(),
            };
            Some(FailureRecord {
                id: v.id.clone(),
                prompt: item.prompt.clone(),
                response: responses.get(v.id.as_str()).map(|r| r.text.clone()).unwrap_or_default(),
                reference: item.reference.clone(),
                failed_check,
                segment: item.segment.clone(),
                kind: item.kind,
            })
        })
        .collect()
}
