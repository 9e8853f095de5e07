//! events.jsonl: the `Event` record (one flat JSON object per line), the worker's `EventWriter`
//! and the tailing `EventReader`.
//!
//! Torn lines. The writer appends each event as one `write(2)` of `json + "\n"` on an `O_APPEND`
//! descriptor, so a line is only ever incomplete at the end of the file, and only if the worker
//! died mid-write (or a reader caught the write in flight). Readers consume complete lines only:
//! bytes after the last '\n' are left for the next call, never parsed. [`EventWriter::open`] takes
//! the [`WorkerLock`], so exactly one process appends, and it cuts a torn tail left by a crashed
//! predecessor back to the last '\n' before appending (the number of bytes cut is reported by
//! [`EventWriter::discarded_tail_bytes`]). Hence every complete line is one valid JSON object.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::dir::now_ms;
use super::error::RunError;
use super::fsutil::IoContext;
use super::lock::WorkerLock;

/// The event kinds, shared with the trainer (which may not import `run`): see [`crate::kind`].
pub use crate::kind;

/// Keys written by hone itself at the start of every line; `fields` may not use them.
const RESERVED: [&str; 4] = ["ts", "event", "stage", "step"];

/// One line of events.jsonl. Serialized as one flat object:
/// `{"ts":..,"event":..,"stage":..,"step":..,<fields>}`, with `stage`/`step` written as `null`
/// when `None` (and read as `None` when null or absent). Field order is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unix time in milliseconds.
    pub ts: u64,
    /// The event kind, e.g. `"step"`, `"eval"`, `"checkpoint"`.
    pub event: String,
    /// The pipeline stage this event belongs to, if any.
    pub stage: Option<String>,
    /// The optimizer step, if any.
    pub step: Option<u64>,
    /// Every other key, in order. Must not contain `ts`, `event`, `stage` or `step`.
    pub fields: Map<String, Value>,
}

impl Event {
    /// A new event stamped with the current time and no fields.
    pub fn new(kind: &str, stage: Option<&str>, step: Option<u64>) -> Event {
        Event { ts: now_ms(), event: kind.to_string(), stage: stage.map(str::to_string), step, fields: Map::new() }
    }

    /// Adds (or replaces) a field. A reserved key (`ts`, `event`, `stage`, `step`) makes
    /// serialization fail rather than silently shadowing the header.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// The event as one JSON line without the trailing newline.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses one line (without its newline).
    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(key) = RESERVED.iter().find(|k| self.fields.contains_key(**k)) {
            return Err(S::Error::custom(format!("event field {key:?} clashes with a reserved key")));
        }
        let mut map = serializer.serialize_map(Some(4 + self.fields.len()))?;
        map.serialize_entry("ts", &self.ts)?;
        map.serialize_entry("event", &self.event)?;
        map.serialize_entry("stage", &self.stage)?;
        map.serialize_entry("step", &self.step)?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        let ts = match fields.remove("ts") {
            Some(v) => v.as_u64().ok_or_else(|| D::Error::custom("\"ts\" is not a non-negative integer"))?,
            None => return Err(D::Error::missing_field("ts")),
        };
        let event = match fields.remove("event") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("\"event\" is not a string")),
            None => return Err(D::Error::missing_field("event")),
        };
        let stage = match fields.remove("stage") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(D::Error::custom("\"stage\" is neither null nor a string")),
        };
        let step = match fields.remove("step") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| D::Error::custom("\"step\" is not a non-negative integer"))?),
        };
        Ok(Event { ts, event, stage, step, fields })
    }
}

/// Appends events to a run's events.jsonl. Only the holder of the run's [`WorkerLock`] can open
/// one, so there is a single writer per run.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
    discarded: u64,
}

impl EventWriter {
    /// Opens (creating if needed) the events file of the locked run for appending (`O_APPEND`). If
    /// the file ends with a torn line (no trailing '\n', left by a crash), it is truncated back to
    /// the last '\n' first and the cut is fsynced.
    pub fn open(lock: &WorkerLock) -> Result<EventWriter, RunError> {
        let path = lock.run().events_path();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).ctx("open", &path)?;
        let len = file.metadata().ctx("stat", &path)?.len();
        let keep = complete_prefix_len(&mut file, len).ctx("read", &path)?;
        if keep < len {
            file.set_len(keep).ctx("truncate torn tail of", &path)?;
            file.sync_all().ctx("fsync", &path)?;
        }
        Ok(EventWriter { file, path, discarded: len - keep })
    }

    /// How many bytes of a torn last line [`EventWriter::open`] cut off (0 if none).
    pub fn discarded_tail_bytes(&self) -> u64 {
        self.discarded
    }

    /// The events file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a single `write_all` of its JSON line plus '\n'. Nothing is buffered in
    /// the process; call [`EventWriter::sync`] for durability against power loss.
    pub fn append(&mut self, event: &Event) -> Result<(), RunError> {
        let mut line = event.to_json().map_err(|source| RunError::Serialize { path: self.path.clone(), source })?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).ctx("append to", &self.path)?;
        self.file.flush().ctx("flush", &self.path)
    }

    /// Fsyncs the events file.
    pub fn sync(&self) -> Result<(), RunError> {
        self.file.sync_data().ctx("fsync", &self.path)
    }
}

/// The length of the longest prefix of the file that ends with '\n' (0 if there is none).
fn complete_prefix_len(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        buf.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// (device, inode) of a file; constant where the platform has no inode numbers.
#[cfg(unix)]
fn file_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// (device, inode) of a file; constant where the platform has no inode numbers.
#[cfg(not(unix))]
fn file_identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// A complete line of events.jsonl that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in the file.
    pub line: u64,
    /// Why it did not parse.
    pub message: String,
}

/// What one [`EventReader::read_new`] call found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadBatch {
    /// Events from complete, valid lines, in file order.
    pub events: Vec<Event>,
    /// Complete lines that are not valid events, in file order. Blank lines are skipped.
    pub bad_lines: Vec<BadLine>,
    /// True if the file had been replaced or had become shorter than what was already read (edited
    /// by hand), so reading started over from the beginning and events may repeat.
    pub restarted: bool,
}

/// Tails an events.jsonl: each [`EventReader::read_new`] returns what complete lines appeared
/// since the previous call. A missing file reads as empty.
#[derive(Debug, Clone)]
pub struct EventReader {
    path: PathBuf,
    offset: u64,
    line: u64,
    /// Identity of the file read last (device, inode), to notice a replaced file.
    identity: Option<(u64, u64)>,
}

impl EventReader {
    /// A reader positioned at the start of `path` (usually [`crate::run::RunDir::events_path`]).
    pub fn new(path: &Path) -> EventReader {
        EventReader { path: path.to_path_buf(), offset: 0, line: 0, identity: None }
    }

    /// A reader that starts at byte `offset`, the start of line `line + 1`, for a caller that has
    /// already read the file up to there another way (the TUI streams a long history first).
    pub fn starting_at(path: &Path, offset: u64, line: u64) -> EventReader {
        EventReader { path: path.to_path_buf(), offset, line, identity: None }
    }

    /// Reads every complete line after the last one already returned. A last line without its
    /// '\n' (a write in flight, or a torn line) is left for a later call.
    pub fn read_new(&mut self) -> Result<ReadBatch, RunError> {
        let mut batch = ReadBatch::default();
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(batch),
            Err(e) => return Err(e).ctx("open", &self.path),
        };
        let meta = file.metadata().ctx("stat", &self.path)?;
        let len = meta.len();
        let identity = Some(file_identity(&meta));
        let replaced = self.identity.is_some() && identity != self.identity;
        self.identity = identity;
        if len < self.offset || replaced {
            self.offset = 0;
            self.line = 0;
            batch.restarted = true;
        }
        if len == self.offset {
            return Ok(batch);
        }
        file.seek(SeekFrom::Start(self.offset)).ctx("seek in", &self.path)?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        file.read_to_end(&mut buf).ctx("read", &self.path)?;
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(batch);
        };
        for raw in buf[..last_nl].split(|&b| b == b'\n') {
            self.line += 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Event>(raw) {
                Ok(event) => batch.events.push(event),
                Err(e) => batch.bad_lines.push(BadLine { line: self.line, message: e.to_string() }),
            }
        }
        self.offset += last_nl as u64 + 1;
        Ok(batch)
    }

    /// Bytes of the file consumed so far (the start of the first unread line).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads every complete line of `path` at once.
    pub fn read_all(path: &Path) -> Result<ReadBatch, RunError> {
        EventReader::new(path).read_new()
    }
}
