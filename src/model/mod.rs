//! Decoder-only language models in candle: the Llama and Qwen2 families, loaded from and saved to
//! Hugging Face model directories, with generation through a KV cache.
//!
//! Owns tensors and model directories; never touches run directories or the terminal.

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod frozen;
pub mod fused;
pub mod generate;
pub mod lora;
pub mod ops;
pub mod reward;
pub mod tensor_io;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

pub use config::{Family, GenerationConfig, ModelConfig};
pub use decoder::{Decoder, KvCache};
pub use device::{parse_device, parse_dtype};
pub use lora::{AdapterInit, LoraSpec, Targets};
pub use reward::RewardModel;
pub use tensor_io::{FileOut, SafetensorsOut};
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
    lora: Option<Attached>,
}

/// The LoRA adapter of a model: its settings, weights and switch.
struct Attached {
    spec: LoraSpec,
    store: Arc<ParamStore>,
    switch: Arc<lora::LoraSwitch>,
    /// `base_model_name_or_path` of the adapter files written.
    base_name: String,
}

impl Model {
    /// Loads a Hugging Face model directory onto `device`, converting weights to `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let generation = GenerationConfig::from_dir(dir, &config)?;
        let store = Arc::new(ParamStore::open(dir)?);
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        Ok(Self { config, generation, store, decoder, source_dir: Some(dir.to_path_buf()), lora: None })
    }

    /// Loads a model directory as a frozen base (held once, no gradients) with a LoRA adapter,
    /// fresh or from a PEFT adapter directory, base and adapter in `dtype`. Only the adapter is
    /// trainable ([`Model::parameters`]), and [`Model::files`] are the adapter's files.
    pub fn load_with_adapter(
        dir: &Path,
        device: &Device,
        dtype: DType,
        adapter: &AdapterInit,
    ) -> Result<Self, ModelError> {
        let base = ParamStore::open(dir)?.frozen();
        Self::with_adapter(ModelConfig::from_dir(dir)?, Some(dir), base, (dtype, device), adapter)
    }

    /// [`Model::load_with_adapter`] for training in `precision`: the adapters (and so their
    /// gradients and AdamW moments) and the activations in the master dtype, the frozen base's
    /// matrices in [`Precision::frozen_base`] (bf16 for a bf16 run: half the base's memory).
    /// The compute dtype is set.
    pub fn load_lora_training(
        dir: &Path,
        device: &Device,
        precision: Precision,
        adapter: &AdapterInit,
    ) -> Result<Self, ModelError> {
        let base = ParamStore::open(dir)?.frozen_in(precision.frozen_base());
        let mut model =
            Self::with_adapter(ModelConfig::from_dir(dir)?, Some(dir), base, (precision.master, device), adapter)?;
        model.set_compute_dtype(precision.compute);
        Ok(model)
    }

    /// A freshly initialised frozen base (reproducible from `seed`) with a fresh adapter of
    /// `spec`, held as [`Model::load_lora_training`] holds them (benchmarks and tests).
    pub fn fresh_with_adapter(
        config: ModelConfig,
        device: &Device,
        precision: Precision,
        spec: &LoraSpec,
        seed: u64,
    ) -> Result<Self, ModelError> {
        let base = ParamStore::fresh(seed).frozen_in(precision.frozen_base());
        let adapter = AdapterInit::Fresh { spec: spec.clone(), seed: seed.wrapping_add(1) };
        let mut model = Self::with_adapter(config, None, base, (precision.master, device), &adapter)?;
        model.set_compute_dtype(precision.compute);
        Ok(model)
    }

    /// Builds the decoder over the frozen `base` store with `adapter` attached, checking that
    /// the adapter's targets and tensors fit the model. `dir` is the base's model directory.
    fn with_adapter(
        config: ModelConfig,
        dir: Option<&Path>,
        base: ParamStore,
        (dtype, device): (DType, &Device),
        adapter: &AdapterInit,
    ) -> Result<Self, ModelError> {
        let generation = match dir {
            Some(d) => GenerationConfig::from_dir(d, &config)?,
            None => GenerationConfig::default(),
        };
        let store = Arc::new(base);
        let (spec, adapter_store, origin) = match adapter {
            AdapterInit::Fresh { spec, seed } => (spec.clone(), ParamStore::fresh(*seed), None),
            AdapterInit::Dir(adir) => {
                let cfg = lora::AdapterConfig::read(adir)?;
                let weights = adir.join(lora::ADAPTER_WEIGHTS);
                if !weights.is_file() {
                    return Err(ModelError::MissingFile { path: weights, what: "the adapter's weights" });
                }
                (cfg.spec, ParamStore::open_files(vec![weights])?, Some(cfg.path))
            }
        };
        if spec.r == 0 {
            return Err(ModelError::Dtype("LoRA rank r must be at least 1".into()));
        }
        let switch = Arc::new(lora::LoraSwitch::default());
        let build = lora::LoraBuild::new(spec.clone(), Arc::new(adapter_store), Arc::clone(&switch));
        let decoder =
            Decoder::with_lora(&config, &store.var_builder(dtype, device), Some(&build)).map_err(
                |e| match &origin {
                    Some(path) => {
                        ModelError::Weights { path: path.with_file_name(lora::ADAPTER_WEIGHTS), message: e.to_string() }
                    }
                    None => e.into(),
                },
            )?;
        let base_name = dir.map_or_else(|| "<fresh base>".to_string(), |d| d.display().to_string());
        check_adapter_fit(&config, &build, origin.as_deref(), &base_name)?;
        let attached = Attached { spec, store: Arc::clone(&build.store), switch, base_name };
        let source_dir = dir.map(Path::to_path_buf);
        Ok(Self { config, generation, store, decoder, source_dir, lora: Some(attached) })
    }

    /// A freshly initialised model (for tests and benchmarks), reproducible from `seed`.
    pub fn fresh(config: ModelConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self, ModelError> {
        let store = Arc::new(ParamStore::fresh(seed));
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        Ok(Self { config, generation: GenerationConfig::default(), store, decoder, source_dir: None, lora: None })
    }

    /// A model from a directory's `config.json` (and `generation_config.json`, tokenizer files)
    /// with freshly initialised weights, reproducible from `seed`: pretraining from scratch.
    /// Saving it writes a complete model directory (the tokenizer files are copied from `dir`).
    pub fn scratch(dir: &Path, device: &Device, dtype: DType, seed: u64) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let generation = GenerationConfig::from_dir(dir, &config)?;
        let store = Arc::new(ParamStore::fresh(seed));
        let decoder = Decoder::new(&config, &store.var_builder(dtype, device))?;
        Ok(Self { config, generation, store, decoder, source_dir: Some(dir.to_path_buf()), lora: None })
    }

    /// The LoRA settings, when the model carries an adapter.
    pub fn lora(&self) -> Option<&LoraSpec> {
        self.lora.as_ref().map(|l| &l.spec)
    }

    /// Turns the adapters on or off (off: the frozen base, e.g. as DPO's reference). No-op
    /// without an adapter.
    pub fn set_adapters_enabled(&self, on: bool) {
        if let Some(l) = &self.lora {
            l.switch.set_enabled(on);
        }
    }

    /// Dropout masks of the adapters for the next forwards come from `seed` (replayable);
    /// `None`: no dropout (evaluation, scoring, reference log-probs).
    pub fn set_dropout_seed(&self, seed: Option<u64>) {
        if let Some(l) = &self.lora {
            l.switch.set_dropout_seed(seed);
        }
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

    /// Bytes the model's weights occupy: every parameter at its stored dtype (a LoRA's frozen
    /// base and its adapters both), what `memory::estimate` calls weights.
    pub fn weight_bytes(&self) -> u64 {
        let held = |vars: Vec<(String, Var)>| -> u64 {
            vars.iter().map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64).sum()
        };
        held(self.store.vars()) + self.lora.as_ref().map_or(0, |l| held(l.store.vars()))
    }

    /// Trainable parameters with their transformers names, in `named_parameters()` order. A tied
    /// LM head is the embedding: it appears once. With a LoRA adapter, only the adapter's A and B
    /// (PEFT's keys, PEFT's order); the base is frozen.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(l) => l.store.vars(),
            None => self.store.vars(),
        }
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
    /// With a LoRA adapter: the PEFT adapter directory's files instead (`adapter_config.json`,
    /// `adapter_model.safetensors`); [`Model::merged_files`] gives the full model.
    pub fn files(&self, dtype: DType) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
        in_memory(self.files_out(dtype)?)
    }

    /// [`Model::files`] with the weights left as tensors, serialised only as each file is
    /// written ([`FileOut::write_to`]): a checkpoint then never holds the weights twice. Write
    /// them before the model is updated again.
    pub fn files_out(&self, dtype: DType) -> Result<Vec<(String, FileOut)>, ModelError> {
        match &self.lora {
            Some(l) => Self::adapter_files(l, dtype),
            None => self.model_files(dtype, None),
        }
    }

    /// A full model directory's files with every adapter merged into its base weight
    /// (`W + scaling · B A`); without an adapter, [`Model::files`].
    pub fn merged_files(&self, dtype: DType) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
        in_memory(self.model_files(dtype, self.lora.as_ref())?)
    }

    fn adapter_files(l: &Attached, dtype: DType) -> Result<Vec<(String, FileOut)>, ModelError> {
        let tensors: Vec<(String, Tensor)> =
            l.store.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let config = lora::adapter_config_json(&l.spec, &l.base_name);
        let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Dtype(e.to_string()))?;
        Ok(vec![
            (lora::ADAPTER_CONFIG.to_string(), FileOut::Bytes(text.into_bytes())),
            (lora::ADAPTER_WEIGHTS.to_string(), FileOut::Tensors(SafetensorsOut::new(tensors, dtype)?)),
        ])
    }

    fn model_files(&self, dtype: DType, merge: Option<&Attached>) -> Result<Vec<(String, FileOut)>, ModelError> {
        let mut tensors: Vec<(String, Tensor)> =
            self.store.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        if let Some(l) = merge {
            let scaling = l.spec.scaling();
            for (name, t) in &mut tensors {
                let Some(module) = name.strip_suffix(".weight") else { continue };
                let key = lora::peft_key(module);
                if let (Some(a), Some(b)) =
                    (l.store.get(&format!("{key}.lora_A.weight")), l.store.get(&format!("{key}.lora_B.weight")))
                {
                    *t = lora::merged_weight(t, &a, &b, scaling)?;
                }
            }
        }
        let mut files = vec![("model.safetensors".to_string(), FileOut::Tensors(SafetensorsOut::new(tensors, dtype)?))];
        let mut config = self.config.raw.clone();
        if let Some(obj) = config.as_object_mut() {
            set_config_dtype(obj, dtype);
        }
        let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Dtype(e.to_string()))?;
        files.push(("config.json".into(), FileOut::Bytes(text.into_bytes())));
        files.extend(companion_files(self.source_dir.as_deref())?.into_iter().map(|(n, b)| (n, FileOut::Bytes(b))));
        Ok(files)
    }
}

/// Files with their contents in memory.
fn in_memory(files: Vec<(String, FileOut)>) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
    files.into_iter().map(|(name, f)| Ok((name, f.into_bytes()?))).collect()
}

/// Refuses an adapter whose `target_modules` pick no projection of the model, or whose weights
/// hold tensors no targeted projection asked for (another model's adapter).
fn check_adapter_fit(
    config: &ModelConfig,
    build: &lora::LoraBuild,
    origin: Option<&Path>,
    base_name: &str,
) -> Result<(), ModelError> {
    let modules = build.modules();
    let unmatched = build.spec.targets.unmatched(&modules);
    if modules.is_empty() || !unmatched.is_empty() {
        return Err(ModelError::Config {
            path: origin.map_or_else(|| PathBuf::from("[model] lora"), Path::to_path_buf),
            field: "target_modules".into(),
            message: format!(
                "{} match no projection of {base_name} (hone adapts {})",
                if unmatched.is_empty() { "the targets".to_string() } else { unmatched.join(", ") },
                lora::ALL_LINEAR.join(", ")
            ),
        });
    }
    debug_assert!(modules.iter().all(|m| lora::projection_modules(config.num_hidden_layers).contains(m)));
    let unused = build.store.unused();
    if let Some((name, file)) = unused.first() {
        return Err(ModelError::Weights {
            path: file.clone(),
            message: format!(
                "{name}: {} tensor(s) of the adapter belong to no targeted projection of {base_name} (target_modules \
                 and the weights disagree, or the adapter is for another model)",
                unused.len(),
            ),
        });
    }
    Ok(())
}

/// The tokenizer and generation files of the model directory `src` that a saved directory
/// carries along (those of [`COMPANION_FILES`] that exist), as (name, bytes).
fn companion_files(src: Option<&std::path::Path>) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
    let Some(src) = src else { return Ok(Vec::new()) };
    let mut files = Vec::new();
    for name in COMPANION_FILES {
        let from = src.join(name);
        if from.exists() {
            let bytes = std::fs::read(&from).map_err(|source| ModelError::Io { path: from.clone(), source })?;
            files.push(((*name).to_string(), bytes));
        }
    }
    Ok(files)
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

    /// The dtype a frozen LoRA base keeps its matrices in: the compute dtype when it is a 16-bit
    /// float (the matmuls read it as is, and nothing of it is ever updated, so no update is lost
    /// to rounding), else the master dtype.
    pub fn frozen_base(self) -> DType {
        match self.compute {
            DType::BF16 | DType::F16 => self.compute,
            _ => self.master,
        }
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
