//! Data pipeline for post-training: tokenizer loading, HF-compatible chat templates,
//! JSONL dataset records in TRL's formats, and TRL's tokenization conventions for SFT,
//! preference (DPO/IPO) and generation. Independent of the tensor backend and the UI.

pub mod date;
pub mod encode;
pub mod error;
pub mod jinja;
pub mod jsonl;
pub mod label_store;
pub mod labels;
pub mod records;
pub mod template;
pub mod tokenizer;

pub use encode::{encode_generation_prompt, encode_preference, encode_sft, encode_text, PreferenceExample, SftExample};
pub use error::DataError;
pub use jsonl::{read_jsonl, Line};
pub use records::{
    detect_kind, parse_preference_line, parse_thumbs_line, read_preferences, read_records, read_records_with_lines,
    read_safety, read_sft, read_text_records, read_thumbs, read_thumbs_for_kto, PreferenceRecord, RecordKind, Records,
    SafetyRecord, SftRecord, Text, ThumbsRecord,
};
pub use template::{ChatTemplate, Message, Rendered};
pub use tokenizer::{same_tokenizer, Encoding, SpecialTokens, TextTokenizer};
