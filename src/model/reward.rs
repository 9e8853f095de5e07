//! Reward models: a Llama/Qwen2 decoder with transformers' sequence-classification head
//! (`LlamaForSequenceClassification`, `Qwen2ForSequenceClassification`): `score.weight`
//! `[num_labels = 1, hidden]`, no bias, applied to the final-norm hidden state of each sequence's
//! last token that is not the pad id, exactly as transformers picks it.
//!
//! Owns loading such a directory (or turning a causal LM into one with a seeded head), scoring
//! batches with gradients, and saving a directory transformers loads with the same scores. The
//! Bradley-Terry loss over the scores lives in `train::reward`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use serde_json::Value;

use super::config::read_json;
use super::tensor_io::SafetensorsOut;
use super::weights::{NamedVar, ParamStore};
use super::{Decoder, GenerationConfig, Model, ModelConfig, ModelError};

/// The sequence-classification architectures hone reads and writes, with the causal-LM
/// architecture whose decoder they share.
const HEADS: &[(&str, &str)] =
    &[("LlamaForSequenceClassification", "LlamaForCausalLM"), ("Qwen2ForSequenceClassification", "Qwen2ForCausalLM")];

/// The transformers name of the head's weight.
pub const SCORE_WEIGHT: &str = "score.weight";

/// A decoder with a scalar score head.
pub struct RewardModel {
    model: Model,
    score: Tensor,
    /// Set when the head was drawn here rather than read from the directory.
    fresh_head: Option<Arc<ParamStore>>,
    pad_token_id: Option<u32>,
}

fn config_error(path: &Path, field: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config { path: path.to_path_buf(), field: field.into(), message: message.into() }
}

/// `num_labels` as transformers derives it: the `num_labels` key if present, else the size of
/// `id2label`, else transformers' default of 2.
fn num_labels(raw: &Value) -> usize {
    if let Some(n) = raw.get("num_labels").and_then(Value::as_u64) {
        return usize::try_from(n).unwrap_or(usize::MAX);
    }
    raw.get("id2label").and_then(Value::as_object).map_or(2, serde_json::Map::len)
}

fn pad_id_of(raw: &Value) -> Option<u32> {
    raw.get("pad_token_id").and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok())
}

/// The decoder's config from a reward model's `config.json`: the causal architecture, and a tied
/// head so that the decoder asks for no `lm_head.weight` (a sequence-classification checkpoint has
/// none, and the LM head is never used here).
fn decoder_config(raw: &Value, causal: &str, path: &Path) -> Result<ModelConfig, ModelError> {
    let mut for_decoder = raw.clone();
    if let Some(obj) = for_decoder.as_object_mut() {
        obj.insert("architectures".into(), Value::from(vec![causal]));
    }
    let mut config = ModelConfig::from_value(for_decoder, path)?;
    config.tie_word_embeddings = true;
    Ok(config)
}

fn architecture(raw: &Value) -> Option<&str> {
    raw.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str)
}

impl RewardModel {
    /// Loads a transformers sequence-classification directory (`config.json` with
    /// `architectures = ["LlamaForSequenceClassification"]` or the Qwen2 one and one label).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Err(ModelError::MissingFile { path, what: "the reward model's config.json" });
        }
        let raw = read_json(&path)?;
        let found = architecture(&raw).unwrap_or("(none)").to_string();
        let Some(&(_, causal)) = HEADS.iter().find(|(head, _)| *head == found) else {
            return Err(ModelError::UnsupportedArchitecture {
                path,
                found,
                supported: HEADS.iter().map(|(h, _)| *h).collect::<Vec<_>>().join(", "),
            });
        };
        let labels = num_labels(&raw);
        if labels != 1 {
            return Err(config_error(
                &path,
                "id2label",
                format!("a reward model has one label (a scalar score); this one has {labels}"),
            ));
        }
        let config = decoder_config(&raw, causal, &path)?;
        let store = Arc::new(ParamStore::open(dir)?);
        let vb = store.var_builder(dtype, device);
        let decoder = Decoder::new(&config, &vb)?;
        let score = vb.pp("score").get((1, config.hidden_size), "weight")?;
        let generation = GenerationConfig::from_dir(dir, &config)?;
        let pad_token_id = pad_id_of(&raw);
        let model = Model { config, generation, store, decoder, source_dir: Some(dir.to_path_buf()), lora: None };
        Ok(Self { model, score, fresh_head: None, pad_token_id })
    }

    /// A reward model from a causal LM directory: its decoder, and a score head drawn from
    /// `N(0, initializer_range)` (transformers' init; 0.02 when unset) with `seed`. The pad id
    /// is the config's, else the generation config's, else the first EOS id (as TRL's
    /// `RewardTrainer` falls back to the EOS token).
    pub fn from_causal_lm(dir: &Path, device: &Device, dtype: DType, seed: u64) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let config = ModelConfig::from_dir(dir)?;
        let causal = config.architecture.clone();
        let config = decoder_config(&config.raw, &causal, &path)?;
        let generation = GenerationConfig::from_dir(dir, &config)?;
        let store = Arc::new(ParamStore::open(dir)?);
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        let stdev = config.raw.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02);
        let head = Arc::new(ParamStore::fresh(seed));
        let score = head.var_builder(dtype, device).pp("score").get_with_hints(
            (1, config.hidden_size),
            "weight",
            Init::Randn { mean: 0.0, stdev },
        )?;
        let pad_token_id =
            pad_id_of(&config.raw).or(generation.pad_token_id).or_else(|| generation.eos_token_ids.first().copied());
        let model = Model { config, generation, store, decoder, source_dir: Some(dir.to_path_buf()), lora: None };
        Ok(Self { model, score, fresh_head: Some(head), pad_token_id })
    }

    /// A reward model to train from `dir`: a sequence-classification directory is loaded as it
    /// is ([`RewardModel::load`]); a causal LM gets a fresh head seeded by `seed`
    /// ([`RewardModel::from_causal_lm`]).
    pub fn open(dir: &Path, device: &Device, dtype: DType, seed: u64) -> Result<Self, ModelError> {
        let raw = read_json(&dir.join("config.json"))?;
        let is_head = architecture(&raw).is_some_and(|a| HEADS.iter().any(|(head, _)| *head == a));
        if is_head {
            Self::load(dir, device, dtype)
        } else {
            Self::from_causal_lm(dir, device, dtype, seed)
        }
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        self.model.decoder()
    }

    /// The decoder's resolved config.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// The pad id that marks where a sequence ends (`config.json`'s `pad_token_id`).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// Trainable parameters in transformers' `named_parameters()` order: the decoder's
    /// (`model.*`), then `score.weight`.
    pub fn parameters(&self) -> Vec<NamedVar> {
        let mut params: Vec<NamedVar> =
            self.model.parameters().into_iter().filter(|(n, _)| n != SCORE_WEIGHT).collect();
        let head = match &self.fresh_head {
            Some(store) => store.vars(),
            None => self.model.parameters().into_iter().filter(|(n, _)| n == SCORE_WEIGHT).collect(),
        };
        params.extend(head);
        params
    }

    /// The position whose hidden state is scored in each sequence: transformers' rule, the
    /// rightmost token that is not the pad id (0 when every token is the pad id), or the last
    /// token when the model has no pad id. With a pad id equal to EOS, a sequence ending in EOS
    /// is therefore scored at the token before its trailing EOS tokens, as transformers does.
    #[must_use]
    pub fn score_positions(&self, seqs: &[Vec<u32>]) -> Vec<usize> {
        seqs.iter()
            .map(|ids| match self.pad_token_id {
                Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
                None => ids.len().saturating_sub(1),
            })
            .collect()
    }

    /// Scores `[n]` (f32) of whole sequences (prompt and completion token ids), differentiable
    /// with respect to every parameter. The batch is right-padded, which changes no score (causal
    /// attention), so each score equals the one of the sequence alone.
    pub fn scores(&self, seqs: &[Vec<u32>]) -> candle_core::Result<Tensor> {
        let decoder = self.model.decoder();
        let device = decoder.device();
        if seqs.is_empty() {
            return Tensor::zeros(0, DType::F32, device);
        }
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            candle_core::bail!("sequence {i} is empty: a reward model scores at least one token");
        }
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let fill = self.pad_token_id.unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * width);
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(fill, width - s.len()));
        }
        let ids = Tensor::from_vec(ids, (seqs.len(), width), device)?;
        let rows: Vec<u32> = self
            .score_positions(seqs)
            .iter()
            .enumerate()
            .map(|(i, &p)| u32::try_from(i * width + p).map_err(|e| candle_core::Error::Msg(e.to_string())))
            .collect::<candle_core::Result<_>>()?;
        let rows = Tensor::new(rows, device)?;
        let hidden = decoder.hidden_states(&ids, None)?;
        let (b, s, h) = hidden.dims3()?;
        let last = hidden.reshape((b * s, h))?.index_select(&rows, 0)?;
        // The head runs in the model's dtype, as transformers' `nn.Linear`; the scores are f32.
        last.matmul(&self.score.t()?)?.squeeze(1)?.to_dtype(DType::F32)
    }

    /// The `config.json` of a sequence-classification directory: the source config with the
    /// head's architecture, one label (`id2label`/`label2id` as transformers writes them), the
    /// pad id and `dtype`.
    fn config_json(&self, dtype: DType) -> Result<Value, ModelError> {
        let mut config = self.model.config.raw.clone();
        let causal = self.model.config.architecture.as_str();
        let head = HEADS.iter().find(|(_, c)| *c == causal).map_or(causal, |(h, _)| *h);
        let obj = config.as_object_mut().ok_or_else(|| config_error(Path::new("config.json"), "", "not an object"))?;
        obj.insert("architectures".into(), Value::from(vec![head]));
        obj.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
        obj.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
        obj.remove("num_labels");
        match self.pad_token_id {
            Some(pad) => obj.insert("pad_token_id".into(), pad.into()),
            None => obj.remove("pad_token_id"),
        };
        super::set_config_dtype(obj, dtype);
        Ok(config)
    }

    /// The files of a transformers sequence-classification directory holding the current weights
    /// (in `dtype`): `model.safetensors`, `config.json`, and the tokenizer and generation files of
    /// the source directory. [`RewardModel::save`] writes them; a host can write them anywhere
    /// (a stage's export).
    pub fn files(&self, dtype: DType) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
        let mut files = vec![("model.safetensors".to_string(), self.weights(dtype)?)];
        let text = serde_json::to_string_pretty(&self.config_json(dtype)?)
            .map_err(|e| config_error(Path::new("config.json"), "", e.to_string()))?;
        files.push(("config.json".into(), text.into_bytes()));
        files.extend(super::companion_files(self.model.source_dir.as_deref())?);
        Ok(files)
    }

    /// Every parameter ([`RewardModel::parameters`], transformers' names) as safetensors bytes in
    /// `dtype`: what a checkpoint keeps of a reward model being trained.
    pub fn weights(&self, dtype: DType) -> Result<Vec<u8>, ModelError> {
        self.weights_out(dtype)?.to_bytes()
    }

    /// [`RewardModel::weights`] left as tensors, serialised as the file is written.
    pub fn weights_out(&self, dtype: DType) -> Result<SafetensorsOut, ModelError> {
        let tensors: Vec<(String, Tensor)> =
            self.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        SafetensorsOut::new(tensors, dtype)
    }

    /// Sets every parameter from safetensors bytes written by [`RewardModel::weights`] (a
    /// checkpoint being resumed); `source` names them in errors. Every parameter must be there
    /// with its shape; values are converted to the model's dtype.
    pub fn restore_weights(&self, bytes: &[u8], source: &Path) -> Result<(), ModelError> {
        let weights_error = |message: String| ModelError::Weights { path: source.to_path_buf(), message };
        let tensors = candle_core::safetensors::load_buffer(bytes, self.model.decoder().device())?;
        for (name, var) in self.parameters() {
            let t = tensors.get(&name).ok_or_else(|| weights_error(format!("no tensor {name}")))?;
            if t.shape() != var.shape() {
                return Err(weights_error(format!(
                    "tensor {name}: expected shape {:?}, found {:?}",
                    var.shape(),
                    t.shape()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Saves a transformers sequence-classification directory ([`RewardModel::files`]), each
    /// file written durably ([`crate::durable::write_file`]). `AutoModelForSequenceClassification`
    /// loads it with these scores.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
        for (name, bytes) in self.files(dtype)? {
            let path: PathBuf = dir.join(&name);
            crate::durable::write_file(&path, &bytes).map_err(|source| ModelError::Io { path, source })?;
        }
        Ok(())
    }
}
