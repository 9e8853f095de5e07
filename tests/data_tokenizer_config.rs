#![allow(clippy::unwrap_used)]
//! `tokenizer_config.json` variants: special tokens as strings / `{"content": ...}` /
//! null, chat templates inline, as a named list, or in `chat_template.jinja`, and the
//! errors for a missing template or unknown special token.

use std::path::{Path, PathBuf};

use hone::data::{ChatTemplate, DataError, Message, TextTokenizer};
use serde_json::json;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama")).join(rel)
}

fn model_dir(config: Option<serde_json::Value>, jinja: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("model/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.path().join("tokenizer_config.json"), c.to_string()).unwrap();
    }
    if let Some(j) = jinja {
        std::fs::write(dir.path().join("chat_template.jinja"), j).unwrap();
    }
    dir
}

fn render(dir: &Path) -> String {
    let tok = TextTokenizer::from_dir(dir).unwrap();
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    t.render(&[Message::new("user", "hi")], true).unwrap()
}

#[test]
fn special_tokens_as_objects_and_named_templates() {
    let dir = model_dir(
        Some(json!({
            "bos_token": {"content": "<|begin_of_text|>", "lstrip": false},
            "eos_token": "<|im_end|>",
            "pad_token": null,
            "unk_token": "<unk>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ pad_token }}"}
            ]
        })),
        None,
    );
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.specials().bos, Some(("<|begin_of_text|>".into(), 0)));
    assert_eq!(tok.specials().pad, None);
    assert_eq!(tok.specials().unk, None, "unknown unk_token is dropped");
    assert_eq!(render(dir.path()), "<|begin_of_text|>hi<|im_end|>");
}

#[test]
fn template_file_fallback_and_missing_template() {
    let dir = model_dir(Some(json!({"eos_token": "<|im_end|>"})), Some("[{{ messages[0].content }}]\n"));
    assert_eq!(render(dir.path()), "[hi]");

    let dir = model_dir(None, None);
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.specials().eos, None);
    let err = ChatTemplate::from_tokenizer(&tok).unwrap_err();
    assert!(matches!(err, DataError::NoChatTemplate { .. }));
    assert!(err.to_string().contains("has no chat_template"), "{err}");
}

#[test]
fn config_errors_are_clear() {
    let dir = model_dir(Some(json!({"eos_token": "<|nope|>"})), None);
    let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with("tokenizer_config.json: eos_token \"<|nope|>\" is not in the vocabulary of tokenizer.json"),
        "{err}"
    );
    let dir = model_dir(Some(json!({"chat_template": [{"name": "rag", "template": "x"}]})), None);
    let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.ends_with("chat_template: no template named \"default\" (found: rag)"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = TextTokenizer::from_dir(empty.path()).unwrap_err().to_string();
    assert!(err.ends_with("tokenizer.json: file not found"), "{err}");
}
