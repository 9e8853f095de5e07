//! LoRA adapters as PEFT defines them: the projection type every linear layer of the decoder is
//! built as ([`Projection`]: a frozen base weight plus an optional low-rank adapter), the adapter
//! settings ([`LoraSpec`]) and the PEFT adapter directory (`adapter_config.json` +
//! `adapter_model.safetensors`) read and written with PEFT's key names and fields.
//!
//! The forward adds `(dropout(x) Aᵀ) Bᵀ · scaling` to the base output and never forms `W + BA`;
//! only [`merged_weight`] (export) does. Owns no files beyond the adapter directory's two.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde_json::{json, Map, Value};

use super::ops::Linear;
use super::weights::ParamStore;
use super::ModelError;
use crate::rng::{seeded, splitmix64, unit_f32, StableRng};

/// The seven projections `target_modules = "all-linear"` means for the Llama/Qwen2 decoder (PEFT
/// excludes the output layer), in module order.
pub const ALL_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// PEFT's default `target_modules` for the Llama and Qwen2 families (its
/// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`), used when none are given.
pub const DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The adapter file names of a PEFT adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter weights of a PEFT adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Which modules get an adapter, as PEFT's `target_modules` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// `"all-linear"`: every projection of the decoder layers.
    AllLinear,
    /// A list: a module is targeted when its name equals an entry or ends with `.entry`.
    Names(Vec<String>),
    /// Any other string: a regular expression the whole module name must match.
    Regex(String),
}

impl Targets {
    /// Whether the module named `module` (e.g. `model.layers.0.self_attn.q_proj`) is targeted.
    pub fn matches(&self, module: &str) -> bool {
        let leaf = module.rsplit('.').next().unwrap_or(module);
        match self {
            Self::AllLinear => ALL_LINEAR.contains(&leaf),
            Self::Names(names) => names.iter().any(|n| module == n || module.ends_with(&format!(".{n}"))),
            Self::Regex(re) => regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(module)),
        }
    }

    /// The entries that matched none of `modules` (empty for `all-linear` and a regex that matched
    /// something).
    pub fn unmatched(&self, modules: &[String]) -> Vec<String> {
        match self {
            Self::AllLinear => Vec::new(),
            Self::Names(names) => names
                .iter()
                .filter(|n| !modules.iter().any(|m| Self::Names(vec![(*n).clone()]).matches(m)))
                .cloned()
                .collect(),
            Self::Regex(re) => {
                if modules.is_empty() {
                    vec![re.clone()]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// `target_modules` as PEFT's JSON spells it (`all-linear` as the seven names, sorted).
    pub fn to_json(&self) -> Value {
        match self {
            Self::AllLinear => {
                let mut names: Vec<&str> = ALL_LINEAR.to_vec();
                names.sort_unstable();
                json!(names)
            }
            Self::Names(names) => json!(names),
            Self::Regex(re) => json!(re),
        }
    }

    /// Checks a regular expression compiles (lists and `all-linear` always do).
    pub fn check(&self) -> std::result::Result<(), String> {
        match self {
            Self::Regex(re) => {
                regex::Regex::new(re).map(|_| ()).map_err(|e| format!("not a valid regular expression: {e}"))
            }
            Self::Names(names) if names.is_empty() => Err("an empty list targets nothing".into()),
            _ => Ok(()),
        }
    }
}

/// A LoRA adapter's shape and behaviour: PEFT's `r`, `lora_alpha`, `lora_dropout`,
/// `target_modules` and `use_rslora`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`: the probability of zeroing an input element of the adapter path.
    pub dropout: f64,
    /// `target_modules`.
    pub targets: Targets,
    /// `use_rslora`: scaling `alpha / sqrt(r)` instead of `alpha / r`.
    pub rslora: bool,
}

impl LoraSpec {
    /// The factor the adapter's output is multiplied by.
    pub fn scaling(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let r = self.r as f64;
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

/// Where a model's adapter comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterInit {
    /// A fresh adapter as PEFT initialises one (A Kaiming-uniform, B zero), drawn from `seed`.
    Fresh {
        /// Its settings.
        spec: LoraSpec,
        /// The seed of A's draws.
        seed: u64,
    },
    /// A PEFT adapter directory; its settings come from its `adapter_config.json`.
    Dir(PathBuf),
}

fn config_error(path: &Path, field: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config { path: path.to_path_buf(), field: field.into(), message: message.into() }
}

/// An adapter directory's `adapter_config.json`, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// The settings it describes.
    pub spec: LoraSpec,
    /// `base_model_name_or_path`, when it has one.
    pub base_model: Option<String>,
    /// The file.
    pub path: PathBuf,
}

impl AdapterConfig {
    /// Reads `DIR/adapter_config.json`, refusing what hone does not implement (DoRA, biases,
    /// per-module ranks, layer selection, extra trained modules) with the file and field named.
    pub fn read(dir: &Path) -> std::result::Result<Self, ModelError> {
        let path = dir.join(ADAPTER_CONFIG);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path,
                what: "adapter_config.json (is this a PEFT adapter directory, as save_pretrained writes one?)",
            });
        }
        let value = super::config::read_json(&path)?;
        let obj = value.as_object().ok_or_else(|| config_error(&path, "", "not a JSON object"))?;
        Self::from_object(obj, &path)
    }

    fn from_object(obj: &Map<String, Value>, path: &Path) -> std::result::Result<Self, ModelError> {
        let text = |field: &str| obj.get(field).and_then(Value::as_str);
        match text("peft_type") {
            Some("LORA") => {}
            other => {
                return Err(config_error(
                    path,
                    "peft_type",
                    format!("{other:?}: hone loads LoRA adapters (\"LORA\") only"),
                ))
            }
        }
        if let Some(task) = obj.get("task_type").filter(|v| !v.is_null()) {
            if task.as_str() != Some("CAUSAL_LM") {
                return Err(config_error(
                    path,
                    "task_type",
                    format!("{task}: hone's models are causal LMs (\"CAUSAL_LM\")"),
                ));
            }
        }
        let r = match obj.get("r") {
            None => 8,
            Some(v) => v
                .as_u64()
                .and_then(|r| usize::try_from(r).ok())
                .filter(|&r| r > 0)
                .ok_or_else(|| config_error(path, "r", format!("{v}: the rank must be a positive integer")))?,
        };
        let alpha = match obj.get("lora_alpha") {
            None => 8.0,
            Some(v) => v
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| config_error(path, "lora_alpha", format!("{v}: must be a number")))?,
        };
        let dropout = match obj.get("lora_dropout") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| config_error(path, "lora_dropout", format!("{v}: must be a number in [0, 1)")))?,
        };
        let targets = match obj.get("target_modules") {
            None | Some(Value::Null) => Targets::Names(DEFAULT_TARGETS.iter().map(ToString::to_string).collect()),
            Some(Value::String(s)) if s == "all-linear" => Targets::AllLinear,
            Some(Value::String(s)) => Targets::Regex(s.clone()),
            Some(Value::Array(items)) => Targets::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| config_error(path, "target_modules", "every entry must be a string"))?,
            ),
            Some(other) => {
                return Err(config_error(path, "target_modules", format!("{other}: must be a string or a list")))
            }
        };
        targets.check().map_err(|m| config_error(path, "target_modules", m))?;
        let targets = match targets {
            // The seven names, however listed, are `all-linear` (hone writes it that way).
            Targets::Names(n) if n.len() == ALL_LINEAR.len() && ALL_LINEAR.iter().all(|a| n.iter().any(|x| x == a)) => {
                Targets::AllLinear
            }
            t => t,
        };
        let flag = |field: &str| obj.get(field).and_then(Value::as_bool).unwrap_or(false);
        for field in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
            if flag(field) {
                return Err(config_error(path, field, "true is not supported by hone (only plain LoRA)"));
            }
        }
        if let Some(bias) = obj.get("bias").filter(|v| v.as_str() != Some("none")) {
            return Err(config_error(path, "bias", format!("{bias}: hone trains no biases (\"none\" only)")));
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if obj.get(field).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                return Err(config_error(path, field, "per-module ranks or alphas are not supported by hone"));
            }
        }
        for field in [
            "layers_to_transform",
            "layers_pattern",
            "modules_to_save",
            "exclude_modules",
            "layer_replication",
            "target_parameters",
            "trainable_token_indices",
        ] {
            let set = obj.get(field).is_some_and(|v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(m) => !m.is_empty(),
                _ => true,
            });
            if set {
                return Err(config_error(path, field, "is set, but hone supports only adapters without it"));
            }
        }
        let spec = LoraSpec { r, alpha, dropout, targets, rslora: flag("use_rslora") };
        Ok(Self { spec, base_model: text("base_model_name_or_path").map(String::from), path: path.to_path_buf() })
    }
}

/// `adapter_config.json` as PEFT 0.21 writes it for `spec` (every field, keys sorted), except
/// `peft_version`, which would claim a PEFT release wrote the file.
pub fn adapter_config_json(spec: &LoraSpec, base_model: &str) -> Value {
    let mut fields = std::collections::BTreeMap::new();
    for key in [
        "alora_invocation_tokens",
        "arrow_config",
        "auto_mapping",
        "corda_config",
        "eva_config",
        "exclude_modules",
        "kasa_config",
        "layer_replication",
        "layers_pattern",
        "layers_to_transform",
        "lora_ga_config",
        "megatron_config",
        "modules_to_save",
        "monteclora_config",
        "revision",
        "target_parameters",
        "trainable_token_indices",
        "use_bdlora",
        "velora_config",
    ] {
        fields.insert(key, Value::Null);
    }
    for key in ["ensure_weight_tying", "fan_in_fan_out", "lora_bias", "use_dora", "use_qalora"] {
        fields.insert(key, Value::Bool(false));
    }
    fields.insert("alpha_pattern", json!({}));
    fields.insert("rank_pattern", json!({}));
    fields.insert("loftq_config", json!({}));
    fields.insert("base_model_name_or_path", json!(base_model));
    fields.insert("bias", json!("none"));
    fields.insert("inference_mode", json!(true));
    fields.insert("init_lora_weights", json!(true));
    // PEFT writes an integral alpha as an integer.
    #[allow(clippy::cast_possible_truncation)]
    let alpha =
        if spec.alpha.fract() == 0.0 && spec.alpha.abs() < 1e15 { json!(spec.alpha as i64) } else { json!(spec.alpha) };
    fields.insert("lora_alpha", alpha);
    fields.insert("lora_dropout", json!(spec.dropout));
    fields.insert("megatron_core", json!("megatron.core"));
    fields.insert("peft_type", json!("LORA"));
    fields.insert("qalora_group_size", json!(16));
    fields.insert("r", json!(spec.r));
    fields.insert("target_modules", spec.targets.to_json());
    fields.insert("task_type", json!("CAUSAL_LM"));
    fields.insert("use_rslora", json!(spec.rslora));
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The names of the projections of a decoder with `layers` layers, in module order: what
/// `target_modules` is matched against.
pub fn projection_modules(layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|i| {
            ALL_LINEAR.iter().map(move |p| {
                let block = if p.ends_with("_proj") && ["q_proj", "k_proj", "v_proj", "o_proj"].contains(p) {
                    "self_attn"
                } else {
                    "mlp"
                };
                format!("model.layers.{i}.{block}.{p}")
            })
        })
        .collect()
}

/// The PEFT key prefix of the adapter of module `module` (`model.layers.0.self_attn.q_proj`).
pub fn peft_key(module: &str) -> String {
    format!("base_model.model.{module}")
}

/// Switches shared by every adapter of one model: adapters on or off (the DPO reference is the
/// base with them off), and the dropout generator of the current training forward (none: no
/// dropout, as in PEFT's eval mode).
#[derive(Debug)]
pub struct LoraSwitch {
    enabled: AtomicBool,
    dropout: Mutex<Option<StableRng>>,
}

impl Default for LoraSwitch {
    fn default() -> Self {
        Self { enabled: AtomicBool::new(true), dropout: Mutex::new(None) }
    }
}

impl LoraSwitch {
    /// Turns every adapter on or off.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    /// Whether adapters are on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Dropout masks for the next forwards drawn from a generator seeded with `seed` (the same
    /// seed replays the same masks); `None` turns dropout off.
    pub fn set_dropout_seed(&self, seed: Option<u64>) {
        if let Ok(mut d) = self.dropout.lock() {
            *d = seed.map(|s| seeded(splitmix64(s ^ 0x4C6F_5241_4472_6F70)));
        }
    }
}

/// What the decoder needs to give its projections adapters: the settings, the adapter weights'
/// store and the shared switch.
pub struct LoraBuild {
    /// Settings.
    pub spec: LoraSpec,
    /// Where the A and B tensors come from (fresh or an adapter file), by PEFT key.
    pub store: Arc<ParamStore>,
    /// Shared by every adapter built.
    pub switch: Arc<LoraSwitch>,
    /// Names of the modules given an adapter, in build order.
    modules: Mutex<Vec<String>>,
}

impl LoraBuild {
    /// A builder over `store`.
    pub fn new(spec: LoraSpec, store: Arc<ParamStore>, switch: Arc<LoraSwitch>) -> Self {
        Self { spec, store, switch, modules: Mutex::new(Vec::new()) }
    }

    /// The modules given an adapter so far.
    pub fn modules(&self) -> Vec<String> {
        self.modules.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn adapter(&self, module: &str, out: usize, inp: usize, dtype: DType, device: &Device) -> Result<Option<Adapter>> {
        if !self.spec.targets.matches(module) {
            return Ok(None);
        }
        let vb = self.store.var_builder(dtype, device).pp(peft_key(module));
        // PEFT's init: A as torch's nn.Linear default (Kaiming-uniform with a = sqrt(5), i.e.
        // U(-1/sqrt(in), 1/sqrt(in))), B zero, so a fresh adapter starts as the base model.
        #[allow(clippy::cast_precision_loss)]
        let bound = 1.0 / (inp as f64).sqrt();
        let a =
            vb.pp("lora_A").get_with_hints((self.spec.r, inp), "weight", Init::Uniform { lo: -bound, up: bound })?;
        let b = vb.pp("lora_B").get_with_hints((out, self.spec.r), "weight", Init::Const(0.0))?;
        if let Ok(mut m) = self.modules.lock() {
            m.push(module.to_string());
        }
        Ok(Some(Adapter {
            a,
            b,
            scaling: self.spec.scaling(),
            dropout: self.spec.dropout,
            switch: Arc::clone(&self.switch),
        }))
    }
}

/// One low-rank adapter: `[r, in]` A, `[out, r]` B.
#[derive(Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scaling: f64,
    dropout: f64,
    switch: Arc<LoraSwitch>,
}

impl Adapter {
    /// `dropout(x)` with a mask from the switch's generator (inverted dropout, as torch's).
    fn dropped(&self, xs: &Tensor) -> Result<Tensor> {
        if self.dropout <= 0.0 {
            return Ok(xs.clone());
        }
        let mut guard = self.switch.dropout.lock().map_err(|_| candle_core::Error::Msg("dropout poisoned".into()))?;
        let Some(rng) = guard.as_mut() else { return Ok(xs.clone()) };
        #[allow(clippy::cast_possible_truncation)]
        let (p, keep) = (self.dropout as f32, (1.0 / (1.0 - self.dropout)) as f32);
        let mask: Vec<f32> = (0..xs.elem_count()).map(|_| if unit_f32(rng) < p { 0.0 } else { keep }).collect();
        xs * Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?
    }

    /// `(dropout(x) Aᵀ) Bᵀ · scaling` over rows `[n, in]`.
    fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        let x = self.dropped(&rows.to_dtype(self.a.dtype())?)?;
        (x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scaling)?.to_dtype(rows.dtype())
    }
}

/// A linear projection whose weight may carry a LoRA adapter. Without one it is the plain
/// [`Linear`]; with one the adapter's output is added, and the weight is never merged.
#[derive(Clone)]
pub struct Projection {
    base: Linear,
    adapter: Option<Adapter>,
}

impl Projection {
    /// Builds the projection at `vb`'s path (`.weight`, `.bias`), with an adapter when `lora`
    /// targets it. With `lora` the base is frozen, targeted or not.
    pub fn new(base: Linear, vb: &VarBuilder, out: usize, inp: usize, lora: Option<&LoraBuild>) -> Result<Self> {
        match lora {
            Some(l) => {
                Ok(Self { base: base.frozen(), adapter: l.adapter(&vb.prefix(), out, inp, vb.dtype(), vb.device())? })
            }
            None => Ok(Self { base, adapter: None }),
        }
    }

    /// The `[out, in]` base weight.
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    /// The dtype the base matmul runs in (mixed precision); the adapter runs in its own dtype.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.base.set_compute_dtype(dtype);
    }
}

impl Module for Projection {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = self.base.forward(xs)?;
        let Some(adapter) = self.adapter.as_ref().filter(|a| a.switch.enabled()) else { return Ok(out) };
        let dims = xs.dims();
        let (last, lead) = dims.split_last().ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows: usize = lead.iter().product();
        if lead.len() == 1 {
            return out + adapter.forward(xs)?;
        }
        let delta = adapter.forward(&xs.reshape((rows, *last))?)?;
        let delta = delta.reshape(out.shape())?;
        out + delta
    }
}

/// `W + scaling · B A`, the weight of a merged projection (export only).
pub fn merged_weight(w: &Tensor, a: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scaling)?;
    (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_as_peft_does() {
        let names = Targets::Names(vec!["q_proj".into(), "layers.1.mlp.up_proj".into()]);
        assert!(names.matches("model.layers.0.self_attn.q_proj"));
        assert!(names.matches("model.layers.1.mlp.up_proj"));
        assert!(!names.matches("model.layers.0.mlp.up_proj"));
        assert!(!names.matches("model.layers.0.self_attn.qq_proj"));
        assert!(Targets::AllLinear.matches("model.layers.3.mlp.down_proj"));
        assert!(!Targets::AllLinear.matches("lm_head"));
        let re = Targets::Regex(r".*\.(q|v)_proj".into());
        assert!(re.matches("model.layers.0.self_attn.v_proj"));
        assert!(!re.matches("model.layers.0.self_attn.k_proj"));
        let modules = vec!["model.layers.0.self_attn.q_proj".to_string()];
        assert_eq!(Targets::Names(vec!["q_proj".into(), "c_attn".into()]).unmatched(&modules), vec!["c_attn"]);
    }

    #[test]
    fn config_refuses_what_hone_does_not_implement() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: Value| std::fs::write(dir.path().join(ADAPTER_CONFIG), v.to_string()).unwrap();
        write(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj"], "use_dora": true}));
        let e = AdapterConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("adapter_config.json: use_dora:"), "{e}");
        write(json!({"peft_type": "LORA", "r": 0}));
        let e = AdapterConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("adapter_config.json: r:"), "{e}");
        write(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": "all-linear"}));
        let c = AdapterConfig::read(dir.path()).unwrap();
        assert_eq!(c.spec.targets, Targets::AllLinear);
        assert!((c.spec.scaling() - 4.0).abs() < 1e-12);
        let e = AdapterConfig::read(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("adapter_config.json"), "{e}");
    }

    #[test]
    fn written_config_reads_back() {
        let spec = LoraSpec { r: 16, alpha: 32.0, dropout: 0.05, targets: Targets::AllLinear, rslora: false };
        let v = adapter_config_json(&spec, "base");
        let c = AdapterConfig::from_object(v.as_object().unwrap(), Path::new("x")).unwrap();
        assert_eq!(c.spec, spec);
        assert_eq!(v["lora_alpha"], json!(32));
    }
}
