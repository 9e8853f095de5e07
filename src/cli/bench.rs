//! `hone bench`: the speed of one full training step (forward, masked loss, backward, grad-norm
//! clipping, AdamW) and of greedy generation, on fixed shapes so numbers compare across machines
//! and against PyTorch eager running the same shapes.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::model::generate::{generate, generate_batch, Sampling};
use crate::model::{Model, ModelConfig};
use crate::train::batch::{Sequence, TokenBatch};
use crate::train::loss::{
    per_sequence_sum, preference_losses, sft_loss, target_logps, PreferenceLogps, PreferenceLoss,
};
use crate::train::optim::{clip_coefficient, grad_norm, AdamW, AdamWConfig};

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
}

/// The `cpu-small` preset: a Llama with vocab 4096, hidden 256, 4 layers, 4 heads / 2 KV heads,
/// MLP 688, tied embeddings; batches of 8 × 256 tokens whose first 64 are prompt.
pub fn cpu_small_config() -> Result<ModelConfig> {
    let json = json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 256,
        "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 1024, "tie_word_embeddings": true
    });
    Ok(ModelConfig::from_value(json, std::path::Path::new("<cpu-small preset>"))?)
}

const BATCH: usize = 8;
const SEQ: usize = 256;
const PROMPT: usize = 64;

fn sequences(vocab: u32, seed: u64) -> Vec<Sequence> {
    let mut state = seed;
    (0..BATCH)
        .map(|_| {
            let ids = (0..SEQ)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    u32::try_from(state >> 33).unwrap_or(0) % vocab
                })
                .collect();
            Sequence::with_completion_from(ids, PROMPT)
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

/// Runs the benchmark and returns its JSON line.
pub fn run(mode: BenchMode, steps: usize, warmup: usize, device: &Device) -> Result<serde_json::Value> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let config = cpu_small_config()?;
    let model = Model::fresh(config, device, DType::F32, 0).context("building the preset model")?;
    if mode == BenchMode::Generate {
        return bench_generate(&model, steps, warmup);
    }
    if mode == BenchMode::GenerateBatch {
        return bench_generate_batch(&model, steps, warmup);
    }
    let seqs = sequences(4096, 42);
    let batch = TokenBatch::new(&seqs, 0, device)?;
    let params = model.parameters();
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: 1e-4, ..AdamWConfig::default() })?;
    // DPO: rows 0..4 are chosen, 4..8 rejected; the reference log-probs are cached constants.
    let ref_logps = per_sequence_sum(&target_logps(model.decoder(), &batch)?.detach(), &batch)?;
    let counts = Tensor::new(batch.targets_per_sequence.iter().map(|&n| n as f32).collect::<Vec<_>>(), device)?;
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = 0f32;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let logps = target_logps(model.decoder(), &batch)?;
        let loss = if mode == BenchMode::Sft {
            sft_loss(&logps)?
        } else {
            let seq = per_sequence_sum(&logps, &batch)?;
            let half = BATCH / 2;
            let lp = PreferenceLogps {
                policy_chosen: &seq.narrow(0, 0, half)?,
                policy_rejected: &seq.narrow(0, half, half)?,
                ref_chosen: &ref_logps.narrow(0, 0, half)?,
                ref_rejected: &ref_logps.narrow(0, half, half)?,
                chosen_tokens: &counts.narrow(0, 0, half)?,
                rejected_tokens: &counts.narrow(0, half, half)?,
            };
            preference_losses(PreferenceLoss::Sigmoid, 0.1, &lp)?.mean_all()?
        };
        let grads = loss.backward()?;
        let norm = grad_norm(&params, &grads)?;
        opt.step(&grads, clip_coefficient(norm, 1.0))?;
        last_loss = loss.to_scalar::<f32>()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let med = median(&mut times);
    #[allow(clippy::cast_precision_loss)]
    let tps = (BATCH * SEQ) as f64 / med;
    Ok(json!({
        "preset": "cpu-small", "mode": format!("{mode:?}").to_lowercase(), "device": format!("{device:?}"),
        "threads": candle_core::utils::get_num_threads(), "steps": steps, "warmup": warmup,
        "tokens_per_step": BATCH * SEQ, "median_step_s": med, "tokens_per_second": tps,
        "final_loss": last_loss,
    }))
}

fn bench_generate(model: &Model, steps: usize, warmup: usize) -> Result<serde_json::Value> {
    let prompt: Vec<u32> = sequences(4096, 7)[0].ids[..PROMPT].to_vec();
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
        "preset": "cpu-small", "mode": "generate", "prompt_tokens": PROMPT, "new_tokens": sampling.max_new_tokens,
        "threads": candle_core::utils::get_num_threads(), "runs": steps, "median_tokens_per_second": median(&mut rates),
    }))
}

/// New tokens per second answering `BATCH` prompts of 48 to 64 tokens (128 new tokens each, no
/// stop id): one prompt at a time (batch 1), then all in one left-padded batch (batch N), each
/// the median over `steps` runs, the two interleaved so machine load hits both alike.
fn bench_generate_batch(model: &Model, steps: usize, warmup: usize) -> Result<serde_json::Value> {
    let source = sequences(4096, 11);
    let prompts: Vec<Vec<u32>> =
        source.iter().enumerate().map(|(i, s)| s.ids[..PROMPT - (i * 16) / BATCH.max(1)].to_vec()).collect();
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
        "preset": "cpu-small", "mode": "generate-batch", "prompt_tokens": lengths,
        "new_tokens": sampling.max_new_tokens, "batch": BATCH,
        "threads": candle_core::utils::get_num_threads(), "runs": steps,
        "batch_1_tokens_per_second": median(&mut single),
        "batch_n_tokens_per_second": median(&mut batched),
    }))
}
