//! Loading a Hugging Face fast tokenizer (`tokenizer.json` + `tokenizer_config.json`) from a
//! model directory: special tokens, the chat template source, and encode/decode with
//! Unicode code-point offsets (the convention transformers uses for assistant masks).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::data::error::DataError;
use crate::located::{Located, Unreadable};

/// The special tokens named in `tokenizer_config.json`, each as `(text, id)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token.
    pub bos: Option<(String, u32)>,
    /// End-of-sequence token (TRL appends its text to plain completions).
    pub eos: Option<(String, u32)>,
    /// Padding token.
    pub pad: Option<(String, u32)>,
    /// Unknown-token placeholder (dropped when it is not in the vocabulary).
    pub unk: Option<(String, u32)>,
}

/// Token ids plus, for each token, its `[start, end)` span in Unicode code points of the
/// encoded text (untrimmed, as the fast tokenizer reports them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Code-point offsets, one per id.
    pub char_offsets: Vec<(usize, usize)>,
}

/// A fast tokenizer together with its special tokens and chat template source.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    specials: SpecialTokens,
    chat_template: Option<String>,
    dir: PathBuf,
}

fn tok_err(path: Option<&Path>, message: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer { path: path.map(Path::to_path_buf), message: message.to_string() }
}

fn read_json(path: &Path) -> Result<Json, DataError> {
    // Bytes, not a String: serde_json locates invalid UTF-8 at its line and column. serde_json's
    // column is 0 for an error at a line's newline; columns here are 1-based.
    let bytes = std::fs::read(path).map_err(Unreadable::at(path))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let message = crate::data::jsonl::strip_serde_position(&e.to_string());
        DataError::Located(Located::new(path, e.line(), e.column().max(1), message))
    })
}

/// Reads a special-token entry: a string, a `{"content": ...}` object, or null/absent.
fn token_text(config: &Json, key: &str, path: &Path) -> Result<Option<String>, DataError> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(m)) => match m.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(tok_err(Some(path), format!("{key}: expected a string or an object with a string \"content\""))),
        },
        Some(_) => Err(tok_err(Some(path), format!("{key}: expected a string, an object with \"content\", or null"))),
    }
}

/// Reads `chat_template`: a string, or a list of `{name, template}` (the `"default"` entry).
fn template_from_config(config: &Json, path: &Path) -> Result<Option<String>, DataError> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Json::as_str);
                let template = item.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(tok_err(
                            Some(path),
                            "chat_template: list entries must be {\"name\": str, \"template\": str}",
                        ))
                    }
                }
            }
            Err(tok_err(
                Some(path),
                format!("chat_template: no template named \"default\" (found: {})", names.join(", ")),
            ))
        }
        Some(_) => Err(tok_err(Some(path), "chat_template: expected a string or a list of {name, template}")),
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    ///
    /// The chat template comes from `tokenizer_config.json` (`chat_template` as a string, or
    /// the `"default"` entry of a list of named templates); when absent there, from
    /// `dir/chat_template.jinja`, then from `dir/chat_template.json` (`{"chat_template": ...}`).
    pub fn from_dir(dir: &Path) -> Result<Self, DataError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(tok_err(Some(&tok_path), "file not found"));
        }
        let inner = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| tok_err(Some(&tok_path), e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.is_file() { read_json(&cfg_path)? } else { Json::Object(Default::default()) };
        if !config.is_object() {
            return Err(tok_err(Some(&cfg_path), "expected a JSON object"));
        }
        let lookup = |key: &str, required: bool| -> Result<Option<(String, u32)>, DataError> {
            let Some(text) = token_text(&config, key, &cfg_path)? else {
                return Ok(None);
            };
            match inner.token_to_id(&text) {
                Some(id) => Ok(Some((text, id))),
                None if required => {
                    Err(tok_err(Some(&cfg_path), format!("{key} {text:?} is not in the vocabulary of tokenizer.json")))
                }
                None => Ok(None),
            }
        };
        let specials = SpecialTokens {
            bos: lookup("bos_token", true)?,
            eos: lookup("eos_token", true)?,
            pad: lookup("pad_token", true)?,
            unk: lookup("unk_token", false)?,
        };
        let mut chat_template = template_from_config(&config, &cfg_path)?;
        if chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            let json = dir.join("chat_template.json");
            if jinja.is_file() {
                let text = std::fs::read_to_string(&jinja).map_err(Unreadable::at(&jinja))?;
                chat_template = Some(text);
            } else if json.is_file() {
                chat_template = template_from_config(&read_json(&json)?, &json)?;
            }
        }
        Ok(Self { inner, specials, chat_template, dir: dir.to_path_buf() })
    }

    /// Wraps an already-built tokenizer (no config: no special tokens, no chat template).
    pub fn from_parts(inner: tokenizers::Tokenizer, specials: SpecialTokens, chat_template: Option<String>) -> Self {
        Self { inner, specials, chat_template, dir: PathBuf::new() }
    }

    /// Vocabulary size including added tokens (`len(tokenizer)` in transformers).
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// True when the vocabulary is empty (never the case for a real tokenizer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encodes `text`; with `add_special_tokens` the post-processor runs (e.g. prepends BOS).
    /// Offsets are Unicode code-point indices into `text`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding, DataError> {
        let enc = self
            .inner
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| tok_err(None, format!("encode failed: {e}")))?;
        Ok(Encoding { ids: enc.get_ids().to_vec(), char_offsets: enc.get_offsets().to_vec() })
    }

    /// Encodes `text` and returns only the ids.
    pub fn encode_ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, DataError> {
        Ok(self.encode(text, add_special_tokens)?.ids)
    }

    /// Decodes ids back to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| tok_err(None, format!("decode failed: {e}")))
    }

    /// The special tokens from `tokenizer_config.json`.
    pub fn specials(&self) -> &SpecialTokens {
        &self.specials
    }

    /// Id of a token (including added/special tokens), if it exists.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Text of a token id, if it exists.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The chat template source, if the model ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The directory this tokenizer was loaded from (empty for [`Self::from_parts`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Whether the model directories `a` and `b` hold the same tokenizer: the parts of their
/// `tokenizer.json` that decide which ids a text gets (vocabulary and merges, added tokens,
/// normalisation, splitting); formatting, padding and truncation settings may differ. The error
/// names a file that cannot be read.
pub fn same_tokenizer(a: &Path, b: &Path) -> Result<bool, String> {
    fn identity(dir: &Path) -> Result<Vec<serde_json::Value>, String> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(["model", "added_tokens", "normalizer", "pre_tokenizer"]
            .iter()
            .map(|k| json.get(*k).cloned().unwrap_or(serde_json::Value::Null))
            .collect())
    }
    Ok(identity(a)? == identity(b)?)
}
