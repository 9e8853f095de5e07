//! Reading a long events.jsonl without holding it: [`read_tail`] parses only the last
//! [`TAIL_BYTES`] (the first frame is drawn from them), and [`stream_events`] folds the whole
//! history line by line into a fresh [`App`] ([`fold_history`]) behind that frame, so attaching to
//! a run of a million steps shows the newest steps at once and never materialises every event.
//! Runs on the `tail` thread, never on the UI task.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::app::App;
use crate::run::{BadLine, Event, RunError};

/// How much of the end of events.jsonl the first frame is drawn from.
pub const TAIL_BYTES: u64 = 256 * 1024;

/// Bad lines kept from a history (the notices panel only shows the newest ones anyway).
const BAD_LINES_KEPT: usize = 50;

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RunError + 'a {
    move |source| RunError::Io { op, path: path.to_path_buf(), source }
}

/// The events in the last `bytes` of `path`, from its first complete line there to its last
/// complete line, and the byte after that line; unreadable lines are skipped (the full read
/// reports them). A missing file reads as empty.
pub fn read_tail(path: &Path, bytes: u64) -> Result<(Vec<Event>, u64), RunError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_error("open", path)(e)),
    };
    let len = file.metadata().map_err(io_error("stat", path))?.len();
    // Start one byte early: if that byte is '\n', the chunk starts on a line boundary.
    let start = len.saturating_sub(bytes).saturating_sub(1);
    file.seek(SeekFrom::Start(start)).map_err(io_error("seek in", path))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.take(len - start).read_to_end(&mut buf).map_err(io_error("read", path))?;
    let from = if start == 0 { 0 } else { buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |i| i + 1) };
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if from >= end {
        return Ok((Vec::new(), start + end as u64));
    }
    let events = buf[from..end]
        .split(|&b| b == b'\n')
        .filter(|raw| !raw.iter().all(u8::is_ascii_whitespace))
        .filter_map(|raw| serde_json::from_slice::<Event>(raw.strip_suffix(b"\r").unwrap_or(raw)).ok())
        .collect();
    Ok((events, start + end as u64))
}

/// Where a streamed read stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// The byte after the last complete line read.
    pub offset: u64,
    /// Complete lines read in all (1-based number of the last one).
    pub lines: u64,
}

/// Calls `on_event` for every complete, valid line of `path` from byte `offset` (the start of line
/// `lines + 1`) on, in order, and `on_bad` for every complete line that is not an event. A last
/// line without its '\n' is left unread. One line is in memory at a time.
pub fn stream_events(
    path: &Path,
    start: Streamed,
    mut on_event: impl FnMut(Event),
    mut on_bad: impl FnMut(BadLine),
) -> Result<Streamed, RunError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(start),
        Err(e) => return Err(io_error("open", path)(e)),
    };
    file.seek(SeekFrom::Start(start.offset)).map_err(io_error("seek in", path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut at = start;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_error("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(at);
        }
        at.offset += n as u64;
        at.lines += 1;
        let raw = line[..n - 1].strip_suffix(b"\r").unwrap_or(&line[..n - 1]);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Event>(raw) {
            Ok(event) => on_event(event),
            Err(e) => on_bad(BadLine { line: at.lines, message: e.to_string() }),
        }
    }
}

/// Folds the whole of `path` into a fresh state. Returns it, the newest bad lines, and where the
/// read stopped (the live tail goes on from there).
pub fn fold_history(path: &Path) -> Result<(App, Vec<BadLine>, Streamed), RunError> {
    let mut app = App::default();
    let mut bad = Vec::new();
    let end = stream_events(
        path,
        Streamed { offset: 0, lines: 0 },
        |e| app.apply(&e),
        |b| {
            if bad.len() == BAD_LINES_KEPT {
                bad.remove(0);
            }
            bad.push(b);
        },
    )?;
    Ok((app, bad, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(step: u64) -> String {
        format!("{{\"ts\":{step},\"event\":\"metrics\",\"stage\":\"sft\",\"step\":{step},\"loss\":1.5}}\n")
    }

    #[test]
    fn the_tail_starts_on_a_line_boundary_and_skips_a_torn_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut text: String = (1..=100).map(line).collect();
        text.push_str("{\"ts\":101,\"event\":\"metr");
        std::fs::write(&path, &text).expect("write");
        let three = (98..=100).map(|s| line(s).len() as u64).sum::<u64>();
        let steps =
            |bytes| -> Vec<u64> { read_tail(&path, bytes).expect("tail").0.iter().filter_map(|e| e.step).collect() };
        // Exactly the last three complete lines, plus the torn tail.
        assert_eq!(steps(three + 23), vec![98, 99, 100]);
        // One byte less cuts line 98.
        assert_eq!(steps(three + 22), vec![99, 100]);
        let (all, end) = read_tail(&path, 1 << 30).expect("all");
        assert_eq!(all.len(), 100);
        assert_eq!(end, text.len() as u64 - 23, "the end is after the last complete line");
        assert!(read_tail(&dir.path().join("missing"), 10).expect("missing").0.is_empty());
    }

    #[test]
    fn streaming_folds_everything_and_reports_bad_lines_where_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut f = File::create(&path).expect("create");
        for step in 1..=10 {
            f.write_all(line(step).as_bytes()).expect("write");
            if step == 4 {
                f.write_all(b"not json\n\n").expect("write");
            }
        }
        f.write_all(b"{\"ts\":11").expect("write");
        drop(f);
        let (app, bad, end) = fold_history(&path).expect("fold");
        assert_eq!(app.series["loss"].len(), 10);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![5]);
        assert_eq!(end.lines, 12);
        let full = std::fs::metadata(&path).expect("stat").len();
        assert_eq!(end.offset, full - 8, "the torn line is left for the live tail");
    }
}
