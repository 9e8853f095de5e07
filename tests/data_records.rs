#![allow(clippy::unwrap_used)]
//! JSONL readers: exact `path:line:column: field: message` errors for malformed records,
//! format detection, TRL's implicit prompt extraction, and accepted edge cases.

use std::path::{Path, PathBuf};

use hone::data::{
    detect_kind, read_jsonl, read_preferences, read_records, read_safety, read_sft, Message, RecordKind, Records,
    SftRecord, Text,
};
use serde_json::json;

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn sft_err(content: &str) -> (PathBuf, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "data.jsonl", content.as_bytes());
    let err = read_sft(&p).unwrap_err().to_string();
    (p, err, dir)
}

fn check_sft(content: &str, want: &str) {
    let (p, err, _dir) = sft_err(content);
    assert_eq!(err, format!("{}:{want}", p.display()), "for {content:?}");
}

fn check_pref(content: &str, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "prefs.jsonl", content.as_bytes());
    let err = read_preferences(&p).unwrap_err().to_string();
    assert_eq!(err, format!("{}:{want}", p.display()), "for {content:?}");
}

const OK: &str = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;

#[test]
fn sft_field_errors_have_exact_positions() {
    check_sft(
        &format!("{OK}\n\n{}\n", r#"{"messages": [{"role": "user", "content": "hi"}, {"role": 5, "content": "x"}]}"#),
        "3:59: messages[1].role: expected a string",
    );
    check_sft(r#"{"messages": [{"role": "user"}]}"#, "1:15: messages[0].content: missing required field");
    check_sft(r#"{"messages": []}"#, "1:14: messages: expected a non-empty list of messages");
    check_sft(r#"{"messages": "hi"}"#, "1:14: messages: expected a list of messages");
    check_sft(
        r#"{"messages": [{"role": "user", "content": "a"}]}"#,
        "1:14: messages: no assistant message to train on",
    );
    check_sft(r#"{"messages": [42]}"#, "1:15: messages[0]: expected a message object with \"role\" and \"content\"");
    check_sft(
        r#"{"messages": [{"role": "user", "content": "héllo😀"}, {"role": "assistant", "content": 3}]}"#,
        "1:87: messages[1].content: expected a string",
    );
    check_sft(
        r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}"#,
        "1:43: messages[0].content: expected a string (lists of content parts are not supported)",
    );
    check_sft(
        r#"{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}"#,
        "1:31: completion: expected a string like `prompt`",
    );
    check_sft(r#"{"prompt": "a"}"#, "1:1: completion: missing required field");
    check_sft(r#"{"prompt": 1, "completion": "b"}"#, "1:12: prompt: expected a string or a list of messages");
    check_sft(r#"{"text": "a"}"#, "1:10: text: plain-text (language modelling) records are not supported; use `messages` or `prompt` + `completion`");
    check_sft(
        r#"{"foo": 1}"#,
        "1:1: messages: missing required field (an SFT record needs `messages`, or `prompt` and `completion`)",
    );
}

#[test]
fn json_errors_have_file_positions() {
    check_sft(&format!("{OK}\n{{\"messages\": [}}\n"), "2:15: expected value");
    check_sft("[1, 2]\n", "1:1: expected a JSON object");
    check_sft(&format!("{OK}\n\n  {{\"a\": 1,,}}"), "3:11: key must be a string");
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.jsonl", b"{\"messages\": \"\xff\"}\n");
    assert_eq!(read_sft(&p).unwrap_err().to_string(), format!("{}:1:15: invalid UTF-8", p.display()));
    let missing = dir.path().join("nope.jsonl");
    assert!(read_sft(&missing).unwrap_err().to_string().starts_with(&format!("{}: ", missing.display())));
}

#[test]
fn preference_errors() {
    check_pref(r#"{"prompt": "a", "chosen": "b"}"#, "1:1: rejected: missing required field");
    check_pref(
        r#"{"prompt": "a", "chosen": "b", "rejected": [{"role": "assistant", "content": "c"}]}"#,
        "1:44: rejected: expected a string like `chosen`",
    );
    check_pref(
        r#"{"prompt": [{"role": "user", "content": "a"}], "chosen": "b", "rejected": "c"}"#,
        "1:12: prompt: expected a string like `chosen`",
    );
    check_pref(
        r#"{"chosen": "", "rejected": "x"}"#,
        "1:12: chosen: implicit prompt: `chosen` and `rejected` must not be empty",
    );
}

#[test]
fn accepted_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    // BOM, CRLF, blank lines, unknown role, tool call without content, extra keys.
    let content = "\u{FEFF}{\"messages\": [{\"role\": \"narrator\", \"content\": \"x\"}, {\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\"}}], \"name\": \"bot\"}]}\r\n  \r\n";
    let p = write(dir.path(), "ok.jsonl", content.as_bytes());
    let recs = read_sft(&p).unwrap();
    let SftRecord::Messages(m) = &recs[0] else { panic!() };
    assert_eq!(m[0].role, "narrator");
    assert_eq!(m[1].content, "");
    assert_eq!(m[1].extra["name"], json!("bot"));
    assert!(m[1].extra.contains_key("tool_calls"));
    assert_eq!(read_jsonl(&p).unwrap()[0].number, 1);
    let empty = write(dir.path(), "empty.jsonl", b"\n\n");
    assert!(read_sft(&empty).unwrap().is_empty());
}

#[test]
fn implicit_prompt_is_extracted_like_trl() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
               "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}], "id": 7}),
        json!({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"}),
    ];
    let text: String = lines.iter().fold(String::new(), |acc, l| acc + &l.to_string() + "\n");
    let p = write(dir.path(), "p.jsonl", text.as_bytes());
    let recs = read_preferences(&p).unwrap();
    assert_eq!(recs[0].prompt, Text::Messages(vec![Message::new("user", "q")]));
    assert_eq!(recs[0].chosen, Text::Messages(vec![Message::new("assistant", "a")]));
    assert_eq!(recs[0].rejected, Text::Messages(vec![Message::new("assistant", "b")]));
    assert_eq!(recs[0].extra["id"], json!(7));
    assert_eq!(recs[1].prompt, Text::Plain("Q: hi A:".into()));
    assert_eq!(recs[1].chosen, Text::Plain(" yes".into()));
    assert_eq!(recs[1].rejected, Text::Plain(" no".into()));
}

#[test]
fn format_detection_and_safety_records() {
    let dir = tempfile::tempdir().unwrap();
    let sft = write(dir.path(), "s.jsonl", format!("\n{OK}\n").as_bytes());
    let pc = write(dir.path(), "pc.jsonl", br#"{"prompt": "a", "completion": "b"}"#);
    let pref = write(dir.path(), "p.jsonl", br#"{"prompt": "a", "chosen": "b", "rejected": "c"}"#);
    let safety = write(dir.path(), "x.jsonl", b"{\"prompt\": \"a\", \"unsafe\": \"b\", \"safe\": null, \"tag\": 1}\n{\"prompt\": \"a\", \"unsafe\": \"b\", \"safe\": \"c\"}");
    let unknown = write(dir.path(), "u.jsonl", br#"{"input": "a"}"#);
    let empty = write(dir.path(), "e.jsonl", b"");
    assert_eq!(detect_kind(&sft).unwrap(), RecordKind::Sft);
    assert_eq!(detect_kind(&pc).unwrap(), RecordKind::Sft);
    assert_eq!(detect_kind(&pref).unwrap(), RecordKind::Preference);
    assert_eq!(detect_kind(&safety).unwrap(), RecordKind::Safety);
    assert_eq!(
        detect_kind(&unknown).unwrap_err().to_string(),
        format!("{}:1:1: unknown record format: expected `messages`, `prompt` + `completion`, `chosen` + `rejected`, or `prompt` + `unsafe`", unknown.display())
    );
    assert_eq!(
        detect_kind(&empty).unwrap_err().to_string(),
        format!("{}:1:1: the file has no records", empty.display())
    );
    let recs = read_safety(&safety).unwrap();
    assert_eq!(recs[0].safe, None);
    assert_eq!(recs[0].extra["tag"], json!(1));
    assert_eq!(recs[1].safe, Some(Text::Plain("c".into())));
    assert!(matches!(read_records(&pref).unwrap(), Records::Preference(v) if v.len() == 1));
    let bad_safety = write(dir.path(), "bs.jsonl", br#"{"prompt": "a", "unsafe": "b", "safe": 3}"#);
    assert_eq!(
        read_safety(&bad_safety).unwrap_err().to_string(),
        format!("{}:1:40: safe: expected a string or a list of messages", bad_safety.display())
    );
}
