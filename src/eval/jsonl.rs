//! JSON Lines reading for the eval inputs (suites, overrides, human labels): every non-blank
//! line is parsed, syntax errors are reported at the file line and column, and field problems
//! found while decoding are pinned to the column of the offending value. Owns only the
//! line/field plumbing; never knows what a suite item or an override means.

use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::eval::error::EvalError;

/// One non-blank line of a JSONL file.
pub(crate) struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    /// The raw text of the line (without the line terminator).
    pub text: String,
    /// The parsed JSON value.
    pub value: Json,
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A problem with one field, before it is given a file position.
pub(crate) struct Issue {
    /// The field named in the message.
    field: Vec<Seg>,
    /// Where the column points (the field's value, or its parent object when it is missing).
    at: Vec<Seg>,
    message: String,
}

impl Issue {
    /// A problem with the value at `path`.
    pub(crate) fn bad(path: Vec<Seg>, message: impl Into<String>) -> Self {
        Issue { at: path.clone(), field: path, message: message.into() }
    }
}

/// Appends `k` to `path`.
pub(crate) fn key(path: &[Seg], k: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(k.to_string()));
    p
}

/// Appends index `i` to `path`.
pub(crate) fn index(path: &[Seg], i: usize) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Index(i));
    p
}

/// Renders a path as `checks[1].pattern`.
fn field_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Gives `issue` its file position.
pub(crate) fn located(path: &Path, line: &Line, issue: Issue) -> EvalError {
    let column = locate(&line.text, &issue.at).map_or(1, |b| byte_to_column(&line.text, b));
    if issue.field.is_empty() {
        EvalError::Json { path: path.to_path_buf(), line: line.number, column, message: issue.message }
    } else {
        EvalError::Field {
            path: path.to_path_buf(),
            line: line.number,
            column,
            field: field_path(&issue.field),
            message: issue.message,
        }
    }
}

/// Reads a JSONL file: blank lines are skipped, a UTF-8 BOM is ignored, every other line must
/// be one JSON value. With `missing_ok`, a file that does not exist reads as no lines.
pub(crate) fn read_lines(path: &Path, missing_ok: bool) -> Result<Vec<Line>, EvalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(EvalError::Io { path: path.to_path_buf(), source }),
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut lines = Vec::new();
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = idx + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            let valid = std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default();
            EvalError::Json {
                path: path.to_path_buf(),
                line: number,
                column: valid.chars().count() + 1,
                message: "invalid UTF-8".to_string(),
            }
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Json = serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let message = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]).to_string();
            EvalError::Json {
                path: path.to_path_buf(),
                line: number,
                column: byte_to_column(text, e.column().saturating_sub(1)),
                message,
            }
        })?;
        lines.push(Line { number, text: text.to_string(), value });
    }
    Ok(lines)
}

/// A JSON object being decoded, with its path for error messages.
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Json>,
    path: Vec<Seg>,
}

impl<'a> Obj<'a> {
    /// `v` as an object, or an issue saying it should be `what`.
    pub(crate) fn new(v: &'a Json, path: Vec<Seg>, what: &str) -> Result<Self, Issue> {
        match v.as_object() {
            Some(map) => Ok(Obj { map, path }),
            None => Err(Issue::bad(path, format!("expected {what}"))),
        }
    }

    /// The path of field `k` of this object.
    pub(crate) fn path_of(&self, k: &str) -> Vec<Seg> {
        key(&self.path, k)
    }

    /// Rejects fields outside `allowed`.
    pub(crate) fn deny_unknown(&self, allowed: &[&str]) -> Result<(), Issue> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => {
                Err(Issue::bad(self.path_of(k), format!("unknown field (expected one of: {})", allowed.join(", "))))
            }
            None => Ok(()),
        }
    }

    /// Field `k`; `null` counts as absent.
    pub(crate) fn opt(&self, k: &str) -> Option<&'a Json> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    /// Field `k`, which must be present.
    pub(crate) fn req(&self, k: &str) -> Result<&'a Json, Issue> {
        self.opt(k).ok_or_else(|| Issue {
            field: self.path_of(k),
            at: self.path.clone(),
            message: "missing required field".to_string(),
        })
    }

    /// Field `k` as a string, if present.
    pub(crate) fn opt_str(&self, k: &str) -> Result<Option<String>, Issue> {
        match self.opt(k) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Issue::bad(self.path_of(k), "expected a string")),
        }
    }

    /// Field `k` as a string, which must be present.
    pub(crate) fn req_str(&self, k: &str) -> Result<String, Issue> {
        self.req(k)?;
        self.opt_str(k).map(Option::unwrap_or_default)
    }

    /// Field `k` as a boolean, which must be present.
    pub(crate) fn req_bool(&self, k: &str) -> Result<bool, Issue> {
        self.req(k)?.as_bool().ok_or_else(|| Issue::bad(self.path_of(k), "expected true or false"))
    }

    /// Field `k` as a non-negative integer, if present.
    pub(crate) fn opt_u64(&self, k: &str) -> Result<Option<u64>, Issue> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| Issue::bad(self.path_of(k), "expected a non-negative integer"))
            }
        }
    }

    /// Field `k` as a finite number, if present.
    pub(crate) fn opt_f64(&self, k: &str) -> Result<Option<f64>, Issue> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Issue::bad(self.path_of(k), "expected a number")),
        }
    }

    /// Field `k` as a list of strings, if present.
    pub(crate) fn opt_str_list(&self, k: &str) -> Result<Option<Vec<String>>, Issue> {
        let Some(v) = self.opt(k) else { return Ok(None) };
        let list = v.as_array().ok_or_else(|| Issue::bad(self.path_of(k), "expected a list of strings"))?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item {
                Json::String(s) => out.push(s.clone()),
                _ => return Err(Issue::bad(index(&self.path_of(k), i), "expected a string")),
            }
        }
        Ok(Some(out))
    }
}

/// 1-based character column of byte offset `byte` in `line` (clamped to the line).
fn byte_to_column(line: &str, byte: usize) -> usize {
    let mut b = byte.min(line.len());
    while !line.is_char_boundary(b) {
        b -= 1;
    }
    line[..b].chars().count() + 1
}

/// Byte offset in `raw` (one valid JSON document) of the value at `path`, if it exists.
fn locate(raw: &str, path: &[Seg]) -> Option<usize> {
    let mut sc = Scanner { s: raw.as_bytes(), i: 0 };
    sc.ws();
    for seg in path {
        match seg {
            Seg::Key(want) => {
                sc.eat(b'{')?;
                loop {
                    sc.ws();
                    let start = sc.i;
                    sc.string()?;
                    let found: String = serde_json::from_str(raw.get(start..sc.i)?).ok()?;
                    sc.ws();
                    sc.eat(b':')?;
                    sc.ws();
                    if &found == want {
                        break;
                    }
                    sc.value()?;
                    sc.ws();
                    sc.eat(b',')?;
                }
            }
            Seg::Index(n) => {
                sc.eat(b'[')?;
                for _ in 0..*n {
                    sc.ws();
                    sc.value()?;
                    sc.ws();
                    sc.eat(b',')?;
                }
                sc.ws();
            }
        }
    }
    (sc.i < raw.len()).then_some(sc.i)
}

/// A minimal JSON skipper over valid input, used only to find byte offsets.
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                self.ws();
                if self.eat(close).is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.value()?;
                    self.ws();
                    if self.eat(close).is_some() {
                        return Some(());
                    }
                    self.eat(b',')?;
                }
            }
            _ => {
                while !matches!(self.peek(), None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }
}
