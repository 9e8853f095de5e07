//! Every failure the torture tests found, kept as a regression test (the fuzzers' inputs are also
//! seeds of their target's corpus in `tests/fixtures/fuzz/`, named `crash-*`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

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
