//! events.jsonl: flat line shape, round trip, torn lines, bad lines, tailing.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;

use hone::run::{Event, EventReader, EventWriter, RunDir, RunError, WorkerLock};
use serde_json::{json, Value};

fn new_run() -> (tempfile::TempDir, RunDir) {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "ev").unwrap();
    run.write_frozen_config("x = 1\n").unwrap();
    (tmp, run)
}

fn append_raw(run: &RunDir, bytes: &[u8]) {
    let mut f = OpenOptions::new().create(true).append(true).open(run.events_path()).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn events_round_trip_as_flat_objects() {
    let (_tmp, run) = new_run();
    let lock = WorkerLock::acquire(&run).unwrap();
    let mut w = EventWriter::open(&lock).unwrap();
    assert_eq!(w.discarded_tail_bytes(), 0);
    let mut a = Event::new("step", Some("sft"), Some(3)).with("loss", 0.5).with("lr", 1e-4).with("tags", json!(["a"]));
    a.ts = 1_700_000_000_123;
    let mut b = Event::new("start", None, None).with("zeta", 1).with("alpha", "x");
    b.ts = 7;
    w.append(&a).unwrap();
    w.append(&b).unwrap();
    w.sync().unwrap();

    let text = fs::read_to_string(run.events_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(text.ends_with('\n'));
    assert_eq!(
        lines[0],
        r#"{"ts":1700000000123,"event":"step","stage":"sft","step":3,"loss":0.5,"lr":0.0001,"tags":["a"]}"#
    );
    assert_eq!(lines[1], r#"{"ts":7,"event":"start","stage":null,"step":null,"zeta":1,"alpha":"x"}"#);
    let raw: Value = serde_json::from_str(lines[1]).unwrap();
    let keys: Vec<&String> = raw.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ts", "event", "stage", "step", "zeta", "alpha"]);

    let batch = EventReader::read_all(&run.events_path()).unwrap();
    assert!(batch.bad_lines.is_empty());
    assert_eq!(batch.events, vec![a, b]);
}

#[test]
fn floats_round_trip_exactly_and_absent_stage_step_read_as_none() {
    let e = Event::new("eval", None, Some(u64::MAX)).with("x", 0.1 + 0.2).with("y", -1.0e-300);
    assert_eq!(Event::from_json(&e.to_json().unwrap()).unwrap(), e);
    let minimal = Event::from_json(r#"{"ts":1,"event":"x","k":null}"#).unwrap();
    assert_eq!((minimal.stage, minimal.step), (None, None));
    assert_eq!(minimal.fields.get("k"), Some(&Value::Null));
}

#[test]
fn torn_last_line_is_left_until_complete() {
    let (_tmp, run) = new_run();
    let mut reader = EventReader::new(&run.events_path());
    assert_eq!(reader.read_new().unwrap().events.len(), 0, "missing file reads as empty");
    append_raw(&run, b"{\"ts\":1,\"event\":\"a\",\"stage\":null,\"step\":null}\n{\"ts\":2,\"event\":\"b\"");
    let batch = reader.read_new().unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].event, "a");
    assert!(batch.bad_lines.is_empty());
    assert!(reader.read_new().unwrap().events.is_empty(), "torn line still incomplete");

    append_raw(&run, b",\"stage\":\"dpo\",\"step\":9}\n");
    let batch = reader.read_new().unwrap();
    assert!(batch.bad_lines.is_empty());
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].event, "b");
    assert_eq!(batch.events[0].stage.as_deref(), Some("dpo"));
    assert_eq!(batch.events[0].step, Some(9));
    assert!(reader.read_new().unwrap().events.is_empty());
}

#[test]
fn invalid_complete_lines_are_reported_with_line_numbers() {
    let (_tmp, run) = new_run();
    append_raw(
        &run,
        b"{\"ts\":1,\"event\":\"a\"}\nnot json\n\n{\"event\":\"no ts\"}\n{\"ts\":2,\"event\":\"b\",\"step\":-1}\n{\"ts\":3,\"event\":\"c\"}\n",
    );
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    let names: Vec<&str> = batch.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    let lines: Vec<u64> = batch.bad_lines.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 4, 5]);
    assert!(batch.bad_lines[1].message.contains("ts"), "{}", batch.bad_lines[1].message);
    assert!(batch.bad_lines[2].message.contains("step"), "{}", batch.bad_lines[2].message);
}

#[test]
fn writer_cuts_a_torn_tail_left_by_a_crash() {
    let (_tmp, run) = new_run();
    let torn = b"{\"ts\":2,\"event\":\"half";
    append_raw(&run, b"{\"ts\":1,\"event\":\"a\",\"stage\":null,\"step\":null}\n");
    append_raw(&run, torn);
    let lock = WorkerLock::acquire(&run).unwrap();
    let mut w = EventWriter::open(&lock).unwrap();
    assert_eq!(w.discarded_tail_bytes(), torn.len() as u64);
    w.append(&Event::new("resumed", None, None)).unwrap();
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    assert!(batch.bad_lines.is_empty(), "{:?}", batch.bad_lines);
    let names: Vec<&str> = batch.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["a", "resumed"]);
}

#[test]
fn writer_cuts_a_file_that_is_one_torn_line() {
    let (_tmp, run) = new_run();
    append_raw(&run, b"{\"ts\"");
    let lock = WorkerLock::acquire(&run).unwrap();
    let w = EventWriter::open(&lock).unwrap();
    assert_eq!(w.discarded_tail_bytes(), 5);
    assert_eq!(fs::metadata(run.events_path()).unwrap().len(), 0);
}

#[test]
fn reserved_field_names_are_refused() {
    let (_tmp, run) = new_run();
    let lock = WorkerLock::acquire(&run).unwrap();
    let mut w = EventWriter::open(&lock).unwrap();
    let err = w.append(&Event::new("x", None, None).with("step", 3)).unwrap_err();
    assert!(matches!(err, RunError::Serialize { .. }), "{err}");
    assert!(err.to_string().contains("events.jsonl"), "{err}");
    assert_eq!(fs::metadata(run.events_path()).unwrap().len(), 0);
}

#[test]
fn reader_restarts_when_the_file_shrinks_or_is_replaced() {
    let (_tmp, run) = new_run();
    append_raw(&run, b"{\"ts\":1,\"event\":\"a\"}\n{\"ts\":2,\"event\":\"b\"}\n");
    let mut reader = EventReader::new(&run.events_path());
    assert_eq!(reader.read_new().unwrap().events.len(), 2);
    fs::write(run.events_path(), b"{\"ts\":3,\"event\":\"c\"}\n").unwrap();
    let batch = reader.read_new().unwrap();
    assert!(batch.restarted);
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].event, "c");

    // Replaced by a longer file (a rename over it): also noticed.
    let other = run.path().join("other.jsonl");
    fs::write(&other, b"{\"ts\":4,\"event\":\"d\"}\n{\"ts\":5,\"event\":\"e\"}\n").unwrap();
    fs::rename(&other, run.events_path()).unwrap();
    let batch = reader.read_new().unwrap();
    assert!(batch.restarted);
    let names: Vec<&str> = batch.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["d", "e"]);
    assert!(!reader.read_new().unwrap().restarted);
}

#[test]
fn a_tailing_reader_sees_every_event_exactly_once() {
    let (_tmp, run) = new_run();
    let lock = WorkerLock::acquire(&run).unwrap();
    let mut w = EventWriter::open(&lock).unwrap();
    let path = run.events_path();
    let n = 3000u64;
    let reader = std::thread::spawn(move || {
        let mut reader = EventReader::new(&path);
        let mut seen = Vec::new();
        while seen.len() < n as usize {
            let batch = reader.read_new().unwrap();
            assert!(batch.bad_lines.is_empty(), "{:?}", batch.bad_lines);
            seen.extend(batch.events.into_iter().map(|e| e.step.unwrap()));
        }
        seen
    });
    for i in 0..n {
        w.append(&Event::new("step", Some("sft"), Some(i)).with("pad", "x".repeat((i % 700) as usize))).unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..n).collect::<Vec<_>>());
}
