//! Reading a Hugging Face `config.json` and `generation_config.json` into one typed, validated
//! [`ModelConfig`]. Owns the differences between transformers 4.x and 5.x files and between the
//! supported families; knows nothing of tensors.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::ModelError;

/// The decoder families hone implements. Both share one code path; the family decides biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3, SmolLM2, TinyLlama (`LlamaForCausalLM`).
    Llama,
    /// Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): q/k/v biases.
    Qwen2,
}

/// Architectures named in `config.json` that hone can load.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "Qwen2ForCausalLM"];

/// How rotary frequencies are scaled (`rope_type` in transformers).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// The position divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are left alone.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// Everything the decoder needs, resolved from `config.json` (and its family defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which family's layout the weights follow.
    pub family: Family,
    /// The `architectures[0]` string, written back when saving.
    pub architecture: String,
    /// Rows of the embedding matrix (may exceed the tokenizer's length).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Longest position the rotary tables cover.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Whether the output projection carries a bias (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Whether the MLP projections carry a bias (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer: `Some(window)` where the layer uses sliding-window attention.
    pub sliding_windows: Vec<Option<usize>>,
    /// The dtype the weights were saved in (`dtype` or `torch_dtype`), if stated.
    pub saved_dtype: Option<String>,
    /// The original JSON, kept so a saved checkpoint writes the user's config back unchanged.
    pub raw: Value,
}

/// Decoding defaults from `generation_config.json` (falling back to `config.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Every id that ends generation (there may be several).
    pub eos_token_ids: Vec<u32>,
    /// The beginning-of-sequence id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// The padding id, if any.
    pub pad_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

fn field_error(path: &Path, field: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config { path: path.to_path_buf(), field: field.to_string(), message: message.into() }
}

fn require<T>(path: &Path, field: &str, value: Option<T>) -> Result<T, ModelError> {
    value.ok_or_else(|| field_error(path, field, "missing"))
}

pub(crate) fn read_json(path: &Path) -> Result<Value, ModelError> {
    // Bytes, not a String: serde_json locates invalid UTF-8 at its line and column. serde_json's
    // column is 0 for an error at a line's newline; columns here are 1-based.
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // The position is in the error's own line and column; drop serde's copy of it.
        let message = e.to_string();
        let message = message.rfind(" at line ").map_or(message.as_str(), |i| &message[..i]).to_string();
        ModelError::Json { path: path.to_path_buf(), line: e.line(), column: e.column().max(1), message }
    })
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path,
                what: "the model's config.json (is this a Hugging Face model directory?)",
            });
        }
        Self::from_value(read_json(&path)?, &path)
    }

    /// Builds the config from parsed JSON; `path` is only used in error messages.
    pub fn from_value(raw: Value, path: &Path) -> Result<Self, ModelError> {
        let c: RawConfig =
            serde_json::from_value(raw.clone()).map_err(|e| field_error(path, "config", e.to_string()))?;
        let architecture = c
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| match c.model_type.as_deref() {
                Some("llama") => Some("LlamaForCausalLM".into()),
                Some("qwen2") => Some("Qwen2ForCausalLM".into()),
                _ => None,
            })
            .ok_or_else(|| field_error(path, "architectures", "missing (and no known model_type)"))?;
        let family = match architecture.as_str() {
            "LlamaForCausalLM" => Family::Llama,
            "Qwen2ForCausalLM" => Family::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES.join(", "),
                })
            }
        };
        if let Some(act) = c.hidden_act.as_deref() {
            if act != "silu" {
                return Err(field_error(path, "hidden_act", format!("{act:?} is not supported (only \"silu\")")));
            }
        }
        let hidden_size = require(path, "hidden_size", c.hidden_size)?;
        let num_attention_heads = require(path, "num_attention_heads", c.num_attention_heads)?;
        let num_key_value_heads = c.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(field_error(
                path,
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must be positive and divide num_attention_heads ({num_attention_heads})"
                ),
            ));
        }
        let head_dim = c.head_dim.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(field_error(path, "head_dim", format!("{head_dim} must be even and positive for RoPE")));
        }
        let num_hidden_layers = require(path, "num_hidden_layers", c.num_hidden_layers)?;
        // Checked before anything is sized by it: a per-layer table for 2^32 layers aborts the
        // process on allocation instead of reporting the file.
        if !(1..=MAX_LAYERS).contains(&num_hidden_layers) {
            return Err(field_error(
                path,
                "num_hidden_layers",
                format!("{num_hidden_layers} is not between 1 and {MAX_LAYERS}"),
            ));
        }
        let (rope_theta, rope_scaling) = rope_settings(path, &c)?;
        let sliding_windows = sliding_windows(path, &c, family, num_hidden_layers)?;
        let attention_bias = c.attention_bias.unwrap_or(false);
        Ok(Self {
            family,
            architecture,
            vocab_size: require(path, "vocab_size", c.vocab_size)?,
            hidden_size,
            intermediate_size: require(path, "intermediate_size", c.intermediate_size)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family == Family::Llama && attention_bias,
            mlp_bias: family == Family::Llama && c.mlp_bias.unwrap_or(false),
            sliding_windows,
            saved_dtype: c.dtype.or(c.torch_dtype),
            raw,
        })
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// transformers 5 keeps theta and scaling in `rope_parameters`; 4.x has a top-level `rope_theta`
/// and an optional `rope_scaling`. The 5.x form wins where both are present.
fn rope_settings(path: &Path, c: &RawConfig) -> Result<(f64, RopeScaling), ModelError> {
    let params = c.rope_parameters.as_ref().filter(|v| !v.is_null());
    let theta = params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(c.rope_theta).unwrap_or(10_000.0);
    let scaling = params.or(c.rope_scaling.as_ref().filter(|v| !v.is_null()));
    let Some(scaling) = scaling else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64, ModelError> {
        scaling.get(key).and_then(Value::as_f64).ok_or_else(|| {
            field_error(path, &format!("rope_parameters.{key}"), format!("missing for rope_type {kind:?}"))
        })
    };
    let rope = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(field_error(
                path,
                "rope_parameters.rope_type",
                format!("{other:?} is not supported (supported: default, linear, llama3)"),
            ))
        }
    };
    Ok((theta, rope))
}

/// Which layers use sliding-window attention. transformers 5 lists `layer_types`; 4.x Qwen2
/// derives it from `use_sliding_window` and `max_window_layers`. `sliding_window: null` means none.
/// The most decoder layers a config may declare (the largest open models have about 130).
const MAX_LAYERS: usize = 4096;

fn sliding_windows(
    path: &Path,
    c: &RawConfig,
    family: Family,
    layers: usize,
) -> Result<Vec<Option<usize>>, ModelError> {
    let Some(window) = c.sliding_window else {
        return Ok(vec![None; layers]);
    };
    if let Some(types) = &c.layer_types {
        if types.len() != layers {
            return Err(field_error(path, "layer_types", format!("has {} entries for {layers} layers", types.len())));
        }
        return Ok(types.iter().map(|t| (t == "sliding_attention").then_some(window)).collect());
    }
    let uses = match family {
        Family::Qwen2 => c.use_sliding_window.unwrap_or(false),
        Family::Llama => false,
    };
    let first = c.max_window_layers.unwrap_or(0);
    Ok((0..layers).map(|i| (uses && i >= first).then_some(window)).collect())
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect(),
        _ => Vec::new(),
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json` where present, else the ids in `config.json`.
    pub fn from_dir(dir: &Path, config: &ModelConfig) -> Result<Self, ModelError> {
        let path: PathBuf = dir.join("generation_config.json");
        let gen = if path.exists() { Some(read_json(&path)?) } else { None };
        let pick = |key: &str| -> Vec<u32> {
            let from_gen = ids(gen.as_ref().and_then(|g| g.get(key)));
            if from_gen.is_empty() {
                ids(config.raw.get(key))
            } else {
                from_gen
            }
        };
        Ok(Self {
            eos_token_ids: pick("eos_token_id"),
            bos_token_id: pick("bos_token_id").first().copied(),
            pad_token_id: pick("pad_token_id").first().copied(),
        })
    }
}
