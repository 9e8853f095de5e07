//! The labels file resolver: supersedes, undo, ties, skips, held-back disagreements, and
//! incremental reading of a file that grows (torn last lines wait for their newline).
#![allow(clippy::unwrap_used)]

use std::io::Write;

use hone::data::labels::LabelLog;
use serde_json::json;

fn pref(id: &str, chosen: &str, rejected: &str, labeler: &str) -> String {
    json!({"id": id, "prompt": "Which is right?", "chosen": chosen, "rejected": rejected, "labeler": labeler, "item": "q1"})
        .to_string()
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn agreement_admits_once_disagreement_is_held_back_and_supersedes_resolve_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let mut log = LabelLog::new(&path);
    assert_eq!(log.read_new(None).unwrap().lines, 0, "a missing file reads as empty");

    append(&path, &format!("{}\n{}\n", pref("1", "A", "B", "ann"), pref("2", "A", "B", "bob")));
    log.read_new(None).unwrap();
    let (admitted, held) = log.resolve();
    assert_eq!(admitted.len(), 1, "two agreeing labels of one item train once");
    assert!(held.is_empty());

    append(&path, &format!("{}\n", pref("3", "B", "A", "cat")));
    log.read_new(None).unwrap();
    let (admitted, held) = log.resolve();
    assert!(admitted.is_empty(), "a disagreement holds the item back");
    assert_eq!(held, vec!["q1".to_string()]);

    append(&path, &format!("{}\n", json!({"id": "4", "kind": "undo", "supersedes": "3"})));
    log.read_new(None).unwrap();
    let (admitted, _) = log.resolve();
    assert_eq!(admitted.len(), 1, "undoing the dissent admits the item again");
    assert_eq!(admitted[0].1.chosen, hone::data::Text::Plain("A".into()));

    append(&path, &format!("{}\n", json!({"id": "5", "kind": "tie", "item": "q1"})));
    log.read_new(None).unwrap();
    assert_eq!(log.resolve().1.len(), 1, "a tie against a preference is a disagreement");

    append(&path, &format!("{}\n", json!({"id": "6", "kind": "skip", "item": "q2"})));
    log.read_new(None).unwrap();
    assert!(!log.resolve().0.iter().any(|(i, _)| i == "q2"), "a skip trains nothing");
}

#[test]
fn torn_lines_wait_and_bad_lines_are_reported_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let mut log = LabelLog::new(&path);
    let line = pref("1", "A", "B", "ann");
    let (head, tail) = line.split_at(20);
    append(&path, head);
    let update = log.read_new(None).unwrap();
    assert_eq!((update.lines, update.offset), (0, 0));
    append(&path, &format!("{tail}\n{{\"id\": \"2\", \"kind\": \"maybe\", \"item\": \"x\"}}\nnot json\n"));
    let update = log.read_new(None).unwrap();
    assert_eq!(update.lines, 3);
    assert_eq!(update.offset, std::fs::metadata(&path).unwrap().len());
    assert_eq!(update.problems.len(), 2);
    let p = path.display();
    assert!(
        update.problems[0].message.starts_with(&format!("{p}:2:1: kind: unknown kind \"maybe\"")),
        "{:?}",
        update.problems
    );
    assert!(update.problems[1].message.starts_with(&format!("{p}:3:")), "{:?}", update.problems);
    assert_eq!(log.resolve().0.len(), 1);

    // A limit replays an earlier read exactly.
    let mut replay = LabelLog::new(&path);
    let first = replay.read_new(Some(line.len() as u64 + 1)).unwrap();
    assert_eq!(first.lines, 1);
}
