//! `hone generate`: continuations of prompts as JSON lines, greedy or sampled, with the KV cache.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::{json, Value};

use super::score::Loaded;
use crate::data::{encode_generation_prompt, read_jsonl, Message, Text};
use crate::model::generate::{generate, Sampling};

/// Where the prompts come from.
pub enum Prompts {
    /// A JSONL file of `{"messages": [...]}` or `{"prompt": "..."}` records.
    File(PathBuf),
    /// One plain-text prompt from the command line.
    Text(String),
}

/// Parses one prompt record: `messages` (templated with the generation prompt) or `prompt`
/// (a string, or a message list).
fn prompt_of(value: &Value) -> std::result::Result<Text, String> {
    let obj = value.as_object().ok_or("expected a JSON object")?;
    let field = if obj.contains_key("messages") { "messages" } else { "prompt" };
    match obj.get(field) {
        Some(Value::String(s)) if field == "prompt" => Ok(Text::Plain(s.clone())),
        Some(v @ Value::Array(_)) => {
            serde_json::from_value::<Vec<Message>>(v.clone()).map(Text::Messages).map_err(|e| format!("{field}: {e}"))
        }
        Some(_) => Err(format!("{field}: expected a string or a list of messages")),
        None => Err("expected a `messages` or `prompt` field".into()),
    }
}

/// Runs the command, one JSON line per prompt to `out`.
pub fn run(
    model_dir: &std::path::Path,
    adapter: Option<&std::path::Path>,
    prompts: &Prompts,
    sampling: &Sampling,
    device: &Device,
    out: &mut impl Write,
) -> Result<()> {
    let loaded = Loaded::open_with_adapter(model_dir, adapter, device, candle_core::DType::F32)?;
    let texts: Vec<(String, Text)> = match prompts {
        Prompts::Text(t) => vec![("--prompt".into(), Text::Plain(t.clone()))],
        Prompts::File(path) => read_jsonl(path)?
            .iter()
            .map(|line| {
                prompt_of(&line.value)
                    .map(|t| (format!("{}:{}", path.display(), line.number), t))
                    .map_err(|e| anyhow::anyhow!("{}:{}:1: {e}", path.display(), line.number))
            })
            .collect::<Result<_>>()?,
    };
    if texts.is_empty() {
        bail!("no prompts to generate from");
    }
    let stops = &loaded.model.generation.eos_token_ids;
    for (index, (origin, text)) in texts.iter().enumerate() {
        let prompt_ids = encode_generation_prompt(&loaded.tokenizer, loaded.template.as_ref(), text)
            .with_context(|| origin.clone())?;
        let result = generate(&loaded.model, &prompt_ids, stops, sampling).with_context(|| origin.clone())?;
        let text = loaded.tokenizer.decode(&result.new_token_ids, true)?;
        writeln!(
            out,
            "{}",
            json!({"index": index, "prompt_ids": prompt_ids, "new_token_ids": result.new_token_ids, "text": text, "stopped_on_eos": result.stopped_on_eos})
        )?;
        out.flush()?;
    }
    Ok(())
}
