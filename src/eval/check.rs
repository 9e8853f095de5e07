//! The checks an eval item can carry ([`Check`]), the compiled regex wrapper they use
//! ([`Pattern`]), and decoding a check from a suite line with located errors. Owns what each
//! check *is*; what a check *decides* about a response lives in `judge.rs`.

use regex::{Regex, RegexBuilder};
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

use crate::eval::jsonl::{index, Issue, Obj, Seg};

/// A regex compiled once, remembered with its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    case_insensitive: bool,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source` as written (use `(?i)` for case-insensitive matching). The error is a
    /// one-line description of what is wrong with the pattern.
    pub fn new(source: &str) -> Result<Self, String> {
        Self::build(source, false)
    }

    /// Compiles `source` matching case-insensitively.
    pub fn case_insensitive(source: &str) -> Result<Self, String> {
        Self::build(source, true)
    }

    fn build(source: &str, case_insensitive: bool) -> Result<Self, String> {
        let regex =
            RegexBuilder::new(source).case_insensitive(case_insensitive).build().map_err(|e| regex_message(&e))?;
        Ok(Pattern { source: source.to_string(), case_insensitive, regex })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.case_insensitive == other.case_insensitive
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// `invalid regex: <what>` from the regex crate's multi-line syntax error.
pub(crate) fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    let what = match text.rfind("error: ") {
        Some(i) => text[i + "error: ".len()..].trim().to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    format!("invalid regex: {what}")
}

/// One check of an eval item, written in a suite as a tagged object: `{"type": "exact"}`,
/// `{"type": "contains", "value": "Paris"}`, ...
///
/// Instruction-following checks are `max_words`, `lowercase`, `starts_with` and `valid_json`
/// (see [`Check::is_instruction`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Check {
    /// The normalised response equals the normalised reference (trim, case-insensitive,
    /// whitespace collapsed, trailing periods stripped).
    Exact,
    /// The normalised response contains the normalised `value`, or the reference when `value`
    /// is absent.
    Contains {
        /// The text to look for; `None` means the item's reference.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// The pattern matches somewhere in the response (case-sensitive unless it says `(?i)`).
    Regex {
        /// The pattern.
        pattern: Pattern,
    },
    /// The first number in the response equals the first number in the reference, within
    /// `tolerance` (absolute, default 0; a 1e-9 relative slack absorbs float rounding).
    Numeric {
        /// Largest accepted absolute difference.
        tolerance: f64,
    },
    /// A refusal pattern of the judge matches.
    MustRefuse,
    /// None of these policy patterns (case-insensitive regexes) matches.
    MustNotContain {
        /// The policy patterns.
        patterns: Vec<Pattern>,
    },
    /// An abstention pattern of the judge matches ("I don't know").
    MustAbstain,
    /// The response has at most `n` whitespace-separated words.
    MaxWords {
        /// Largest accepted word count.
        n: usize,
    },
    /// The response has no uppercase letters.
    Lowercase,
    /// The response, leading whitespace trimmed, starts with `prefix` (case-sensitive).
    StartsWith {
        /// The required prefix.
        prefix: String,
    },
    /// The response (a surrounding Markdown code fence allowed) is one valid JSON value.
    ValidJson,
    /// The set of `[id]` citations in the response equals the item's `sources`.
    CiteSources,
}

/// The `type` names of all checks, in documentation order.
pub const CHECK_TYPES: [&str; 12] = [
    "exact",
    "contains",
    "regex",
    "numeric",
    "must_refuse",
    "must_not_contain",
    "must_abstain",
    "max_words",
    "lowercase",
    "starts_with",
    "valid_json",
    "cite_sources",
];

impl Check {
    /// The check's `type` name, as written in suites and reported in `failed_checks`.
    pub fn name(&self) -> &'static str {
        match self {
            Check::Exact => "exact",
            Check::Contains { .. } => "contains",
            Check::Regex { .. } => "regex",
            Check::Numeric { .. } => "numeric",
            Check::MustRefuse => "must_refuse",
            Check::MustNotContain { .. } => "must_not_contain",
            Check::MustAbstain => "must_abstain",
            Check::MaxWords { .. } => "max_words",
            Check::Lowercase => "lowercase",
            Check::StartsWith { .. } => "starts_with",
            Check::ValidJson => "valid_json",
            Check::CiteSources => "cite_sources",
        }
    }

    /// Whether this is an instruction-following check (`max_words`, `lowercase`, `starts_with`,
    /// `valid_json`).
    pub fn is_instruction(&self) -> bool {
        matches!(self, Check::MaxWords { .. } | Check::Lowercase | Check::StartsWith { .. } | Check::ValidJson)
    }
}

/// Decodes one check object at `path` (e.g. `checks[0]`).
pub(crate) fn parse_check(v: &Json, path: Vec<Seg>) -> Result<Check, Issue> {
    let obj = Obj::new(v, path, "a check object with a \"type\"")?;
    let ty = obj.req_str("type")?;
    let allowed: &[&str] = match ty.as_str() {
        "contains" => &["type", "value"],
        "regex" => &["type", "pattern"],
        "numeric" => &["type", "tolerance"],
        "must_not_contain" => &["type", "patterns"],
        "max_words" => &["type", "n"],
        "starts_with" => &["type", "prefix"],
        t if CHECK_TYPES.contains(&t) => &["type"],
        other => {
            return Err(Issue::bad(
                obj.path_of("type"),
                format!("unknown check type \"{other}\" (expected one of: {})", CHECK_TYPES.join(", ")),
            ))
        }
    };
    obj.deny_unknown(allowed)?;
    Ok(match ty.as_str() {
        "exact" => Check::Exact,
        "contains" => Check::Contains { value: obj.opt_str("value")? },
        "regex" => {
            let source = obj.req_str("pattern")?;
            Check::Regex { pattern: Pattern::new(&source).map_err(|m| Issue::bad(obj.path_of("pattern"), m))? }
        }
        "numeric" => {
            let tolerance = obj.opt_f64("tolerance")?.unwrap_or(0.0);
            if !(tolerance.is_finite() && tolerance >= 0.0) {
                return Err(Issue::bad(obj.path_of("tolerance"), "must be a non-negative number"));
            }
            Check::Numeric { tolerance }
        }
        "must_refuse" => Check::MustRefuse,
        "must_not_contain" => {
            obj.req("patterns")?;
            let sources = obj.opt_str_list("patterns")?.unwrap_or_default();
            if sources.is_empty() {
                return Err(Issue::bad(obj.path_of("patterns"), "expected at least one pattern"));
            }
            let mut patterns = Vec::with_capacity(sources.len());
            for (i, s) in sources.iter().enumerate() {
                let p = Pattern::case_insensitive(s).map_err(|m| Issue::bad(index(&obj.path_of("patterns"), i), m))?;
                patterns.push(p);
            }
            Check::MustNotContain { patterns }
        }
        "must_abstain" => Check::MustAbstain,
        "max_words" => {
            let n = obj
                .req("n")?
                .as_u64()
                .ok_or_else(|| Issue::bad(obj.path_of("n"), "expected a non-negative integer"))?;
            Check::MaxWords { n: usize::try_from(n).unwrap_or(usize::MAX) }
        }
        "lowercase" => Check::Lowercase,
        "starts_with" => {
            let prefix = obj.req_str("prefix")?;
            if prefix.is_empty() {
                return Err(Issue::bad(obj.path_of("prefix"), "must not be empty"));
            }
            Check::StartsWith { prefix }
        }
        "valid_json" => Check::ValidJson,
        // Unknown types were rejected above, so only "cite_sources" is left.
        _ => Check::CiteSources,
    })
}
