//! The error type of the data module: every way loading a tokenizer, rendering a chat
//! template, reading a JSONL dataset or encoding a record can fail.

use std::path::PathBuf;

use crate::located::{Located, Unreadable};

/// Everything that can go wrong in [`crate::data`].
///
/// Dataset errors carry a `path:line:column` location ([`Located`]) so that a user can jump
/// straight to the offending value.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] Unreadable),

    /// A line (or a whole config file) is not valid JSON, or a record is valid JSON but a field
    /// is missing or has the wrong shape.
    #[error("{0}")]
    Located(Located),

    /// The tokenizer could not be loaded or failed to encode/decode.
    #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The file involved, when there is one.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },

    /// The model directory has no chat template but a conversational record needs one.
    #[error("no chat template: {message}")]
    NoChatTemplate {
        /// Where we looked and what to do about it.
        message: String,
    },

    /// The chat template failed to compile or to render.
    #[error("chat template: {message}")]
    Template {
        /// The template engine's message.
        message: String,
    },

    /// The chat template called `raise_exception(message)`.
    #[error("chat template raised an exception: {message}")]
    TemplateException {
        /// The message passed to `raise_exception`.
        message: String,
    },

    /// A message (or the template) contains one of the private-use sentinel characters
    /// used to track `{% generation %}` blocks.
    #[error(
        "{location} contains the reserved character U+{code:04X} (used internally to track {{% generation %}} blocks)"
    )]
    ReservedCharacter {
        /// Where the character was found, e.g. `messages[2].content`.
        location: String,
        /// The code point.
        code: u32,
    },

    /// The assistant turns of a conversation could not be located in the rendered text.
    #[error("cannot locate the assistant turn in message {index}: {message}")]
    AssistantSpan {
        /// Index of the assistant message in the conversation.
        index: usize,
        /// Why, and what to do about it.
        message: String,
    },

    /// An encoded SFT example has no token to train on.
    #[error("no assistant tokens to train on: {message}")]
    NoAssistantSpans {
        /// Details (e.g. the template has no generation blocks or no assistant turn).
        message: String,
    },

    /// A record cannot be encoded as requested (e.g. a conversational record without a chat
    /// template, or a plain record when the tokenizer has no EOS token).
    #[error("cannot encode record: {message}")]
    Encode {
        /// What is missing.
        message: String,
    },
}
