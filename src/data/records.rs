//! Typed dataset records in TRL's JSONL formats: SFT (`messages`, or `prompt` +
//! `completion`), preferences (`prompt`/`chosen`/`rejected`, with TRL's implicit-prompt
//! extraction) and safety pairs (`prompt`/`unsafe`/`safe`), plus format detection.
//!
//! Readers stop at the first bad line and report it as `path:line:column: field: message`
//! (column = 1-based character column of the offending value, or of the enclosing object
//! when a field is missing). No line is ever skipped silently; blank lines are allowed.

use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::data::error::DataError;
use crate::data::jsonl::{key, read_jsonl, Issue, Line, Seg};
use crate::data::template::Message;
use crate::located::Located;

/// A field that TRL allows to be either plain text or a list of chat messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// A plain string.
    Plain(String),
    /// A conversation fragment.
    Messages(Vec<Message>),
}

impl Text {
    /// True for [`Text::Messages`].
    pub fn is_conversational(&self) -> bool {
        matches!(self, Text::Messages(_))
    }
}

/// One SFT example.
#[derive(Debug, Clone, PartialEq)]
pub enum SftRecord {
    /// `{"messages": [...]}`: a whole conversation (trained on assistant turns).
    Messages(Vec<Message>),
    /// `{"prompt": ..., "completion": ...}`: both strings or both message lists.
    PromptCompletion {
        /// The prompt.
        prompt: Text,
        /// The completion (the tokens trained on).
        completion: Text,
    },
}

/// One preference pair (DPO/IPO). All three fields are of the same kind.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRecord {
    /// The shared prompt (extracted from `chosen`/`rejected` when the record has none).
    pub prompt: Text,
    /// The preferred completion.
    pub chosen: Text,
    /// The dispreferred completion.
    pub rejected: Text,
    /// Other top-level keys of the record.
    pub extra: Map<String, Json>,
}

/// One safety example: a prompt, an unsafe completion to unlearn and optionally a safe one.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyRecord {
    /// The prompt.
    pub prompt: Text,
    /// The unsafe completion (JSON key `unsafe`).
    pub unsafe_: Text,
    /// The safe completion, if given (JSON key `safe`; null means absent).
    pub safe: Option<Text>,
    /// Other top-level keys of the record.
    pub extra: Map<String, Json>,
}

/// One unpaired judgement of a single response: TRL's unpaired preference format
/// `{"prompt", "completion", "label": true|false}` (thumbs up or down; KTO's data), plus any other
/// keys a labeler writes (`id`, `labeler`, `ts`). `prompt` and `completion` are of the same kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ThumbsRecord {
    /// The prompt.
    pub prompt: Text,
    /// The judged response.
    pub completion: Text,
    /// Thumbs up (`true`: desirable) or down.
    pub label: bool,
    /// Other top-level keys of the record.
    pub extra: Map<String, Json>,
}

/// The dataset format, detected from a record's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `messages`, or `prompt` + `completion`.
    Sft,
    /// `chosen` + `rejected` (optionally `prompt`).
    Preference,
    /// `prompt` + `unsafe` (optionally `safe`).
    Safety,
}

impl RecordKind {
    /// Detects the format from the keys of one record; `None` when no format matches.
    pub fn detect(record: &Json) -> Option<Self> {
        let obj = record.as_object()?;
        if obj.contains_key("chosen") && obj.contains_key("rejected") {
            Some(RecordKind::Preference)
        } else if obj.contains_key("prompt") && obj.contains_key("unsafe") {
            Some(RecordKind::Safety)
        } else if obj.contains_key("messages") || (obj.contains_key("prompt") && obj.contains_key("completion")) {
            Some(RecordKind::Sft)
        } else {
            None
        }
    }
}

/// All records of a file, of the detected kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Records {
    /// SFT records.
    Sft(Vec<SftRecord>),
    /// Preference records.
    Preference(Vec<PreferenceRecord>),
    /// Safety records.
    Safety(Vec<SafetyRecord>),
}

fn bad(path: Vec<Seg>, message: impl Into<String>) -> Issue {
    Issue::bad(path, message)
}

fn to_error(path: &Path, line: &Line, issue: Issue) -> DataError {
    DataError::Located(issue.located(path, line))
}

fn object<'a>(v: &'a Json, path: &[Seg], what: &str) -> Result<&'a Map<String, Json>, Issue> {
    v.as_object().ok_or_else(|| bad(path.to_vec(), format!("expected {what}")))
}

fn parse_message(v: &Json, path: &[Seg]) -> Result<Message, Issue> {
    let obj = object(v, path, "a message object with \"role\" and \"content\"")?;
    let role = match obj.get("role") {
        None => return Err(Issue::missing(path, "role")),
        Some(Json::String(s)) => s.clone(),
        Some(_) => return Err(bad(key(path, "role"), "expected a string")),
    };
    let content = match obj.get("content") {
        Some(Json::String(s)) => s.clone(),
        None | Some(Json::Null) if obj.contains_key("tool_calls") => String::new(),
        None => return Err(Issue::missing(path, "content")),
        Some(Json::Array(_)) => {
            return Err(bad(key(path, "content"), "expected a string (lists of content parts are not supported)"))
        }
        Some(_) => return Err(bad(key(path, "content"), "expected a string")),
    };
    let extra = obj
        .iter()
        .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "content")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Message { role, content, extra })
}

fn parse_messages(v: &Json, path: &[Seg]) -> Result<Vec<Message>, Issue> {
    let items = v.as_array().ok_or_else(|| bad(path.to_vec(), "expected a list of messages"))?;
    if items.is_empty() {
        return Err(bad(path.to_vec(), "expected a non-empty list of messages"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut p = path.to_vec();
            p.push(Seg::Index(i));
            parse_message(m, &p)
        })
        .collect()
}

fn parse_text(obj: &Map<String, Json>, k: &str) -> Result<Text, Issue> {
    let path = vec![Seg::Key(k.to_string())];
    match obj.get(k) {
        None => Err(Issue::missing(&[], k)),
        Some(Json::String(s)) => Ok(Text::Plain(s.clone())),
        Some(v @ Json::Array(_)) => Ok(Text::Messages(parse_messages(v, &path)?)),
        Some(_) => Err(bad(path, "expected a string or a list of messages")),
    }
}

/// Errors unless `text` has the same kind (plain / messages) as `like`.
fn same_kind(text: &Text, k: &str, like: &Text, like_key: &str) -> Result<(), Issue> {
    if text.is_conversational() == like.is_conversational() {
        return Ok(());
    }
    let want = if like.is_conversational() { "a list of messages" } else { "a string" };
    Err(bad(vec![Seg::Key(k.to_string())], format!("expected {want} like `{like_key}`")))
}

fn extra_keys(obj: &Map<String, Json>, known: &[&str]) -> Map<String, Json> {
    obj.iter().filter(|(k, _)| !known.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Parses one SFT record (see [`read_sft`] for the rules).
fn parse_sft(v: &Json) -> Result<SftRecord, Issue> {
    let obj = object(v, &[], "a JSON object")?;
    if let Some(m) = obj.get("messages") {
        let path = vec![Seg::Key("messages".into())];
        let messages = parse_messages(m, &path)?;
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(bad(path, "no assistant message to train on"));
        }
        return Ok(SftRecord::Messages(messages));
    }
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        if matches!(obj.get("label"), Some(Json::Bool(_))) {
            // A thumbs-down completion trained as an SFT target would teach the opposite of the label.
            return Err(bad(
                vec![Seg::Key("label".into())],
                "a thumbs up/down record (unpaired preference) is not SFT data; KTO trains on these",
            ));
        }
        let prompt = parse_text(obj, "prompt")?;
        let completion = parse_text(obj, "completion")?;
        same_kind(&completion, "completion", &prompt, "prompt")?;
        return Ok(SftRecord::PromptCompletion { prompt, completion });
    }
    if obj.contains_key("text") {
        return Err(bad(
            vec![Seg::Key("text".into())],
            "plain-text (language modelling) records are not supported; use `messages` or `prompt` + `completion`",
        ));
    }
    if obj.contains_key("conversations") {
        return Err(bad(
            vec![Seg::Key("conversations".into())],
            "ShareGPT-style `conversations` are not supported; use `messages` with role/content",
        ));
    }
    Err(Issue {
        field: vec![Seg::Key("messages".into())],
        at: vec![],
        message: "missing required field (an SFT record needs `messages`, or `prompt` and `completion`)".into(),
    })
}

/// TRL's `_extract_prompt`: the common prefix of chosen and rejected becomes the prompt.
/// Like TRL, when one is a prefix of the other the split is at `min_len - 1`, and for strings
/// a space right before the split moves into the completions.
fn extract_prompt<T: PartialEq + Clone>(
    chosen: &[T],
    rejected: &[T],
    is_space: impl Fn(&T) -> bool,
) -> Option<(Vec<T>, Vec<T>, Vec<T>)> {
    let n = chosen.len().min(rejected.len());
    if n == 0 {
        return None;
    }
    let mut idx = n - 1;
    if let Some(i) = (0..n).find(|&i| chosen[i] != rejected[i]) {
        idx = i;
        if idx > 0 && is_space(&chosen[idx - 1]) {
            idx -= 1;
        }
    }
    Some((chosen[..idx].to_vec(), chosen[idx..].to_vec(), rejected[idx..].to_vec()))
}

fn parse_preference(v: &Json) -> Result<PreferenceRecord, Issue> {
    let obj = object(v, &[], "a JSON object")?;
    let chosen = parse_text(obj, "chosen")?;
    let rejected = parse_text(obj, "rejected")?;
    same_kind(&rejected, "rejected", &chosen, "chosen")?;
    let extra = extra_keys(obj, &["prompt", "chosen", "rejected"]);
    if obj.contains_key("prompt") {
        let prompt = parse_text(obj, "prompt")?;
        same_kind(&prompt, "prompt", &chosen, "chosen")?;
        return Ok(PreferenceRecord { prompt, chosen, rejected, extra });
    }
    let empty = || bad(vec![Seg::Key("chosen".into())], "implicit prompt: `chosen` and `rejected` must not be empty");
    let (prompt, chosen, rejected) = match (chosen, rejected) {
        (Text::Messages(c), Text::Messages(r)) => {
            let (p, c, r) = extract_prompt(&c, &r, |_| false).ok_or_else(empty)?;
            (Text::Messages(p), Text::Messages(c), Text::Messages(r))
        }
        (Text::Plain(c), Text::Plain(r)) => {
            let (c, r): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let (p, c, r) = extract_prompt(&c, &r, |ch| *ch == ' ').ok_or_else(empty)?;
            let s = |v: Vec<char>| v.into_iter().collect::<String>();
            (Text::Plain(s(p)), Text::Plain(s(c)), Text::Plain(s(r)))
        }
        _ => unreachable!("same_kind checked that chosen and rejected are of the same kind"),
    };
    Ok(PreferenceRecord { prompt, chosen, rejected, extra })
}

fn parse_safety(v: &Json) -> Result<SafetyRecord, Issue> {
    let obj = object(v, &[], "a JSON object")?;
    let prompt = parse_text(obj, "prompt")?;
    let unsafe_ = parse_text(obj, "unsafe")?;
    same_kind(&unsafe_, "unsafe", &prompt, "prompt")?;
    let safe = match obj.get("safe") {
        None | Some(Json::Null) => None,
        Some(_) => {
            let safe = parse_text(obj, "safe")?;
            same_kind(&safe, "safe", &prompt, "prompt")?;
            Some(safe)
        }
    };
    let extra = extra_keys(obj, &["prompt", "unsafe", "safe"]);
    Ok(SafetyRecord { prompt, unsafe_, safe, extra })
}

fn read_with<T>(path: &Path, parse: fn(&Json) -> Result<T, Issue>) -> Result<Vec<T>, DataError> {
    Ok(read_with_lines(path, parse)?.into_iter().map(|(_, record)| record).collect())
}

fn read_with_lines<T>(path: &Path, parse: fn(&Json) -> Result<T, Issue>) -> Result<Vec<(usize, T)>, DataError> {
    read_jsonl(path)?
        .iter()
        .map(|line| parse(&line.value).map(|r| (line.number, r)).map_err(|issue| to_error(path, line, issue)))
        .collect()
}

/// Parses one already-read JSONL line as a preference record (for readers that tail a growing
/// file, like the trainer's labels reader); errors are located at `path:line:col`.
pub fn parse_preference_line(path: &Path, line: &Line) -> Result<PreferenceRecord, DataError> {
    parse_preference(&line.value).map_err(|issue| to_error(path, line, issue))
}

/// Parses one thumbs record already read as a JSONL line, with located errors.
pub fn parse_thumbs_line(path: &Path, line: &Line) -> Result<ThumbsRecord, DataError> {
    parse_thumbs(&line.value).map_err(|issue| to_error(path, line, issue))
}

/// Reads SFT records. `messages` must be a non-empty list of `{role: str, content: str, ...}`
/// (content may be null/absent only when the message has `tool_calls`) with at least one
/// `assistant` turn; `prompt`/`completion` must both be strings or both message lists.
/// Unknown roles are allowed.
pub fn read_sft(path: &Path) -> Result<Vec<SftRecord>, DataError> {
    read_with(path, parse_sft)
}

/// Reads preference records (`chosen`/`rejected` required; `prompt` optional, extracted as
/// TRL does when absent).
pub fn read_preferences(path: &Path) -> Result<Vec<PreferenceRecord>, DataError> {
    read_with(path, parse_preference)
}

/// Reads safety records (`prompt` and `unsafe` required, `safe` optional).
pub fn read_safety(path: &Path) -> Result<Vec<SafetyRecord>, DataError> {
    read_with(path, parse_safety)
}

/// Reads plain-text records `{"text": "..."}` for language modelling (pretraining or continued
/// pretraining), each with its 1-based line number. `text` must be a non-empty string; other keys
/// (ids, sources) are allowed and ignored.
pub fn read_text_records(path: &Path) -> Result<Vec<(usize, String)>, DataError> {
    read_with_lines(path, parse_text_record)
}

fn parse_text_record(v: &Json) -> Result<String, Issue> {
    let obj = object(v, &[], "a JSON object with \"text\"")?;
    match obj.get("text") {
        None => Err(Issue::missing(&[], "text")),
        Some(Json::String(s)) if s.is_empty() => Err(bad(vec![Seg::Key("text".into())], "empty text")),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(vec![Seg::Key("text".into())], "expected a string")),
    }
}

fn parse_thumbs(v: &Json) -> Result<ThumbsRecord, Issue> {
    let obj = object(v, &[], "a JSON object with \"prompt\", \"completion\" and \"label\"")?;
    let prompt = parse_text(obj, "prompt")?;
    let completion = parse_text(obj, "completion")?;
    same_kind(&completion, "completion", &prompt, "prompt")?;
    let label = match obj.get("label") {
        None => return Err(Issue::missing(&[], "label")),
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err(bad(vec![Seg::Key("label".into())], "expected true (thumbs up) or false (thumbs down)")),
    };
    let extra = extra_keys(obj, &["prompt", "completion", "label"]);
    Ok(ThumbsRecord { prompt, completion, label, extra })
}

/// Reads thumbs up/down records (`prompt`, `completion`, boolean `label`), each with its 1-based
/// line number.
pub fn read_thumbs(path: &Path) -> Result<Vec<(usize, ThumbsRecord)>, DataError> {
    read_with_lines(path, parse_thumbs)
}

/// Reads thumbs records for KTO, which needs both labels: a file of only thumbs up (or only
/// down) is an error located at the first record's `label`.
pub fn read_thumbs_for_kto(path: &Path) -> Result<Vec<(usize, ThumbsRecord)>, DataError> {
    let lines = read_jsonl(path)?;
    let records: Vec<(usize, ThumbsRecord)> = lines
        .iter()
        .map(|line| parse_thumbs(&line.value).map(|r| (line.number, r)).map_err(|issue| to_error(path, line, issue)))
        .collect::<Result<_, _>>()?;
    let ups = records.iter().filter(|(_, r)| r.label).count();
    if let (Some(first), true) = (lines.first(), ups == 0 || ups == records.len()) {
        let (have, lacks) = if ups == 0 { ("down (false)", "up (true)") } else { ("up (true)", "down (false)") };
        let message = format!("every record is a thumbs {have}: KTO needs thumbs {lacks} too");
        return Err(to_error(path, first, bad(vec![Seg::Key("label".into())], message)));
    }
    if lines.is_empty() {
        return Err(DataError::Located(Located::new(path, 1, 1, "the file has no records")));
    }
    Ok(records)
}

/// Detects the kind of a file from its first record.
pub fn detect_kind(path: &Path) -> Result<RecordKind, DataError> {
    let lines = read_jsonl(path)?;
    let first = lines.first().ok_or_else(|| DataError::Located(Located::new(path, 1, 1, "the file has no records")))?;
    RecordKind::detect(&first.value).ok_or_else(|| {
        DataError::Located(Located::new(
            path,
            first.number,
            1,
            "unknown record format: expected `messages`, `prompt` + `completion`, \
             `chosen` + `rejected`, or `prompt` + `unsafe`",
        ))
    })
}

/// Like [`read_records`], also returning each record's 1-based line number, so later errors
/// (tokenization, templates) can still point at `path:line`.
pub fn read_records_with_lines(path: &Path) -> Result<(Records, Vec<usize>), DataError> {
    fn split<T>(v: Vec<(usize, T)>) -> (Vec<T>, Vec<usize>) {
        let lines = v.iter().map(|(n, _)| *n).collect();
        (v.into_iter().map(|(_, r)| r).collect(), lines)
    }
    Ok(match detect_kind(path)? {
        RecordKind::Sft => {
            let (r, l) = split(read_with_lines(path, parse_sft)?);
            (Records::Sft(r), l)
        }
        RecordKind::Preference => {
            let (r, l) = split(read_with_lines(path, parse_preference)?);
            (Records::Preference(r), l)
        }
        RecordKind::Safety => {
            let (r, l) = split(read_with_lines(path, parse_safety)?);
            (Records::Safety(r), l)
        }
    })
}

/// Detects the kind of a file from its first record and reads all records as that kind.
pub fn read_records(path: &Path) -> Result<Records, DataError> {
    Ok(match detect_kind(path)? {
        RecordKind::Sft => Records::Sft(read_sft(path)?),
        RecordKind::Preference => Records::Preference(read_preferences(path)?),
        RecordKind::Safety => Records::Safety(read_safety(path)?),
    })
}
