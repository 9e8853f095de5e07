//! The labels file the labeling pane appends to, read incrementally and resolved into the
//! preference pairs that may train.
//!
//! Record kinds (one JSON object per line, appended, never rewritten):
//! - a preference label: TRL's `{"prompt", "chosen", "rejected"}` plus `id`, and optionally
//!   `item` (what was labeled; default: the prompt and the two responses, order-independent),
//!   `labeler`, `source`, `ts`, `order`;
//! - a thumbs label on one response: TRL's unpaired `{"prompt", "completion", "label": true|false}`
//!   plus `id`, and optionally `item` (default: the prompt and the response), `labeler`, `ts`
//!   (`"kind": "thumbs"` may be written but is implied by `label`); KTO trains on them;
//! - `{"id", "kind": "tie" | "skip", "item"?}`: judged, but nothing to train on;
//! - `{"id", "kind": "eval_pairwise", "item", ...}`: a blind candidate-vs-baseline judgement of
//!   an eval item, read by `eval::read_pairwise_labels`; never trains;
//! - any record with `"supersedes": "<id>"` retracts that earlier record (`"kind": "undo"` records
//!   carry nothing else).
//!
//! Resolution: retracted records are ignored; per item, the live labels must agree: two labelers
//! preferring different responses, or a tie against a preference, hold the item back from
//! training until a superseding record resolves it. Items with agreeing labels train once.
//! Thumbs resolve the same way among themselves ([`LabelLog::resolve_thumbs`]): an item's live
//! thumbs must all point the same way; pairs and thumbs never share an item (their keys differ).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::error::DataError;
use super::jsonl::Line;
use super::records::{parse_preference_line, parse_thumbs_line, PreferenceRecord, Text, ThumbsRecord};
use crate::located::Unreadable;

/// What one label record says.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Prefer(Box<PreferenceRecord>),
    Thumbs(Box<ThumbsRecord>),
    Tie,
    Skip,
    Undo,
}

#[derive(Debug, Clone)]
struct LabelRecord {
    id: String,
    item: String,
    labeler: Option<String>,
    supersedes: Option<String>,
    verdict: Verdict,
}

/// A problem with one line of the labels file (reported, then the line is ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelProblem {
    /// `path:line:col: field: message`.
    pub message: String,
}

/// The outcome of reading new lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelUpdate {
    /// Complete lines read this time.
    pub lines: usize,
    /// Byte offset reached (everything before it has been read).
    pub offset: u64,
    /// Lines that could not be used, with their location.
    pub problems: Vec<LabelProblem>,
}

/// Reads a growing labels file from a byte offset and keeps the resolution state.
#[derive(Debug, Clone)]
pub struct LabelLog {
    path: PathBuf,
    offset: u64,
    line_number: usize,
    records: Vec<LabelRecord>,
}

/// A canonical JSON text of `t`: equal texts give equal keys.
pub fn text_key(t: &Text) -> String {
    serde_json::to_string(&match t {
        Text::Plain(s) => Json::String(s.clone()),
        Text::Messages(m) => serde_json::to_value(m).unwrap_or(Json::Null),
    })
    .unwrap_or_default()
}

fn default_item(rec: &PreferenceRecord) -> String {
    pair_hash(&rec.prompt, &rec.chosen, &rec.rejected)
}

/// The item key of a prompt and two responses, independent of the responses' order: what a
/// preference record without an `item` field is filed under, and what the labeling pane writes
/// as `item` and `pair_hash`.
pub fn pair_hash(prompt: &Text, one: &Text, other: &Text) -> String {
    let (a, b) = (text_key(one), text_key(other));
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    for part in [text_key(prompt), first, second] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    crate::hex::encode(&h.finalize()[..12])
}

/// The item key of a thumbs label on `completion` to `prompt`: what a thumbs record without an
/// `item` field is filed under (tagged, so it never equals a pair's key).
pub fn thumbs_hash(prompt: &Text, completion: &Text) -> String {
    let mut h = Sha256::new();
    for part in ["thumbs".to_string(), text_key(prompt), text_key(completion)] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    crate::hex::encode(&h.finalize()[..12])
}

impl LabelLog {
    /// A log of `path`, nothing read yet.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), offset: 0, line_number: 0, records: Vec::new() }
    }

    /// Byte offset read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads complete lines appended since the last call, up to `limit` bytes into the file when
    /// given (a resume replays admissions at the offsets the first run reached). A missing file
    /// reads as empty; a torn last line waits for its newline.
    pub fn read_new(&mut self, limit: Option<u64>) -> Result<LabelUpdate, DataError> {
        let mut update = LabelUpdate { offset: self.offset, ..LabelUpdate::default() };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(update),
            Err(source) => return Err(Unreadable::at(&self.path)(source).into()),
        };
        let io = Unreadable::at(&self.path);
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if let Some(limit) = limit {
            bytes.truncate(usize::try_from(limit.saturating_sub(self.offset)).unwrap_or(usize::MAX));
        }
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else { return Ok(update) };
        // Everything up to the last '\n' is complete; splitting it without that final newline
        // yields exactly its lines.
        for raw in bytes[..end].split(|&b| b == b'\n') {
            self.line_number += 1;
            self.offset += raw.len() as u64 + 1;
            update.lines += 1;
            let text = String::from_utf8_lossy(raw).trim_end_matches('\r').to_string();
            if text.trim().is_empty() {
                continue;
            }
            match self.parse(&text) {
                Ok(rec) => self.records.push(rec),
                Err(message) => update.problems.push(LabelProblem { message }),
            }
        }
        update.offset = self.offset;
        Ok(update)
    }

    fn parse(&self, text: &str) -> Result<LabelRecord, String> {
        let at = |col: usize, field: &str, msg: &str| {
            format!("{}:{}:{col}: {field}: {msg}", self.path.display(), self.line_number)
        };
        let value: Json = serde_json::from_str(text).map_err(|e| at(e.column(), "line", &e.to_string()))?;
        let obj = value.as_object().ok_or_else(|| at(1, "line", "expected a JSON object"))?;
        let id =
            obj.get("id").and_then(Json::as_str).ok_or_else(|| at(1, "id", "missing or not a string"))?.to_string();
        let supersedes = match obj.get("supersedes") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(at(1, "supersedes", "expected the id of an earlier record")),
        };
        let implied = if obj.contains_key("label") && obj.contains_key("completion") { "thumbs" } else { "preference" };
        let kind = obj.get("kind").and_then(Json::as_str).unwrap_or(implied);
        let item = obj.get("item").and_then(Json::as_str).map(String::from);
        let labeler = obj.get("labeler").and_then(Json::as_str).map(String::from);
        let verdict = match kind {
            "tie" => Verdict::Tie,
            // A blind pairwise judgement of an eval item (the eval module reads it): never trains.
            "skip" | "eval_pairwise" => Verdict::Skip,
            "undo" if supersedes.is_some() => Verdict::Undo,
            "undo" => return Err(at(1, "supersedes", "an undo record must name the record it retracts")),
            "preference" => {
                let line = Line { number: self.line_number, text: text.to_string(), value: value.clone() };
                let rec = parse_preference_line(&self.path, &line).map_err(|e| e.to_string())?;
                Verdict::Prefer(Box::new(rec))
            }
            "thumbs" => {
                let line = Line { number: self.line_number, text: text.to_string(), value: value.clone() };
                let rec = parse_thumbs_line(&self.path, &line).map_err(|e| e.to_string())?;
                Verdict::Thumbs(Box::new(rec))
            }
            other => {
                return Err(at(
                    1,
                    "kind",
                    &format!("unknown kind {other:?} (preference, thumbs, tie, skip, undo, eval_pairwise)"),
                ))
            }
        };
        let item = match (&verdict, item) {
            (_, Some(item)) => item,
            (Verdict::Prefer(rec), None) => default_item(rec),
            (Verdict::Thumbs(rec), None) => thumbs_hash(&rec.prompt, &rec.completion),
            (Verdict::Undo, None) => String::new(),
            (_, None) => return Err(at(1, "item", "a tie or skip must name the item it judged")),
        };
        Ok(LabelRecord { id, item, labeler, supersedes, verdict })
    }

    /// The pairs that may train now, keyed by item, in order of first appearance; and the items
    /// held back because their labels disagree.
    pub fn resolve(&self) -> (Vec<(String, PreferenceRecord)>, Vec<String>) {
        let retracted: HashSet<&str> = self.records.iter().filter_map(|r| r.supersedes.as_deref()).collect();
        let mut order: Vec<&str> = Vec::new();
        let mut by_item: HashMap<&str, Vec<&LabelRecord>> = HashMap::new();
        for r in &self.records {
            if retracted.contains(r.id.as_str()) || r.verdict == Verdict::Undo {
                continue;
            }
            if !by_item.contains_key(r.item.as_str()) {
                order.push(&r.item);
            }
            by_item.entry(&r.item).or_default().push(r);
        }
        let mut admitted = Vec::new();
        let mut held = Vec::new();
        for item in order {
            let labels: Vec<&&LabelRecord> = by_item[item].iter().filter(|r| r.verdict != Verdict::Skip).collect();
            let mut chosen_keys: BTreeMap<String, &PreferenceRecord> = BTreeMap::new();
            let mut ties = 0;
            for r in &labels {
                match &r.verdict {
                    Verdict::Prefer(rec) => {
                        chosen_keys.entry(text_key(&rec.chosen)).or_insert(rec);
                    }
                    Verdict::Tie => ties += 1,
                    _ => {}
                }
            }
            match (chosen_keys.len(), ties) {
                (0, _) => {}
                (1, 0) => {
                    let rec = chosen_keys.into_values().next().expect("one entry checked above");
                    admitted.push((item.to_string(), rec.clone()));
                }
                _ => held.push(item.to_string()),
            }
        }
        (admitted, held)
    }
}

impl LabelLog {
    /// The thumbs labels that may train now, keyed by item, in order of first appearance; and
    /// the items held back because their live thumbs disagree (one up, one down) until a
    /// superseding record resolves them. Undone and superseded records do not count.
    pub fn resolve_thumbs(&self) -> (Vec<(String, ThumbsRecord)>, Vec<String>) {
        let retracted: HashSet<&str> = self.records.iter().filter_map(|r| r.supersedes.as_deref()).collect();
        let mut order: Vec<&str> = Vec::new();
        let mut by_item: HashMap<&str, Vec<&ThumbsRecord>> = HashMap::new();
        for r in &self.records {
            let Verdict::Thumbs(rec) = &r.verdict else { continue };
            if retracted.contains(r.id.as_str()) {
                continue;
            }
            if !by_item.contains_key(r.item.as_str()) {
                order.push(&r.item);
            }
            by_item.entry(&r.item).or_default().push(rec);
        }
        let mut admitted = Vec::new();
        let mut held = Vec::new();
        for item in order {
            let labels = &by_item[item];
            if labels.iter().all(|r| r.label == labels[0].label) {
                admitted.push((item.to_string(), labels[0].clone()));
            } else {
                held.push(item.to_string());
            }
        }
        (admitted, held)
    }

    /// Every live judgement (not retracted, not an undo, not a skip) in file order: the item,
    /// who judged it, and what they decided (the chosen text's key, or `tie`). The input of
    /// [`crate::data::label_store::agreement`].
    pub fn judgements(&self) -> Vec<Judged> {
        let retracted: HashSet<&str> = self.records.iter().filter_map(|r| r.supersedes.as_deref()).collect();
        self.records
            .iter()
            .filter(|r| !retracted.contains(r.id.as_str()))
            .filter_map(|r| {
                let decision = match &r.verdict {
                    Verdict::Prefer(rec) => Decision::Chose(text_key(&rec.chosen)),
                    Verdict::Tie => Decision::Tie,
                    Verdict::Thumbs(rec) => Decision::Thumbs(rec.label),
                    Verdict::Skip | Verdict::Undo => return None,
                };
                let labeler = r.labeler.clone().unwrap_or_else(|| "?".to_string());
                Some(Judged { item: r.item.clone(), labeler, decision })
            })
            .collect()
    }

    /// The ids of every record read so far, in file order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.records.iter().map(|r| r.id.as_str())
    }
}

/// What one labeler decided about one item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    /// This response (by [`text_key`]) is better.
    Chose(String),
    /// Neither is better.
    Tie,
    /// Thumbs up (`true`) or down on a single response.
    Thumbs(bool),
}

/// One live judgement of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The item judged.
    pub item: String,
    /// Who judged it (`?` when the record names nobody).
    pub labeler: String,
    /// What they decided.
    pub decision: Decision,
}

/// The lower-case hex SHA-256 of the first `len` bytes of a file (a missing file hashes as empty
/// when `len` is 0). A resume compares it with the hash saved when those bytes were consumed, so
/// an edited label prefix is refused instead of silently changing what was trained.
pub fn prefix_sha256(path: &Path, len: u64) -> Result<String, DataError> {
    let mut h = Sha256::new();
    if len > 0 {
        let file = std::fs::File::open(path).map_err(Unreadable::at(path))?;
        let mut prefix = Vec::new();
        file.take(len).read_to_end(&mut prefix).map_err(Unreadable::at(path))?;
        if (prefix.len() as u64) < len {
            return Ok(format!("short:{}", prefix.len()));
        }
        h.update(&prefix);
    }
    Ok(crate::hex::encode(&h.finalize()))
}
