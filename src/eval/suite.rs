//! Eval suites: the item types ([`EvalItem`], [`Prompt`], [`Kind`], [`Segment`]) and
//! [`read_suite`], which decodes a JSONL suite with `path:line:col: field: message` errors and
//! validates cross-field rules (references the checks need, duplicate ids). Never judges.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::eval::check::{parse_check, Check};
use crate::eval::error::EvalError;
use crate::eval::jsonl::{index, located, read_lines, Issue, Obj, Seg};
use crate::eval::text::first_number;

/// What an item measures, which decides how its verdict feeds the scorecard.
///
/// * `capability`: `passed` = every check passed; counts towards `task_success_rate`.
/// * `safety`: `passed` = every check passed; `unsafe` = a `must_refuse` check found no refusal
///   or a `must_not_contain` policy pattern matched; counts towards `unsafe_rate` (and, with an
///   `attack`, `jailbreak_success_rate`).
/// * `hallucination`: `passed` = every check passed; `hallucinated` = a `must_abstain` check
///   found no abstention (the model answered where it should have said it does not know);
///   counts towards `hallucination_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Task ability.
    Capability,
    /// Refusal of harmful requests / policy compliance.
    Safety,
    /// Abstaining instead of making things up.
    Hallucination,
}

/// One chat message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

/// An item's prompt: plain text or a list of chat messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// A plain prompt.
    Text(String),
    /// A conversation.
    Messages(Vec<Message>),
}

impl Prompt {
    /// The prompt as one text: the plain string, or the messages' contents joined by `"\n"`.
    pub fn text(&self) -> String {
        match self {
            Prompt::Text(s) => s.clone(),
            Prompt::Messages(ms) => ms.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// The slice of the population an item belongs to, for per-segment metrics and gates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// E.g. `en`, `fr`.
    pub language: String,
    /// E.g. `medical`, `code`.
    pub domain: String,
    /// E.g. `question`, `instruction`.
    pub intent: String,
}

/// One line of an eval suite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalItem {
    /// Unique id within the suite.
    pub id: String,
    /// What the model is asked.
    pub prompt: Prompt,
    /// The expected answer, for `exact`, `contains` (without `value`) and `numeric`.
    pub reference: Option<String>,
    /// What the item measures.
    pub kind: Kind,
    /// Its population segment.
    pub segment: Segment,
    /// The checks, all of which must pass (at least one).
    pub checks: Vec<Check>,
    /// Marks a red-team / jailbreak item (the attack's name or technique); safety items only.
    pub attack: Option<String>,
    /// Source ids the answer must cite, for `cite_sources` (empty when not given).
    pub sources: Vec<String>,
}

const ITEM_FIELDS: [&str; 8] = ["id", "prompt", "reference", "kind", "segment", "checks", "attack", "sources"];

/// Reads a JSONL eval suite. Blank lines are skipped. Every item is validated:
///
/// * `id` a non-empty string, unique in the file;
/// * `prompt` a non-empty string or a non-empty list of `{role, content}` messages;
/// * `kind` one of `capability`, `safety`, `hallucination`;
/// * `segment` an object with string `language`, `domain`, `intent`;
/// * `checks` a non-empty list of known checks with valid regexes;
/// * `reference` present when `exact`, `numeric` (a number in it) or a `contains` without
///   `value` needs it; `sources` non-empty when `cite_sources` needs it;
/// * `attack` only on safety items; no other fields.
pub fn read_suite(path: &Path) -> Result<Vec<EvalItem>, EvalError> {
    let mut items = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for line in read_lines(path, false)? {
        let item = parse_item(&line.value).map_err(|issue| located(path, &line, issue))?;
        if let Some(first) = first_line.get(&item.id) {
            let issue = Issue::bad(
                vec![Seg::Key("id".into())],
                format!("duplicate id \"{}\" (first on line {first})", item.id),
            );
            return Err(located(path, &line, issue));
        }
        first_line.insert(item.id.clone(), line.number);
        items.push(item);
    }
    Ok(items)
}

fn parse_item(v: &Json) -> Result<EvalItem, Issue> {
    let obj = Obj::new(v, Vec::new(), "an eval item object")?;
    obj.deny_unknown(&ITEM_FIELDS)?;
    let id = obj.req_str("id")?;
    if id.trim().is_empty() {
        return Err(Issue::bad(obj.path_of("id"), "must not be empty"));
    }
    let prompt = parse_prompt(obj.req("prompt")?, obj.path_of("prompt"))?;
    let reference = obj.opt_str("reference")?;
    let kind = match obj.req_str("kind")?.as_str() {
        "capability" => Kind::Capability,
        "safety" => Kind::Safety,
        "hallucination" => Kind::Hallucination,
        other => {
            return Err(Issue::bad(
                obj.path_of("kind"),
                format!("unknown kind \"{other}\" (expected one of: capability, safety, hallucination)"),
            ))
        }
    };
    let segment = parse_segment(obj.req("segment")?, obj.path_of("segment"))?;
    let list =
        obj.req("checks")?.as_array().ok_or_else(|| Issue::bad(obj.path_of("checks"), "expected a list of checks"))?;
    if list.is_empty() {
        return Err(Issue::bad(obj.path_of("checks"), "expected at least one check"));
    }
    let checks = list
        .iter()
        .enumerate()
        .map(|(i, c)| parse_check(c, index(&obj.path_of("checks"), i)))
        .collect::<Result<Vec<_>, _>>()?;
    let attack = obj.opt_str("attack")?;
    if attack.is_some() && kind != Kind::Safety {
        return Err(Issue::bad(obj.path_of("attack"), "only safety items can carry an attack"));
    }
    let sources = obj.opt_str_list("sources")?.unwrap_or_default();
    for (i, check) in checks.iter().enumerate() {
        let at = index(&obj.path_of("checks"), i);
        let needs_reference = match check {
            Check::Exact | Check::Numeric { .. } => true,
            Check::Contains { value } => value.is_none(),
            _ => false,
        };
        if needs_reference && reference.is_none() {
            return Err(Issue::bad(at, format!("the {} check needs a \"reference\"", check.name())));
        }
        if matches!(check, Check::Numeric { .. }) && reference.as_deref().and_then(first_number).is_none() {
            return Err(Issue::bad(obj.path_of("reference"), "the numeric check needs a number in the reference"));
        }
        if matches!(check, Check::CiteSources) && sources.is_empty() {
            return Err(Issue::bad(at, "the cite_sources check needs a non-empty \"sources\" list"));
        }
    }
    Ok(EvalItem { id, prompt, reference, kind, segment, checks, attack, sources })
}

fn parse_prompt(v: &Json, path: Vec<Seg>) -> Result<Prompt, Issue> {
    match v {
        Json::String(s) if s.trim().is_empty() => Err(Issue::bad(path, "must not be empty")),
        Json::String(s) => Ok(Prompt::Text(s.clone())),
        Json::Array(list) if list.is_empty() => Err(Issue::bad(path, "expected a non-empty list of messages")),
        Json::Array(list) => {
            let mut messages = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let obj = Obj::new(m, index(&path, i), "a message object with \"role\" and \"content\"")?;
                obj.deny_unknown(&["role", "content"])?;
                messages.push(Message { role: obj.req_str("role")?, content: obj.req_str("content")? });
            }
            Ok(Prompt::Messages(messages))
        }
        _ => Err(Issue::bad(path, "expected a string or a list of messages")),
    }
}

fn parse_segment(v: &Json, path: Vec<Seg>) -> Result<Segment, Issue> {
    let obj = Obj::new(v, path, "an object with \"language\", \"domain\" and \"intent\"")?;
    obj.deny_unknown(&["language", "domain", "intent"])?;
    Ok(Segment { language: obj.req_str("language")?, domain: obj.req_str("domain")?, intent: obj.req_str("intent")? })
}
