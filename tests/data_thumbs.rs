#![allow(clippy::unwrap_used)]
//! Thumbs up/down records (TRL's unpaired preference format, KTO's data): what they hold, the
//! located errors of malformed ones, KTO's need for both labels, and that such a file is never
//! mistaken for SFT data.

use std::path::PathBuf;

use hone::data::{read_sft, read_thumbs, read_thumbs_for_kto, DataError, Text, ThumbsRecord};

type Reader = fn(&std::path::Path) -> Result<Vec<(usize, ThumbsRecord)>, DataError>;

fn file(content: &str) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("thumbs.jsonl");
    std::fs::write(&p, content).unwrap();
    (p, dir)
}

fn err_of(content: &str, read: Reader) -> String {
    let (p, _dir) = file(content);
    let err = read(&p).unwrap_err().to_string();
    err.strip_prefix(&format!("{}:", p.display())).unwrap_or(&err).to_string()
}

const UP: &str = r#"{"prompt": "2+2?", "completion": "4", "label": true, "id": "a1", "labeler": "ann", "ts": "2026-01-01T00:00:00Z"}"#;
const DOWN: &str = r#"{"prompt": [{"role": "user", "content": "Capital of France?"}], "completion": [{"role": "assistant", "content": "Lyon"}], "label": false}"#;

#[test]
fn records_keep_label_text_and_hones_own_keys() {
    let (p, _dir) = file(&format!("{UP}\n\n{DOWN}\n"));
    let records = read_thumbs(&p).unwrap();
    assert_eq!(records.len(), 2);
    let (line, up) = &records[0];
    assert_eq!((*line, up.label), (1, true));
    assert_eq!(up.prompt, Text::Plain("2+2?".into()));
    assert_eq!(up.completion, Text::Plain("4".into()));
    assert_eq!(up.extra.keys().collect::<Vec<_>>(), ["id", "labeler", "ts"]);
    let (line, down) = &records[1];
    assert_eq!((*line, down.label), (3, false));
    assert!(down.prompt.is_conversational() && down.completion.is_conversational());
    assert_eq!(read_thumbs_for_kto(&p).unwrap().len(), 2);
}

#[test]
fn malformed_records_are_located() {
    let r = read_thumbs;
    assert_eq!(err_of(r#"{"prompt": "p", "completion": "c"}"#, r), "1:1: label: missing required field");
    assert_eq!(
        err_of(r#"{"prompt": "p", "completion": "c", "label": "yes"}"#, r),
        "1:45: label: expected true (thumbs up) or false (thumbs down)"
    );
    assert_eq!(
        err_of(&format!("{UP}\n{{\"prompt\": \"p\", \"completion\": [], \"label\": true}}"), r),
        "2:31: completion: expected a non-empty list of messages"
    );
    assert_eq!(
        err_of(r#"{"prompt": "p", "completion": [{"role": "assistant", "content": "c"}], "label": true}"#, r),
        "1:31: completion: expected a string like `prompt`"
    );
    assert_eq!(err_of(r#"{"completion": "c", "label": true}"#, r), "1:1: prompt: missing required field");
}

#[test]
fn kto_needs_both_thumbs_up_and_down() {
    let k = read_thumbs_for_kto;
    assert_eq!(
        err_of(&format!("{UP}\n{UP}\n"), k),
        "1:48: label: every record is a thumbs up (true): KTO needs thumbs down (false) too"
    );
    assert_eq!(
        err_of(&format!("\n{DOWN}\n"), k),
        "2:132: label: every record is a thumbs down (false): KTO needs thumbs up (true) too"
    );
    assert_eq!(err_of("\n", k), "1:1: the file has no records");
}

#[test]
fn a_thumbs_file_is_not_sft_data() {
    let (p, _dir) = file(&format!("{UP}\n"));
    let err = read_sft(&p).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:1:48: label: a thumbs up/down record (unpaired preference) is not SFT data; KTO trains on these",
            p.display()
        )
    );
}
