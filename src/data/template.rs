//! Chat messages and chat-template rendering: HF-compatible rendering, recovery of the
//! character spans of `{% generation %}` blocks, and the "difference rule" that locates
//! assistant turns for templates without generation blocks.

use std::collections::BTreeMap;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::data::date::Clock;
use crate::data::error::DataError;
use crate::data::jinja::{self, GEN_END, GEN_START, RAISE_MARKER, TEMPLATE_NAME};
use crate::data::tokenizer::TextTokenizer;

/// One chat message. Keys other than `role` and `content` (`tool_calls`, `name`,
/// `tool_call_id`, `reasoning_content`, ...) are kept in `extra` and visible to templates.
///
/// Note: without serde_json's and minijinja's `preserve_order` features, nested objects in
/// `extra` are iterated in sorted key order (this affects e.g. `arguments | tojson`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ... (any string; the template decides).
    pub role: String,
    /// Text content.
    pub content: String,
    /// Any other keys of the message object.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// A message with no extra keys.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), extra: serde_json::Map::new() }
    }
}

/// A rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The rendered text (sentinels removed).
    pub text: String,
    /// `[start, end)` code-point spans of the `{% generation %}` blocks, in render order;
    /// `None` when the template has no generation blocks.
    pub generation_spans: Option<Vec<(usize, usize)>>,
}

/// A compiled chat template plus the special-token strings it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    rewritten: String,
    has_generation: bool,
    clock: Clock,
    vars: BTreeMap<String, String>,
}

fn template_error(err: minijinja::Error) -> DataError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(me) = e.downcast_ref::<minijinja::Error>() {
            if me.kind() == ErrorKind::InvalidOperation {
                if let Some(msg) = me.detail().and_then(|d| d.strip_prefix(RAISE_MARKER)) {
                    return DataError::TemplateException { message: msg.to_string() };
                }
            }
        }
        cur = e.source();
    }
    DataError::Template { message: err.to_string().replace(RAISE_MARKER, "") }
}

fn check_reserved(location: &str, s: &str) -> Result<(), DataError> {
    match s.chars().find(|c| *c == GEN_START || *c == GEN_END) {
        Some(c) => Err(DataError::ReservedCharacter { location: location.to_string(), code: c as u32 }),
        None => Ok(()),
    }
}

fn check_json(location: &str, v: &serde_json::Value) -> Result<(), DataError> {
    match v {
        serde_json::Value::String(s) => check_reserved(location, s),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, x)| check_json(&format!("{location}[{i}]"), x))
        }
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, x)| {
            let loc = format!("{location}.{k}");
            check_reserved(&loc, k)?;
            check_json(&loc, x)
        }),
        _ => Ok(()),
    }
}

/// Number of Unicode code points in `s` (Python `len(str)`).
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

impl ChatTemplate {
    /// Compiles `source` with transformers' jinja settings. `bos_token` / `eos_token` are
    /// exposed to the template under those names (as empty strings when `None`, like HF
    /// does not define them: templates usually test `bos_token` only by printing it).
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self, DataError> {
        check_reserved("the chat template", source)?;
        let rewritten = jinja::rewrite_generation_tags(source);
        let clock = Clock::SystemUtc;
        let env = jinja::build_environment(rewritten.source.clone(), clock).map_err(template_error)?;
        let mut vars = BTreeMap::new();
        for (name, value) in [("bos_token", bos_token), ("eos_token", eos_token)] {
            if let Some(v) = value {
                vars.insert(name.to_string(), v.to_string());
            }
        }
        Ok(Self {
            env,
            source: source.to_string(),
            rewritten: rewritten.source,
            has_generation: rewritten.has_generation,
            clock,
            vars,
        })
    }

    /// The chat template of a tokenizer, with its bos/eos/pad/unk token strings.
    pub fn from_tokenizer(tok: &TextTokenizer) -> Result<Self, DataError> {
        let source = tok.chat_template().ok_or_else(|| DataError::NoChatTemplate {
            message: format!(
                "the tokenizer in {:?} has no chat_template (looked in tokenizer_config.json, \
                 chat_template.jinja and chat_template.json); conversational records need one",
                tok.dir()
            ),
        })?;
        let s = tok.specials();
        let name = |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone());
        let mut template = Self::new(source, name(&s.bos).as_deref(), name(&s.eos).as_deref())?;
        for (var, value) in [("pad_token", name(&s.pad)), ("unk_token", name(&s.unk))] {
            if let Some(v) = value {
                template = template.with_variable(var, &v);
            }
        }
        Ok(template)
    }

    /// The tokenizer's chat template, or `None` when it has none (plain-text data needs none).
    pub fn for_tokenizer(tok: &TextTokenizer) -> Result<Option<Self>, DataError> {
        match tok.chat_template() {
            Some(_) => Self::from_tokenizer(tok).map(Some),
            None => Ok(None),
        }
    }

    /// Adds (or replaces) a string variable visible to the template, e.g. `pad_token`.
    pub fn with_variable(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// Makes `strftime_now` report a fixed date (00:00:00) instead of the current UTC time,
    /// for reproducible renders. Errors when the date does not exist.
    pub fn with_fixed_date(mut self, year: i64, month: u32, day: u32) -> Result<Self, DataError> {
        self.clock = Clock::fixed(year, month, day).ok_or_else(|| DataError::Template {
            message: format!("invalid fixed date {year:04}-{month:02}-{day:02}"),
        })?;
        self.env = jinja::build_environment(self.rewritten.clone(), self.clock).map_err(template_error)?;
        Ok(self)
    }

    /// The original template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the template marks assistant output with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.has_generation
    }

    /// Renders `messages` (HF `apply_chat_template(..., tokenize=False)`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, DataError> {
        Ok(self.render_with_spans(messages, add_generation_prompt)?.text)
    }

    /// Renders `messages` and reports the code-point spans of `{% generation %}` blocks.
    pub fn render_with_spans(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Rendered, DataError> {
        for (i, m) in messages.iter().enumerate() {
            check_reserved(&format!("messages[{i}].role"), &m.role)?;
            check_reserved(&format!("messages[{i}].content"), &m.content)?;
            for (k, v) in &m.extra {
                check_reserved(&format!("messages[{i}]"), k)?;
                check_json(&format!("messages[{i}].{k}"), v)?;
            }
        }
        for (k, v) in &self.vars {
            check_reserved(k, v)?;
        }
        let mut ctx: BTreeMap<String, Value> =
            self.vars.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        let raw = self.env.get_template(TEMPLATE_NAME).and_then(|t| t.render(&ctx)).map_err(template_error)?;
        let (text, spans) = strip_sentinels(&raw)?;
        Ok(Rendered { text, generation_spans: self.has_generation.then_some(spans) })
    }

    /// The full rendering of `messages` (no generation prompt) and the code-point spans of
    /// the assistant output in it.
    ///
    /// With `{% generation %}` blocks the spans are those blocks (transformers'
    /// `return_assistant_tokens_mask`). Otherwise, for each assistant message `i`:
    /// `prefix = render(messages[..i], add_generation_prompt=true)`,
    /// `through = render(messages[..=i])`; `through` must start with `prefix` and the full
    /// rendering must start with `through`, and the span is `[len(prefix), len(through))`.
    /// When either property fails the template renders a turn differently depending on what
    /// follows, and an [`DataError::AssistantSpan`] error explains that it needs generation
    /// blocks.
    pub fn assistant_spans(&self, messages: &[Message]) -> Result<(String, Vec<(usize, usize)>), DataError> {
        let full = self.render_with_spans(messages, false)?;
        if let Some(spans) = full.generation_spans {
            return Ok((full.text, spans));
        }
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prefix = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&prefix) {
                return Err(DataError::AssistantSpan {
                    index: i,
                    message: format!(
                        "rendering messages[..={i}] does not start with the rendering of \
                         messages[..{i}] plus the generation prompt, so the assistant text cannot \
                         be located; add {{% generation %}} ... {{% endgeneration %}} blocks \
                         around the assistant output in the chat template"
                    ),
                });
            }
            if !full.text.starts_with(&through) {
                return Err(DataError::AssistantSpan {
                    index: i,
                    message: format!(
                        "the full conversation does not start with the rendering of \
                         messages[..={i}] (the template renders this turn differently when later \
                         turns follow, e.g. it drops reasoning), so the assistant text cannot be \
                         located; add {{% generation %}} ... {{% endgeneration %}} blocks around \
                         the assistant output in the chat template"
                    ),
                });
            }
            spans.push((char_len(&prefix), char_len(&through)));
        }
        Ok((full.text, spans))
    }
}

/// Removes the generation sentinels and returns the text plus the code-point spans they
/// delimited.
fn strip_sentinels(raw: &str) -> Result<(String, Vec<(usize, usize)>), DataError> {
    let mut text = String::with_capacity(raw.len());
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    let mut pos = 0usize;
    for c in raw.chars() {
        match c {
            GEN_START => {
                if open.is_some() {
                    return Err(DataError::Template { message: "nested {% generation %} blocks".into() });
                }
                open = Some(pos);
            }
            GEN_END => match open.take() {
                Some(start) => spans.push((start, pos)),
                None => {
                    return Err(DataError::Template { message: "{% endgeneration %} without {% generation %}".into() })
                }
            },
            c => {
                text.push(c);
                pos += 1;
            }
        }
    }
    if open.is_some() {
        return Err(DataError::Template { message: "{% generation %} block is not closed".into() });
    }
    Ok((text, spans))
}
