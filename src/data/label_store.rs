//! The writing side of the labels file, the candidates the labeling pane serves, and agreement
//! between labelers.
//!
//! - [`LabelWriter::append`] adds one record as one JSON line under an exclusive `flock` on the
//!   file and fsyncs it before returning, so several labelers (threads or processes) may append
//!   to the same file at once and a label reported as saved survives a crash. A writer killed in
//!   the middle of a line can leave a torn last line; the next append first ends it with a
//!   newline, so the fragment becomes one bad line that [`crate::data::labels::LabelLog`]
//!   reports and skips, and never swallows the next record.
//! - [`LabelDraft`] builds the records [`crate::data::labels`] resolves: TRL's
//!   `prompt`/`chosen`/`rejected` plus `id`, `item` (= `pair_hash`), `source`, `labeler`, `ts` and
//!   the shown `order`; ties and skips are records of their own kind; an undo supersedes.
//! - [`read_candidates`]: `{"prompt": string or messages, "responses": [≥ 2], "source"?, "step"?}`
//!   per line, with `path:line:col: field: message` errors.
//! - [`agreement`] and [`cohen_kappa`]: pure functions over live judgements.
//!
//! Never reads the labels file for training (that is [`crate::data::labels`]), never draws.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde_json::{json, Map, Value as Json};

use super::error::DataError;
use super::jsonl::{byte_to_column, field_path, locate, read_jsonl, Line, Seg};
use super::labels::{pair_hash, Decision, Judged};
use super::records::Text;
use super::template::Message;
use crate::located::{Located, Unreadable};

/// Appends label records to one labels file.
#[derive(Debug, Clone)]
pub struct LabelWriter {
    path: PathBuf,
}

impl LabelWriter {
    /// A writer for `path` (created on the first append).
    pub fn new(path: &Path) -> LabelWriter {
        LabelWriter { path: path.to_path_buf() }
    }

    /// The labels file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line and returns once it is on disk (fsynced). Holds an exclusive
    /// lock on the file while writing, so concurrent appends never interleave.
    pub fn append(&self, record: &Json) -> Result<(), DataError> {
        let io = Unreadable::at(&self.path);
        let mut line = serde_json::to_string(record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(&self.path).map_err(io)?;
        FileExt::lock_exclusive(&file).map_err(io)?;
        let result = (|| {
            let len = file.metadata()?.len();
            let mut last = [0u8; 1];
            if len > 0 {
                file.read_exact_at(&mut last, len - 1)?;
                if last[0] != b'\n' {
                    // A writer died mid-line: end the fragment so it cannot merge with this record.
                    line.insert(0, '\n');
                }
            }
            file.write_all(line.as_bytes())?;
            file.sync_data()
        })();
        // Closing the file releases the lock as well; unlocking first is only tidier.
        let _ = FileExt::unlock(&file);
        Ok(result.map_err(io)?)
    }
}

/// Where an item came from, as recorded in `source`.
pub const SOURCE_FILE: &str = "candidates";

/// One thing to label: a prompt and at least two responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The prompt.
    pub prompt: Text,
    /// The responses, in file order (the labeler never sees this order).
    pub responses: Vec<Text>,
    /// Where it came from (`candidates`, `policy@step 40`, `eval:<stage>:<id>`), never shown
    /// while labeling.
    pub source: String,
}

fn field_error(path: &Path, line: &Line, at: &[Seg], message: impl Into<String>) -> DataError {
    let column = locate(&line.text, at).map_or(1, |b| byte_to_column(&line.text, b));
    DataError::Located(Located::new(path, line.number, column, message).in_field(field_path(at)))
}

fn parse_text(value: &Json) -> Option<Text> {
    match value {
        Json::String(s) => Some(Text::Plain(s.clone())),
        Json::Array(_) => serde_json::from_value::<Vec<Message>>(value.clone()).ok().map(Text::Messages),
        _ => None,
    }
}

/// Parses one candidates line; `default_source` is used when the line has no `source`.
pub fn parse_candidate(path: &Path, line: &Line, default_source: &str) -> Result<Candidate, DataError> {
    let key = |k: &str| vec![Seg::Key(k.to_string())];
    let obj = line.value.as_object().ok_or_else(|| field_error(path, line, &[], "expected a JSON object"))?;
    let prompt = obj.get("prompt").ok_or_else(|| field_error(path, line, &[], "prompt: missing"))?;
    let prompt = parse_text(prompt)
        .ok_or_else(|| field_error(path, line, &key("prompt"), "expected a string or a list of messages"))?;
    let responses = match obj.get("responses") {
        None => return Err(field_error(path, line, &[], "responses: missing")),
        Some(Json::Array(list)) => list,
        Some(_) => return Err(field_error(path, line, &key("responses"), "expected a list of at least two responses")),
    };
    if responses.len() < 2 {
        return Err(field_error(path, line, &key("responses"), "expected at least two responses"));
    }
    let mut texts = Vec::with_capacity(responses.len());
    for (i, r) in responses.iter().enumerate() {
        let at = vec![Seg::Key("responses".into()), Seg::Index(i)];
        let text =
            parse_text(r).ok_or_else(|| field_error(path, line, &at, "expected a string or a list of messages"))?;
        texts.push(text);
    }
    let source = match obj.get("source") {
        None | Some(Json::Null) => default_source.to_string(),
        Some(Json::String(s)) => match obj.get("step").and_then(Json::as_u64) {
            Some(step) => format!("{s}@step {step}"),
            None => s.clone(),
        },
        Some(_) => return Err(field_error(path, line, &key("source"), "expected a string")),
    };
    Ok(Candidate { prompt, responses: texts, source })
}

/// Reads a candidates file (blank lines allowed; the first bad line is an error).
pub fn read_candidates(path: &Path) -> Result<Vec<Candidate>, DataError> {
    read_jsonl(path)?.iter().map(|line| parse_candidate(path, line, SOURCE_FILE)).collect()
}

/// What the labeler decided about the pair shown.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The response at this index of [`Candidate::responses`] is better than the other shown.
    Prefer(usize),
    /// A written answer is better than both; the response at this index is the rejected one.
    Edited {
        /// The written answer.
        chosen: Text,
        /// The response it replaces.
        rejected: usize,
    },
    /// Neither is better.
    Tie,
    /// Not judged.
    Skip,
}

/// A label about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelDraft {
    /// The record's id (unique in the file).
    pub id: String,
    /// The candidate judged.
    pub candidate: Candidate,
    /// Indexes into the candidate's responses shown on the left and on the right.
    pub order: [usize; 2],
    /// Who labeled.
    pub labeler: String,
    /// The decision.
    pub verdict: Verdict,
}

fn text_json(t: &Text) -> Json {
    match t {
        Text::Plain(s) => Json::String(s.clone()),
        Text::Messages(m) => serde_json::to_value(m).unwrap_or(Json::Null),
    }
}

/// `t` in the same kind as `prompt`, as TRL's preference format requires: a plain answer to a
/// conversation becomes one assistant message; a message answer to a plain prompt becomes its
/// messages' contents.
fn conform(prompt: &Text, t: &Text) -> Json {
    match (prompt, t) {
        (Text::Messages(_), Text::Plain(s)) => json!([{"role": "assistant", "content": s}]),
        (Text::Plain(_), Text::Messages(m)) => {
            Json::String(m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"))
        }
        _ => text_json(t),
    }
}

impl LabelDraft {
    /// The item key of the pair shown (order-independent).
    pub fn item(&self) -> String {
        let c = &self.candidate;
        let (l, r) = (&c.responses[self.order[0]], &c.responses[self.order[1]]);
        pair_hash(&c.prompt, l, r)
    }

    /// The record to append, stamped with `ts` (Unix milliseconds).
    pub fn to_record(&self, ts: u64) -> Json {
        let c = &self.candidate;
        let item = self.item();
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        let kind = match &self.verdict {
            Verdict::Prefer(_) | Verdict::Edited { .. } => "preference",
            Verdict::Tie => "tie",
            Verdict::Skip => "skip",
        };
        m.insert("kind".into(), json!(kind));
        m.insert("prompt".into(), text_json(&c.prompt));
        match &self.verdict {
            Verdict::Prefer(winner) => {
                let loser = if *winner == self.order[0] { self.order[1] } else { self.order[0] };
                m.insert("chosen".into(), conform(&c.prompt, &c.responses[*winner]));
                m.insert("rejected".into(), conform(&c.prompt, &c.responses[loser]));
            }
            Verdict::Edited { chosen, rejected } => {
                m.insert("chosen".into(), conform(&c.prompt, chosen));
                m.insert("rejected".into(), conform(&c.prompt, &c.responses[*rejected]));
                m.insert("edited".into(), json!(true));
            }
            Verdict::Tie | Verdict::Skip => {
                m.insert("left".into(), conform(&c.prompt, &c.responses[self.order[0]]));
                m.insert("right".into(), conform(&c.prompt, &c.responses[self.order[1]]));
            }
        }
        m.insert("item".into(), json!(item));
        m.insert("pair_hash".into(), json!(item));
        m.insert("order".into(), json!(self.order));
        m.insert("source".into(), json!(c.source));
        m.insert("labeler".into(), json!(self.labeler));
        m.insert("ts".into(), json!(ts));
        Json::Object(m)
    }
}

/// A thumbs label on one response of `candidate` (index `response`), TRL's unpaired format
/// `{"prompt", "completion", "label"}` plus hone's `id`, `kind`, `item`, `source`, `labeler` and
/// `ts` (Unix milliseconds).
pub fn thumbs_record(id: &str, candidate: &Candidate, response: usize, label: bool, labeler: &str, ts: u64) -> Json {
    let prompt = &candidate.prompt;
    let completion = &candidate.responses[response];
    let item = match (prompt, completion) {
        (Text::Messages(_), Text::Plain(s)) => {
            super::labels::thumbs_hash(prompt, &Text::Messages(vec![super::Message::new("assistant", s)]))
        }
        (Text::Plain(_), Text::Messages(m)) => super::labels::thumbs_hash(
            prompt,
            &Text::Plain(m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")),
        ),
        _ => super::labels::thumbs_hash(prompt, completion),
    };
    json!({
        "id": id,
        "kind": "thumbs",
        "prompt": text_json(prompt),
        "completion": conform(prompt, completion),
        "label": label,
        "item": item,
        "source": candidate.source,
        "labeler": labeler,
        "ts": ts,
    })
}

/// The record that retracts `supersedes` (an undo never rewrites the earlier line).
pub fn undo_record(id: &str, supersedes: &str, labeler: &str, ts: u64) -> Json {
    json!({"id": id, "kind": "undo", "supersedes": supersedes, "labeler": labeler, "ts": ts})
}

/// Agreement between two labelers (or one labeler with themself, on items served again).
#[derive(Debug, Clone, PartialEq)]
pub struct PairAgreement {
    /// The first labeler (alphabetically).
    pub a: String,
    /// The second labeler (equal to `a` for self-agreement).
    pub b: String,
    /// Pairs of labels compared.
    pub n: usize,
    /// How many of them agreed.
    pub agreed: usize,
    /// `agreed / n`.
    pub percent: f64,
    /// Cohen's kappa; `None` when chance agreement is 1 (every label the same category).
    pub kappa: Option<f64>,
}

/// Cohen's kappa of paired ratings: `(p_o − p_e) / (1 − p_e)`, with `p_o` the observed agreement
/// and `p_e = Σ_k p_a(k)·p_b(k)` the agreement expected from each rater's own marginals. `None`
/// for no pairs or when `p_e` is 1.
pub fn cohen_kappa<T: Ord>(pairs: &[(T, T)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let observed = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let mut first: BTreeMap<&T, f64> = BTreeMap::new();
    let mut second: BTreeMap<&T, f64> = BTreeMap::new();
    for (a, b) in pairs {
        *first.entry(a).or_default() += 1.0;
        *second.entry(b).or_default() += 1.0;
    }
    let expected: f64 = first.iter().map(|(k, ca)| ca / n * second.get(k).copied().unwrap_or(0.0) / n).sum();
    ((1.0 - expected).abs() > f64::EPSILON).then(|| (observed - expected) / (1.0 - expected))
}

/// Items judged more than once (served again), counting each item once.
pub fn served_again(judged: &[Judged]) -> usize {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for j in judged {
        *seen.entry(j.item.as_str()).or_default() += 1;
    }
    seen.values().filter(|&&n| n > 1).count()
}

/// Agreement per labeler pair over items judged more than once: every two judgements of the same
/// item form one comparison, filed under the (alphabetically ordered) pair of their labelers, the
/// earlier judgement first when both are by the same labeler. Sorted by pair.
pub fn agreement(judged: &[Judged]) -> Vec<PairAgreement> {
    let mut by_item: BTreeMap<&str, Vec<&Judged>> = BTreeMap::new();
    for j in judged {
        by_item.entry(j.item.as_str()).or_default().push(j);
    }
    let mut pairs: BTreeMap<(String, String), Vec<(Decision, Decision)>> = BTreeMap::new();
    for labels in by_item.values() {
        for (i, x) in labels.iter().enumerate() {
            for y in &labels[i + 1..] {
                let (first, second) = if y.labeler < x.labeler { (y, x) } else { (x, y) };
                pairs
                    .entry((first.labeler.clone(), second.labeler.clone()))
                    .or_default()
                    .push((first.decision.clone(), second.decision.clone()));
            }
        }
    }
    pairs
        .into_iter()
        .map(|((a, b), compared)| {
            let agreed = compared.iter().filter(|(x, y)| x == y).count();
            PairAgreement {
                a,
                b,
                n: compared.len(),
                agreed,
                percent: agreed as f64 / compared.len() as f64,
                kappa: cohen_kappa(&compared),
            }
        })
        .collect()
}

/// The labelers named in `judged`, sorted.
pub fn labelers(judged: &[Judged]) -> BTreeSet<&str> {
    judged.iter().map(|j| j.labeler.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(item: &str, labeler: &str, d: &str) -> Judged {
        let decision = if d == "tie" { Decision::Tie } else { Decision::Chose(d.to_string()) };
        Judged { item: item.into(), labeler: labeler.into(), decision }
    }

    #[test]
    fn candidates_are_read_with_located_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let good = r#"{"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b"], "source": "policy", "step": 40}"#;
        let bad = r#"{"prompt": "q", "responses": ["only one"]}"#;
        std::fs::write(&path, format!("{good}\n\n{bad}\n")).unwrap();
        let err = read_candidates(&path).unwrap_err().to_string();
        let column = bad.find('[').unwrap() + 1;
        assert_eq!(err, format!("{}:3:{column}: responses: expected at least two responses", path.display()));
        std::fs::write(&path, format!("{good}\n")).unwrap();
        let c = read_candidates(&path).unwrap();
        assert_eq!(c[0].source, "policy@step 40");
        assert!(c[0].prompt.is_conversational());
        // A plain answer to a conversation is written as an assistant turn, as TRL expects.
        let draft = LabelDraft {
            id: "1".into(),
            candidate: c[0].clone(),
            order: [1, 0],
            labeler: "ann".into(),
            verdict: Verdict::Prefer(1),
        };
        let rec = draft.to_record(5);
        assert_eq!(rec["chosen"], json!([{"role": "assistant", "content": "b"}]));
        assert_eq!(rec["order"], json!([1, 0]));
        let line = super::super::jsonl::Line { number: 1, text: rec.to_string(), value: rec.clone() };
        assert!(crate::data::parse_preference_line(&path, &line).is_ok(), "the trainer can read it");
        let bad_text = r#"{"prompt": "q", "responses": ["a", 3]}"#;
        std::fs::write(&path, format!("{bad_text}\n")).unwrap();
        let err = read_candidates(&path).unwrap_err().to_string();
        assert!(err.ends_with(": responses[1]: expected a string or a list of messages"), "{err}");
    }

    #[test]
    fn kappa_matches_the_textbook_two_by_two_case() {
        // 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
        // p_o = 35/50 = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5)/(1 − 0.5) = 0.4.
        let mut pairs = Vec::new();
        pairs.extend(std::iter::repeat_n(("y", "y"), 20));
        pairs.extend(std::iter::repeat_n(("y", "n"), 5));
        pairs.extend(std::iter::repeat_n(("n", "y"), 10));
        pairs.extend(std::iter::repeat_n(("n", "n"), 15));
        let k = cohen_kappa(&pairs).unwrap();
        assert!((k - 0.4).abs() < 1e-12, "{k}");
    }

    #[test]
    fn kappa_is_one_for_perfect_agreement_negative_for_systematic_disagreement_and_none_when_undefined() {
        assert_eq!(cohen_kappa(&[("a", "a"), ("b", "b")]), Some(1.0));
        // Always opposite: p_o = 0, p_e = 0.5 → κ = −1.
        assert_eq!(cohen_kappa(&[("a", "b"), ("b", "a")]), Some(-1.0));
        assert_eq!(cohen_kappa(&[("a", "a"), ("a", "a")]), None, "every label the same: p_e = 1");
        assert_eq!(cohen_kappa::<&str>(&[]), None);
    }

    #[test]
    fn agreement_is_per_labeler_pair_and_only_over_items_judged_twice() {
        let judged = vec![
            j("q1", "bob", "A"),
            j("q1", "ann", "A"),
            j("q2", "ann", "B"),
            j("q2", "bob", "A"),
            j("q3", "ann", "tie"),
            j("q3", "ann", "tie"),
            j("q4", "cat", "A"),
        ];
        assert_eq!(served_again(&judged), 3);
        let got = agreement(&judged);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].a.as_str(), got[0].b.as_str(), got[0].n, got[0].agreed), ("ann", "ann", 1, 1));
        assert_eq!((got[1].a.as_str(), got[1].b.as_str(), got[1].n, got[1].agreed), ("ann", "bob", 2, 1));
        assert!((got[1].percent - 0.5).abs() < 1e-12);
        // ann: (A, B); bob: (A, A). p_o = 0.5; p_e = 0.5·1 + 0.5·0 = 0.5 → κ = 0.
        assert_eq!(got[1].kappa, Some(0.0));
        assert_eq!(got[0].kappa, None, "one agreeing pair: chance agreement is 1");
    }
}
