//! Every failure the torture tests found, kept as a regression test (the fuzzers' inputs are also
//! seeds of their target's corpus in `tests/fixtures/fuzz/`, named `crash-*`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use hone::data::labels::LabelLog;
use hone::data::TextTokenizer;
use hone::model::ModelConfig;
use regex::Regex;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn crash(target: &str, name: &str) -> PathBuf {
    fixtures().join("fuzz").join(target).join(name)
}

#[test]
fn regression_pipeline_with_invalid_utf8_is_a_located_syntax_error() {
    // Was `PATH: cannot read: stream did not contain valid UTF-8`, with no line or column.
    let path = crash("pipeline", "crash-invalid-utf8.toml");
    let err = hone::config::load_pipeline(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}:1:60: invalid UTF-8", path.display()));
}

#[test]
fn regression_pipeline_with_a_control_character_in_a_comment_says_what_is_wrong() {
    // Was `PATH:1:37: ` with an empty message (toml gives none for it).
    let path = crash("pipeline", "crash-control-char-in-comment.toml");
    let err = hone::config::load_pipeline(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}:1:37: invalid TOML syntax here", path.display()));
}

#[test]
fn regression_config_json_errors_have_one_based_columns_and_locate_invalid_utf8() {
    // Was column 0 (serde_json's column for an error at a newline), and an unlocated read error
    // for bytes that are not UTF-8.
    for (name, at) in [("crash-newline-in-string.json", ":4:"), ("crash-invalid-utf8.json", ":3:")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(crash("model_config", name), dir.path().join("config.json")).unwrap();
        let path = dir.path().join("config.json");
        let err = ModelConfig::from_dir(dir.path()).unwrap_err().to_string();
        let re = Regex::new(&format!(r"^{}{at}([1-9]\d*): ", regex::escape(&path.display().to_string()))).unwrap();
        assert!(re.is_match(&err), "{name}: {err}");
    }
}

#[test]
fn regression_tokenizer_config_errors_have_one_based_columns_and_locate_invalid_utf8() {
    for (name, at) in [("crash-newline-in-string.json", ":3:"), ("crash-invalid-utf8.json", ":2:")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixtures().join("llama/model/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        std::fs::copy(crash("tokenizer_config", name), dir.path().join("tokenizer_config.json")).unwrap();
        let path = dir.path().join("tokenizer_config.json");
        let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        let re = Regex::new(&format!(r"^{}{at}([1-9]\d*): ", regex::escape(&path.display().to_string()))).unwrap();
        assert!(re.is_match(&err), "{name}: {err}");
    }
}

#[test]
fn regression_a_labels_line_that_is_not_utf8_does_not_fail_the_evaluations_reading_the_file() {
    // Was `PATH: stream did not contain valid UTF-8` from the eval module (every evaluation of
    // the run failed), while the data module reported one bad line.
    let path = crash("labels", "crash-invalid-utf8.jsonl");
    let labels = hone::eval::read_pairwise_labels(&path, "dpo", "sft").unwrap();
    assert_eq!(labels.len(), 1, "the eval_pairwise record before the bad line still counts");
    let mut log = LabelLog::new(&path);
    let update = log.read_new(None).unwrap();
    assert_eq!(update.lines, 2);
}

#[test]
fn regression_a_config_json_with_four_billion_layers_is_refused_not_an_allocation_abort() {
    // Was `memory allocation of 68719476736 bytes failed` (the process aborted) while building
    // the per-layer sliding-window table.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("fuzz/model_config/crash-4294967296-layers.json"), dir.path().join("config.json"))
        .unwrap();
    let err = ModelConfig::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.ends_with("config.json: num_hidden_layers: 4294967296 is not between 1 and 4096"), "{err}");
}

#[test]
fn regression_a_key_with_a_newline_is_escaped_in_the_error_so_it_stays_on_one_line() {
    // Was `PATH:1:40: \nitem: unknown field ...` with a raw newline inside the message.
    let path = fixtures().join("fuzz/labels/crash-newline-in-key.jsonl");
    let err = hone::eval::read_pairwise_labels(&path, "dpo", "sft").unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:1:", path.display())), "{err}");
    assert!(err.contains(": \"\\nitem\": unknown field"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Likewise a key with a leading space (was `PATH:1:16:  missed id: unknown field`).
    let dir = tempfile::tempdir().unwrap();
    let overrides = dir.path().join("overrides.jsonl");
    std::fs::write(&overrides, "{\" missed id\": \"c1\", \"passed\": true}\n").unwrap();
    let err = hone::eval::read_overrides(&overrides).unwrap_err().to_string();
    assert!(err.contains(":1:16: \" missed id\": unknown field"), "{err}");
}
