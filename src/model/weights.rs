//! The parameter store: Hugging Face safetensors in, trainable [`Var`]s out, and back to a model
//! directory transformers can load. Single files and sharded `*.safetensors.index.json` layouts.
//!
//! The store is a `VarBuilder` backend: the model asks for each tensor by its HF name, in module
//! order, and the store checks the shape, converts the dtype, and remembers the `Var`. That order
//! is the one the optimizer and checkpoints use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::rng::{seeded, unit_f64, StableRng};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::tensor_io::{SafetensorsOut, TensorFile};
use super::ModelError;

/// Where parameters come from when the store is asked for one it has not seen.
enum Source {
    /// Safetensors files, their headers read; each tensor is read from its file when the model
    /// requests it, so the files' bytes are never held (`model::tensor_io`). Each name maps to
    /// its file's index.
    Files { files: Vec<TensorFile>, index: HashMap<String, usize> },
    /// A fresh model, initialised from each tensor's hint and a seeded generator (candle's CPU
    /// generator cannot be seeded, so hone draws its own).
    Init(Box<Mutex<StableRng>>),
}

/// Trainable parameters in the order the model first requested them.
pub struct ParamStore {
    source: Source,
    /// Frozen: tensors are handed out detached, so no gradient is ever computed or kept for them
    /// (the base under a LoRA adapter). The store still holds each once, for saving and merging.
    frozen: bool,
    /// The dtype a frozen store keeps its matrices in, whatever dtype the model asks for (a bf16
    /// base under f32 adapters); vectors (norms, biases) stay in the requested dtype.
    matrices: Option<DType>,
    params: Mutex<Vec<(String, Var)>>,
    by_name: Mutex<HashMap<String, usize>>,
}

/// A named trainable tensor.
pub type NamedVar = (String, Var);

impl ParamStore {
    /// Opens the safetensors of a model directory: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let index = super::config::read_json(&index_path)?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Config {
                path: index_path.clone(),
                field: "weight_map".into(),
                message: "missing or not an object".into(),
            })?;
            let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(ModelError::MissingFile {
                path: single,
                what: "model weights (model.safetensors or model.safetensors.index.json)",
            });
        };
        Self::open_files(files)
    }

    /// Opens the given safetensors files (e.g. a PEFT adapter's `adapter_model.safetensors`).
    pub fn open_files(files: Vec<PathBuf>) -> Result<Self, ModelError> {
        let files = files.iter().map(|p| TensorFile::open(p)).collect::<Result<Vec<_>, _>>()?;
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                index.insert(name, i);
            }
        }
        Ok(Self::with_source(Source::Files { files, index }))
    }

    /// A store that initialises every requested tensor from its hint (for fresh models and
    /// benchmarks), reproducibly from `seed`.
    pub fn fresh(seed: u64) -> Self {
        Self::with_source(Source::Init(Box::new(Mutex::new(seeded(seed)))))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            frozen: false,
            matrices: None,
            params: Mutex::new(Vec::new()),
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// The same store, frozen: every tensor it hands out is detached from autograd.
    #[must_use]
    pub fn frozen(mut self) -> Self {
        self.frozen = true;
        self
    }

    /// The same store, frozen, with its matrices (rank 2: projections, embedding, LM head) held in
    /// `dtype`: a frozen base is never updated, so storing it narrower loses nothing to rounded
    /// updates and halves its memory in bf16.
    #[must_use]
    pub fn frozen_in(self, dtype: DType) -> Self {
        Self { matrices: Some(dtype), ..self.frozen() }
    }

    /// The tensor of this name, if the model requested it.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        let by_name = self.by_name.lock().ok()?;
        let params = self.params.lock().ok()?;
        by_name.get(name).map(|&i| params[i].1.as_tensor().detach())
    }

    /// Tensors of the underlying files the model never requested, sorted, with their file.
    pub fn unused(&self) -> Vec<(String, PathBuf)> {
        let Source::Files { files, index } = &self.source else { return Vec::new() };
        let Ok(by_name) = self.by_name.lock() else { return Vec::new() };
        let mut out: Vec<(String, PathBuf)> = index
            .iter()
            .filter(|(n, _)| !by_name.contains_key(*n))
            .map(|(n, &f)| (n.clone(), files[f].path().to_path_buf()))
            .collect();
        out.sort();
        out
    }

    /// Whether the underlying files hold a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        match &self.source {
            Source::Files { index, .. } => index.contains_key(name),
            Source::Init(_) => false,
        }
    }

    /// A `VarBuilder` over this store.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(Arc::clone(self))), dtype, device.clone())
    }

    /// All parameters, in request order.
    pub fn vars(&self) -> Vec<NamedVar> {
        self.params.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn fetch(
        &self,
        shape: &Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let by_name = self.by_name.lock().map_err(|_| candle_core::Error::Msg("parameter store poisoned".into()))?;
        if let Some(&i) = by_name.get(name) {
            let params = self.params.lock().map_err(|_| candle_core::Error::Msg("parameter store poisoned".into()))?;
            let t = if self.frozen { params[i].1.as_tensor().detach() } else { params[i].1.as_tensor().clone() };
            if t.shape() != shape {
                candle_core::bail!("tensor {name}: expected shape {shape:?}, found {:?}", t.shape());
            }
            return Ok(t);
        }
        drop(by_name);
        let dtype = match self.matrices {
            Some(narrow) if shape.rank() == 2 => narrow,
            _ => dtype,
        };
        let var = match &self.source {
            Source::Files { files, index } => {
                let Some(&file) = index.get(name) else {
                    let files: Vec<String> = files.iter().map(|f| f.path().display().to_string()).collect();
                    candle_core::bail!("tensor {name} is missing from {}", files.join(", "));
                };
                let file = &files[file];
                let path = file.path();
                if file.shape(name) != Some(shape.dims()) {
                    candle_core::bail!(
                        "tensor {name} in {}: expected shape {:?} from config.json, found {:?}",
                        path.display(),
                        shape.dims(),
                        file.shape(name).unwrap_or_default()
                    );
                }
                let t = file.read(name, device)?;
                if !t.dtype().is_float() {
                    candle_core::bail!(
                        "tensor {name} in {} has dtype {:?}; hone loads float weights only",
                        path.display(),
                        t.dtype()
                    );
                }
                Var::from_tensor(&t.to_dtype(dtype)?)?
            }
            Source::Init(rng) => {
                let mut rng = rng.lock().map_err(|_| candle_core::Error::Msg("parameter store poisoned".into()))?;
                Var::from_tensor(&init_tensor(shape, init, &mut rng, device)?.to_dtype(dtype)?)?
            }
        };
        let tensor = if self.frozen { var.as_tensor().detach() } else { var.as_tensor().clone() };
        let mut params = self.params.lock().map_err(|_| candle_core::Error::Msg("parameter store poisoned".into()))?;
        let mut by_name =
            self.by_name.lock().map_err(|_| candle_core::Error::Msg("parameter store poisoned".into()))?;
        by_name.insert(name.to_string(), params.len());
        params.push((name.to_string(), var));
        Ok(tensor)
    }
}

/// Draws a tensor for an `Init` hint from `rng` (normal draws by Box-Muller).
fn init_tensor(shape: &Shape, init: Init, rng: &mut StableRng, device: &Device) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let values: Vec<f32> = match init {
        Init::Const(c) => {
            #[allow(clippy::cast_possible_truncation)]
            let c = c as f32;
            vec![c; n]
        }
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| {
                let u1: f64 = unit_f64(rng).max(f64::MIN_POSITIVE);
                let u2: f64 = unit_f64(rng);
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                #[allow(clippy::cast_possible_truncation)]
                let v = (mean + stdev * z) as f32;
                v
            })
            .collect(),
        Init::Uniform { lo, up } => (0..n)
            .map(|_| {
                #[allow(clippy::cast_possible_truncation)]
                let v = (lo + (up - lo) * unit_f64(rng)) as f32;
                v
            })
            .collect(),
        Init::Kaiming { .. } => candle_core::bail!("hone's models do not request Kaiming init"),
    };
    Tensor::from_vec(values, shape.clone(), device)
}

struct Backend(Arc<ParamStore>);

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.fetch(&s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor {name}: hone always requests tensors with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.has_tensor(name)
    }
}

/// `tensors` as the bytes of one safetensors file in `dtype`, names sorted, with the
/// `format: pt` metadata transformers expects ([`SafetensorsOut`] writes the same bytes without
/// holding them).
pub fn safetensors_bytes(tensors: &[(String, Tensor)], dtype: DType) -> Result<Vec<u8>, ModelError> {
    SafetensorsOut::new(tensors.to_vec(), dtype)?.to_bytes()
}
