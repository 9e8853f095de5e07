//! `hone bench`: the speed of one full training step (forward, masked loss, backward, grad-norm
//! clipping, AdamW; the trainer's own step functions, the same code `hone run` runs) and of
//! greedy generation, on fixed shapes so numbers compare across machines
//! and against PyTorch eager running the same shapes.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::memory::{adapter_parameters, parameter_count, MemoryEstimate, MemoryPlan};
use crate::model::generate::{generate, generate_batch, Sampling};
use crate::model::{LoraSpec, Model, ModelConfig, Precision, Targets};
use crate::train::batch::Sequence;
use crate::train::examples::{fit_pair, PairExample, TruncationStats};
use crate::train::loss::{LabelNoise, PreferenceLoss};
use crate::train::objective::{MicroBatch, PairTerm, Weights};
use crate::train::optim::{global_norm, AdamW, AdamWConfig};
use crate::train::plan::{fill_reference_cache, never_interrupt, RefCache};
use crate::train::trainer::{apply_update, forward_backward, Objective};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// Supervised fine-tuning step.
    Sft,
    /// DPO step: 4 pairs through the policy, reference log-probs cached.
    Dpo,
    /// Greedy generation with the KV cache.
    Generate,
    /// Greedy generation of 8 prompts of different lengths: one at a time, then as one
    /// left-padded batch (tokens/s of both).
    GenerateBatch,
    /// This machine's f32 matrix-multiplication peak: a 2048 x 2048 square matmul (GFLOP/s),
    /// the yardstick the training modes' `share_of_gemm_peak` is measured against.
    Gemm,
}

/// A fixed benchmark shape: a Llama model and the training batch run on it.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// The name `--preset` takes.
    pub name: &'static str,
    /// One line for the preset list.
    pub summary: &'static str,
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Leading prompt tokens of each sequence (not scored).
    pub prompt: usize,
}

/// Every preset, the default first.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "cpu-small",
        summary: "Llama, vocab 4096, hidden 256, 4 layers, 4/2 heads, MLP 688; batch 8 x 256, prompt 64",
        vocab: 4096,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        batch: 8,
        seq: 256,
        prompt: 64,
    },
    Preset {
        name: "cpu-135m",
        summary: "the 135M Llama shape (SmolLM): vocab 49152, hidden 576, 30 layers, 9/3 heads, MLP 1536; \
                  batch 8 x 128, prompt 32",
        vocab: 49152,
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        batch: 8,
        seq: 128,
        prompt: 32,
    },
];

/// The preset called `name`; an unknown name is an error that lists the presets.
pub fn preset(name: &str) -> Result<Preset> {
    if let Some(p) = PRESETS.iter().find(|p| p.name == name) {
        return Ok(*p);
    }
    let list: Vec<String> = PRESETS.iter().map(|p| format!("  {}: {}", p.name, p.summary)).collect();
    bail!("--preset {name:?}: no such preset; the presets are:\n{}", list.join("\n"))
}

impl Preset {
    /// The preset with another sequence length (the prompt stays a quarter of it).
    #[must_use]
    pub fn with_seq(self, seq: usize) -> Self {
        Self { seq, prompt: seq / 4, ..self }
    }

    /// The preset with another batch size (even, so DPO has pairs).
    #[must_use]
    pub fn with_batch(self, batch: usize) -> Self {
        Self { batch, ..self }
    }

    /// The model's `config.json`.
    pub fn config(&self) -> Result<ModelConfig> {
        let json = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": self.vocab, "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "max_position_embeddings": self.seq.max(1024), "tie_word_embeddings": true
        });
        Ok(ModelConfig::from_value(json, std::path::Path::new(&format!("<{} preset>", self.name)))?)
    }

    /// Nominal FLOPs of one training step, the same count for every implementation: 6 per
    /// parameter per token for the decoder's matrices (forward 2, backward 4), the LM head on
    /// every position, and the full `s x s` attention matrix (`QKᵀ` and `PV`, 4·s·hidden per
    /// token and layer forward, x3 with backward). This is the work a plain PyTorch/TRL step
    /// does; hone skips some of it (LM head on target rows only), so GFLOP/s here compare speed,
    /// not kernel efficiency.
    pub fn nominal_step_flops(&self) -> f64 {
        let (h, i, v) = (self.hidden as f64, self.intermediate as f64, self.vocab as f64);
        let head_dim = h / self.heads as f64;
        let kv = head_dim * self.kv_heads as f64;
        let per_layer = 2.0 * h * h + 2.0 * h * kv + 3.0 * h * i;
        let tokens = (self.batch * self.seq) as f64;
        let matrices = 6.0 * (per_layer * self.layers as f64 + h * v) * tokens;
        let attention = 3.0 * 4.0 * self.seq as f64 * h * self.layers as f64 * tokens;
        matrices + attention
    }
}

fn sequences(p: &Preset, seed: u64) -> Vec<Sequence> {
    let vocab = p.vocab as u64;
    let mut state = seed;
    (0..p.batch)
        .map(|_| {
            let ids = (0..p.seq)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    u32::try_from((state >> 33) % vocab).unwrap_or(0)
                })
                .collect();
            Sequence::with_completion_from(ids, p.prompt)
        })
        .collect()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        xs[n / 2 - 1].midpoint(xs[n / 2])
    }
}

/// Side of the square matmul that measures the f32 GEMM peak.
const GEMM_N: usize = 2048;

/// GFLOP/s of an `n x n` by `n x n` f32 matmul: the median over `runs` after one untimed run.
pub fn gemm_gflops(n: usize, runs: usize, device: &Device) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n as f64).powi(3) / median(&mut times) / 1e9)
}

/// Settings of a training benchmark beyond its shape.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Recompute each layer's activations in the backward pass (`--gradient-checkpointing`).
    pub gradient_checkpointing: bool,
    /// Train a LoRA of this rank on a frozen base (`--lora R`) instead of every weight.
    pub lora: Option<usize>,
    /// The run's dtype (`--dtype`), as `[run] dtype` means it ([`Precision::for_training`]).
    pub dtype: DType,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { gradient_checkpointing: false, lora: None, dtype: DType::F32 }
    }
}

impl BenchOptions {
    /// The adapter `--lora R` means: rank R, alpha 2R, dropout 0, all seven projections.
    pub fn lora_spec(&self) -> Option<LoraSpec> {
        #[allow(clippy::cast_precision_loss)]
        self.lora.map(|r| LoraSpec {
            r,
            alpha: 2.0 * r as f64,
            dropout: 0.0,
            targets: Targets::AllLinear,
            rslora: false,
        })
    }
}

/// `--lora`'s value: a rank of at least 1, written `16` or `r16`.
pub fn parse_lora_rank(text: &str) -> std::result::Result<usize, String> {
    let digits = text.strip_prefix('r').unwrap_or(text);
    match digits.parse::<usize>() {
        Ok(r) if r > 0 => Ok(r),
        _ => Err(format!("{text:?}: a LoRA rank of at least 1, as 16 or r16")),
    }
}

/// The benchmark's model: every weight trainable, or a frozen base with a fresh adapter.
fn bench_model(config: ModelConfig, device: &Device, options: &BenchOptions) -> Result<Model> {
    let precision = Precision::for_training(options.dtype);
    let mut model = match options.lora_spec() {
        Some(spec) => Model::fresh_with_adapter(config, device, precision, &spec, 0),
        None => Model::fresh(config, device, precision.master, 0),
    }
    .context("building the preset model")?;
    model.set_compute_dtype(precision.compute);
    model.set_gradient_checkpointing(options.gradient_checkpointing);
    Ok(model)
}

/// Runs the benchmark with default [`BenchOptions`] and returns its JSON line.
pub fn run(
    preset: &Preset,
    mode: BenchMode,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<serde_json::Value> {
    run_with(preset, mode, steps, warmup, device, BenchOptions::default())
}

/// Runs the benchmark and returns its JSON line. Training modes also report the estimated peak
/// memory of the step (`memory::estimate`) and the process's measured peak RSS, start-up
/// included (`VmHWM`, read right after the timed steps).
pub fn run_with(
    preset: &Preset,
    mode: BenchMode,
    steps: usize,
    warmup: usize,
    device: &Device,
    options: BenchOptions,
) -> Result<serde_json::Value> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    if preset.batch < 2 || preset.batch % 2 != 0 || preset.seq < 2 || preset.prompt >= preset.seq {
        bail!("--batch must be even and at least 2, --seq at least 2 (batch {}, seq {})", preset.batch, preset.seq);
    }
    if mode == BenchMode::Gemm {
        let gflops = gemm_gflops(GEMM_N, steps, device)?;
        return Ok(json!({
            "mode": "gemm", "n": GEMM_N, "device": format!("{device:?}"),
            "threads": rayon::current_num_threads(), "runs": steps, "gflop_per_s": gflops,
        }));
    }
    let model = bench_model(preset.config()?, device, &options)?;
    if mode == BenchMode::Generate {
        return bench_generate(preset, &model, steps, warmup);
    }
    if mode == BenchMode::GenerateBatch {
        return bench_generate_batch(preset, &model, steps, warmup);
    }
    let seqs = sequences(preset, 42);
    let mut opt = AdamW::new(model.parameters(), AdamWConfig { lr: 1e-4, ..AdamWConfig::default() })?;
    // DPO: pair i is row i's completion (chosen) against row i + batch/2's (rejected) after row
    // i's prompt; their reference log-probs are computed once and cached, as `hone run` does.
    let half = preset.batch / 2;
    let pairs: Vec<PairExample> = (0..half)
        .filter_map(|i| {
            let (a, b) = (&seqs[i].ids, &seqs[i + half].ids);
            let (prompt, chosen, rejected) =
                (a[..preset.prompt].to_vec(), a[preset.prompt..].to_vec(), b[preset.prompt..].to_vec());
            fit_pair(prompt, chosen, rejected, preset.seq, &mut TruncationStats::default())
        })
        .collect();
    let mut cache = RefCache::new();
    if mode == BenchMode::Dpo {
        // With LoRA the reference is the base with its adapters off, as `hone run` scores it.
        let all: Vec<&PairExample> = pairs.iter().collect();
        model.set_adapters_enabled(false);
        let filled = fill_reference_cache(&model, &all, 0, &mut cache, &mut never_interrupt);
        model.set_adapters_enabled(true);
        let _ = filled?;
    }
    let micro_batch = match mode {
        BenchMode::Sft => MicroBatch { sft: seqs, ..MicroBatch::default() },
        _ => MicroBatch { pairs: pairs.iter().map(|p| (p, cache[&p.hash])).collect(), ..MicroBatch::default() },
    };
    let objective = Objective {
        weights: Weights { sft: 1.0, lm: 1.0, pref: 1.0, safe: 0.0 },
        pref: Some(PairTerm { beta: 0.1, loss: PreferenceLoss::Sigmoid, noise: LabelNoise::Clean }),
        safety_pair: None,
        pad_id: 0,
        dropout: None,
    };
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = 0f64;
    let mut cpu_start = None;
    for i in 0..warmup + steps {
        if i == warmup {
            cpu_start = process_cpu_seconds();
        }
        let start = Instant::now();
        let sums = forward_backward(&model, &opt, std::slice::from_ref(&micro_batch), objective, false)?;
        let norm = global_norm(&sums.grads)?;
        apply_update(&mut opt, &sums, norm, 1.0)?;
        last_loss = sums.loss;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let cpu_per_step = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| (b - a) / steps as f64);
    let peak_rss = crate::memory::peak_rss_bytes();
    let estimate = bench_estimate(preset, &model, &options);
    let med = median(&mut times);
    let tokens = preset.batch * preset.seq;
    let gflops = preset.nominal_step_flops() / med / 1e9;
    // Measured right after the steps, under the same load.
    let peak = gemm_gflops(GEMM_N, 5, device)?;
    let mut out = json!({
        "preset": preset.name, "mode": format!("{mode:?}").to_lowercase(), "device": format!("{device:?}"),
        "threads": rayon::current_num_threads(), "steps": steps, "warmup": warmup,
        "batch": preset.batch, "seq": preset.seq, "prompt": preset.prompt,
        "tokens_per_step": tokens, "median_step_s": med, "tokens_per_second": tokens as f64 / med,
        "nominal_gflop_per_step": preset.nominal_step_flops() / 1e9, "gflop_per_s": gflops,
        "gemm_peak_gflop_per_s": peak, "share_of_gemm_peak": gflops / peak,
        "final_loss": last_loss, "cpu_s_per_step": cpu_per_step,
    });
    out["gradient_checkpointing"] = json!(options.gradient_checkpointing);
    out["lora"] = json!(options.lora);
    out["dtype"] = json!(options.dtype.as_str());
    out["trainable_params"] = json!(model.num_parameters());
    out["estimated_peak_bytes"] = json!(estimate.total());
    out["peak_rss_bytes"] = json!(peak_rss);
    Ok(out)
}

/// CPU time this process's threads have run, in seconds (the sum of `/proc/self/task/*/schedstat`,
/// nanoseconds), or `None` where there is no such file. On a loaded machine a step's CPU time
/// varies far less than its wall time, so it is the number to compare builds by there.
fn process_cpu_seconds() -> Option<f64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// The memory estimate of this benchmark's step: no reference model (its log-probs are cached
/// constants), the preset's batch with its prompt unscored; every weight trained, or with LoRA
/// the adapter on a frozen base.
fn bench_estimate(preset: &Preset, model: &Model, options: &BenchOptions) -> MemoryEstimate {
    let spec = options.lora_spec();
    crate::memory::estimate(&MemoryPlan {
        config: &model.config,
        total_params: parameter_count(&model.config),
        trainable_params: spec
            .as_ref()
            .map_or_else(|| parameter_count(&model.config), |s| adapter_parameters(&model.config, s)),
        reference: false,
        sequences: preset.batch,
        seq_len: preset.seq,
        target_rows: preset.batch * (preset.seq - preset.prompt),
        precision: Precision::for_training(options.dtype),
        checkpointing: options.gradient_checkpointing,
        lora: spec.as_ref(),
    })
}

fn bench_generate(preset: &Preset, model: &Model, steps: usize, warmup: usize) -> Result<serde_json::Value> {
    let prompt: Vec<u32> = sequences(preset, 7)[0].ids[..preset.prompt].to_vec();
    let sampling = Sampling { max_new_tokens: 128, ..Sampling::default() };
    let mut rates = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        let out = generate(model, &prompt, &[], &sampling)?;
        #[allow(clippy::cast_precision_loss)]
        let rate = out.new_token_ids.len() as f64 / start.elapsed().as_secs_f64();
        if i >= warmup {
            rates.push(rate);
        }
    }
    Ok(json!({
        "preset": preset.name, "mode": "generate", "prompt_tokens": preset.prompt, "new_tokens": sampling.max_new_tokens,
        "threads": rayon::current_num_threads(), "runs": steps, "median_tokens_per_second": median(&mut rates),
    }))
}

/// New tokens per second answering the preset's `batch` prompts of 3/4 to all of its prompt length (128 new tokens each, no
/// stop id): one prompt at a time (batch 1), then all in one left-padded batch (batch N), each
/// the median over `steps` runs, the two interleaved so machine load hits both alike.
fn bench_generate_batch(preset: &Preset, model: &Model, steps: usize, warmup: usize) -> Result<serde_json::Value> {
    let source = sequences(preset, 11);
    let n = preset.batch;
    let prompts: Vec<Vec<u32>> =
        source.iter().enumerate().map(|(i, s)| s.ids[..preset.prompt - (i * preset.prompt / 4) / n].to_vec()).collect();
    let sampling = Sampling { max_new_tokens: 128, ..Sampling::default() };
    let (mut single, mut batched) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for i in 0..warmup + steps {
        let start = Instant::now();
        let mut tokens = 0usize;
        for p in &prompts {
            tokens += generate(model, p, &[], &sampling)?.new_token_ids.len();
        }
        #[allow(clippy::cast_precision_loss)]
        let one_at_a_time = tokens as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let rows = generate_batch(model, &prompts, &[], &sampling)?;
        let tokens: usize = rows.iter().map(|r| r.generated.new_token_ids.len()).sum();
        #[allow(clippy::cast_precision_loss)]
        let together = tokens as f64 / start.elapsed().as_secs_f64();
        if i >= warmup {
            single.push(one_at_a_time);
            batched.push(together);
        }
    }
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    Ok(json!({
        "preset": preset.name, "mode": "generate-batch", "prompt_tokens": lengths,
        "new_tokens": sampling.max_new_tokens, "batch": n,
        "threads": rayon::current_num_threads(), "runs": steps,
        "batch_1_tokens_per_second": median(&mut single),
        "batch_n_tokens_per_second": median(&mut batched),
    }))
}

/// candle's CPU kernels size their thread pool from `RAYON_NUM_THREADS` on first use.
///
/// This stays an environment variable, not `rayon::ThreadPoolBuilder::build_global`: candle-core
/// (0.11, `utils::get_num_threads`) reads `RAYON_NUM_THREADS` itself to size its matmul's
/// parallelism and, when `CANDLE_NUM_THREADS` is unset, its own element-wise pool; a global rayon
/// pool built in code would leave both at the core count. Called before any worker thread starts.
pub(super) fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
