//! Reading JSON Lines files with precise error positions: every non-blank line is parsed,
//! syntax errors are reported at the file line and the column within it, and field errors
//! found later can be pinned to the column of the offending value via [`locate`].

use std::path::Path;

use serde_json::Value as Json;

use crate::data::error::DataError;
use crate::located::{Located, Unreadable};

/// One non-blank line of a JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    /// The raw text of the line (without the line terminator).
    pub text: String,
    /// The parsed JSON value.
    pub value: Json,
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
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

/// A problem with one field of a line, before it is given a file position.
pub(crate) struct Issue {
    /// The field named in the message (empty: the line as a whole).
    pub field: Vec<Seg>,
    /// Where the column points (the field's value, or its parent object when it is missing).
    pub at: Vec<Seg>,
    /// What is wrong.
    pub message: String,
}

impl Issue {
    /// A problem with the value at `path`.
    pub(crate) fn bad(path: Vec<Seg>, message: impl Into<String>) -> Self {
        Issue { at: path.clone(), field: path, message: message.into() }
    }

    /// Field `k` of the object at `parent` is missing.
    pub(crate) fn missing(parent: &[Seg], k: &str) -> Self {
        Issue { field: key(parent, k), at: parent.to_vec(), message: "missing required field".into() }
    }

    /// The issue at its place on `line` of the file `path`.
    pub(crate) fn located(self, path: &Path, line: &Line) -> Located {
        let column = locate(&line.text, &self.at).map_or(1, |b| byte_to_column(&line.text, b));
        let at = Located::new(path, line.number, column, self.message);
        if self.field.is_empty() {
            at
        } else {
            at.in_field(field_path(&self.field))
        }
    }
}

/// Renders a path as `messages[1].role`.
pub fn field_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                // A key is untrusted text: one with a control character (a newline would split
                // the error across lines), an empty one or one with spaces at either end is shown
                // quoted and escaped, so the reader sees where it starts and ends.
                if k.is_empty() || k.trim() != k || k.chars().any(char::is_control) {
                    out.push_str(&format!("{k:?}"));
                } else {
                    out.push_str(k);
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes serde_json's trailing " at line L column C" from an error message.
pub(crate) fn strip_serde_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// 1-based character column of byte offset `byte` in `line` (clamped to the line).
pub fn byte_to_column(line: &str, byte: usize) -> usize {
    let mut b = byte.min(line.len());
    while !line.is_char_boundary(b) {
        b -= 1;
    }
    line[..b].chars().count() + 1
}

/// Reads a JSONL file: blank (whitespace-only) lines are skipped, a UTF-8 BOM at the start
/// is ignored, and every other line must be one JSON value. The first bad line is reported
/// as `path:line:column: message`.
pub fn read_jsonl(path: &Path) -> Result<Vec<Line>, DataError> {
    let bytes = std::fs::read(path).map_err(Unreadable::at(path))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut lines = Vec::new();
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = idx + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            let valid = std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default();
            DataError::Located(Located::new(path, number, valid.chars().count() + 1, "invalid UTF-8"))
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Json = serde_json::from_str(text).map_err(|e| {
            let column = byte_to_column(text, e.column().saturating_sub(1));
            DataError::Located(Located::new(path, number, column, strip_serde_position(&e.to_string())))
        })?;
        lines.push(Line { number, text: text.to_string(), value });
    }
    Ok(lines)
}

/// Byte offset in `raw` (one valid JSON document) of the value at `path`, if it exists.
pub fn locate(raw: &str, path: &[Seg]) -> Option<usize> {
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
                    let key: String = serde_json::from_str(raw.get(start..sc.i)?).ok()?;
                    sc.ws();
                    sc.eat(b':')?;
                    sc.ws();
                    if &key == want {
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

/// The complete lines appended to a growing file since `offset`, which moves past them: a torn
/// last line waits for its newline. A file that is missing or cannot be read has none yet.
pub fn new_lines(path: &Path, offset: &mut u64) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(*offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
    *offset += end as u64 + 1;
    bytes[..end].split(|&b| b == b'\n').map(|l| String::from_utf8_lossy(l).into_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::new_lines;
    use std::io::Write;

    #[test]
    fn new_lines_are_the_complete_ones_and_a_torn_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grow.jsonl");
        let mut offset = 0;
        assert!(new_lines(&path, &mut offset).is_empty(), "a missing file has no lines yet");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"{\"a\":1}\n\n{\"b\":").expect("write");
        assert_eq!(new_lines(&path, &mut offset), vec!["{\"a\":1}".to_string(), String::new()]);
        assert_eq!(offset, 9);
        assert!(new_lines(&path, &mut offset).is_empty(), "the torn line is not read");
        file.write_all(b"2}\n").expect("write");
        assert_eq!(new_lines(&path, &mut offset), vec!["{\"b\":2}".to_string()]);
        assert_eq!(offset, 17);
    }
}
