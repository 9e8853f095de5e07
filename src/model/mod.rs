//! Decoder-only language models in candle: the Llama and Qwen2 families, loaded from and saved to
//! Hugging Face model directories, with generation through a KV cache.
//!
//! Owns tensors and model directories; never touches run directories or the terminal.

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod fused;
pub mod generate;
pub mod ops;
pub mod reward;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

pub use config::{Family, GenerationConfig, ModelConfig};
pub use decoder::{Decoder, KvCache};
pub use device::{parse_device, parse_dtype};
pub use reward::RewardModel;
use weights::ParamStore;

/// Everything that can go wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file did not parse.
    #[error("{path}:{line}:{column}: {message}", path = path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A required file is absent.
    #[error("{path}: missing: {what}", path = path.display())]
    MissingFile {
        /// Where it was expected.
        path: PathBuf,
        /// What it should have held.
        what: &'static str,
    },
    /// A config field is missing or invalid.
    #[error("{path}: {field}: {message}", path = path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// `architectures` names a model hone does not implement.
    #[error("{path}: architectures: {found} is not supported (supported: {supported})", path = path.display())]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The architecture found.
        found: String,
        /// The supported ones, comma-separated.
        supported: String,
    },
    /// A weights file is malformed.
    #[error("{path}: {message}", path = path.display())]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer has ids the embedding matrix cannot hold.
    #[error("{path}: the tokenizer has {tokenizer} tokens but the model's embedding matrix has only {vocab} rows", path = path.display())]
    TokenizerTooLarge {
        /// The model directory.
        path: PathBuf,
        /// Tokens in the tokenizer.
        tokenizer: usize,
        /// Rows of the embedding.
        vocab: usize,
    },
    /// A device or dtype request that cannot be met.
    #[error("{0}")]
    Dtype(String),
    /// A device request that cannot be met.
    #[error("device: {0}")]
    Device(String),
    /// A tensor operation failed (shape errors name the tensor).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A loaded model: its config, its trainable parameters and the decoder that uses them.
pub struct Model {
    /// The resolved `config.json`.
    pub config: ModelConfig,
    /// Stop ids and special ids from `generation_config.json`.
    pub generation: GenerationConfig,
    store: Arc<ParamStore>,
    decoder: Decoder,
    source_dir: Option<PathBuf>,
}

impl Model {
    /// Loads a Hugging Face model directory onto `device`, converting weights to `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let generation = GenerationConfig::from_dir(dir, &config)?;
        let store = Arc::new(ParamStore::open(dir)?);
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        Ok(Self { config, generation, store, decoder, source_dir: Some(dir.to_path_buf()) })
    }

    /// A freshly initialised model (for tests and benchmarks), reproducible from `seed`.
    pub fn fresh(config: ModelConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self, ModelError> {
        let store = Arc::new(ParamStore::fresh(seed));
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        Ok(Self { config, generation: GenerationConfig::default(), store, decoder, source_dir: None })
    }

    /// A model from a directory's `config.json` (and `generation_config.json`, tokenizer files)
    /// with freshly initialised weights, reproducible from `seed`: pretraining from scratch.
    /// Saving it writes a complete model directory (the tokenizer files are copied from `dir`).
    pub fn scratch(dir: &Path, device: &Device, dtype: DType, seed: u64) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let generation = GenerationConfig::from_dir(dir, &config)?;
        let store = Arc::new(ParamStore::fresh(seed));
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        Ok(Self { config, generation, store, decoder, source_dir: Some(dir.to_path_buf()) })
    }

    /// The network.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Turns gradient checkpointing on or off ([`Decoder::set_gradient_checkpointing`]).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.decoder.set_gradient_checkpointing(on);
    }

    /// Sets the dtype the matmuls run in ([`Decoder::set_compute_dtype`]).
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.decoder.set_compute_dtype(dtype);
    }

    /// Number of parameters (a tied head counted once).
    pub fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Trainable parameters with their transformers names, in `named_parameters()` order. A tied
    /// LM head is the embedding: it appears once.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.store.vars()
    }

    /// Fails when the tokenizer has more ids than the embedding matrix has rows.
    pub fn check_tokenizer_len(&self, tokenizer_len: usize) -> Result<(), ModelError> {
        if tokenizer_len > self.config.vocab_size {
            return Err(ModelError::TokenizerTooLarge {
                path: self.source_dir.clone().unwrap_or_default(),
                tokenizer: tokenizer_len,
                vocab: self.config.vocab_size,
            });
        }
        Ok(())
    }

    /// Saves the weights (in `dtype`) and the config files as a model directory transformers can
    /// load; tokenizer files are copied from the directory the model came from. Each file is
    /// written durably ([`crate::durable::write_file`]: temporary name, fsync, rename, directory
    /// fsync), so a reader never sees half a file.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
        for (name, bytes) in self.files(dtype)? {
            let path = dir.join(&name);
            crate::durable::write_file(&path, &bytes).map_err(|source| ModelError::Io { path, source })?;
        }
        Ok(())
    }

    /// The files of a Hugging Face model directory holding this model's current weights (in
    /// `dtype`): `model.safetensors`, `config.json` and the tokenizer/generation files of the
    /// source directory.
    pub fn files(&self, dtype: DType) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
        let tensors: Vec<(String, Tensor)> =
            self.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let mut files = vec![("model.safetensors".to_string(), weights::safetensors_bytes(&tensors, dtype)?)];
        let mut config = self.config.raw.clone();
        if let Some(obj) = config.as_object_mut() {
            set_config_dtype(obj, dtype);
        }
        let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Dtype(e.to_string()))?;
        files.push(("config.json".into(), text.into_bytes()));
        if let Some(src) = &self.source_dir {
            for name in COMPANION_FILES {
                let from = src.join(name);
                if from.exists() {
                    let bytes = std::fs::read(&from).map_err(|source| ModelError::Io { path: from.clone(), source })?;
                    files.push(((*name).to_string(), bytes));
                }
            }
        }
        Ok(files)
    }
}

/// How a model being trained holds its numbers: weights (and AdamW's moments) in `master`,
/// matmuls in `compute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// The weights', gradients' and optimizer states' dtype.
    pub master: DType,
    /// The dtype the matmuls run in.
    pub compute: DType,
}

impl Precision {
    /// What a run's `dtype` means, as `bf16=True`/`fp16=True` in TRL: `f32` (and `f64`) is
    /// itself; `bf16` and `f16` multiply in that type over f32 master weights, so AdamW's updates
    /// and moments stay f32 and small updates do not vanish in bf16 rounding.
    pub fn for_training(dtype: DType) -> Self {
        let master = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        Self { master, compute: dtype }
    }

    /// Loads `dir` in this precision.
    pub fn load(self, dir: &Path, device: &Device) -> Result<Model, ModelError> {
        let mut model = Model::load(dir, device, self.master)?;
        model.set_compute_dtype(self.compute);
        Ok(model)
    }
}

/// Files of a model directory that travel with the weights unchanged.
const COMPANION_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Records `dtype` in a `config.json` object as transformers names it (`dtype`, and the legacy
/// `torch_dtype` where the file has one).
pub(crate) fn set_config_dtype(obj: &mut serde_json::Map<String, serde_json::Value>, dtype: DType) {
    let name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    obj.insert("dtype".into(), name.into());
    if obj.contains_key("torch_dtype") {
        obj.insert("torch_dtype".into(), name.into());
    }
}
