//! Turning records into token ids the way TRL 1.x does: SFT examples with a per-token loss
//! mask (assistant spans for conversations, completion tokens for prompt/completion), DPO
//! prompt/chosen/rejected splits, and generation prompts.
//!
//! TRL facts followed here (trl/trainer/sft_trainer.py, `_prepare_dataset`):
//! * conversational input is rendered with the chat template and encoded with
//!   `add_special_tokens=false` (the template emits BOS itself);
//! * plain prompt/completion: the EOS token text is appended to the completion unless it
//!   already ends with it, `prompt_ids = tok(prompt)` and `ids = tok(prompt + completion)`,
//!   both with `add_special_tokens=true`; the completion mask is
//!   `[0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))`, i.e. it counts prompt
//!   tokens even when a token merges across the boundary (TRL only warns);
//! * conversational prompt/completion: `prompt_ids = chat(prompt, add_generation_prompt)`
//!   and `ids = chat(prompt + completion)`, same counting mask, no EOS appended.

use crate::data::error::DataError;
use crate::data::records::{PreferenceRecord, SftRecord, Text};
use crate::data::template::{ChatTemplate, Message};
use crate::data::tokenizer::TextTokenizer;

/// One tokenized SFT example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    /// Token ids of the whole sequence.
    pub input_ids: Vec<u32>,
    /// `loss_mask[i]`: token `i` is a training target (TRL's `assistant_masks` /
    /// `completion_mask`). The loss only uses positions `t >= 1` (next-token shift).
    pub loss_mask: Vec<bool>,
}

impl SftExample {
    /// Number of tokens that contribute to the loss (`mask[t]` for `t >= 1`).
    pub fn num_loss_tokens(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|m| **m).count()
    }
}

/// One tokenized preference pair, split as TRL's `DPOTrainer` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceExample {
    /// Shared prompt tokens.
    pub prompt_ids: Vec<u32>,
    /// Chosen completion tokens.
    pub chosen_ids: Vec<u32>,
    /// Rejected completion tokens.
    pub rejected_ids: Vec<u32>,
}

fn need_template(template: Option<&ChatTemplate>) -> Result<&ChatTemplate, DataError> {
    template.ok_or_else(|| DataError::NoChatTemplate { message: "conversational records need a chat template".into() })
}

fn eos_text(tok: &TextTokenizer) -> Result<&str, DataError> {
    tok.specials().eos.as_ref().map(|(s, _)| s.as_str()).ok_or_else(|| DataError::Encode {
        message: "plain-text records need an eos_token in tokenizer_config.json (TRL appends it to completions)".into(),
    })
}

fn with_eos(text: &str, eos: &str) -> String {
    if text.ends_with(eos) {
        text.to_string()
    } else {
        format!("{text}{eos}")
    }
}

fn concat(a: &[Message], b: &[Message]) -> Vec<Message> {
    a.iter().chain(b).cloned().collect()
}

/// `[0] * len(prompt) + [1] * (len(full) - len(prompt))`, truncated to `len(full)`.
fn completion_mask(prompt_len: usize, full_len: usize) -> Vec<bool> {
    (0..full_len).map(|i| i >= prompt_len).collect()
}

/// Encodes an SFT record.
///
/// * `Messages`: render the conversation, encode without special tokens, and mark token
///   `[a, b)` iff it overlaps an assistant span `[s, e)` (`b > s && a < e`), spans from
///   [`ChatTemplate::assistant_spans`]. No marked token is an error (as in TRL).
/// * `PromptCompletion`: see the module docs.
pub fn encode_sft(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    rec: &SftRecord,
) -> Result<SftExample, DataError> {
    match rec {
        SftRecord::Messages(messages) => {
            let template = need_template(template)?;
            let (text, spans) = template.assistant_spans(messages)?;
            let enc = tok.encode(&text, false)?;
            let loss_mask: Vec<bool> =
                enc.char_offsets.iter().map(|&(a, b)| spans.iter().any(|&(s, e)| b > s && a < e)).collect();
            if !loss_mask.contains(&true) {
                return Err(DataError::NoAssistantSpans {
                    message: if spans.is_empty() {
                        "the rendered conversation has no assistant span (no assistant message, or the template's {% generation %} blocks never ran)".into()
                    } else {
                        "the assistant spans cover no token".into()
                    },
                });
            }
            Ok(SftExample { input_ids: enc.ids, loss_mask })
        }
        SftRecord::PromptCompletion { prompt, completion } => {
            let (prompt_ids, input_ids) = match (prompt, completion) {
                (Text::Plain(p), Text::Plain(c)) => {
                    let c = with_eos(c, eos_text(tok)?);
                    (tok.encode_ids(p, true)?, tok.encode_ids(&format!("{p}{c}"), true)?)
                }
                (Text::Messages(p), Text::Messages(c)) => {
                    let template = need_template(template)?;
                    let p_text = template.render(p, true)?;
                    let full = template.render(&concat(p, c), false)?;
                    (tok.encode_ids(&p_text, false)?, tok.encode_ids(&full, false)?)
                }
                _ => {
                    return Err(DataError::Encode {
                        message: "prompt and completion must both be strings or both message lists".into(),
                    })
                }
            };
            let loss_mask = completion_mask(prompt_ids.len(), input_ids.len());
            Ok(SftExample { input_ids, loss_mask })
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Encodes a preference pair as TRL's `DPOTrainer` does: `P`, `P+C`, `P+R` are rendered
/// (conversational, no special tokens) or concatenated (plain, EOS text appended to the
/// completions, special tokens added), then split at
/// `n = min(common_prefix(P, PC), common_prefix(P, PR))`.
pub fn encode_preference(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    rec: &PreferenceRecord,
) -> Result<PreferenceExample, DataError> {
    let (p, pc, pr) = match (&rec.prompt, &rec.chosen, &rec.rejected) {
        (Text::Messages(p), Text::Messages(c), Text::Messages(r)) => {
            let t = need_template(template)?;
            (
                tok.encode_ids(&t.render(p, true)?, false)?,
                tok.encode_ids(&t.render(&concat(p, c), false)?, false)?,
                tok.encode_ids(&t.render(&concat(p, r), false)?, false)?,
            )
        }
        (Text::Plain(p), Text::Plain(c), Text::Plain(r)) => {
            let eos = eos_text(tok)?;
            (
                tok.encode_ids(p, true)?,
                tok.encode_ids(&format!("{p}{}", with_eos(c, eos)), true)?,
                tok.encode_ids(&format!("{p}{}", with_eos(r, eos)), true)?,
            )
        }
        _ => {
            return Err(DataError::Encode {
                message: "prompt, chosen and rejected must all be strings or all message lists".into(),
            })
        }
    };
    let n = common_prefix(&p, &pc).min(common_prefix(&p, &pr));
    Ok(PreferenceExample { prompt_ids: p[..n].to_vec(), chosen_ids: pc[n..].to_vec(), rejected_ids: pr[n..].to_vec() })
}

/// Token ids of a generation prompt: messages are rendered with `add_generation_prompt`
/// and encoded without special tokens; plain text is encoded with special tokens.
pub fn encode_generation_prompt(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    prompt: &Text,
) -> Result<Vec<u32>, DataError> {
    match prompt {
        Text::Messages(m) => tok.encode_ids(&need_template(template)?.render(m, true)?, false),
        Text::Plain(p) => tok.encode_ids(p, true),
    }
}

/// Token ids of a plain-text record for language modelling, as TRL's `SFTTrainer` prepares a
/// `text` dataset: encoded with special tokens (the tokenizer's post-processor adds BOS when it
/// has one), then the EOS id appended unless the text already ends with it. Every token after
/// the first is a training target. A tokenizer without an EOS token gets nothing appended.
pub fn encode_text(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, DataError> {
    let mut ids = tok.encode_ids(text, true)?;
    if let Some((_, eos)) = &tok.specials().eos {
        if ids.last() != Some(eos) {
            ids.push(*eos);
        }
    }
    Ok(ids)
}
