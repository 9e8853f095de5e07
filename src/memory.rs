//! Memory a training step needs, before and during a run: an estimate from the model's shape and
//! the stage's batch ([`estimate`]), used by `hone check` and `hone bench`, and the measured peak
//! of this process ([`peak_rss_bytes`]), logged by the worker and printed by `hone bench`.
//!
//! The estimate counts what hone's candle graph holds at its peak, the end of the backward pass:
//! the weights, AdamW's two moments (allocated when the stage opens), every gradient, and the
//! activations the graph keeps for backward, which candle frees only when the loss is dropped.
//! The activation count per layer follows `model::decoder` op by op (see [`layer_floats`]);
//! `hone bench --preset cpu-135m` checks it against the measured peak RSS (README, "Memory").
//!
//! Owns no tensors; reads `/proc` only for measurements.

use std::sync::OnceLock;

use candle_core::{DType, Device, DeviceLocation};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use crate::model::lora::projection_modules;
use crate::model::{LoraSpec, ModelConfig, Precision};

/// What a training step holds, as the inputs of [`estimate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan<'a> {
    /// The model's shape.
    pub config: &'a ModelConfig,
    /// Every parameter of the model (a tied head once), adapters not included.
    pub total_params: u64,
    /// The parameters the optimizer updates (all of them for full fine-tuning; the adapters
    /// with LoRA): they have gradients and AdamW moments.
    pub trainable_params: u64,
    /// A separate frozen reference model held while the stage trains (DPO with live labels);
    /// `false` when reference log-probs are computed before training and the model is freed, or
    /// when the reference is the policy's own base (LoRA with the adapters switched off).
    pub reference: bool,
    /// Sequences through the policy per micro-batch (a DPO pair counts two).
    pub sequences: usize,
    /// Tokens per sequence (the padded length).
    pub seq_len: usize,
    /// Positions whose next token is scored (the rows that reach the LM head).
    pub target_rows: usize,
    /// Master and compute dtypes.
    pub precision: Precision,
    /// Gradient checkpointing: each layer's activations recomputed in backward.
    pub checkpointing: bool,
    /// A LoRA adapter: the model's parameters are then a frozen base held in
    /// [`Precision::frozen_base`], `trainable_params` are the adapter's ([`adapter_parameters`]),
    /// and each adapted projection keeps its own activations ([`adapter_floats`]).
    pub lora: Option<&'a LoraSpec>,
}

/// Estimated peak bytes of a training step, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryEstimate {
    /// The policy's weights (a LoRA's frozen base and its adapters).
    pub weights: u64,
    /// Gradients of the trainable parameters.
    pub gradients: u64,
    /// AdamW's first and second moments.
    pub optimizer: u64,
    /// A frozen reference model's weights (0 without one).
    pub reference: u64,
    /// Activations the graph keeps for the backward pass (and the LM head's logits).
    pub activations: u64,
    /// The process itself: code, the tokenizer, thread stacks, allocator slack ([`RUNTIME_BYTES`]).
    pub runtime: u64,
}

impl MemoryEstimate {
    /// The sum of every part.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.reference + self.activations + self.runtime
    }
}

/// The resident size of a `hone` process before any model is loaded, rounded up: measured as
/// `VmHWM` of `hone bench --steps 1` on a 4-layer, hidden-256 model minus that model's own count
/// (about 40 MB on Linux x86-64, release build).
pub const RUNTIME_BYTES: u64 = 48 << 20;

fn bytes(dtype: DType) -> u64 {
    dtype.size_in_bytes() as u64
}

/// Numbers one decoder layer keeps per token for the backward pass, in the master dtype and in
/// the compute dtype (zero unless they differ). Per layer, `model::decoder` keeps (h hidden,
/// H·d query width, K·d key/value width, I intermediate, s keys per query):
/// the input norm's output (h); q, k, v projections (H·d + 2·K·d) and their rotated or
/// contiguous copies (H·d + 2·K·d); the attention scores and probabilities (2·H·s); the
/// attention output and its head-merged copy (2·H·d); the output projection, the residual sum
/// and the second norm (3h); gate, up and SwiGLU (3I); the down projection and the residual sum
/// (2h). Biases add their sums. With a compute dtype, every matmul also keeps its cast inputs and
/// its output before the cast back.
pub fn layer_floats(config: &ModelConfig, seq_len: usize, mixed: bool) -> (u64, u64) {
    let Widths { h, q, kv, i } = Widths::of(config);
    let scores = config.num_attention_heads as u64 * seq_len as u64;
    let master = 6 * h + 4 * q + 4 * kv + 3 * i + 2 * scores + layer_biases(config);
    let compute = if mixed {
        // Inputs cast per projection (q, k, v each cast the norm's output; gate and up too),
        // outputs before the cast back, and the attention operands.
        let inputs = 3 * h + q + 2 * h + i;
        let outputs = q + 2 * kv + h + 2 * i + h;
        let attention = (q + kv) + 2 * scores + kv + q;
        inputs + outputs + attention
    } else {
        0
    };
    (master, compute)
}

/// The estimated peak of one training step (see the module's notes for what is counted).
pub fn estimate(plan: &MemoryPlan) -> MemoryEstimate {
    let master = bytes(plan.precision.master);
    let mixed = plan.precision.compute != plan.precision.master;
    let compute = if mixed { bytes(plan.precision.compute) } else { 0 };
    let cfg = plan.config;
    let tokens = (plan.sequences * plan.seq_len) as u64;
    let layers = cfg.num_hidden_layers as u64;
    let h = cfg.hidden_size as u64;
    let (layer_master, layer_compute) = layer_floats(cfg, plan.seq_len, mixed);
    let adapters = plan.lora.map(|spec| adapter_floats(cfg, spec)).unwrap_or_default();
    let one_layer = |i: usize| {
        let extra = adapters.get(i).copied().unwrap_or(0);
        tokens * ((layer_master + extra) * master + layer_compute * compute)
    };
    let kept_layers = if plan.checkpointing {
        // Each layer's input (the custom op's argument) and the last output, plus one layer
        // recomputed at a time in the backward pass with a copy of its input, and the gradients
        // of its activations as that backward pass makes them (up to another layer's worth).
        let widest = (0..cfg.num_hidden_layers).map(one_layer).max().unwrap_or(0);
        (layers + 2) * tokens * h * master + 2 * widest
    } else {
        (0..cfg.num_hidden_layers).map(one_layer).sum()
    };
    // The embedding's output and the final norm's (kept either way), the target rows gathered,
    // and the logits of those rows (in the compute dtype too when mixed, and cast to f32 for
    // the loss).
    let rows = plan.target_rows as u64;
    let vocab = cfg.vocab_size as u64;
    let head = 2 * tokens * h * master + rows * h * (master + compute) + rows * vocab * (master + compute);
    // Full fine-tuning in mixed precision casts every master weight for its matmul and the graph
    // keeps the copies until the step ends; a frozen LoRA base is already in the compute dtype.
    let base = if plan.lora.is_some() { bytes(plan.precision.frozen_base()) } else { master };
    let weight_casts = if mixed && plan.lora.is_none() { plan.total_params * compute } else { 0 };
    let adapter_weights = if plan.lora.is_some() { plan.trainable_params * master } else { 0 };
    // A frozen base stores its matrices narrow and its vectors (norms, biases) in the master dtype.
    let vectors = if plan.lora.is_some() { vector_parameters(cfg).min(plan.total_params) } else { 0 };
    MemoryEstimate {
        weights: (plan.total_params - vectors) * base + vectors * master + adapter_weights,
        gradients: plan.trainable_params * master,
        optimizer: 2 * plan.trainable_params * master,
        reference: if plan.reference { plan.total_params * bytes(plan.precision.compute) } else { 0 },
        activations: kept_layers + head + weight_casts,
        runtime: RUNTIME_BYTES,
    }
}

/// The `(out, in)` widths of a decoder projection by its module name's last part.
fn projection_shape(config: &ModelConfig, module: &str) -> (u64, u64) {
    let Widths { h, q, kv, i } = Widths::of(config);
    match module.rsplit('.').next().unwrap_or(module) {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "down_proj" => (h, i),
        _ => (i, h),
    }
}

/// The projections of `config` that `spec` adapts, with their `(out, in)` widths, by layer.
fn adapted(config: &ModelConfig, spec: &LoraSpec) -> Vec<(usize, (u64, u64))> {
    projection_modules(config.num_hidden_layers)
        .iter()
        .enumerate()
        .filter(|(_, m)| spec.targets.matches(m))
        .map(|(k, m)| (k / crate::model::lora::ALL_LINEAR.len(), projection_shape(config, m)))
        .collect()
}

/// The parameters of a LoRA adapter of `spec` on a model of this shape: `r · (in + out)` per
/// adapted projection (A is `[r, in]`, B `[out, r]`).
pub fn adapter_parameters(config: &ModelConfig, spec: &LoraSpec) -> u64 {
    let r = spec.r as u64;
    adapted(config, spec).iter().map(|(_, (out, inp))| r * (inp + out)).sum()
}

/// Numbers per token each decoder layer's adapters keep for the backward pass, by layer, in the
/// master dtype: per adapted projection, `x Aᵀ` (r), its product with `Bᵀ`, the product scaled,
/// and the sum with the base's output (3 · out); the input is the base matmul's, already counted.
/// With dropout, the mask and the dropped input too (2 · in).
pub fn adapter_floats(config: &ModelConfig, spec: &LoraSpec) -> Vec<u64> {
    let mut by_layer = vec![0u64; config.num_hidden_layers];
    let dropped = u64::from(spec.dropout > 0.0);
    for (layer, (out, inp)) in adapted(config, spec) {
        by_layer[layer] += spec.r as u64 + 3 * out + 2 * dropped * inp;
    }
    by_layer
}

/// The parameters of a model of this shape held in vectors: the norms' weights and the biases.
fn vector_parameters(config: &ModelConfig) -> u64 {
    let h = config.hidden_size as u64;
    config.num_hidden_layers as u64 * (2 * h + layer_biases(config)) + h
}

/// The widths of one decoder layer: hidden, query (H·d), key/value (K·d), intermediate.
struct Widths {
    h: u64,
    q: u64,
    kv: u64,
    i: u64,
}

impl Widths {
    fn of(config: &ModelConfig) -> Self {
        Widths {
            h: config.hidden_size as u64,
            q: (config.num_attention_heads * config.head_dim) as u64,
            kv: (config.num_key_value_heads * config.head_dim) as u64,
            i: config.intermediate_size as u64,
        }
    }
}

/// The bias elements of one layer (also the sums a layer keeps for them per token).
fn layer_biases(config: &ModelConfig) -> u64 {
    let Widths { h, q, kv, i } = Widths::of(config);
    let qkv = if config.qkv_bias { q + 2 * kv } else { 0 };
    let o = if config.o_bias { h } else { 0 };
    let mlp = if config.mlp_bias { 2 * i + h } else { 0 };
    qkv + o + mlp
}

/// The parameters of a model of this shape (a tied head once), without loading it.
pub fn parameter_count(config: &ModelConfig) -> u64 {
    let Widths { h, q, kv, i } = Widths::of(config);
    let v = config.vocab_size as u64;
    let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + layer_biases(config);
    let head = if config.tie_word_embeddings { 0 } else { v * h };
    v * h + config.num_hidden_layers as u64 * layer + h + head
}

/// This process's peak resident set size so far (`VmHWM` of `/proc/self/status`), start-up
/// included; `None` where the kernel does not say (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// The memory this process holds on `device`: the peak RSS on the CPU; on a CUDA device, what
/// NVML reports this process using now (the driver keeps no peak: the worker keeps the maximum
/// of its step-end readings). `None` where neither is available.
pub fn device_peak_bytes(device: &Device) -> Option<u64> {
    match device.location() {
        DeviceLocation::Cpu => peak_rss_bytes(),
        DeviceLocation::Cuda { gpu_id } => {
            let nvml = nvml()?;
            let gpu = nvml.device_by_index(u32::try_from(gpu_id).ok()?).ok()?;
            let pid = std::process::id();
            gpu.running_compute_processes().ok()?.into_iter().find(|p| p.pid == pid).and_then(|p| {
                match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                }
            })
        }
        DeviceLocation::Metal { .. } => None,
    }
}

/// How much memory `device` has: the machine's RAM for the CPU, the GPU's memory for CUDA
/// (through NVML); `None` where unknown.
pub fn device_total_bytes(device: &Device) -> Option<u64> {
    match device.location() {
        DeviceLocation::Cpu => total_ram_bytes(),
        DeviceLocation::Cuda { gpu_id } => {
            let gpu = nvml()?.device_by_index(u32::try_from(gpu_id).ok()?).ok()?;
            gpu.memory_info().ok().map(|m| m.total)
        }
        DeviceLocation::Metal { .. } => None,
    }
}

/// NVML, loaded once (`None` without an NVIDIA driver).
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().ok()).as_ref()
}

/// The machine's memory (`MemTotal` of `/proc/meminfo`); `None` where unknown.
pub fn total_ram_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, "MemTotal:").map(|kib| kib * 1024)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// `n` bytes as a short human figure (`1.23 GB`, decimal units as `free -h --si` prints).
pub fn human_bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} GB", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} MB", x / 1e6)
    } else {
        format!("{:.0} kB", x / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_parse_as_the_kernel_writes_them() {
        let text = "Name:\thone\nVmPeak:\t  123456 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(kib_field(text, "VmHWM:"), Some(2048));
        assert_eq!(kib_field(text, "VmRSS:"), None);
    }

    fn shape_135m() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "tie_word_embeddings": true
        });
        ModelConfig::from_value(json, std::path::Path::new("<135m>")).unwrap()
    }

    fn lora(r: usize, targets: crate::model::Targets) -> LoraSpec {
        #[allow(clippy::cast_precision_loss)]
        LoraSpec { r, alpha: 2.0 * r as f64, dropout: 0.0, targets, rslora: false }
    }

    fn plan<'a>(config: &'a ModelConfig, spec: Option<&'a LoraSpec>, dtype: DType) -> MemoryPlan<'a> {
        let params = parameter_count(config);
        MemoryPlan {
            config,
            total_params: params,
            trainable_params: spec.map_or(params, |s| adapter_parameters(config, s)),
            reference: false,
            sequences: 8,
            seq_len: 128,
            target_rows: 8 * 96,
            precision: Precision::for_training(dtype),
            checkpointing: false,
            lora: spec,
        }
    }

    #[test]
    fn adapter_parameters_count_a_and_b_of_each_adapted_projection() {
        let config = shape_135m();
        // r (in + out) over q, k, v, o (576+576, 576+192, 576+192, 576+576) and gate, up, down
        // (576+1536 each), 30 layers: PEFT's print_trainable_parameters says 4,884,480 at r 16.
        assert_eq!(adapter_parameters(&config, &lora(16, crate::model::Targets::AllLinear)), 4_884_480);
        let qv = crate::model::Targets::Names(vec!["q_proj".into(), "v_proj".into()]);
        assert_eq!(adapter_parameters(&config, &lora(8, qv)), 8 * 30 * (576 + 576 + 576 + 192));
    }

    #[test]
    fn lora_holds_the_base_once_and_optimizer_state_for_the_adapters_only() {
        let config = shape_135m();
        let spec = lora(16, crate::model::Targets::AllLinear);
        let (base, adapters) = (parameter_count(&config), adapter_parameters(&config, &spec));
        let full = estimate(&plan(&config, None, DType::F32));
        let f32_lora = estimate(&plan(&config, Some(&spec), DType::F32));
        assert_eq!(f32_lora.weights, 4 * (base + adapters));
        assert_eq!((f32_lora.gradients, f32_lora.optimizer), (4 * adapters, 8 * adapters));
        assert_eq!((full.gradients, full.optimizer), (4 * base, 8 * base));
        // Each adapted projection keeps its own activations on top of the full fine-tuning ones.
        assert!(f32_lora.activations > full.activations);
        // bf16: the frozen base in bf16, the adapters and their moments still f32, and no cast
        // copies of the base for the matmuls (full fine-tuning in bf16 keeps one per weight).
        let bf16_lora = estimate(&plan(&config, Some(&spec), DType::BF16));
        let vectors = 30 * 2 * 576 + 576;
        assert_eq!(bf16_lora.weights, 2 * (base - vectors) + 4 * vectors + 4 * adapters);
        assert_eq!((bf16_lora.gradients, bf16_lora.optimizer), (f32_lora.gradients, f32_lora.optimizer));
        let bf16_full = estimate(&plan(&config, None, DType::BF16));
        let adapter_activations = f32_lora.activations - full.activations;
        assert_eq!(bf16_full.activations + adapter_activations, bf16_lora.activations + 2 * base);
    }

    #[test]
    fn this_process_has_a_peak() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 1 << 20));
        }
    }
}
